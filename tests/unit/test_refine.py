"""Self-feedback/refinement loop, STaR/ReST-EM records, filtering by method, verdict analysis."""

from __future__ import annotations

import copy

import pytest

from selfimprove.config.methods import FilterConfig, RefineConfig
from selfimprove.core.arith_check import check_solution
from selfimprove.core.io import InputError
from selfimprove.core.verdict import feedback_completion
from selfimprove.evaluation.analysis import verdict_precision
from selfimprove.methods.filter import filter_refined, filter_samples
from selfimprove.methods.refine import (
    label_records,
    labels_by_id,
    refine_loop,
    refine_outputs,
    refine_samples,
    star_rationalize,
)
from selfimprove.recipes.lmsi_self import LmsiSelfParams
from selfimprove.recipes.rest_em import RestEmParams
from selfimprove.sampling.base import Completion

QUESTIONS = {
    "Tom has 3 apples and buys 2. How many?": ("5", "3 + 2 = 5. The answer is 5."),
    "Ann has 4 pens and loses 1. How many?": ("3", "4 - 1 = 3. The answer is 3."),
}


def _question_of(prompt: str) -> str:
    return prompt.split("Q: ")[-1].split("\n")[0].split(" (Hint")[0]


def _answer_of(prompt: str) -> str:
    return prompt.split("\nA: ")[-1].split("\n")[0]


class FakeSampler:
    """Scripted model: judges with the rule checker (gold from QUESTIONS), refines to the gold
    solution. ``garbage`` questions get unparsable feedback; ``stubborn`` ones a wrong rewrite."""

    def __init__(self, garbage=(), stubborn=(), rationalize=None):
        self.garbage, self.stubborn = set(garbage), set(stubborn)
        self.rationalize = rationalize or {}
        self.calls: list[tuple[str, int]] = []
        self.prompts: list[str] = []

    def sample(self, prefix, prompts, params, desc="", index_offset=0):
        out = []
        for p in prompts:
            self.prompts.append(prefix + p)
            q = _question_of(p)
            if p.endswith("Feedback:"):
                self.calls.append(("feedback", len(prompts)))
                if q in self.garbage:
                    text = " I am not sure what to say."
                else:
                    fb = check_solution(q, _answer_of(p), QUESTIONS[q][0])
                    text = feedback_completion(fb.text, fb.verdict) + "\nRefined answer: junk"
            elif p.endswith("Refined answer:"):
                self.calls.append(("refine", len(prompts)))
                text = (
                    " 1 + 1 = 3. The answer is 3." if q in self.stubborn else " " + QUESTIONS[q][1]
                )
                text += "\n\nQ: another question"
            else:  # STaR rationalization
                self.calls.append(("rationalize", len(prompts)))
                text = self.rationalize.get(q, " no idea")
            out.append([Completion(text, 5, "stop")])
        return out


Q1, Q2 = list(QUESTIONS)


def test_config_fields_have_descriptions_and_bounds():
    for name, field in RefineConfig.model_fields.items():
        assert field.description, name
    with pytest.raises(ValueError):
        RefineConfig(max_iterations=-1)
    with pytest.raises(ValueError):
        RefineConfig(n_shots=9)
    with pytest.raises(ValueError):
        RefineConfig(typo=1)


def test_loop_refines_wrong_answers_until_judged_correct():
    sampler = FakeSampler()
    states = refine_loop(
        sampler, [(Q1, "3 + 2 = 6. The answer is 6."), (Q2, QUESTIONS[Q2][1])], RefineConfig()
    )
    wrong, right = states
    assert wrong["answers"] == ["3 + 2 = 6. The answer is 6.", QUESTIONS[Q1][1]]
    assert wrong["verdicts"] == [False, True]
    assert '"3 + 2 = 6" is wrong' in wrong["feedback"][0]
    assert right["answers"] == [QUESTIONS[Q2][1]] and right["verdicts"] == [True]
    # batched: one feedback call for both, one refine call for the wrong one, one more feedback
    assert [c for c in sampler.calls if c[0] == "refine"] == [("refine", 1)]
    assert sum(c[0] == "feedback" for c in sampler.calls) == 3


def test_loop_limits_and_unparsable_verdicts():
    items = [(Q1, "3 + 2 = 6. The answer is 6."), (Q2, "4 - 1 = 2. The answer is 2.")]
    states = refine_loop(
        FakeSampler(stubborn=[Q1], garbage=[Q2]), items, RefineConfig(max_iterations=3)
    )
    stubborn, garbage = states
    assert len(stubborn["answers"]) == 4 and stubborn["verdicts"] == [False] * 4
    assert garbage["verdicts"] == [None] and garbage["answers"] == [items[1][1]]
    only_judge = refine_loop(FakeSampler(), items[:1], RefineConfig(max_iterations=0))
    assert only_judge[0]["verdicts"] == [False] and len(only_judge[0]["answers"]) == 1


def test_refine_samples_records_and_max_paths():
    samples = [
        {
            "id": "a",
            "question": Q1,
            "paths": ["3 + 2 = 6. The answer is 6.", QUESTIONS[Q1][1], "3 + 2 = 7"],
            "answers": ["6", "5", "7"],
        },
        {"id": "b", "question": Q2, "paths": ["I give up"], "answers": [None]},
    ]
    records, stats = refine_samples(FakeSampler(), samples, RefineConfig(max_paths=2))
    a, b = records
    assert a["paths"] == samples[0]["paths"] and a["answers"] == ["6", "5", "7"]
    assert a["refined_answers"] == ["5", "5", "7"]
    assert a["final_verdicts"] == [True, True, None]  # path 3 not judged (max_paths=2)
    assert a["iterations"] == [1, 0, 0] and a["feedback"][2] == [] and a["verdicts"][2] == []
    assert b["refined_answers"] == ["3"] and b["verdicts"] == [[False, True]]
    assert stats["n_judged"] == 3 and stats["n_refined"] == 2 and stats["n_answer_changed"] == 2
    assert stats["initial_verdict_correct"] == pytest.approx(1 / 3, abs=1e-3)


def test_refine_outputs_for_evaluation():
    outputs = [" 3 + 2 = 6. The answer is 6.\n\nQ: x", " 4 - 1 = 3. The answer is 3."]
    refined, stats = refine_outputs(FakeSampler(), [Q1, Q2], outputs, RefineConfig())
    assert refined == [QUESTIONS[Q1][1], outputs[1]]  # a judged-correct output is unchanged
    assert stats["n_changed"] == 1 and stats["n_refined"] == 1
    with pytest.raises(InputError, match="2 questions but 1 outputs"):
        refine_outputs(FakeSampler(), [Q1, Q2], outputs[:1], RefineConfig())
    assert refine_outputs(FakeSampler(), [], [], RefineConfig())[0] == []


# ---------------------------------------------------------------------------- labels


def test_labels_and_star_rationalization():
    golds = labels_by_id([{"id": "a", "answer": "#### 5"}, {"id": "b", "answer": "3"}])
    samples = [
        {"id": "a", "question": Q1, "paths": ["x. The answer is 5.", "y"], "answers": ["5", "6"]},
        {"id": "b", "question": Q2, "paths": ["z"], "answers": ["2"]},
    ]
    records, stats = label_records(samples, golds)
    assert [r["correct"] for r in records] == [[True, False], [False]]
    assert stats == {"n_questions": 2, "n_paths": 3, "n_correct_paths": 1, "n_solved": 1}
    sampler = FakeSampler(rationalize={Q2: " 4 - 1 = 3. The answer is 3."})
    counts = star_rationalize(sampler, records, RefineConfig(), n_shots=1)
    assert counts == {"n_rationalization_tried": 1, "n_rationalized": 1}
    assert records[1]["rationalization_correct"] and records[0]["rationalization"] is None
    assert len(sampler.prompts) == 1 and sampler.prompts[0].endswith(
        f"Q: {Q2} (Hint: the answer is 3.)\nA:"
    )
    # a rationale that talks about the hint, or misses the gold, is not kept
    for bad in (" The hint says 3. The answer is 3.", " 4 - 1 = 2. The answer is 2."):
        recs = copy.deepcopy(records)
        star_rationalize(FakeSampler(rationalize={Q2: bad}), recs, RefineConfig(), n_shots=1)
        assert not recs[1]["rationalization_correct"]


def test_label_errors_say_what_to_do():
    with pytest.raises(InputError, match="no gold answer.*rerun"):
        label_records([{"id": "x", "question": "q", "paths": [], "answers": []}], {})
    with pytest.raises(InputError, match="record 1"):
        labels_by_id([{"id": "x", "answer": "none"}])


# ---------------------------------------------------------------------------- filter by method


def _cfg(**kw) -> FilterConfig:
    base = {"min_agreement": 0.0, "max_paths_per_question": 0, "n_shots": 0}
    return FilterConfig(**(base | kw))


def _self_record(qid, refined_answers, verdicts, answers=None):
    n = len(refined_answers)
    return {
        "id": qid,
        "question": f"Question {qid}?",
        "paths": [f"initial {j}" for j in range(n)],
        "answers": answers or ["0"] * n,
        "feedback": [["fb"]] * n,
        "verdicts": [[v] for v in verdicts],
        "refined_paths": [
            f"Path {j}. The answer is {a}." if a else f"Path {j}."
            for j, a in enumerate(refined_answers)
        ],
        "refined_answers": refined_answers,
        "final_verdicts": verdicts,
        "iterations": [1] * n,
    }


def test_lmsi_is_unchanged_on_refined_records():
    samples = [
        {
            "id": "q1",
            "question": "Q1?",
            "paths": ["a. The answer is 5.", "b"] * 2,
            "answers": ["5", "6"] * 2,
        },
        {"id": "q2", "question": "Q2?", "paths": ["c. The answer is 1."], "answers": ["1"]},
    ]
    cfg = FilterConfig()
    assert filter_refined(copy.deepcopy(samples), cfg, "lmsi") == filter_samples(samples, cfg)


def test_self_keeps_verdict_correct_refined_paths():
    recs = [
        _self_record("a", ["5", "5", "7"], [True, None, True]),
        _self_record("b", ["1", "2"], [False, None]),
    ]
    rats, train, stats = filter_refined(recs, _cfg(), "self")
    assert rats[0]["kept"] == [True, False, True] and rats[0]["selected"]
    assert not rats[1]["selected"] and not any(rats[1]["kept"])
    cot = [t["completion"] for t in train if t["format"] == "zeroshot_cot"]
    assert cot == [" Path 0. The answer is 5.", " Path 2. The answer is 7."]
    direct = [t["completion"] for t in train if t["format"] == "zeroshot_direct"]
    assert direct == [" The answer is 5."]  # the first of the tied kept answers
    assert stats["n_verdict_correct"] == 2 and stats["n_verdict_none"] == 2
    assert stats["n_selected"] == 1 and stats["n_kept_paths"] == 2


def test_lmsi_self_requires_agreement_with_refined_majority():
    recs = [_self_record("a", ["5", "5", "7", "5"], [False, True, True, True])]
    _, train, _ = filter_refined(recs, _cfg(), "lmsi_self")
    cot = [t["completion"] for t in train if t["format"] == "fewshot_cot"]
    assert cot == [" Path 1. The answer is 5.", " Path 3. The answer is 5."]
    _, train, _ = filter_refined(
        recs, _cfg(), "lmsi_self", LmsiSelfParams(require_consistency=False)
    )
    assert len([t for t in train if t["format"] == "fewshot_cot"]) == 3
    # agreement 0.75 < min_agreement 0.8: nothing kept
    rats, train, _ = filter_refined(recs, _cfg(min_agreement=0.8), "lmsi_self")
    assert train == [] and not rats[0]["selected"]


def _labeled(qid, answers, gold, rationalization=None):
    rec = {
        "id": qid,
        "question": f"Question {qid}?",
        "paths": [f"Path {j}. The answer is {a}." for j, a in enumerate(answers)],
        "answers": answers,
        "gold": gold,
        "correct": [a == gold for a in answers],
    }
    if rationalization is not None:
        rec |= {"rationalization": rationalization, "rationalization_correct": True}
    return rec


def test_star_and_rest_em():
    recs = [
        _labeled("a", ["5", "4", "5", "5"], "5"),
        _labeled("b", ["1", "2"], "3", rationalization="1 + 2 = 3. The answer is 3."),
    ]
    _, train, stats = filter_refined(recs, _cfg(), "star")
    cot = [(t["id"], t["completion"]) for t in train if t["format"] == "zeroshot_cot"]
    assert cot == [
        ("a", " Path 0. The answer is 5."),
        ("a", " Path 2. The answer is 5."),
        ("a", " Path 3. The answer is 5."),
        ("b", " 1 + 2 = 3. The answer is 3."),
    ]
    # the hint never reaches the training prompt
    assert all("Hint" not in t["prompt"] for t in train)
    assert [t["completion"] for t in train if t["format"] == "zeroshot_direct"] == [
        " The answer is 5.",
        " The answer is 3.",
    ]
    assert stats["n_rationalized"] == 1
    _, train, stats = filter_refined(recs, _cfg(), "rest_em", RestEmParams(max_per_question=2))
    cot = [t["id"] for t in train if t["format"] == "zeroshot_cot"]
    assert cot == ["a", "a"]  # capped at 2, no rationalization
    assert stats["n_candidate_paths"] == 3 and stats["n_kept_paths"] == 2


def test_filter_refined_rejects_records_of_another_method():
    samples = [{"id": "q", "question": "Q?", "paths": ["a"], "answers": ["1"]}]
    with pytest.raises(InputError, match="missing key 'refined_paths'.*rerun the refine stage"):
        filter_refined(samples, _cfg(), "self")
    with pytest.raises(InputError, match="missing key 'gold'"):
        filter_refined(samples, _cfg(), "star")
    bad = _self_record("a", ["1", "2"], [True, True])
    bad["final_verdicts"] = [True]
    with pytest.raises(InputError, match="one entry per path"):
        filter_refined([bad], _cfg(), "self")
    with pytest.raises(InputError, match="not one of"):
        filter_refined(samples, _cfg(), "magic")


def test_verdict_precision_against_gold():
    recs = [
        {
            "id": "a",
            "answers": ["5", "6", "6", "5"],
            "refined_answers": ["5", "5", "6", "6"],
            "verdicts": [[True], [False, True], [True], [False, False]],
            "final_verdicts": [True, True, True, False],
        }
    ]
    out = verdict_precision(recs, {"a": "#### 5"})
    # initial: (T, right) (F, wrong) (T, wrong) (F, right)
    assert out["initial_precision"] == 0.5 and out["initial_recall"] == 0.5
    assert out["initial_accuracy"] == 0.5 and out["answer_accuracy"] == 0.5
    # final: (T, right) (T, right) (T, wrong) (F, wrong)
    assert out["final_precision"] == pytest.approx(2 / 3) and out["final_accuracy"] == 0.75
    assert out["fixed"] == 1 and out["broken"] == 1
    assert verdict_precision(recs, {}) == {}


def test_evaluate_with_inference_time_refinement(monkeypatch):
    # the plain output and the refined one are both scored; refinement uses the refine
    # section's prompt format (n_shots) -- the format meta-skill learning taught the model
    import selfimprove.sampling.factory as factory_mod
    from selfimprove.config.evaluation import EvaluateConfig
    from selfimprove.evaluation.evaluate import evaluate
    from selfimprove.evaluation.refine_at_eval import refine_for_evaluation

    first = {Q1: " 3 + 2 = 6. The answer is 6.", Q2: " 4 - 1 = 3. The answer is 3."}
    fake = FakeSampler(rationalize=first)  # the plain answers: Q1 wrong, Q2 right
    monkeypatch.setattr(factory_mod, "make_sampler", lambda *a, **k: fake)
    records = [
        {"id": f"q{i}", "question": q, "answer": f"#### {a}"}
        for i, (q, (a, _)) in enumerate(QUESTIONS.items())
    ]
    cfg = EvaluateConfig(
        styles=["zeroshot_cot", "zeroshot_direct"], sc_paths=0, refine_iterations=1
    )
    refined = refine_for_evaluation("unused", {"g": records}, cfg, 0, RefineConfig(n_shots=2))
    assert set(refined) == {"g__zeroshot_cot"}  # only CoT styles are refined
    n_prompts = len(fake.prompts)
    metrics, preds = evaluate("unused", {"g": records}, cfg, 0, refined=refined)
    assert all("Feedback:" not in p for p in fake.prompts[n_prompts:])  # evaluate only scores
    assert metrics["g"]["zeroshot_cot"]["strict"] == 0.5
    assert metrics["g"]["zeroshot_cot_refined"]["strict"] == 1.0  # Q1 fixed, Q2 kept
    assert metrics["g"]["zeroshot_cot_refined"]["refine"]["n_changed"] == 1
    assert "zeroshot_direct_refined" not in metrics["g"]  # only CoT styles are refined
    assert preds["g__zeroshot_cot_refined"][0]["output"] == QUESTIONS[Q1][1]
    feedback_prompts = [p for p in fake.prompts if p.endswith("Feedback:")]
    assert len(feedback_prompts) == 3  # both answers, then the rewrite of Q1
    assert all(p.count("Feedback:") == 3 for p in feedback_prompts)  # 2 exemplars + the item
    with pytest.raises(InputError, match="evaluate_refine stage makes them"):
        evaluate("unused", {"g": records}, cfg, 0)  # refining, but no refined outputs given
    assert (
        refine_for_evaluation(
            "unused", {"g": records}, cfg.model_copy(update={"refine_iterations": 0}), 0
        )
        == {}
    )  # off: nothing refined, no model loaded
