from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from selfimprove.config.training import FinetuneConfig, LoraSection
from selfimprove.core.io import InputError, read_jsonl
from selfimprove.training.encode import CompletionCollator, build_example, encode, encode_examples
from selfimprove.training.finetune import (
    RUN_KEYS,
    TrainRun,
    build_model,
    export,
    finetune,
    train,
    train_bf16,
    training_args,
)
from selfimprove.training.processes import cpu_launch, process_batch
from selfimprove.training.resume import EpochSeededSampler
from selfimprove.training.shared_prefix import IGNORE_INDEX

torch = pytest.importorskip("torch")

EXAMPLES = [
    {"prompt": f"Q: Jack has {i} stamps. Jack buys 1 more. A:", "completion": " The answer is 6."}
    for i in range(16)
]


def _cfg(**kw) -> FinetuneConfig:
    base = dict(epochs=3, batch_size=4, logging_steps=1, learning_rate=3e-3)
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def lora_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "lora"
    info = finetune(tiny_model, EXAMPLES, out, _cfg(), seed=0)
    return out, info


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


# ----------------------------------------------------------------------------- pure parts


def test_build_example_masks_prompt_and_appends_eos():
    ex, cut = build_example([5, 6, 7], [8, 9], eos_id=0, max_length=10)
    assert not cut
    assert ex["input_ids"] == [5, 6, 7, 8, 9, 0]
    assert ex["labels"] == [IGNORE_INDEX] * 3 + [8, 9, 0]


def test_build_example_truncates_prompt_from_left_only():
    ex, cut = build_example([1, 2, 3, 4, 5], [8, 9], eos_id=0, max_length=5)
    assert cut
    assert ex["input_ids"] == [4, 5, 8, 9, 0]
    assert ex["labels"] == [IGNORE_INDEX, IGNORE_INDEX, 8, 9, 0]
    # a leading BOS survives truncation
    ex, cut = build_example([99, 2, 3, 4, 5], [8, 9], eos_id=0, max_length=5, bos_id=99)
    assert cut and ex["input_ids"] == [99, 5, 8, 9, 0]
    # completion never truncated: if it does not fit with one prompt token, drop the example
    assert build_example([1, 2], [8, 9, 10, 11], eos_id=0, max_length=5) == (None, True)


def test_encode_and_collate_labels(tokenizer):
    exs = [
        {"prompt": "Q: 1 + 1?", "completion": " The answer is 2."},
        {"prompt": "Q: How many trees?", "completion": " 6"},
    ]
    feats, n_trunc, n_drop = encode_examples(tokenizer, exs, max_length=64)
    assert (n_trunc, n_drop) == (0, 0)
    batch = CompletionCollator(pad_id=tokenizer.pad_token_id)(feats)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    eos = tokenizer.eos_token_id
    for row, ex in enumerate(exs):
        p = tokenizer(ex["prompt"])["input_ids"]
        c = tokenizer(ex["completion"], add_special_tokens=False)["input_ids"] + [eos]
        n = len(p) + len(c)
        assert batch["input_ids"][row, :n].tolist() == p + c
        assert batch["labels"][row, :n].tolist() == [IGNORE_INDEX] * len(p) + c
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (
            batch["input_ids"].shape[1] - n
        )
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
    # truncation is counted
    long = [{"prompt": "Q: " + "1 2 3 4 5 " * 20, "completion": " 6"}]
    feats, n_trunc, n_drop = encode_examples(tokenizer, long, max_length=16)
    assert (n_trunc, n_drop) == (1, 0) and len(feats[0]["input_ids"]) == 16


def test_bad_examples_and_config_raise(tokenizer, tiny_model, tmp_path):
    with pytest.raises(InputError, match=r"examples\[1\]: key 'completion'"):
        encode_examples(tokenizer, [{"prompt": "a", "completion": "b"}, {"prompt": "a"}], 32)
    with pytest.raises(InputError, match="target_modules"):
        finetune(
            tiny_model,
            EXAMPLES[:2],
            tmp_path / "out",
            _cfg(lora=LoraSection(target_modules=["nope_proj"])),
            seed=0,
        )
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError):
        FinetuneConfig(methd="lora")


# ----------------------------------------------------------------------------- training


def test_lora_outputs_and_loss_decreases(lora_run):
    out, info = lora_run
    assert info["method"] == "lora" and not info["skipped"]
    assert info["n_examples"] == 16 and info["steps"] == 12
    assert 0 < info["trainable_params"] < 50_000
    log = read_jsonl(out / "train_log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 13))
    assert set(log[0]) >= {"step", "loss", "lr", "epoch"}
    assert log[-1]["loss"] == info["final_loss"]
    assert info["final_loss"] < log[0]["loss"] - 0.2
    # the folder holds no timings (a pure function of the inputs); the stage's finetune.json does
    assert json.loads((out / "finetune_info.json").read_text()) == {
        k: v for k, v in info.items() if k not in RUN_KEYS
    }
    assert info["runtime_s"] > 0 and info["skip_reason"] is None and info["skipped_flag"] == 0
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (out / name).exists(), name
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]  # sorted


def test_lora_merged_matches_peft_and_keeps_tied_embeddings(lora_run, tiny_model):
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    out, _ = lora_run
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
    ids = torch.tensor([[2, 15, 40, 7, 99, 3, 250, 11]])
    lm, lp = _logits(merged, ids), _logits(peft_model, ids)
    assert torch.allclose(lm, lp, atol=1e-5, rtol=0), (lm - lp).abs().max()
    # the adapter actually changed something
    plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    assert (lm - _logits(plain, ids)).abs().max() > 1e-3
    # tied embeddings survived the merge + save + load
    assert merged.config.tie_word_embeddings
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    with safe_open(out / "model.safetensors", "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float32 for k in f.keys())


def test_same_seed_same_loss(lora_run, tiny_model, tmp_path):
    out, info = lora_run
    again = finetune(tiny_model, EXAMPLES, tmp_path / "again", _cfg(), seed=0)
    assert again["final_loss"] == info["final_loss"]
    assert read_jsonl(tmp_path / "again" / "train_log.jsonl") == read_jsonl(out / "train_log.jsonl")
    other = finetune(tiny_model, EXAMPLES, tmp_path / "other", _cfg(), seed=1)
    assert other["final_loss"] != info["final_loss"]


def test_full_finetune(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    info = finetune(tiny_model, EXAMPLES, tmp_path / "full", _cfg(method="full"), seed=0)
    assert info["method"] == "full" and info["steps"] == 12
    log = read_jsonl(tmp_path / "full" / "train_log.jsonl")
    assert info["final_loss"] < log[0]["loss"] - 0.5
    assert not (tmp_path / "full" / "adapter").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    plain = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert info["trainable_params"] == sum(p.numel() for p in plain.parameters())
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert not torch.equal(model.model.embed_tokens.weight, plain.model.embed_tokens.weight)


def test_lora_bfloat16_saves_float32(tiny_model, tmp_path):
    from safetensors import safe_open

    info = finetune(
        tiny_model, EXAMPLES[:8], tmp_path / "bf16", _cfg(dtype="bfloat16", epochs=1), seed=0
    )
    assert info["steps"] == 2
    with safe_open(tmp_path / "bf16" / "model.safetensors", "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float32 for k in f.keys())
    with safe_open(tmp_path / "bf16" / "adapter" / "adapter_model.safetensors", "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float32 for k in f.keys())


def test_zero_examples_saves_input_unchanged(tiny_model, tmp_path, caplog):
    from transformers import AutoModelForCausalLM

    with caplog.at_level(logging.WARNING, logger="selfimprove.training.finetune"):
        info = finetune(tiny_model, [], tmp_path / "empty", _cfg(), seed=0)
    assert info["skipped"] and info["n_examples"] == 0 and info["steps"] == 0
    assert info["skipped_flag"] == 1 and "the filter kept nothing" in info["skip_reason"]
    assert "no training examples" in caplog.text
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "empty").state_dict()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    assert saved.keys() == plain.keys()
    assert all(torch.equal(saved[k], plain[k]) for k in plain)
    assert (tmp_path / "empty" / "tokenizer.json").exists()
    assert read_jsonl(tmp_path / "empty" / "train_log.jsonl") == []


# ------------------------------------------------------- the steps of a run, each on its own


def _n_params(model, trainable: bool) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_encode_step(tiny_model, tmp_path, caplog):
    from transformers import AutoTokenizer

    plain = encode_examples(AutoTokenizer.from_pretrained(tiny_model), EXAMPLES[:8], 64)
    tokenizer, features, n_truncated, n_dropped = encode(tiny_model, EXAMPLES[:8], 64)
    assert (features, n_truncated, n_dropped) == plain and n_truncated == n_dropped == 0
    assert tokenizer.eos_token_id == features[0]["input_ids"][-1]
    # a budget that cuts every prompt: logged, the completions kept whole
    short = len(features[0]["input_ids"]) - 3
    with caplog.at_level(logging.INFO, logger="selfimprove.training.encode"):
        _, cut, n_truncated, n_dropped = encode(tiny_model, EXAMPLES[:8], short)
    assert n_truncated == 8 and n_dropped == 0
    assert all(len(f["input_ids"]) == short for f in cut)
    assert "8 example(s) truncated from the left of the prompt" in caplog.text
    with pytest.raises(InputError, match="not a model folder"):
        encode(tmp_path, EXAMPLES[:8], 64)


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


def test_processes_split_each_batch(monkeypatch):
    """finetune.processes: each launched process takes batch_size / processes examples of every
    batch (the same global batch); alone, it takes all of them; a launcher with another count
    is an error naming the fix."""
    from pydantic import ValidationError

    cfg = FinetuneConfig(batch_size=8, processes=2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert process_batch(cfg) == 8
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert process_batch(cfg) == 4
    assert process_batch(FinetuneConfig(batch_size=8, processes=1)) == 8  # a launcher of one's own
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(InputError, match="processes is 2 but 4 processes were launched"):
        process_batch(cfg)
    with pytest.raises(ValidationError, match="batch_size 6 does not split over processes 4"):
        FinetuneConfig(batch_size=6, processes=4)


def test_cpu_launch_command(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert cpu_launch(FinetuneConfig(processes=1), 1, ["stages.finetune"]) is None
    cmd = cpu_launch(FinetuneConfig(processes=2), 3, ["stages.finetune", "--round", "r1"])
    i = cmd.index("--num_processes")
    assert cmd[i + 1] == "2" and cmd[cmd.index("--num_cpu_threads_per_process") + 1] == "3"
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd
    assert cmd[-4:] == ["-m", "stages.finetune", "--round", "r1"]
    monkeypatch.setenv("LOCAL_RANK", "0")  # already one of the launched processes
    assert cpu_launch(FinetuneConfig(processes=2), 1, ["stages.finetune"]) is None


def test_train_step(tiny_model, tmp_path):
    from transformers import set_seed

    cfg = _cfg(epochs=1)
    tokenizer, features, _, _ = encode(tiny_model, EXAMPLES[:8], 64)
    set_seed(0)
    model = build_model(tiny_model, cfg, bf16=False)
    before = {k: v.clone() for k, v in model.state_dict().items() if "lora_B" in k}
    run = train(model, tokenizer, features, cfg, training_args(cfg, tmp_path, 0, False, None))
    assert run.trainer.model is model
    assert [r["step"] for r in run.records] == [1, 2] and run.stats["steps"] == 2
    assert run.stats["final_loss"] == run.records[-1]["loss"]
    assert run.stats["train_loss"] == pytest.approx(sum(r["loss"] for r in run.records) / 2)
    assert 0 <= run.stats["pad_fraction"] < 0.1  # 8 examples of nearly equal length
    # compute: one epoch over the 8 examples, every (non-pad) token once
    assert run.stats["tokens_trained"] == sum(len(f["input_ids"]) for f in features) > 0
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


# ----------------------------------------------------------------------------- resume


class _Crash(Exception):
    pass


def _crash_after(step: int):
    from transformers import TrainerCallback

    class CrashAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise _Crash(f"killed after step {step}")

    return CrashAfter()


def test_resume_after_crash_equals_uninterrupted_run(tiny_model, tmp_path, caplog):
    from safetensors.torch import load_file

    cfg = _cfg(epochs=2)  # 16 examples / 4 = 4 steps per epoch, 8 in all; LoRA dropout on
    full = finetune(tiny_model, EXAMPLES, tmp_path / "full", cfg, seed=3)
    ckpt = tmp_path / "model.ckpt"
    with pytest.raises(_Crash):
        finetune(
            tiny_model,
            EXAMPLES,
            tmp_path / "out",
            cfg,
            seed=3,
            ckpt_dir=ckpt,
            save_steps=2,
            callbacks=[_crash_after(5)],
        )
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint-4", "settings.json"]
    # a checkpoint killed while being written (no completion marker) is not resumed from
    (ckpt / "checkpoint-6").mkdir()
    caplog.set_level(logging.INFO, logger="selfimprove.training.finetune")
    res = finetune(tiny_model, EXAMPLES, tmp_path / "out", cfg, seed=3, ckpt_dir=ckpt, save_steps=2)
    assert "resuming from" in caplog.text and "checkpoint-4" in caplog.text
    assert res["resumed_from_step"] == 4 and full["resumed_from_step"] is None
    assert res["steps"] == full["steps"] == 8
    a = read_jsonl(tmp_path / "full" / "train_log.jsonl")
    b = read_jsonl(tmp_path / "out" / "train_log.jsonl")
    assert [r["step"] for r in b] == list(range(1, 9))
    # same RNG, optimizer, scheduler and data order restored: equal up to float noise
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y["lr"] == pytest.approx(x["lr"], rel=1e-6)
    assert res["train_loss"] == pytest.approx(full["train_loss"], rel=1e-5)
    wa = load_file(tmp_path / "full" / "model.safetensors")
    wb = load_file(tmp_path / "out" / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    assert not ckpt.exists()  # removed after success


def test_checkpoints_of_other_settings_are_discarded(tiny_model, tmp_path, caplog):
    ckpt = tmp_path / "model.ckpt"
    with pytest.raises(_Crash):
        finetune(
            tiny_model,
            EXAMPLES,
            tmp_path / "out",
            _cfg(epochs=1),
            seed=3,
            ckpt_dir=ckpt,
            save_steps=1,
            callbacks=[_crash_after(2)],
        )
    assert (ckpt / "checkpoint-1").is_dir()  # step 2 crashed before its save
    caplog.set_level(logging.INFO, logger="selfimprove.training.finetune")
    info = finetune(
        tiny_model,
        EXAMPLES,
        tmp_path / "out",
        _cfg(epochs=1, learning_rate=1e-3),
        seed=3,
        ckpt_dir=ckpt,
        save_steps=1,
    )
    assert info["resumed_from_step"] is None
    assert "other settings (config)" in caplog.text and "starting over" in caplog.text
    assert not ckpt.exists()


def test_group_by_length_pads_less(tiny_model, tmp_path):
    # few-shot and zero-shot training formats differ ~4x in length; batches of similar lengths
    # pad less than uniformly random ones
    mixed = [
        {"prompt": "Q: " + "word " * (1 + 40 * (i % 2)) + "A:", "completion": " The answer is 6."}
        for i in range(64)
    ]
    infos = {
        g: finetune(tiny_model, mixed, tmp_path / str(g), _cfg(epochs=1, group_by_length=g), seed=0)
        for g in (True, False)
    }
    assert infos[True]["steps"] == infos[False]["steps"] == 16
    # sorted inside mega-batches of 4 batches: at most one mixed batch in four
    assert infos[True]["pad_fraction"] < infos[False]["pad_fraction"] / 2


# ------------------------------------------------------------------ determinism and clean-up


def test_training_order_is_a_pure_function_of_seed_and_epoch():
    lengths = [3, 40, 5, 38, 4, 41, 6, 39] * 4
    sampler = EpochSeededSampler(lengths, group_size=4, seed=7, group_by_length=True)
    torch.manual_seed(0)
    first = list(sampler)
    torch.manual_seed(123)  # the global RNG does not matter (transformers' sampler used it)
    torch.rand(100)
    assert list(sampler) == first and sorted(first) == list(range(32))
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == list(range(32))
    again = EpochSeededSampler(lengths, group_size=4, seed=7, group_by_length=True)
    again.set_epoch(1)  # a fresh process resuming into epoch 2 sees epoch 2's order
    assert list(again) == second
    # grouped: within each batch of 4 the lengths are close (sorted mega-batches)
    batches = [[lengths[i] for i in first[k : k + 4]] for k in range(0, 32, 4)]
    assert sum(max(b) - min(b) > 10 for b in batches) <= 2
    plain = EpochSeededSampler(lengths, group_size=4, seed=7, group_by_length=False)
    assert list(plain) == list(plain) != first and sorted(plain) == list(range(32))


def _files(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize(
    ("group_by_length", "forwarded", "formats"),
    [(True, True, False), (False, True, False), (True, False, False), (True, True, True)],
)
def test_resume_mid_second_epoch_gives_identical_files(
    tiny_model, tmp_path, monkeypatch, group_by_length, forwarded, formats
):
    # A checkpoint inside epoch 2 (step 6 of 8): the resumed process iterates epoch 2 with a
    # fresh global RNG; the order must still be epoch 2's. Exact equality: same machine, same
    # threads, same ops in the same order -> the same float results, so every file of the
    # model folder (weights, adapter, logs, finetune_info.json) is byte-identical.
    # forwarded=False: in the resumed run set_epoch never reaches the sampler (as under
    # accelerate's wrappers of a distributed run resumed mid-epoch); the epoch callback alone
    # must select epoch 2's order.
    # formats: the four training formats (batches of a shared-prefix group, prefix run once)
    examples = _formats_examples() if formats else EXAMPLES
    cfg = _cfg(epochs=2, group_by_length=group_by_length)
    full = finetune(tiny_model, examples, tmp_path / "full", cfg, seed=3)
    ckpt = tmp_path / "model.ckpt"
    with pytest.raises(_Crash):
        finetune(
            tiny_model,
            examples,
            tmp_path / "out",
            cfg,
            seed=3,
            ckpt_dir=ckpt,
            save_steps=2,
            callbacks=[_crash_after(7)],
        )
    assert (ckpt / "checkpoint-6").is_dir()
    if not forwarded:
        monkeypatch.setattr(EpochSeededSampler, "set_epoch", lambda self, epoch: None)
    res = finetune(tiny_model, examples, tmp_path / "out", cfg, seed=3, ckpt_dir=ckpt, save_steps=2)
    assert res["resumed_from_step"] == 6 and res["steps"] == full["steps"] == 8
    a, b = _files(tmp_path / "full"), _files(tmp_path / "out")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert {k: v for k, v in res.items() if k not in RUN_KEYS} == {
        k: v for k, v in full.items() if k not in RUN_KEYS
    }


def test_all_examples_too_long_is_skipped_with_reason(tiny_model, tmp_path):
    info = finetune(tiny_model, EXAMPLES[:4], tmp_path / "out", _cfg(max_length=4), seed=0)
    assert info["skipped"] and info["skipped_flag"] == 1 and info["n_dropped"] == 4
    assert "finetune.max_length=4" in info["skip_reason"]
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_stage_records_a_round_without_training_data_as_skipped(
    tiny_model, tmp_path, monkeypatch, capsys
):
    import shutil

    import yaml
    from tinyproject import ROOT

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    rounds = tmp_path / "data" / "rounds"
    shutil.copytree(tiny_model, rounds / "r0" / "model")
    (rounds / "r1").mkdir()
    (rounds / "r1" / "train.jsonl").write_text("")  # the filter kept nothing
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["finetune"]["processes"] = 2  # nothing to train: no processes launched
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    from stages import finetune as stage

    stage.main(["--round", "r1", "--prev", "r0"])
    info = json.loads((rounds / "r1" / "finetune.json").read_text())
    assert info["skipped"] is True and info["skipped_flag"] == 1
    assert info["skip_reason"].startswith("no training examples: the filter kept nothing")
    err = capsys.readouterr().err
    assert "warning: r1: not fine-tuned (no training examples" in err
    assert "data/rounds/r0/model unchanged, so later rounds chain on it" in err
    # the model folder is still written: the next round starts from it
    assert (rounds / "r1" / "model" / "model.safetensors").exists()
    assert (rounds / "r1" / "model" / "tokenizer.json").exists()


def test_no_temporary_folders_left_on_success_and_failure(tiny_model, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # gettempdir() caches the folder
    cfg = _cfg(epochs=1)
    finetune(tiny_model, EXAMPLES[:8], tmp_path / "ok", cfg, seed=0)
    assert list(scratch.iterdir()) == []
    with pytest.raises(_Crash):
        finetune(
            tiny_model, EXAMPLES[:8], tmp_path / "bad", cfg, seed=0, callbacks=[_crash_after(1)]
        )
    assert list(scratch.iterdir()) == []
    with pytest.raises(_Crash):  # with checkpoints the Trainer works in ckpt_dir, kept to resume
        finetune(
            tiny_model,
            EXAMPLES[:8],
            tmp_path / "bad",
            cfg,
            seed=0,
            ckpt_dir=tmp_path / "ckpt",
            callbacks=[_crash_after(1)],
        )
    assert list(scratch.iterdir()) == [] and (tmp_path / "ckpt").is_dir()
    assert not (tmp_path / "bad").exists()


def test_no_temporary_folders_left_by_a_fresh_process(tiny_model, tmp_path):
    # importing transformers' Trainer creates torch's (empty) torchinductor_<user> folder in the
    # temp dir once per process; a fresh process shows it
    import subprocess
    import sys

    from tinyproject import ROOT, project_env

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES[:4]))
    cmd = [sys.executable, "-m", "selfimprove.training.finetune_cli", "--model", str(tiny_model)]
    cmd += ["--train", str(train), "--out", str(tmp_path / "out"), "--set", "epochs=1"]
    env = project_env(tmp_path, PYTHONPATH=str(ROOT / "src"), TMPDIR=str(scratch))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(scratch.iterdir()) == []


# ------------------------------------------------------------- no redundant work (shared prefix)

QUESTIONS = [
    "Tom has 3 apples and buys 2. How many?",
    "Ann has 4 pens and loses one. How many are left?",
    "A bus carries 12 people and 5 get off. How many stay?",
    "Jack has 5 stamps. Jack buys 1 more. How many stamps does Jack have now?",
]


def _formats_examples(questions=QUESTIONS, n_shots=2) -> list[dict]:
    """The filter's four training formats: few-shot rows share an exemplar prefix, zero-shot
    rows have none; CoT completions of 1-30 steps (padding; zero-shot CoT rows as long as
    few-shot direct ones, as in real training sets)."""
    from selfimprove.core.prompts import STYLES, build_prompt

    out = []
    for i, q in enumerate(questions):
        for fmt in STYLES:
            prefix, suffix = build_prompt(q, fmt, n_shots)
            cot = " ".join(f"{i} + {k} = {i + k}." for k in range(1, 2 + i * 7 % 30))
            done = f" {cot} The answer is 6." if "cot" in fmt else " The answer is 6."
            out.append({"format": fmt, "prompt": prefix + suffix, "completion": done})
    return out


def _loss_and_grads(model, forward):
    model.zero_grad()
    loss = forward()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize("method", ["lora", "full"])
def test_shared_prefix_loss_and_gradients_equal_the_plain_forward(tiny_model, tokenizer, method):
    # a batch mixing few-shot rows (one shared exemplar prefix) and zero-shot rows, right-padded;
    # the plain model forward with labels is the reference (what the Trainer computed before)
    from selfimprove.training.finetune import _load_model, _wrap_lora
    from selfimprove.training.shared_prefix import completion_loss, use_completion_loss

    feats, _, _ = encode_examples(tokenizer, _formats_examples(), max_length=768)
    pick = [0, 2, 4, 6, 8, 3, 12]  # 4 fewshot_cot, 2 zeroshot_cot, 1 zeroshot_direct
    batch = CompletionCollator(tokenizer.pad_token_id, share_prefix=True)([feats[i] for i in pick])
    rows = batch["prefix_rows"].tolist()
    assert batch["prefix_len"] >= 100 and rows == [True, False, True, False, True, False, True]
    assert (batch["attention_mask"] == 0).any()  # padded
    torch.manual_seed(0)
    model = _load_model(tiny_model, torch.float32)
    if method == "lora":
        model = _wrap_lora(model, LoraSection(dropout=0.0))
        with torch.no_grad():  # B = 0 at init: make the adapters change the K/V of the prefix
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.2)
    model.train()
    plain = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    ref_loss, ref = _loss_and_grads(model, lambda: model(**plain).loss)
    n_items = torch.tensor(3 * int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()))  # accum 3
    ref_sum_loss, ref_sum = _loss_and_grads(
        model, lambda: model(**plain, num_items_in_batch=n_items).loss
    )
    use_completion_loss(model)  # what finetune() does: the Trainer calls model(**batch)
    loss, grads = _loss_and_grads(model, lambda: model(**batch).loss)
    sum_loss, sum_grads = _loss_and_grads(
        model, lambda: model(**batch, num_items_in_batch=n_items).loss
    )
    head_only, head_grads = _loss_and_grads(model, lambda: completion_loss(model, **plain))
    assert ref_loss > 0.1 and ref_sum_loss == pytest.approx(ref_loss.item() / 3, rel=1e-5)
    for got, want, got_g, want_g in (
        (loss, ref_loss, grads, ref),
        (sum_loss, ref_sum_loss, sum_grads, ref_sum),
        (head_only, ref_loss, head_grads, ref),
    ):
        assert got.item() == pytest.approx(want.item(), rel=1e-5)
        assert got_g.keys() == want_g.keys() and len(want_g) > 0
        for name, g in want_g.items():
            assert g.abs().max() > 0, name
            assert torch.allclose(got_g[name], g, rtol=1e-4, atol=1e-6), (
                name,
                (got_g[name] - g).abs().max(),
            )


def test_prefix_groups_put_each_few_shot_format_in_its_own_batches(tokenizer):
    from selfimprove.training.resume import epoch_order
    from selfimprove.training.shared_prefix import decoder_slots, prefix_groups

    questions = [f"Case {i}: {q}" for i in range(8) for q in QUESTIONS]  # 32 questions
    examples = _formats_examples(questions)
    feats, _, _ = encode_examples(tokenizer, examples, max_length=768)
    groups = prefix_groups(feats, min_rows=4)
    by_format: dict[str, set] = {}
    for ex, g in zip(examples, groups, strict=True):
        by_format.setdefault(ex["format"], set()).add(g)
    assert by_format["zeroshot_cot"] == by_format["zeroshot_direct"] == {-1}
    assert len(by_format["fewshot_cot"]) == len(by_format["fewshot_direct"]) == 1
    assert by_format["fewshot_cot"] != by_format["fewshot_direct"] and -1 not in (
        by_format["fewshot_cot"] | by_format["fewshot_direct"]
    )
    # sorted by (group, length) inside the mega-batches, the batches share their exemplars and
    # the decoder runs far fewer positions than on the length-sorted batches of before
    lengths = [len(f["input_ids"]) for f in feats]

    def slots(order, share_prefix=True):
        batches = [[feats[i] for i in order[k : k + 4]] for k in range(0, len(order), 4)]
        return sum(decoder_slots(b, share_prefix) for b in batches)

    grouped = epoch_order(lengths, 4, seed=0, epoch=0, group_by_length=True, groups=groups)
    plain = epoch_order(lengths, 4, seed=0, epoch=0, group_by_length=True)
    assert sorted(grouped) == list(range(128))
    before = slots(plain, share_prefix=False)
    assert slots(grouped) < 0.95 * slots(plain) and slots(grouped) < 0.8 * before
    # no group, or grouping off: the orders of before
    assert epoch_order(lengths, 4, 0, 0, True, groups=[-1] * 128) == plain
    assert epoch_order(lengths, 4, 0, 0, False, groups=groups) == epoch_order(
        lengths, 4, 0, 0, False
    )


def test_finetune_computes_the_shared_prefix_once(tiny_model, tmp_path, monkeypatch):
    # through the Trainer: batches arrive with their shared prefix, training is deterministic
    from selfimprove.training import shared_prefix

    seen = []
    real = shared_prefix._prefix_pass

    def spy(*args):
        seen.append(args[5])  # prefix_len
        return real(*args)

    monkeypatch.setattr(shared_prefix, "_prefix_pass", spy)
    examples = _formats_examples([f"Case {i}: {q}" for i in range(2) for q in QUESTIONS])
    cfg = _cfg(epochs=1, batch_size=4)
    info = finetune(tiny_model, examples, tmp_path / "a", cfg, seed=0)
    assert info["steps"] == 8 and len(seen) >= 4 and min(seen) >= 50
    again = finetune(tiny_model, examples, tmp_path / "b", cfg, seed=0)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert again["final_loss"] == info["final_loss"]
    seen.clear()
    off = finetune(
        tiny_model,
        examples,
        tmp_path / "c",
        _cfg(epochs=1, batch_size=4, shared_prefix=False),
        seed=0,
    )
    assert seen == [] and off["steps"] == 8


@pytest.mark.parametrize("method", ["lora", "full"])
def test_recomputed_attention_trains_the_same_bytes(tiny_model, tmp_path, monkeypatch, method):
    # CPU training recomputes the eager attention probabilities in the backward instead of
    # keeping them (memory); the model folder must be the same bytes as with plain eager
    # (shared-prefix and plain batches, LoRA dropout replayed)
    from selfimprove.training import finetune as ft

    calls = []
    real = ft._eager_recomputed

    def spy(module, *args, **kwargs):
        calls.append(module.training)
        return real(module, *args, **kwargs)

    monkeypatch.setattr(ft, "_eager_recomputed", spy)
    examples = _formats_examples()
    cfg = _cfg(epochs=1, batch_size=4, method=method, attn_implementation="eager")
    finetune(tiny_model, examples, tmp_path / "recomputed", cfg, seed=0)
    assert calls and all(calls)
    monkeypatch.setattr(ft, "recompute_attention", lambda model: None)
    finetune(tiny_model, examples, tmp_path / "eager", cfg, seed=0)
    assert _files(tmp_path / "recomputed") == _files(tmp_path / "eager")


def test_recomputed_attention_keeps_less_for_the_backward(tiny_model, tokenizer):
    # the bytes autograd keeps from a training forward: the attention probabilities are gone
    from selfimprove.training.finetune import EAGER_RECOMPUTED, recompute_attention

    def saved_bytes(model, batch):
        seen = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(**batch)
        return sum(seen.values())

    cfg = _cfg(attn_implementation="eager", lora=LoraSection(dropout=0.0))
    feats, *_ = encode_examples(tokenizer, EXAMPLES[:4], 64)
    batch = CompletionCollator(tokenizer.eos_token_id)(feats)
    model = build_model(tiny_model, cfg, bf16=False)
    model.train()
    assert model.get_base_model().config._attn_implementation == EAGER_RECOMPUTED
    recomputed = saved_bytes(model, batch)
    model.get_base_model().set_attn_implementation("eager")
    eager = saved_bytes(model, batch)
    b, t = batch["input_ids"].shape
    cfg_model = model.get_base_model().config
    probs = cfg_model.num_hidden_layers * b * cfg_model.num_attention_heads * t * t * 4
    assert eager - recomputed >= probs
    recompute_attention(model)  # idempotent
    assert saved_bytes(model, batch) == recomputed


def test_training_returns_freed_heap_every_few_optimizer_steps(monkeypatch):
    """The trim callback calls malloc_trim at every TRIM_EVERY_STEPS-th optimizer step only
    (every step costs page faults; never lets the heap grow: docs/compute.md)."""
    from selfimprove.training import finetune as ft

    calls = []
    monkeypatch.setattr(ft, "release_heap", lambda: calls.append(True))
    callback = ft._release_heap_callback()
    control = SimpleNamespace()
    for step in range(1, 3 * ft.TRIM_EVERY_STEPS + 2):
        state = SimpleNamespace(global_step=step)
        assert callback.on_step_end(None, state, control) is control
    assert len(calls) == 3 and ft.TRIM_EVERY_STEPS > 1
