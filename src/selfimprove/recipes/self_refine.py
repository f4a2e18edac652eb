"""self (Lu et al. 2023, SELF): meta-skills learned on the labeled seed set, then each round the
model's own feedback and refinement of every sampled path; a refined path is kept when the
model's final verdict on it is "correct" (no labels). Direct formats answer with the most common
kept answer."""

from __future__ import annotations

from selfimprove.core.voting import majority_vote
from selfimprove.recipes.base import Choice, Recipe, Round

#: refined.jsonl keys the self-feedback recipes read (methods.refine.refine_samples writes them)
REFINED_KEYS = ("refined_paths", "refined_answers", "final_verdicts")
VERDICT_STATS = ("n_verdict_correct", "n_verdict_none")


def judged(rec: dict) -> tuple[list[str], list, list[bool], str | None, float, dict]:
    """A refined record's final paths and answers, which the model judged correct, the vote over
    the refined answers, and the verdict counts."""
    verdicts = rec["final_verdicts"]
    counts = {
        "n_verdict_correct": sum(v is True for v in verdicts),
        "n_verdict_none": sum(v is None for v in verdicts),
    }
    answers = rec["refined_answers"]
    ok = [v is True and a is not None for v, a in zip(verdicts, answers, strict=True)]
    return rec["refined_paths"], answers, ok, *majority_vote(answers), counts


def choose(i: int, rec: dict, rnd: Round) -> Choice:
    paths, answers, ok, majority, agreement, counts = judged(rec)
    return Choice(paths, answers, ok, majority, agreement, counts=counts)


RECIPE = Recipe(
    name="self",
    summary="meta-skills + self-feedback, Lu et al. 2023",
    choose=choose,
    needs_seed_set=True,
    refine="self_refine",
    needs_keys=REFINED_KEYS,
    extra_stats=VERDICT_STATS,
)
