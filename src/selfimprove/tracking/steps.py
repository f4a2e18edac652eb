"""Per-step metrics of an online-RL train step (method ttrl), logged to the round's MLflow run
by the track stage: every number of the model folder's ``train_log.jsonl`` records (reward,
majority_ratio, masked_fraction, entropy, completion_length, loss, ...) under ``train.<key>`` at
``step`` = the optimizer step, and, for analysis only, ``train.label_accuracy``: the share of
the step's groups with a majority whose majority answer equals the held-aside training label
(the train step never reads labels; this is computed afterwards, here).
"""

from __future__ import annotations

import math

from selfimprove.core.answers import answers_match, gold_answer


def label_accuracy(groups: list[dict], labels: dict[str, str]) -> tuple[float | None, int]:
    """``(share of groups with a majority whose majority is the gold, number of such groups)``;
    None when no group has a majority.

    >>> label_accuracy([{"id": "a", "majority": "4"}, {"id": "b", "majority": "5"},
    ...                 {"id": "c", "majority": None}], {"a": "#### 4", "b": "6", "c": "1"})
    (0.5, 2)
    """
    voted = [g for g in groups if g.get("majority") is not None and g["id"] in labels]
    if not voted:
        return None, 0
    right = sum(answers_match(g["majority"], gold_answer(labels[g["id"]])) for g in voted)
    return right / len(voted), len(voted)


def step_metrics(records: list[dict], labels: dict[str, str]) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` of every finite number in the per-step ``records`` and each step's
    :func:`label_accuracy`.

    >>> step_metrics([{"step": 1, "reward": 0.5, "lr": None,
    ...                "groups": [{"id": "a", "majority": "4"}]}], {"a": "4"})
    [('train.reward', 0.5, 1), ('train.label_accuracy', 1.0, 1), ('train.n_majority', 1.0, 1)]
    """
    out = []
    for rec in records:
        step = int(rec["step"])
        for key, value in rec.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                out.append((f"train.{key}", float(value), step))
        if "groups" in rec:
            acc, n = label_accuracy(rec["groups"], labels)
            if acc is not None:
                out.append(("train.label_accuracy", acc, step))
            out.append(("train.n_majority", float(n), step))
    return out


def round_label_accuracy(records: list[dict], labels: dict[str, str]) -> dict[str, float]:
    """The round's ``analysis.ttrl.label_accuracy`` over every step's groups (and counts)."""
    groups = [g for rec in records for g in rec.get("groups", [])]
    if not groups:
        return {}
    acc, n = label_accuracy(groups, labels)
    out = {"analysis.ttrl.n_groups": float(len(groups)), "analysis.ttrl.n_majority": float(n)}
    return out | ({"analysis.ttrl.label_accuracy": acc} if acc is not None else {})


def log_step_metrics(run_id: str, rows: list[tuple[str, float, int]]) -> None:
    """Log ``rows`` to the MLflow run ``run_id`` (batched)."""
    import time

    from mlflow.entities import Metric

    from selfimprove.tracking.store import mlflow_client

    client = mlflow_client()
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, s) for k, v, s in rows]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000], synchronous=True)
