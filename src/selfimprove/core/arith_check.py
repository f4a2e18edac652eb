"""SELF's default, offline teacher: a rule-based checker of arithmetic in an answer (pure).

:func:`check_solution` re-computes every arithmetic step written in an answer ("a op b = c" with
``+ - * / x × ÷``, chains such as "16 - 3 - 4 = 9", and GSM8K ``<<a*b=c>>`` annotations) and
compares the final answer with the gold. The feedback names the first wrong step and its correct
value, or says that the reasoning does not reach the right answer (without giving the gold away:
a model trained on this feedback has to be able to write it for unlabeled questions), or that the
answer is correct. Steps written in words ("21 minus 15 is 6") are not checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from selfimprove.core.answers import answers_match, extract_answer, gold_answer
from selfimprove.core.verdict import Feedback, one_line

_MINUS = "-\u2212"
_NUM = r"\$?\d+(?:,\d{3})*(?:\.\d+)?"
_OP = rf"[{_MINUS}+*/x\u00d7\u00f7]"  # minus first: a literal, not a range
_TERM = rf"(?:{_NUM}|\(\s*{_NUM}(?:\s*{_OP}\s*{_NUM})+\s*\))"
# "a op b (op c ...) = r": starts at a number (or "(") not glued to a word, a decimal point or a
# thousands comma; the result may carry a minus sign.
_STEP_RE = re.compile(
    rf"(?<![\w.,$)])(?P<expr>{_TERM}(?:\s*{_OP}\s*{_TERM})+)\s*=\s*"
    rf"(?P<res>[{_MINUS}]?{_NUM})(?![\d,]\d)"
)
_ANNOT_RE = re.compile(
    r"<<(?P<expr>[^<>=]+)=(?P<res>[^<>=]+)>>(?P<vis>[" + _MINUS + r"]?" + _NUM + r")?"
)
_TOKEN_RE = re.compile(rf"\s*(?:(?P<num>\$?\d+(?:,\d{{3}})*(?:\.\d+)?|\.\d+)|(?P<op>{_OP}|[()]))")


class _ParseError(ValueError):
    pass


def _to_fraction(num: str) -> Fraction:
    try:
        return Fraction(Decimal(num.replace("$", "").replace(",", "").replace("\u2212", "-")))
    except (InvalidOperation, ValueError) as e:
        raise _ParseError(num) from e


def _tokens(expr: str) -> list[str]:
    out, pos, expr = [], 0, expr.rstrip()
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if not m:
            raise _ParseError(expr)
        out.append(m.group("num") or m.group("op"))
        pos = m.end()
    return out


def evaluate_expression(expr: str) -> Fraction | None:
    """Exact value of an arithmetic expression (``+ - * / x × ÷``, parentheses, ``$`` and
    thousands commas allowed); ``None`` when it cannot be read or divides by zero.

    >>> evaluate_expression("16 - 3 - 4"), evaluate_expression("2 + 3 x 4")
    (Fraction(9, 1), Fraction(14, 1))
    >>> evaluate_expression("(3 + 2) * $1,000"), evaluate_expression("7 / 2")
    (Fraction(5000, 1), Fraction(7, 2))
    >>> evaluate_expression("5 / 0") is None, evaluate_expression("5 +") is None
    (True, True)
    """
    try:
        toks = _tokens(expr)
    except _ParseError:
        return None
    pos = 0

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def atom() -> Fraction:
        nonlocal pos
        tok = peek()
        if tok is None:
            raise _ParseError(expr)
        pos += 1
        if tok == "(":
            value = sum_()
            if peek() != ")":
                raise _ParseError(expr)
            pos += 1
            return value
        if tok in "-\u2212":
            return -atom()
        if tok[0].isdigit() or tok[0] in "$.":
            return _to_fraction(tok)
        raise _ParseError(expr)

    def product() -> Fraction:
        nonlocal pos
        value = atom()
        while peek() in ("*", "x", "\u00d7", "/", "\u00f7"):
            op = toks[pos]
            pos += 1
            rhs = atom()
            if op in ("/", "\u00f7"):
                if rhs == 0:
                    raise ZeroDivisionError
                value /= rhs
            else:
                value *= rhs
        return value

    def sum_() -> Fraction:
        nonlocal pos
        value = product()
        while peek() in ("+", "-", "\u2212"):
            op = toks[pos]
            pos += 1
            rhs = product()
            value = value + rhs if op == "+" else value - rhs
        return value

    try:
        value = sum_()
    except (_ParseError, ZeroDivisionError):
        return None
    return value if pos == len(toks) else None


def format_value(value: Fraction) -> str:
    """A computed value as a short number string: exact when it terminates within 4 decimals,
    else rounded to 2 decimals.

    >>> format_value(Fraction(30)), format_value(Fraction(7, 2)), format_value(Fraction(10, 3))
    ('30', '3.5', '3.33')
    >>> format_value(Fraction(-5, 4))
    '-1.25'
    """
    if value.denominator == 1:
        return str(value.numerator)
    scaled = value * 10**4
    if scaled.denominator == 1:
        text = f"{Decimal(scaled.numerator) / Decimal(10**4):f}"
        return text.rstrip("0").rstrip(".")
    return f"{float(value):.2f}"


def value_matches(written: str, value: Fraction) -> bool:
    """Whether the number ``written`` states ``value``: exactly, or rounded / truncated to the
    decimals it shows ("10 / 3 = 3.33" and "7 / 2 = 3" pass, "10 / 3 = 4" does not).

    >>> value_matches("3.33", Fraction(10, 3)), value_matches("3", Fraction(7, 2))
    (True, True)
    >>> value_matches("4", Fraction(10, 3)), value_matches("35", Fraction(30))
    (False, False)
    """
    try:
        w = _to_fraction(written)
    except _ParseError:
        return False
    if w == value:
        return True
    digits = written.split(".", 1)[1] if "." in written else ""
    unit = Fraction(1, 10 ** len(digits))
    if abs(value - w) * 2 <= unit:  # rounded
        return True
    truncated = Fraction(int(value / unit)) * unit  # toward zero
    return w == truncated


@dataclass
class Step:
    """One arithmetic step found in an answer."""

    expression: str  # as written, e.g. "5 * 6"
    written: str  # the result the answer states
    correct: str | None  # the computed result (None: the expression could not be evaluated)
    ok: bool | None  # None when it could not be evaluated
    start: int  # character span in the (stop-cut) answer
    end: int
    source: str  # "text" ("a op b = c") or "annotation" (GSM8K "<<a*b=c>>")


def find_steps(text: str) -> list[Step]:
    """Every arithmetic step written in ``text``, in order, each re-computed.

    Chained equalities ("3 + 2 = 5 + 1 = 6") give one step per "=". A GSM8K annotation
    "<<5*6=30>>30" is one step; the number shown after it must match too.

    >>> text = "She has 16 - 3 - 4 = 9 eggs and makes 9 x 2 = $19. 3 + 2 = 5 + 1 = 6."
    >>> for s in find_steps(text):
    ...     print(s.expression, "=", s.written, "| computed", s.correct, s.ok)
    16 - 3 - 4 = 9 | computed 9 True
    9 x 2 = $19 | computed 18 False
    3 + 2 = 5 | computed 5 True
    5 + 1 = 6 | computed 6 True
    >>> [(s.expression, s.written, s.ok, s.source) for s in find_steps(
    ...     "Jack has 5 + 3 = <<5+3=8>>8 stamps, then <<8*2=17>>17.")]
    [('5+3', '8', True, 'annotation'), ('8*2', '17', False, 'annotation')]
    >>> find_steps("He has 12 apples and 3 pears.")
    []
    """
    steps: list[Step] = []
    pos = 0
    while True:
        ma = _ANNOT_RE.search(text, pos)
        mt = _STEP_RE.search(text, pos)
        if ma is None and mt is None:
            break
        if ma is not None and (mt is None or ma.start() <= mt.start()):
            expr, res = ma.group("expr").strip(), ma.group("res").strip()
            written = ma.group("vis") or res
            value = evaluate_expression(expr)
            ok = None
            if value is not None:
                ok = value_matches(res, value) and value_matches(written, value)
            steps.append(
                Step(
                    expr,
                    written,
                    None if value is None else format_value(value),
                    ok,
                    ma.start(),
                    ma.end(),
                    "annotation",
                )
            )
            pos = ma.end()
            continue
        expr, written = mt.group("expr"), mt.group("res")
        if "<<" in text[mt.start() : mt.end()]:  # pragma: no cover - regexes exclude it
            pos = mt.end()
            continue
        value = evaluate_expression(expr)
        steps.append(
            Step(
                expr,
                written,
                None if value is None else format_value(value),
                None if value is None else value_matches(written, value),
                mt.start(),
                mt.end(),
                "text",
            )
        )
        pos = mt.start("res")  # the result may start the next step of a chain
    return steps


def check_solution(question: str, answer_text: str, gold: str) -> Feedback:
    """The rule-based teacher: check every arithmetic step of ``answer_text``, then its final
    answer against ``gold`` (a GSM8K solution "... #### N" or a bare number).

    ``question`` is not needed by the rules (kept so every teacher has the same signature).
    The verdict is correct only when every checkable step is right *and* the final answer
    matches the gold; the first problem found is described (a wrong step first, then a
    missing or wrong final answer).

    >>> fb = check_solution("Q?", "Leah had 32 + 42 = 76. Then 76 - 35 = 41. The answer is 41.",
    ...                     "#### 39")
    >>> fb.verdict
    False
    >>> print(fb.text)
    The step "32 + 42 = 76" is wrong: 32 + 42 is 74, not 76. Redo the solution from that step.
    >>> fb.first_error["kind"], fb.first_error["correct"]
    ('step', '74')
    >>> check_solution("Q?", "3 + 2 = 5. The answer is 5.", "5").text
    'Every calculation is right and the answer 5 is correct.'
    >>> fb = check_solution("Q?", "20 + 12 = 32. The answer is 32.", "#### 8")
    >>> print(fb.text)  # doctest: +ELLIPSIS
    The calculations are right, but the answer 32 is wrong: the steps do not solve the question. ...
    >>> check_solution("Q?", "I am not sure.", "8").first_error
    {'kind': 'no_answer'}
    """
    del question
    text = one_line(answer_text)
    gold_n = gold_answer(gold)
    checked = [s for s in find_steps(text) if s.ok is not None]
    for i, s in enumerate(checked):
        if not s.ok:
            return Feedback(
                False,
                f'The step "{s.expression} = {s.written}" is wrong: {s.expression} is '
                f"{s.correct}, not {s.written}. Redo the solution from that step.",
                {
                    "kind": "step",
                    "step": i + 1,
                    "expression": s.expression,
                    "written": s.written,
                    "correct": s.correct,
                },
            )
    final = extract_answer(text)
    if final is None:
        return Feedback(
            False,
            'The answer never states a final number. Solve the question and end with "The '
            'answer is N."',
            {"kind": "no_answer"},
        )
    if not answers_match(final, gold_n):
        lead = f"The answer {final}"
        if checked:
            lead = f"The calculations are right, but the answer {final}"
        return Feedback(
            False,
            f"{lead} is wrong: the steps do not solve the question. Work out again what the "
            "question asks.",
            {"kind": "answer", "answer": final, "gold": gold_n},
        )
    if checked:
        return Feedback(True, f"Every calculation is right and the answer {final} is correct.")
    return Feedback(True, f"The answer {final} is correct.")
