"""The decode attention kernel (sampler.decode_kernel): flash's results up to rounding, on the
shapes and masks a decode step gives it; the sampler routes its decode steps through it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from selfimprove.core.io import InputError  # noqa: E402
from selfimprove.sampling import cascade, decode_kernel  # noqa: E402

if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
    pytest.skip("the kernel needs an AVX-512 CPU", allow_module_level=True)

FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


@pytest.mark.parametrize("rows, group, cols", [(1, 1, 1), (5, 3, 17), (36, 3, 200), (4, 8, 33)])
def test_equals_flash_up_to_rounding(rows, group, cols):
    """Strided tails (a view of a wider store), masked columns (left padding and a row's unused
    end), every column count mod 16; out within bf16 rounding, lse within 1e-4."""
    assert decode_kernel.unavailable() is None
    gen = torch.Generator().manual_seed(rows * 100 + cols)
    store = torch.randn(rows + 2, 3, cols + 9, 64, generator=gen).bfloat16()
    k, v = store[:rows, :, 2 : cols + 2], store[1 : rows + 1, :, 3 : cols + 3]
    q = torch.randn(rows, 3, group, 64, generator=gen).bfloat16()
    valid = torch.ones(rows, cols, dtype=torch.bool)
    for r in range(rows):
        valid[r, : r % 3] = False  # left padding
        valid[r, cols - (r % 5) :] = False  # unused end
    valid[:, 0] |= ~valid.any(1)  # every row sees a column
    add = torch.zeros(()).bfloat16().masked_fill(~valid, float("-inf")).view(rows, 1, 1, cols)
    want_out, want_lse = FLASH(q, k, v, attn_mask=add, scale=0.125)[:2]
    mask = torch.zeros(rows, cols).masked_fill(~valid, float("-inf"))
    out, lse = decode_kernel.attend(q, k, v, mask, 0.125)
    assert out.shape == want_out.shape and out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), want_out.float(), atol=1e-2, rtol=1e-2)
    assert (lse - want_lse.float()).abs().max() < 1e-4
    out2, lse2 = decode_kernel.attend(q, k.contiguous(), v.contiguous(), None, 0.125)
    want2 = FLASH(q, k, v, scale=0.125)[:2]
    assert torch.allclose(out2.float(), want2[0].float(), atol=1e-2, rtol=1e-2)
    assert (lse2 - want2[1].float()).abs().max() < 1e-4


def test_refuses_shapes_it_does_not_take():
    q = torch.randn(2, 3, 9, 64).bfloat16()  # 9 queries per (row, kv head)
    k = torch.randn(2, 3, 5, 64).bfloat16()
    assert not decode_kernel.fits(q) and decode_kernel.fits(q[:, :, :8])
    assert not decode_kernel.fits(torch.randn(2, 3, 3, 16).bfloat16())  # head_dim 16
    with pytest.raises(RuntimeError, match="1-8 queries"):
        decode_kernel.attend(q, k, k, None, 0.125)


def test_the_sampler_decodes_through_it(tmp_path, monkeypatch):
    """sampler.decode_kernel: the decode steps' tail attention goes through the kernel (and not
    without it); the samples are well-formed. A float32 model keeps flash (bf16 kernel)."""
    from selfimprove.sampling.base import SamplingParams
    from selfimprove.sampling.transformers_sampler import TransformersSampler
    from selfimprove.tiny import make_tiny_model

    src = make_tiny_model(tmp_path / "hd64", hidden_size=256)  # 4 heads of 64
    calls = []
    real = decode_kernel.attend
    monkeypatch.setattr(decode_kernel, "attend", lambda *a: calls.append(1) or real(*a))
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=0)
    prompts = ["Q: 1 + 1 =", "Q: 2 + 5 ="]
    on = TransformersSampler(src, dtype="bfloat16", batch_size=4, decode_kernel=True)
    got = on.sample("A: ", prompts, params, desc="t")
    assert calls and all(len(cs) == 3 for cs in got)
    calls.clear()
    flash = TransformersSampler(src, dtype="bfloat16", batch_size=4, decode_kernel=False)
    flash.sample("A: ", prompts, params)
    fp32 = TransformersSampler(src, dtype="float32", batch_size=4, decode_kernel=True)
    fp32.sample("A: ", prompts, params)
    assert not calls
    assert cascade.DECODE_KERNEL.get() is False  # reset after each forward


def test_an_unavailable_kernel_is_refused_with_the_fix(tiny_model, monkeypatch):
    from selfimprove.sampling.transformers_sampler import TransformersSampler

    monkeypatch.setattr(decode_kernel, "unavailable", lambda: "it needs an AVX-512 CPU")
    with pytest.raises(InputError, match="set sampler.decode_kernel: auto .* or false"):
        TransformersSampler(tiny_model, dtype="bfloat16", decode_kernel=True)


def test_auto_uses_it_where_the_model_fits_and_it_builds(tmp_path, tiny_model, monkeypatch):
    """sampler.decode_kernel: auto (the default): on for a bf16 head_dim-64 model on CPU; off
    (flash, and nothing built) for a float32 model, another head_dim, or where it cannot be
    built, with the reason; last_stats records the choice."""
    from selfimprove.sampling.base import SamplingParams
    from selfimprove.sampling.transformers_sampler import TransformersSampler
    from selfimprove.tiny import make_tiny_model

    src = make_tiny_model(tmp_path / "hd64", hidden_size=256)  # 4 heads of 64
    on = TransformersSampler(src, dtype="bfloat16", batch_size=4)
    assert on.decode_kernel is True and "auto, on" in on.decode_kernel_why
    on.sample("A: ", ["Q: 1 + 1 ="], SamplingParams(n=2, temperature=1.0, max_new_tokens=3))
    assert on.last_stats["decode_kernel"] is True
    fp32 = TransformersSampler(src, dtype="float32", batch_size=4)
    assert fp32.decode_kernel is False and "samples in float32" in fp32.decode_kernel_why
    built = []
    monkeypatch.setattr(decode_kernel, "unavailable", lambda: built.append(1) or None)
    other = TransformersSampler(tiny_model, dtype="bfloat16", batch_size=4)
    assert other.decode_kernel is False and "head_dim" in other.decode_kernel_why
    assert not built  # a model that never fits builds nothing
    monkeypatch.setattr(decode_kernel, "unavailable", lambda: "it could not be built (no g++)")
    off = TransformersSampler(src, dtype="bfloat16", batch_size=4)
    assert off.decode_kernel is False and off.decode_kernel_why.endswith("(no g++)")
    flash = TransformersSampler(src, dtype="bfloat16", batch_size=4, decode_kernel=False)
    assert flash.decode_kernel is False


def test_the_setting_is_validated():
    from selfimprove.config.runtime import SamplerConfig

    assert SamplerConfig().decode_kernel == "auto"
    assert SamplerConfig(backend="vllm").decode_kernel == "auto"  # auto: not vLLM's concern
    with pytest.raises(ValueError, match="decode_kernel"):
        SamplerConfig(decode_kernel="sometimes")
