"""End to end: `dvc repro` with method self (SELF) on a tiny random model, 1 round.

Meta-skill learning on a labeled seed set of 4 questions (rule teacher), then round 1:
generate -> refine (self-feedback + self-refinement) -> filter (keep what the model's own
verdict calls correct) -> finetune -> evaluate -> track. Checks the refine records, the
meta-skill corpus, the DAG and the MLflow datasets/metrics. A random model rarely writes a
parsable verdict: those are counted (``n_unparsable``), never guessed, and the round trains on
nothing (finetune saves the model unchanged).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tinyproject import dvc, new_project, run, stale_stages, tiny_params

pytestmark = pytest.mark.e2e


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _self_params(model_dir: Path) -> dict:
    small_ft = {"epochs": 1, "batch_size": 8, "max_length": 512, "logging_steps": 1}
    return tiny_params(
        model_dir,
        method="self",
        data={"seed_set": {"source": "arith", "n": 4, "steps": [1]}},
        meta_skill={
            "n_initial": 2,
            "max_new_tokens": 12,
            "n_shots": 1,
            "finetune": small_ft,
        },
        refine={
            "n_shots": 1,
            "feedback_max_new_tokens": 12,
            "refine_max_new_tokens": 12,
            "max_iterations": 1,
        },
        finetune=small_ft,
        evaluate={"refine_iterations": 1},  # inference-time refinement: the evaluate_refine stage
        tracking={"pipeline": "e2e-self"},
        rounds={"r1": {"prev": "r0"}},
    )


@pytest.fixture(scope="module")
def project(tiny_model, tmp_path_factory):
    proj = tmp_path_factory.mktemp("e2e-self") / "project"
    proj, env = new_project(proj, _self_params(tiny_model))
    repro = run(dvc("repro"), proj, env)
    return proj, env, repro


def test_meta_skill_corpus_and_round0_model(project):
    proj, _, _ = project
    r0 = proj / "data" / "rounds" / "r0"
    corpus = _jsonl(r0 / "meta_skill.jsonl")
    assert corpus, "the rule teacher judges every answer: the corpus is never empty"
    keys = {"id", "question", "gold", "initial_answer", "feedback", "verdict", "refined_answer"}
    assert all(keys <= set(c) for c in corpus)
    assert {c["id"] for c in corpus} <= {f"seed-{i}" for i in range(4)}
    info = json.loads((r0 / "meta_skill.json").read_text())
    # 2 sampled answers + the gold solution (judge_gold_solution) per seed question
    assert info["enabled"] and info["n_seed"] == 4 and info["n_items"] == 12
    assert info["n_corpus"] == len(corpus)
    assert info["n_verdict_correct"] >= 4  # the gold solutions at least
    # balance_verdicts: no more 'incorrect' feedback examples than 'correct' ones
    n_ok = info["n_verdict_correct"]
    assert info["n_examples_feedback"] == n_ok + min(n_ok, info["n_verdict_incorrect"])
    assert info["finetune"]["n_examples"] == (
        info["n_examples_feedback"] + info["n_examples_refine"] + 8
    )
    assert (r0 / "model" / "adapter").is_dir()  # round 0 = warm model + meta-skill LoRA
    assert (proj / "data" / "models" / "warm" / "config.json").exists()


def test_refined_records(project):
    proj, _, _ = project
    r1 = proj / "data" / "rounds" / "r1"
    samples = _jsonl(r1 / "samples.jsonl")
    refined = _jsonl(r1 / "refined.jsonl")
    assert [r["id"] for r in refined] == [s["id"] for s in samples] and len(refined) == 6
    for s, r in zip(samples, refined, strict=True):
        assert r["paths"] == s["paths"] and r["answers"] == s["answers"]
        n = len(s["paths"])
        for key in ("feedback", "verdicts", "refined_paths", "refined_answers", "final_verdicts"):
            assert len(r[key]) == n, key
        for fbs, vs, it in zip(r["feedback"], r["verdicts"], r["iterations"], strict=True):
            assert len(fbs) == len(vs) == it + 1  # every answer judged, the last one too
            assert all(v in (True, False, None) for v in vs)
    stats = json.loads((r1 / "refine.json").read_text())
    assert stats["method"] == "self" and stats["n_judged"] == 18
    assert stats["n_unparsable"] == sum(
        v is None for r in refined for vs in r["verdicts"] for v in vs
    )
    filt = json.loads((r1 / "filter.json").read_text())
    assert filt["n_verdict_correct"] == sum(v is True for r in refined for v in r["final_verdicts"])
    assert filt["n_kept_paths"] <= filt["n_verdict_correct"]


def test_inference_time_refinement_is_scored_by_evaluate(project):
    """evaluate_refine refines the greedy CoT outputs; evaluate scores them as <style>_refined
    (one scoring path) without running the refine step's code itself."""
    proj, _, _ = project
    for rnd in ("r0", "r1"):
        refined = json.loads((proj / "data/rounds" / rnd / "eval_refined.json").read_text())
        assert set(refined) == {"arith__fewshot_cot", "arith__zeroshot_cot"}
        # every figure is in scores.json (metrics.json holds the headline accuracies only)
        scores = json.loads((proj / "data/rounds" / rnd / "scores.json").read_text())
        for style in ("fewshot_cot", "zeroshot_cot"):
            got = scores["arith"][f"{style}_refined"]
            assert got["n"] == len(refined[f"arith__{style}"]["outputs"]) == 4
            assert got["refine"] == refined[f"arith__{style}"]["refine"]


def test_dag_has_the_self_stages(project):
    proj, env, _ = project
    edges = run(dvc("dag", "--outs", "--dot"), proj, env).stdout
    assert '"data/models/warm" -> "data/rounds/r0/model"' in edges
    assert '"data/rounds/r1/samples.jsonl" -> "data/rounds/r1/refined.jsonl"' in edges
    assert '"data/rounds/r1/refined.jsonl" -> "data/rounds/r1/train.jsonl"' in edges
    assert stale_stages(proj, env) == {}


def test_mlflow_datasets_and_metrics(project):
    proj, env, _ = project
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("selfimprove")
    runs = client.search_runs([exp.experiment_id])
    rounds = {
        r.data.tags["selfimprove.round"]: r for r in runs if "selfimprove.round" in r.data.tags
    }
    assert set(rounds) == {"r0", "r1"}
    r0_sets = {d.dataset.name for d in rounds["r0"].inputs.dataset_inputs}
    assert "r0-meta_skill" in r0_sets
    r1_inputs = rounds["r1"].inputs.dataset_inputs
    contexts = {
        d.dataset.name: {t.value for t in d.tags if t.key == "mlflow.data.context"}
        for d in r1_inputs
    }
    assert contexts["r1-refined"] == {"refinement"}
    assert {"r1-rationales", "r1-train"} <= set(contexts)
    m1, m0 = rounds["r1"].data.metrics, rounds["r0"].data.metrics
    assert m1["refine.n_judged"] == 18.0 and "filter.n_verdict_none" in m1
    assert m1["analysis.verdict.n_judged"] == 18.0
    assert m0["meta_skill.n_seed"] == 4.0 and m0["meta_skill.enabled"] == 1.0
    assert rounds["r1"].data.tags["method"] == "self"
