"""Weighting and curriculum params of the vote recipes (filter.weighting / weight_beta /
drop_band / order, finetune.order): hand-made votes, the weighted SFT loss on a tiny model, and
the in-order sampler. Defaults off: tests/unit/test_filter_golden.py keeps the default bytes."""

from __future__ import annotations

import math

import pytest

from selfimprove.config import ConfigError, parse_params
from selfimprove.config.methods import FilterConfig
from selfimprove.methods.filter import select
from selfimprove.recipes import get_recipe

FORMATS = {"fewshot_cot": False, "fewshot_direct": False, "zeroshot_cot": True,
           "zeroshot_direct": False}  # fmt: skip
LMSI = get_recipe("lmsi")


def _recs():
    # vote shares: a 2/4, b 4/4, c 3/4, d 1/4 (below min_agreement 0.5)
    votes = {"a": ["5", "5", "6", "7"], "b": ["2"] * 4, "c": ["9", "9", "9", "1"],
             "d": ["1", "2", "3", "4"]}  # fmt: skip
    return [{"id": q, "question": f"What is {q}?", "paths": [f"{x} is it." for x in v],
             "answers": v} for q, v in votes.items()]  # fmt: skip


def _select(**kw):
    return select(_recs(), LMSI, FilterConfig(formats=FORMATS, **kw))


def test_defaults_write_no_weight_and_keep_the_input_order():
    _, train, stats = _select()
    assert all("weight" not in t for t in train)
    assert [t["id"] for t in train] == sorted([t["id"] for t in train])  # input order
    assert "n_dropped_band" not in stats


def test_share_and_exp_weights_from_hand_made_votes():
    _, train, _ = _select(weighting="share", max_paths_per_question=1)
    assert [(t["id"], t.get("weight", 1.0)) for t in train] == [("a", 0.5), ("b", 1.0), ("c", 0.75)]
    _, train, _ = _select(weighting="exp", weight_beta=0.5, max_paths_per_question=1)
    assert [(t["id"], t.get("weight", 1.0)) for t in train] == [
        ("a", math.exp(1.0)), ("b", math.exp(2.0)), ("c", math.exp(1.5))]  # fmt: skip


def test_the_medium_agreement_band_is_dropped():
    rats, train, stats = _select(drop_band=[0.4, 0.8], max_paths_per_question=1)
    assert [t["id"] for t in train] == ["b"]  # a (0.5) and c (0.75) are in the band
    assert [r["selected"] for r in rats] == [False, True, False, False]
    assert stats["n_dropped_band"] == 2 and stats["n_selected"] == 1


def test_easy_to_hard_orders_by_vote_share():
    _, train, _ = _select(order="easy_to_hard", max_paths_per_question=1)
    assert [t["id"] for t in train] == ["b", "c", "a"]


def test_params_are_validated():
    with pytest.raises(ConfigError, match="finetune.order"):
        parse_params({"filter": {"order": "easy_to_hard"}})
    p = parse_params({"filter": {"order": "easy_to_hard"}, "finetune": {"order": "as_written"}})
    assert p.filter.order == "easy_to_hard"
    for bad in ([0.5], [0.7, 0.4], [0.2, 1.5]):
        with pytest.raises(ConfigError, match="drop_band"):
            parse_params({"filter": {"drop_band": bad}})
    with pytest.raises(ConfigError, match="weighting"):
        parse_params({"filter": {"weighting": "softmax"}})


# ----------------------------------------------------------------------------- training

torch = pytest.importorskip("torch")


def test_the_weighted_completion_loss_scales_each_rows_tokens(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfimprove.training.encode import CompletionCollator, encode_examples
    from selfimprove.training.shared_prefix import completion_loss

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    examples = [
        {"prompt": "Q: 1 + 1?\nA:", "completion": " 2. The answer is 2.", "weight": 3.0},
        {"prompt": "Q: 2 + 5?\nA:", "completion": " The answer is 7.", "weight": 1.0},
    ]
    feats, _, _ = encode_examples(tok, examples, 64)
    assert [f["weight"] for f in feats] == [1.5, 0.5]  # scaled to mean 1
    batch = CompletionCollator(tok.eos_token_id)(feats)
    assert batch["weights"].tolist() == [1.5, 0.5]
    n = [sum(t != -100 for t in f["labels"]) for f in feats]  # tokens with a loss per row

    def loss(b, w=None):
        with torch.no_grad():
            return float(completion_loss(model, b["input_ids"], b["attention_mask"],
                                         b["labels"], weights=w))  # fmt: skip

    coll = CompletionCollator(tok.eos_token_id)
    rows = [loss(coll([{k: v for k, v in f.items() if k != "weight"}])) for f in feats]
    plain = batch.copy()
    plain.pop("weights")
    assert loss(plain, torch.tensor([1.0, 1.0])) == pytest.approx(loss(plain), rel=1e-6)
    want = (1.5 * rows[0] * n[0] + 0.5 * rows[1] * n[1]) / (n[0] + n[1])
    assert loss(plain, batch["weights"]) == pytest.approx(want, rel=1e-5)
    assert loss(plain, torch.tensor([1.0, 0.0])) == pytest.approx(
        rows[0] * n[0] / (n[0] + n[1]), rel=1e-5)  # fmt: skip


def test_weighted_examples_train_and_unit_weights_change_nothing(tiny_model, tmp_path):
    from selfimprove.config.training import FinetuneConfig
    from selfimprove.core.io import read_jsonl
    from selfimprove.training.finetune import finetune

    cfg = FinetuneConfig(epochs=1, batch_size=4, logging_steps=1, learning_rate=3e-3)
    exs = [{"prompt": f"Q: Jack has {i} stamps. A:", "completion": f" The answer is {i}."}
           for i in range(8)]  # fmt: skip
    finetune(tiny_model, exs, tmp_path / "plain", cfg, seed=0)
    finetune(tiny_model, [e | {"weight": 0.5} for e in exs], tmp_path / "unit", cfg, seed=0)
    w = [e | {"weight": float(i % 2)} for i, e in enumerate(exs)]
    finetune(tiny_model, w, tmp_path / "weighted", cfg, seed=0)
    logs = {k: [r["loss"] for r in read_jsonl(tmp_path / k / "train_log.jsonl")]
            for k in ("plain", "unit", "weighted")}  # fmt: skip
    assert logs["unit"] == pytest.approx(logs["plain"], rel=1e-6)  # all equal: mean 1 = 1
    assert logs["weighted"] != pytest.approx(logs["plain"], rel=1e-3)


def test_as_written_trains_every_epoch_in_the_file_order(tmp_path):
    from selfimprove.config.training import FinetuneConfig
    from selfimprove.training.finetune import training_args
    from selfimprove.training.resume import EpochSeededSampler

    args = training_args(FinetuneConfig(order="as_written"), tmp_path, 0, False, None)
    assert args.train_sampling_strategy == "sequential"
    s = EpochSeededSampler([5, 1, 4, 2], 2, seed=0, group_by_length=True, sequential=True)
    assert s.order(0) == s.order(3) == [0, 1, 2, 3]
