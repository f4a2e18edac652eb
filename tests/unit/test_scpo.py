"""Method scpo: pairs and weights from hand-made vote counts, the vote-margin weighted DPO loss on
a tiny model, the round's model in fine-tuning's layout, and resume to the same weights."""

from __future__ import annotations

import json

import pytest

from selfimprove.config import ConfigError, parse_params
from selfimprove.config.methods import FilterConfig
from selfimprove.config.training import FinetuneConfig
from selfimprove.core.io import InputError, read_jsonl
from selfimprove.methods.filter import select
from selfimprove.recipes import get_recipe
from selfimprove.recipes.scpo import ScpoParams, build_pairs, question_pair

COT_ONLY = FilterConfig(formats={"fewshot_cot": False, "fewshot_direct": False,
                                 "zeroshot_cot": True, "zeroshot_direct": False})  # fmt: skip


def _rec(qid, answers, paths=None):
    paths = paths or [f"{a} is it." if a is not None else "no idea" for a in answers]
    return {"id": qid, "question": f"What is {qid}?", "paths": paths, "answers": answers}


# ----------------------------------------------------------------------------- pairs


def test_pairs_and_weights_from_hand_made_votes():
    recs = [
        _rec("a", ["5", "5", "5", "6", "7", "7", None, "5"]),  # 4 / 1 of 8: margin 3/8
        _rec("b", ["1", "2", "1", "3", "3", "1", "1", "1"]),  # 5 of 8 vs "2" (1): 4/8
        _rec("c", ["4"] * 8),  # unanimous: no pair
        _rec("d", ["8", "9", "8", "9", None, None, None, None]),  # top share 2/8 < 0.5
        _rec("e", [None] * 8),  # no answer
    ]
    rows, stats = build_pairs(recs, COT_ONLY)
    got = [(r["id"], r["chosen_answer"], r["rejected_answer"], r["chosen_votes"],
            r["rejected_votes"], r["weight"]) for r in rows]  # fmt: skip
    assert got == [("a", "5", "6", 4, 1, 3 / 8), ("b", "1", "2", 5, 1, 4 / 8)]
    assert rows[0]["chosen"] == " 5 is it. The answer is 5."
    assert rows[0]["rejected"] == " 6 is it. The answer is 6."
    assert rows[0]["prompt"].startswith("Q: What is a?") and rows[0]["m"] == 8
    assert stats == {"n_pairs": 2, "n_no_pair_no_answer": 1, "n_no_pair_unanimous": 1,
                     "n_no_pair_unusable": 0, "n_no_pair_below_threshold": 1,
                     "mean_pair_weight": 0.4375, "n_pair_rows": 2}  # fmt: skip
    # the threshold is the scpo section's; unweighted: every pair weighs 1
    rows, _ = build_pairs(recs, COT_ONLY, ScpoParams(min_agreement=0.25, weighted=False))
    assert [(r["id"], r["weight"]) for r in rows] == [("a", 1.0), ("b", 1.0), ("d", 1.0)]
    rows, _ = build_pairs(recs, COT_ONLY, ScpoParams(min_agreement=0.6))
    assert [r["id"] for r in rows] == ["b"]


def test_ties_and_unusable_paths():
    # least-voted tie ("6" and "7", one vote each): the first to appear; its path contradicts
    # its answer ("The answer is 9."), so the next least-voted answer gives the rejected path
    pair, _ = question_pair(["5.", "5.", "The answer is 9.", "7.", "5."], ["5", "5", "6", "7", "5"])
    assert (pair.chosen_answer, pair.rejected_answer, pair.rejected) == ("5", "7", 3)
    assert pair.margin == pytest.approx(2 / 5)
    # top tie: the first to appear wins (majority_vote's rule)
    pair, _ = question_pair(["2.", "3.", "2.", "3."], ["2", "3", "2", "3"])
    assert (pair.chosen_answer, pair.rejected_answer, pair.margin) == ("2", "3", 0.0)
    assert question_pair(["The answer is 1.", "3."], ["2", "3"]) == (None, "unusable")


def test_every_format_gets_a_pair_and_the_bytes_are_stable(tmp_path):
    from selfimprove.core.io import write_jsonl

    recs = [_rec("a", ["5", "5", "6"]), _rec(7, ["1", "2", "2"])]
    rows, _ = build_pairs(recs, FilterConfig(n_shots=1))
    assert [r["format"] for r in rows[:4]] == [
        "fewshot_cot", "fewshot_direct", "zeroshot_cot", "zeroshot_direct"]  # fmt: skip
    assert rows[1]["chosen"] == " The answer is 5." and rows[1]["rejected"] == " The answer is 6."
    write_jsonl(tmp_path / "a.jsonl", rows)
    write_jsonl(tmp_path / "b.jsonl", build_pairs(recs, FilterConfig(n_shots=1))[0])
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_the_filter_keeps_the_chosen_path_and_counts_the_pairs():
    recs = [_rec("a", ["5", "5", "6", "5"]), _rec("b", ["3", "3", "3", "3"])]
    rats, train, stats = select(recs, get_recipe("scpo"), COT_ONLY)
    assert [r["kept"] for r in rats] == [[True, False, False, False], [False] * 4]
    assert [r["selected"] for r in rats] == [True, False]
    assert [t["completion"] for t in train] == [" 5 is it. The answer is 5."]
    assert stats["n_pairs"] == 1 and stats["n_no_pair_unanimous"] == 1


def test_scpo_params_are_validated():
    params = parse_params({"method": "scpo", "scpo": {"beta": 0.5}})
    assert get_recipe("scpo").knobs(params).beta == 0.5
    for bad in ({"scpo": {"beta": 0}}, {"scpo": {"min_agreement": 2}},
                {"scpo": {"weighted": 1}}, {"scpo": {"nll": 1.0}}):  # fmt: skip
        with pytest.raises(ConfigError, match="scpo"):
            parse_params(bad)


# ----------------------------------------------------------------------------- training

torch = pytest.importorskip("torch")

PAIRS = [
    {
        "prompt": f"Q: What is {i} + 1?\nA:",
        "chosen": f" {i} + 1 = {i + 1}. The answer is {i + 1}.",
        "rejected": f" The answer is {i + 7}.",
        "weight": w,
    }
    for i, w in enumerate([0.25, 0.5, 0.75, 1.0, 0.125, 0.375, 0.625, 0.875])
]


def _cfg(**kw) -> FinetuneConfig:
    return FinetuneConfig(**({"epochs": 2, "batch_size": 4, "logging_steps": 1,
                              "learning_rate": 3e-3} | kw))  # fmt: skip


def _trainer(tiny_model, tmp_path, rows):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfimprove.training.preference import (
        _peft_config,
        dpo_args,
        weighted_collator,
        weighted_dpo_trainer,
    )

    cfg = _cfg()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    args = dpo_args(cfg, ScpoParams(), tmp_path, 0, False, None)
    return weighted_dpo_trainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
        data_collator=weighted_collator(tok.eos_token_id, cfg.max_length),
        peft_config=_peft_config(cfg),
    )  # fmt: skip


def test_the_loss_is_the_vote_margin_weighted_mean_of_each_pairs_loss(tiny_model, tmp_path):
    from selfimprove.training.preference import check_pairs

    rows = check_pairs(PAIRS[:3])
    trainer = _trainer(tiny_model, tmp_path, rows)
    # a trained-looking adapter, so that policy and reference differ
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    feats = [trainer.train_dataset[i] for i in range(3)]
    batch = trainer.data_collator(feats)
    assert batch["weight"].tolist() == [0.25, 0.5, 0.75]

    def loss(b):
        with torch.no_grad():
            return float(trainer.compute_loss(trainer.model, b))

    alone = []
    for i in range(3):
        single = trainer.data_collator([feats[i]])
        alone.append(loss({k: v for k, v in single.items() if k != "weight"}))
    weighted = loss(batch)
    assert weighted == pytest.approx((0.25 * alone[0] + 0.5 * alone[1] + 0.75 * alone[2]) / 3,
                                     rel=1e-5)  # fmt: skip
    # a pair of weight 0 adds nothing (and its gradient is zero)
    batch["weight"] = torch.tensor([1.0, 0.0, 0.0])
    assert loss(batch) == pytest.approx(alone[0] / 3, rel=1e-5)
    # the loss is TRL's IRPO loss: DPO (log 2 at the start would be the untrained value) + NLL
    assert all(a > 0 for a in alone)


def test_bad_pairs_are_one_clear_error():
    from selfimprove.training.preference import check_pairs

    with pytest.raises(InputError, match="pairs.jsonl record 2"):
        check_pairs([PAIRS[0], {"prompt": "Q", "chosen": "a", "rejected": None}])
    with pytest.raises(InputError, match="weight"):
        check_pairs([PAIRS[0] | {"weight": float("nan")}])


class _Crash(Exception):
    pass


def _crash_after(step: int):
    from transformers import TrainerCallback

    class CrashAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise _Crash(f"killed after step {step}")

    return CrashAfter()


def test_dpo_writes_the_fine_tuning_layout_and_resumes_to_the_same_weights(tiny_model, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from selfimprove.training.preference import dpo_finetune

    cfg, knobs = _cfg(), ScpoParams()  # 8 pairs / 4 = 2 steps per epoch, 4 in all
    full = dpo_finetune(tiny_model, PAIRS, tmp_path / "full", cfg, knobs, seed=3)
    out = tmp_path / "full"
    assert {p.name for p in out.iterdir()} >= {
        "config.json", "model.safetensors", "adapter", "train_log.jsonl", "finetune_info.json",
        "tokenizer.json", "generation_config.json"}  # fmt: skip
    info = json.loads((out / "finetune_info.json").read_text())
    assert info["objective"] == "dpo" and info["steps"] == 4 and not info["skipped"]
    assert "runtime_s" not in info and full["n_examples"] == 8
    assert [r["step"] for r in read_jsonl(out / "train_log.jsonl")] == [1, 2, 3, 4]
    AutoModelForCausalLM.from_pretrained(out)  # loads as every downstream stage loads it
    start = load_file(tiny_model / "model.safetensors")
    trained = load_file(out / "model.safetensors")
    assert max((start[k] - trained[k]).abs().max().item() for k in start) > 0

    ckpt = tmp_path / "model.ckpt"
    with pytest.raises(_Crash):
        dpo_finetune(tiny_model, PAIRS, tmp_path / "out", cfg, knobs, seed=3, ckpt_dir=ckpt,
                     save_steps=1, callbacks=[_crash_after(3)])  # fmt: skip
    assert not (tmp_path / "out").exists()
    res = dpo_finetune(tiny_model, PAIRS, tmp_path / "out", cfg, knobs, seed=3, ckpt_dir=ckpt,
                       save_steps=1)  # fmt: skip
    assert res["resumed_from_step"] == 2 and res["steps"] == 4  # killed before step 3 saved
    # compute: TRL's num_tokens (prompt+chosen and prompt+rejected, every epoch), from the data
    assert res["tokens_trained"] == full["tokens_trained"] == info["tokens_trained"] > 0
    a = read_jsonl(out / "train_log.jsonl")
    b = read_jsonl(tmp_path / "out" / "train_log.jsonl")
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
    wb = load_file(tmp_path / "out" / "model.safetensors")
    assert max((trained[k] - wb[k]).abs().max().item() for k in trained) < 1e-5
    assert not ckpt.exists()


def test_no_pairs_saves_the_start_model_as_skipped(tiny_model, tmp_path):
    from selfimprove.training.preference import dpo_finetune

    info = dpo_finetune(tiny_model, [], tmp_path / "m", _cfg(), ScpoParams(), seed=0)
    assert info["skipped"] and "no preference pairs" in info["skip_reason"]
    assert (tmp_path / "m" / "model.safetensors").exists()
