"""Per-round summaries the report adds: the collapse monitors of each round's sampled paths
and the label-free choice of round with what it costs (pure file reading and arithmetic)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from selfimprove.config.evaluation import StatsConfig
from selfimprove.core.io import InputError, read_jsonl
from selfimprove.core.paths import round_index, sort_rounds
from selfimprove.evaluation.analysis import flatten_metrics, majority_precision
from selfimprove.evaluation.intervals import interval_rows, paired_difference
from selfimprove.tracking.selection import label_free_score, selection_loss


def read_json_object(path: Path) -> dict:
    """A step's JSON file as a dict; bad JSON or another type is an InputError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: not valid JSON ({e.msg}); rerun the stage that writes it"
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object; rerun the stage that writes it")
    return data


MONITOR_FIELDS = (
    "round",
    "round_name",
    "mean_agreement",
    "no_answer_rate",
    "answer_entropy",
    "distinct_answers",
    "mean_path_tokens",
    "selected_precision",
    "kept_precision",
)


def monitor_rows(
    rounds_dir: str | Path, rounds: Sequence[str], labels: Mapping[str, str] | None = None
) -> list[dict]:
    """Per round with a filter.json: the collapse monitors of its sampled paths (mean
    agreement, no-answer rate, answer entropy, distinct answers per question, mean path length
    in tokens; None where filter.json predates them) and, with the training pool ``labels``
    (analysis only), how often the kept majorities and the kept paths are right."""
    rounds_dir = Path(rounds_dir)
    rows = []
    for name in sort_rounds(rounds):
        path = rounds_dir / name / "filter.json"
        if not path.exists():
            continue
        s = read_json_object(path)
        row: dict = {"round": round_index(name), "round_name": name}
        row |= {k: s.get(k) for k in MONITOR_FIELDS[2:7]}
        row |= {"selected_precision": None, "kept_precision": None}
        rat = rounds_dir / name / "rationales.jsonl"
        if labels and rat.exists():
            mp = majority_precision(
                read_jsonl(rat, required=["id", "majority", "selected"]), dict(labels)
            )
            row |= {
                "selected_precision": mp["selected_precision"],
                "kept_precision": mp.get("kept_precision"),
            }
        rows.append(row)
    return rows


def selection_report(
    nested: Mapping[str, Mapping], scores_by_round: Mapping, cfg: StatsConfig
) -> dict:
    """The label-free choice of round (``tracking.best_by: label_free``) against the truly best
    round on every accuracy metric with an interval: per metric the chosen and best rounds,
    their values, the accuracy lost (``loss`` = best - chosen) and its paired-bootstrap
    interval over the questions both rounds scored (``scores_by_round``: per round,
    :func:`~selfimprove.evaluation.intervals.read_scores`). ``{}`` when no round has a
    label-free score (evaluate.sc_paths: 0).

    >>> ci = {"level": 0.95, "strict": {"lo": 0.0, "hi": 1.0}}
    >>> nested = {r: {"s": {"cot": {"strict": acc, "ci": ci},
    ...                     "sc": {"label_free": {"agreement": agr, "n": 4}}}}
    ...           for r, acc, agr in (("r0", 0.25, 0.5), ("r1", 0.75, 0.6), ("r2", 0.5, 0.9))}
    >>> (row,) = selection_report(nested, {}, StatsConfig())["metrics"]
    >>> row["chosen_round"], row["best_round"], row["loss"], row["loss_ci"]
    ('r2', 'r1', 0.25, None)
    """
    flat = {r: flatten_metrics(m) for r, m in nested.items()}
    scores = {r: label_free_score(f) for r, f in flat.items()}
    if all(v is None for v in scores.values()):
        return {}
    keys = sorted({(r["set"], r["style"], r["metric"]) for r in interval_rows(nested)})
    rows = []
    for set_name, style, metric in keys:
        loss = selection_loss(flat, f"{set_name}.{style}.{metric}")
        if loss is None:
            continue
        ci = None
        pair = [
            scores_by_round.get(r, {}).get((set_name, style))
            for r in (loss["chosen_round"], loss["best_round"])
        ]
        if all(p is not None and metric in p[1] for p in pair):
            (ids_c, sc_c), (ids_b, sc_b) = pair
            found = paired_difference(ids_c, sc_c[metric], ids_b, sc_b[metric], cfg)
            if found is not None:
                ci = {"lo": found[0].lo, "hi": found[0].hi, "n": found[1]}
        rows.append(loss | {"loss_ci": ci})
    return {"by": "label_free", "level": cfg.level, "label_free_score": scores, "metrics": rows}
