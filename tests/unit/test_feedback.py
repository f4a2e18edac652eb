"""The rule-based checker, the verdict parser and the feedback/refinement prompts."""

from __future__ import annotations

import random
import re
from fractions import Fraction

import pytest

from selfimprove.config.methods import MAX_FEEDBACK_SHOTS
from selfimprove.core.arith_check import (
    check_solution,
    evaluate_expression,
    find_steps,
    format_value,
    value_matches,
)
from selfimprove.core.prompts.feedback import (
    build_feedback_prompt,
    build_refine_prompt,
    feedback_prefix,
)
from selfimprove.core.verdict import (
    clean_refined,
    feedback_completion,
    parse_verdict,
    split_feedback,
)
from selfimprove.data.arith import generate_arith
from selfimprove.training.warmstart import solution_to_rationale

# ---------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("20 - 4 - 6", 10),
        ("100 / 5 / 2", 10),
        ("5 x 3", 15),
        ("5 \u00d7 3", 15),
        ("12 \u00f7 4", 3),
        ("9 \u2212 4", 5),
        ("$1,200 / 4", 300),
        ("0.5 * 10", 5),
        ("7 / 2", Fraction(7, 2)),
        ("-3 + 5", 2),
    ],
)
def test_evaluate_expression(expr, value):
    assert evaluate_expression(expr) == value


@pytest.mark.parametrize("expr", ["5 +", "(2 + 3", "2 + 3)", "4 / 0", "abc", "", "2 ^ 3"])
def test_evaluate_expression_unreadable(expr):
    assert evaluate_expression(expr) is None


def test_value_matches_rounding_and_truncation():
    assert value_matches("3.33", Fraction(10, 3))
    assert value_matches("3.3", Fraction(10, 3))
    assert value_matches("3", Fraction(7, 2))  # floor
    assert value_matches("4", Fraction(7, 2))  # round half up
    assert not value_matches("4", Fraction(10, 3))
    assert not value_matches("3.4", Fraction(10, 3))
    assert value_matches("$1,600", Fraction(1600))
    assert value_matches("10.0", Fraction(10))
    assert not value_matches("-2", Fraction(2))
    assert format_value(Fraction(1, 3)) == "0.33"
    assert format_value(Fraction(1, 8)) == "0.125"


def _steps(text):
    return [(s.expression, s.written, s.correct, s.ok, s.source) for s in find_steps(text)]


def test_find_steps_forms():
    assert _steps("So 5 x 3 = 15 dollars.") == [("5 x 3", "15", "15", True, "text")]
    assert _steps("They lose 3 - 5 = -2.") == [("3 - 5", "-2", "-2", True, "text")]
    assert _steps("(3 + 2) * 4 = 21 apples") == [("(3 + 2) * 4", "21", "20", False, "text")]
    assert _steps("1,000 + 2 = 1,002") == [("1,000 + 2", "1,002", "1002", True, "text")]
    assert _steps("price 3.5+1.5=5") == [("3.5+1.5", "5", "5", True, "text")]


def test_find_steps_chains_and_order():
    steps = _steps("First 2 * 3 = 6, then 6 + 4 = 11 = 11. Finally 11 - 1 = 10.")
    assert [s[0] for s in steps] == ["2 * 3", "6 + 4", "11 - 1"]
    assert [s[3] for s in steps] == [True, False, True]
    chained = _steps("3 + 2 = 5 + 1 = 7")
    assert chained == [("3 + 2", "5", "5", True, "text"), ("5 + 1", "7", "6", False, "text")]


def test_find_steps_annotations():
    # GSM8K style: the visible expression before "<<" is the same step, counted once
    text = "She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs and makes 9 * 2 = <<9*2=18>>18 dollars."
    assert _steps(text) == [
        ("16-3-4", "9", "9", True, "annotation"),
        ("9*2", "18", "18", True, "annotation"),
    ]
    # the annotation is right but the number shown after it is not
    assert _steps("<<5*6=30>>35")[0][3] is False
    # a wrong annotation
    assert _steps("<<5*6=35>>35")[0][2:4] == ("30", False)
    # unreadable annotation: kept, but unverifiable
    assert _steps("<<a*b=c>>")[0][3] is None


@pytest.mark.parametrize(
    "text",
    [
        "He has 12 apples and 3 pears.",
        "Q: What is 5 + 3?",
        "Kids aged 3-5 = toddlers",  # "3-5" is a range, "= toddlers" no number
        "The year 2023 = a good year",
        "It is 3x as big: 3x = 12",
        "x = 5",
    ],
)
def test_find_steps_no_false_positives(text):
    assert all(s.ok is not False for s in find_steps(text)), _steps(text)


# ---------------------------------------------------------------------------- check_solution


def test_check_solution_correct_with_and_without_steps():
    fb = check_solution("q", "3 + 2 = 5. The answer is 5.", "#### 5")
    assert fb.verdict and fb.first_error is None and "correct" in fb.text
    fb = check_solution("q", "The answer is 1,600.", "#### 1,600")
    assert fb.verdict and fb.text == "The answer 1600 is correct."
    assert check_solution("q", "It is 18.0 dollars.", "18").verdict


def test_check_solution_names_the_first_wrong_step():
    fb = check_solution("q", "2 * 3 = 7. Then 7 + 1 = 9. The answer is 9.", "#### 7")
    assert not fb.verdict
    assert fb.first_error == {
        "kind": "step",
        "step": 1,
        "expression": "2 * 3",
        "written": "7",
        "correct": "6",
    }
    assert '"2 * 3 = 7"' in fb.text and "is 6, not 7" in fb.text
    # later steps wrong only: the first wrong one is named
    fb = check_solution("q", "2 * 3 = 6. 6 + 1 = 8. 8 - 1 = 6.", "7")
    assert fb.first_error["step"] == 2 and fb.first_error["correct"] == "7"


def test_wrong_step_with_right_final_answer_is_incorrect():
    fb = check_solution("q", "2 + 2 = 5. So 4 apples. The answer is 4.", "4")
    assert not fb.verdict and fb.first_error["kind"] == "step"


def test_wrong_final_answer_does_not_reveal_gold():
    fb = check_solution("q", "20 + 12 = 32. The answer is 32.", "#### 8")
    assert not fb.verdict
    assert fb.first_error == {"kind": "answer", "answer": "32", "gold": "8"}
    assert "32" in fb.text and "8" not in fb.text


def test_no_final_answer():
    fb = check_solution("q", "I do not know.", "#### 8")
    assert not fb.verdict and fb.first_error == {"kind": "no_answer"}


def test_text_after_a_stop_sequence_is_ignored():
    text = "3 + 2 = 5. The answer is 5.\n\nQ: next one. 2 + 2 = 5. The answer is 9."
    assert check_solution("q", text, "5").verdict


def test_unverifiable_steps_are_skipped():
    fb = check_solution("q", "Split 5 / 0 = 0 ways; 3 + 3 = 6. The answer is 6.", "6")
    assert fb.verdict


def test_bad_gold_raises():
    with pytest.raises(ValueError, match="has no number"):
        check_solution("q", "The answer is 3.", "no number")


def test_rule_teacher_on_generated_problems():
    """Gold solutions pass; a corrupted result is caught with the right correction."""
    rng = random.Random(0)
    records = generate_arith(40, steps=[1, 2, 3], seed=3)
    for rec in records:
        for text in (rec["answer"], solution_to_rationale(rec["answer"])):
            assert check_solution(rec["question"], text, rec["answer"]).verdict, text
        rationale = solution_to_rationale(rec["answer"])
        steps = [s for s in find_steps(rationale) if s.ok]
        target = rng.choice(steps)
        wrong = str(int(target.written) + rng.choice([1, 2, 10]))
        bad = (
            rationale[: target.start]
            + rationale[target.start : target.end].replace(f"= {target.written}", f"= {wrong}")
            + rationale[target.end :]
        )
        fb = check_solution(rec["question"], bad, rec["answer"])
        assert not fb.verdict
        assert fb.first_error["kind"] == "step"
        assert fb.first_error["written"] == wrong and fb.first_error["correct"] == target.correct


# ---------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Fine.\nVerdict: correct", True),
        ("Fine.\nVerdict: correct.", True),
        ("Bad.\nVerdict: incorrect", False),
        ("VERDICT: INCORRECT", False),
        ("verdict:correct", True),
        ("**Verdict:** incorrect", False),
        ("Verdict: not correct", False),
        ("Verdict: wrong", False),
        ("Verdict: right", True),
        ("- Verdict: correct", True),
        ("Verdict: incorrect\nVerdict: correct", False),  # the first verdict line counts
        ("Fine.", None),
        ("Verdict: unsure", None),
        ("Verdict:", None),
        ("The verdict: correct", None),  # not a verdict line
        ("Verdict: correctness unclear", None),
        ("", None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) is verdict


def test_feedback_completion_round_trips():
    for verdict in (True, False):
        completion = feedback_completion("Step 1 is wrong:\n 2 + 2 is 4.", verdict)
        assert parse_verdict(completion) is verdict
        assert split_feedback(completion) == ("Step 1 is wrong: 2 + 2 is 4.", verdict)


def test_split_feedback_cuts_the_rest():
    text = " It is wrong.\nVerdict: incorrect\nRefined answer: 2 + 2 = 4."
    assert split_feedback(text) == ("It is wrong.", False)
    assert split_feedback("  no verdict\n here ") == ("no verdict here", None)


def test_clean_refined():
    assert (
        clean_refined(" 2 + 2 = 4.\nThe answer is 4.\n\nQ: more") == "2 + 2 = 4. The answer is 4."
    )
    assert clean_refined(" x\nVerdict: correct") == "x"
    assert clean_refined("") == ""


# ---------------------------------------------------------------------------- prompts


def test_exemplars_show_every_kind_of_feedback():
    prefix = feedback_prefix(MAX_FEEDBACK_SHOTS)
    blocks = prefix.strip().split("\n\n")
    assert len(blocks) == MAX_FEEDBACK_SHOTS
    verdicts = [parse_verdict(b) for b in blocks]
    assert verdicts == [False, True, False, True]
    assert "is wrong:" in blocks[0] and "the steps do not solve" in blocks[2]
    for block in blocks:  # a refined answer exactly when the verdict is incorrect
        assert ("Refined answer:" in block) is (parse_verdict(block) is False)
        if "Refined answer:" in block:
            refined = block.split("Refined answer: ")[1]
            gold = re.search(r"The answer is (\d+)", refined).group(1)
            assert check_solution("", refined, gold).verdict


def test_prefix_is_shared_and_question_independent():
    a = build_feedback_prompt("Q1?", "A1.", 3)
    b = build_feedback_prompt("Q2?", "A2.", 3)
    r = build_refine_prompt("Q3?", "A3.", "fb", 3)
    assert a[0] == b[0] == r[0] == feedback_prefix(3)
    assert a[0].count("\nVerdict:") == 3
    assert build_feedback_prompt("Q", "A", 0)[0] == ""
    with pytest.raises(ValueError, match="n_shots"):
        feedback_prefix(MAX_FEEDBACK_SHOTS + 1)


def test_refine_prompt_continues_the_feedback_completion():
    """Prompt + the model's feedback completion + "\\nRefined answer:" == the refine prompt, so
    a model trained on both tasks sees one consistent document."""
    question, answer = "Tom has 3 apples and buys 2. How many?", "3 + 2 = 6. The answer is 6."
    fb = check_solution(question, answer, "5")
    _, fsuffix = build_feedback_prompt(question, answer, 2)
    _, rsuffix = build_refine_prompt(question, answer, fb.text, 2)
    assert rsuffix == fsuffix + feedback_completion(fb.text, False) + "\nRefined answer:"


def test_multiline_answers_become_one_line():
    _, suffix = build_feedback_prompt("Q?", "3 + 2 = 5.\nThe answer is 5.\n\nQ: junk", 0)
    assert suffix == "Q: Q?\nA: 3 + 2 = 5. The answer is 5.\nFeedback:"


def test_teacher_prompt_has_reference_lines():
    prefix, suffix = build_feedback_prompt("Q?", "A.", 2, reference="7")
    assert prefix.count("Reference answer:") == 2
    assert "Reference answer: 7\n" in suffix
    assert "Reference answer" not in build_feedback_prompt("Q?", "A.", 2)[0]


def test_wrong_answer_without_calculations_does_not_claim_they_are_right():
    fb = check_solution("q", "I guess 12. The answer is 12.", "#### 8")
    assert fb.text.startswith("The answer 12 is wrong") and "calculations" not in fb.text
