"""The wrapper every ``stages/*.py`` script runs under (paths: :mod:`selfimprove.core.paths`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from selfimprove.core.io import InputError
from selfimprove.core.paths import EVAL

log = logging.getLogger(__name__)

#: environment variables that set the thread count of OpenMP/MKL (this process's torch, and the
#: subprocesses a stage starts: accelerate workers)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _prepared_eval_names(folder) -> list[str] | None:
    """The eval sets the data stage made (from its ``stats.json``); None if it has none."""
    import json

    stats = folder.parent / "stats.json"
    try:
        counts = json.loads(stats.read_text(encoding="utf-8"))["counts"]
        return sorted(k.removeprefix("eval/") for k in counts if k.startswith("eval/"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise InputError(
            f"{stats}: unreadable or not the data stage's statistics; rerun `dvc repro data`"
        ) from None


def eval_record_problem(record: dict) -> str | None:
    """What is wrong with one eval record (GSM8K or DROP format), or None.

    >>> eval_record_problem({"id": "a", "question": "1+1?", "answer": "#### 2"}) is None
    True
    >>> eval_record_problem({"id": "a", "question": None, "answer": "#### 2"})
    "'question' must be a non-empty string, got None"
    >>> eval_record_problem({"id": "a", "question": "1+1?", "answer": "two"})  # doctest: +ELLIPSIS
    "bad gold 'answer': gold answer 'two' has no number; ..."
    """
    from selfimprove.core.answers import gold_answer
    from selfimprove.core.io import shorten

    q = record.get("question")
    if not isinstance(q, str) or not q.strip():
        return f"'question' must be a non-empty string, got {shorten(q, 40)}"
    if "passage" in record and "answers" in record:
        answers = record["answers"]
        ok = (
            isinstance(answers, list)
            and answers
            and all(
                isinstance(a, list) and a and all(isinstance(x, str) for x in a) for a in answers
            )
        )
        if not isinstance(record["passage"], str):
            return f"'passage' must be a string, got {shorten(record['passage'], 40)}"
        if not ok:
            return (
                "'answers' must be a non-empty list of alternatives, each a non-empty list of "
                f"span strings, got {shorten(answers, 40)}"
            )
        return None
    a = record.get("answer")
    if not isinstance(a, str):
        return f"'answer' must be a GSM8K solution string ending '#### N', got {shorten(a, 40)}"
    try:
        gold_answer(a)
    except ValueError as e:
        return f"bad gold 'answer': {e}"
    return None


def _check_eval_records(path, records: list[dict]) -> None:
    for i, rec in enumerate(records):
        problem = eval_record_problem(rec)
        if problem:
            from selfimprove.core.io import nonblank_line_numbers

            line = nonblank_line_numbers(path)[i]
            raise InputError(f"{path} line {line}: {problem}; rerun `dvc repro data`")


def load_eval_sets(names: list[str] | None) -> dict[str, list[dict]]:
    """The held-out sets written by the data stage (all, or those named).

    A set the data stage made whose file is gone, a set not made at all, a set with no
    records and a malformed record (:func:`eval_record_problem`) are :class:`InputError`
    naming the file (and line): never skipped, never scored as 0.0 or ``{}``.
    """
    from selfimprove.core.io import read_jsonl

    folder = EVAL
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: not a folder; rerun `dvc repro data`")
    available = sorted(p.name.removesuffix(".jsonl") for p in folder.glob("*.jsonl"))
    made = _prepared_eval_names(folder)
    wanted = names if names is not None else (made if made is not None else available)
    missing = [n for n in wanted if n not in available]
    if missing:
        gone = [n for n in missing if made is not None and n in made]
        what = f"deleted since the data stage made them: {gone}; " if gone else ""
        raise InputError(
            f"{folder}: no eval set(s) {missing} ({what}have: {available}); rerun `dvc repro data`"
        )
    if not wanted:
        raise InputError(f"{folder}: no eval sets to score; rerun `dvc repro data`")
    sets = {n: read_jsonl(folder / f"{n}.jsonl", required=["id", "question"]) for n in wanted}
    for n, recs in sets.items():
        _check_eval_records(folder / f"{n}.jsonl", recs)
    empty = [n for n, recs in sets.items() if not recs]
    if empty:
        raise InputError(
            f"{folder}: eval set(s) {empty} have no records; an empty set cannot be scored, "
            "rerun `dvc repro data` (data.eval.<name>.n >= 1)"
        )
    return sets


def apply_compute(cfg) -> None:
    """Apply the ``compute`` params section before any torch work: torch's intra-op threads
    (and the thread variables subprocesses inherit; a different value in the environment loses,
    with a log line) and the float32 matmul precision."""
    n = str(cfg.threads)
    for var in THREAD_VARS:
        if os.environ.get(var, n) != n:
            log.info(
                "compute.threads=%s overrides %s=%s from the environment", n, var, os.environ[var]
            )
        os.environ[var] = n
    # torch reads the thread variables when it is imported and "highest" is its default precision:
    # a stage that never imports torch (inputs, data, filter, report) does not pay its import here
    if "torch" in sys.modules or cfg.matmul_precision != "highest":
        import torch

        torch.set_num_threads(cfg.threads)
        torch.set_float32_matmul_precision(cfg.matmul_precision)


def peak_rss_bytes() -> dict[str, int]:
    """Peak resident set size so far of this process and of its largest finished child, bytes
    (``getrusage``; Linux reports KiB, macOS bytes)."""
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return {"peak_rss_bytes": max(own, children), "self": own, "children": children}


def record_resources(
    stage: str, round_name: str | None, wall_s: float, compute=None
) -> Path | None:
    """Add what this run of ``stage`` used (peak RSS, wall time, torch threads, the ``compute``
    settings it ran with) to its resources record
    (:func:`selfimprove.core.timings.update_resources`, beside the per-run facts of its JSON
    record); returns its path. Under a distributed launch only the global rank 0 writes (the
    other processes leave their project copy untouched); returns None there."""
    if os.environ.get("RANK", "0") != "0":
        return None
    from selfimprove.core.timings import update_resources

    torch = sys.modules.get("torch")  # None when the stage never needed it

    rss = peak_rss_bytes()
    path = update_resources(
        f"{stage}@{round_name}" if round_name else stage,
        {
            "stage": stage,
            "round": round_name,
            "peak_rss_bytes": rss["peak_rss_bytes"],
            "peak_rss_self_bytes": rss["self"],
            "peak_rss_children_bytes": rss["children"],
            "peak_rss_mb": round(rss["peak_rss_bytes"] / 2**20, 1),
            "wall_s": round(wall_s, 2),
            "torch_threads": torch.get_num_threads() if torch is not None else None,
            "compute": compute.model_dump() if compute is not None else None,
        },
    )
    log.info("%s: peak RSS %.0f MB, %.1f s", path.stem, rss["peak_rss_bytes"] / 2**20, wall_s)
    return path


def stage_main(
    description: str, add_args: Callable[[argparse.ArgumentParser], None] | None = None
) -> Callable[[Callable], Callable[[list[str] | None], None]]:
    """Wrap a stage body ``fn(args, params)``: parse args, validate params.yaml, apply the
    ``compute`` section, run the body, record its peak RSS and wall time
    (:func:`record_resources`), and turn bad input into one clear message and exit code 2."""

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

            t0 = time.perf_counter()
            try:
                params = load_params(args.params)
                apply_compute(params.compute)
                fn(args, params)
                stage = Path(fn.__code__.co_filename).stem
                wall = time.perf_counter() - t0
                record_resources(stage, getattr(args, "round", None), wall, params.compute)
            except InputError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)

        return main

    return wrap


def add_round_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--round", required=True, help="round name: r0 (base), r1, r2, …")
