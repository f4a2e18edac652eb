"""Where the pipeline's files live, and the wrapper every ``stages/*.py`` script runs under.

Paths are relative to the project root (where ``dvc.yaml`` is) and mirror ``dvc.yaml``:

- ``data/models/base``                 base_model: the starting model, a safetensors folder
- ``data/prepared/``                   data: train.jsonl (unlabeled), train_labels.jsonl (analysis
  only), seed.jsonl (labeled warm start), eval/<set>.jsonl
- ``data/models/warm``                 warmstart: base, or base + SFT on the labeled seed set
- ``data/rounds/r0/model``  meta_skill: round 0's model (warm + SELF meta-skills or a copy)
- ``data/rounds/rK/samples.jsonl``     generate
- ``data/rounds/rK/refined.jsonl``     refine (self-feedback/refinement; a passthrough for lmsi)
- ``data/rounds/rK/{rationales,train}.jsonl``  filter
- ``data/rounds/rK/model``             finetune (merged weights + adapter/)
- ``data/rounds/rK/metrics.json``, ``eval/``  evaluate
- ``data/rounds/rK/mlflow.json``       track: the MLflow run of the round
- ``data/report/``                     report: tables and plots across rounds
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from selfimprove.io import InputError

BASE_MODEL = Path("data/models/base")
PREPARED = Path("data/prepared")
ROUNDS = Path("data/rounds")


def round_dir(name: str) -> Path:
    """``data/rounds/<name>``.

    >>> round_dir("r2").as_posix()
    'data/rounds/r2'
    """
    return ROUNDS / name


def round_seed(seed: int, round_name: str) -> int:
    """The seed a round uses: the global seed plus the round's index (r0 -> seed).

    >>> round_seed(7, "r3")
    10
    """
    return seed + (0 if round_name == "r0" else int(round_name[1:]))


def load_eval_sets(names: list[str] | None) -> dict[str, list[dict]]:
    """The held-out sets written by the data stage (all, or those named)."""
    from selfimprove.io import read_jsonl

    folder = PREPARED / "eval"
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
