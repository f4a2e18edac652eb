"""SELF's language feedback: a rule-based checker and the feedback / refinement prompts (pure).

SELF (Lu et al. 2023, "Self-Evolution with Language Feedback") teaches a model two meta-skills:
judging an answer in natural language (*feedback*, ending in a verdict) and rewriting the answer
given that feedback (*refinement*). This module holds what those tasks look like as text:

* :func:`check_solution` -- the default, offline teacher: it re-computes every arithmetic step
  written in an answer ("a op b = c" with ``+ - * / x × ÷``, chains such as "16 - 3 - 4 = 9",
  and GSM8K ``<<a*b=c>>`` annotations) and compares the final answer with the gold. The feedback
  names the first wrong step and its correct value, or says that the reasoning does not reach
  the right answer (without giving the gold away: a model trained on this feedback has to be
  able to write it for unlabeled questions), or that the answer is correct. Steps written in
  words ("21 minus 15 is 6") are not checked.
* :func:`build_feedback_prompt` / :func:`build_refine_prompt` -- few-shot prompts. Both tasks
  share one prefix (the exemplar blocks), so a sampler encodes it once per call. An exemplar
  block reads::

      Q: <question>
      A: <answer>
      Feedback: <feedback>
      Verdict: incorrect
      Refined answer: <a correct solution> The answer is N.

  A feedback completion is ``" <feedback>\\nVerdict: correct|incorrect"``; a refinement
  completion is ``" <solution> The answer is N."``.
* :func:`parse_verdict` / :func:`split_feedback` -- read the verdict back; text without a
  parsable verdict line gives ``None`` (counted by the callers, never guessed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from selfimprove.config.methods import MAX_FEEDBACK_SHOTS
from selfimprove.core.answers import answers_match, cut_at_stop, extract_answer, gold_answer
from selfimprove.core.prompts import GSM8K_EXEMPLARS

VERDICT_CORRECT = "correct"
VERDICT_INCORRECT = "incorrect"
#: generation of feedback stops here (the verdict line is the last line of a feedback)
FEEDBACK_STOP: tuple[str, ...] = ("\nRefined answer:", "\n\n", "\nQ:")
#: generation of a refined answer stops here
REFINE_STOP: tuple[str, ...] = ("\n\n", "\nQ:", "\nFeedback:", "\nVerdict:")

# ---------------------------------------------------------------------------- arithmetic

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


# ---------------------------------------------------------------------------- feedback


@dataclass
class Feedback:
    """A judgement of one answer: the verdict, natural-language feedback (without the verdict
    line) and, when wrong, what the first error is."""

    verdict: bool
    text: str
    first_error: dict | None = field(default=None)


def one_line(text: str) -> str:
    """``text`` cut at stop sequences, whitespace collapsed to single spaces.

    >>> one_line("  3 + 2 = 5.\\nThe answer is 5.\\n\\nQ: next")
    '3 + 2 = 5. The answer is 5.'
    """
    return " ".join(cut_at_stop(text).split())


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


def verdict_line(verdict: bool) -> str:
    """``"Verdict: correct"`` or ``"Verdict: incorrect"``.

    >>> verdict_line(False)
    'Verdict: incorrect'
    """
    return f"Verdict: {VERDICT_CORRECT if verdict else VERDICT_INCORRECT}"


def feedback_completion(text: str, verdict: bool) -> str:
    """The completion of a feedback prompt: the feedback, then the verdict line.

    >>> feedback_completion("The answer 5 is correct.", True)
    ' The answer 5 is correct.\\nVerdict: correct'
    """
    return f" {one_line(text)}\n{verdict_line(verdict)}"


_VERDICT_RE = re.compile(
    r"^[ \t*#>-]*verdict[ \t*]*:[ \t*]*(?P<v>not\s+correct|incorrect|correct|wrong|right)\b",
    re.IGNORECASE | re.MULTILINE,
)


def parse_verdict(text: str) -> bool | None:
    """The verdict of a generated feedback: the first line "Verdict: correct|incorrect"
    (also "wrong"/"right"/"not correct", any case, markdown bold); ``None`` when there is none.

    >>> parse_verdict("Step 2 is wrong.\\nVerdict: incorrect"), parse_verdict("verdict: **Right**")
    (False, True)
    >>> parse_verdict("The answer looks fine.") is None, parse_verdict("Verdict: maybe") is None
    (True, True)
    >>> parse_verdict("I think the verdict: correct")  # not at the start of a line
    """
    m = _VERDICT_RE.search(text)
    if m is None:
        return None
    return m.group("v").lower() in ("correct", "right")


def split_feedback(generated: str) -> tuple[str, bool | None]:
    """(feedback text before the verdict line, verdict) of a generated feedback.

    Without a parsable verdict the whole text (one line) comes back with ``None``.

    >>> split_feedback(" The step 2 + 2 = 5 is wrong.\\nVerdict: incorrect\\nRefined answer: x")
    ('The step 2 + 2 = 5 is wrong.', False)
    >>> split_feedback("Looks good to me")
    ('Looks good to me', None)
    """
    m = _VERDICT_RE.search(generated)
    if m is None:
        return one_line(generated), None
    return one_line(generated[: m.start()]), parse_verdict(generated[m.start() :])


def clean_refined(generated: str) -> str:
    """A generated refinement as an answer: cut at stops and at a new block, one line.

    >>> clean_refined(" 32 + 42 = 74. 74 - 35 = 39. The answer is 39.\\nFeedback: x")
    '32 + 42 = 74. 74 - 35 = 39. The answer is 39.'
    """
    cut = len(generated)
    for stop in REFINE_STOP:
        i = generated.find(stop)
        if i != -1:
            cut = min(cut, i)
    return one_line(generated[:cut])


# ---------------------------------------------------------------------------- prompts

# Exemplar answers: (index into GSM8K_EXEMPLARS, the answer being judged). Their feedback is
# computed by check_solution, so the exemplars show exactly the rule teacher's style.
_FEEDBACK_EXEMPLARS: tuple[tuple[int, str], ...] = (
    (
        2,
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had "
        "32 + 42 = 76. After eating 35, they had 76 - 35 = 41. The answer is 41.",
    ),
    (1, "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    (
        3,
        "Jason started with 20 lollipops. He has 12 left. So he gave Denny 20 + 12 = 32. "
        "The answer is 32.",
    ),
    (
        5,
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. "
        "So 5 * 4 = 20 computers were added. 9 + 20 = 29. The answer is 29.",
    ),
)
if len(_FEEDBACK_EXEMPLARS) != MAX_FEEDBACK_SHOTS:  # the config bounds refine.n_shots by it
    raise ImportError("config.methods.MAX_FEEDBACK_SHOTS must equal the number of exemplars")


def _exemplar_rationale(ex: dict[str, str]) -> str:
    return f"{ex['rationale']} The answer is {ex['answer']}."


def _block(
    question: str,
    answer: str,
    reference: str | None = None,
    feedback: str | None = None,
    verdict: bool | None = None,
    refined: str | None = None,
) -> str:
    """One exemplar/query block; stops after the last part given (a prompt's open end)."""
    lines = [f"Q: {one_line(question)}"]
    if reference is not None:
        lines.append(f"Reference answer: {reference}")
    lines.append(f"A: {one_line(answer)}")
    if feedback is None:
        return "\n".join(lines) + "\nFeedback:"
    lines.append(f"Feedback: {one_line(feedback)}")
    if verdict is None:
        return "\n".join(lines)
    lines.append(verdict_line(verdict))
    if refined is None:
        return "\n".join(lines) + ("" if verdict else "\nRefined answer:")
    lines.append(f"Refined answer: {one_line(refined)}")
    return "\n".join(lines)


def feedback_prefix(n_shots: int, with_reference: bool = False) -> str:
    """The shared few-shot prefix of feedback and refinement prompts (``n_shots`` exemplars,
    0..4; ``with_reference`` adds the gold as a "Reference answer:" line, for teachers).

    >>> print(feedback_prefix(2))  # doctest: +ELLIPSIS
    Q: Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces ...
    A: Originally, Leah had 32 chocolates. ... they had 32 + 42 = 76. ... The answer is 41.
    Feedback: The step "32 + 42 = 76" is wrong: 32 + 42 is 74, not 76. Redo the solution ...
    Verdict: incorrect
    Refined answer: Originally, Leah had 32 chocolates. ... they had 74 - 35 = 39. The answer is 39.
    <BLANKLINE>
    Q: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in ...
    A: There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.
    Feedback: Every calculation is right and the answer 5 is correct.
    Verdict: correct
    <BLANKLINE>
    <BLANKLINE>
    """
    if not 0 <= n_shots <= MAX_FEEDBACK_SHOTS:
        raise ValueError(f"n_shots must be in 0..{MAX_FEEDBACK_SHOTS}, got {n_shots}")
    blocks = []
    for idx, answer in _FEEDBACK_EXEMPLARS[:n_shots]:
        ex = GSM8K_EXEMPLARS[idx]
        fb = check_solution(ex["question"], answer, ex["answer"])
        blocks.append(
            _block(
                ex["question"],
                answer,
                ex["answer"] if with_reference else None,
                fb.text,
                fb.verdict,
                None if fb.verdict else _exemplar_rationale(ex),
            )
            + "\n\n"
        )
    return "".join(blocks)


def build_feedback_prompt(
    question: str, answer: str, n_shots: int = 3, reference: str | None = None
) -> tuple[str, str]:
    """``(shared_prefix, suffix)`` asking for feedback on ``answer``; the completion is
    :func:`feedback_completion`. ``reference`` (a gold answer) switches to the teacher's
    format with a "Reference answer:" line in every block.

    >>> prefix, suffix = build_feedback_prompt("Tom has 3 apples and buys 2. How many?",
    ...                                        "3 + 2 = 6. The answer is 6.", n_shots=0)
    >>> prefix, suffix
    ('', 'Q: Tom has 3 apples and buys 2. How many?\\nA: 3 + 2 = 6. The answer is 6.\\nFeedback:')
    >>> build_feedback_prompt("Q?", "A.", 0, reference="5")[1]
    'Q: Q?\\nReference answer: 5\\nA: A.\\nFeedback:'
    """
    prefix = feedback_prefix(n_shots, with_reference=reference is not None)
    return prefix, _block(question, answer, reference)


def build_refine_prompt(
    question: str, answer: str, feedback: str, n_shots: int = 3
) -> tuple[str, str]:
    """``(shared_prefix, suffix)`` asking for a refined answer given ``feedback`` (the prefix
    equals the feedback prompt's); the completion is ``" " + refined rationale``.

    >>> print(build_refine_prompt("Q?", "2 + 2 = 5. The answer is 5.",
    ...                           'The step "2 + 2 = 5" is wrong.', n_shots=0)[1])
    Q: Q?
    A: 2 + 2 = 5. The answer is 5.
    Feedback: The step "2 + 2 = 5" is wrong.
    Verdict: incorrect
    Refined answer:
    """
    return feedback_prefix(n_shots), _block(question, answer, None, feedback, False)
