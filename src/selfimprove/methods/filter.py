"""The LMSI filter step: majority-vote each question's sampled paths, keep the agreeing ones,
and turn them into training examples in several prompt formats (pure, deterministic).

Huang et al. 2022 ("Large Language Models Can Self-Improve") keep every path whose answer is
the majority answer (``min_agreement: 0``) and train on four formats: few-shot and zero-shot
prompts with a chain-of-thought completion, and the same with a direct "The answer is N."
completion. A rationale is trained on as generated, only cleaned up so that it ends with its
answer sentence: text after the last "The answer is N" is dropped, and a path whose answer
was found without that sentence gets " The answer is N." appended.
"""

from __future__ import annotations

import random
import re

from selfimprove.config.methods import FilterConfig
from selfimprove.core.answers import cut_at_stop, extract_answer, strict_answer_span
from selfimprove.core.io import InputError
from selfimprove.core.prompts import STYLES, build_prompt, direct_completion, is_cot
from selfimprove.core.voting import (
    agreement_histogram,
    answer_entropy,
    distinct_answers,
    majority_vote,
)
from selfimprove.methods.table import METHODS, SELF_METHODS

_ANSWER_TAIL = re.compile(r"[*}]*\.?")


def finalize_path(path: str, answer: str) -> str | None:
    """A kept path as a training rationale ending in its answer sentence, or ``None`` if it is
    empty or its own "The answer is ..." contradicts ``answer``.

    The path is cut at stop sequences and stripped; text after the last "The answer is N" is
    dropped (its "." is kept or added); a path with no such sentence gets one appended.

    >>> finalize_path("9 * 2 = 18. The answer is $18. Janet is happy.\\n\\nQ: ...", "18")
    '9 * 2 = 18. The answer is $18.'
    >>> finalize_path("She makes 9 * 2 = 18 dollars", "18")
    'She makes 9 * 2 = 18 dollars. The answer is 18.'
    >>> finalize_path("The answer is 17.", "18") is None
    True
    """
    text = cut_at_stop(path).strip()
    if not text:
        return None
    span = strict_answer_span(text)
    if span is not None:
        _, end, stated = span
        if stated != answer:
            return None
        end = _ANSWER_TAIL.match(text, end).end()
        text = text[:end]
        return text if text.endswith(".") else text + "."
    if text[-1] not in ".!?":
        text += "."
    return f"{text} The answer is {answer}."


def keep_paths(
    paths: list[str], answers: list, eligible: list[bool], cap: int, dedupe: bool
) -> tuple[list[bool], list[str], list[str], dict[str, int]]:
    """Which eligible paths become training rationales: in order, at most ``cap`` (0 = all),
    each cleaned by :func:`finalize_path` (unusable ones dropped), duplicates dropped when
    ``dedupe``. Returns ``(kept flags, texts, their answers, counts)``, counts of the
    ``candidates`` (eligible paths), ``unusable`` and ``duplicates`` paths.

    >>> kept, texts, _, counts = keep_paths(
    ...     ["3 + 2 = 5.", "3 + 2 = 5.", "The answer is 4.", "2 + 3 = 5."],
    ...     ["5", "5", "5", "5"], [True, True, True, False], cap=0, dedupe=True)
    >>> kept, texts, counts
    ([True, False, False, False], ['3 + 2 = 5. The answer is 5.'], {'candidates': 3, \
'unusable': 1, 'duplicates': 1})
    """
    kept = [False] * len(paths)
    texts: list[str] = []
    kept_answers: list[str] = []
    counts = {"candidates": 0, "unusable": 0, "duplicates": 0}
    seen: set[str] = set()
    for j, (path, answer) in enumerate(zip(paths, answers, strict=True)):
        if not eligible[j]:
            continue
        counts["candidates"] += 1
        if cap and len(texts) >= cap:
            continue
        text = finalize_path(path, answer)
        if text is None:
            counts["unusable"] += 1
            continue
        if dedupe and text in seen:
            counts["duplicates"] += 1
            continue
        seen.add(text)
        kept[j] = True
        texts.append(text)
        kept_answers.append(answer)
    return kept, texts, kept_answers, counts


def _check_sample(i: int, s: object) -> tuple[str | int, str, list[str], list[str | None]]:
    where = f"sample {i + 1}"
    if not isinstance(s, dict):
        raise InputError(f"{where}: expected an object, got {type(s).__name__}")
    for key in ("id", "question", "paths", "answers"):
        if key not in s:
            raise InputError(
                f"{where}: missing key {key!r} (has: {', '.join(s) or 'none'}); "
                "regenerate samples.jsonl with the generate stage"
            )
    where = f"sample {i + 1} (id={s['id']!r})"
    if not isinstance(s["id"], (str, int)):
        raise InputError(f"{where}: 'id' must be a string or an integer")
    paths, answers = s["paths"], s["answers"]
    if not isinstance(s["question"], str):
        raise InputError(f"{where}: 'question' must be a string, got {s['question']!r}")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise InputError(f"{where}: 'paths' must be a list of strings")
    if not isinstance(answers, list) or not all(a is None or isinstance(a, str) for a in answers):
        raise InputError(f"{where}: 'answers' must be a list of strings or nulls, got {answers!r}")
    if len(paths) != len(answers):
        raise InputError(
            f"{where}: {len(paths)} paths but {len(answers)} answers; they must pair up one to "
            "one (regenerate samples.jsonl)"
        )
    return s["id"], s["question"], paths, answers


def _add_examples(
    train: list[dict],
    per_format: dict[str, int],
    qid,
    question: str,
    texts: list[str],
    answer: str,
    formats: list[str],
    n_shots: int,
) -> None:
    """Append one question's training examples: every kept path in each CoT format, one
    "The answer is N." completion in each direct format."""
    for fmt in formats:
        prefix, suffix = build_prompt(question, fmt, n_shots)
        completions = [" " + t for t in texts] if is_cot(fmt) else [direct_completion(answer)]
        for completion in completions:
            train.append(
                {"id": qid, "format": fmt, "prompt": prefix + suffix, "completion": completion}
            )
        per_format[fmt] += len(completions)


def _stats(
    rationales: list[dict],
    train: list[dict],
    per_format: dict[str, int],
    agreements: list[float],
    n_paths: int,
    n_no_answer: int,
    **counts: int,
) -> dict:
    """The filter step's statistics (``counts``: the path counters, kept in the given order)."""
    n_questions = len(rationales)
    n_selected = sum(r["selected"] for r in rationales)
    return {
        "n_questions": n_questions,
        "n_selected": n_selected,
        "selected_fraction": round(n_selected / n_questions, 4) if n_questions else 0.0,
        "n_paths": n_paths,
        **counts,
        "n_train_examples": len(train),
        **{f"n_train_{fmt}": n for fmt, n in per_format.items()},
        "mean_agreement": round(sum(agreements) / n_questions, 4) if n_questions else 0.0,
        "no_answer_rate": round(n_no_answer / n_paths, 4) if n_paths else 0.0,
        "agreement_histogram": agreement_histogram(agreements),
    }


def collapse_monitors(samples: list[dict]) -> dict:
    """Collapse monitors of a round's sampled paths (every method; no labels): the mean over
    questions of the answer entropy in bits and of the distinct answers
    (:func:`~selfimprove.core.voting.answer_entropy`, ``None`` answers left out), and the mean
    path length in generated tokens (``mean_path_tokens``, only when every sample carries
    ``n_tokens``, as generate writes them).

    >>> collapse_monitors([{"answers": ["4", "4", "5", "6"], "n_tokens": [10, 20, 30, 40]},
    ...                    {"answers": ["7", "7", None, "7"], "n_tokens": [5, 5, 5, 5]}])
    {'answer_entropy': 0.75, 'distinct_answers': 2.0, 'mean_path_tokens': 15.0}
    """
    n = len(samples)
    if not n:
        return {"answer_entropy": 0.0, "distinct_answers": 0.0}
    out = {
        "answer_entropy": round(sum(answer_entropy(s["answers"]) for s in samples) / n, 4),
        "distinct_answers": round(sum(distinct_answers(s["answers"]) for s in samples) / n, 4),
    }
    lengths = [(s.get("n_tokens"), len(s["answers"])) for s in samples]
    if all(isinstance(t, list) and len(t) == m for t, m in lengths):
        flat = [int(t) for ts, _ in lengths for t in ts]
        out["mean_path_tokens"] = round(sum(flat) / len(flat), 4) if flat else 0.0
    return out


def filter_samples(samples: list[dict], cfg: FilterConfig) -> tuple[list[dict], list[dict], dict]:
    """Vote, select and format: returns ``(rationales, train_examples, stats)``.

    ``samples``: ``{"id", "question", "paths": [str], "answers": [str | None]}`` per question.
    ``rationales``: one record per question with ``majority``, ``agreement``, ``kept`` (per
    path: it went into the training set) and ``selected`` (``agreement >= min_agreement``
    and a majority exists). ``train_examples``: ``{"id", "format", "prompt", "completion"}``:
    per selected question, each kept path in every enabled CoT format and one direct answer
    in every enabled direct format. Order follows the input; nothing is random.
    ``stats``: n_questions, n_selected, selected_fraction, n_paths, n_agreeing_paths (agree
    with the majority of a selected question), n_kept_paths, n_duplicate_paths,
    n_unusable_paths (empty, or their "The answer is" states another number), n_train_examples,
    n_train_<format> for each format, mean_agreement, no_answer_rate, agreement_histogram.

    >>> samples = [
    ...     {"id": "q1", "question": "Tom has 3 apples and buys 2. How many?",
    ...      "paths": ["3 + 2 = 5. The answer is 5.", "3 + 2 = 5. The answer is 5.",
    ...                "3 * 2 = 6. The answer is 6.", "I don't know."],
    ...      "answers": ["5", "5", "6", None]},
    ...     {"id": "q2", "question": "Ann has 4 pens.", "paths": ["4", "5"], "answers": ["4", "5"]},
    ... ]
    >>> cfg = FilterConfig(min_agreement=0.5, formats={"fewshot_cot": False, "zeroshot_cot": True,
    ...                    "fewshot_direct": False, "zeroshot_direct": True})
    >>> rationales, train, stats = filter_samples(samples, cfg)
    >>> [(r["majority"], r["agreement"], r["selected"], r["kept"]) for r in rationales]
    [('5', 0.5, True, [True, False, False, False]), ('4', 0.5, True, [True, False])]
    >>> [(t["id"], t["format"], t["completion"]) for t in train]  # doctest: +NORMALIZE_WHITESPACE
    [('q1', 'zeroshot_cot', ' 3 + 2 = 5. The answer is 5.'),
     ('q1', 'zeroshot_direct', ' The answer is 5.'),
     ('q2', 'zeroshot_cot', ' 4. The answer is 4.'),
     ('q2', 'zeroshot_direct', ' The answer is 4.')]
    >>> train[0]["prompt"]
    "Q: Tom has 3 apples and buys 2. How many?\\nA: Let's think step by step."
    >>> stats["n_selected"], stats["n_kept_paths"], stats["no_answer_rate"]
    (2, 2, 0.1667)
    """
    formats = cfg.formats.enabled()
    cap = cfg.max_paths_per_question
    rationales: list[dict] = []
    train: list[dict] = []
    per_format = dict.fromkeys(STYLES, 0)
    seen_ids: set[str | int] = set()
    agreements: list[float] = []
    n_paths = n_no_answer = n_agreeing = n_kept = n_duplicates = n_unusable = 0

    for i, sample in enumerate(samples):
        qid, question, paths, answers = _check_sample(i, sample)
        if qid in seen_ids:
            raise InputError(
                f"sample {i + 1}: id {qid!r} appears twice; each question needs a unique id"
            )
        seen_ids.add(qid)
        majority, agreement = majority_vote(answers)
        selected = majority is not None and agreement >= cfg.min_agreement
        n_paths += len(paths)
        n_no_answer += sum(a is None for a in answers)
        agreements.append(agreement)

        kept = [False] * len(paths)
        rationales_kept: list[str] = []
        if selected:
            eligible = [a == majority for a in answers]
            kept, rationales_kept, _, counts = keep_paths(paths, answers, eligible, cap, cfg.dedupe)
            n_agreeing += counts["candidates"]
            n_unusable += counts["unusable"]
            n_duplicates += counts["duplicates"]
            n_kept += len(rationales_kept)

            _add_examples(
                train, per_format, qid, question, rationales_kept, majority, formats, cfg.n_shots
            )

        rationales.append(
            {
                "id": qid,
                "question": question,
                "paths": paths,
                "answers": answers,
                "majority": majority,
                "agreement": agreement,
                "kept": kept,
                "selected": selected,
            }
        )

    stats = _stats(
        rationales,
        train,
        per_format,
        agreements,
        n_paths=n_paths,
        n_agreeing_paths=n_agreeing,
        n_kept_paths=n_kept,
        n_duplicate_paths=n_duplicates,
        n_unusable_paths=n_unusable,
        n_no_answer=n_no_answer,
    )
    return rationales, train, stats | collapse_monitors(samples)


# ---------------------------------------------------------------------------- format-only control


def filter_format_only(
    records: list[dict], cfg: FilterConfig, seed: int = 0
) -> tuple[list[dict], list[dict], dict]:
    """The format-only control (method ``format_only``): train on the model's own paths in the
    same formats, *without* the vote. Like :func:`filter_samples`, returns ``(rationales,
    train_examples, stats)``.

    It trains on as many questions as LMSI would with the same ``cfg`` (the questions
    :func:`filter_samples` keeps a path of), but draws them at random from the whole pool
    (seeded by ``seed``), one path each drawn at random among the question's usable paths (an
    answer was extracted and :func:`finalize_path` keeps it; its own answer is the direct
    formats' completion). Which questions won the vote never matters, only how many did; a
    question without a usable path is passed over for the next drawn one (every question LMSI
    keeps has one, so the pool always suffices; ``n_short``, the draws left unfilled, is a
    check that stays 0). ``majority`` / ``agreement`` in the rationales are analysis only.

    >>> recs = [{"id": f"q{i}", "question": f"What is {i} + 1?",
    ...          "paths": [f"{i} + 1 = {i + 1}.", "It is 0."], "answers": [str(i + 1), "0"]}
    ...         for i in range(6)]
    >>> recs[0]["answers"] = ["1", "1"]  # the only question whose vote passes min_agreement 1
    >>> cfg = FilterConfig(min_agreement=1.0)
    >>> rats, train, stats = filter_format_only(recs, cfg, seed=0)
    >>> stats["n_lmsi_questions"], stats["n_selected"], stats["n_kept_paths"]
    (1, 1, 1)
    >>> [r["id"] for r in rats if r["selected"]], len(train)  # not q0: drawn from the pool
    (['q5'], 4)
    """
    lmsi, _, _ = filter_samples(records, cfg)  # validates the records too
    n_target = sum(any(r["kept"]) for r in lmsi)
    rng = random.Random(f"format_only:{seed}")
    order = list(range(len(records)))
    rng.shuffle(order)
    picks: dict[int, tuple[int, str]] = {}
    for i in order:
        if len(picks) == n_target:
            break
        usable = [
            (j, text)
            for j, (p, a) in enumerate(zip(records[i]["paths"], records[i]["answers"], strict=True))
            if a is not None and (text := finalize_path(p, a)) is not None
        ]
        if usable:
            picks[i] = rng.choice(usable)
    formats = cfg.formats.enabled()
    rationales: list[dict] = []
    train: list[dict] = []
    per_format = dict.fromkeys(STYLES, 0)
    n_paths = n_no_answer = 0
    for i, (rec, voted) in enumerate(zip(records, lmsi, strict=True)):
        paths, answers = rec["paths"], rec["answers"]
        n_paths += len(paths)
        n_no_answer += sum(a is None for a in answers)
        kept, texts = [False] * len(paths), []
        if i in picks:
            j, text = picks[i]
            kept[j], texts = True, [text]
            _add_examples(
                train, per_format, rec["id"], rec["question"], texts, answers[j], formats,
                cfg.n_shots,
            )  # fmt: skip
        rationales.append(
            {
                "id": rec["id"],
                "question": rec["question"],
                "paths": paths,
                "answers": answers,
                "majority": voted["majority"],
                "agreement": voted["agreement"],
                "kept": kept,
                "kept_texts": texts,
                "selected": i in picks,
                "method": "format_only",
            }
        )
    stats = _stats(
        rationales,
        train,
        per_format,
        [r["agreement"] for r in lmsi],
        n_paths=n_paths,
        n_kept_paths=len(picks),
        n_no_answer=n_no_answer,
    )
    stats |= {"n_lmsi_questions": n_target, "n_short": n_target - len(picks)}
    return rationales, train, stats | collapse_monitors(records)


# ---------------------------------------------------------------------------- other methods


_NEEDS = {
    "self": ("refined_paths", "refined_answers", "final_verdicts"),
    "lmsi_self": ("refined_paths", "refined_answers", "final_verdicts"),
    "star": ("gold", "correct"),
    "rest_em": ("gold", "correct"),
}


def _check_method_keys(i: int, rec: dict, method: str, n_paths: int) -> None:
    for key in _NEEDS[method]:
        if key not in rec:
            raise InputError(
                f"record {i + 1} (id={rec.get('id')!r}): missing key {key!r} needed by method "
                f"{method!r}; refined.jsonl was written for another method, rerun the refine "
                "stage (dvc repro)"
            )
        value = rec[key]
        if key != "gold" and (not isinstance(value, list) or len(value) != n_paths):
            raise InputError(
                f"record {i + 1} (id={rec.get('id')!r}): {key!r} must be a list with one entry "
                f"per path ({n_paths}); rerun the refine stage"
            )


def filter_refined(
    records: list[dict],
    cfg: FilterConfig,
    method: str = "lmsi",
    require_consistency: bool = True,
    rest_em_max_per_question: int = 4,
    seed: int = 0,
) -> tuple[list[dict], list[dict], dict]:
    """Select training paths by ``method`` from refine-stage records; like
    :func:`filter_samples`, returns ``(rationales, train_examples, stats)``.

    * ``lmsi``: exactly :func:`filter_samples` (majority vote over the sampled answers).
    * ``self``: refined paths whose final self-verdict is "correct"; direct formats answer with
      the most common kept answer.
    * ``lmsi_self``: the majority vote over the *refined* answers (``min_agreement``) and, with
      ``require_consistency``, only verdict-correct paths that agree with it.
    * ``star``: paths whose answer matches the gold, plus the rationalization of an unsolved
      question when it reached the gold; direct formats answer with the gold.
    * ``rest_em``: paths whose answer matches the gold, at most ``rest_em_max_per_question``
      (0 = all) per question (instead of ``max_paths_per_question``).
    * ``format_only``: :func:`filter_format_only` (the no-vote control; ``seed`` draws its
      questions and paths).

    Kept paths are cleaned by :func:`finalize_path`, deduplicated and capped as in LMSI.

    >>> recs = [{"id": "q1", "question": "Tom has 3 apples and buys 2. How many?",
    ...          "paths": ["3 + 2 = 6.", "3 + 2 = 5."], "answers": ["6", "5"],
    ...          "refined_paths": ["3 + 2 = 5.", "3 + 2 = 5."], "refined_answers": ["5", "5"],
    ...          "final_verdicts": [True, None]}]
    >>> cfg = FilterConfig(formats={"fewshot_cot": False, "fewshot_direct": False,
    ...                             "zeroshot_cot": True, "zeroshot_direct": True})
    >>> rats, train, stats = filter_refined(recs, cfg, "self")
    >>> [(t["format"], t["completion"]) for t in train]
    [('zeroshot_cot', ' 3 + 2 = 5. The answer is 5.'), ('zeroshot_direct', ' The answer is 5.')]
    >>> rats[0]["kept"], stats["n_verdict_correct"], stats["n_verdict_none"]
    ([True, False], 1, 1)
    """
    if method == "lmsi":
        return filter_samples(records, cfg)
    if method == "format_only":
        return filter_format_only(records, cfg, seed)
    if method not in _NEEDS:
        raise InputError(f"method {method!r} is not one of {', '.join(METHODS)}")
    formats = cfg.formats.enabled()
    cap = rest_em_max_per_question if method == "rest_em" else cfg.max_paths_per_question
    rationales: list[dict] = []
    train: list[dict] = []
    per_format = dict.fromkeys(STYLES, 0)
    seen_ids: set[str | int] = set()
    agreements: list[float] = []
    n_paths = n_no_answer = n_candidates = n_kept = n_duplicates = n_unusable = 0
    n_verdict_correct = n_verdict_none = n_rationalized = 0

    for i, rec in enumerate(records):
        qid, question, paths, answers = _check_sample(i, rec)
        if qid in seen_ids:
            raise InputError(
                f"record {i + 1}: id {qid!r} appears twice; each question needs a unique id"
            )
        seen_ids.add(qid)
        _check_method_keys(i, rec, method, len(paths))
        n_paths += len(paths)
        if method in SELF_METHODS:
            final_paths, final_answers = rec["refined_paths"], rec["refined_answers"]
            verdicts = rec["final_verdicts"]
            n_verdict_correct += sum(v is True for v in verdicts)
            n_verdict_none += sum(v is None for v in verdicts)
            ok = [v is True for v in verdicts]
            majority, agreement = majority_vote(final_answers)
            if method == "lmsi_self" and require_consistency:
                agree = majority is not None and agreement >= cfg.min_agreement
                ok = [o and agree and a == majority for o, a in zip(ok, final_answers, strict=True)]
            direct = majority if method == "lmsi_self" else None
        else:
            final_paths, final_answers = list(paths), list(answers)
            ok = [bool(c) for c in rec["correct"]]
            majority, agreement = majority_vote(answers)
            direct = rec["gold"]
            if method == "star" and rec.get("rationalization_correct"):
                final_paths.append(rec["rationalization"])
                final_answers.append(extract_answer(rec["rationalization"]))
                ok.append(True)
                n_rationalized += 1
        n_no_answer += sum(a is None for a in final_answers[: len(paths)])
        agreements.append(agreement)

        eligible = [o and a is not None for o, a in zip(ok, final_answers, strict=True)]
        kept, texts, kept_answers, counts = keep_paths(
            final_paths, final_answers, eligible, cap, cfg.dedupe
        )
        n_candidates += counts["candidates"]
        n_unusable += counts["unusable"]
        n_duplicates += counts["duplicates"]
        n_kept += len(texts)
        selected = bool(texts)
        if selected:
            if direct is None:
                direct = majority_vote(kept_answers)[0]
            _add_examples(train, per_format, qid, question, texts, direct, formats, cfg.n_shots)
        rationales.append(
            {
                "id": qid,
                "question": question,
                "paths": paths,
                "answers": answers,
                "final_answers": final_answers,
                "majority": majority,
                "agreement": agreement,
                "kept": kept,
                "kept_texts": texts,
                "selected": selected,
                "method": method,
            }
        )

    stats = _stats(
        rationales,
        train,
        per_format,
        agreements,
        n_paths=n_paths,
        n_candidate_paths=n_candidates,
        n_kept_paths=n_kept,
        n_duplicate_paths=n_duplicates,
        n_unusable_paths=n_unusable,
        n_no_answer=n_no_answer,
    )
    if method in SELF_METHODS:
        stats |= {"n_verdict_correct": n_verdict_correct, "n_verdict_none": n_verdict_none}
    if method == "star":
        stats["n_rationalized"] = n_rationalized
    return rationales, train, stats | collapse_monitors(records)
