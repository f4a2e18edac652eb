"""The table of a study (several seeds of several methods on the same questions), from each
run's rounds folder: per method the round's accuracy averaged over seeds with a 95% interval
(bootstrap over seeds and questions), each method minus the first with a paired interval (same
questions), round r0 (the no-training control); then, per method and paired within each run, the
round minus the round before it (the most a stop rule could have gained, negated) and the
accuracy the label-free choice of round (``tracking.best_by: label_free``) loses against the
round truly best on that metric; then the collapse monitors over seeds.

A rounds folder is what a run leaves (``<round>/metrics.json`` or ``scores.json``, the
predictions ``<round>/eval/``) or what a study keeps in git (the same JSON files, the compact
``<round>/question_scores.json`` instead of the predictions, ``../report/monitors.csv``):
:func:`~selfimprove.evaluation.intervals.read_scores` reads either.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from selfimprove.config.evaluation import StatsConfig
from selfimprove.core.io import InputError
from selfimprove.core.paths import round_index
from selfimprove.evaluation.headline import read_round_scores
from selfimprove.evaluation.intervals import read_scores, runs_difference
from selfimprove.evaluation.stats import seeds_bootstrap_ci

#: accuracies shown in the Markdown table (the JSON has every metric)
SHOWN = {"strict", "f1", "maj@8"}
#: collapse monitors summarized over seeds (filter.json; precision: analysis only, training labels)
#: and, for online RL (TTRL), the share of groups masked for want of a majority (finetune.json)
MONITORS = ("selected_fraction", "mean_agreement", "answer_entropy", "distinct_answers",
            "mean_path_tokens", "selected_precision", "kept_precision", "masked_fraction")


def load_runs(folders: Sequence[Path], round_name: str) -> list[dict]:
    """Per rounds folder, ``round_name``'s per-question scores (an InputError when missing)."""
    runs = []
    for folder in folders:
        path = Path(folder) / round_name
        if not (path / "metrics.json").exists() and not (path / "scores.json").exists():
            raise InputError(f"{path}: no metrics.json (is {folder} a rounds folder?)")
        runs.append(read_scores(path, read_round_scores(path)))
    return runs


def _side(runs: list[tuple[list, list]], cfg: StatsConfig) -> dict:
    common = [q for q in runs[0][0] if all(q in set(ids) for ids, _ in runs[1:])]
    picked = [[s[ids.index(q)] for q in common] for ids, s in runs]
    iv = seeds_bootstrap_ci(picked, cfg.seed, cfg.n_resamples, cfg.level)
    return {"mean": iv.estimate, "lo": iv.lo, "hi": iv.hi, "n_runs": len(runs)}


def compare(a: list[dict], b: list[dict], cfg: StatsConfig) -> list[dict]:
    """One row per (set, style, metric) that every run of both systems scored: each side's mean
    with its interval and the difference b - a with the paired interval."""
    rows = []
    keys = set.intersection(*(set(r) for r in [*a, *b]))
    for set_name, style in sorted(keys):
        metrics = set.intersection(*(set(r[(set_name, style)][1]) for r in [*a, *b]))
        for metric in sorted(metrics):
            ra = [(r[(set_name, style)][0], r[(set_name, style)][1][metric]) for r in a]
            rb = [(r[(set_name, style)][0], r[(set_name, style)][1][metric]) for r in b]
            diff, n = runs_difference(ra, rb, cfg)
            rows.append({"set": set_name, "style": style, "metric": metric, "n_questions": n,
                         "a": _side(ra, cfg), "b": _side(rb, cfg), "diff": diff.estimate,
                         "lo": diff.lo, "hi": diff.hi, "level": cfg.level})
    return rows


def _fmt(side: dict) -> str:
    return f"{side['mean']:.3f} [{side['lo']:.3f}, {side['hi']:.3f}]"


def _fmt_diff(row: dict) -> str:
    return f"{row['diff']:+.3f} [{row['lo']:+.3f}, {row['hi']:+.3f}]"


def _rounds(folder: Path) -> dict[str, dict]:
    """Every round's nested metrics of one run, by round name."""
    found = sorted(folder.glob("r*/metrics.json"), key=lambda p: round_index(p.parent.name))
    return {p.parent.name: read_round_scores(p.parent) for p in found}


def _within_runs(pairs: list[tuple[tuple, tuple]], cfg: StatsConfig) -> dict:
    """``b - a`` where a and b come from the same run (two rounds of one seed): the per-question
    differences of each run, averaged over runs, with an interval that resamples runs and
    questions (questions every run scored)."""
    sides = [side for pair in pairs for side in pair]
    common = [q for q in sides[0][0] if all(q in set(ids) for ids, _ in sides[1:])]

    def pick(ids, scores):
        pos = {q: i for i, q in enumerate(ids)}
        return [float(scores[pos[q]]) for q in common]

    diffs = [[b - a for a, b in zip(pick(*sa), pick(*sb), strict=True)] for sa, sb in pairs]
    iv = seeds_bootstrap_ci(diffs, cfg.seed, cfg.n_resamples, cfg.level)
    return {"diff": iv.estimate, "lo": iv.lo, "hi": iv.hi, "n_questions": len(common),
            "n_runs": len(pairs)}


def _read_runs(folders: list[Path]) -> tuple[list, list]:
    """Every run's rounds' metrics and per-question scores, read once."""
    runs = [(f, _rounds(f)) for f in folders]
    scores = [{r: read_scores(f / r, m) for r, m in rounds.items()} for f, rounds in runs]
    return runs, scores


def _within_rows(read: tuple[list, list], choose: Callable, cfg: StatsConfig) -> list[dict]:
    """Per shown (set, style, metric): ``choose(rounds_metrics, flat_key) -> (round_a, round_b)``
    for every run (``read``: :func:`_read_runs`), then :func:`_within_runs` of b - a."""
    runs, scores = read
    keys = set.intersection(*({(st, sy, m) for by_style in sc.values()
                               for (st, sy), (_, per) in by_style.items() for m in per}
                              for sc in scores))
    rows = []
    for set_name, style, metric in sorted(k for k in keys if k[2] in SHOWN):
        picks = [choose(rounds, f"{set_name}.{style}.{metric}") for _, rounds in runs]
        if any(p is None for p in picks):
            continue
        pairs = []
        for (a, b), sc in zip(picks, scores, strict=True):
            (ids_a, per_a), (ids_b, per_b) = sc[a][(set_name, style)], sc[b][(set_name, style)]
            pairs.append(((ids_a, per_a[metric]), (ids_b, per_b[metric])))
        rows.append({"set": set_name, "style": style, "metric": metric,
                     "rounds": [list(p) for p in picks], **_within_runs(pairs, cfg)})
    return rows


def _report_monitors(folder: Path) -> dict[str, dict]:
    """Per round, the precision monitors of the run's report (``../report/monitors.csv``,
    what a study keeps in git instead of rationales.jsonl and the training labels)."""
    path = folder.parent / "report" / "monitors.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {row["round_name"]: row for row in csv.DictReader(f)}


def _monitors(folders: list[Path]) -> dict[str, dict[str, list]]:
    """Per round, per monitor: the values of every run (seed) that has them."""
    from selfimprove.evaluation.report import read_labels
    from selfimprove.evaluation.summaries import monitor_rows

    out: dict[str, dict[str, list]] = {}
    for folder in folders:
        rounds = sorted({p.parent.name for p in folder.glob("r*/filter.json")}, key=round_index)
        labels_path = folder.parent / "prepared" / "train_labels.jsonl"
        labels = read_labels(labels_path) if labels_path.exists() else None
        report = _report_monitors(folder)
        for row in monitor_rows(folder, rounds, labels):
            name = row["round_name"]
            stats = json.loads((folder / name / "filter.json").read_text())
            row["selected_fraction"] = stats.get("selected_fraction")
            fit = folder / name / "finetune.json"
            if fit.is_file():  # TTRL's groups without a majority (no reward, no gradient)
                row["masked_fraction"] = json.loads(fit.read_text()).get("mean_masked_fraction")
            for key in ("selected_precision", "kept_precision"):
                if row.get(key) is None and report.get(name, {}).get(key) not in (None, ""):
                    row[key] = float(report[name][key])
            for key in MONITORS:
                if row.get(key) is not None:
                    out.setdefault(name, {}).setdefault(key, []).append(row[key])
    return out


def _label_free_vs_best(rounds: dict[str, dict], key: str) -> tuple[str, str] | None:
    """(the label-free choice of round, the round truly best on ``key``) of one run."""
    from selfimprove.evaluation.analysis import flatten_metrics
    from selfimprove.tracking.selection import choose_round

    flat = {r: flatten_metrics(m) for r, m in rounds.items()}
    chosen, best = choose_round(flat, "label_free"), choose_round(flat, "metric", key)
    return None if chosen is None or best is None else (chosen, best)


def study_table(
    folders: dict[str, list[Path]], seeds: list[int], round_name: str, cfg: StatsConfig
) -> tuple[str, dict]:
    """The Markdown tables and the JSON (``compare``'s rows, ``last_minus_prev``,
    ``label_free_loss``, ``monitors``) of a study: ``folders`` maps each method (the first is
    the reference) to its runs' rounds folders, one per seed of ``seeds``."""
    missing = [str(f) for fs in folders.values() for f in fs
               if not (f / round_name / "metrics.json").exists()]
    if missing:
        raise InputError(f"no {round_name}/metrics.json in: {', '.join(missing)} (run them first)")
    methods = list(folders)
    base = methods[0]
    out = {"seeds": seeds, "round": round_name, "level": cfg.level, "rows": {}}
    lines = ["| " + " | ".join(["set / style / metric", "r0 (no training)",
                                 *(f"{m} {round_name}" for m in methods),
                                 *(f"{m} − {base}" for m in methods[1:])]) + " |",
             "|---" * (2 + 2 * len(methods) - 1) + "|"]
    r0 = compare(load_runs(folders[base], "r0"), load_runs(folders[base], round_name), cfg)
    by_method = {m: compare(load_runs(folders[base], round_name),
                            load_runs(folders[m], round_name), cfg) for m in methods[1:]}
    out["rows"]["r0_vs_" + base] = r0
    out["rows"].update({f"{m}_vs_{base}": rows for m, rows in by_method.items()})
    for row in r0:
        if row["metric"] not in SHOWN:
            continue
        key = (row["set"], row["style"], row["metric"])
        others = [next(r for r in by_method[m] if (r["set"], r["style"], r["metric"]) == key)
                  for m in methods[1:]]
        cells = [_fmt(row["a"]), _fmt(row["b"]), *(_fmt(o["b"]) for o in others),
                 *(_fmt_diff(o) for o in others)]
        lines.append(f"| {' / '.join(key)} (n={row['n_questions']}) | " + " | ".join(cells) + " |")
    # Would a stop rule have helped? With these rounds it can only ever give back the previous
    # round's model, so the most it can gain is r_prev - r_last, paired within each run.
    prev = f"r{round_index(round_name) - 1}"
    lines += ["", f"{round_name} − {prev} within each run (what a stop rule before "
              f"{round_name} could gain, negated), and the accuracy the label-free choice of "
              "round loses against the truly best round of each run:", "",
              "| method | set / style / metric | " + f"{round_name} − {prev} | "
              "label-free loss (best − chosen) | chosen / best rounds per seed |",
              "|---|---|---|---|---|"]
    out["last_minus_prev"], out["label_free_loss"] = {}, {}
    for m in methods:
        read = _read_runs(folders[m])
        steps = _within_rows(read, lambda rounds, _k: (prev, round_name)
                             if prev in rounds else None, cfg)
        loss = _within_rows(read, _label_free_vs_best, cfg)  # best - chosen
        out["last_minus_prev"][m], out["label_free_loss"][m] = steps, loss
        by_key = {(r["set"], r["style"], r["metric"]): r for r in loss}
        for row in steps:
            key = (row["set"], row["style"], row["metric"])
            lf = by_key.get(key)
            picks = ", ".join(f"{a}/{b}" for a, b in lf["rounds"]) if lf else "-"
            lines.append(f"| {m} | {' / '.join(key)} | {_fmt_diff(row)} | "
                         f"{_fmt_diff(lf) if lf else '-'} | {picks} |")
    lines += ["", "Collapse monitors of each round's sampled paths, mean over seeds (min–max); "
              "precision of the kept majorities uses the training labels (analysis only):", "",
              "| method | round | " + " | ".join(MONITORS) + " |",
              "|---|---|" + "---|" * len(MONITORS)]
    out["monitors"] = {}
    for m in methods:
        out["monitors"][m] = mon = _monitors(folders[m])
        for name, values in mon.items():
            cells = [_spread(values.get(k), ".3g") for k in MONITORS]
            lines.append(f"| {m} | {name} | " + " | ".join(cells) + " |")
    out["compute"] = {m: _compute(folders[m]) for m in methods}
    lines += ["", "Compute per run, summed over its rounds, mean over seeds (min–max): tokens "
              "sampled by `generate` and tokens trained on (fine-tuning: the examples' tokens, "
              "every epoch; DPO and GRPO: TRL's `num_tokens`) and the run's wall time in DVC's "
              "queue (minutes, as the study command saw it; stages restored from the run cache "
              "cost little there); `-` where a run did not record them:", "",
              "| method | tokens sampled | tokens trained | wall time (min) |", "|---|---|---|---|"]
    for m, comp in out["compute"].items():
        wall = comp["wall_s"]
        cells = [_spread(comp["tokens_sampled"], ",.0f"), _spread(comp["tokens_trained"], ",.0f"),
                 _spread(None if None in wall else [w / 60 for w in wall], ".1f")]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines), out


def _spread(values: list | None, spec: str) -> str:
    """``mean (min–max)`` of ``values`` in format ``spec``; ``-`` when empty or one is missing.

    >>> _spread([1000, 3000], ",.0f"), _spread([1, None], ".1f"), _spread(None, ".3g")
    ('2,000 (1,000–3,000)', '-', '-')
    """
    if not values or None in values:
        return "-"
    return f"{sum(values) / len(values):{spec}} ({min(values):{spec}}–{max(values):{spec}})"


def _compute(folders: list[Path]) -> dict[str, list]:
    """Per run (seed): the tokens its rounds sampled (``generate.json`` ``tokens``, plus TTRL's
    online rollouts: ``finetune.json`` ``tokens_sampled``) and trained
    on (``finetune.json`` ``tokens_trained``; None when a round's record lacks it), and its
    wall time in the queue (the export's ``wall.json``; None without one)."""
    sampled, trained, wall = [], [], []
    for folder in folders:
        record = folder.parent.parent / "wall.json"  # <label>_s<seed>/wall.json (study export)
        wall.append(json.loads(record.read_text())["wall_s"] if record.is_file() else None)
        gen = [json.loads(p.read_text()).get("tokens")
               for p in sorted(folder.glob("r*/generate.json"))]
        fit = [json.loads(p.read_text()) for p in sorted(folder.glob("r*/finetune.json"))]
        tok = [0 if f.get("skipped") else f.get("tokens_trained") for f in fit]
        online = sum(f.get("tokens_sampled", 0) for f in fit)  # TTRL's rollouts
        sampled.append(None if not gen or None in gen else sum(gen) + online)
        trained.append(None if not tok or None in tok else sum(tok))
    return {"tokens_sampled": sampled, "tokens_trained": trained, "wall_s": wall}


def study_folders(roots: Path | list[Path], methods: list[str],
                  seeds: list[int]) -> dict[str, list[Path]]:
    """The rounds folders of a study kept under ``roots``: ``<method>_s<seed>/data/rounds``.

    Several exported studies make one table when each run (method and seed) lives in exactly one
    of them: a method's seeds may come from different studies (e.g. one seed per session). A run
    found in none is read from the first root, so the table names what is missing; one found in
    several is an error: which of them to compare would be a guess."""
    roots = [roots] if isinstance(roots, Path) else list(roots)
    folders = {}
    for m in methods:
        folders[m] = []
        for k in seeds:
            found = [r for r in roots if (r / f"{m}_s{k}").is_dir()]
            if len(found) > 1:
                raise InputError(f"{m}_s{k}: in {' and '.join(map(str, found))}; give each run "
                                 "in one --root only (or rename one study's folder)")
            folders[m].append((found[0] if found else roots[0]) / f"{m}_s{k}" / "data" / "rounds")
    return folders
