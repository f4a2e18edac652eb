"""MLflow run logging: one parent run per pipeline, one child run per round.

A per-round DVC ``track`` stage calls :func:`log_round` once that round's outputs exist. Layout in
the experiment (``TrackingConfig.experiment``):

* a *parent* run named after the pipeline (tags ``selfimprove.pipeline=<name>``,
  ``selfimprove.role=parent``), found by tag search and created the first time; it receives
  every round's metrics with ``step = round_index``, so its charts are histories across rounds;
* a *round* run per call, named ``<pipeline>/<round>``, nested under the parent through the
  ``mlflow.parentRunId`` tag, with the round's params (flattened, dotted keys), metrics, dataset
  inputs (digest = the file's sha256), artifacts, tables and model files. Rerunning a round makes a
  new run; older runs of the same pipeline and round are tagged ``selfimprove.superseded=true``.

Every round run also gets the environment tags of :func:`.provenance.environment_tags` (lock
file and its sha256, package versions, ``selfimprove.host``), and no param or tag value holds an
absolute path: each is logged relative to ``root`` (the project root, default the cwd) by
:func:`~selfimprove.tracking.tags.portable_value`.

The round's model is registered too (:mod:`selfimprove.tracking.registry`). The report stage
adds its files to the parent run (:func:`log_report`); ``selfimprove compare --mlflow`` reads
the rounds back (:func:`round_metrics`). Where runs go: :mod:`selfimprove.tracking.health`.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from selfimprove.config.tracking import _FORBIDDEN_NAME_CHARS, TrackingConfig
from selfimprove.core.io import InputError
from selfimprove.tracking.health import check_tracking, shown_tracking_uri
from selfimprove.tracking.provenance import environment_tags
from selfimprove.tracking.registry import log_registered_model, update_best_alias
from selfimprove.tracking.store import (
    experiment_id,
    is_current,
    mlflow_client,
    parent_run_id,
    search_runs,
)
from selfimprove.tracking.tags import (
    MAX_INPUT_TAG_VALUE,
    MAX_TAG_VALUE,
    PARENT_TAG,
    TAG_BASE_MODEL,
    TAG_LAST_ROUND,
    TAG_MODEL_DIR,
    TAG_PIPELINE,
    TAG_REGISTERED_MODEL,
    TAG_ROLE,
    TAG_ROUND,
    TAG_ROUND_INDEX,
    TAG_SKIPPED_METRICS,
    TAG_SUPERSEDED,
    clean_key,
    file_digest,
    flatten,
    numeric_metrics,
    portable_path,
    portable_value,
    truncate,
)

log = logging.getLogger(__name__)


@dataclass
class DatasetSpec:
    """A jsonl file logged as an MLflow dataset input of a round run.

    ``context`` is the MLflow input context, e.g. "training", "rationales", "evaluation".
    """

    path: Path
    name: str
    context: str


def _validate_inputs(
    round_name: str,
    datasets: list[DatasetSpec],
    artifacts: list[Path],
    model_dir: Path | None,
    adapter_dir: Path | None,
) -> None:
    if not round_name or any(c in round_name for c in _FORBIDDEN_NAME_CHARS):
        raise InputError(
            f"round_name={round_name!r}: must be non-empty, without quotes, backticks or "
            "backslashes (e.g. 'r1')"
        )
    for spec in datasets:
        if not Path(spec.path).is_file():
            raise InputError(
                f"dataset {spec.name!r} ({spec.context}): {spec.path} is not a file; run the "
                "stage that makes it or fix the path"
            )
    for p in artifacts:
        if not Path(p).exists():
            raise InputError(f"artifact {p}: not found; run the stage that makes it or fix it")
    for label, d in (("model_dir", model_dir), ("adapter_dir", adapter_dir)):
        if d is not None and not Path(d).is_dir():
            raise InputError(f"{label}={d}: not a folder; run the training stage or fix the path")


def _context_tags() -> dict[str, str]:
    """mlflow.user / mlflow.source.* tags as the fluent API would set them (best effort)."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return {k: str(v) for k, v in resolve_tags().items()}
    except Exception:  # pragma: no cover - context providers are optional niceties
        return {}


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _dataset_input(spec: DatasetSpec):
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with warnings.catch_warnings():  # two equivalent local sources are registered
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(spec.path))
    ds = MetaDataset(source, name=spec.name, digest=file_digest(spec.path))
    tags = [InputTag(key=MLFLOW_DATASET_CONTEXT, value=spec.context[:MAX_INPUT_TAG_VALUE])]
    return DatasetInput(dataset=ds._to_mlflow_entity(), tags=tags)


def _table_frame(rows: list[dict]):
    import pandas as pd

    def cell(v: object) -> object:
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        return json.dumps(v, ensure_ascii=False, default=str)

    return pd.DataFrame([{k: cell(v) for k, v in row.items()} for row in rows])


def _log_dir_files(client, run_id: str, src: Path, artifact_path: str) -> int:
    """Log every file under ``src`` (skipping ``*.tmp``) below ``artifact_path``."""
    from selfimprove.core.digest import folder_files

    n = 0
    for rel in folder_files(src):
        f = src / rel
        parent = rel.parent.as_posix()
        sub = artifact_path if parent == "." else f"{artifact_path}/{parent}"
        client.log_artifact(run_id, str(f), sub)
        n += 1
    return n


def log_round(
    cfg: TrackingConfig,
    *,
    round_name: str,
    round_index: int,
    params: dict | None = None,
    metrics: dict[str, float] | None = None,
    datasets: list[DatasetSpec] | None = None,
    artifacts: list[Path] | None = None,
    model_dir: Path | None = None,
    adapter_dir: Path | None = None,
    base_model_ref: str | None = None,
    tags: dict[str, str] | None = None,
    tables: dict[str, list[dict]] | None = None,
    root: Path | None = None,
) -> str:
    """Log one round as a new child run of the pipeline's parent run; return its run id.

    Returns "" (and touches nothing) when ``cfg.enabled`` is false. Inputs are checked before
    any run is created (missing files raise :class:`InputError`). Metrics go to the round run and
    to the parent run, both at ``step=round_index``; non-finite or non-numeric ones are skipped
    (counted in the ``selfimprove.skipped_metrics`` tag). ``tables`` maps a name to rows, logged
    with ``log_table`` as ``tables/<name>.json``. On success older runs of the same pipeline and
    round are tagged ``selfimprove.superseded=true``; on an exception the round run is marked
    FAILED and the exception re-raised.

    Unless ``cfg.registered_model`` is None the model is logged as an MLflow model, registered
    with the tag ``round=<round_name>``, and the alias ``best`` moved to the current version
    with the highest ``cfg.best_metric`` (from ``metrics``); see :mod:`.registry`.

    ``root`` is the project root (default: the cwd): absolute paths in params and tags (and the
    base folder the adapter model refers to) are logged relative to it.
    """
    if not cfg.enabled:
        return ""
    params, metrics, tags = params or {}, metrics or {}, tags or {}
    datasets, artifacts, tables = datasets or [], [Path(p) for p in artifacts or []], tables or {}
    model_dir = Path(model_dir) if model_dir is not None else None
    adapter_dir = Path(adapter_dir) if adapter_dir is not None else None
    _validate_inputs(round_name, datasets, artifacts, model_dir, adapter_dir)
    check_tracking(cfg)

    from mlflow.entities import Metric, Param

    client = mlflow_client()
    exp_id = experiment_id(client, cfg)
    parent_id = parent_run_id(client, exp_id, cfg)

    root = Path.cwd() if root is None else Path(root)
    run_tags = _context_tags()
    run_tags.update(environment_tags(root))
    run_tags.update({clean_key(k): truncate(str(v), MAX_TAG_VALUE) for k, v in tags.items()})
    run_tags.update(
        {
            TAG_PIPELINE: cfg.pipeline,
            TAG_ROLE: "round",
            TAG_ROUND: round_name,
            TAG_ROUND_INDEX: str(round_index),
            TAG_SUPERSEDED: "false",
            PARENT_TAG: parent_id,
        }
    )
    if model_dir is not None:
        run_tags[TAG_MODEL_DIR] = portable_path(model_dir, root)
    if base_model_ref:
        run_tags[TAG_BASE_MODEL] = truncate(base_model_ref, MAX_TAG_VALUE)
    run_tags = {k: portable_value(v, root) for k, v in run_tags.items()}
    good, skipped = numeric_metrics(metrics)
    run_tags[TAG_SKIPPED_METRICS] = str(skipped)
    if skipped:
        log.warning("round %s: skipped %d non-finite or non-numeric metrics", round_name, skipped)

    registered = cfg.registered_model_name()
    run = client.create_run(exp_id, run_name=f"{cfg.pipeline}/{round_name}", tags=run_tags)
    run_id = run.info.run_id
    try:
        flat = {clean_key(k): portable_value(v, root) for k, v in flatten(params).items()}
        for chunk in _chunks([Param(k, v) for k, v in flat.items()], 100):
            client.log_batch(run_id, params=chunk, synchronous=True)
        now = int(time.time() * 1000)
        metric_list = [Metric(clean_key(k), v, now, int(round_index)) for k, v in good.items()]
        for chunk in _chunks(metric_list, 1000):
            client.log_batch(run_id, metrics=chunk, synchronous=True)
            client.log_batch(parent_id, metrics=chunk, synchronous=True)

        if datasets:
            client.log_inputs(run_id, datasets=[_dataset_input(s) for s in datasets])
            for spec in datasets:
                client.log_artifact(run_id, str(spec.path), f"datasets/{spec.context}")
        for p in artifacts:
            if p.is_dir():
                _log_dir_files(client, run_id, p, f"artifacts/{p.name}")
            else:
                client.log_artifact(run_id, str(p), "artifacts")
        for name, rows in tables.items():
            fname = name if name.endswith((".json", ".parquet")) else f"{name}.json"
            with warnings.catch_warnings():  # pandas 3 deprecation inside mlflow's log_table
                warnings.filterwarnings("ignore", message=".*select_dtypes.*")
                client.log_table(run_id, data=_table_frame(rows), artifact_file=f"tables/{fname}")

        if cfg.log_model == "adapter" and adapter_dir is not None:
            _log_dir_files(client, run_id, adapter_dir, "model/adapter")
        elif cfg.log_model == "merged" and model_dir is not None and registered is None:
            # with the registry on, the weights go into the MLflow model instead (not twice)
            _log_dir_files(client, run_id, model_dir, "model/merged")
        version = log_registered_model(
            client,
            cfg,
            run_id=run_id,
            round_name=round_name,
            round_index=round_index,
            model_dir=model_dir,
            adapter_dir=adapter_dir,
            base_model_ref=base_model_ref,
            root=root,
        )
        if version is not None:
            client.set_tag(run_id, TAG_REGISTERED_MODEL, f"{registered}/{version}")
    except BaseException as e:
        status = "FAILED" if isinstance(e, Exception) else "KILLED"
        try:
            client.set_terminated(run_id, status)
        except Exception:  # keep the original error
            log.exception("could not mark run %s %s", run_id, status)
        raise
    client.set_terminated(run_id, "FINISHED")

    older = search_runs(
        client,
        exp_id,
        {TAG_PIPELINE: cfg.pipeline, TAG_ROLE: "round", TAG_ROUND: round_name},
    )
    for r in older:
        if r.info.run_id != run_id and r.data.tags.get(TAG_SUPERSEDED) != "true":
            client.set_tag(r.info.run_id, TAG_SUPERSEDED, "true")
    client.set_tag(parent_id, TAG_LAST_ROUND, round_name)
    client.set_terminated(parent_id, "FINISHED")
    if registered is not None:
        update_best_alias(client, cfg)
    log.info(
        "logged round %s as run %s (parent %s) to %s",
        round_name,
        run_id,
        parent_id,
        shown_tracking_uri(),
    )
    return run_id


# --------------------------------------------------------------------------- reading back


def log_report(cfg: TrackingConfig, files: list[Path], artifact_path: str = "report") -> str:
    """Log report files (plots, tables) to the pipeline's parent run under ``artifact_path``.

    Returns the parent run id, or "" when tracking is disabled. Files missing raise
    :class:`InputError` before anything is logged.
    """
    if not cfg.enabled:
        return ""
    files = [Path(f) for f in files]
    for f in files:
        if not f.is_file():
            raise InputError(f"report file {f}: not found; rerun the report stage")
    check_tracking(cfg)
    client = mlflow_client()
    parent_id = parent_run_id(client, experiment_id(client, cfg), cfg)
    for f in files:
        client.log_artifact(parent_id, str(f), artifact_path)
    return parent_id


def round_metrics(cfg: TrackingConfig) -> dict[str, dict[str, float]]:
    """Metrics of each round of ``cfg.pipeline`` from MLflow: per round, the latest round run
    not marked superseded. Raises :class:`InputError` if the experiment or pipeline is unknown."""
    check_tracking(cfg)
    client = mlflow_client()
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        raise InputError(
            f"MLflow experiment {cfg.experiment!r} not found in {shown_tracking_uri()}; check "
            "tracking.experiment or MLFLOW_TRACKING_URI"
        )
    runs = search_runs(client, exp.experiment_id, {TAG_PIPELINE: cfg.pipeline, TAG_ROLE: "round"})
    latest: dict[str, object] = {}
    for run in runs:  # oldest first
        if is_current(run):
            latest[run.data.tags.get(TAG_ROUND, "")] = run
    latest.pop("", None)
    if not latest:
        parents = search_runs(client, exp.experiment_id, {TAG_ROLE: "parent"})
        known = sorted({p.data.tags.get(TAG_PIPELINE, "") for p in parents} - {""})
        raise InputError(
            f"pipeline {cfg.pipeline!r} has no finished round runs in experiment "
            f"{cfg.experiment!r} ({shown_tracking_uri()}); pipelines there: "
            f"{', '.join(known) or 'none'}"
        )
    return {name: dict(run.data.metrics) for name, run in latest.items()}
