"""End to end: `dvc repro` of method scpo (one round) on the tiny pipeline: the filter writes the
preference pairs of the votes the generate stage drew (no extra sampling), finetune trains DPO +
NLL on them and writes the round's model in fine-tuning's layout, evaluate and track load it
unchanged, and the track stage logs the pairs as an MLflow dataset."""

from __future__ import annotations

import json

import pytest
from tinyproject import dvc, new_project, ran_stages, run, tiny_params, varied_model

pytestmark = pytest.mark.e2e


def _jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    # larger random weights: the samples vary, so questions get several answers (pairs)
    model = varied_model(tmp_path_factory.mktemp("scpo-model"), seed=1)
    params = tiny_params(
        model,
        method="scpo",
        rounds={"r1": {"prev": "r0"}},
        generate={"num_paths": 6, "max_new_tokens": 8, "n_shots": 0, "style": "zeroshot_cot"},
        scpo={"min_agreement": 0.0},
        filter={"formats": {"fewshot_cot": False, "fewshot_direct": False,
                            "zeroshot_cot": True, "zeroshot_direct": True}},  # fmt: skip
        evaluate={"styles": ["zeroshot_cot"], "sc_paths": 0},
        tracking={"pipeline": "e2e-scpo"},
    )
    proj, env = new_project(tmp_path_factory.mktemp("e2e-scpo") / "project", params)
    out = run(dvc("repro"), proj, env)
    return proj, env, out.stdout


def test_pairs_come_from_the_generated_votes(project):
    from selfimprove.config.methods import FilterConfig
    from selfimprove.recipes.scpo import ScpoParams, build_pairs

    proj, _, _ = project
    r1 = proj / "data" / "rounds" / "r1"
    samples = _jsonl(r1 / "samples.jsonl")
    pairs = _jsonl(r1 / "pairs.jsonl")
    assert pairs, f"no pairs; answers: {[s['answers'] for s in samples]}"
    formats = {"fewshot_cot": False, "fewshot_direct": False, "zeroshot_cot": True,
               "zeroshot_direct": True}  # fmt: skip
    cfg = FilterConfig(n_shots=1, formats=formats)
    want, stats = build_pairs(samples, cfg, ScpoParams(min_agreement=0.0))
    assert pairs == want  # refined.jsonl = samples.jsonl for scpo: no extra sampling
    by_id = {s["id"]: s for s in samples}
    for p in pairs:
        answers = by_id[p["id"]]["answers"]
        assert answers.count(p["chosen_answer"]) == p["chosen_votes"] == max(
            answers.count(a) for a in answers if a is not None
        )
        assert p["weight"] == (p["chosen_votes"] - p["rejected_votes"]) / len(answers)
    filt = json.loads((r1 / "filter.json").read_text())
    assert filt["n_pairs"] == stats["n_pairs"] == len(pairs) // 2


def test_the_round_model_is_trained_with_dpo_and_loaded_downstream(project):
    proj, _, stdout = project
    r1 = proj / "data" / "rounds" / "r1"
    info = json.loads((r1 / "finetune.json").read_text())
    assert info["objective"] == "dpo" and not info["skipped"] and info["steps"] > 0
    assert info["n_examples"] == len(_jsonl(r1 / "pairs.jsonl"))
    assert (r1 / "model" / "adapter" / "adapter_model.safetensors").exists()
    assert {"filter@r1", "finetune@r1", "evaluate@r1", "track@r1"} <= set(ran_stages(stdout))
    assert json.loads((r1 / "metrics.json").read_text())  # evaluate loaded the model
    assert not (r1 / "model.ckpt").exists()


def test_the_pairs_are_an_mlflow_dataset_and_no_stray_run(project):
    import mlflow

    proj, env, _ = project
    run_id = json.loads((proj / "data/rounds/r1/mlflow.json").read_text())["run_id"]
    # the client's own URI: mlflow.set_tracking_uri would leak into later tests of this worker
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    inputs = client.get_run(run_id).inputs.dataset_inputs
    contexts = {t.value for d in inputs for t in d.tags if t.key == "mlflow.data.context"}
    assert "preference" in contexts
    exp = client.get_experiment_by_name("selfimprove")
    runs = client.search_runs([exp.experiment_id])
    # the parent and its two round runs (r0, r1): TRL's callbacks opened none
    assert len(runs) == 3, [r.info.run_name for r in runs]
