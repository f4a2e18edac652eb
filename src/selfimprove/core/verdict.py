"""SELF's verdict format: how a feedback ends and how it is read back (pure).

A feedback completion is ``" <feedback>\\nVerdict: correct|incorrect"``
(:func:`feedback_completion`); a refinement completion is ``" <solution> The answer is N."``.
:func:`parse_verdict` / :func:`split_feedback` read the verdict back; text without a parsable
verdict line gives ``None`` (counted by the callers, never guessed). :class:`Feedback` is a
teacher's judgement of one answer (:mod:`selfimprove.core.arith_check`,
:mod:`selfimprove.methods.teachers`); the prompts that ask for feedback and refinements are in
:mod:`selfimprove.core.prompts.feedback`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from selfimprove.core.answers import cut_at_stop

VERDICT_CORRECT = "correct"
VERDICT_INCORRECT = "incorrect"
#: generation of feedback stops here (the verdict line is the last line of a feedback)
FEEDBACK_STOP: tuple[str, ...] = ("\nRefined answer:", "\n\n", "\nQ:")
#: generation of a refined answer stops here
REFINE_STOP: tuple[str, ...] = ("\n\n", "\nQ:", "\nFeedback:", "\nVerdict:")


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
