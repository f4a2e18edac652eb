"""scpo (Prasad et al. 2024, "Self-Consistency Preference Optimization", arXiv 2411.04109): no
labels, no extra sampling. From the m paths the generate stage drew for a question, a preference
pair: a path of the most-voted answer (chosen) against a path of the least-voted answer
(rejected), kept when the top answer's vote share is at least ``scpo.min_agreement``, weighted by
the vote margin ``(votes(chosen) - votes(rejected)) / m`` (``scpo.weighted``). The finetune stage
trains on the pairs (``pairs.jsonl``, one per question and enabled ``filter.formats``) with DPO
plus an NLL term on the chosen path (IRPO-style; :mod:`selfimprove.training.preference`), the
reference being the round's starting model.

Which paths: the answers are voted with ``None`` (no answer extracted) counting in ``m`` but
never chosen nor rejected; the least-voted answer is the one with the fewest votes among the
others (ties: the one appearing first); a path must survive
:func:`~selfimprove.recipes.base.finalize_path` (the first such path of the answer is taken; a
least-voted answer without one gives way to the next least-voted). A question whose paths all
give one answer has no pair. Direct formats pair "The answer is <chosen>." with "The answer is
<rejected>.". The rationales record the chosen path as kept (train.jsonl is the SFT view of the
chosen paths, for comparison; scpo trains on pairs.jsonl).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from selfimprove.core.prompts import build_prompt, direct_completion, is_cot
from selfimprove.recipes.base import Choice, Knobs, Recipe, Round, finalize_path


class ScpoParams(Knobs):
    """``scpo:`` in params.yaml."""

    min_agreement: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Keep a question's pair only if its most-voted answer has at least this "
        "share of the m paths (the paper's vote threshold, as a share).",
    )
    weighted: bool = Field(
        True,
        description="Weight each pair's loss by its vote margin (votes(chosen) - "
        "votes(rejected)) / m, as the paper; false: every pair weighs 1 (plain IRPO).",
    )
    beta: float = Field(
        0.1, gt=0.0, description="DPO's beta: strength of the pull toward the reference model."
    )
    nll_weight: float = Field(
        1.0,
        ge=0.0,
        description="Weight of the NLL term on the chosen path (per-token mean) next to the DPO "
        "term (IRPO's alpha; 0 = plain DPO).",
    )


@dataclass(frozen=True)
class Pair:
    """One question's preference pair: path indices, answers and votes (``m``: paths)."""

    chosen: int
    rejected: int
    chosen_answer: str
    rejected_answer: str
    chosen_votes: int
    rejected_votes: int
    m: int

    @property
    def share(self) -> float:
        return self.chosen_votes / self.m

    @property
    def margin(self) -> float:
        """The vote margin as a share of the paths: the paper's pair weight."""
        return (self.chosen_votes - self.rejected_votes) / self.m


def vote_counts(answers: list[str | None]) -> dict[str, int]:
    """Votes per answer (``None`` left out), in order of first appearance.

    >>> vote_counts(["5", None, "6", "5"])
    {'5': 2, '6': 1}
    """
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    return counts


def question_pair(paths: list[str], answers: list[str | None]) -> tuple[Pair | None, str]:
    """The pair of one question and why there is none: ``(pair, "")`` or ``(None, reason)``,
    reason ``no_answer`` (no path answers), ``unanimous`` (one answer only), ``unusable`` (no
    usable path of the top answer or of any other answer).

    >>> p, _ = question_pair(["2+3=5.", "5", "2*3=6.", "2+3=5", "x", "7"],
    ...                      ["5", "5", "6", "5", None, "7"])
    >>> (p.chosen, p.rejected, p.chosen_votes, p.rejected_votes, p.margin)
    (0, 2, 3, 1, 0.3333333333333333)
    >>> question_pair(["a", "b"], ["4", "4"])
    (None, 'unanimous')
    """
    counts = vote_counts(answers)
    if not counts:
        return None, "no_answer"
    if len(counts) == 1:
        return None, "unanimous"
    top = max(counts, key=counts.__getitem__)  # first of equal maxima (majority_vote's choice)

    def usable(answer: str) -> int | None:
        return next(
            (j for j, (p, a) in enumerate(zip(paths, answers, strict=True))
             if a == answer and finalize_path(p, a) is not None),
            None,
        )  # fmt: skip

    chosen = usable(top)
    if chosen is None:
        return None, "unusable"
    # fewest votes first, ties in order of first appearance (sorted is stable)
    for answer in sorted((a for a in counts if a != top), key=counts.__getitem__):
        rejected = usable(answer)
        if rejected is not None:
            pair = Pair(chosen, rejected, top, answer, counts[top], counts[answer], len(answers))
            return pair, ""
    return None, "unusable"


def _pairs_of(records: list[dict], knobs: ScpoParams | None) -> tuple[dict[int, Pair], dict]:
    """The kept pair of each question (by index) and the counts of filter.json."""
    knobs = knobs or ScpoParams()
    kept: dict[int, Pair] = {}
    why = {"no_answer": 0, "unanimous": 0, "unusable": 0, "below_threshold": 0}
    for i, rec in enumerate(records):
        pair, reason = question_pair(rec["paths"], rec["answers"])
        if pair is None:
            why[reason] += 1
        elif pair.share < knobs.min_agreement:
            why["below_threshold"] += 1
        else:
            kept[i] = pair
    weights = [p.margin if knobs.weighted else 1.0 for p in kept.values()]
    stats = {
        "n_pairs": len(kept),
        **{f"n_no_pair_{k}": n for k, n in why.items()},
        "mean_pair_weight": round(sum(weights) / len(weights), 4) if weights else 0.0,
    }
    return kept, stats


def build_pairs(records: list[dict], cfg, knobs: ScpoParams | None = None) -> tuple[list, dict]:
    """``(pairs.jsonl rows, stats)``: per kept question one row per enabled format of
    ``cfg.formats`` (``cfg``: the filter section; few-shot prompts with ``cfg.n_shots``), with
    ``prompt``, ``chosen``, ``rejected`` (completions, a leading space as train.jsonl's), the two
    answers, their votes, ``m`` and ``weight``. Pure: the same records give the same rows.

    >>> from selfimprove.config.methods import FilterConfig
    >>> cfg = FilterConfig(formats={"fewshot_cot": False, "fewshot_direct": False,
    ...                             "zeroshot_cot": True, "zeroshot_direct": True})
    >>> recs = [{"id": "q1", "question": "Tom has 3 apples and buys 2. How many?",
    ...          "paths": ["3 + 2 = 5.", "3 + 2 = 5.", "3 * 2 = 6.", "3 - 2 = 1."],
    ...          "answers": ["5", "5", "6", None]}]
    >>> rows, stats = build_pairs(recs, cfg)
    >>> [(r["format"], r["chosen"], r["rejected"], r["weight"]) for r in rows]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('zeroshot_cot', ' 3 + 2 = 5. The answer is 5.', ' 3 * 2 = 6. The answer is 6.', 0.25),
     ('zeroshot_direct', ' The answer is 5.', ' The answer is 6.', 0.25)]
    >>> stats["n_pairs"], stats["mean_pair_weight"]
    (1, 0.25)
    """
    knobs = knobs or ScpoParams()
    kept, stats = _pairs_of(records, knobs)
    rows = []
    for i, pair in kept.items():
        rec = records[i]
        for fmt in cfg.formats.enabled():
            prefix, suffix = build_prompt(rec["question"], fmt, cfg.n_shots)
            if is_cot(fmt):
                chosen = finalize_path(rec["paths"][pair.chosen], pair.chosen_answer)
                rejected = finalize_path(rec["paths"][pair.rejected], pair.rejected_answer)
            else:
                chosen = direct_completion(pair.chosen_answer).strip()
                rejected = direct_completion(pair.rejected_answer).strip()
            rows.append({
                "id": rec["id"],
                "format": fmt,
                "prompt": prefix + suffix,
                "chosen": " " + chosen,
                "rejected": " " + rejected,
                "chosen_answer": pair.chosen_answer,
                "rejected_answer": pair.rejected_answer,
                "chosen_votes": pair.chosen_votes,
                "rejected_votes": pair.rejected_votes,
                "m": pair.m,
                "weight": pair.margin if knobs.weighted else 1.0,
            })  # fmt: skip
    stats["n_pair_rows"] = len(rows)
    return rows, stats


def plan(records: list[dict], rnd: Round) -> dict:
    """The kept pairs (``{"pairs": {index: Pair}, "stats": ...}``; the stats go to filter.json)."""
    kept, stats = _pairs_of(records, rnd.knobs)
    return {"pairs": kept, "stats": stats}


def choose(i: int, rec: dict, rnd: Round) -> Choice:
    from selfimprove.core.voting import majority_vote

    answers = rec["answers"]
    pair = rnd.plan["pairs"].get(i)
    eligible = [pair is not None and j == pair.chosen for j in range(len(answers))]
    majority, agreement = majority_vote(answers)
    direct = pair.chosen_answer if pair is not None else None
    return Choice(rec["paths"], answers, eligible, majority, agreement, direct, pair is not None)


RECIPE = Recipe(
    name="scpo",
    summary="ScPO: most- vs least-voted path pairs, DPO + NLL (no labels)",
    choose=choose,
    cap=lambda cfg, knobs: 1,
    plan=plan,
    objective="dpo",
    pairs=build_pairs,
    params=ScpoParams,
)
