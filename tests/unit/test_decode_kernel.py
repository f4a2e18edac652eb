"""The decode attention kernel (sampler.decode_kernel): flash's results up to rounding, on the
shapes and masks a decode step gives it; the sampler routes its decode steps through it."""

from __future__ import annotations

import os

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


@pytest.mark.parametrize("heads, queries, keys", [(1, 1, 1), (3, 17, 40), (3, 48, 726), (2, 5, 16)])
def test_prefix_kernel_equals_flash_up_to_rounding(heads, queries, keys):
    """Every query of a kv head against the shared prefix's keys (counts mod 16 included): out
    within bf16 rounding of flash's, lse within 1e-4."""
    if decode_kernel.prefix_unavailable():
        pytest.skip(decode_kernel.prefix_unavailable())
    gen = torch.Generator().manual_seed(heads * 1000 + queries * 10 + keys)
    k = torch.randn(heads, keys, 64, generator=gen).bfloat16()
    v = torch.randn(heads, keys, 64, generator=gen).bfloat16()
    q = torch.randn(heads, queries, 64, generator=gen).bfloat16()
    (packed,) = decode_kernel.pack_prefix([(k, v)])
    out, lse = decode_kernel.attend_prefix(q, packed, 0.125)
    want_out, want_lse = FLASH(q[None], k[None], v[None], scale=0.125)[:2]
    assert out.shape == q.shape and out.dtype == torch.bfloat16 and lse.shape == q.shape[:2]
    assert torch.allclose(out.float(), want_out[0].float(), atol=1e-2, rtol=1e-2)
    assert (lse - want_lse[0].float()).abs().max() < 1e-4


def test_the_sampler_attends_the_prefix_through_it(tmp_path, monkeypatch):
    """prefix_kernel=True: the shared prefix's part of prefill and decode steps goes through the
    kernel, packed once per call; on by default (auto) where it can run, off with False; a
    model it does not fit is refused with True."""
    if decode_kernel.prefix_unavailable():
        pytest.skip(decode_kernel.prefix_unavailable())
    from selfimprove.sampling.base import SamplingParams
    from selfimprove.sampling.transformers_sampler import TransformersSampler
    from selfimprove.tiny import make_tiny_model

    src = make_tiny_model(tmp_path / "hd64", hidden_size=256)  # 4 heads of 64
    calls, packs = [], []
    real, real_pack = decode_kernel.attend_prefix, decode_kernel.pack_prefix
    monkeypatch.setattr(decode_kernel, "attend_prefix", lambda *a: calls.append(1) or real(*a))
    import selfimprove.sampling.transformers_sampler as ts

    monkeypatch.setattr(ts, "pack_prefix", lambda kv: packs.append(1) or real_pack(kv))
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=0)
    prompts = ["Q: 1 + 1 =", "Q: 2 + 5 ="]
    on = TransformersSampler(src, dtype="bfloat16", batch_size=4, prefix_kernel=True)
    got = on.sample("A: few-shot prefix ", prompts, params, desc="t")
    assert calls and packs == [1] and all(len(cs) == 3 for cs in got)
    assert on.last_stats["prefix_kernel"] is True
    calls.clear()
    assert TransformersSampler(src, dtype="bfloat16", batch_size=4).prefix_kernel is True
    off = TransformersSampler(src, dtype="bfloat16", batch_size=4, prefix_kernel=False)
    off.sample("A: few-shot prefix ", prompts, params)
    assert not calls and off.last_stats["prefix_kernel"] is False
    assert cascade.PACKED_PREFIX.get() is None  # reset after each forward
    with pytest.raises(InputError, match=r"prefix_kernel=True \(sampler.prefix_kernel\): the "
                       "model samples in float32.*set sampler.prefix_kernel: auto"):
        TransformersSampler(src, dtype="float32", batch_size=4, prefix_kernel=True)
    # auto: on where it can run, off (flash) where it cannot
    assert TransformersSampler(src, dtype="bfloat16", prefix_kernel="auto").prefix_kernel is True
    assert TransformersSampler(src, dtype="float32", prefix_kernel="auto").prefix_kernel is False


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
    assert SamplerConfig().prefix_kernel == "auto"  # the locked reference was made so
    with pytest.raises(ValueError, match="prefix_kernel: true is a setting of the transformers"):
        SamplerConfig(backend="vllm", prefix_kernel=True)
    with pytest.raises(ValueError, match="prefix_kernel"):
        SamplerConfig(prefix_kernel="sometimes")


def test_a_build_killed_midway_does_not_block_the_next(tmp_path):
    """kill -9 mid-build (a `dvc repro` killed at its first sample) leaves torch's lock file;
    torch's next build would wait for it forever. The next build clears it and returns."""
    import subprocess
    import sys

    assert decode_kernel.unavailable() is None  # built (or found built) once
    plant = (
        "import fcntl, os; from torch.utils.cpp_extension import _get_build_directory\n"
        f"name = {decode_kernel._NAME!r}; d = _get_build_directory(name, False)\n"
        "with open(os.path.join(os.path.dirname(d), name + '.flock'), 'a') as f:\n"
        "    fcntl.flock(f, fcntl.LOCK_EX)  # no builder of ours is inside torch's build now\n"
        "    open(os.path.join(d, 'lock'), 'w').close()  # what a killed builder leaves\n"
        "print(os.path.join(d, 'lock'))\n"
        "from selfimprove.sampling.decode_kernel import build; print(build())"
    )
    proc = subprocess.run([sys.executable, "-c", plant], capture_output=True, text=True,
                          timeout=decode_kernel.BUILD_TIMEOUT_S)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lock, built = proc.stdout.split()[-2:]
    assert built.endswith(".so") and not os.path.exists(lock)


def test_a_finished_build_is_imported_without_a_child(monkeypatch):
    """The stamp a build leaves (its file's size and mtime) lets the next process import the
    file at once; a stamp whose file was replaced (another build), or a broken one, is not
    used: the child interpreter builds (or finds) it."""
    import json
    import subprocess

    assert decode_kernel.unavailable() is None  # built, so the stamp was written
    stamp = decode_kernel._stamp()
    path = decode_kernel._built()
    assert path is not None and path.endswith(".so")
    assert json.loads(stamp.read_text())["path"] == path

    def no_child(*a, **k):
        raise AssertionError("a child interpreter was started")

    monkeypatch.setattr(subprocess, "run", no_child)
    decode_kernel._module.cache_clear()
    try:
        assert decode_kernel._module().decode_attention is not None
    finally:
        decode_kernel._module.cache_clear()
    original = stamp.read_text()
    try:
        got = json.loads(original)
        stamp.write_text(json.dumps({"path": path, "file": [got["file"][0], 1]}))
        assert decode_kernel._built() is None  # another mtime: not the file that build wrote
        stamp.write_text("{")
        assert decode_kernel._built() is None
    finally:
        stamp.write_text(original)
