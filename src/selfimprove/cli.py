"""The ``selfimprove`` command: helpers around the DVC pipeline (which ``dvc repro`` runs)."""

from __future__ import annotations

import argparse
import sys


def _check(args: argparse.Namespace) -> int:
    """params.yaml, then everything the run will need (:func:`selfimprove.preflight.preflight`):
    every problem on its own line and exit 2, else one OK line."""
    from selfimprove.config import load_params
    from selfimprove.preflight import preflight
    from selfimprove.tracking.health import mask_uri, tracking_uri

    params = load_params(args.params)
    problems = preflight(params)
    if problems:
        print(f"{args.params}: {len(problems)} problem(s) before the run:", file=sys.stderr)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    rounds = ", ".join(f"{k}<-{v.prev}" for k, v in params.rounds.items()) or "none"
    tracking = mask_uri(tracking_uri()) if params.tracking.enabled else "off"
    print(f"{args.params}: OK (method {params.method}, rounds: {rounds}, tracking: {tracking})")
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    from selfimprove.tiny import make_tiny_model

    path = make_tiny_model(args.out, seed=args.seed)
    print(f"tiny random model written to {path}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from selfimprove.evaluation.report import (
        DEFAULT_COLUMNS,
        compare_table,
        dvc_round_metrics,
        format_table,
        with_intervals,
    )

    if args.mlflow:
        from selfimprove.config.tracking import TrackingConfig
        from selfimprove.tracking.runs import round_metrics

        experiment, pipeline = args.experiment, args.pipeline
        if (experiment is None or pipeline is None) and Path(args.params).exists():
            from selfimprove.config import load_params

            tracking = load_params(args.params).tracking
            experiment = experiment or tracking.experiment
            pipeline = pipeline or tracking.pipeline
        cfg = TrackingConfig(
            experiment=experiment or "selfimprove",
            pipeline=pipeline or "default",
            registered_model=None,  # reading only
        )
        metrics = round_metrics(cfg)
        source = f"mlflow:{cfg.experiment}/{cfg.pipeline}"
    else:
        metrics = dvc_round_metrics(args.rounds_dir)
        if not metrics:
            from selfimprove.core.io import InputError

            raise InputError(
                f"{args.rounds_dir}: no round folders with metrics; run `dvc repro` first (or "
                "use --mlflow to read the tracking server)"
            )
        source = f"dvc:{args.rounds_dir}"
    table = compare_table(metrics, args.metrics or DEFAULT_COLUMNS)
    if args.ci:
        table = with_intervals(table, metrics, args.digits)
    if args.json:
        print(json.dumps({"source": source, **table}, indent=2))
    else:
        print(format_table(table, digits=args.digits))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfimprove",
        description="Label-free self-improvement of language models (LMSI) as a DVC pipeline. "
        "Run the pipeline with `dvc repro`; these subcommands help around it.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "check",
        help="validate params.yaml and what the run needs: tracking URI, data files, model "
        "source, memory (all problems at once, exit 2)",
    )
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_check)

    from selfimprove.evaluation.score import add_score_parser

    add_score_parser(sub)

    p = sub.add_parser(
        "compare",
        help="round-by-round table of metrics (DVC metrics files or MLflow)",
        description="Print one row per round and one column per metric, from the DVC metrics "
        "files under data/rounds (default) or from MLflow (--mlflow: the latest "
        "non-superseded run of each round of the pipeline). Metric names are flattened keys "
        "as in `dvc metrics show` (arith_1step.fewshot_cot.strict, arith_1step.sc.maj@8, "
        "filter.selected_fraction, ...); glob patterns select several.",
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        metavar="KEY",
        help="metric keys or glob patterns (default: '*.*.strict' filter.selected_fraction "
        "filter.mean_agreement)",
    )
    p.add_argument("--mlflow", action="store_true", help="read MLflow instead of the DVC files")
    p.add_argument(
        "--pipeline", help="MLflow pipeline (parent run) name (default: tracking.pipeline)"
    )
    p.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment)")
    p.add_argument("--params", default="params.yaml", help="params file for the defaults")
    p.add_argument("--rounds-dir", default="data/rounds", help="where the round folders are")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--digits", type=int, default=3, help="decimals in the text table")
    p.add_argument(
        "--ci",
        action="store_true",
        help="show each value with its confidence interval, 'value [lo, hi]' (where the "
        "evaluate stage wrote one: scores.json's ci)",
    )
    p.set_defaults(func=_compare)

    p = sub.add_parser("tiny-model", help="write a tiny random model (for smoke tests)")
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    from selfimprove.core.io import InputError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
