"""Compare two systems, each with one or more runs (seeds), on the same held-out questions;
prints JSON: per set/style/metric the mean of each system with a 95% interval over runs and
questions, and the difference b - a with the paired interval (questions paired, runs resampled).

    python benchmarks/compare_runs.py --a runs/lmsi_s0/data/rounds runs/lmsi_s1/data/rounds \\
        --b runs/fmt_s0/data/rounds runs/fmt_s1/data/rounds --round r2
    python benchmarks/compare_runs.py --a data/rounds --round r0 --b data/rounds --round-b r2

Each argument is a rounds folder as a run leaves it (``<round>/scores.json`` and
``<round>/eval/<set>__<style>.jsonl``, the per-question predictions; ``dvc pull`` brings them
for a shared experiment). Only questions every run scored are compared. For the runs to be
comparable across seeds, fix ``data.seed`` so that every run evaluates the same questions.
Interval settings: ``--level``, ``--resamples``, ``--seed`` (as ``stats:`` in params.yaml).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from selfimprove.config.evaluation import StatsConfig
from selfimprove.evaluation.headline import read_round_scores
from selfimprove.evaluation.intervals import read_scores, runs_difference
from selfimprove.evaluation.stats import seeds_bootstrap_ci


def _load(folders: list[Path], round_name: str) -> list[dict]:
    runs = []
    for folder in folders:
        path = folder / round_name / "metrics.json"
        if not path.exists():
            raise SystemExit(f"error: {path}: not found (is {folder} a rounds folder?)")
        runs.append(read_scores(folder / round_name, read_round_scores(folder / round_name)))
    return runs


def _side(runs: list[tuple[list, list]], cfg: StatsConfig) -> dict:
    common = [q for q in runs[0][0] if all(q in set(ids) for ids, _ in runs[1:])]
    picked = [[s[ids.index(q)] for q in common] for ids, s in runs]
    iv = seeds_bootstrap_ci(picked, cfg.seed, cfg.n_resamples, cfg.level)
    return {"mean": iv.estimate, "lo": iv.lo, "hi": iv.hi, "n_runs": len(runs)}


def compare(a: list[dict], b: list[dict], cfg: StatsConfig) -> list[dict]:
    """One row per (set, style, metric) that every run of both systems scored."""
    rows = []
    keys = set.intersection(*(set(r) for r in [*a, *b]))
    for set_name, style in sorted(keys):
        metrics = set.intersection(*(set(r[(set_name, style)][1]) for r in [*a, *b]))
        for metric in sorted(metrics):
            ra = [(r[(set_name, style)][0], r[(set_name, style)][1][metric]) for r in a]
            rb = [(r[(set_name, style)][0], r[(set_name, style)][1][metric]) for r in b]
            diff, n = runs_difference(ra, rb, cfg)
            rows.append(
                {
                    "set": set_name,
                    "style": style,
                    "metric": metric,
                    "n_questions": n,
                    "a": _side(ra, cfg),
                    "b": _side(rb, cfg),
                    "diff": diff.estimate,
                    "lo": diff.lo,
                    "hi": diff.hi,
                    "level": cfg.level,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", nargs="+", type=Path, required=True, help="system a's rounds folders")
    ap.add_argument("--b", nargs="+", type=Path, required=True, help="system b's rounds folders")
    ap.add_argument("--round", required=True, help="round to compare (a's; b's too by default)")
    ap.add_argument("--round-b", help="b's round, when it differs (e.g. r0 vs r2 of one run)")
    ap.add_argument("--level", type=float, default=StatsConfig().level)
    ap.add_argument("--resamples", type=int, default=StatsConfig().n_resamples)
    ap.add_argument("--seed", type=int, default=StatsConfig().seed)
    args = ap.parse_args(argv)
    cfg = StatsConfig(level=args.level, n_resamples=args.resamples, seed=args.seed)
    a = _load(args.a, args.round)
    b = _load(args.b, args.round_b or args.round)
    rows = compare(a, b, cfg)
    if not rows:
        print("error: the runs share no scored set/style (no eval/ predictions?)", file=sys.stderr)
        return 2
    print(json.dumps({"round_a": args.round, "round_b": args.round_b or args.round, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
