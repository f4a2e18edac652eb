"""The tiny pipeline (method lmsi) with ``sampler.backend: vllm``: its sampling stages
(evaluate, generate) each start the vLLM engine, and `dvc repro` runs to the end. (refine and
meta_skill take their sampler from the same factory and key; they sample only with the SELF
methods, whose five engine starts would cost CI ~5 more minutes.)

One round, greedy evaluation in float32 on a head_dim-64 tiny Llama. Round 0's greedy metrics
must equal those of the same project on the transformers backend (the engine tests show greedy
tokens are identical in fp32), so the switch changes the engine, not the results.
"""

from __future__ import annotations

import json

import pytest
from tinyproject import dvc, new_project, ran_stages, run, tiny_params

SAMPLING_STAGES = ("evaluate_r0", "generate@r1", "evaluate@r1")


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory):
    from selfimprove.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny64") / "model", hidden_size=256)


def _params(model, backend):
    return tiny_params(
        model,
        rounds={"r1": {"prev": "r0"}},
        # enforce_eager: no torch.compile, so each of the 3 engines starts ~2x faster
        sampler={"backend": backend, "dtype": "float32", "vllm_engine": {"enforce_eager": True}},
        evaluate={"sc_paths": 0, "styles": ["fewshot_cot"]},
        tracking={"enabled": False},
    )


def test_pipeline_runs_on_vllm(tiny64, tmp_path):
    proj, env = new_project(tmp_path / "vllm", _params(tiny64, "vllm"))
    out = run(dvc("repro"), proj, env)
    log = out.stdout + out.stderr
    ran = ran_stages(out.stdout)
    assert all(s in ran for s in SAMPLING_STAGES), ran
    # the engine really started in every sampling stage (vLLM's start-up line, once per stage)
    assert log.count("Initializing a V1 LLM engine") == len(SAMPLING_STAGES), log[-3000:]
    gen = json.loads((proj / "data/rounds/r1/generate.json").read_text())
    assert gen["backend"] == "vllm"
    assert (proj / "data/rounds/r1/metrics.json").exists()

    ref, ref_env = new_project(tmp_path / "transformers", _params(tiny64, "transformers"))
    run(dvc("repro", "evaluate_r0"), ref, ref_env)
    got = json.loads((proj / "data/rounds/r0/metrics.json").read_text())
    want = json.loads((ref / "data/rounds/r0/metrics.json").read_text())
    assert got == want
