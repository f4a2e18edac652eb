"""Meta-skill corpus, its training examples, and the meta_skill step on a tiny model."""

from __future__ import annotations

import json

import pytest

from selfimprove.config import ConfigError, parse_params
from selfimprove.config.methods import MetaSkillConfig
from selfimprove.core.arith_check import check_solution
from selfimprove.core.io import InputError
from selfimprove.core.verdict import Feedback, parse_verdict
from selfimprove.data.arith import generate_arith
from selfimprove.methods.meta_skill import build_corpus, corpus_examples, meta_skill

SEED = generate_arith(3, steps=[1], seed=5)


def _rule(answers_per_q):
    return [
        [check_solution(r["question"], a, r["answer"]) for a in answers]
        for r, answers in zip(SEED, answers_per_q, strict=True)
    ]


def test_config_validation():
    for name, field in MetaSkillConfig.model_fields.items():
        assert field.description, name
    with pytest.raises(ValueError, match="teacher_model"):
        MetaSkillConfig(teacher="lm")
    with pytest.raises(ValueError, match="base_url"):
        MetaSkillConfig(teacher="openai", model="m")
    with pytest.raises(ValueError):
        MetaSkillConfig(teachr="rule")
    assert MetaSkillConfig().finetune.epochs == 2


def test_self_methods_need_a_seed_set():
    raw = {"data": {"train": {"source": "arith", "n": 8}}, "method": "self"}
    with pytest.raises(ConfigError, match="data.seed_set"):
        parse_params(raw)
    raw["data"]["seed_set"] = {"source": "arith", "n": 4}
    assert parse_params(raw).method == "self"
    assert parse_params(raw | {"method": "star"}).method == "star"
    with pytest.raises(ConfigError, match="method"):
        parse_params(raw | {"method": "selff"})


def test_build_corpus_counts_and_dedupes():
    gold0 = SEED[0]["answer"].rsplit("#### ", 1)[1]
    answers = [
        [f"The answer is {gold0}.", f"The answer is {gold0}.", "2 + 2 = 5. The answer is 9995."],
        ["I don't know", "The answer is 1."],
        ["The answer is 999."],
    ]
    feedbacks = _rule(answers)
    feedbacks[1][1] = None  # the teacher gave nothing usable
    feedbacks[2][0] = Feedback(True, "Looks right.")  # a false approval
    corpus, stats = build_corpus(SEED, answers, feedbacks, teacher="x")
    assert stats["n_items"] == 6 and stats["n_duplicates"] == 1
    assert stats["n_no_feedback"] == 1 and stats["n_false_approvals"] == 1
    assert stats["n_corpus"] == 3 == len(corpus)
    assert [c["verdict"] for c in corpus] == [True, False, False]
    assert [c["initial_correct"] for c in corpus] == [True, False, False]
    assert stats["verdict_agreement"] == 1.0
    assert all(c["refined_answer"].endswith(f"The answer is {c['gold']}.") for c in corpus)
    assert all(check_solution("", c["refined_answer"], c["gold"]).verdict for c in corpus)
    kept, _ = build_corpus(SEED, answers, feedbacks, drop_false_approvals=False)
    assert len(kept) == 4
    with pytest.raises(InputError, match="one list per seed question"):
        build_corpus(SEED, answers[:2], feedbacks)


def test_corpus_examples_formats():
    answers = [["The answer is 1."], ["3 + 3 = 7. The answer is 7."], []]
    corpus, _ = build_corpus(SEED, answers, _rule(answers))
    examples = corpus_examples(corpus, SEED, n_shots=1, qa_formats=["zeroshot_cot"])
    kinds = [e["format"] for e in examples]
    assert kinds == ["feedback", "refine", "feedback", "refine"] + ["zeroshot_cot"] * 3
    for e in examples:
        assert set(e) == {"id", "format", "prompt", "completion"}
        if e["format"] == "feedback":
            assert e["prompt"].endswith("\nFeedback:") and "Reference answer" not in e["prompt"]
            assert parse_verdict(e["completion"]) is False
        elif e["format"] == "refine":
            assert e["prompt"].endswith("Verdict: incorrect\nRefined answer:")
            assert "The answer is" in e["completion"] and "<<" not in e["completion"]
    assert len(corpus_examples(corpus, SEED, n_shots=0, qa_formats=[])) == 4


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from selfimprove.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("meta") / "tiny")


def _small_cfg(**kw) -> MetaSkillConfig:
    ft = {"epochs": 1, "batch_size": 8, "max_length": 512, "logging_steps": 1}
    return MetaSkillConfig(
        n_initial=2, max_new_tokens=12, n_shots=1, finetune=ft, **kw
    )


def test_non_self_methods_copy_the_model(tiny_model, tmp_path):
    out = tmp_path / "r0"
    corpus, info = meta_skill(tiny_model, [], out, _small_cfg(), "lmsi", seed=0)
    assert corpus == [] and info == {"enabled": False, "method": "lmsi", "n_corpus": 0}
    for f in tiny_model.iterdir():
        assert (out / f.name).read_bytes() == f.read_bytes()


def test_meta_skill_on_a_tiny_model(tiny_model, tmp_path):
    out = tmp_path / "r0"
    corpus, info = meta_skill(tiny_model, SEED, out, _small_cfg(), "self", seed=0, n_shots=1)
    assert info["enabled"] and info["teacher"] == "rule"
    # a random model answers wrongly: the rule teacher judges every answer (no "no feedback"),
    # 2 sampled answers + the gold solution per question (judge_gold_solution)
    assert info["n_items"] == 9 and info["n_no_feedback"] == 0
    assert info["n_corpus"] == len(corpus) >= 4
    n_ok = sum(c["verdict"] for c in corpus)
    assert n_ok == info["n_verdict_correct"] >= 3  # at least the three gold solutions
    # balance_verdicts: as many 'incorrect' feedback examples as 'correct' ones (at most)
    assert info["n_examples_feedback"] == n_ok + min(n_ok, len(corpus) - n_ok)
    assert info["n_examples_refine"] == sum(not c["verdict"] for c in corpus)
    assert info["n_examples_fewshot_cot"] == 3 and info["n_examples_zeroshot_cot"] == 3
    assert info["finetune"]["steps"] >= 1 and not info["finetune"]["skipped"]
    assert (out / "config.json").exists() and (out / "adapter").is_dir()
    json.dumps(corpus)  # the corpus is plain JSON


def test_meta_skill_errors(tiny_model, tmp_path):
    with pytest.raises(InputError, match="seed.jsonl is empty.*data.seed_set"):
        meta_skill(tiny_model, [], tmp_path / "a", _small_cfg(), "lmsi_self", seed=0)

    class Silent:
        name = "silent"

        def feedback(self, items):
            return [None] * len(items)

    with pytest.raises(InputError, match="corpus is empty.*9 without feedback"):
        meta_skill(tiny_model, SEED, tmp_path / "b", _small_cfg(), "self", 0, teacher=Silent())
    assert not (tmp_path / "b").exists()


def test_teacher_prompt_shots_are_separate_from_the_students(monkeypatch, tiny_model, tmp_path):
    # an untrained LM/OpenAI teacher gets meta_skill.teacher_n_shots exemplars even when the
    # student's prompts (refine.n_shots) are zero-shot
    import selfimprove.methods.teachers

    seen = {}

    class Stop(Exception):
        pass

    def fake_make_teacher(cfg, n_shots, max_new_tokens, sampler_cfg=None):
        seen.update(n_shots=n_shots, max_new_tokens=max_new_tokens)
        raise Stop

    monkeypatch.setattr(selfimprove.methods.teachers, "make_teacher", fake_make_teacher)
    cfg = _small_cfg(teacher="lm", teacher_model=str(tiny_model), teacher_n_shots=2)
    with pytest.raises(Stop):
        meta_skill(
            tiny_model,
            SEED,
            tmp_path / "r0",
            cfg,
            "self",
            seed=0,
            n_shots=0,
            feedback_max_new_tokens=7,
        )
    assert seen == {"n_shots": 2, "max_new_tokens": 7}


def test_without_gold_judging_and_balance(tiny_model, tmp_path):
    cfg = _small_cfg(judge_gold_solution=False, balance_verdicts=False)
    corpus, info = meta_skill(tiny_model, SEED, tmp_path / "r0", cfg, "self", seed=0, n_shots=0)
    assert info["n_items"] == 6
    assert info["n_examples_feedback"] == len(corpus)
