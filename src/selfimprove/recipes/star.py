"""star (Zelikman et al. 2022, STaR; a baseline that reads the training labels): keep the sampled
paths whose answer matches the gold and, with ``star.rationalization``, for a question with none
the rationale sampled with the gold as a hint when it reaches the gold. Direct formats answer with
the gold. The paper fine-tunes the base model every round (``finetune.init: base``)."""

from __future__ import annotations

from pydantic import Field

from selfimprove.core.answers import extract_answer
from selfimprove.core.voting import majority_vote
from selfimprove.recipes.base import Choice, Knobs, Recipe, Round

#: refined.jsonl keys of the gold-marking recipes (methods.refine.label_records writes them)
GOLD_KEYS = ("gold", "correct")


class StarParams(Knobs):
    """``star:`` in params.yaml."""

    rationalization: bool = Field(
        True,
        description="For a question with no correct path, sample a rationale with the gold answer "
        "as a hint and keep it if it reaches the gold (the hint is removed in training).",
    )


def gold_choice(rec: dict) -> Choice:
    """The sampled paths, those matching the gold eligible, the gold as the direct answer."""
    answers = rec["answers"]
    ok = [bool(c) and a is not None for c, a in zip(rec["correct"], answers, strict=True)]
    return Choice(list(rec["paths"]), list(answers), ok, *majority_vote(answers), rec["gold"])


def choose(i: int, rec: dict, rnd: Round) -> Choice:
    c = gold_choice(rec)
    rationalized = bool(rec.get("rationalization_correct"))
    if rationalized:
        answer = extract_answer(rec["rationalization"])
        c.paths.append(rec["rationalization"])
        c.answers.append(answer)
        c.eligible.append(answer is not None)
    return Choice(c.paths, c.answers, c.eligible, c.majority, c.agreement, c.direct,
                  counts={"n_rationalized": int(rationalized)})  # fmt: skip


RECIPE = Recipe(
    name="star",
    summary="STaR: correct paths + rationalization (labels)",
    choose=choose,
    uses_labels=True,
    refine="gold",
    rationalize=lambda knobs: knobs.rationalization,
    needs_keys=GOLD_KEYS,
    scalar_keys=("gold",),
    extra_stats=("n_rationalized",),
    init="base",
    params=StarParams,
)
