"""The four steps of a fine-tuning run, each on its own: encode, build_model, train, export
(tests/unit/test_finetune.py runs them together through ``finetune``)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from selfimprove.config.training import FinetuneConfig
from selfimprove.core.io import InputError, read_jsonl
from selfimprove.training.encode import encode, encode_examples
from selfimprove.training.finetune import (
    TrainRun,
    build_model,
    export,
    train,
    train_bf16,
    training_args,
)

torch = pytest.importorskip("torch")

EXAMPLES = [
    {"prompt": f"Q: Jack has {i} stamps. Jack buys 1 more. A:", "completion": " The answer is 6."}
    for i in range(8)
]


def _cfg(**kw) -> FinetuneConfig:
    base = dict(epochs=1, batch_size=4, logging_steps=1, learning_rate=3e-3)
    return FinetuneConfig(**(base | kw))


def _n_params(model, trainable: bool) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_encode_step(tiny_model, tmp_path, caplog):
    from transformers import AutoTokenizer

    plain = encode_examples(AutoTokenizer.from_pretrained(tiny_model), EXAMPLES, 64)
    tokenizer, features, n_truncated, n_dropped = encode(tiny_model, EXAMPLES, 64)
    assert (features, n_truncated, n_dropped) == plain and n_truncated == n_dropped == 0
    assert tokenizer.eos_token_id == features[0]["input_ids"][-1]
    # a budget that cuts every prompt: logged, the completions kept whole
    short = len(features[0]["input_ids"]) - 3
    with caplog.at_level(logging.INFO, logger="selfimprove.training.encode"):
        _, cut, n_truncated, n_dropped = encode(tiny_model, EXAMPLES, short)
    assert n_truncated == len(EXAMPLES) and n_dropped == 0
    assert all(len(f["input_ids"]) == short for f in cut)
    assert "8 example(s) truncated from the left of the prompt" in caplog.text
    with pytest.raises(InputError, match="not a model folder"):
        encode(tmp_path, EXAMPLES, 64)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_build_model_step(tiny_model, method):
    from transformers import set_seed

    set_seed(0)
    model = build_model(tiny_model, _cfg(method=method), bf16=False)
    assert model.config.use_cache is False
    n_trainable, n_all = _n_params(model, True), _n_params(model, False)
    if method == "lora":
        assert 0 < n_trainable < n_all / 5
        set_seed(0)  # the adapter's init is drawn from the seeded global RNG
        again = build_model(tiny_model, _cfg(method=method), bf16=False)
        a, b = model.state_dict(), again.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a if "lora_A" in k)
    else:
        assert n_trainable == n_all
    # the completion-only loss: a forward with labels computes no full logits
    ids = torch.tensor([[2, 15, 40, 7]])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    assert out.logits is None and torch.isfinite(out.loss)


def test_build_model_bf16_lora_keeps_the_adapter_in_float32(tiny_model):
    model = build_model(tiny_model, _cfg(method="lora"), bf16=True)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert torch.bfloat16 in {d for n, d in dtypes.items() if "lora_" not in n}
    assert train_bf16("bfloat16") and not train_bf16("float32")


def test_training_args(tmp_path):
    args = training_args(_cfg(method="lora"), tmp_path, seed=5, bf16=True, save_steps=None)
    assert args.save_strategy == "no" and args.seed == args.data_seed == 5
    assert not args.bf16  # LoRA: the base is bf16 already, no autocast
    args = training_args(_cfg(group_by_length=False), tmp_path, seed=5, bf16=False, save_steps=3)
    assert args.save_strategy == "steps" and args.save_steps == 3
    assert args.output_dir == str(tmp_path) and args.report_to == []


def test_train_step(tiny_model, tmp_path):
    from transformers import set_seed

    cfg = _cfg()
    tokenizer, features, _, _ = encode(tiny_model, EXAMPLES, 64)
    set_seed(0)
    model = build_model(tiny_model, cfg, bf16=False)
    before = {k: v.clone() for k, v in model.state_dict().items() if "lora_B" in k}
    run = train(model, tokenizer, features, cfg, training_args(cfg, tmp_path, 0, False, None))
    assert run.trainer.model is model
    assert [r["step"] for r in run.records] == [1, 2] and run.stats["steps"] == 2
    assert run.stats["final_loss"] == run.records[-1]["loss"]
    assert run.stats["train_loss"] == pytest.approx(sum(r["loss"] for r in run.records) / 2)
    assert 0 <= run.stats["pad_fraction"] < 0.1  # 8 examples of nearly equal length
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    assert not list(tmp_path.glob("checkpoint-*"))  # save_steps None: no checkpoints


@pytest.mark.parametrize("method", ["lora", "full"])
def test_export_step(tiny_model, tmp_path, method):
    """An untrained model exported: LoRA (B = 0 at init) merges to the start weights; full
    saves the trainer's model. Either way a complete folder, and the trainer freed (LoRA)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = build_model(tiny_model, _cfg(method=method), bf16=False)
    if method == "full":
        with torch.no_grad():
            model.model.norm.weight.fill_(0.5)
    records = [{"step": 1, "epoch": 1.0, "loss": 2.0, "lr": 0.1, "grad_norm": 1.0}]
    run = TrainRun(SimpleNamespace(model=model), records, {})
    out = tmp_path / "out"
    export(run, tiny_model, tokenizer, out, method, None, {"method": method})
    saved, start = _weights(out), _weights(tiny_model)
    assert saved.keys() == start.keys()
    changed = sorted(k for k in start if not torch.equal(saved[k], start[k]))
    if method == "lora":
        assert changed == [] and run.trainer is None
        conf = json.loads((out / "adapter" / "adapter_config.json").read_text())
        assert conf["target_modules"] == sorted(conf["target_modules"])
    else:
        assert changed == ["model.norm.weight"] and not (out / "adapter").exists()
    assert read_jsonl(out / "train_log.jsonl") == records
    assert json.loads((out / "finetune_info.json").read_text()) == {"method": method}
    assert (out / "tokenizer.json").exists() and (out / "config.json").exists()
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
