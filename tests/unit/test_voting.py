from __future__ import annotations

import pytest

from selfimprove.core.voting import agreement_histogram, maj_at_k, majority_vote


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["18"], ("18", 1.0)),
        (["18", "18", "17"], ("18", 2 / 3)),
        (["17", "18", "18"], ("18", 2 / 3)),
        (["18", None, None, None], ("18", 0.25)),  # None counts in the denominator
        ([None, "5", None, "5", "6"], ("5", 0.4)),
        # ties: the tied answer seen first wins
        (["7", "18", "18", "7"], ("7", 0.5)),
        (["18", "7", "7", "18"], ("18", 0.5)),
        (["1", "2", "3"], ("1", 1 / 3)),
        ([None, "3", "2", "2", "3"], ("3", 0.4)),
        # a lower-count answer seen first does not win
        (["1", "2", "2"], ("2", 2 / 3)),
        ([None, None], (None, 0.0)),
        ([], (None, 0.0)),
    ],
)
def test_majority_vote(answers: list[str | None], expected: tuple[str | None, float]) -> None:
    majority, agreement = majority_vote(answers)
    assert majority == expected[0]
    assert agreement == pytest.approx(expected[1])


def test_majority_vote_accepts_tuple_and_is_deterministic() -> None:
    answers = ("b", "a", "a", "b", "c")
    assert {majority_vote(answers) for _ in range(5)} == {("b", 0.4)}


def test_maj_at_k() -> None:
    answers = ["17", "18", "18", "17", "17"]
    assert maj_at_k(answers, 1) == "17"
    assert maj_at_k(answers, 2) == "17"  # tie: first wins
    assert maj_at_k(answers, 3) == "18"
    assert maj_at_k(answers, 5) == "17"
    assert maj_at_k(answers, 100) == "17"
    assert maj_at_k([None, "3"], 1) is None
    with pytest.raises(ValueError, match="k must be >= 1"):
        maj_at_k(answers, 0)


def test_agreement_histogram() -> None:
    assert agreement_histogram([]) == [0] * 10
    assert agreement_histogram([0.0, 1.0, 0.999, 0.5]) == [1, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    # fractions k/n that sit on a bin edge land in the bin they start
    edges = [k / 10 for k in range(10)]
    assert agreement_histogram(edges) == [1] * 10
    assert agreement_histogram([3 / 10, 6 / 10, 7 / 10], bins=10)[3] == 1
    assert agreement_histogram([1 / 3, 2 / 3], bins=3) == [0, 1, 1]
    assert agreement_histogram([0.2, 0.9], bins=1) == [2]
    assert sum(agreement_histogram([i / 32 for i in range(33)])) == 33


@pytest.mark.parametrize("bad", [-0.1, 1.01, float("nan")])
def test_agreement_histogram_rejects_out_of_range(bad: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        agreement_histogram([0.5, bad])


def test_agreement_histogram_rejects_bad_bins() -> None:
    with pytest.raises(ValueError, match="bins"):
        agreement_histogram([0.5], bins=0)
