"""End to end: the real `dvc repro` of the project, 2 rounds, on a tiny random model.

Copies the project into a temp dir, points params.yaml at a tiny model built here, runs the
pipeline, and checks outputs, `dvc dag`, the MLflow runs (parent + one child per round, metrics
history, dataset inputs), that a second `dvc repro` does nothing, and that a bad params.yaml
fails before any work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def _tiny_params(model_dir: Path) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base_model"] |= {"source": "local", "local_path": str(model_dir), "pypi_sha256": None}
    params["data"] = {
        "train": {"source": "arith", "n": 6, "steps": [1]},
        "eval": {"arith": {"source": "arith", "n": 4, "steps": [1]}},
        "seed_set": None,
    }
    params["generate"] |= {"num_paths": 3, "max_new_tokens": 12, "n_shots": 1, "batch_size": 8}
    params["filter"] |= {"min_agreement": 0.0, "n_shots": 1}
    params["finetune"] |= {"epochs": 1, "batch_size": 4, "max_length": 256, "logging_steps": 1}
    params["evaluate"] |= {
        "n_shots": 1,
        "max_new_tokens": 12,
        "sc_paths": 2,
        "sc_k": [1, 2],
        "sc_limit": 2,
    }
    params["tracking"]["pipeline"] = "e2e"
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from selfimprove.tiny import make_tiny_model

    tmp = tmp_path_factory.mktemp("e2e")
    model_dir = make_tiny_model(tmp / "tiny-model")
    proj = tmp / "project"
    proj.mkdir()
    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, proj / name)
    (proj / "params.yaml").write_text(yaml.safe_dump(_tiny_params(model_dir), sort_keys=False))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{proj / 'mlflow.db'}"
    env |= {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    _run(["git", "init", "-q"], proj, env)
    _run(
        [
            "git",
            "-c",
            "user.email=t@t",
            "-c",
            "user.name=t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "init",
        ],
        proj,
        env,
    )
    _run([sys.executable, "-m", "dvc", "init", "-q"], proj, env)
    _run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], proj, env)
    repro = _run([sys.executable, "-m", "dvc", "repro"], proj, env)
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
    dag = _run([sys.executable, "-m", "dvc", "dag", "--md"], proj, env).stdout
    for stage in ("base_model", "data", "generate@r1", "finetune@r1", "generate@r2", "evaluate@r2"):
        assert stage in dag
    edges = _run([sys.executable, "-m", "dvc", "dag", "--outs", "--dot"], proj, env).stdout
    assert '"data/rounds/r1/model" -> "data/rounds/r2/samples.jsonl"' in edges


def test_second_repro_is_up_to_date(project):
    proj, env, _ = project
    status = _run([sys.executable, "-m", "dvc", "status"], proj, env).stdout
    assert "up to date" in status.lower(), status


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
    proc = _run(
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
