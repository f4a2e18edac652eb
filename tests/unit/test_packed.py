"""The sampler's packed linear weights (CPU bf16): the same outputs as F.linear, packed again
after an in-place weight change, nothing packed where the bits would differ."""

from __future__ import annotations

import pytest
from tinyproject import varied_model

from selfimprove.sampling import packed
from selfimprove.sampling.base import SamplingParams
from selfimprove.sampling.transformers_sampler import TransformersSampler

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return varied_model(tmp_path_factory.mktemp("tiny"), seed=5)


def _bf16_sampler(model_dir) -> TransformersSampler:
    s = TransformersSampler(model_dir, dtype="bfloat16", batch_size=4)
    if not s.packed_linears:
        pytest.skip("torch here has no oneDNN bf16 linear giving F.linear's bits")
    return s


def _texts(sampler, params) -> list[str]:
    prompts = ["Q: 1 + 2 =", "Q: 7 - 3 =", "Q: 5 + 5 ="]
    return [c.text for cs in sampler.sample("A: ", prompts, params, desc="t") for c in cs]


def test_packed_sampler_gives_the_unpacked_outputs(model_dir):
    s = _bf16_sampler(model_dir)
    n_linear = sum(type(m) is torch.nn.Linear for m in s.model.modules())
    assert s.packed_linears == n_linear > 0
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=12, seed=0)
    sampled = SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=3)
    got = _texts(s, greedy), _texts(s, sampled)
    packed.unpack_linears(s.model)
    assert (_texts(s, greedy), _texts(s, sampled)) == got
    assert len(set(got[1])) > 1  # the samples vary: a real comparison


def test_an_in_place_weight_change_is_packed_again(model_dir):
    """TTRL's rollout sampler copies the training weights in place before each step."""
    s = _bf16_sampler(model_dir)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=1)
    before = _texts(s, params)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in s.model.parameters():
            if p.dim() == 2:
                p.add_((0.2 * torch.randn(p.shape, generator=gen)).to(p.dtype))
    after = _texts(s, params)
    assert after != before
    packed.unpack_linears(s.model)
    assert _texts(s, params) == after


def test_nothing_is_packed_in_float32_or_where_the_bits_differ(model_dir, monkeypatch):
    assert TransformersSampler(model_dir, dtype="float32", batch_size=4).packed_linears == 0
    monkeypatch.setattr(packed, "same_bits", lambda module, rows=packed.PROBE_ROWS: False)
    s = TransformersSampler(model_dir, dtype="bfloat16", batch_size=4)
    assert s.packed_linears == 0
    assert not any("forward" in m.__dict__ for m in s.model.modules())
