"""format_only: the control for lmsi's training formats -- train on the model's own paths in the
same formats, *without* the vote.

It trains on as many questions as lmsi would with the same ``filter`` settings (the questions
lmsi keeps a path of), but draws them at random from the whole pool (seeded by the round's seed),
one path each drawn at random among the question's usable paths (an answer was extracted and
:func:`~selfimprove.recipes.base.finalize_path` keeps it; its own answer is the direct formats'
completion). Which questions won the vote never matters, only how many did; a question without a
usable path is passed over for the next drawn one (every question lmsi keeps has one, so the pool
always suffices; ``n_short``, the draws left unfilled, is a check that stays 0). ``majority`` /
``agreement`` in the rationales are analysis only.
"""

from __future__ import annotations

import random

from selfimprove.core.voting import majority_vote
from selfimprove.recipes.base import Choice, Recipe, Round, finalize_path
from selfimprove.recipes.lmsi import RECIPE as LMSI


def plan(records: list[dict], rnd: Round) -> dict:
    """The drawn questions and their path: ``{"picks": {index: path index}, "stats": ...}``."""
    voted, _, _ = rnd.select_with(LMSI)
    n_target = sum(any(r["kept"]) for r in voted)
    rng = random.Random(f"format_only:{rnd.seed}")
    order = list(range(len(records)))
    rng.shuffle(order)
    picks: dict[int, int] = {}
    for i in order:
        if len(picks) == n_target:
            break
        usable = [
            (j, text)
            for j, (p, a) in enumerate(zip(records[i]["paths"], records[i]["answers"], strict=True))
            if a is not None and (text := finalize_path(p, a)) is not None
        ]
        if usable:
            picks[i] = rng.choice(usable)[0]
    return {"picks": picks, "stats": {"n_lmsi_questions": n_target,
                                      "n_short": n_target - len(picks)}}  # fmt: skip


def choose(i: int, rec: dict, rnd: Round) -> Choice:
    answers = rec["answers"]
    j = rnd.plan["picks"].get(i)
    eligible = [k == j for k in range(len(answers))]
    direct = None if j is None else answers[j]
    return Choice(rec["paths"], answers, eligible, *majority_vote(answers), direct, j is not None)


RECIPE = Recipe(
    name="format_only",
    summary="control: as many questions as lmsi keeps, at random, one own path each, no vote",
    choose=choose,
    cap=lambda cfg, knobs: 0,
    plan=plan,
    path_stats={"kept": "n_kept_paths"},
    rationale_keys=("kept_texts", "method"),
)
