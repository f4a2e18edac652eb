"""Self-feedback and self-refinement with the model itself (SELF), and the label-using baselines'
per-round records (STaR rationalization, ReST-EM correctness).

SELF's self-evolution round (Lu et al. 2023): for each sampled answer the model writes feedback
ending in a verdict; an answer it judges incorrect is rewritten given the feedback and judged
again, up to ``max_iterations`` rewrites or until the verdict is "correct". A verdict that
cannot be parsed stops the loop for that answer and is counted (never guessed). The same loop
refines greedy answers at evaluation time (:func:`refine_outputs`).

Every function takes a *sampler*: anything with
``sample(prefix, prompts, SamplingParams, desc=..., index_offset=...) -> list[list[Completion]]``
(:class:`selfimprove.sampling.transformers_sampler.TransformersSampler`, or a fake in tests).

STaR (Zelikman et al. 2022) and ReST-EM (Singh et al. 2023) use the gold answers of the training
questions: :func:`label_records` marks which paths are right; STaR's rationalization samples a
rationale with the gold answer as a hint (the hint is not in the training example). These two
methods are the only ones that read ``data/prepared/train_labels.jsonl``.
"""

from __future__ import annotations

import logging
import time

from selfimprove.config.methods import RefineConfig
from selfimprove.core.answers import answers_match, extract_answer, gold_answer
from selfimprove.core.io import InputError
from selfimprove.core.prompts import GSM8K_EXEMPLARS
from selfimprove.core.prompts.feedback import build_feedback_prompt, build_refine_prompt
from selfimprove.core.verdict import (
    FEEDBACK_STOP,
    REFINE_STOP,
    clean_refined,
    one_line,
    split_feedback,
)

log = logging.getLogger(__name__)


def _params(cfg: RefineConfig, max_new_tokens: int, stop: tuple[str, ...], seed: int):
    from selfimprove.sampling.base import SamplingParams

    return SamplingParams(
        n=1,
        temperature=cfg.temperature,
        max_new_tokens=max_new_tokens,
        stop=stop,
        seed=seed,
    )


def self_feedback(
    sampler, items: list[tuple[str, str]], cfg: RefineConfig, seed: int = 0, desc: str = "feedback"
) -> list[tuple[str, bool | None]]:
    """The model's feedback on each ``(question, answer)``: ``(text, verdict or None)``."""
    if not items:
        return []
    prefix = build_feedback_prompt("", "", cfg.n_shots)[0]
    suffixes = [build_feedback_prompt(q, a, cfg.n_shots)[1] for q, a in items]
    outs = sampler.sample(
        prefix, suffixes, _params(cfg, cfg.feedback_max_new_tokens, FEEDBACK_STOP, seed), desc=desc
    )
    return [split_feedback(o[0].text) for o in outs]


def self_refine_once(
    sampler,
    items: list[tuple[str, str, str]],
    cfg: RefineConfig,
    seed: int = 0,
    desc: str = "refine",
) -> list[str]:
    """The model's rewrite of each ``(question, answer, feedback)``."""
    if not items:
        return []
    prefix = build_refine_prompt("", "", "", cfg.n_shots)[0]
    suffixes = [build_refine_prompt(q, a, f, cfg.n_shots)[1] for q, a, f in items]
    outs = sampler.sample(
        prefix, suffixes, _params(cfg, cfg.refine_max_new_tokens, REFINE_STOP, seed), desc=desc
    )
    return [clean_refined(o[0].text) for o in outs]


def refine_loop(
    sampler, items: list[tuple[str, str]], cfg: RefineConfig, seed: int = 0, desc: str = ""
) -> list[dict]:
    """Feedback -> refine -> feedback ... for every ``(question, answer)``, all in batches.

    Returns one dict per item: ``answers`` (the initial answer, then each rewrite),
    ``feedback`` and ``verdicts`` (one per answer judged). The last answer always has a
    verdict: the loop stops on "correct", on an unparsable verdict (``None``), or after
    ``max_iterations`` rewrites (the last rewrite is judged too).
    """
    state = [{"answers": [a], "feedback": [], "verdicts": []} for _, a in items]
    active = list(range(len(items)))
    for it in range(cfg.max_iterations + 1):
        judged = self_feedback(
            sampler,
            [(items[i][0], state[i]["answers"][-1]) for i in active],
            cfg,
            seed + 1000 * it,
            desc=f"{desc}feedback {it + 1}/{cfg.max_iterations + 1}",
        )
        wrong = []
        for i, (text, verdict) in zip(active, judged, strict=True):
            state[i]["feedback"].append(text)
            state[i]["verdicts"].append(verdict)
            if verdict is False:
                wrong.append(i)
        if it == cfg.max_iterations or not wrong:
            break
        rewrites = self_refine_once(
            sampler,
            [(items[i][0], state[i]["answers"][-1], state[i]["feedback"][-1]) for i in wrong],
            cfg,
            seed + 1000 * it + 500,
            desc=f"{desc}refine {it + 1}/{cfg.max_iterations}",
        )
        for i, text in zip(wrong, rewrites, strict=True):
            state[i]["answers"].append(text)
        active = wrong
    return state


def loop_stats(states: list[dict]) -> dict:
    """Counts over :func:`refine_loop` results.

    >>> loop_stats([{"answers": ["a", "b"], "feedback": ["x", "y"], "verdicts": [False, True]},
    ...             {"answers": ["c"], "feedback": ["z"], "verdicts": [None]}])
    ... # doctest: +NORMALIZE_WHITESPACE
    {'n_judged': 2, 'n_feedback': 3, 'n_unparsable': 1, 'unparsable_rate': 0.3333,
     'initial_verdict_correct': 0.0, 'final_verdict_correct': 0.5, 'n_refined': 1,
     'mean_iterations': 0.5}
    """
    n = len(states)
    n_fb = sum(len(s["verdicts"]) for s in states)
    unparsable = sum(v is None for s in states for v in s["verdicts"])
    return {
        "n_judged": n,
        "n_feedback": n_fb,
        "n_unparsable": unparsable,
        "unparsable_rate": round(unparsable / n_fb, 4) if n_fb else 0.0,
        "initial_verdict_correct": round(sum(s["verdicts"][0] is True for s in states) / n, 4)
        if n
        else 0.0,
        "final_verdict_correct": round(sum(s["verdicts"][-1] is True for s in states) / n, 4)
        if n
        else 0.0,
        "n_refined": sum(len(s["answers"]) > 1 for s in states),
        "mean_iterations": round(sum(len(s["answers"]) - 1 for s in states) / n, 4) if n else 0.0,
    }


def refine_outputs(
    sampler, questions: list[str], outputs: list[str], cfg: RefineConfig, seed: int = 0
) -> tuple[list[str], dict]:
    """Inference-time self-refinement: each output after the feedback/refine loop.

    Returns ``(refined_outputs, stats)``; an output the model judges correct (or whose
    verdict is unparsable) comes back unchanged. ``stats``: see :func:`loop_stats`, plus
    ``n_changed`` (outputs whose final answer number differs from the initial one).
    """
    if len(questions) != len(outputs):
        raise InputError(
            f"refine_outputs: {len(questions)} questions but {len(outputs)} outputs; pass one "
            "output per question"
        )
    states = refine_loop(
        sampler, [(q, one_line(o)) for q, o in zip(questions, outputs, strict=True)], cfg, seed
    )
    refined = [
        o if len(s["answers"]) == 1 else s["answers"][-1]
        for o, s in zip(outputs, states, strict=True)
    ]
    changed = sum(
        extract_answer(r) != extract_answer(o) for r, o in zip(refined, outputs, strict=True)
    )
    return refined, loop_stats(states) | {"n_changed": changed}


def refine_samples(
    sampler, samples: list[dict], cfg: RefineConfig, seed: int = 0
) -> tuple[list[dict], dict]:
    """Self-feedback and self-refinement of a round's sampled paths (method self/lmsi_self).

    Each record keeps ``id, question, paths, answers`` (the initial paths) and adds, per path:
    ``feedback`` and ``verdicts`` (lists, one per judged answer), ``refined_paths`` and
    ``refined_answers`` (the final answer of the loop), ``final_verdicts`` (the model's verdict
    on that final answer; None = unparsable or not judged) and ``iterations`` (rewrites).
    """
    t0 = time.perf_counter()
    items, where = [], []
    for qi, s in enumerate(samples):
        n = len(s["paths"]) if not cfg.max_paths else min(cfg.max_paths, len(s["paths"]))
        for j in range(n):
            items.append((s["question"], s["paths"][j]))
            where.append((qi, j))
    states = refine_loop(sampler, items, cfg, seed)
    by_path = dict(zip(where, states, strict=True))
    records = []
    for qi, s in enumerate(samples):
        rec = {k: s[k] for k in ("id", "question", "paths", "answers")}
        fb, vs, rp, ra, fv, its = [], [], [], [], [], []
        for j, (path, answer) in enumerate(zip(s["paths"], s["answers"], strict=True)):
            st = by_path.get((qi, j))
            if st is None:
                fb.append([])
                vs.append([])
                rp.append(path)
                ra.append(answer)
                fv.append(None)
                its.append(0)
                continue
            fb.append(st["feedback"])
            vs.append(st["verdicts"])
            changed = len(st["answers"]) > 1
            rp.append(st["answers"][-1] if changed else path)
            ra.append(extract_answer(st["answers"][-1]) if changed else answer)
            fv.append(st["verdicts"][-1])
            its.append(len(st["answers"]) - 1)
        rec |= {
            "feedback": fb,
            "verdicts": vs,
            "refined_paths": rp,
            "refined_answers": ra,
            "final_verdicts": fv,
            "iterations": its,
        }
        records.append(rec)
    stats = loop_stats(states) | {
        "n_questions": len(records),
        "n_answer_changed": sum(
            a != b for r in records for a, b in zip(r["answers"], r["refined_answers"], strict=True)
        ),
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    return records, stats


# ---------------------------------------------------------------------------- STaR / ReST-EM


def rationalization_prompt(question: str, gold: str, n_shots: int = 4) -> tuple[str, str]:
    """STaR's rationalization prompt: few-shot CoT whose questions carry the answer as a hint.

    >>> prefix, suffix = rationalization_prompt("Tom has 3 apples and buys 2. How many?", "5", 1)
    >>> print(prefix + suffix)  # doctest: +ELLIPSIS
    Q: There are 15 trees in the grove. ... plant today? (Hint: the answer is 6.)
    A: There are 15 trees originally. ... So there must have been 21 - 15 = 6. The answer is 6.
    <BLANKLINE>
    Q: Tom has 3 apples and buys 2. How many? (Hint: the answer is 5.)
    A:
    """
    if not 0 <= n_shots <= len(GSM8K_EXEMPLARS):
        raise ValueError(f"n_shots must be in 0..{len(GSM8K_EXEMPLARS)}, got {n_shots}")
    parts = [
        f"Q: {ex['question']} (Hint: the answer is {ex['answer']}.)\n"
        f"A: {ex['rationale']} The answer is {ex['answer']}.\n\n"
        for ex in GSM8K_EXEMPLARS[:n_shots]
    ]
    return "".join(parts), f"Q: {question.strip()} (Hint: the answer is {gold}.)\nA:"


def labels_by_id(labels: list[dict], where: str = "data/prepared/train_labels.jsonl") -> dict:
    """``{id: normalized gold}`` from ``{"id", "answer"}`` records (STaR / ReST-EM only).

    >>> labels_by_id([{"id": "a", "answer": "x = <<2+2=4>>4\\n#### 4"}])
    {'a': '4'}
    """
    out = {}
    for i, rec in enumerate(labels):
        try:
            out[rec["id"]] = gold_answer(str(rec["answer"]))
        except (KeyError, ValueError) as e:
            raise InputError(f"{where} record {i + 1}: {e}; rerun `dvc repro data`") from None
    return out


def label_records(samples: list[dict], golds: dict) -> tuple[list[dict], dict]:
    """Add ``gold`` and per-path ``correct`` to each sample (STaR / ReST-EM; uses labels).

    >>> recs, stats = label_records(
    ...     [{"id": "a", "question": "?", "paths": ["x", "y"], "answers": ["4", "5"]}], {"a": "4"})
    >>> recs[0]["gold"], recs[0]["correct"], stats
    ('4', [True, False], {'n_questions': 1, 'n_paths': 2, 'n_correct_paths': 1, 'n_solved': 1})
    """
    records = []
    for s in samples:
        if s["id"] not in golds:
            raise InputError(
                f"question {s['id']!r} has no gold answer in train_labels.jsonl; star/rest_em "
                "need a label for every training question (rerun `dvc repro data`)"
            )
        gold = golds[s["id"]]
        records.append(
            s | {"gold": gold, "correct": [answers_match(a, gold) for a in s["answers"]]}
        )
    return records, {
        "n_questions": len(records),
        "n_paths": sum(len(r["correct"]) for r in records),
        "n_correct_paths": sum(sum(r["correct"]) for r in records),
        "n_solved": sum(any(r["correct"]) for r in records),
    }


def star_rationalize(
    sampler, records: list[dict], cfg: RefineConfig, n_shots: int = 4, seed: int = 0
) -> dict:
    """Rationalize every labeled record with no correct path (in place): adds
    ``rationalization`` (text or None) and ``rationalization_correct``. Returns counts.

    A rationale that does not reach the gold, or that mentions the hint, is not kept.
    """
    todo = [r for r in records if not any(r["correct"])]
    for r in records:
        r["rationalization"] = None
        r["rationalization_correct"] = False
    if not todo:
        return {"n_rationalization_tried": 0, "n_rationalized": 0}
    prefix = rationalization_prompt("", "", n_shots)[0]
    suffixes = [rationalization_prompt(r["question"], r["gold"], n_shots)[1] for r in todo]
    from selfimprove.core.answers import STOP_SEQUENCES

    outs = sampler.sample(
        prefix,
        suffixes,
        _params(cfg, cfg.refine_max_new_tokens, STOP_SEQUENCES, seed),
        desc="star rationalization",
    )
    ok = 0
    for r, o in zip(todo, outs, strict=True):
        text = clean_refined(o[0].text)
        r["rationalization"] = text
        good = answers_match(extract_answer(text), r["gold"]) and "hint" not in text.lower()
        r["rationalization_correct"] = good
        ok += good
    return {"n_rationalization_tried": len(todo), "n_rationalized": ok}


def refine_round(
    step: str,
    samples: list[dict],
    cfg: RefineConfig,
    seed: int,
    sampler,
    golds,
    rationalize: bool = False,
    n_shots: int = 4,
) -> tuple[list[dict], dict]:
    """A round's refine step, as the method's recipe names it (``Recipe.refine``): ``none``
    (the samples unchanged), ``self_refine`` (:func:`refine_samples`) or ``gold``
    (:func:`label_records`, and with ``rationalize`` :func:`star_rationalize`). ``sampler()`` /
    ``golds()`` make the sampler / read the gold answers, called only when the step needs them.
    Returns ``(records, stats)``.

    >>> refine_round("none", [{"id": 1}], None, 0, sampler=None, golds=None)
    ([{'id': 1}], {})
    """
    if step == "self_refine":
        return refine_samples(sampler(), samples, cfg, seed)
    if step == "gold":
        records, stats = label_records(samples, golds())
        if rationalize:
            stats |= star_rationalize(sampler(), records, cfg, n_shots, seed)
        return records, stats
    if step != "none":
        raise ValueError(f"unknown refine step {step!r}; use none, self_refine or gold")
    return samples, {}
