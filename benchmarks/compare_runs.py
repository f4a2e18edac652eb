"""Compare two systems, each with one or more runs (seeds), on the same held-out questions;
prints JSON: per set/style/metric the mean of each system with a 95% interval over runs and
questions, and the difference b - a with the paired interval (questions paired, runs resampled).

    python benchmarks/compare_runs.py --a runs/lmsi_s0/data/rounds runs/lmsi_s1/data/rounds \\
        --b runs/fmt_s0/data/rounds runs/fmt_s1/data/rounds --round r2
    python benchmarks/compare_runs.py --a data/rounds --round r0 --b data/rounds --round-b r2

Each argument is a rounds folder as a run leaves it (``<round>/scores.json`` and
``<round>/eval/<set>__<style>.jsonl``, the per-question predictions, or the compact
``<round>/question_scores.json`` a study keeps in git). Only questions every run scored are
compared. For the runs to be comparable across seeds, fix ``data.seed`` so that every run
evaluates the same questions.
Interval settings: ``--level``, ``--resamples``, ``--seed`` (as ``stats:`` in params.yaml).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from selfimprove.config.evaluation import StatsConfig
from selfimprove.core.io import InputError
from selfimprove.evaluation.study_table import compare, load_runs


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
    try:
        a = load_runs(args.a, args.round)
        b = load_runs(args.b, args.round_b or args.round)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = compare(a, b, cfg)
    if not rows:
        print("error: the runs share no scored set/style (no eval/ predictions?)", file=sys.stderr)
        return 2
    print(json.dumps({"round_a": args.round, "round_b": args.round_b or args.round, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
