"""End to end: `dvc repro` of method ttrl on the tiny pipeline (one round): the finetune stage
runs TTRL's online GRPO (our sampler's rollouts, checkpoints every step), writes the model in
fine-tuning's layout, evaluate loads it unchanged, and the track stage logs the per-step
metrics (reward, majority ratio, entropy, lengths, label accuracy) to the round's MLflow run,
with no other MLflow run."""

from __future__ import annotations

import json

import pytest
from tinyproject import dvc, new_project, ran_stages, run, stale_stages, tiny_params, varied_model

pytestmark = pytest.mark.e2e

TTRL = {"num_generations": 3, "questions_per_step": 2, "max_new_tokens": 10, "n_shots": 1,
        "min_share": 0.0, "learning_rate": 1.0e-3}  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-ttrl")
    model = varied_model(root, seed=1)
    params = tiny_params(model, method="ttrl", ttrl=TTRL, rounds={"r1": {"prev": "r0"}},
                         tracking={"pipeline": "e2e-ttrl"})  # fmt: skip
    proj, env = new_project(root / "project", params, SELFIMPROVE_SAVE_STEPS="1")
    out = run(dvc("repro"), proj, env)
    return proj, env, out.stdout


def test_ttrl_round_trains_online_and_downstream_loads_the_model(project):
    proj, env, stdout = project
    r1 = proj / "data" / "rounds" / "r1"
    assert {"finetune@r1", "evaluate@r1", "track@r1"} <= set(ran_stages(stdout))
    info = json.loads((r1 / "finetune.json").read_text())
    assert info["objective"] == "grpo" and info["rollout"] == "sampler"
    assert info["n_questions"] == 6 and info["steps"] == 3 and not info["skipped"]
    assert not (r1 / "model.ckpt").exists()  # checkpoints removed after success
    log = [json.loads(x) for x in (r1 / "model" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(len(r["groups"]) == 2 for r in log)
    assert {"config.json", "model.safetensors", "adapter", "finetune_info.json"} <= {
        p.name for p in (r1 / "model").iterdir()}  # fmt: skip
    assert json.loads((r1 / "metrics.json").read_text())  # evaluate scored the ttrl model
    assert stale_stages(proj, env) == {}


def test_ttrl_per_step_metrics_reach_the_round_run_only(project):
    from mlflow import MlflowClient

    proj, _, _ = project
    client = MlflowClient(f"sqlite:///{proj / 'mlflow.db'}")
    run_id = json.loads((proj / "data/rounds/r1/mlflow.json").read_text())["run_id"]
    for key in ("train.majority_ratio", "train.entropy", "train.completion_length",
                "train.masked_fraction", "train.n_majority"):  # fmt: skip
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3], key
    metrics = client.get_run(run_id).data.metrics
    assert metrics["analysis.ttrl.n_groups"] == 6
    assert "finetune.mean_majority_ratio" in metrics
    exp = client.get_experiment_by_name("selfimprove")
    runs = client.search_runs([exp.experiment_id])
    # the pipeline's parent and one run per round (r0, r1): nothing from TRL's callbacks
    assert sorted(r.data.tags.get("mlflow.runName", "") for r in runs) == [
        "e2e-ttrl", "e2e-ttrl/r0", "e2e-ttrl/r1"]  # fmt: skip
