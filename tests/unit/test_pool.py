"""compute.processes: a stage's sampler calls in worker processes give the same bytes as in one."""

from __future__ import annotations

import logging

import pytest
from tinyproject import varied_model

from selfimprove.config.evaluation import EvaluateConfig
from selfimprove.config.methods import GenerateConfig
from selfimprove.config.runtime import ComputeConfig, SamplerConfig
from selfimprove.data.arith import generate_arith
from selfimprove.evaluation.evaluate import evaluate
from selfimprove.methods.generate import generate

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return varied_model(tmp_path_factory.mktemp("tiny"), seed=3)


def test_processes_give_the_bytes_of_one_process(model_dir, tmp_path, caplog):
    """evaluate's passes and generate's shards, sampled in 2 spawned workers (bf16 where the CPU
    is fast at it, as the default), equal a single-process run exactly; auto stays in-process
    for a run this small."""
    smp = SamplerConfig(batch_size=4, dtype="auto")
    one, two = ComputeConfig(processes=1), ComputeConfig(processes=2)
    sets = {"a": generate_arith(5, [1], seed=0), "b": generate_arith(3, [2], seed=1)}
    cfg = EvaluateConfig(
        styles=["fewshot_cot", "zeroshot_cot"],
        n_shots=1,
        max_new_tokens=10,
        sc_paths=3,
        sc_k=[1, 3],
        sc_limit=4,
    )
    caplog.set_level(logging.INFO, logger="selfimprove.sampling.pool")
    m1, p1 = evaluate(model_dir, sets, cfg, 0, sampler_cfg=smp, compute=one)
    assert "processes" not in caplog.text
    m2, p2 = evaluate(model_dir, sets, cfg, 0, sampler_cfg=smp, compute=two)
    assert "3 sampler calls over 2 processes" in caplog.text
    assert (m2, p2) == (m1, p1)
    assert len({p["output"] for p in p1["a__zeroshot_cot"]}) > 1  # the outputs vary

    questions = [{"id": f"q{i}", "question": r["question"]} for i, r in enumerate(sets["a"])]
    gcfg = GenerateConfig(num_paths=3, max_new_tokens=8, n_shots=1, shard_size=2)
    r1, _ = generate(model_dir, questions, gcfg, 1, sampler_cfg=smp, compute=one)
    r2, s2 = generate(
        model_dir, questions, gcfg, 1, shard_dir=tmp_path / "shards", sampler_cfg=smp, compute=two
    )
    assert r2 == r1 and s2["shards"] == 3
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.jsonl"))[-1] == "shard-00002.jsonl"
    # auto: 3 calls but only a few rows: sampled in this process
    caplog.clear()
    evaluate(model_dir, sets, cfg, 0, sampler_cfg=smp, compute=ComputeConfig())
    assert "processes" not in caplog.text


def test_processes_is_validated():
    from pydantic import ValidationError

    assert ComputeConfig().processes == "auto"
    with pytest.raises(ValidationError, match="processes"):
        ComputeConfig(processes=0)
    with pytest.raises(ValidationError, match="processes"):
        ComputeConfig(processes="many")
