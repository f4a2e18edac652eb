"""End to end: the real `dvc repro` of the project, 2 rounds, on a tiny random model.

A copy of the project (tests/tinyproject.py) runs the pipeline on the session's tiny model;
checks outputs, `dvc dag`, the MLflow runs (parent + one child per round, metrics history,
dataset inputs), that a second `dvc repro` does nothing, and that a bad params.yaml fails
before any work.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import yaml
from tinyproject import ALWAYS_CHANGED, dvc, new_project, ran_stages, run, stale_stages, tiny_params

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tiny_model, tmp_path_factory):
    proj, env = new_project(tmp_path_factory.mktemp("e2e") / "project", tiny_params(tiny_model))
    repro = run(dvc("repro"), proj, env)
    return proj, env, repro


def test_outputs_of_every_round(project):
    proj, _, _ = project
    for rnd in ("r1", "r2"):
        d = proj / "data" / "rounds" / rnd
        samples = [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == 6 and all(len(s["paths"]) == 3 for s in samples)
        rats = [json.loads(x) for x in (d / "rationales.jsonl").read_text().splitlines()]
        assert {"majority", "agreement", "kept", "selected"} <= set(rats[0])
        assert (d / "model" / "config.json").exists()
        assert (d / "model" / "adapter").is_dir() or json.loads((d / "finetune.json").read_text())[
            "n_examples"
        ] == 0
        metrics = json.loads((d / "metrics.json").read_text())
        assert 0.0 <= metrics["arith"]["fewshot_cot"]["strict"] <= 1.0
        assert "maj@2" in metrics["arith"]["sc"]
        assert (d / "eval" / "arith__fewshot_cot.jsonl").exists()
        assert json.loads((d / "mlflow.json").read_text())["run_id"]
    assert (proj / "data" / "rounds" / "r0" / "metrics.json").exists()


def test_dag_chains_rounds(project):
    proj, env, _ = project
    dag = run(dvc("dag", "--md"), proj, env).stdout
    for stage in ("base_model", "data", "generate@r1", "finetune@r1", "generate@r2", "evaluate@r2"):
        assert stage in dag
    edges = run(dvc("dag", "--outs", "--dot"), proj, env).stdout
    assert '"data/rounds/r1/model" -> "data/rounds/r2/samples.jsonl"' in edges


def test_second_repro_is_up_to_date(project):
    proj, env, _ = project
    assert stale_stages(proj, env) == {}
    repro = run(dvc("repro"), proj, env).stdout
    assert ran_stages(repro) == list(ALWAYS_CHANGED), repro  # it re-digests, nothing reruns


def test_mlflow_parent_and_round_runs(project):
    proj, env, _ = project
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("selfimprove")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("selfimprove.role") == "parent"]
    assert len(parents) == 1
    children = {
        r.data.tags["selfimprove.round"]: r for r in runs if "selfimprove.round" in r.data.tags
    }
    assert set(children) == {"r0", "r1", "r2"}
    for r in children.values():
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert "arith.fewshot_cot.strict" in r.data.metrics
        assert r.data.tags.get("dvc_lock")
    r1 = children["r1"]
    digests = {d.dataset.name: d.dataset.digest for d in r1.inputs.dataset_inputs}
    assert "r1-rationales" in digests and "r1-train" in digests
    history = client.get_metric_history(parents[0].info.run_id, "arith.fewshot_cot.strict")
    assert sorted(m.step for m in history) == [0, 1, 2]


def test_bad_params_fail_fast_without_output(project, tmp_path):
    proj, env, _ = project
    bad = yaml.safe_load((proj / "params.yaml").read_text())
    bad["generate"]["temprature"] = 0.5
    bad["finetune"]["epochs"] = "two"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = run(
        [
            sys.executable,
            "-m",
            "stages.generate",
            "--params",
            str(tmp_path / "bad.yaml"),
            "--round",
            "r9",
            "--model",
            "data/rounds/r0/model",
        ],
        proj,
        env,
        check=False,
    )
    assert proc.returncode == 2
    assert "generate.temprature: unknown key" in proc.stderr and "temperature" in proc.stderr
    assert "finetune.epochs" in proc.stderr
    assert not (proj / "data" / "rounds" / "r9").exists()
