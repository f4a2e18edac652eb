"""lmsi (Huang et al. 2022, "Large Language Models Can Self-Improve"): majority-vote each
question's sampled paths and train on the ones that agree with the majority (no labels, no refine
step). A question is selected when a majority exists and its share is at least
``filter.min_agreement``; its direct formats answer with the majority."""

from __future__ import annotations

from selfimprove.core.voting import majority_vote
from selfimprove.recipes.base import PATH_STATS, Choice, Recipe, Round


def choose(i: int, rec: dict, rnd: Round) -> Choice:
    answers = rec["answers"]
    majority, agreement = majority_vote(answers)
    selected = majority is not None and agreement >= rnd.cfg.min_agreement
    eligible = [selected and a == majority for a in answers]
    return Choice(rec["paths"], answers, eligible, majority, agreement, majority, selected)


RECIPE = Recipe(
    name="lmsi",
    summary="majority vote, Huang et al. 2022",
    choose=choose,
    path_stats=PATH_STATS | {"candidates": "n_agreeing_paths"},
    rationale_keys=(),
)
