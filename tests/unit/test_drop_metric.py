"""DROP EM/F1: hand-checked cases of the official drop_eval algorithm, extraction, span split."""

from __future__ import annotations

import pytest

from selfimprove.core.io import InputError
from selfimprove.evaluation.metrics.drop import (
    drop_em_f1,
    drop_record_problem,
    extract_drop_answer,
    normalize_span,
    score_drop,
    score_drop_one,
    split_spans,
)

# (prediction, golds, expected (em, f1)); every f1 worked out by hand in the comment.
CASES = [
    # numbers are canonicalized through float(): 7 == 7.0 == 7.00, 50.60 == 50.6
    ("7", ["7.0"], (1.0, 1.0)),
    ("50.60", ["50.6"], (1.0, 1.0)),
    ("1,700", ["1700"], (1.0, 1.0)),  # "1,700" -> punctuation removed -> 1700.0
    # numbers must match: a gold with numbers scores 0 against a span without them
    ("seven", ["7"], (0.0, 0.0)),
    ("8", ["7"], (0.0, 0.0)),
    ("12 yards", ["13 yards"], (0.0, 0.0)),  # "yards" overlaps, but 12 != 13
    ("12 yards", ["12"], (0.0, 0.67)),  # P = 1/2, R = 1 -> 2/3
    ("Bears 7", ["Bears"], (0.0, 0.67)),  # gold has no number: no number rule; P = 1/2
    # articles, punctuation, case, whitespace, hyphens
    ("the Chicago Bears", ["Chicago Bears"], (1.0, 1.0)),
    ("A  Bears!", ["bears"], (1.0, 1.0)),
    ("U.S.", ["US"], (1.0, 1.0)),
    ("Green-Bay", ["green bay"], (1.0, 1.0)),
    ("the Bears", ["Chicago Bears"], (0.0, 0.67)),  # {bears} vs {chicago, bears}: P 1, R 1/2
    ("New England Patriots", ["Patriots"], (0.0, 0.5)),  # P 1/3, R 1
    ("the the Bears Bears", ["Bears"], (0.0, 1.0)),  # bags are sets; EM compares strings
    # dates: same bag in another order is F1 1 but not EM
    ("October 5, 1998", ["5 October 1998"], (0.0, 1.0)),
    # one shared gold number is enough to pass the number rule: {october, 1998} common, 2/3
    ("October 6, 1998", ["5 October 1998"], (0.0, 0.67)),
    # official quirk: punctuation stays only in tokens that parse as numbers, so "$23.6" -> 236
    ("$23.6", ["23.6"], (0.0, 0.0)),
    # multi-span: optimal one-to-one alignment, mean over max(len(pred), len(gold)) slots
    (["Smith"], [["Smith", "Jones"]], (0.0, 0.5)),  # [1, 0]
    (["Smith", "Jones", "Brown"], [["Smith", "Jones"]], (0.0, 0.67)),  # [1, 1, 0] / 3
    (["Jones", "Smith"], [["Smith", "Jones"]], (1.0, 1.0)),  # order does not matter
    (["10", "Smith"], [["Smith", "12"]], (0.0, 0.5)),  # smith 1; 10 vs 12 -> 0
    (["Smith", "Smith"], [["Smith"]], (0.0, 0.5)),  # same set but 2 spans vs 1: no EM
    (["Tom Smith", "Jones"], [["Smith", "Bob Jones"]], (0.0, 0.67)),  # 2/3 and 2/3
    ("Smith", [["Smith", "Jones"]], (0.0, 0.5)),  # a string is one span
    # one span vs two: each pair P 1/3, R 1 -> 0.5, but one span aligns once: [0.5, 0] -> 0.25
    ("Smith and Jones", [["Smith", "Jones"]], (0.0, 0.25)),
    # several gold alternatives: the max of each metric
    ("49.7", ["50.6", "49.7"], (1.0, 1.0)),
    ("Bears", ["Chicago Bears", "Bears"], (1.0, 1.0)),
    # empty predictions
    ("", ["7"], (0.0, 0.0)),
    ([], ["Bears"], (0.0, 0.0)),
    # blank gold alternatives are skipped (official: first span blank)
    ("", ["", "7"], (0.0, 0.0)),
    ("x", [" "], (0.0, 0.0)),
]


@pytest.mark.parametrize(("pred", "golds", "expected"), CASES)
def test_hand_checked(pred, golds, expected):
    assert drop_em_f1(pred, golds) == expected


def test_normalize_span():
    assert normalize_span("The  Green-Bay Packers!") == "green bay packers"
    assert normalize_span("7 touchdowns") == normalize_span("7.0 Touchdowns.") == "7.0 touchdowns"
    assert normalize_span("(7)") == "7.0"
    assert normalize_span("50.6%") == "506.0"  # official quirk (see extract_drop_answer)
    assert normalize_span("an apple") == "apple"
    assert normalize_span("the") == ""


def test_f1_values_and_rounding_to_two_decimals():
    assert drop_em_f1("p q r s x", ["p q r"])[1] == 0.75  # P 3/5, R 1
    assert drop_em_f1("b c x", ["b c"])[1] == 0.8  # P 2/3, R 1
    assert drop_em_f1("Tom Jones Smith", ["Bob Tom"])[1] == 0.4  # P 1/3, R 1/2
    assert drop_em_f1("v w x y z bears", ["bears"])[1] == 0.29  # P 1/6, R 1 -> 2/7


def test_symmetric_in_span_order_and_gold_order():
    golds = [["Luis Ortega", "Ben Carter", "Tom Walsh"]]
    preds = [["Ben Carter", "Tom Walsh", "Luis Ortega"], ["Tom Walsh", "Luis Ortega", "Ben Carter"]]
    for p in preds:
        assert drop_em_f1(p, golds) == (1.0, 1.0)
    assert drop_em_f1(["Ortega", "Carter"], golds) == drop_em_f1(["Carter", "Ortega"], golds)


def test_bad_types_raise():
    with pytest.raises(TypeError):
        drop_em_f1("7", "7")  # a bare string is not a list of alternatives
    with pytest.raises(TypeError):
        drop_em_f1(7, ["7"])
    with pytest.raises(TypeError):
        drop_em_f1("7", [[7]])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("He kicked 3 field goals. So the answer is 3.", "3"),
        ("So the answer is 50.6.", "50.6"),
        ("So the answer is 50.6", "50.6"),
        ("So the answer is 50.6.\n\nPassage: The Owls won. So the answer is 9.", "50.6"),
        ("The answer is: **Tom Brady and Randy Moss**.", "Tom Brady and Randy Moss"),
        ("first answer is 2, then the ANSWER IS 4.", "4"),
        ("So the answer is St. Louis.", "St. Louis"),
        ("So the answer is U.S.", "U.S"),  # normalizes like "U.S." anyway
        ("So the answer is 38.5%.", "38.5"),
        ("So the answer is $1,250.", "1,250"),
        ("So the answer is -3.", "-3"),
        ("  Chicago Bears \n", "Chicago Bears"),
        ("So the answer is", ""),
        ("", ""),
    ],
)
def test_extract_drop_answer(text, expected):
    assert extract_drop_answer(text) == expected


def test_extracted_decimal_scores_against_gold():
    pred = extract_drop_answer("74.2 - 23.6 = 50.6. So the answer is 50.6.")
    assert drop_em_f1(pred, ["50.6", "49.7"]) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("text", "spans"),
    [
        ("Tom Brady, Randy Moss and Wes Welker", ["Tom Brady", "Randy Moss", "Wes Welker"]),
        ("Tom Brady, Randy Moss, and Wes Welker", ["Tom Brady", "Randy Moss", "Wes Welker"]),
        ("A; B", ["A", "B"]),
        ("1,700 francs", ["1,700 francs"]),
        ("Smith", ["Smith"]),
        ("", []),
    ],
)
def test_split_spans(text, spans):
    assert split_spans(text) == spans


def test_split_spans_recovers_multi_span_credit():
    gold = [["Hector Holt", "Omar Garner"]]
    # one 5-word span vs two: P 2/5, R 1 -> 4/7 for one slot of two -> 2/7
    assert drop_em_f1("Hector Holt and Omar Garner", gold) == (0.0, 0.29)
    assert drop_em_f1(split_spans("Hector Holt and Omar Garner"), gold) == (1.0, 1.0)


def test_score_drop_one_and_score_drop():
    assert score_drop_one("So the answer is 2.", ["2"]) == (1.0, 1.0)
    assert score_drop_one(["Smith", "Jones"], [["Jones", "Smith"]]) == (1.0, 1.0)
    out = score_drop(
        [
            {"prediction": "So the answer is 50.6.", "answers": ["50.6", "49.7"]},
            {"prediction": "the Bears", "answers": ["Chicago Bears"]},
            {"prediction": ["Smith"], "answers": [["Smith", "Jones"]]},
            {"prediction": "So the answer is 8.", "answers": [["7"]]},
        ]
    )
    assert out["n"] == 4
    assert out["em"] == pytest.approx(0.25)
    assert out["f1"] == pytest.approx((1.0 + 0.67 + 0.5 + 0.0) / 4)
    assert score_drop([]) == {"n": 0, "em": None, "f1": None}


@pytest.mark.parametrize(
    "record",
    [
        {"prediction": 7, "answers": ["7"]},
        {"prediction": "7", "answers": "7"},
        {"prediction": "7", "answers": []},
        {"prediction": "7", "answers": [[]]},
        {"prediction": "7", "answers": [[7]]},
        {"prediction": "7"},
        ["7"],
    ],
)
def test_bad_records(record):
    assert drop_record_problem(record)
    with pytest.raises(InputError, match="record 1"):
        score_drop([{"prediction": "7", "answers": ["7"]}, record])
