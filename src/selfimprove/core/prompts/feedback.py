"""SELF's feedback and refinement prompts (pure).

SELF (Lu et al. 2023, "Self-Evolution with Language Feedback") teaches a model two meta-skills:
judging an answer in natural language (*feedback*, ending in a verdict) and rewriting the answer
given that feedback (*refinement*). :func:`build_feedback_prompt` / :func:`build_refine_prompt`
are their few-shot prompts. Both tasks share one prefix (the exemplar blocks), so a sampler
encodes it once per call. An exemplar block reads::

    Q: <question>
    A: <answer>
    Feedback: <feedback>
    Verdict: incorrect
    Refined answer: <a correct solution> The answer is N.

The exemplars' feedback is the rule teacher's (:func:`selfimprove.core.arith_check.check_solution`);
the completions' format is :mod:`selfimprove.core.verdict`.
"""

from __future__ import annotations

from selfimprove.core.arith_check import check_solution
from selfimprove.core.prompts import GSM8K_EXEMPLARS
from selfimprove.core.verdict import one_line, verdict_line

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
#: exemplars available to the prompts (the config bounds refine/meta_skill n_shots by it)
MAX_FEEDBACK_SHOTS = len(_FEEDBACK_EXEMPLARS)


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
