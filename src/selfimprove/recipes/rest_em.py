"""rest_em (Singh et al. 2023, ReST-EM; a baseline that reads the training labels): keep the
sampled paths whose answer matches the gold, at most ``rest_em.max_per_question`` per question
(instead of ``filter.max_paths_per_question``). Direct formats answer with the gold. The paper
fine-tunes the base model every round (``finetune.init: base``)."""

from __future__ import annotations

from pydantic import Field

from selfimprove.recipes.base import Choice, Knobs, Recipe, Round
from selfimprove.recipes.star import GOLD_KEYS, gold_choice


class RestEmParams(Knobs):
    """``rest_em:`` in params.yaml."""

    max_per_question: int = Field(
        4, ge=0, description="Keep at most this many correct paths per question (0 = all)."
    )


def choose(i: int, rec: dict, rnd: Round) -> Choice:
    return gold_choice(rec)


RECIPE = Recipe(
    name="rest_em",
    summary="ReST-EM: correct paths (labels)",
    choose=choose,
    uses_labels=True,
    refine="gold",
    needs_keys=GOLD_KEYS,
    scalar_keys=("gold",),
    cap=lambda cfg, knobs: knobs.max_per_question,
    init="base",
    params=RestEmParams,
)
