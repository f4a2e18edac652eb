"""The wrapper every ``stages/*.py`` script runs under (paths: :mod:`selfimprove.core.paths`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from selfimprove.core.io import InputError
from selfimprove.core.paths import EVAL


def load_eval_sets(names: list[str] | None) -> dict[str, list[dict]]:
    """The held-out sets written by the data stage (all, or those named)."""
    from selfimprove.core.io import read_jsonl

    folder = EVAL
    available = sorted(p.name.removesuffix(".jsonl") for p in folder.glob("*.jsonl"))
    wanted = names if names is not None else available
    missing = [n for n in wanted if n not in available]
    if missing:
        raise InputError(
            f"{folder}: no eval set(s) {missing} (have: {available}); rerun `dvc repro data`"
        )
    return {n: read_jsonl(folder / f"{n}.jsonl", required=["id", "question"]) for n in wanted}


def stage_main(
    description: str, add_args: Callable[[argparse.ArgumentParser], None] | None = None
) -> Callable[[Callable], Callable[[list[str] | None], None]]:
    """Wrap a stage body ``fn(args, params)``: parse args, validate params.yaml, turn bad input
    into one clear message and exit code 2."""

    def wrap(fn: Callable) -> Callable[[list[str] | None], None]:
        def main(argv: list[str] | None = None) -> None:
            parser = argparse.ArgumentParser(description=description)
            parser.add_argument("--params", default="params.yaml", help="params file")
            if add_args:
                add_args(parser)
            args = parser.parse_args(argv)
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
            from selfimprove.config import load_params

            try:
                params = load_params(args.params)
                fn(args, params)
            except InputError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)

        return main

    return wrap


def add_round_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--round", required=True, help="round name: r0 (base), r1, r2, …")
