"""Analysis-only measures that use the training pool's labels (never fed back into training)."""

from __future__ import annotations

from selfimprove.answers import answers_match, gold_answer


def majority_precision(rationales: list[dict], labels: dict[str, str]) -> dict:
    """How often the self-consistency majority is right, over all and over selected questions.

    >>> rats = [{"id": "a", "majority": "4", "selected": True},
    ...         {"id": "b", "majority": "7", "selected": True},
    ...         {"id": "c", "majority": "1", "selected": False}]
    >>> majority_precision(rats, {"a": "#### 4", "b": "#### 8", "c": "#### 1"})
    {'majority_accuracy': 0.6666666666666666, 'selected_precision': 0.5, 'n_labeled': 3}
    """
    scored = [(r, labels[r["id"]]) for r in rationales if r["id"] in labels]
    right = [answers_match(r["majority"], gold_answer(g)) for r, g in scored]
    sel = [ok for (r, _), ok in zip(scored, right) if r["selected"]]
    return {
        "majority_accuracy": sum(right) / len(right) if right else 0.0,
        "selected_precision": sum(sel) / len(sel) if sel else 0.0,
        "n_labeled": len(scored),
    }


def flatten_metrics(d: dict, prefix: str = "") -> dict[str, float]:
    """Nested metrics as one flat dict with dotted keys (what `dvc metrics show` prints).

    >>> flatten_metrics({"arith": {"fewshot_cot": {"strict": 0.5, "n": 10}}, "x": [1]})
    {'arith.fewshot_cot.strict': 0.5, 'arith.fewshot_cot.n': 10.0}
    """
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten_metrics(v, f"{key}.")
        elif isinstance(v, bool | int | float):
            out[key] = float(v)
    return out
