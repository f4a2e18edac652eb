"""MLflow tracking: one parent run per pipeline, one child run per round (the only MLflow user).

A per-round DVC ``track`` stage calls :func:`log_round` once that round's outputs exist. Layout in
the experiment (``TrackingConfig.experiment``):

* a *parent* run named after the pipeline (tags ``selfimprove.pipeline=<name>``,
  ``selfimprove.role=parent``), found by tag search and created the first time; it receives
  every round's metrics with ``step = round_index``, so its charts are histories across rounds;
* a *round* run per call, named ``<pipeline>/<round>``, nested under the parent through the
  ``mlflow.parentRunId`` tag, with the round's params (flattened, dotted keys), metrics, dataset
  inputs (digest = the file's sha256), artifacts, tables and model files. Rerunning a round makes a
  new run; older runs of the same pipeline and round are tagged ``selfimprove.superseded=true``.

The tracking URI is ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` (relative to the working
directory); an ``http(s)://`` server works unchanged. MLflow is imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import posixpath
import re
import subprocess
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from selfimprove.io import InputError, file_sha256

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: MLflow limits (mlflow.utils.validation); kept here so pure helpers need no mlflow import.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_INPUT_TAG_VALUE = 500
#: MLflow stores at most 36 characters of a dataset digest: the sha256 prefix we log.
DIGEST_CHARS = 36
CHECK_TIMEOUT_S = 5.0

TAG_PIPELINE = "selfimprove.pipeline"
TAG_ROLE = "selfimprove.role"
TAG_ROUND = "selfimprove.round"
TAG_ROUND_INDEX = "selfimprove.round_index"
TAG_SUPERSEDED = "selfimprove.superseded"
TAG_BASE_MODEL = "selfimprove.base_model"
TAG_MODEL_DIR = "selfimprove.model_dir"
TAG_SKIPPED_METRICS = "selfimprove.skipped_metrics"
TAG_LAST_ROUND = "selfimprove.last_round"
PARENT_TAG = "mlflow.parentRunId"

_FORBIDDEN_NAME_CHARS = "'\"`\\"


class TrackingConfig(BaseModel):
    """Where and what to log to MLflow (``tracking:`` in params.yaml)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Log each round to MLflow; false skips tracking.")
    experiment: str = Field(
        "selfimprove", description="MLflow experiment name (created if missing)."
    )
    pipeline: str = Field(
        "default",
        description="Pipeline name: the parent run's name and its selfimprove.pipeline tag; "
        "one parent run per name collects every round of this pipeline.",
    )
    log_model: Literal["adapter", "merged", "none"] = Field(
        "adapter",
        description="Model files to log per round: 'adapter' = the LoRA adapter folder plus a "
        "base-model reference tag, 'merged' = the merged weights folder, 'none' = nothing.",
    )

    @field_validator("experiment", "pipeline")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        if any(c in v for c in _FORBIDDEN_NAME_CHARS):
            raise ValueError(f"{v!r} must not contain quotes, backticks or backslashes")
        return v


@dataclass
class DatasetSpec:
    """A jsonl file logged as an MLflow dataset input of a round run.

    ``context`` is the MLflow input context, e.g. "training", "rationales", "evaluation".
    """

    path: Path
    name: str
    context: str


# --------------------------------------------------------------------------- pure helpers


def tracking_uri() -> str:
    """The MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or DEFAULT_TRACKING_URI


def _stringify(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return str(value)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def flatten(d: Mapping, prefix: str = "", max_len: int = MAX_PARAM_VALUE) -> dict[str, str]:
    """Flatten nested dicts into dotted keys with string values (truncated to ``max_len``).

    Lists and tuples become compact JSON; ``None`` becomes ``"None"``; empty dicts ``"{}"``.

    >>> flatten({"lr": 1e-4, "lora": {"r": 8, "targets": ["q", "v"]}, "seed": None})
    {'lr': '0.0001', 'lora.r': '8', 'lora.targets': '["q", "v"]', 'seed': 'None'}
    >>> flatten({"a": {"b": {}}, "long": "x" * 10}, max_len=6)
    {'a.b': '{}', 'long': 'xxx...'}
    """
    out: dict[str, str] = {}
    for key, value in d.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, prefix=f"{full}.", max_len=max_len))
        else:
            out[full] = _truncate(_stringify(value), max_len)
    return out


def _clean_key(key: str) -> str:
    """Make ``key`` a valid MLflow param/metric/tag name.

    >>> _clean_key("eval/acc@1 (greedy)")
    'eval/acc_1 _greedy_'
    >>> _clean_key("/a//b/")
    '_a__b_'
    """
    key = re.sub(r"[^\w.\- :/]", "_", str(key))[:MAX_KEY]
    if key.startswith("/") or posixpath.normpath(key) != key:
        key = key.replace("/", "_")
    return key or "_"


def _numeric_metrics(metrics: Mapping, prefix: str = "") -> tuple[dict[str, float], int]:
    """Finite numeric metrics with dotted keys, and how many values were skipped.

    >>> _numeric_metrics({"acc": 0.5, "n": 3, "bad": float("nan"), "s": "x", "sub": {"f1": 1}})
    ({'acc': 0.5, 'n': 3.0, 'sub.f1': 1.0}, 2)
    """
    good: dict[str, float] = {}
    skipped = 0
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            sub, n = _numeric_metrics(value, prefix=f"{prefix}{key}.")
            good.update(sub)
            skipped += n
        elif isinstance(value, Real) and math.isfinite(float(value)):
            good[f"{prefix}{key}"] = float(value)
        else:
            skipped += 1
    return good, skipped


def _skip_tmp(rel: Path) -> bool:
    return any(part.endswith(".tmp") for part in rel.parts)


def file_digest(path: str | os.PathLike, length: int = DIGEST_CHARS) -> str:
    """sha256 hex prefix (``length`` chars) of a file, or of a folder's files (``*.tmp`` skipped).

    A folder's digest covers each file's relative path and sha256, in sorted order.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.txt").write_text("hello")
    >>> file_digest(d / "a.txt", length=16)
    '2cf24dba5fb0a30e'
    >>> len(file_digest(d)), file_digest(d) == file_digest(d)
    (36, True)
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: not found; run the stage that makes it or fix the path")
    if path.is_file():
        return file_sha256(path)[:length]
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path)
        if _skip_tmp(rel):
            continue
        h.update(f"{rel.as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()[:length]


def git_info(repo_dir: str | os.PathLike) -> dict[str, str]:
    """``{"commit": <HEAD sha>, "dirty": "true"|"false"}`` for a git work tree, else ``{}``.

    "dirty" ignores untracked files (DVC outputs are git-ignored anyway).

    >>> import tempfile
    >>> git_info(tempfile.mkdtemp())
    {}
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=repo_dir,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": "true" if dirty else "false"}


# --------------------------------------------------------------------------- checks


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for in-memory).

    >>> _sqlite_path("sqlite:///mlflow.db"), _sqlite_path("sqlite:////tmp/x/m.db?timeout=5")
    (PosixPath('mlflow.db'), PosixPath('/tmp/x/m.db'))
    >>> _sqlite_path("sqlite://") is None
    True
    """
    from urllib.parse import unquote

    rest = uri[len("sqlite://") :].split("?", 1)[0]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(unquote(rest[1:]))


def check_tracking(cfg: TrackingConfig) -> None:
    """Fail fast (:class:`InputError`) if the tracking URI cannot work; no-op when disabled.

    http(s): the server must answer ``GET <uri>/health`` within a few seconds (any HTTP answer
    below 500 counts). sqlite: the database's folder is created. A file store (plain path or
    ``file:``) is refused unless ``MLFLOW_ALLOW_FILE_STORE=true``.
    """
    if not cfg.enabled:
        return
    uri = tracking_uri()
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https"):
        _check_http(uri)
    elif scheme == "sqlite":
        db = _sqlite_path(uri)
        if db is not None:
            try:
                db.resolve().parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(
                    f"MLFLOW_TRACKING_URI={uri}: cannot create the folder for {db} ({e}); "
                    "point it at a writable path or unset MLFLOW_TRACKING_URI"
                ) from None
    elif scheme in ("", "file") or len(scheme) == 1:  # a plain path (or a Windows drive)
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
            raise InputError(
                f"MLFLOW_TRACKING_URI={uri}: MLflow 3 refuses the file store; use "
                f"{DEFAULT_TRACKING_URI} (unset MLFLOW_TRACKING_URI) or an http://host:port "
                "server, or set MLFLOW_ALLOW_FILE_STORE=true"
            )


def _check_http(uri: str, timeout: float = CHECK_TIMEOUT_S) -> None:
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    fix = (
        "start it (e.g. `mlflow server --host 127.0.0.1 --port 5000 "
        "--backend-store-uri sqlite:///mlflow.db`), fix the address, or unset "
        f"MLFLOW_TRACKING_URI to log to {DEFAULT_TRACKING_URI}"
    )
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise InputError(
            f"MLFLOW_TRACKING_URI={uri}: the MLflow server does not answer ({reason}); {fix}"
        ) from None
    if status >= 500:
        raise InputError(
            f"MLFLOW_TRACKING_URI={uri}: the MLflow server answered {url} with HTTP {status}; "
            f"check the server's log, or {fix}"
        )


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


# --------------------------------------------------------------------------- MLflow side


def _client():
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def _experiment_id(client, cfg: TrackingConfig) -> str:
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            raise InputError(
                f"tracking.experiment={cfg.experiment!r} is deleted in {tracking_uri()}; "
                f"restore it (`mlflow experiments restore --experiment-id {exp.experiment_id}`) "
                "or choose another experiment name"
            )
        return exp.experiment_id
    location = None
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        db = _sqlite_path(uri)
        # MLflow's default is ./mlruns/<experiment id> under the cwd; when the database lives
        # elsewhere keep the artifacts next to it instead (mlruns/<experiment name>)
        if db is not None and db.resolve().parent != Path.cwd().resolve():
            safe = re.sub(r"[^\w.\-]", "_", cfg.experiment)
            location = (db.resolve().parent / "mlruns" / safe).as_uri()
    try:
        return client.create_experiment(cfg.experiment, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def _search(client, experiment_id: str, tags: dict[str, str]) -> list:
    filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filt,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _parent_run_id(client, experiment_id: str, cfg: TrackingConfig) -> str:
    found = _search(client, experiment_id, {TAG_PIPELINE: cfg.pipeline, TAG_ROLE: "parent"})
    if found:  # the oldest, should two have been created concurrently
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=cfg.pipeline,
        tags={TAG_PIPELINE: cfg.pipeline, TAG_ROLE: "parent"},
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


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
    n = 0
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = f.relative_to(src)
        if _skip_tmp(rel):
            continue
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
) -> str:
    """Log one round as a new child run of the pipeline's parent run; return its run id.

    Returns "" (and touches nothing) when ``cfg.enabled`` is false. Inputs are checked before
    any run is created (missing files raise :class:`InputError`). Metrics go to the round run and
    to the parent run, both at ``step=round_index``; non-finite or non-numeric ones are skipped
    (counted in the ``selfimprove.skipped_metrics`` tag). ``tables`` maps a name to rows, logged
    with ``log_table`` as ``tables/<name>.json``. On success older runs of the same pipeline and
    round are tagged ``selfimprove.superseded=true``; on an exception the round run is marked
    FAILED and the exception re-raised.
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

    client = _client()
    experiment_id = _experiment_id(client, cfg)
    parent_id = _parent_run_id(client, experiment_id, cfg)

    run_tags = _context_tags()
    run_tags.update({_clean_key(k): _truncate(str(v), MAX_TAG_VALUE) for k, v in tags.items()})
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
        run_tags[TAG_MODEL_DIR] = str(model_dir)
    if base_model_ref:
        run_tags[TAG_BASE_MODEL] = _truncate(base_model_ref, MAX_TAG_VALUE)
    good, skipped = _numeric_metrics(metrics)
    run_tags[TAG_SKIPPED_METRICS] = str(skipped)
    if skipped:
        log.warning("round %s: skipped %d non-finite or non-numeric metrics", round_name, skipped)

    run = client.create_run(experiment_id, run_name=f"{cfg.pipeline}/{round_name}", tags=run_tags)
    run_id = run.info.run_id
    try:
        flat = {_clean_key(k): v for k, v in flatten(params).items()}
        for chunk in _chunks([Param(k, v) for k, v in flat.items()], 100):
            client.log_batch(run_id, params=chunk, synchronous=True)
        now = int(time.time() * 1000)
        metric_list = [Metric(_clean_key(k), v, now, int(round_index)) for k, v in good.items()]
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
        elif cfg.log_model == "merged" and model_dir is not None:
            _log_dir_files(client, run_id, model_dir, "model/merged")
    except BaseException as e:
        status = "FAILED" if isinstance(e, Exception) else "KILLED"
        try:
            client.set_terminated(run_id, status)
        except Exception:  # keep the original error
            log.exception("could not mark run %s %s", run_id, status)
        raise
    client.set_terminated(run_id, "FINISHED")

    older = _search(
        client,
        experiment_id,
        {TAG_PIPELINE: cfg.pipeline, TAG_ROLE: "round", TAG_ROUND: round_name},
    )
    for r in older:
        if r.info.run_id != run_id and r.data.tags.get(TAG_SUPERSEDED) != "true":
            client.set_tag(r.info.run_id, TAG_SUPERSEDED, "true")
    client.set_tag(parent_id, TAG_LAST_ROUND, round_name)
    client.set_terminated(parent_id, "FINISHED")
    log.info(
        "logged round %s as run %s (parent %s) to %s", round_name, run_id, parent_id, tracking_uri()
    )
    return run_id
