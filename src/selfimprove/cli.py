"""The ``selfimprove`` command: helpers around the DVC pipeline (which ``dvc repro`` runs)."""

from __future__ import annotations

import argparse
import sys


def _check(args: argparse.Namespace) -> int:
    from selfimprove.config import load_params

    params = load_params(args.params)
    rounds = ", ".join(f"{k}<-{v.prev}" for k, v in params.rounds.items()) or "none"
    print(f"{args.params}: OK (method {params.method}, rounds: {rounds})")
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    from selfimprove.tiny import make_tiny_model

    path = make_tiny_model(args.out, seed=args.seed)
    print(f"tiny random model written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfimprove",
        description="Label-free self-improvement of language models (LMSI) as a DVC pipeline. "
        "Run the pipeline with `dvc repro`; these subcommands help around it.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="validate params.yaml (all problems at once)")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_check)

    from selfimprove.score import add_score_parser

    add_score_parser(sub)

    p = sub.add_parser("tiny-model", help="write a tiny random model (for smoke tests)")
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    from selfimprove.io import InputError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

