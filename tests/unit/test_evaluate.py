"""evaluate: GSM8K- and DROP-format sets, scoring helpers, and a real run on the tiny model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import selfimprove.sampling.factory as factory_mod
from selfimprove.config.evaluation import EvaluateConfig
from selfimprove.config.runtime import SamplerConfig
from selfimprove.core.answers import STOP_SEQUENCES
from selfimprove.core.io import InputError
from selfimprove.data.arith import generate_arith
from selfimprove.data.drop import generate_drop
from selfimprove.evaluation.evaluate import (
    drop_majority,
    drop_self_consistency,
    evaluate,
    score_drop_prediction,
    score_prediction,
    self_consistency,
    set_format,
    summarize,
    summarize_drop,
)
from selfimprove.evaluation.metrics.drop import DROP_STOP_SEQUENCES, drop_em_f1, extract_drop_answer

GSM_KEYS = {"id", "question", "output", "finish", "gold", "strict", "flexible"}
GSM_KEYS |= {"correct_strict", "correct_flexible"}
DROP_KEYS = {"id", "question", "output", "finish", "golds", "extracted", "em", "f1"}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from selfimprove.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _drop_recs(n: int) -> list[dict]:
    return generate_drop(n, seed=3)


# ------------------------------------------------------------------------------ pure helpers


def test_score_prediction_gsm():
    right = score_prediction(" 6 + 12 = 18. The answer is 18.\n\nQ: 5 apples", "x\n#### 18")
    assert right["correct_strict"] and right["correct_flexible"]
    flex_only = score_prediction(" 6 + 12 = 18", "#### 18")
    assert flex_only["strict"] is None and flex_only["correct_flexible"]
    assert not flex_only["correct_strict"]
    wrong = score_prediction(" The answer is 1,600.", "#### 1601")
    assert wrong["strict"] == "1600" and not wrong["correct_strict"]
    s = summarize([right, flex_only, wrong])
    assert s == {"n": 3, "strict": 1 / 3, "flexible": 2 / 3, "no_answer": 1 / 3}
    assert summarize([])["n"] == 0


def test_score_drop_prediction():
    # decimals are never cut at the ".", the text is cut at a new "Passage:"
    p = score_drop_prediction(" 100 - 49.4 = 50.6. So the answer is 50.6.\nPassage: 7", [["50.6"]])
    assert p["extracted"] == "50.6" and (p["em"], p["f1"]) == (1.0, 1.0)
    # the best of several alternatives; a multi-span gold with its flat alternative
    golds = [["Luis Ortega", "Ben Carter"], ["Luis Ortega and Ben Carter"]]
    p = score_drop_prediction(" So the answer is Luis Ortega and Ben Carter.", golds)
    assert (p["em"], p["f1"]) == (1.0, 1.0) and p["golds"] == golds
    p = score_drop_prediction(" So the answer is Luis Ortega.", golds)
    assert p["em"] == 0.0 and 0.0 < p["f1"] < 1.0
    # numbers must match; a direct answer has no "answer is"
    assert score_drop_prediction(" 8", [["7"]])["f1"] == 0.0
    assert score_drop_prediction(" the Bears", [["Bears"]])["em"] == 1.0
    empty = score_drop_prediction("\nQuestion: next", [["7"]])
    assert empty["extracted"] == "" and empty["f1"] == 0.0
    s = summarize_drop(
        [score_drop_prediction(" So the answer is 7.", [["7"]]), empty]
        + [score_drop_prediction(" So the answer is the Hawks", [["Riverton Hawks"]])]
    )
    assert (
        s["n"] == 3 and s["em"] == pytest.approx(1 / 3) and s["no_answer"] == pytest.approx(1 / 3)
    )
    assert s["f1"] == pytest.approx((1.0 + 0.0 + 0.67) / 3)


def test_drop_majority_and_self_consistency():
    assert drop_majority(["7", "7.0", "8"], 3) == "7"  # "7" and "7.0" are one vote
    assert drop_majority(["8", "7", "7.0"], 1) == "8"
    assert drop_majority(["", "", "Bears"], 3) == "Bears"  # empty answers never win
    assert drop_majority(["", ""], 2) is None
    assert drop_majority(["The Bears", "bears", "Lions"], 3) == "The Bears"
    sc = drop_self_consistency(
        [["8", "7", "7.0"], ["", "", ""], ["Lions", "the Bears", "Bears"]],
        [[["7"]], [["3"]], [["Chicago Bears"]]],
        [1, 3],
    )
    assert sc["maj@1_em"] == 0.0 and sc["maj@3_em"] == pytest.approx(1 / 3)
    assert sc["maj@3_f1"] == pytest.approx((1.0 + 0.0 + 0.67) / 3)
    assert sc["pass@3_em"] == pytest.approx(1 / 3) and sc["pass@3_f1"] == sc["maj@3_f1"]
    assert self_consistency([["2", None], [None, None]], ["2", "3"], [1, 2]) == {
        "maj@1": 0.5,
        "maj@2": 0.5,
        "pass@2": 0.5,
    }


def test_set_format():
    gsm = generate_arith(2, [1], seed=0)
    drop = _drop_recs(2)
    assert set_format(gsm) == "gsm" and set_format(drop) == "drop" and set_format([]) == "gsm"
    with pytest.raises(InputError, match=r"eval set 'mix' record 1 .*missing key\(s\) \['answers'"):
        set_format(
            [drop[0], {"id": "x", "passage": "P", "question": "Q", "answer": "#### 1"}], "mix"
        )
    with pytest.raises(InputError, match=r"record 2 .*\['answer'\]"):
        set_format([*gsm, {"id": "z", "question": "Q"}], "g")


# ------------------------------------------------------------------------------ a fake sampler


@dataclass
class _Completion:
    text: str
    n_tokens: int = 3
    finish_reason: str = "stop"


class _FakeSampler:
    """Records every call; answers each prompt with ``reply(prompt)`` n times."""

    def __init__(self, reply):
        self.reply = reply
        self.calls: list[tuple[str, list[str], object]] = []
        self.offsets: list = []  # index_offset of every call

    def sample(self, prefix, prompts, params, desc="", index_offset=0):
        self.calls.append((prefix, list(prompts), params))
        self.offsets.append(index_offset)
        return [[_Completion(self.reply(p, j)) for j in range(params.n)] for p in prompts]


def _gold_reply(records: list[dict]):
    """Right answers for the first record of each set, wrong ones for the others."""
    by_text = {}
    for recs in records:
        for i, r in enumerate(recs):
            key = r["question"] if "passage" not in r else r["passage"]
            if "passage" in r:
                ans = " and ".join(r["answers"][0]) if i == 0 else "nobody 999"
                by_text[key] = f" Let me see. So the answer is {ans}.\n\nPassage: junk"
            else:
                ans = r["answer"].split("####")[-1].strip() if i == 0 else "-1"
                by_text[key] = f" So the answer is {ans}.\nQ: junk"

    def reply(prompt: str, j: int) -> str:
        return next(v for k, v in by_text.items() if k in prompt)

    return reply


def test_evaluate_routes_formats_with_fake_sampler(monkeypatch):
    gsm, drop = generate_arith(3, [1], seed=0), _drop_recs(4)
    fake = _FakeSampler(_gold_reply([gsm, drop]))
    monkeypatch.setattr(factory_mod, "make_sampler", lambda *a, **k: fake)
    cfg = EvaluateConfig(
        styles=["fewshot_cot", "zeroshot_direct"], n_shots=2, sc_paths=3, sc_k=[1, 3], sc_limit=2
    )
    metrics, preds = evaluate("unused", {"g": gsm, "d": drop}, cfg, seed=5)

    assert metrics["g"]["fewshot_cot"] == {
        "n": 3,
        "strict": pytest.approx(1 / 3),
        "flexible": pytest.approx(1 / 3),
        "no_answer": 0.0,
    }
    assert metrics["d"]["fewshot_cot"]["em"] == 0.25 and metrics["d"]["fewshot_cot"]["f1"] == 0.25
    assert metrics["d"]["fewshot_cot"]["no_answer"] == 0.0
    assert metrics["d"]["sc"] == {
        "n": 2,
        "maj@1_em": 0.5,
        "maj@1_f1": 0.5,
        "maj@3_em": 0.5,
        "maj@3_f1": 0.5,
        "pass@3_em": 0.5,
        "pass@3_f1": 0.5,
    }
    assert metrics["g"]["sc"]["maj@3"] == 0.5 and metrics["g"]["sc"]["n"] == 2
    assert sorted(preds) == [
        "d__fewshot_cot",
        "d__sc",
        "d__zeroshot_direct",
        "g__fewshot_cot",
        "g__sc",
        "g__zeroshot_direct",
    ]
    assert [p["id"] for p in preds["d__fewshot_cot"]] == [r["id"] for r in drop]
    assert all(set(p) == DROP_KEYS for p in preds["d__fewshot_cot"])
    assert all(set(p) == GSM_KEYS for p in preds["g__zeroshot_direct"])
    assert preds["d__sc"][0]["majority"] == " and ".join(drop[0]["answers"][0])

    # GSM calls stop at "Q:", DROP calls at DROP_STOP_SEQUENCES (never at "."), one shared
    # prefix per style (the few-shot exemplars; empty for zero-shot), the record in the suffix
    gsm_calls = [c for c in fake.calls if c[1][0].startswith("Q:")]
    drop_calls = [c for c in fake.calls if c[1][0].startswith("Passage:")]
    assert len(gsm_calls) == len(drop_calls) == 3 and len(fake.calls) == 6
    assert all(c[2].stop == STOP_SEQUENCES for c in gsm_calls)
    assert all(c[2].stop == tuple(DROP_STOP_SEQUENCES) for c in drop_calls)
    assert all(not any(s.strip() == "." for s in c[2].stop) for c in drop_calls)
    greedy, _, sampled = (c[2] for c in drop_calls)
    assert (greedy.n, greedy.temperature, greedy.seed) == (1, 0.0, 5)
    assert (sampled.n, sampled.temperature) == (3, cfg.temperature) and len(drop_calls[2][1]) == 2
    assert drop_calls[0][0].count("Passage:") == 3 and drop_calls[1][0] == ""
    for prompt, rec in zip(drop_calls[0][1], drop, strict=True):
        assert rec["passage"] in prompt and prompt.endswith(f"{rec['question']}\nAnswer:")


def test_evaluate_pools_greedy_calls_across_sets(monkeypatch):
    """One greedy call per (format, style) holds every set of that format, in set order; each set
    gets back its own outputs (same metrics and predictions as evaluating it alone); maj@k is
    pooled the same way, each question keeping the seeds of its index in its own set."""
    a, b, d = generate_arith(3, [1], seed=0), generate_arith(2, [2], seed=1), _drop_recs(2)
    fake = _FakeSampler(_gold_reply([a, b, d]))
    monkeypatch.setattr(factory_mod, "make_sampler", lambda *a, **k: fake)
    cfg = EvaluateConfig(
        styles=["fewshot_cot", "zeroshot_cot"], n_shots=2, sc_paths=2, sc_k=[1, 2], sc_limit=2
    )
    sets = {"a": a, "d": d, "b": b}
    metrics, preds = evaluate("unused", sets, cfg, seed=0)
    assert list(metrics) == ["a", "d", "b"]
    greedy = [c for c in fake.calls if c[2].n == 1]
    sampled = [c for c in fake.calls if c[2].n == 2]
    assert len(greedy) == 4 and len(sampled) == 2 and len(fake.calls) == 6
    gsm = [c for c in greedy if c[1][0].startswith("Q:")]
    assert [len(c[1]) for c in gsm] == [5, 5] and [c[0] != "" for c in gsm] == [True, False]
    for prompt, rec in zip(gsm[0][1], a + b, strict=True):
        assert prompt == f"Q: {rec['question']}\nA:"
    assert [len(c[1]) for c in sampled] == [4, 2]  # a + b (GSM format), then d
    offsets = [o for o, c in zip(fake.offsets, fake.calls, strict=True) if c[2].n == 2]
    assert offsets == [[0, 1, 0, 1], [0, 1]]  # each question's index in its own set
    assert metrics["a"]["fewshot_cot"]["strict"] == pytest.approx(1 / 3)
    assert metrics["b"]["zeroshot_cot"]["strict"] == 0.5
    assert [p["id"] for p in preds["b__zeroshot_cot"]] == [r["id"] for r in b]
    for name, recs in sets.items():
        alone, alone_preds = evaluate("unused", {name: recs}, cfg, seed=0)
        assert alone[name] == metrics[name]
        assert all(alone_preds[k] == preds[k] for k in alone_preds)


def test_evaluate_limit_and_bad_set(monkeypatch):
    fake = _FakeSampler(lambda p, j: " So the answer is 1.")
    monkeypatch.setattr(factory_mod, "make_sampler", lambda *a, **k: fake)
    cfg = EvaluateConfig(styles=["zeroshot_cot"], sc_paths=0, limit=2)
    metrics, preds = evaluate("unused", {"d": _drop_recs(5)}, cfg, seed=0)
    assert metrics == {"d": {"zeroshot_cot": metrics["d"]["zeroshot_cot"]}}
    assert metrics["d"]["zeroshot_cot"]["n"] == 2 and list(preds) == ["d__zeroshot_cot"]
    assert fake.calls[0][1][0].endswith("Answer: Let's think step by step.")
    bad = [{"id": "x", "passage": "P", "answers": [["1"]]}]
    with pytest.raises(InputError, match="eval set 'bad' record 0"):
        evaluate("unused", {"bad": bad}, cfg, seed=0)


# ------------------------------------------------------------------------------ the tiny model


def test_evaluate_tiny_model(tiny_model):
    gsm, drop = generate_arith(3, [1], seed=0), _drop_recs(3)
    cfg = EvaluateConfig(
        styles=["fewshot_cot", "zeroshot_cot"],
        n_shots=1,
        max_new_tokens=6,
        sc_paths=2,
        sc_k=[1, 2],
        sc_limit=2,
    )
    smp = SamplerConfig(batch_size=4, dtype="float32")
    metrics, preds = evaluate(tiny_model, {"arith": gsm, "drop": drop}, cfg, 0, sampler_cfg=smp)
    assert set(metrics) == {"arith", "drop"}
    assert set(metrics["arith"]) == set(metrics["drop"]) == {"fewshot_cot", "zeroshot_cot", "sc"}
    for style in cfg.styles:
        g, d = metrics["arith"][style], metrics["drop"][style]
        assert set(g) == {"n", "strict", "flexible", "no_answer"} and g["n"] == 3
        assert set(d) == {"n", "em", "f1", "no_answer"} and d["n"] == 3
        assert all(0.0 <= v <= 1.0 for v in [*g.values(), *d.values()] if v != 3)
        assert d["em"] <= d["f1"]
        for p, rec in zip(preds[f"drop__{style}"], drop, strict=True):
            assert set(p) == DROP_KEYS and p["id"] == rec["id"] and p["golds"] == rec["answers"]
            assert p["extracted"] == extract_drop_answer(p["output"])
            assert p["finish"] in {"stop", "eos", "length"}
            assert (p["em"], p["f1"]) == drop_em_f1(p["extracted"], rec["answers"])
        assert [p["id"] for p in preds[f"arith__{style}"]] == [r["id"] for r in gsm]
    sc = metrics["drop"]["sc"]
    assert set(sc) == {
        "n",
        "maj@1_em",
        "maj@1_f1",
        "maj@2_em",
        "maj@2_f1",
        "pass@2_em",
        "pass@2_f1",
    }
    assert sc["n"] == 2 and sc["pass@2_f1"] >= sc["maj@1_f1"]
    assert all(len(p["answers"]) == 2 for p in preds["drop__sc"])
    assert set(metrics["arith"]["sc"]) == {"n", "maj@1", "maj@2", "pass@2"}
    # greedy decoding is deterministic
    again, _ = evaluate(
        tiny_model, {"drop": drop}, cfg.model_copy(update={"sc_paths": 0}), 0, sampler_cfg=smp
    )
    assert again["drop"]["fewshot_cot"] == metrics["drop"]["fewshot_cot"]


def test_pooled_sets_give_the_outputs_of_each_set_alone(tiny_model):
    """Pooling the sets into one greedy call changes nothing on the tiny model (fp32, CPU):
    byte-identical predictions and metrics to evaluating each set by itself, maj@k included."""
    sets = {"one": generate_arith(3, [1], seed=0), "two": generate_arith(4, [2], seed=2)}
    cfg = EvaluateConfig(
        styles=["fewshot_cot", "zeroshot_cot"],
        n_shots=1,
        max_new_tokens=8,
        sc_paths=2,
        sc_k=[1, 2],
        sc_limit=2,
    )
    smp = SamplerConfig(batch_size=3, dtype="float32")
    metrics, preds = evaluate(tiny_model, sets, cfg, seed=0, sampler_cfg=smp)
    for name, recs in sets.items():
        alone, alone_preds = evaluate(tiny_model, {name: recs}, cfg, seed=0, sampler_cfg=smp)
        assert alone[name] == metrics[name]
        same = {k: alone_preds[k] == preds[k] for k in alone_preds}
        assert same == dict.fromkeys(alone_preds, True)
