"""GSM8K accuracy of raw generations: strict ("The answer is N" / "#### N") and flexible (last
number), with the extraction rules of :mod:`selfimprove.answers`.

Majority vote over several samples (maj@k) lives in :mod:`selfimprove.voting`.
"""

from __future__ import annotations

from selfimprove.core.answers import answers_match, extract_flexible, extract_strict, gold_answer
from selfimprove.core.io import InputError

__all__ = ["gsm8k_record_problem", "score_gsm8k", "score_gsm8k_one"]


def score_gsm8k_one(prediction: str, answer: str | int | float) -> tuple[bool, bool]:
    """``(strict_correct, flexible_correct)`` of one raw generation against its gold answer.

    ``answer`` is a bare number or a GSM8K solution ending in ``#### N``.

    >>> score_gsm8k_one("9 * 2 = 18. The answer is $18.", "#### 18")
    (True, True)
    >>> score_gsm8k_one("9 * 2 = 18 dollars.", 18)
    (False, True)
    >>> score_gsm8k_one("The answer is 18. Then 3 more.", "18")  # flexible takes the last number
    (True, False)
    """
    gold = gold_answer(str(answer))
    return (
        answers_match(extract_strict(prediction), gold),
        answers_match(extract_flexible(prediction), gold),
    )


def gsm8k_record_problem(record: object) -> str | None:
    """What is wrong with a ``{"prediction", "answer"}`` record, or None when it is usable.

    >>> gsm8k_record_problem({"prediction": "The answer is 7.", "answer": "#### 7"}) is None
    True
    >>> gsm8k_record_problem({"prediction": "7", "answer": "seven"})
    "'answer' 'seven' has no number; expected a GSM8K solution ending in '#### N' or a bare number"
    """
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    pred = record.get("prediction")
    if not isinstance(pred, str):
        return f"'prediction' must be the generated text (a string), got {pred!r}"
    answer = record.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        return (
            "'answer' must be a number or a GSM8K solution ending in '#### N', "
            f"got {str(answer)[:80]!r}"
        )
    try:
        gold_answer(str(answer))
    except ValueError:
        shown = str(answer) if len(str(answer)) <= 60 else str(answer)[:57] + "..."
        return (
            f"'answer' {shown!r} has no number; expected a GSM8K solution ending in "
            "'#### N' or a bare number"
        )
    return None


def score_gsm8k(records: list[dict]) -> dict:
    """Strict and flexible accuracy (fractions) of ``{"prediction", "answer"}`` records.

    Returns ``{"n", "strict", "flexible"}``; the accuracies are ``None`` when ``records`` is
    empty. A malformed record raises :class:`~selfimprove.core.io.InputError` naming it (0-based)
    before anything is scored.

    >>> score_gsm8k([
    ...     {"prediction": "3 + 4 = 7. The answer is 7.", "answer": "#### 7"},
    ...     {"prediction": "3 + 5 = 8", "answer": 8},
    ...     {"prediction": "The answer is 9.", "answer": "10"},
    ... ])
    {'n': 3, 'strict': 0.3333333333333333, 'flexible': 0.6666666666666666}
    """
    for i, rec in enumerate(records):
        problem = gsm8k_record_problem(rec)
        if problem:
            raise InputError(f"record {i}: {problem}")
    strict = flexible = 0
    for rec in records:
        s, f = score_gsm8k_one(rec["prediction"], rec["answer"])
        strict += s
        flexible += f
    n = len(records)
    return {
        "n": n,
        "strict": strict / n if n else None,
        "flexible": flexible / n if n else None,
    }
