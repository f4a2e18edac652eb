"""Intervals in metrics.json (evaluation/intervals.py): the per-question scores the evaluate
step writes with its predictions average exactly to its metrics (GSM8K and DROP, greedy and
maj@k) and are read back, never scored again; the added keys leave every existing reader's
view unchanged; paired differences."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

import selfimprove.sampling.factory as factory_mod
from selfimprove.config.evaluation import EvaluateConfig, StatsConfig
from selfimprove.data.arith import generate_arith
from selfimprove.data.drop import generate_drop
from selfimprove.evaluation import evaluate as evaluate_mod
from selfimprove.evaluation.analysis import flatten_metrics
from selfimprove.evaluation.intervals import (
    annotate_metrics,
    difference_rows,
    interval_rows,
    label_free_agreement,
    question_scores,
    read_scores,
    runs_difference,
)
from selfimprove.evaluation.report import accuracy_rows

FAST = StatsConfig(n_resamples=200)


@dataclass
class _Completion:
    text: str
    n_tokens: int = 3
    finish_reason: str = "stop"


class _NoisySampler:
    """Answers each prompt at random (seeded by prompt and path): right about half the time,
    sometimes with no answer, so every metric is strictly between 0 and 1."""

    def __init__(self, golds: dict[str, str]):
        self.golds = golds  # question text -> gold answer text

    def sample(self, prefix, prompts, params, desc="", index_offset=0):
        out = []
        for p in prompts:
            key = next(k for k in self.golds if k in p)
            row = []
            for j in range(params.n):
                r = random.Random(f"{key}:{j}:{params.n}").random()
                if r < 0.5:
                    ans = self.golds[key]
                elif r < 0.85:
                    ans = "nobody 999" if "Passage" in p else "-7"
                else:
                    row.append(_Completion(" I do not know."))
                    continue
                row.append(_Completion(f" Let me see. So the answer is {ans}.\n\nQ: junk"))
            out.append(row)
        return out


@pytest.fixture
def evaluated(monkeypatch):
    gsm = generate_arith(24, [1], seed=1)
    drop = generate_drop(16, seed=2)
    golds = {r["question"]: r["answer"].split("####")[-1].strip() for r in gsm}
    golds |= {r["passage"]: " and ".join(r["answers"][0]) for r in drop}
    monkeypatch.setattr(factory_mod, "make_sampler", lambda *a, **k: _NoisySampler(golds))
    cfg = EvaluateConfig(
        styles=["fewshot_cot", "zeroshot_direct"], n_shots=1, sc_paths=5, sc_k=[1, 3, 5]
    )
    return evaluate_mod.evaluate("unused", {"g": gsm, "d": drop}, cfg, seed=0)


def test_per_question_scores_average_to_the_metrics(evaluated):
    metrics, preds = evaluated
    out = annotate_metrics(metrics, preds, FAST)
    want = {
        "fewshot_cot": {"g": {"strict", "flexible"}, "d": {"em", "f1"}},
        "sc": {
            "g": {"maj@1", "maj@3", "maj@5", "pass@5"},
            "d": {f"{m}_{s}" for m in ("maj@1", "maj@3", "maj@5", "pass@5") for s in ("em", "f1")},
        },
    }
    for style, by_set in want.items():
        for set_name, names in by_set.items():
            ci = out[set_name][style]["ci"]
            assert set(ci) == {"level", *names}, (set_name, style)
            for name in names:
                value = metrics[set_name][style][name]
                assert ci[name]["lo"] <= value <= ci[name]["hi"]
                assert 0.0 <= ci[name]["lo"] < ci[name]["hi"] <= 1.0  # noisy: a real spread
    # the reconstruction itself, metric by metric
    for key, p in preds.items():
        set_name, style = key.split("__")
        _, scores = question_scores(p)
        assert scores, key
        for name, vals in scores.items():
            assert sum(vals) / len(vals) == metrics[set_name][style][name]  # exactly: the means


def test_added_keys_leave_existing_readers_unchanged(evaluated):
    metrics, preds = evaluated
    out = annotate_metrics(metrics, preds, FAST)
    for set_name, styles in metrics.items():
        for style, values in styles.items():
            assert {k: out[set_name][style][k] for k in values} == values  # nothing changed
    assert accuracy_rows({"r1": out}) == accuracy_rows({"r1": metrics})  # report tables
    flat, old = flatten_metrics(out), flatten_metrics(metrics)
    assert {k: flat[k] for k in old} == old
    new = sorted(set(flat) - set(old))
    assert "g.fewshot_cot.ci.strict.lo" in new and "d.sc.ci.maj@5_f1.hi" in new
    assert "g.sc.label_free.agreement" in new and "d.sc.label_free.n" in new
    assert all(".ci." in k or ".label_free." in k for k in new)
    # the input is not modified, and the same inputs give the same intervals
    assert "ci" not in metrics["g"]["fewshot_cot"]
    assert annotate_metrics(metrics, preds, FAST) == out
    assert annotate_metrics(metrics, preds, StatsConfig(n_resamples=200, seed=1)) != out


def test_label_free_agreement_uses_no_labels(evaluated):
    metrics, preds = evaluated
    blind = [{"id": p["id"], "answers": p["answers"]} for p in preds["g__sc"]]
    got = label_free_agreement(blind)
    assert got == annotate_metrics(metrics, preds, FAST)["g"]["sc"]["label_free"]
    assert 0.0 < got["agreement"] <= 1.0 and got["n"] == len(blind)
    assert label_free_agreement([{"answers": ["1", "1", "1"]}])["agreement"] == 1.0
    assert label_free_agreement([{"answers": [None, None]}])["agreement"] == 0.0


def test_one_scoring_path(evaluated, monkeypatch):
    """The intervals read the scores the evaluate step wrote: no DROP majority or EM/F1 is
    computed again (a stub that would change them changes nothing), and a metric that is not
    the mean of its scores is an internal error, not a silently dropped interval."""
    metrics, preds = evaluated
    out = annotate_metrics(metrics, preds, FAST)
    import selfimprove.evaluation.intervals as intervals_mod
    import selfimprove.evaluation.metrics.drop as drop_mod

    monkeypatch.setattr(drop_mod, "drop_em_f1", lambda *a: (0.0, 0.0))
    assert annotate_metrics(metrics, preds, FAST) == out
    assert not hasattr(intervals_mod, "drop_majority")
    bad = {"s": {"cot": {"n": 2, "strict": 0.5, "flexible": 1.0}}}
    preds = {"s__cot": [{"id": 1, "correct_strict": True, "correct_flexible": True}] * 2}
    with pytest.raises(AssertionError, match="s.cot.strict is 0.5, but its per-question"):
        annotate_metrics(bad, preds, FAST)


def _scores(ids, values):
    return {("s", "cot"): (ids, {"strict": values})}


def test_differences_between_rounds():
    ids = [f"q{i}" for i in range(20)]
    base = [i % 2 for i in range(20)]
    better = [1] * 20
    rows = difference_rows(
        {
            "r0": _scores(ids, base),
            "r1": _scores(ids[::-1], base[::-1]),  # same scores, another order: paired by id
            "r2": _scores(ids[:10], better[:10]),  # fewer questions: only the shared ones
        },
        FAST,
    )
    got = {(r["round"], r["vs"]): r for r in rows}
    assert set(got) == {("r1", "r0"), ("r2", "r0"), ("r2", "r1")}
    same = got[("r1", "r0")]
    assert (same["diff"], same["lo"], same["hi"], same["n"]) == (0.0, 0.0, 0.0, 20)
    up = got[("r2", "r0")]
    assert up["diff"] == pytest.approx(0.5) and up["n"] == 10 and 0.0 < up["lo"] < 0.5 < up["hi"]
    assert up["level"] == 0.95 and up["set"] == "s" and up["metric"] == "strict"


def test_runs_difference_over_seeds():
    ids = ["a", "b", "c", "d", "e", "f"]
    a = [(ids, [0, 1, 0, 1, 0, 0]), (ids[::-1], [0, 0, 1, 0, 1, 0])]
    b = [(ids, [1, 1, 1, 1, 0, 1])]
    iv, n = runs_difference(a, b, FAST)
    assert n == 6 and iv.estimate == pytest.approx(5 / 6 - 1 / 3)
    same, _ = runs_difference(a, a, FAST)
    assert same.estimate == 0.0


def test_read_scores_and_interval_rows(tmp_path, evaluated):
    from selfimprove.core.io import write_jsonl

    metrics, preds = evaluated
    out = annotate_metrics(metrics, preds, FAST)
    for key, p in preds.items():
        write_jsonl(tmp_path / "eval" / f"{key}.jsonl", p)
    scores = read_scores(tmp_path, out)
    assert set(scores) == {
        (s, st) for s in ("g", "d") for st in ("fewshot_cot", "sc", "zeroshot_direct")
    }
    ids, by_metric = scores[("g", "fewshot_cot")]
    assert ids == [p["id"] for p in preds["g__fewshot_cot"]]
    assert sum(by_metric["strict"]) / len(ids) == pytest.approx(
        metrics["g"]["fewshot_cot"]["strict"]
    )
    rows = interval_rows({"r0": out, "r1": metrics})  # r1 without intervals: no rows
    assert {r["round"] for r in rows} == {"r0"}
    row = next(r for r in rows if (r["set"], r["style"], r["metric"]) == ("g", "sc", "maj@5"))
    assert row["value"] == metrics["g"]["sc"]["maj@5"] and row["level"] == 0.95
