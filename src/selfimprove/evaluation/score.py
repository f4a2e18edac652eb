"""``selfimprove score {gsm8k,drop} FILE.jsonl``: score a predictions file, print one JSON object.

* gsm8k lines: ``{"prediction": raw generated text, "answer": gold number or GSM8K solution}``
  -> ``{"n", "strict", "flexible"}`` (accuracies in [0, 1]).
* drop lines: ``{"prediction": raw text or list of spans, "answers": [alternative, ...]}``,
  each alternative a string (one span) or a list of spans -> ``{"n", "em", "f1"}``. A raw-text
  prediction is reduced by :func:`~selfimprove.evaluation.metrics.drop.extract_drop_answer` (text
  after the last "answer is"); a list is taken as the predicted spans.

Any malformed line raises :class:`~selfimprove.core.io.InputError` naming the file and line, and
nothing is scored or printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Literal

from selfimprove.core.io import InputError, iter_jsonl, nonblank_line_numbers, write_json
from selfimprove.evaluation.metrics.drop import drop_record_problem, score_drop
from selfimprove.evaluation.metrics.gsm8k import gsm8k_record_problem, score_gsm8k

KINDS: tuple[str, ...] = ("gsm8k", "drop")
_KEYS = {"gsm8k": ("prediction", "answer"), "drop": ("prediction", "answers")}


def score_file(kind: Literal["gsm8k", "drop"], path: str | os.PathLike) -> dict:
    """Score a predictions ``.jsonl`` (or ``.jsonl.gz``) file; see the module docstring.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "preds.jsonl"
    >>> _ = p.write_text('{"prediction": "So the answer is 50.6.", "answers": ["50.6"]}\\n')
    >>> score_file("drop", p)
    {'n': 1, 'em': 1.0, 'f1': 1.0}
    >>> _ = p.write_text('{"prediction": "3 + 4 = 7. The answer is 7.", "answer": 7}\\n')
    >>> score_file("gsm8k", p)
    {'n': 1, 'strict': 1.0, 'flexible': 1.0}
    >>> _ = p.write_text('{"prediction": "7", "answer": 7}\\n\\n{"prediction": 7, "answer": 7}\\n')
    >>> score_file("gsm8k", p)
    Traceback (most recent call last):
    ...
    selfimprove.core.io.InputError: ...preds.jsonl line 3: 'prediction' must be the generated ...
    """
    if kind not in KINDS:
        raise InputError(f"unknown score kind {kind!r}; choose one of: {', '.join(KINDS)}")
    path = Path(path)
    records = list(iter_jsonl(path, required=_KEYS[kind]))
    if not records:
        raise InputError(f"{path}: no records; expected one JSON object per line with keys "
                         f"{', '.join(_KEYS[kind])}")  # fmt: skip
    problem_of = gsm8k_record_problem if kind == "gsm8k" else drop_record_problem
    lines: list[int] | None = None
    for i, rec in enumerate(records):
        problem = problem_of(rec)
        if problem:
            lines = lines or nonblank_line_numbers(path)
            raise InputError(f"{path} line {lines[i]}: {problem}")
    return score_gsm8k(records) if kind == "gsm8k" else score_drop(records)


def add_score_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``score`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "score",
        help="score a predictions .jsonl (GSM8K strict/flexible accuracy, DROP EM/F1)",
        description="Score a predictions file and print one JSON object. gsm8k lines: "
        '{"prediction": text, "answer": number or GSM8K solution} -> {n, strict, flexible}. '
        'drop lines: {"prediction": text or [spans], "answers": [alternative, ...]} with each '
        "alternative a string or a list of spans -> {n, em, f1} (official DROP algorithm).",
    )
    p.add_argument("kind", choices=KINDS, help="which metric")
    p.add_argument("path", type=Path, help="predictions file (.jsonl or .jsonl.gz)")
    p.add_argument(
        "--output", type=Path, default=None, help="also write the JSON object to this file"
    )
    p.set_defaults(func=run_score)
    return p


def run_score(args: argparse.Namespace) -> int:
    """Run ``selfimprove score``: JSON to stdout and 0, or the error to stderr and 2."""
    from selfimprove.core.io import os_reason, output_problem

    output = getattr(args, "output", None)
    try:
        problem = output_problem(output, (args.path,)) if output is not None else None
        if problem:  # before scoring: an output that is the input is never replaced
            raise InputError(f"--output {output}: {problem}")
        result = score_file(args.kind, args.path)
        if output is not None:
            try:
                write_json(output, result)
            except OSError as e:
                raise InputError(f"--output {output}: cannot write it: {os_reason(e)}") from None
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True))
    return 0
