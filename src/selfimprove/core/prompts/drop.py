"""Prompts of DROP-format questions (a passage, a question, span answers).

Same shape as :func:`selfimprove.core.prompts.build_prompt`: a ``(prefix, suffix)`` pair whose
prefix (three exemplars, or nothing) never depends on the record. Same style names; its own
exemplars, so ``n_shots`` does not apply. Generation must not stop at "." (answers can be
decimals such as "50.6"); stop at :data:`DROP_STOP_SEQUENCES` instead.
"""

from __future__ import annotations

import re

from selfimprove.core.io import InputError
from selfimprove.core.prompts import ZEROSHOT_COT_TRIGGER

DROP_STYLES: tuple[str, ...] = ("fewshot_cot", "fewshot_direct", "zeroshot_cot", "zeroshot_direct")
#: Where a DROP generation should stop (never at "."; answers can be decimals such as "50.6").
#: :func:`selfimprove.evaluation.metrics.drop.extract_drop_answer` also cuts the text at the
#: first of them.
DROP_STOP_SEQUENCES: tuple[str, ...] = ("\n\nPassage:", "\nPassage:", "\nQuestion:", "\nQ:")

DROP_EXEMPLARS: tuple[dict[str, str], ...] = (
    {
        "passage": "The Lions opened the scoring when kicker Dan Reyes made a 42-yard field goal. "
        "The Bears answered with a 9-yard touchdown run by Mike Ford. Reyes added a 25-yard field "
        "goal before halftime, and Ford scored again on a 3-yard run in the fourth quarter.",
        "question": "How many yards longer was Dan Reyes's first field goal than his second?",
        "rationale": "Reyes's first field goal was 42 yards and his second was 25 yards. "
        "42 - 25 = 17.",
        "answer": "17",
    },
    {
        "passage": "In 2010 the town had 12,400 residents. Of the working-age residents, 61.5% "
        "were employed, and the median household income was $41,250.",
        "question": "What percent of working-age residents were not employed?",
        "rationale": "61.5% of working-age residents were employed, so 100 - 61.5 = 38.5% "
        "were not.",
        "answer": "38.5",
    },
    {
        "passage": "Quarterback Ron Hale threw touchdown passes to Luis Ortega and Ben Carter, "
        "while the defense held the Falcons to a single field goal by Tom Walsh.",
        "question": "Which players caught touchdown passes from Ron Hale?",
        "rationale": "Hale threw one touchdown pass to Luis Ortega and one to Ben Carter.",
        "answer": "Luis Ortega and Ben Carter",
    },
)


def answer_text(alternative: str | list[str]) -> str:
    """One gold alternative as answer text: spans joined by " and ".

    >>> answer_text(["Luis Ortega", "Ben Carter"]), answer_text(["17"]), answer_text("7")
    ('Luis Ortega and Ben Carter', '17', '7')
    """
    return alternative if isinstance(alternative, str) else " and ".join(alternative)


# A line break (any Unicode one) with the whitespace around it, before "Passage:", "Question:" or
# "Answer:" (any case): how a DROP prompt starts an exemplar's parts (see drop_prompt).
_DELIMITER_RE = re.compile(
    r"\s*[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]\s*(?=(?:passage|question|answer)\s*:)", re.I
)


def escape_drop_text(text: str) -> str:
    """A passage or question (stripped) that cannot start a fake exemplar: the line break
    before a "Passage:" / "Question:" / "Answer:" becomes one space (idempotent; text without
    one comes back only stripped).

    >>> escape_drop_text("The Owls won.\\n\\nQuestion: Who won?\\nAnswer: the Bears")
    'The Owls won. Question: Who won? Answer: the Bears'
    >>> escape_drop_text(" Line one.\\nLine two. ")
    'Line one.\\nLine two.'
    """
    return _DELIMITER_RE.sub(" ", text.strip())


def _block(passage: str, question: str) -> str:
    return f"Passage: {escape_drop_text(passage)}\nQuestion: {escape_drop_text(question)}\nAnswer:"


def drop_prompt(record: dict, style: str = "fewshot_cot") -> tuple[str, str]:
    """``(shared_prefix, suffix)`` of the prompt for a DROP record, like
    :func:`selfimprove.core.prompts.build_prompt` (the prefix does not depend on the record).

    Passage and question go through :func:`escape_drop_text` (no fake exemplars). Styles:
    ``fewshot_cot`` (3 exemplars whose answers end "So the answer is X."),
    ``fewshot_direct`` (exemplars answer "So the answer is X." without a rationale),
    ``zeroshot_cot`` (suffix ends "Let's think step by step."), ``zeroshot_direct``. Stop
    generation at :data:`DROP_STOP_SEQUENCES`, never at "." (decimals); read the answer with
    :func:`selfimprove.evaluation.metrics.drop.extract_drop_answer`.

    >>> rec = {"passage": "The Owls won 21-14.", "question": "How many points did the Owls score?"}
    >>> prefix, suffix = drop_prompt(rec, "fewshot_cot")
    >>> print(prefix.split("\\n\\n")[0])  # doctest: +ELLIPSIS
    Passage: The Lions opened the scoring ...
    Question: How many yards longer was Dan Reyes's first field goal than his second?
    Answer: Reyes's first field goal was 42 yards and his second ... So the answer is 17.
    >>> print(suffix)
    Passage: The Owls won 21-14.
    Question: How many points did the Owls score?
    Answer:
    >>> drop_prompt(rec, "zeroshot_cot")[1].endswith("Answer: Let's think step by step.")
    True
    """
    if style not in DROP_STYLES:
        raise ValueError(f"unknown DROP prompt style {style!r}; valid: {', '.join(DROP_STYLES)}")
    for key in ("passage", "question"):
        if not isinstance(record.get(key), str):
            raise InputError(f"DROP record {record.get('id', '?')!r}: missing string {key!r}")
    suffix = _block(record["passage"], record["question"])
    if style == "zeroshot_cot":
        return "", f"{suffix} {ZEROSHOT_COT_TRIGGER}"
    if style == "zeroshot_direct":
        return "", suffix
    parts = []
    for ex in DROP_EXEMPLARS:
        rationale = f"{ex['rationale']} " if style == "fewshot_cot" else ""
        block = _block(ex["passage"], ex["question"])
        parts.append(f"{block} {rationale}So the answer is {ex['answer']}.\n\n")
    return "".join(parts), suffix
