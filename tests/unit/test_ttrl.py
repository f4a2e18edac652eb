"""Method ttrl: the majority-vote reward and its masking on hand-made groups, its params, and its
train step (TRL's GRPOTrainer on CPU, both rollout paths) on the tiny model: a crashed run
resumes to the weights of an uninterrupted one."""

from __future__ import annotations

import json

import pytest

from selfimprove.config import ConfigError, parse_params
from selfimprove.recipes import get_recipe
from selfimprove.recipes.ttrl import TtrlParams, group_rewards, majority_rewards


@pytest.mark.parametrize(
    ("answers", "min_share", "rewards", "majority"),
    [
        (["7", "7", "7", "3"], 0.5, [1.0, 1.0, 1.0, 0.0], "7"),
        (["7", None, "7", "3"], 0.5, [1.0, 0.0, 1.0, 0.0], "7"),  # unparseable: 0, counts in n
        (["7", "3", None, None], 0.0, [None] * 4, None),  # tie at the top: no majority
        (["7", "3", "3", None], 0.6, [None] * 4, None),  # top share 0.5 below the threshold
        (["7", "3", "3", None], 0.5, [0.0, 1.0, 1.0, 0.0], "3"),  # share == threshold: kept
        ([None, None, None], 0.0, [None] * 3, None),  # nothing parseable
        (["5", "5"], 1.0, [1.0, 1.0], "5"),
    ],
)
def test_group_rewards_on_hand_made_groups(answers, min_share, rewards, majority):
    got, maj, share = group_rewards(answers, min_share)
    assert got == rewards and maj == majority
    assert share == (max(answers.count(a) for a in answers if a) / len(answers) if any(answers)
                     else 0.0)  # fmt: skip


def test_batch_rewards_follow_group_runs_and_read_answers_from_the_text():
    completions = [
        "2 + 3 = 5. The answer is 5.", "The answer is $5.00.", "3 + 2 = 6", "The answer is 5.\nQ: x. The answer is 9.",  # noqa: E501
        "no number", "none either",
        "The answer is 1.", "The answer is 2.",
    ]  # fmt: skip
    ids = ["a"] * 4 + ["b"] * 2 + ["c"] * 2
    rewards, groups = majority_rewards(completions, ids, min_share=0.5)
    assert rewards == [1.0, 1.0, 0.0, 1.0, None, None, None, None]
    assert [(g["id"], g["majority"], g["share"], g["n_parsed"]) for g in groups] == [
        ("a", "5", 0.75, 4), ("b", None, 0.0, 0), ("c", None, 0.5, 2)]  # fmt: skip
    with pytest.raises(ValueError, match="group ids"):
        majority_rewards(["x"], ["a", "b"], 0.5)


def test_reward_function_never_sees_labels_and_logs_its_metrics():
    """TRL calls it with the dataset's columns (prompt, id: no answer column exists)."""
    from types import SimpleNamespace

    from selfimprove.training.ttrl import Groups

    logged: dict[str, list] = {}
    fn = Groups(min_share=0.5)
    out = fn(prompts=["p"] * 4, completions=["The answer is 4."] * 3 + ["so 5"], id=["q"] * 4,
             trainer_state=SimpleNamespace(global_step=2),
             log_metric=lambda k, v: logged.setdefault(k, []).append(v))  # fmt: skip
    assert out == [1.0, 1.0, 1.0, 0.0]
    assert fn.by_step == {3: [{"id": "q", "majority": "4", "share": 0.75, "n_parsed": 4}]}
    assert logged == {"majority_ratio": [0.75], "masked_fraction": [0.0], "parsed_fraction": [1.0]}


def test_ttrl_params_are_validated_and_the_recipe_trains_with_grpo():
    p = parse_params({"method": "ttrl", "ttrl": {"num_generations": 4, "rollout": "trl"}})
    recipe = get_recipe(p.method)
    assert recipe.objective == "grpo" and not recipe.uses_labels and recipe.refine == "none"
    assert recipe.knobs(p) == TtrlParams(num_generations=4, rollout="trl")
    with pytest.raises(ConfigError) as e:
        parse_params({"ttrl": {"num_generations": 1, "min_share": 1.5, "rollout": "vllm",
                               "groups": 3}})  # fmt: skip
    msg = str(e.value)
    for key in ("ttrl.num_generations", "ttrl.min_share", "ttrl.rollout", "ttrl.groups"):
        assert key in msg


def test_train_questions_come_from_the_round_records_without_labels(tmp_path):
    from selfimprove.core.io import write_jsonl

    rec = {"id": "a", "question": "Q?", "paths": ["x"], "answers": ["1"], "gold": "1"}
    write_jsonl(tmp_path / "refined.jsonl", [rec])
    assert get_recipe("ttrl").train_inputs(tmp_path) == [{"id": "a", "question": "Q?"}]


# ----------------------------------------------------------------------------- train step

QUESTIONS = [{"id": f"q{i}", "question": f"Tom has {i} apples and buys {i + 2}. How many?"}
             for i in range(4)]  # fmt: skip


class _Crash(Exception):
    pass


def _crash_after(step: int):
    from transformers import TrainerCallback

    class CrashAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise _Crash(f"killed after step {step}")

    return CrashAfter()


def _knobs(**kw) -> TtrlParams:
    return TtrlParams(num_generations=4, questions_per_step=1, max_new_tokens=10, n_shots=1,
                      min_share=0.0, learning_rate=1e-2, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """The tiny Llama with larger weights: its samples vary (some groups get a majority)."""
    from tinyproject import varied_model

    return varied_model(tmp_path_factory.mktemp("ttrl-model"), seed=1)


def test_crashed_ttrl_resumes_to_the_weights_of_an_uninterrupted_run(varied, tmp_path, caplog):
    import logging

    from safetensors.torch import load_file

    from selfimprove.config.training import FinetuneConfig
    from selfimprove.core.io import read_jsonl
    from selfimprove.training.ttrl import ttrl

    cfg = FinetuneConfig(dtype="float32")
    full = ttrl(varied, QUESTIONS, tmp_path / "full", cfg, 3, knobs=_knobs())
    ckpt = tmp_path / "model.ckpt"
    with pytest.raises(_Crash):
        ttrl(varied, QUESTIONS, tmp_path / "out", cfg, 3, ckpt_dir=ckpt, save_steps=2,
             knobs=_knobs(), callbacks=[_crash_after(3)])  # fmt: skip
    assert not (tmp_path / "out").exists()
    assert (ckpt / "checkpoint-2" / "ttrl_groups.json").is_file()
    caplog.set_level(logging.INFO, logger="selfimprove.training.finetune")
    res = ttrl(varied, QUESTIONS, tmp_path / "out", cfg, 3, ckpt_dir=ckpt, save_steps=2,
               knobs=_knobs())  # fmt: skip
    assert res["resumed_from_step"] == 2 and res["steps"] == full["steps"] == 4
    a = read_jsonl(tmp_path / "full" / "train_log.jsonl")
    b = read_jsonl(tmp_path / "out" / "train_log.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["groups"] for r in b] == [r["groups"] for r in a]  # same rollouts, same votes
    assert any(r["grad_norm"] for r in a)  # some group had a majority: the weights moved
    wa = load_file(tmp_path / "full" / "model.safetensors")
    wb = load_file(tmp_path / "out" / "model.safetensors")
    w0 = load_file(varied / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    assert max((wa[k] - w0[k]).abs().max().item() for k in wa) > 1e-4
    assert not ckpt.exists()
    info = json.loads((tmp_path / "out" / "finetune_info.json").read_text())
    assert info["objective"] == "grpo" and "runtime_s" not in info
    # compute: TRL's num_tokens, kept in the checkpoint: the same after the resume
    assert info["tokens_trained"] == res["tokens_trained"] == full["tokens_trained"] > 0
    # and the completions it sampled online: the groups' tokens, the same after the resume
    assert info["tokens_sampled"] == full["tokens_sampled"] == sum(
        g["tokens"] for r in b for g in r["groups"]) > 0
    assert info["tokens_sampled"] < info["tokens_trained"]  # TRL's count adds the prompts
    # the layout fine-tuning writes: merged float32 weights, tokenizer, adapter
    assert {"config.json", "model.safetensors", "tokenizer.json", "adapter"} <= {
        p.name for p in (tmp_path / "out").iterdir()}  # fmt: skip


def test_skipping_zero_advantage_micro_batches_keeps_the_weights(varied, tmp_path):
    """ttrl.skip_zero_advantage (the default) skips the pass of masked and unanimous groups'
    micro-batches: the same weights, bit for bit, as TRL's own pass over them."""
    from safetensors.torch import load_file

    from selfimprove.config.training import FinetuneConfig
    from selfimprove.core.io import read_jsonl
    from selfimprove.training.ttrl import ttrl

    cfg = FinetuneConfig(dtype="float32")
    info = {name: ttrl(varied, QUESTIONS, tmp_path / name, cfg, 3,
                       knobs=_knobs(skip_zero_advantage=skip))
            for name, skip in (("skip", True), ("pass", False))}
    # compute: the skipped micro-batches' tokens are not counted as trained
    assert info["pass"]["tokens_skipped"] == 0 < info["skip"]["tokens_skipped"]
    assert (info["skip"]["tokens_trained"] + info["skip"]["tokens_skipped"]
            == info["pass"]["tokens_trained"])
    skipped = [r.get("skipped_fraction") for r in read_jsonl(tmp_path / "skip/train_log.jsonl")]
    assert all(r.get("skipped_fraction") is None
               for r in read_jsonl(tmp_path / "pass/train_log.jsonl"))
    assert 0 < sum(skipped) < len(skipped)  # some micro-batches skipped, some trained
    wa, wb = (load_file(tmp_path / n / "model.safetensors") for n in ("skip", "pass"))
    w0 = load_file(varied / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)
    assert max((wa[k] - w0[k]).abs().max().item() for k in wa) > 1e-4  # and they moved


def test_trl_generation_path_trains_on_cpu(varied, tmp_path):
    from selfimprove.config.training import FinetuneConfig
    from selfimprove.core.io import read_jsonl
    from selfimprove.training.ttrl import ttrl

    info = ttrl(varied, QUESTIONS[:2], tmp_path / "m", FinetuneConfig(dtype="float32"), 0,
                knobs=_knobs(rollout="trl"))  # fmt: skip
    log = read_jsonl(tmp_path / "m" / "train_log.jsonl")
    assert info["steps"] == 2 and info["rollout"] == "trl" and info["rollout_s"] is None
    assert all(r["completion_length"] <= 10 for r in log)
    assert all({"reward", "majority_ratio", "entropy", "masked_fraction"} <= set(r) for r in log)


def test_micro_batch_must_divide_the_step():
    with pytest.raises(ConfigError, match="ttrl.*micro_batch_size=3 must divide"):
        parse_params({"ttrl": {"micro_batch_size": 3}})  # 4 x 8 = 32 completions a step


def test_label_accuracy_is_computed_after_training_from_the_logged_majorities():
    """The track stage's analysis: majorities vs the held-aside labels, per step and per round
    (masked groups have no majority and do not count)."""
    from selfimprove.tracking.steps import round_label_accuracy, step_metrics

    records = [
        {"step": 1, "reward": 0.5, "majority_ratio": 0.6, "entropy": 1.0, "lr": None,
         "groups": [{"id": "a", "majority": "4"}, {"id": "b", "majority": "7"}]},
        {"step": 2, "reward": 1.0, "groups": [{"id": "a", "majority": None}]},
    ]  # fmt: skip
    labels = {"a": "2 + 2 = 4\n#### 4", "b": "#### 6"}
    rows = step_metrics(records, labels)
    assert ("train.label_accuracy", 0.5, 1) in rows and ("train.n_majority", 2.0, 1) in rows
    assert ("train.n_majority", 0.0, 2) in rows
    assert not any(k == "train.label_accuracy" and s == 2 for k, _, s in rows)
    assert not any(k in ("train.lr", "train.groups") for k, _, _ in rows)
    assert round_label_accuracy(records, labels) == {
        "analysis.ttrl.n_groups": 3.0, "analysis.ttrl.n_majority": 2.0,
        "analysis.ttrl.label_accuracy": 0.5}  # fmt: skip


def test_sampler_rollout_samples_with_the_training_weights(varied):
    """sync copies base + LoRA delta into the sampler's model: its weights equal the merged
    model's (what export writes)."""
    import torch

    from selfimprove.config.training import LoraSection
    from selfimprove.training.finetune import _load_model, _wrap_lora
    from selfimprove.training.ttrl import SamplerRollout, prompt_parts

    torch.manual_seed(0)
    model = _wrap_lora(_load_model(varied, torch.float32), LoraSection())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)  # a trained-looking adapter (B starts at zero)
    rollout = SamplerRollout(varied, prompt_parts(1), _knobs(), seed=0, bf16=False)
    rollout.sync(model)
    merged = model.merge_and_unload().state_dict()
    got = dict(rollout.sampler.model.named_parameters())
    assert set(got) <= set(merged)  # (lm_head.weight: tied to the embeddings)
    assert max((merged[k] - got[k]).abs().max().item() for k in got) < 1e-6
    assert any((merged[k] - _load_model(varied, torch.float32).state_dict()[k]).abs().max() > 0.01
               for k in merged)  # fmt: skip
