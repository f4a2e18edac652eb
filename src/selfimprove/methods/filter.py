"""The filter step: one selection loop (:func:`select`) for every method -- the method's recipe
(:mod:`selfimprove.recipes`) says which paths of a question are eligible -- turning the kept
paths into training examples in several prompt formats (pure, deterministic).

For lmsi, Huang et al. 2022 ("Large Language Models Can Self-Improve") keep every path whose
answer is the majority answer (``min_agreement: 0``) and train on four formats: few-shot and
zero-shot prompts with a chain-of-thought completion, and the same with a direct "The answer is
N." completion. A rationale is trained on as generated, only cleaned up so that it ends with its
answer sentence: text after the last "The answer is N" is dropped, and a path whose answer was
found without that sentence gets " The answer is N." appended.
"""

from __future__ import annotations

import math
from dataclasses import replace

from selfimprove.config.methods import FilterConfig
from selfimprove.core.io import InputError
from selfimprove.core.prompts import STYLES, build_prompt, direct_completion, is_cot
from selfimprove.core.voting import (
    agreement_histogram,
    answer_entropy,
    distinct_answers,
    majority_vote,
)
from selfimprove.recipes import get_recipe
from selfimprove.recipes.base import Recipe, Round, finalize_path, keep_paths, rationale_record
from selfimprove.recipes.format_only import RECIPE as FORMAT_ONLY
from selfimprove.recipes.lmsi import RECIPE as LMSI

__all__ = ["finalize_path", "keep_paths", "select", "filter_samples", "filter_format_only"]


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
    weight: float = 1.0,
) -> None:
    """Append one question's training examples: every kept path in each CoT format, one
    "The answer is N." completion in each direct format (``weight``: written when not 1)."""
    extra = {} if weight == 1 else {"weight": weight}
    for fmt in formats:
        prefix, suffix = build_prompt(question, fmt, n_shots)
        completions = [" " + t for t in texts] if is_cot(fmt) else [direct_completion(answer)]
        for completion in completions:
            train.append(
                {"id": qid, "format": fmt, "prompt": prefix + suffix, "completion": completion}
                | extra
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


#: filter.json's collapse monitors that vote.json repeats
COLLAPSE_KEYS = ("answer_entropy", "distinct_answers", "mean_path_tokens")


def vote_summary(stats: dict) -> dict:
    """The few numbers of filter.json worth comparing across experiments (`dvc metrics show`).

    >>> vote_summary({"selected_fraction": 0.5, "mean_agreement": 0.75, "n_kept_paths": 6})
    {'kept_fraction': 0.5, 'mean_agreement': 0.75, 'n_kept': 6}
    >>> vote_summary({"selected_fraction": 0.5, "mean_agreement": 0.75, "n_kept_paths": 6,
    ...               "answer_entropy": 0.4, "distinct_answers": 1.5, "mean_path_tokens": 40.0})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'kept_fraction': 0.5, 'mean_agreement': 0.75, 'n_kept': 6, 'answer_entropy': 0.4,
     'distinct_answers': 1.5, 'mean_path_tokens': 40.0}
    """
    return {
        "kept_fraction": stats["selected_fraction"],  # questions whose vote passed
        "mean_agreement": stats["mean_agreement"],  # majority share, averaged over questions
        "n_kept": stats["n_kept_paths"],  # paths that became training data
        # collapse monitors (methods.filter.collapse_monitors), where filter.json has them
        **{k: stats[k] for k in COLLAPSE_KEYS if k in stats},
    }


def _check_records(records: list[dict], recipe: Recipe) -> None:
    """Every record well-formed, ids unique, and the keys the recipe reads present."""
    seen_ids: set[str | int] = set()
    for i, rec in enumerate(records):
        qid, _, paths, _ = _check_sample(i, rec)
        if qid in seen_ids:
            raise InputError(
                f"sample {i + 1}: id {qid!r} appears twice; each question needs a unique id"
            )
        seen_ids.add(qid)
        for key in recipe.needs_keys:
            if key not in rec:
                raise InputError(
                    f"record {i + 1} (id={rec.get('id')!r}): missing key {key!r} needed by "
                    f"method {recipe.name!r}; refined.jsonl was written for another method, rerun "
                    "the refine stage (dvc repro)"
                )
            value = rec[key]
            if key not in recipe.scalar_keys and (
                not isinstance(value, list) or len(value) != len(paths)
            ):
                raise InputError(
                    f"record {i + 1} (id={rec.get('id')!r}): {key!r} must be a list with one "
                    f"entry per path ({len(paths)}); rerun the refine stage"
                )


def vote_weight(share: float, cfg: FilterConfig) -> float:
    """The weight ``filter.weighting`` gives a question of vote share ``share`` (1 when none).

    >>> vote_weight(0.75, FilterConfig()), vote_weight(0.75, FilterConfig(weighting="share"))
    (1.0, 0.75)
    >>> round(vote_weight(0.5, FilterConfig(weighting="exp", weight_beta=0.25)), 4)  # e^2
    7.3891
    """
    if cfg.weighting == "share":
        return share
    if cfg.weighting == "exp":
        return math.exp(share / cfg.weight_beta)
    return 1.0


def in_drop_band(share: float, cfg: FilterConfig) -> bool:
    """Whether ``filter.drop_band`` drops a question of vote share ``share``.

    >>> band = FilterConfig(drop_band=[0.4, 0.7])
    >>> in_drop_band(0.5, band), in_drop_band(0.7, band), in_drop_band(0.5, FilterConfig())
    (True, False, False)
    """
    return bool(cfg.drop_band) and cfg.drop_band[0] <= share < cfg.drop_band[1]


def select(
    records: list[dict], recipe: Recipe, cfg: FilterConfig, knobs=None, seed: int = 0
) -> tuple[list[dict], list[dict], dict]:
    """The one selection loop of every method: returns ``(rationales, train_examples, stats)``.

    ``records``: refined.jsonl (``{"id", "question", "paths": [str], "answers": [str | None]}``
    plus what the recipe's refine step adds). Per question the recipe's ``choose`` says which
    paths are eligible, the vote and the direct-format answer; the eligible paths are kept in
    order, at most ``recipe.max_paths`` (0 = all), cleaned by :func:`finalize_path` (unusable ones
    dropped) and deduplicated (``cfg.dedupe``). A selected question becomes training examples:
    each kept path in every enabled CoT format, one direct answer in every enabled direct format.
    ``knobs``: the method's own params section (None: its defaults); ``seed``: the round's seed
    (random draws of a recipe). Order follows the input.

    ``stats``: n_questions, n_selected, selected_fraction, n_paths, the recipe's path counters
    (``recipe.path_stats``) and own counters, n_train_examples, n_train_<format>,
    mean_agreement, no_answer_rate, agreement_histogram, and the collapse monitors
    (:func:`collapse_monitors`).

    The filter section's weighting and curriculum (defaults off: outputs unchanged): a question
    whose vote share is in ``drop_band`` is not selected (``n_dropped_band``); ``weighting``
    multiplies its examples' weight by :func:`vote_weight`; ``order: easy_to_hard`` sorts the
    training examples by vote share, highest first.

    >>> recs = [{"id": "q1", "question": "Tom has 3 apples and buys 2. How many?",
    ...          "paths": ["3 + 2 = 6.", "3 + 2 = 5."], "answers": ["6", "5"],
    ...          "refined_paths": ["3 + 2 = 5.", "3 + 2 = 5."], "refined_answers": ["5", "5"],
    ...          "final_verdicts": [True, None]}]
    >>> cfg = FilterConfig(formats={"fewshot_cot": False, "fewshot_direct": False,
    ...                             "zeroshot_cot": True, "zeroshot_direct": True})
    >>> rats, train, stats = select(recs, get_recipe("self"), cfg)
    >>> [(t["format"], t["completion"]) for t in train]
    [('zeroshot_cot', ' 3 + 2 = 5. The answer is 5.'), ('zeroshot_direct', ' The answer is 5.')]
    >>> rats[0]["kept"], stats["n_verdict_correct"], stats["n_verdict_none"]
    ([True, False], 1, 1)
    """
    if knobs is None and recipe.params is not None:
        knobs = recipe.params()
    _check_records(records, recipe)
    rnd = Round(cfg, knobs, seed, select_with=lambda other: select(records, other, cfg, None, seed))
    plan = recipe.plan(records, rnd) if recipe.plan is not None else None
    rnd = Round(cfg, knobs, seed, plan, rnd.select_with)
    formats = cfg.formats.enabled()
    cap = recipe.max_paths(cfg, knobs)
    rationales: list[dict] = []
    train: list[dict] = []
    per_format = dict.fromkeys(STYLES, 0)
    agreements: list[float] = []
    paths_total = {"candidates": 0, "kept": 0, "duplicates": 0, "unusable": 0}
    extra = dict.fromkeys(recipe.extra_stats, 0)
    n_paths = n_no_answer = n_band = 0
    for i, rec in enumerate(records):
        choice = recipe.choose(i, rec, rnd)
        if in_drop_band(choice.agreement, cfg):  # medium agreement: not trained on
            n_band += 1
            choice = replace(choice, eligible=[False] * len(choice.eligible), selected=False)
        if cfg.weighting != "none":
            choice = replace(choice, weight=choice.weight * vote_weight(choice.agreement, cfg))
        n_paths += len(rec["paths"])
        n_no_answer += sum(a is None for a in choice.answers[: len(rec["paths"])])
        agreements.append(choice.agreement)
        for key, n in choice.counts.items():
            extra[key] = extra.get(key, 0) + n
        kept, texts, kept_answers, counts = keep_paths(
            choice.paths, choice.answers, choice.eligible, cap, cfg.dedupe
        )
        for key in ("candidates", "unusable", "duplicates"):
            paths_total[key] += counts[key]
        paths_total["kept"] += len(texts)
        selected = bool(texts) if choice.selected is None else choice.selected
        if selected:
            direct = choice.direct if choice.direct is not None else majority_vote(kept_answers)[0]
            _add_examples(train, per_format, rec["id"], rec["question"], texts, direct, formats,
                          cfg.n_shots, choice.weight)  # fmt: skip
        rationales.append(rationale_record(recipe, rec, choice, kept, texts, selected))
    if cfg.order == "easy_to_hard":  # a curriculum: highest vote share first (sort is stable)
        share = {r["id"]: r["agreement"] for r in rationales}
        train.sort(key=lambda t: -share[t["id"]])
    counters = {name: paths_total[key] for key, name in recipe.path_stats.items()}
    stats = _stats(rationales, train, per_format, agreements, n_paths=n_paths,
                   n_no_answer=n_no_answer, **counters)  # fmt: skip
    stats |= extra
    if cfg.drop_band:
        stats["n_dropped_band"] = n_band
    if isinstance(plan, dict):
        stats |= plan.get("stats", {})
    return rationales, train, stats | collapse_monitors(records)


def filter_samples(samples: list[dict], cfg: FilterConfig) -> tuple[list[dict], list[dict], dict]:
    """lmsi's filter (:mod:`selfimprove.recipes.lmsi`): vote, select and format.

    ``rationales``: one record per question with ``majority``, ``agreement``, ``kept`` (per
    path: it went into the training set) and ``selected`` (``agreement >= min_agreement``
    and a majority exists). ``stats`` as :func:`select`'s, with n_agreeing_paths (agree with the
    majority of a selected question), n_kept_paths, n_duplicate_paths, n_unusable_paths (empty,
    or their "The answer is" states another number).

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
    return select(samples, LMSI, cfg)


def filter_format_only(
    records: list[dict], cfg: FilterConfig, seed: int = 0
) -> tuple[list[dict], list[dict], dict]:
    """The format-only control (:mod:`selfimprove.recipes.format_only`); ``seed`` draws its
    questions and paths.

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
    return select(records, FORMAT_ONLY, cfg, seed=seed)


def filter_refined(
    records: list[dict], cfg: FilterConfig, method: str = "lmsi", knobs=None, seed: int = 0
) -> tuple[list[dict], list[dict], dict]:
    """:func:`select` with method ``method``'s recipe (``knobs``: its params section)."""
    return select(records, get_recipe(method), cfg, knobs, seed)
