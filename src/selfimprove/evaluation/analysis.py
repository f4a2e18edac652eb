"""Analysis-only measures that use the training pool's labels (never fed back into training)."""

from __future__ import annotations

import math
from pathlib import Path

from selfimprove.core.answers import answers_match, gold_answer


def majority_precision(rationales: list[dict], labels: dict[str, str]) -> dict:
    """How often the self-consistency majority is right, over all and over selected questions;
    with per-path ``kept`` flags, also ``kept_precision``: the share of the paths kept for
    training whose own answer is right (``final_answers`` where the method has them). For
    method format_only, which trains on random paths, that is the number to compare.

    >>> rats = [{"id": "a", "majority": "4", "selected": True},
    ...         {"id": "b", "majority": "7", "selected": True},
    ...         {"id": "c", "majority": "1", "selected": False}]
    >>> majority_precision(rats, {"a": "#### 4", "b": "#### 8", "c": "#### 1"})
    {'majority_accuracy': 0.6666666666666666, 'selected_precision': 0.5, 'n_labeled': 3}
    >>> rats[0] |= {"answers": ["4", "5"], "kept": [True, True]}
    >>> majority_precision(rats, {"a": "#### 4", "b": "#### 8"})["kept_precision"]
    0.5
    """
    scored = [(r, labels[r["id"]]) for r in rationales if r["id"] in labels]
    right = [answers_match(r["majority"], gold_answer(g)) for r, g in scored]
    sel = [ok for (r, _), ok in zip(scored, right, strict=True) if r["selected"]]
    out = {
        "majority_accuracy": sum(right) / len(right) if right else 0.0,
        "selected_precision": sum(sel) / len(sel) if sel else 0.0,
        "n_labeled": len(scored),
    }
    if any("kept" in r for r, _ in scored):
        kept = [
            answers_match(a, gold_answer(g))
            for r, g in scored
            if "kept" in r
            for a, k in zip(r.get("final_answers", r["answers"]), r["kept"], strict=True)
            if k
        ]
        out["kept_precision"] = sum(kept) / len(kept) if kept else 0.0
    return out


def flatten_metrics(d: dict, prefix: str = "") -> dict[str, float]:
    """Numeric, finite leaves of nested metrics as one flat dict with dotted keys (what
    `dvc metrics show` prints); lists and strings are skipped.

    >>> flatten_metrics({"arith": {"fewshot_cot": {"strict": 0.5, "n": 10}}, "x": [1]})
    {'arith.fewshot_cot.strict': 0.5, 'arith.fewshot_cot.n': 10.0}
    """
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten_metrics(v, f"{key}.")
        elif isinstance(v, bool | int | float) and math.isfinite(float(v)):
            out[key] = float(v)
    return out


def verdict_precision(refined: list[dict], labels: dict[str, str]) -> dict:
    """How good the model's own verdicts are, against the gold (analysis only, never training).

    ``refined``: refine-stage records of method self/lmsi_self (``verdicts`` per path, one per
    judged answer, and ``refined_answers``); records without verdicts are skipped, so an lmsi
    round gives ``{}``. Initial verdicts judge the sampled answers, final verdicts the answers
    after refinement. ``precision`` = share of "correct" verdicts on right answers, ``recall`` =
    share of right answers judged "correct", ``accuracy`` = share of parsable verdicts that
    match the gold; ``answer_accuracy`` / ``refined_accuracy`` = share of answers right before /
    after refinement; ``fixed`` / ``broken`` count paths that refinement turned right / wrong.

    >>> recs = [{"id": "a", "answers": ["4", "5", "4"], "refined_answers": ["4", "4", "4"],
    ...          "verdicts": [[True], [False, True], [None]], "final_verdicts": [True, True, None]}]
    >>> out = verdict_precision(recs, {"a": "#### 4"})
    >>> out["initial_precision"], out["initial_recall"], out["n_unparsable"], out["fixed"]
    (1.0, 1.0, 1, 1)
    >>> out["final_precision"], out["refined_accuracy"]
    (1.0, 1.0)
    >>> verdict_precision([{"id": "a", "answers": ["4"]}], {"a": "4"})
    {}
    """
    init_pairs: list[tuple[bool, bool]] = []  # (verdict, answer right)
    final_pairs: list[tuple[bool, bool]] = []
    unparsable = judged = fixed = broken = 0
    right_before = right_after = 0
    for rec in refined:
        if "verdicts" not in rec or rec["id"] not in labels:
            continue
        gold = gold_answer(labels[rec["id"]])
        for a0, a1, vs, fv in zip(
            rec["answers"],
            rec["refined_answers"],
            rec["verdicts"],
            rec["final_verdicts"],
            strict=True,
        ):
            if not vs:
                continue
            judged += 1
            ok0, ok1 = answers_match(a0, gold), answers_match(a1, gold)
            right_before += ok0
            right_after += ok1
            fixed += (not ok0) and ok1
            broken += ok0 and not ok1
            unparsable += sum(v is None for v in vs)
            if vs[0] is not None:
                init_pairs.append((vs[0], ok0))
            if fv is not None:
                final_pairs.append((fv, ok1))
    if not judged:
        return {}

    def rates(pairs: list[tuple[bool, bool]], prefix: str) -> dict:
        said_yes = [ok for v, ok in pairs if v]
        right = [v for v, ok in pairs if ok]
        return {
            f"{prefix}_n": len(pairs),
            f"{prefix}_precision": sum(said_yes) / len(said_yes) if said_yes else 0.0,
            f"{prefix}_recall": sum(right) / len(right) if right else 0.0,
            f"{prefix}_accuracy": sum(v == ok for v, ok in pairs) / len(pairs) if pairs else 0.0,
        }

    return {
        "n_judged": judged,
        "n_unparsable": unparsable,
        **rates(init_pairs, "initial"),
        **rates(final_pairs, "final"),
        "answer_accuracy": right_before / judged,
        "refined_accuracy": right_after / judged,
        "fixed": fixed,
        "broken": broken,
    }


#: the step records of a round whose numbers go to MLflow, each under ``<step>.``
STEP_FILES = ("generate", "refine", "filter", "finetune", "warmstart", "meta_skill")


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


def round_analysis(
    out: Path, labels_path: Path, has_refined: bool, round_name: str
) -> tuple[dict[str, float], list[tuple[Path, str]]]:
    """What the track stage logs of round folder ``out``: ``(metrics, datasets)``.

    ``metrics``: every score of the round (scores.json, not only the DVC headline) and every step
    record (``<step>.<key>``), flattened, with this workspace's timings of the step when it ran
    here (none when restored from the run cache: ``core.timings.read_timings``); with
    rationales, the kept majority's precision against the training labels (``analysis.``, for
    analysis only: no step reads labels from here) and, when ``has_refined`` (the method's refine
    step writes records of its own), the verdicts' precision (``analysis.verdict.``).
    ``datasets``: ``(path, context)`` of the rationales, the training set, the preference pairs
    (scpo), the refined records and the meta-skill corpus, where they exist.
    """
    from selfimprove.core.io import read_jsonl
    from selfimprove.core.timings import read_timings
    from selfimprove.evaluation.headline import read_round_scores

    metrics = flatten_metrics(read_round_scores(out))
    for step in STEP_FILES:
        metrics |= flatten_metrics(_read_json(out / f"{step}.json"), f"{step}.")
        # DVC's stage name: warmstart/meta_skill run once, the others once per round
        stage = step if step in ("warmstart", "meta_skill") else f"{step}@{round_name}"
        metrics |= flatten_metrics(read_timings(out / f"{step}.json", stage), f"{step}.")
    datasets: list[tuple[Path, str]] = []
    if (out / "rationales.jsonl").exists():
        rationales = read_jsonl(out / "rationales.jsonl")
        labels = {r["id"]: r["answer"] for r in read_jsonl(labels_path)}
        metrics |= flatten_metrics(majority_precision(rationales, labels), "analysis.")
        datasets = [(out / "rationales.jsonl", "rationales"), (out / "train.jsonl", "training")]
        pairs = out / "pairs.jsonl"
        if pairs.exists() and pairs.stat().st_size > 0:  # scpo: the preference pairs
            datasets.append((pairs, "preference"))
        refined = out / "refined.jsonl"
        if has_refined and refined.exists():
            # per path: the model's feedback, verdicts and refined answers (or gold marks)
            datasets.append((refined, "refinement"))
            metrics |= flatten_metrics(
                verdict_precision(read_jsonl(refined), labels), "analysis.verdict."
            )
    corpus = out / "meta_skill.jsonl"
    if corpus.exists() and corpus.stat().st_size > 0:  # r0 of self/lmsi_self
        datasets.append((corpus, "meta_skill"))
    return metrics, datasets
