from __future__ import annotations

import pytest

from selfimprove.core.answers import (
    STOP_SEQUENCES,
    answers_match,
    cut_at_stop,
    extract_answer,
    extract_flexible,
    extract_strict,
    gold_answer,
    normalize_number,
    strict_answer_span,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("18", "18"),
        ("18.0", "18"),
        ("18.00", "18"),
        ("0.50", "0.5"),
        ("-3", "-3"),
        ("1,600", "1600"),
        ("1,234,567.890", "1234567.89"),
        ("$18", "18"),
        ("$1,600.00", "1600"),
        ("-$5", "-5"),
        ("$-5", "-5"),
        ("  18.  ", "18"),
        ("18.", "18"),
        ("18 dollars", "18"),
        ("18 dollars and 5 cents", "18"),
        ("50%", "50"),
        (".5", "0.5"),
        ("007", "7"),
        ("0.0", "0"),
        ("-0", "0"),
        ("\u22127", "-7"),  # Unicode minus
        ("100000000000000000000000000000001", "100000000000000000000000000000001"),  # no rounding
        ("1600", "1600"),  # not "1.6E+3"
        ("0.0000001", "0.0000001"),  # not "1E-7"
        ("about 12 eggs", "12"),
    ],
)
def test_normalize_number(raw: str, expected: str) -> None:
    assert normalize_number(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "no number", "$", "-", ",", "."])
def test_normalize_number_none(raw: str) -> None:
    assert normalize_number(raw) is None


def test_cut_at_stop() -> None:
    assert STOP_SEQUENCES == ("\n\nQ:", "\nQ:")
    assert cut_at_stop("a\n\nQ: b\nQ: c") == "a"
    assert cut_at_stop("a\nQ: b") == "a"
    assert cut_at_stop("a Q: b") == "a Q: b"  # only a "Q:" at a line start is a stop
    assert cut_at_stop("abc", stops=["b"]) == "a"
    assert cut_at_stop("abc", stops=[]) == "abc"
    assert cut_at_stop("") == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 18.", "18"),
        ("The answer is 18", "18"),  # at the very end (lm-eval's regex gives "1")
        ("The answer is 18\n", "18"),  # before a newline
        ("The answer is 18\nSo it is.", "18"),
        ("the answer is 18.", "18"),
        ("So the answer is: 18.", "18"),
        ("The answer is $18.", "18"),
        ("The answer is $1,600.", "1600"),
        ("The answer is -3.", "-3"),
        ("The answer is 18.0.", "18"),
        ("The answer is 0.50.", "0.5"),
        ("The answer is 18 dollars.", "18"),
        ("The answer is **18**.", "18"),
        ("The final answer is \\boxed{18}.", "18"),
        ("Answer is 7", "7"),
        ("#### 1,600", "1600"),
        ("Janet makes 9 * 2 = 18.\n#### 18", "18"),
        # the LAST "answer is" wins
        ("I thought the answer is 17. No wait, the answer is 18.", "18"),
        # an "answer is" without a number after it does not hide an earlier one
        ("The answer is 18. I hope the answer is right.", "18"),
        # a new exemplar after the answer must not change it
        ("9 * 2 = 18. The answer is 18.\n\nQ: Tom has 5 apples. A: The answer is 5.", "18"),
        ("The answer is 18.\nQ: next one. The answer is 3.", "18"),
    ],
)
def test_extract_strict(text: str, expected: str) -> None:
    assert extract_strict(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "She makes 18 dollars.",
        "The answer is eighteen.",
        "",
        "9 * 2 = 18.\n\nQ: x. The answer is 5.",  # the strict answer is after the stop
    ],
)
def test_extract_strict_none(text: str) -> None:
    assert extract_strict(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She has 16 - 3 - 4 = 9 eggs and makes 9 * 2 = $18.", "18"),
        ("So 21 - 15 = 6", "6"),
        ("The total is 1,600 dollars.", "1600"),
        ("It drops to -3 degrees.", "-3"),
        ("From 3-5 people", "5"),  # a hyphen between numbers is not a minus sign
        ("He spent 23 - 15", "15"),  # "- 15" with a space is subtraction, not -15
        ("Pay $12.50 now.", "12.5"),
        ("Total: 18.0", "18"),
        ("9 * 2 = 18.\n\nQ: Tom has 5 apples.", "18"),
        ("9 * 2 = 18\nQ: Tom has 5 apples.", "18"),
    ],
)
def test_extract_flexible(text: str, expected: str) -> None:
    assert extract_flexible(text) == expected


def test_extract_flexible_none() -> None:
    assert extract_flexible("no digits at all") is None
    assert extract_flexible("\n\nQ: 5 apples") is None


def test_extract_answer_prefers_strict() -> None:
    assert extract_answer("The answer is 18. It took 3 steps.") == "18"
    assert extract_answer("It took 3 steps to get 18") == "18"
    assert extract_answer("It took 3 steps. 18 dollars it is, 4 times.") == "4"
    assert extract_answer("I don't know.") is None


def test_strict_answer_span() -> None:
    text = "So 18. The answer is $18. Done."
    start, end, answer = strict_answer_span(text)
    assert text[start:end] == "answer is $18"
    assert answer == "18"
    assert strict_answer_span("no answer") is None


@pytest.mark.parametrize(
    ("solution", "expected"),
    [
        ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 18", "18"),
        ("The value rose to $<<80,000*1.5=120,000>>120,000.\n#### 70,000", "70000"),
        ("#### -4", "-4"),
        ("18", "18"),
        (" 18.0 ", "18"),
        ("$1,600", "1600"),
    ],
)
def test_gold_answer(solution: str, expected: str) -> None:
    assert gold_answer(solution) == expected


@pytest.mark.parametrize("solution", ["", "no number", "text 5\n#### none"])
def test_gold_answer_raises(solution: str) -> None:
    with pytest.raises(ValueError, match="has no number"):
        gold_answer(solution)


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("18", "18", True),
        ("18.0", "18", True),
        ("18.00", "18.0", True),
        ("$1,600", "1600", True),
        ("0.5", ".50", True),
        ("-3", "3", False),
        ("17", "18", False),
        ("1.8", "18", False),
        (None, "18", False),
        ("abc", "18", False),
        ("18", "abc", False),
    ],
)
def test_answers_match(pred: str | None, gold: str, expected: bool) -> None:
    assert answers_match(pred, gold) is expected
