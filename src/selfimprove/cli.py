"""The ``selfimprove`` command: helpers around the DVC pipeline (which ``dvc repro`` runs)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

#: largest ``tiny-model --seed`` (torch's seeds are unsigned 64-bit)
MAX_SEED = 2**63 - 1


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one ``error:`` line and exit code 2 (the
    form of every other bad-input message), never the usage block."""

    def error(self, message: str):  # noqa: D102 (argparse's hook)
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


def _int_at_least(low: int, high: int | None = None):
    """An argparse ``type``: an integer in ``[low, high]``, as written (no "8.0", no "1e3")."""

    def parse(text: str) -> int:
        if not re.fullmatch(r"[+-]?\d{1,30}", text.strip()):
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
        value = int(text)
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"{value} is out of range; use an integer {bound}")
        return value

    parse.__name__ = "integer"
    return parse


def _check(args: argparse.Namespace) -> int:
    """params.yaml, then everything the run will need (:func:`selfimprove.preflight.preflight`):
    every problem on its own line and exit 2, else one OK line."""
    from selfimprove.config import load_params
    from selfimprove.preflight import preflight
    from selfimprove.tracking.health import mask_uri, tracking_uri

    params = load_params(args.params)
    problems = preflight(params, params_file=args.params)
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
    from selfimprove.core.io import InputError, os_reason, output_problem
    from selfimprove.tiny import make_tiny_model

    out = Path(args.out)
    try:
        os.stat(out)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise InputError(f"{out}: {os_reason(e)}") from None
    if out.is_file():
        raise InputError(f"{out}: is a file, expected a folder; give a new folder's path")
    if out.is_dir() and any(out.iterdir()):
        cwd = Path.cwd().resolve()
        if out.resolve() in (cwd, *cwd.parents):
            raise InputError(f"{out}: is the working folder or above it; give a new folder")
        if not args.force:
            raise InputError(
                f"{out}: the folder exists and is not empty; give a new folder, or --force to "
                "replace it"
            )
        if not (out / "config.json").is_file():
            raise InputError(
                f"{out}: not a model folder (no config.json); --force replaces model folders "
                "only, give a new folder"
            )
    problem = output_problem(out)
    if problem and not out.is_dir():
        raise InputError(f"{out}: {problem}")
    from selfimprove.core.io import atomic_path

    with atomic_path(out, is_dir=True) as tmp:  # an existing folder is replaced whole
        make_tiny_model(tmp, seed=args.seed)
    path = out
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
        from selfimprove.core.io import InputError, folder_problem

        problem = folder_problem(args.rounds_dir)
        if problem and problem != "not found":
            raise InputError(f"--rounds-dir {args.rounds_dir}: {problem}")
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


def _study(args: argparse.Namespace) -> int:
    from selfimprove import study

    if args.action == "run":
        return study.run_study(args)
    from selfimprove.core.io import InputError, folder_problem

    if not args.root:
        raise InputError("study table: give --root, the folder the study was exported to")
    for root in args.root:
        problem = folder_problem(root)
        if problem:
            raise InputError(f"--root {root}: {problem}")
    return study.write_table(args.root, args)


def _add_study_parser(sub) -> None:
    from selfimprove.config.evaluation import StatsConfig

    p = sub.add_parser(
        "study",
        help="seeds x methods as DVC experiments (dvc exp run --queue, dvc queue start), then "
        "one table with intervals",
        description="run: queue one DVC experiment per (method, seed) on the same questions "
        "(skipping those finished with the same params), run the queue with --jobs workers, "
        "wait, export each experiment's compact results to --out and print the table. "
        "table: the table again from the exported folder (--root). docs/studies.md.",
    )
    p.add_argument("action", choices=["run", "table"])
    p.add_argument("--name", default="study", help="study name: experiment names "
                   "<name>-<method>-s<seed>, MLflow tracking.study, default --out")
    p.add_argument("--methods", nargs="+", default=None,
                   help="methods (params.yaml `method`), each an arm with the method's usual "
                   "params; the first arm is the table's reference (default, without --arm: "
                   "lmsi format_only star)")
    p.add_argument("--arm", nargs="+", action="append", metavar="LABEL METHOD [KEY=VALUE",
                   help="an arm (repeatable) after --methods: a method with its own params, its "
                   "experiments <name>-<LABEL>-s<seed>, its folder and column LABEL; e.g. "
                   "--arm lmsi_exp lmsi filter.weighting=exp filter.weight_beta=0.25")
    p.add_argument("--seeds", nargs="+", type=_int_at_least(0), default=[0, 1, 2])
    p.add_argument("--data-seed", type=_int_at_least(0), default=0,
                   help="data.seed of every run (same questions)")
    p.add_argument("--set", "-S", action="append", metavar="KEY=VALUE",
                   help="another param of every run (repeatable), as `dvc exp run -S`")
    p.add_argument("--jobs", "-j", type=_int_at_least(1), default=2,
                   help="queue workers (`dvc queue start -j`)")
    p.add_argument("--poll", type=float, default=10.0, help="seconds between progress checks")
    p.add_argument("--no-start", action="store_true", help="queue only; start it yourself")
    p.add_argument("--repo", default=".", help="the project's root")
    p.add_argument("--out", help="exported results (default benchmarks/results/<name>)")
    p.add_argument("--push", metavar="GIT_REMOTE", help="run: then `dvc exp push GIT_REMOTE` "
                   "the study's experiments (their outputs go to the default DVC remote)")
    p.add_argument("--root", type=Path, action="append",
                   help="table: the exported study folder (repeatable: several studies in one "
                   "table, each run (method and seed) in one of them)")
    p.add_argument("--round", default="r2", help="round the table compares")
    p.add_argument("--json", type=Path, help="also write the table's JSON here")
    p.add_argument("--level", type=float, default=StatsConfig().level)
    p.add_argument("--resamples", type=_int_at_least(100), default=StatsConfig().n_resamples)
    p.add_argument("--stats-seed", type=_int_at_least(0, MAX_SEED), default=StatsConfig().seed)
    p.set_defaults(func=_study)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    p.add_argument(
        "--digits", type=_int_at_least(0, 17), default=3, help="decimals in the text table"
    )
    p.add_argument(
        "--ci",
        action="store_true",
        help="show each value with its confidence interval, 'value [lo, hi]' (where the "
        "evaluate stage wrote one: scores.json's ci)",
    )
    p.set_defaults(func=_compare)

    _add_study_parser(sub)

    p = sub.add_parser("tiny-model", help="write a tiny random model (for smoke tests)")
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=_int_at_least(0, MAX_SEED), default=0)
    p.add_argument("--force", action="store_true", help="replace OUT if it is an existing folder")
    p.set_defaults(func=_tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    from selfimprove.core.io import InputError, os_reason

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output that cannot be written after all (disk full, ...)
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{os_reason(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
