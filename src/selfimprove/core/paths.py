"""Every path of the pipeline, and the round-name rule: the one place both are written.

Paths are relative to the project root (where ``dvc.yaml`` is) and mirror ``dvc.yaml``:

- ``data/inputs/<stage>.json``         inputs: content digests of files outside the repo
- ``data/models/base``                 base_model: the starting model, a safetensors folder
- ``data/prepared/``                   data: train.jsonl (unlabeled), train_labels.jsonl (analysis
  only), seed.jsonl (labeled warm start), eval/<set>.jsonl
- ``data/models/warm``                 warmstart: base, or base + SFT on the labeled seed set
- ``data/rounds/r0/model``             meta_skill: round 0's model (warm + SELF meta-skills, or a
  copy)
- ``data/rounds/rK/samples.jsonl``     generate
- ``data/rounds/rK/refined.jsonl``     refine (self-feedback/refinement; a passthrough for lmsi)
- ``data/rounds/rK/{rationales,train}.jsonl``  filter
- ``data/rounds/rK/model``             finetune (merged weights + adapter/)
- ``data/rounds/rK/{scores,metrics}.json``, ``eval/``  evaluate (every figure; its headline)
- ``data/rounds/rK/mlflow.json``       track: the MLflow run of the round
- ``data/report/``                     report: tables and plots across rounds
- ``data/resources/<stage>[@<round>].json``  every stage: its peak RSS and wall time (not a DVC
  output: a measurement of the run, not of its inputs)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from selfimprove.core.io import InputError

INPUTS = Path("data/inputs")
BASE_MODEL = Path("data/models/base")
WARM_MODEL = Path("data/models/warm")
PREPARED = Path("data/prepared")
TRAIN = PREPARED / "train.jsonl"
TRAIN_LABELS = PREPARED / "train_labels.jsonl"
SEED = PREPARED / "seed.jsonl"
EVAL = PREPARED / "eval"
ROUNDS = Path("data/rounds")
REPORT = Path("data/report")
RESOURCES = Path("data/resources")

#: a round's name: r0 is the starting model, r1, r2, ... the self-improvement rounds
ROUND_RE = re.compile(r"^r(0|[1-9][0-9]*)$")


def is_round(name: str) -> bool:
    """True for a round name (``r0``, ``r1``, …; no leading zeros).

    >>> is_round("r0"), is_round("r12"), is_round("r01"), is_round("best")
    (True, True, False, False)
    """
    return bool(ROUND_RE.match(name))


def round_index(name: str) -> int:
    """The index of a round name: ``r0`` -> 0, ``r12`` -> 12.

    >>> round_index("r12")
    12
    >>> round_index("best")
    Traceback (most recent call last):
    ...
    selfimprove.core.io.InputError: round 'best': round names are r0, r1, r2, ...
    """
    m = ROUND_RE.match(name)
    if not m:
        raise InputError(f"round {name!r}: round names are r0, r1, r2, ...")
    return int(m.group(1))


def sort_rounds(names: Iterable[str]) -> list[str]:
    """Round names in round order (not string order).

    >>> sort_rounds(["r10", "r2", "r0"])
    ['r0', 'r2', 'r10']
    """
    return sorted(names, key=round_index)


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
    return seed + round_index(round_name)


def resources_file(stage: str, round_name: str | None = None) -> Path:
    """``data/resources/<stage>[@<round>].json``: what one run of the stage used.

    >>> resources_file("evaluate", "r1").as_posix(), resources_file("data").as_posix()
    ('data/resources/evaluate@r1.json', 'data/resources/data.json')
    """
    return RESOURCES / (f"{stage}@{round_name}.json" if round_name else f"{stage}.json")


def input_digest_file(stage: str) -> Path:
    """``data/inputs/<stage>.json``: the digests of the files outside the repo ``stage`` reads.

    >>> input_digest_file("base_model").as_posix()
    'data/inputs/base_model.json'
    """
    return INPUTS / f"{stage}.json"
