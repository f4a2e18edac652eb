"""lmsi_self: both filters -- SELF's refined paths judged correct by the model and, with
``lmsi_self.require_consistency``, only those whose refined answer is the majority of the
question's refined answers (share >= ``filter.min_agreement``). Direct formats answer with that
majority."""

from __future__ import annotations

from pydantic import Field

from selfimprove.recipes.base import Choice, Knobs, Recipe, Round
from selfimprove.recipes.self_refine import REFINED_KEYS, VERDICT_STATS, judged


class LmsiSelfParams(Knobs):
    """``lmsi_self:`` in params.yaml."""

    require_consistency: bool = Field(
        True,
        description="Keep a path only if its refined answer is also the majority answer of the "
        "question's refined paths (agreement >= filter.min_agreement); false keeps every path "
        "judged correct (as self does).",
    )


def choose(i: int, rec: dict, rnd: Round) -> Choice:
    paths, answers, ok, majority, agreement, counts = judged(rec)
    if rnd.knobs.require_consistency:
        agree = majority is not None and agreement >= rnd.cfg.min_agreement
        ok = [o and agree and a == majority for o, a in zip(ok, answers, strict=True)]
    return Choice(paths, answers, ok, majority, agreement, majority, counts=counts)


RECIPE = Recipe(
    name="lmsi_self",
    summary="both filters",
    choose=choose,
    needs_seed_set=True,
    refine="self_refine",
    needs_keys=REFINED_KEYS,
    extra_stats=VERDICT_STATS,
    params=LmsiSelfParams,
)
