"""Majority voting over sampled answers (self-consistency), deterministic on ties."""

from __future__ import annotations

import math
from collections.abc import Sequence


def majority_vote(answers: Sequence[str | None]) -> tuple[str | None, float]:
    """The most common non-``None`` answer and its agreement (its count / ``len(answers)``).

    ``None`` answers (paths with no number) count in the denominator but never win. On a tie
    the answer that appears first wins, so the result depends only on the input order.
    No answers, or only ``None`` answers, give ``(None, 0.0)``.

    >>> majority_vote(["18", "17", "18", None])
    ('18', 0.5)
    >>> majority_vote(["7", "18", "18", "7"])  # tie: "7" appeared first
    ('7', 0.5)
    >>> majority_vote([None, None])
    (None, 0.0)
    """
    counts: dict[str, int] = {}  # insertion order = order of first occurrence
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return None, 0.0
    best = max(counts, key=counts.__getitem__)  # max keeps the first of equal maxima
    return best, counts[best] / len(answers)


def maj_at_k(answers: Sequence[str | None], k: int) -> str | None:
    """Majority answer over the first ``k`` answers (maj@k); ``k`` must be >= 1.

    >>> maj_at_k(["17", "18", "18"], 1), maj_at_k(["17", "18", "18"], 3)
    ('17', '18')
    """
    if k < 1:
        raise ValueError(f"maj_at_k: k must be >= 1, got {k}")
    return majority_vote(list(answers)[:k])[0]


def agreement_histogram(agreements: Sequence[float], bins: int = 10) -> list[int]:
    """Counts of agreements in ``bins`` equal-width bins over [0, 1].

    Bin ``i`` holds values in ``[i/bins, (i+1)/bins)``; the last bin also holds 1.0. Values a
    float rounding step below a bin edge (``3/10 * 10``) land in the upper bin.

    >>> agreement_histogram([0.0, 0.25, 0.5, 0.5, 1.0], bins=4)
    [1, 1, 2, 1]
    >>> agreement_histogram([0.3, 0.7, 1.0])
    [0, 0, 0, 1, 0, 0, 0, 1, 0, 1]
    """
    if bins < 1:
        raise ValueError(f"agreement_histogram: bins must be >= 1, got {bins}")
    counts = [0] * bins
    for a in agreements:
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"agreement_histogram: agreement {a!r} is outside [0, 1]")
        counts[min(int(a * bins + 1e-9), bins - 1)] += 1
    return counts


def answer_entropy(answers: Sequence[str | None]) -> float:
    """Shannon entropy (bits) of the answers a question's paths give, ``None`` left out: 0 when
    every path that answers gives the same answer (or none answers), log2(m) when m paths give
    m different answers. A collapse monitor (falling entropy = less diverse answers).

    >>> answer_entropy(["4", "4", "4", None]), answer_entropy(["1", "2", "3", "4"])
    (0.0, 2.0)
    >>> answer_entropy(["4", "4", "5", "6"])
    1.5
    """
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    total = sum(counts.values())
    if not total:
        return 0.0
    h = -sum(c / total * math.log2(c / total) for c in counts.values())
    return abs(h)  # -0.0 -> 0.0


def distinct_answers(answers: Sequence[str | None]) -> int:
    """How many different answers a question's paths give (``None`` not counted).

    >>> distinct_answers(["4", "4", "5", None]), distinct_answers([None])
    (2, 0)
    """
    return len({a for a in answers if a is not None})
