"""GSM8K-style answer extraction: one place that turns a generated rationale into a number.

Every stage (voting, filtering, evaluation) goes through these functions, so a path's answer is
the same string wherever it is looked at. Answers are *normalized* number strings: no "$", no
thousands separators, no trailing zeros after the decimal point ("18.0" -> "18", "1,600" ->
"1600", "0.50" -> "0.5"), computed with :mod:`decimal` so nothing is lost to float rounding.

Two extractors, as in lm-eval's ``gsm8k_cot`` task but without its pitfalls:

* :func:`extract_strict` -- the number after the last "The answer is" (or "####");
  lm-eval's ``The answer is (\\-?[0-9\\.\\,]+).`` needs one more character after the number, so
  "The answer is 18" at the end of the text gives "1" there; here it gives "18".
* :func:`extract_flexible` -- the last number anywhere in the text.

Both first cut the text at the first stop sequence (:data:`STOP_SEQUENCES`): a model that goes
on to write a new "Q: ..." exemplar must not change the answer of the one it was asked.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

STOP_SEQUENCES: tuple[str, ...] = ("\n\nQ:", "\nQ:")

# An unsigned number: 1600, 1,600, 1,600.50, 18.0, .5 (commas are thousands separators).
_NUM = r"(?P<num>\d+(?:,\d+)*(?:\.\d+)?|\.\d+)"
_MINUS = "-\u2212"  # ASCII hyphen-minus and the Unicode minus sign

# A number anywhere in free text. A minus sign counts only when it does not follow a word
# character or a closing bracket, so "3-5" is 3 and 5, not 3 and -5, and "21 - 15" is 21, 15.
_NUMBER_RE = re.compile(
    rf"(?:(?<![\w)\]])(?P<sign>[{_MINUS}]))?(?:\$\s?(?P<sign2>[{_MINUS}])?)?" + _NUM
)

# "The answer is 18", "the answer is: $18.", "Answer is **-3**", "The final answer is
# \boxed{18}", "#### 1,600".
_STRICT_RE = re.compile(
    r"(?:answer\s+is|####)[\s:*]*(?:\\boxed\{)?\s*"
    rf"(?P<sign>[{_MINUS}])?(?:\$\s?(?P<sign2>[{_MINUS}])?)?" + _NUM,
    re.IGNORECASE,
)


def cut_at_stop(text: str, stops: tuple[str, ...] | list[str] = STOP_SEQUENCES) -> str:
    """Return ``text`` up to (not including) the earliest occurrence of any stop sequence.

    >>> cut_at_stop("6 + 12 = 18. The answer is 18.\\n\\nQ: Tom has 3 apples.")
    '6 + 12 = 18. The answer is 18.'
    >>> cut_at_stop("no stop here")
    'no stop here'
    """
    cut = len(text)
    for stop in stops:
        if stop:
            i = text.find(stop)
            if i != -1 and i < cut:
                cut = i
    return text[:cut]


def _format_number(num: str, negative: bool) -> str | None:
    digits = num.replace(",", "")
    if "." in digits:
        digits = digits.rstrip("0").rstrip(".") or "0"
    try:
        value = Decimal(digits)
    except InvalidOperation:  # pragma: no cover - the regexes only pass digits through
        return None
    if value == 0:
        return "0"
    if negative:
        value = -value
    return format(value, "f")


def _match_to_number(m: re.Match) -> str | None:
    negative = bool(m.group("sign") or m.group("sign2"))
    return _format_number(m.group("num"), negative)


def normalize_number(s: str) -> str | None:
    """Normalize the first number in ``s``; ``None`` when there is none.

    Drops "$", thousands commas, surrounding spaces, a trailing ".", units after the number
    and trailing zeros after the decimal point (exact, with :class:`decimal.Decimal`).

    >>> [normalize_number(x) for x in ["18.0", "0.50", "-3", "1,600", " $18. ", "18 dollars"]]
    ['18', '0.5', '-3', '1600', '18', '18']
    >>> normalize_number("-$1,234.50"), normalize_number(".5"), normalize_number("007")
    ('-1234.5', '0.5', '7')
    >>> normalize_number("no number here") is None
    True
    """
    m = _NUMBER_RE.search(s)
    return _match_to_number(m) if m else None


def strict_answer_span(text: str) -> tuple[int, int, str] | None:
    """``(start, end, answer)`` of the last strict answer ("The answer is N" / "#### N") in
    ``text`` (not cut at stops): ``start`` is where "answer is"/"####" begins, ``end`` is just
    after the number. ``None`` when there is no strict answer.

    >>> strict_answer_span("So 9 * 2 = 18. The answer is $18.")
    (19, 32, '18')
    """
    last = None
    for m in _STRICT_RE.finditer(text):
        last = m
    if last is None:
        return None
    number = _match_to_number(last)
    if number is None:  # pragma: no cover - see _format_number
        return None
    return last.start(), last.end("num"), number


def extract_strict(text: str) -> str | None:
    """The number after the last "The answer is" / "answer is:" / "####" (text cut at stops).

    >>> extract_strict("9 * 2 = 18. The answer is 18")
    '18'
    >>> extract_strict("The answer is $18.\\nQ: next question. The answer is 7.")
    '18'
    >>> extract_strict("#### 1,600"), extract_strict("So the answer is: -3.")
    ('1600', '-3')
    >>> extract_strict("She makes 18 dollars.") is None
    True
    """
    span = strict_answer_span(cut_at_stop(text))
    return span[2] if span else None


def extract_flexible(text: str) -> str | None:
    """The last number in the text (cut at stops), normalized.

    >>> extract_flexible("She has 16 - 3 - 4 = 9 eggs, and makes 9 * 2 = $18 a day.")
    '18'
    >>> extract_flexible("Nothing numeric.") is None
    True
    """
    last = None
    for m in _NUMBER_RE.finditer(cut_at_stop(text)):
        last = m
    return _match_to_number(last) if last else None


def extract_answer(text: str) -> str | None:
    """The answer used for voting: :func:`extract_strict`, else :func:`extract_flexible`.

    >>> extract_answer("The answer is 18. I used 3 steps.")
    '18'
    >>> extract_answer("16 - 7 = 9 eggs, 9 * 2 = 18")
    '18'
    """
    answer = extract_strict(text)
    return answer if answer is not None else extract_flexible(text)


def gold_answer(answer: str) -> str:
    """The normalized gold answer of a GSM8K solution ("... #### 1,600") or a bare number.

    >>> gold_answer("She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\\n#### 1,600")
    '1600'
    >>> gold_answer(" 18.0 ")
    '18'
    >>> gold_answer("no number")
    Traceback (most recent call last):
    ...
    ValueError: gold answer 'no number' has no number; expected a GSM8K solution ending in ...
    """
    text = answer.rsplit("####", 1)[1] if "####" in answer else answer
    number = normalize_number(text)
    if number is None:
        shown = answer if len(answer) <= 80 else answer[:77] + "..."
        raise ValueError(
            f"gold answer {shown!r} has no number; expected a GSM8K solution ending in "
            "'#### N' or a bare number"
        )
    return number


def answers_match(pred: str | None, gold: str) -> bool:
    """Whether ``pred`` and ``gold`` are the same number (after normalization).

    >>> answers_match("18.0", "18"), answers_match("$1,600", "1600"), answers_match("17", "18")
    (True, True, False)
    >>> answers_match(None, "18")
    False
    """
    if pred is None:
        return False
    a, b = normalize_number(pred), normalize_number(gold)
    return a is not None and b is not None and Decimal(a) == Decimal(b)
