"""Compare rounds: tables (``selfimprove compare``) and the ``report`` stage's files and plots.

Everything reads the per-round files the pipeline writes under ``data/rounds/<r>/``:
``scores.json`` (held-out accuracy, nested set -> style -> metric; ``metrics.json`` is its
headline, and holds everything in runs made before the split), ``filter.json`` (vote
statistics), ``rationales.jsonl`` (per-question agreement), ``generate.json``, ``finetune.json``.
Flattened keys match ``dvc metrics show`` and the MLflow metric names of the ``track`` stage:
``<set>.<style>.strict``, ``<set>.sc.maj@8``, ``filter.selected_fraction``, ...

The report stage writes to ``data/report/``: ``accuracy.csv``/``accuracy.json`` (one row per
round, set, style and metric), ``agreement.json`` (per-round vote-agreement histogram),
``kept.csv``/``kept.json`` (kept fractions per round), ``plots/`` (small CSVs laid out for
``dvc plots show``: x = round) and three PNGs (``accuracy.png``, ``agreement.png``,
``kept.png``). When some round's ``refined.jsonl`` carries self-feedback verdicts (method
self / lmsi_self), also ``feedback.json`` (verdict precision / recall per round against the
training pool labels, ``data/prepared/train_labels.jsonl`` -- analysis only),
and ``feedback.png``; otherwise ``feedback.json`` is an empty list. ``plots/feedback.csv`` is
always written (header only without SELF rounds).
Uncertainty and monitors (added files): ``intervals.csv``/``.json`` (every accuracy's
interval per round, from scores.json's ``ci``; drawn as bands in ``accuracy.png``),
``differences.csv``/``.json`` (each round minus the first round, and minus the previous one:
paired bootstrap over the questions both scored, from the rounds' ``eval/`` predictions),
``selection.json`` (the label-free choice of round and the accuracy it loses against the truly
best round), ``monitors.csv``/``.json``, ``plots/monitors.csv`` and ``monitors.png`` (per
round: agreement, no-answer rate, answer entropy, distinct answers, path length; with the
training labels, analysis only, how often kept majorities and kept paths are right).
The figures are drawn by :mod:`selfimprove.evaluation.plots` (matplotlib, lazily, Agg).
"""

from __future__ import annotations

import csv
import fnmatch
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from selfimprove.config.evaluation import ReportConfig, StatsConfig
from selfimprove.core.io import InputError, atomic_path, iter_jsonl, read_jsonl, write_json
from selfimprove.core.paths import is_round, round_index, sort_rounds
from selfimprove.core.voting import agreement_histogram
from selfimprove.evaluation.analysis import flatten_metrics as flatten
from selfimprove.evaluation.analysis import verdict_precision
from selfimprove.evaluation.headline import read_round_scores, scores_path
from selfimprove.evaluation.intervals import difference_rows, interval_rows, read_scores
from selfimprove.evaluation.plots import (
    plot_accuracy,
    plot_agreement,
    plot_feedback,
    plot_kept,
    plot_monitors,
)
from selfimprove.evaluation.summaries import MONITOR_FIELDS, monitor_rows, selection_report
from selfimprove.evaluation.summaries import read_json_object as _read_json

#: step files folded into a round's flat metrics (after its scores, unprefixed), with their key
#: prefix (as the track stage does)
STEP_FILES = (
    ("generate.json", "generate."),
    ("filter.json", "filter."),
    ("finetune.json", "finetune."),
    ("warmstart.json", "warmstart."),
)
DEFAULT_COLUMNS = ("*.*.strict", "filter.selected_fraction", "filter.mean_agreement")
#: per-style metrics that are counts, not scores
_NOT_SCORES = {"n"}


# --------------------------------------------------------------------------- rounds & metrics


def list_rounds(rounds_dir: str | Path) -> list[str]:
    """Round folders under ``rounds_dir`` that hold at least one step file, in round order."""
    rounds_dir = Path(rounds_dir)
    if not rounds_dir.is_dir():
        return []
    return sort_rounds(
        p.name
        for p in rounds_dir.iterdir()
        if p.is_dir()
        and is_round(p.name)
        and (scores_path(p).exists() or any((p / f).exists() for f, _ in STEP_FILES))
    )


def dvc_round_metrics(
    rounds_dir: str | Path, rounds: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Flat metrics per round from its scores and step files (all round folders when ``rounds``
    is None). Keys as in ``dvc metrics show``; step files get their prefix (``filter.``, ...)."""
    rounds_dir = Path(rounds_dir)
    names = list_rounds(rounds_dir) if rounds is None else sort_rounds(rounds)
    out: dict[str, dict[str, float]] = {}
    for name in names:
        flat: dict[str, float] = {}
        if scores_path(rounds_dir / name).exists():
            flat |= flatten(read_round_scores(rounds_dir / name))
        for fname, prefix in STEP_FILES:
            path = rounds_dir / name / fname
            if path.exists():
                flat |= flatten(_read_json(path), prefix)
        out[name] = flat
    return out


# --------------------------------------------------------------------------- compare table


def _matches(key: str, pattern: str) -> bool:
    # MLflow metric names have '@' replaced by '_' (maj@8 -> maj_8): accept either spelling
    return fnmatch.fnmatchcase(key, pattern) or fnmatch.fnmatchcase(key, pattern.replace("@", "_"))


def compare_table(
    metrics_by_round: Mapping[str, Mapping[str, float]],
    columns: Sequence[str] = DEFAULT_COLUMNS,
) -> dict:
    """Rounds as rows, metrics as columns: ``{"columns": [...], "rows": [{"round", col: value}]}``.

    ``columns`` are metric keys or glob patterns (``*.*.strict``); each pattern expands to the
    matching keys in sorted order. A value a round lacks is None. A pattern that matches no key
    of any round raises :class:`InputError` listing what there is.

    >>> m = {"r0": {"a.cot.strict": 0.25, "b.cot.strict": 0.5},
    ...      "r1": {"a.cot.strict": 0.5, "b.cot.strict": 0.75, "filter.selected_fraction": 0.9}}
    >>> t = compare_table(m, ["*.strict", "filter.selected_fraction"])
    >>> t["columns"]
    ['a.cot.strict', 'b.cot.strict', 'filter.selected_fraction']
    >>> t["rows"][0]
    {'round': 'r0', 'a.cot.strict': 0.25, 'b.cot.strict': 0.5, 'filter.selected_fraction': None}
    >>> compare_table(m, ["c.*"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    selfimprove.core.io.InputError: metric 'c.*' matches nothing; have: a.cot.strict, ...
    """
    keys = sorted({k for flat in metrics_by_round.values() for k in flat})
    cols: list[str] = []
    for pattern in columns:
        matched = [k for k in keys if _matches(k, pattern)]
        if not matched:
            raise InputError(
                f"metric {pattern!r} matches nothing; have: {', '.join(keys) or 'no metrics'}"
            )
        cols += [k for k in matched if k not in cols]
    rows = [
        {"round": name, **{c: metrics_by_round[name].get(c) for c in cols}}
        for name in sort_rounds(metrics_by_round)
    ]
    return {"columns": cols, "rows": rows}


def format_table(table: Mapping, digits: int = 3) -> str:
    """A plain-text table (``-`` for missing values).

    >>> print(format_table({"columns": ["acc"], "rows": [{"round": "r0", "acc": 0.5},
    ...                                                  {"round": "r1", "acc": None}]}))
    round  acc
    r0     0.500
    r1     -
    """

    def cell(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v)

    header = ["round", *table["columns"]]
    body = [[cell(row.get(c)) for c in header] for row in table["rows"]]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *body]
    ]
    return "\n".join(lines)


def with_intervals(
    table: Mapping, metrics_by_round: Mapping[str, Mapping[str, float]], digits: int = 3
) -> dict:
    """``table`` with each cell that has an interval (flat keys ``<set>.<style>.ci.<metric>.lo``
    / ``.hi`` in that round's metrics, written by the evaluate stage) shown as
    ``"value [lo, hi]"``; other cells are unchanged.

    >>> m = {"r1": {"a.cot.strict": 0.5, "a.cot.ci.strict.lo": 0.25, "a.cot.ci.strict.hi": 0.75}}
    >>> with_intervals({"columns": ["a.cot.strict"], "rows": [{"round": "r1",
    ...                 "a.cot.strict": 0.5}]}, m)["rows"]
    [{'round': 'r1', 'a.cot.strict': '0.500 [0.250, 0.750]'}]
    """
    rows = []
    for row in table["rows"]:
        flat = metrics_by_round.get(row["round"], {})
        out = dict(row)
        for col in table["columns"]:
            head, _, metric = col.rpartition(".")
            keys = [f"{head}.ci.{metric}.{end}" for end in ("lo", "hi")]
            if not all(k in flat for k in keys):  # MLflow spells maj@8 as maj_8
                keys = [f"{head}.ci.{metric.replace('@', '_')}.{end}" for end in ("lo", "hi")]
            value = row.get(col)
            if isinstance(value, float) and all(k in flat for k in keys):
                lo, hi = (flat[k] for k in keys)
                out[col] = f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
        rows.append(out)
    return {"columns": list(table["columns"]), "rows": rows}


# --------------------------------------------------------------------------- report data


def accuracy_rows(metrics_by_round: Mapping[str, Mapping]) -> list[dict]:
    """Long-format rows ``{round, round_index, set, style, metric, value}`` from nested
    metrics.json contents (self-consistency: style ``sc``, metric ``maj@k`` / ``pass@m``).

    >>> accuracy_rows({"r1": {"arith": {"fewshot_cot": {"strict": 0.5, "n": 4},
    ...                                 "sc": {"n": 2, "maj@2": 1.0}}}})
    ... # doctest: +NORMALIZE_WHITESPACE
    [{'round': 'r1', 'round_index': 1, 'set': 'arith', 'style': 'fewshot_cot',
      'metric': 'strict', 'value': 0.5},
     {'round': 'r1', 'round_index': 1, 'set': 'arith', 'style': 'sc', 'metric': 'maj@2',
      'value': 1.0}]
    """
    rows = []
    for name in sort_rounds(metrics_by_round):
        for set_name, styles in metrics_by_round[name].items():
            if not isinstance(styles, Mapping):
                continue
            for style, values in styles.items():
                if not isinstance(values, Mapping):
                    continue
                for metric, value in values.items():
                    if metric in _NOT_SCORES or not isinstance(value, int | float):
                        continue
                    rows.append(
                        {
                            "round": name,
                            "round_index": round_index(name),
                            "set": set_name,
                            "style": style,
                            "metric": metric,
                            "value": float(value),
                        }
                    )
    return rows


def plot_series(rows: Sequence[Mapping], metric: str = "strict") -> dict[str, dict[str, list]]:
    """Per set, per series: ``[(round_index, value), ...]``; a style's series uses ``metric``
    (falling back to strict, then em, named ``"<style> <fallback>"``); self-consistency
    contributes one series per ``maj@k``.

    >>> rows = accuracy_rows({"r0": {"a": {"cot": {"strict": 0.1, "flexible": 0.2},
    ...                                    "sc": {"maj@1": 0.1, "pass@2": 0.4}}},
    ...                       "r1": {"a": {"cot": {"strict": 0.3, "flexible": 0.4}}}})
    >>> plot_series(rows, "flexible")
    {'a': {'cot': [(0, 0.2), (1, 0.4)], 'sc maj@1': [(0, 0.1)]}}
    """
    out: dict[str, dict[str, list]] = {}
    available: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        available.setdefault((r["set"], r["style"]), set()).add(r["metric"])
    for r in rows:
        key = (r["set"], r["style"])
        if r["style"] == "sc":
            if not r["metric"].startswith("maj@"):
                continue
            series = f"sc {r['metric']}"
        else:
            chosen = next((m for m in (metric, "strict", "em") if m in available[key]), None)
            if r["metric"] != chosen:
                continue
            series = r["style"] if chosen == metric else f"{r['style']} {chosen}"
        out.setdefault(r["set"], {}).setdefault(series, []).append((r["round_index"], r["value"]))
    return out


def interval_bands(rows: Sequence[Mapping], metric: str = "strict") -> dict[str, dict[str, dict]]:
    """:func:`plot_series`'s sets and series with each round's interval: per set, per series,
    ``{round_index: (lo, hi)}``, from :func:`~selfimprove.evaluation.intervals.interval_rows`.

    >>> rows = [{"round_index": 1, "set": "a", "style": "cot", "metric": "strict",
    ...          "value": 0.5, "lo": 0.25, "hi": 0.75}]
    >>> interval_bands(rows)
    {'a': {'cot': {1: (0.25, 0.75)}}}
    """
    lo = plot_series([{**r, "value": r["lo"]} for r in rows], metric)
    hi = plot_series([{**r, "value": r["hi"]} for r in rows], metric)
    return {
        set_name: {
            label: {x: (a, hi[set_name][label][j][1]) for j, (x, a) in enumerate(points)}
            for label, points in by_series.items()
        }
        for set_name, by_series in lo.items()
    }


def agreement_stats(
    rounds_dir: str | Path, rounds: Sequence[str], bins: int = 10
) -> dict[str, dict]:
    """Per round with a filter step: the vote-agreement histogram (``bins`` over [0, 1], from
    rationales.jsonl; filter.json's 10-bin histogram when rationales are missing), the bin
    edges, mean agreement and question count."""
    rounds_dir = Path(rounds_dir)
    out: dict[str, dict] = {}
    for name in sort_rounds(rounds):
        rat, stats_file = rounds_dir / name / "rationales.jsonl", rounds_dir / name / "filter.json"
        if rat.exists():
            agreements = [float(r["agreement"]) for r in read_jsonl(rat, required=["agreement"])]
            counts = agreement_histogram(agreements, bins=bins)
            mean = sum(agreements) / len(agreements) if agreements else 0.0
        elif stats_file.exists():
            stats = _read_json(stats_file)
            counts = list(stats.get("agreement_histogram") or [])
            mean = float(stats.get("mean_agreement", 0.0))
        else:
            continue
        n = len(counts)
        out[name] = {
            "round_index": round_index(name),
            "edges": [round(i / n, 6) for i in range(n + 1)],
            "counts": counts,
            "n_questions": sum(counts),
            "mean_agreement": round(mean, 6),
        }
    return out


def kept_rows(rounds_dir: str | Path, rounds: Sequence[str]) -> list[dict]:
    """Per round with a filter.json: how much of the sampled data was kept for training.

    ``kept_fraction``: questions selected (majority share >= min_agreement); ``path_fraction``:
    sampled paths kept; plus ``mean_agreement``, ``n_questions``, ``n_kept_paths``,
    ``n_train_examples``, and ``skipped`` / ``skip_reason`` from the round's finetune.json (a
    round whose filter kept nothing is not fine-tuned: its model is the previous one).
    """
    rounds_dir = Path(rounds_dir)
    rows = []
    for name in sort_rounds(rounds):
        path = rounds_dir / name / "filter.json"
        if not path.exists():
            continue
        s = _read_json(path)
        n_paths = s.get("n_paths") or 0
        ft_path = rounds_dir / name / "finetune.json"
        ft = _read_json(ft_path) if ft_path.exists() else {}
        rows.append(
            {
                "round": round_index(name),
                "round_name": name,
                "kept_fraction": float(s.get("selected_fraction", 0.0)),
                "path_fraction": round(s.get("n_kept_paths", 0) / n_paths, 6) if n_paths else 0.0,
                "mean_agreement": float(s.get("mean_agreement", 0.0)),
                "n_questions": int(s.get("n_questions", 0)),
                "n_kept_paths": int(s.get("n_kept_paths", 0)),
                "n_train_examples": int(s.get("n_train_examples", 0)),
                "skipped": bool(ft.get("skipped", False)),
                "skip_reason": str(ft.get("skip_reason") or ""),
            }
        )
    return rows


#: refine-stage keys :func:`selfimprove.evaluation.analysis.verdict_precision` reads
_REFINED_KEYS = ("id", "answers", "refined_answers", "verdicts", "final_verdicts")
FEEDBACK_FIELDS = (
    "round",
    "round_name",
    "precision",
    "recall",
    "final_precision",
    "final_recall",
    "initial_n",
    "final_n",
    "n_judged",
    "n_unparsable",
    "initial_accuracy",
    "answer_accuracy",
    "refined_accuracy",
    "fixed",
    "broken",
)


def read_refined(rounds_dir: str | Path, rounds: Sequence[str]) -> dict[str, list[dict]]:
    """The refine-stage records of each round whose ``refined.jsonl`` carries self-feedback
    verdicts (method self / lmsi_self); rounds without the file, or whose records have no
    ``verdicts`` (lmsi: a copy of samples.jsonl; star / rest_em), are left out."""
    rounds_dir = Path(rounds_dir)
    out: dict[str, list[dict]] = {}
    for name in sort_rounds(rounds):
        path = rounds_dir / name / "refined.jsonl"
        if not path.exists():
            continue
        first = next(iter_jsonl(path), None)
        if first is None or "verdicts" not in first:
            continue
        out[name] = read_jsonl(path, required=_REFINED_KEYS)
    return out


def read_labels(path: str | Path) -> dict[str, str]:
    """``{id: answer}`` of the training pool labels (``data/prepared/train_labels.jsonl``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"{path}: not found; the self-feedback report needs the training pool labels, "
            "run `dvc repro data` first"
        )
    return {str(r["id"]): str(r["answer"]) for r in read_jsonl(path, required=["id", "answer"])}


def feedback_rows(refined_by_round: Mapping[str, list[dict]], labels: Mapping[str, str]) -> list:
    """Per round with judged paths: the self-feedback verdict precision / recall against the
    gold (:func:`selfimprove.evaluation.analysis.verdict_precision`). ``precision`` / ``recall``
    judge the sampled answers (initial verdicts), ``final_*`` the answers after refinement.

    >>> recs = [{"id": "a", "answers": ["4", "5"], "refined_answers": ["4", "4"],
    ...          "verdicts": [[True], [False, True]], "final_verdicts": [True, True]},
    ...         {"id": "b", "answers": ["1"], "refined_answers": ["1"],
    ...          "verdicts": [[True]], "final_verdicts": [True]}]
    >>> (row,) = feedback_rows({"r1": recs, "r2": [{"id": "a", "answers": ["4"]}]},
    ...                        {"a": "#### 4", "b": "#### 2"})
    >>> row["round"], row["precision"], row["recall"], row["final_precision"], row["fixed"]
    (1, 0.5, 1.0, 0.6666666666666666, 1)
    """
    rows = []
    for name in sort_rounds(refined_by_round):
        vp = verdict_precision(list(refined_by_round[name]), dict(labels))
        if not vp:
            continue
        rows.append(
            {
                "round": round_index(name),
                "round_name": name,
                "precision": vp["initial_precision"],
                "recall": vp["initial_recall"],
                **vp,
            }
        )
    return rows


def _write_csv(path: Path, rows: Sequence[Mapping], fields: Sequence[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.@\-]", "_", name)


# --------------------------------------------------------------------------- the stage


def build_report(
    rounds_dir: str | Path,
    rounds: Sequence[str],
    out_dir: str | Path,
    cfg: ReportConfig | None = None,
    labels_path: str | Path | None = None,
    stats: StatsConfig | None = None,
) -> list[Path]:
    """Write every report file for ``rounds`` (each needs its scores) into ``out_dir``
    (replaced whole); return the files written. ``labels_path`` (the training pool labels) is
    read when some round carries self-feedback verdicts (None skips the feedback plot) and,
    when the file exists, for the monitors' analysis-only precisions. ``stats``: the intervals
    of the paired differences between rounds (``differences.*``) and of the label-free
    selection's loss (``selection.json``)."""
    cfg, stats = cfg or ReportConfig(), stats or StatsConfig()
    rounds_dir, out_dir = Path(rounds_dir), Path(out_dir)
    rounds = sort_rounds(rounds)
    missing = [r for r in rounds if not scores_path(rounds_dir / r).exists()]
    if missing:
        raise InputError(
            f"{rounds_dir}: no scores.json for round(s) {', '.join(missing)}; run "
            "`dvc repro` (the evaluate stages) first"
        )
    nested = {r: read_round_scores(rounds_dir / r) for r in rounds}
    acc = accuracy_rows(nested)
    agreement = agreement_stats(rounds_dir, rounds, cfg.agreement_bins)
    kept = kept_rows(rounds_dir, rounds)
    series = plot_series(acc, cfg.metric)
    feedback: list[dict] = []
    if labels_path is not None:
        refined = read_refined(rounds_dir, rounds)
        if refined:
            feedback = feedback_rows(refined, read_labels(labels_path))
    intervals = interval_rows(nested)
    bands = interval_bands(intervals, cfg.metric)
    scores = {r: read_scores(rounds_dir / r, nested[r]) for r in rounds}
    differences = difference_rows(scores, stats)
    selection = selection_report(nested, scores, stats)
    labels = read_labels(labels_path) if labels_path and Path(labels_path).exists() else None
    monitors = monitor_rows(rounds_dir, rounds, labels)

    with atomic_path(out_dir, is_dir=True) as tmp:
        fields = ["round", "round_index", "set", "style", "metric", "value"]
        _write_csv(tmp / "accuracy.csv", acc, fields)
        write_json(tmp / "accuracy.json", acc)
        write_json(tmp / "agreement.json", agreement)
        kept_fields = [
            "round",
            "round_name",
            "kept_fraction",
            "path_fraction",
            "mean_agreement",
            "n_questions",
            "n_kept_paths",
            "n_train_examples",
            "skipped",
            "skip_reason",
        ]
        _write_csv(tmp / "kept.csv", kept, kept_fields)
        write_json(tmp / "kept.json", kept)
        # dvc plots: one small file per chart, numeric x
        plots = tmp / "plots"
        for set_name, by_series in series.items():
            for label, points in by_series.items():
                rows = [{"round": i, "accuracy": v} for i, v in sorted(points)]
                name = f"{_safe(set_name)}.{_safe(label.replace(' ', '_'))}.csv"
                _write_csv(plots / "accuracy" / name, rows, ["round", "accuracy"])
        for name, s in agreement.items():
            total = sum(s["counts"]) or 1
            rows = [
                {"agreement": round((a + b) / 2, 6), "questions": c / total}
                for a, b, c in zip(s["edges"][:-1], s["edges"][1:], s["counts"], strict=True)
            ]
            _write_csv(plots / "agreement" / f"{name}.csv", rows, ["agreement", "questions"])
        _write_csv(
            plots / "kept.csv", kept, ["round", "kept_fraction", "path_fraction", "mean_agreement"]
        )
        # uncertainty: intervals per round, paired differences between rounds, selection
        ifields = [*fields, "lo", "hi", "level"]
        _write_csv(tmp / "intervals.csv", intervals, ifields)
        write_json(tmp / "intervals.json", intervals)
        dfields = ["round", "round_index", "vs", "set", "style", "metric", "diff", "lo", "hi"]
        _write_csv(tmp / "differences.csv", differences, [*dfields, "n", "level"])
        write_json(tmp / "differences.json", differences)
        write_json(tmp / "selection.json", selection)
        _write_csv(tmp / "monitors.csv", monitors, MONITOR_FIELDS)
        write_json(tmp / "monitors.json", monitors)
        _write_csv(plots / "monitors.csv", monitors, MONITOR_FIELDS)
        plot_monitors(monitors, tmp / "monitors.png")
        plot_accuracy(series, tmp / "accuracy.png", cfg.metric, bands)
        plot_agreement(agreement, tmp / "agreement.png")
        plot_kept(kept, tmp / "kept.png")
        write_json(tmp / "feedback.json", feedback)
        # header-only CSV without SELF rounds, so `dvc plots show` finds the file it declares
        _write_csv(plots / "feedback.csv", feedback, FEEDBACK_FIELDS)
        if feedback:
            plot_feedback(feedback, tmp / "feedback.png")
    return sorted(p for p in out_dir.rglob("*") if p.is_file())
