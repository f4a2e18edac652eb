"""The MLflow side shared by run logging and the registry: the client, the experiment, the
pipeline's parent run, paged searches, and MLflow's fluent API pointed at one run.

MLflow is imported lazily (inside the functions), so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from selfimprove.config.tracking import TrackingConfig
from selfimprove.core.io import InputError
from selfimprove.tracking.health import shown_tracking_uri, sqlite_path, tracking_uri
from selfimprove.tracking.tags import (
    TAG_PIPELINE,
    TAG_ROLE,
    TAG_STUDY,
    TAG_SUPERSEDED,
    safe_name,
)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def mlflow_client():
    """An ``MlflowClient`` at :func:`~selfimprove.tracking.health.tracking_uri`.

    A sqlite store is opened under an exclusive lock (``<db>.lock`` beside it): MLflow creates
    the tables of a new database on first use, and two processes doing that at once (two
    stages of parallel experiment workers) fail with "table ... already exists"."""
    from mlflow import MlflowClient

    uri = tracking_uri()
    db = sqlite_path(uri) if uri.startswith("sqlite:") else None
    if db is None:
        return MlflowClient(tracking_uri=uri)
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # creates (or upgrades) the schema, once
    return client


#: the experiment's kind, so that MLflow 3's UI opens it on its runs ("Model training"), not on
#: the empty GenAI traces overview (values: the UI's ExperimentKind, mlflow/server/js)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def experiment_id(client, cfg: TrackingConfig) -> str:
    """The id of ``cfg.experiment``, created the first time (refused when it is deleted), tagged
    as a model-training experiment unless it already has a kind."""
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            raise InputError(
                f"tracking.experiment={cfg.experiment!r} is deleted in {shown_tracking_uri()}; "
                f"restore it (`mlflow experiments restore --experiment-id {exp.experiment_id}`) "
                "or choose another experiment name"
            )
        if EXPERIMENT_KIND_TAG not in exp.tags:  # made before the tag: a kind set by hand stays
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    location = None
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        db = sqlite_path(uri)
        # MLflow's default is ./mlruns/<experiment id> under the cwd; when the database lives
        # elsewhere keep the artifacts next to it instead (mlruns/<experiment name>)
        if db is not None and db.resolve().parent != Path.cwd().resolve():
            location = (db.resolve().parent / "mlruns" / safe_name(cfg.experiment)).as_uri()
    try:
        return client.create_experiment(
            cfg.experiment,
            artifact_location=location,
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def _paged(fetch) -> list:
    """Every item of a paged MLflow search: ``fetch(page_token)`` returns one page."""
    out, token = [], None
    while True:
        page = fetch(token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def search_runs(client, experiment_id: str, tags: dict[str, str]) -> list:
    """Runs of the experiment with all ``tags`` (exact values), oldest first."""
    filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return _paged(
        lambda token: client.search_runs(
            [experiment_id],
            filter_string=filt,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
    )


def model_versions(client, name: str) -> list:
    """Every version of the registered model ``name``."""
    return _paged(lambda token: client.search_model_versions(f"name = '{name}'", page_token=token))


def get_run(client, run_id: str):
    """The run, or None when it does not exist (deleted)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def is_current(run) -> bool:
    """Whether a round run counts: finished and not superseded by a rerun."""
    return run.info.status == "FINISHED" and run.data.tags.get(TAG_SUPERSEDED) != "true"


def _tagged_run(client, experiment_id: str, name: str, tags: dict[str, str]) -> str:
    """The run with ``tags`` (the oldest, should two have been created concurrently), created
    (finished, named ``name``) the first time."""
    found = search_runs(client, experiment_id, tags)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def parent_run_id(client, experiment_id: str, cfg: TrackingConfig) -> str:
    """The pipeline's parent run (found by tag, created the first time); with ``cfg.study``, a
    child of the study's run (study -> pipeline -> rounds in MLflow's run list)."""
    tags = {TAG_PIPELINE: cfg.pipeline, TAG_ROLE: "parent"}
    parent = _tagged_run(client, experiment_id, cfg.pipeline, tags)
    if cfg.study is not None:
        study = _tagged_run(
            client, experiment_id, cfg.study, {TAG_STUDY: cfg.study, TAG_ROLE: "study"}
        )
        client.set_tag(parent, "mlflow.parentRunId", study)
        client.set_tag(parent, TAG_STUDY, cfg.study)
    return parent


@contextlib.contextmanager
def fluent_run(run_id: str):
    """Make ``run_id`` the active run of MLflow's fluent API at :func:`tracking_uri`."""
    import mlflow

    # mlflow.set_tracking_uri also sets (or, given None, unsets) $MLFLOW_TRACKING_URI: restore
    # both; with the variable out of the way, is_tracking_uri_set says whether code had set one
    uri, old_env = tracking_uri(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    old_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id):
            yield
    finally:
        mlflow.set_tracking_uri(old_uri)
        if old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_env
