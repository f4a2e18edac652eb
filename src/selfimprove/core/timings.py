"""One record per stage run of what it used: ``data/resources/<stage>.json`` (stage as DVC names
it: ``generate@r1``; not a DVC output, git-ignored: one per workspace).

It holds the stage's peak RSS, wall time, torch threads and ``compute`` settings
(:func:`selfimprove.pipeline.record_resources`) and the per-run facts of its JSON record.

DVC's run cache restores a stage's outputs in another workspace (a clone, an experiment, a
second method sharing round 1's sampling) only when every plain output is cached, so the
statistics files (generate.json, finetune.json, ...) are cached outputs; a restored output must
then not claim to have been made now, and nothing that differs between runs of the same inputs
(memory, seconds) may be in one. :func:`write_stage_json` writes the record's deterministic part
to the DVC output and its per-run facts -- wall-clock figures (a key ending in ``_s``:
``wall_s``, ``decode_s``, ``tokens_per_s``, ``runtime_s``, ...) and what a resumed run picked up
(``shards_reused``, ``resumed_from_step``) -- under ``facts`` in the resources record, with the
path and digest of the record they belong to. The track stage logs them to MLflow beside the
record, and the resources as ``resources/<stage>/<key>``, when that digest matches
(:func:`read_timings`, :func:`resources_metrics`); a stage restored from the run cache has none.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from selfimprove.core.paths import RESOURCES, resources_file

#: the figures of a resources record that the track stage logs (``resources/<stage>/<key>``)
LOGGED = ("peak_rss_mb", "wall_s", "torch_threads")
#: stages whose resources record this process started: the next entry merges, the first replaces
#: what an earlier run left there
_STARTED: set[str] = set()
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


def read_resources(stage: str) -> dict:
    """The resources record of ``stage`` in this workspace; empty when there is none."""
    try:
        data = json.loads(resources_file(stage).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_resources(stage: str, entries: dict) -> Path:
    """Add ``entries`` to the resources record of this run of ``stage`` (atomically); the first
    call of a process replaces the record an earlier run left."""
    from selfimprove.core.io import write_json

    path = resources_file(stage)
    record = read_resources(stage) if stage in _STARTED else {}
    _STARTED.add(stage)
    write_json(path, record | entries)
    return path


def write_stage_json(path: str | Path, stats: dict, stage: str) -> dict:
    """Write ``stats`` minus its per-run facts to ``path`` (a DVC output, atomically) and the
    facts to ``data/resources/<stage>.json``; return what went to ``path``."""
    from selfimprove.core.io import write_json

    path = Path(path)
    record, facts = split_run_facts(stats)
    write_json(path, record)
    update_resources(stage, {"of": path.as_posix(), "sha256": _digest(path), "facts": facts})
    return record


def _current(path: Path, resources: dict) -> bool:
    """Whether ``resources`` were written with the record now at ``path``."""
    try:
        return resources.get("sha256") == _digest(path)
    except OSError:
        return False


def read_timings(path: str | Path, stage: str) -> dict:
    """The per-run facts that belong to the record at ``path`` (empty when the stage was
    restored rather than run in this workspace, or its record changed since)."""
    resources = read_resources(stage)
    facts = resources.get("facts")
    return facts if isinstance(facts, dict) and _current(Path(path), resources) else {}


def resources_metrics(round_name: str, first: bool) -> dict[str, float]:
    """``resources/<stage>/<key>`` for the :data:`LOGGED` figures of the round's stages that ran
    in this workspace (``<stage>@<round>``; with ``first``, also the stages that run once:
    base_model, data, warmstart, ...). A stage whose record changed since (restored from the run
    cache) is left out; track and report (which run after) are not logged."""
    out: dict[str, float] = {}
    for path in sorted(RESOURCES.glob("*.json")):
        name, _, rnd = path.stem.partition("@")
        if (rnd != round_name and not (first and not rnd)) or name in ("track", "report"):
            continue
        if name.startswith("track") or path.stem.endswith(".timings"):
            continue
        resources = read_resources(path.stem)
        if "of" in resources and not _current(Path(resources["of"]), resources):
            continue
        for key in LOGGED:
            value = resources.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"resources/{name}/{key}"] = float(value)
    return out
