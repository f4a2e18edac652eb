"""A stage's JSON record without the facts of one run: those go to an untracked timings file.

DVC's run cache restores a stage's outputs in another workspace (a clone, an experiment, a
second method sharing round 1's sampling) only when every plain output is cached, so the
statistics files (generate.json, finetune.json, ...) are cached outputs; a restored output must
then not claim to have been made now. :func:`write_stage_json` writes the record's
deterministic part to the DVC output and its per-run facts -- wall-clock figures (a key ending
in ``_s``: ``wall_s``, ``decode_s``, ``tokens_per_s``, ``runtime_s``, ...) and what a resumed run
picked up (``shards_reused``, ``resumed_from_step``) -- to
``data/resources/<stage>.timings.json`` (not a DVC output, git-ignored: one per workspace), with
the digest of the record it belongs to. The track stage logs them to MLflow beside the record
when that digest matches (:func:`read_timings`); a stage restored from the run cache has none.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

#: where the per-run facts of each stage go (``<stage>.timings.json``, stage as DVC names it:
#: ``generate@r1``); not a DVC output
RESOURCES = Path("data/resources")
#: per-run facts whose name does not end in ``_s``
RUN_KEYS = frozenset({"shards_reused", "resumed_from_step"})


def is_run_fact(key: str) -> bool:
    """A key that describes one run, not its result.

    >>> keys = ("wall_s", "tokens_per_s", "n_paths", "steps", "shards_reused")
    >>> [k for k in keys if is_run_fact(k)]
    ['wall_s', 'tokens_per_s', 'shards_reused']
    """
    return key.endswith("_s") or key in RUN_KEYS


def split_run_facts(stats: dict) -> tuple[dict, dict]:
    """``(record, facts)``: ``stats`` without its per-run facts, and those facts (nested dicts
    are split the same way).

    >>> split_run_facts({"n": 2, "wall_s": 1.0, "ray": {"workers": 2, "elapsed_s": 3.0}})
    ({'n': 2, 'ray': {'workers': 2}}, {'wall_s': 1.0, 'ray': {'elapsed_s': 3.0}})
    """
    record, facts = {}, {}
    for k, v in stats.items():
        if is_run_fact(k):
            facts[k] = v
        elif isinstance(v, dict):
            record[k], sub = split_run_facts(v)
            if sub:
                facts[k] = sub
        else:
            record[k] = v
    return record, facts


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_stage_json(path: str | Path, stats: dict, stage: str) -> dict:
    """Write ``stats`` minus its per-run facts to ``path`` (a DVC output, atomically) and the
    facts to ``data/resources/<stage>.timings.json``; return what went to ``path``."""
    from selfimprove.core.io import write_json

    path = Path(path)
    record, facts = split_run_facts(stats)
    write_json(path, record)
    write_json(
        RESOURCES / f"{stage}.timings.json",
        {"of": path.as_posix(), "sha256": _digest(path), **facts},
    )
    return record


def read_timings(path: str | Path, stage: str) -> dict:
    """The per-run facts that belong to the record at ``path`` (empty when the stage was
    restored rather than run in this workspace, or its record changed since)."""
    path, timings = Path(path), RESOURCES / f"{stage}.timings.json"
    try:
        facts = json.loads(timings.read_text(encoding="utf-8"))
        if facts.pop("sha256") != _digest(path):
            return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    facts.pop("of", None)
    return facts
