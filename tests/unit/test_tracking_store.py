"""One MLflow store per project (tracking/health.py, store.py): the default sqlite database is
resolved from the project root, so stages run in DVC's temporary experiment workspaces and
parallel workers log into the same store; the experiment opens on its runs in MLflow 3's UI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from selfimprove.config.tracking import TrackingConfig
from selfimprove.tracking.runs import log_round
from selfimprove.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

#: what a track stage does, in a process of its own: log round r1 of pipeline argv[1]
LOG_ONE = """
import sys
from selfimprove.config.tracking import TrackingConfig
from selfimprove.tracking.runs import log_round
cfg = TrackingConfig(pipeline=sys.argv[1], log_model="none", registered_model=None)
for attempt in range(2):  # a rerun of the round: the first run is superseded, not doubled
    log_round(cfg, round_name="r1", round_index=1, metrics={"acc": 0.5}, params={"seed": 1})
"""


def _client(db):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{db}")


@pytest.mark.integration  # two MLflow processes: ~1 min
def test_two_concurrent_stages_in_two_workspaces_log_into_one_store(tmp_path, monkeypatch):
    """Two processes, one in the project and one in a `dvc exp run --temp` workspace under
    .dvc/tmp/exps/ (DVC sets $DVC_ROOT to the main repository in both), log at the same time
    into a fresh store: both succeed, into <root>/mlflow.db, and no round is current twice."""
    root = tmp_path / "proj"
    temp = root / ".dvc" / "tmp" / "exps" / "tmpabc"
    temp.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    env |= {"DVC_ROOT": str(root), "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOG_ONE, name],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cwd, name in ((root, "main"), (temp, "exp"))
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert "database is locked" not in err
    assert not (temp / "mlflow.db").exists()
    client = _client(root / "mlflow.db")
    exp = client.get_experiment_by_name("selfimprove")
    runs = client.search_runs([exp.experiment_id], "tags.`selfimprove.round` = 'r1'")
    assert len(runs) == 4  # two pipelines, each round logged twice (a rerun)
    current = [r for r in runs if r.data.tags.get("selfimprove.superseded") == "false"]
    assert sorted(r.data.tags["selfimprove.pipeline"] for r in current) == ["exp", "main"]


def test_experiment_opens_on_its_runs(tmp_path, monkeypatch):
    """Tagged as model development (MLflow 3's UI then shows the runs, not the GenAI traces
    overview); an experiment made before gets the tag, a kind set by hand stays."""
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    cfg = TrackingConfig(pipeline="p", log_model="none", registered_model=None)
    log_round(cfg, round_name="r0", round_index=0, metrics={"acc": 0.5})
    client = _client(db)
    exp = client.get_experiment_by_name("selfimprove")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    old = client.create_experiment("old")
    mine = client.create_experiment("mine", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("old", "mine"):
        log_round(cfg.model_copy(update={"experiment": name}), round_name="r0", round_index=0)
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_experiment(mine).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_a_study_is_one_run_with_a_child_per_pipeline(tmp_path, monkeypatch):
    """tracking.study: study run -> one parent run per (method, seed) pipeline -> its rounds."""
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    rounds = {}
    for pipeline in ("lmsi_s0", "star_s0"):
        cfg = TrackingConfig(
            pipeline=pipeline, study="three-seeds", log_model="none", registered_model=None
        )
        for i, name in enumerate(("r0", "r1")):
            rounds[pipeline, name] = log_round(cfg, round_name=name, round_index=i)
    client = _client(db)
    exp = client.get_experiment_by_name("selfimprove")
    (study,) = client.search_runs([exp.experiment_id], "tags.`selfimprove.role` = 'study'")
    assert study.info.run_name == "three-seeds"
    parents = client.search_runs([exp.experiment_id], "tags.`selfimprove.role` = 'parent'")
    assert sorted(p.info.run_name for p in parents) == ["lmsi_s0", "star_s0"]
    assert all(p.data.tags["mlflow.parentRunId"] == study.info.run_id for p in parents)
    by_name = {p.info.run_name: p.info.run_id for p in parents}
    for (pipeline, _), run_id in rounds.items():
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == by_name[pipeline]


def test_fluent_run_restores_mlflows_tracking_uri(tmp_path, monkeypatch):
    """fluent_run points MLflow's fluent API at the project's store for one run, then puts back
    what was there (public MLflow API only): nothing set, a URI set in code, or the variable."""
    import mlflow

    from selfimprove.tracking.store import fluent_run, mlflow_client

    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    client = mlflow_client()
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the default sqlite:///mlflow.db -> db
    mlflow.set_tracking_uri(None)
    try:
        with fluent_run(run_id):  # nothing set before
            assert mlflow.active_run().info.run_id == run_id
            assert mlflow.get_tracking_uri() == f"sqlite:///{db}"
        assert not mlflow.is_tracking_uri_set()
        assert "MLFLOW_TRACKING_URI" not in os.environ
        mlflow.set_tracking_uri("sqlite:///elsewhere.db")  # a URI set in code (and the
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")  # variable changed since)
        with fluent_run(run_id):
            mlflow.log_param("p", 1)
        assert mlflow.get_tracking_uri() == "sqlite:///elsewhere.db"
        assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{db}"
        mlflow.set_tracking_uri(None)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")  # the variable, not
        monkeypatch.setenv("DVC_ROOT", str(tmp_path / "elsewhere"))  # the default, is the store
        with fluent_run(run_id):
            mlflow.log_param("q", 2)
        assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{db}"
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        assert not mlflow.is_tracking_uri_set()
    finally:
        mlflow.set_tracking_uri(None)
    assert client.get_run(run_id).data.params == {"p": "1", "q": "2"}
