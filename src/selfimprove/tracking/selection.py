"""Which round is "best": by a labeled metric, or label-free; and what the label-free choice
costs (pure: flat metrics in, no MLflow).

``tracking.best_by: metric`` ranks rounds by ``tracking.best_metric``, a held-out score that
needs the eval sets' labels. ``best_by: label_free`` ranks them by the self-consistency
agreement on the eval sets' sampled paths (``<set>.sc.label_free.agreement``, written by the
evaluate stage: the majority answer's share of ``evaluate.sc_paths`` samples, averaged over
questions, then over sets), which uses no labels at all, so it could pick a checkpoint in a
setting that has none. Caveat: agreement also rises when a model collapses onto one (wrong)
answer; :func:`selection_loss` measures how much accuracy the label-free pick gives up against
the truly best round (that oracle uses the labels and picks on the test set itself, so it is
optimistic: the loss is an upper bound on what a label-free pick gives up on these sets).
"""

from __future__ import annotations

from collections.abc import Mapping

from selfimprove.core.paths import round_index

#: flat metric key suffix of the label-free score of one eval set
LABEL_FREE_SUFFIX = ".sc.label_free.agreement"


def label_free_score(flat: Mapping[str, float]) -> float | None:
    """The mean over eval sets of ``<set>.sc.label_free.agreement`` (None: no set has it).

    >>> label_free_score({"a.sc.label_free.agreement": 0.5, "b.sc.label_free.agreement": 0.7,
    ...                   "a.fewshot_cot.strict": 0.9})
    0.6
    >>> label_free_score({"a.fewshot_cot.strict": 0.9}) is None
    True
    """
    values = [
        float(v)
        for k, v in flat.items()
        if k.endswith(LABEL_FREE_SUFFIX) and k.count(".") == LABEL_FREE_SUFFIX.count(".")
    ]
    return sum(values) / len(values) if values else None


def round_score(flat: Mapping[str, float], by: str, metric: str) -> float | None:
    """What a round is ranked by: ``flat[metric]`` (``by="metric"``) or its
    :func:`label_free_score` (``by="label_free"``); None when the round lacks it."""
    if by == "label_free":
        return label_free_score(flat)
    if by == "metric":
        value = flat.get(metric)
        return None if value is None else float(value)
    raise ValueError(f"by={by!r}: use 'metric' or 'label_free'")


def choose_round(
    metrics_by_round: Mapping[str, Mapping[str, float]], by: str, metric: str = ""
) -> str | None:
    """The round with the highest :func:`round_score` (ties: the earlier round); None when no
    round has a score.

    >>> m = {"r0": {"x.sc.label_free.agreement": 0.4, "acc": 0.3},
    ...      "r1": {"x.sc.label_free.agreement": 0.9, "acc": 0.5},
    ...      "r2": {"x.sc.label_free.agreement": 0.7, "acc": 0.6}}
    >>> choose_round(m, "label_free"), choose_round(m, "metric", "acc")
    ('r1', 'r2')
    """
    scored = [
        (s, -round_index(r), r)
        for r, flat in metrics_by_round.items()
        if (s := round_score(flat, by, metric)) is not None
    ]
    return max(scored)[2] if scored else None


def selection_loss(
    metrics_by_round: Mapping[str, Mapping[str, float]], accuracy_metric: str
) -> dict | None:
    """How much ``accuracy_metric`` the label-free choice gives up against the round that is
    truly best on it: ``loss = best_value - chosen_value`` (0 = it picked a best round).
    Rounds without both scores are left out; None when no round has both.

    >>> m = {"r0": {"x.sc.label_free.agreement": 0.4, "acc": 0.3},
    ...      "r1": {"x.sc.label_free.agreement": 0.9, "acc": 0.5},
    ...      "r2": {"x.sc.label_free.agreement": 0.7, "acc": 0.6}}
    >>> out = selection_loss(m, "acc")
    >>> out["chosen_round"], out["best_round"], round(out["loss"], 4)
    ('r1', 'r2', 0.1)
    """
    usable = {
        r: flat
        for r, flat in metrics_by_round.items()
        if label_free_score(flat) is not None and accuracy_metric in flat
    }
    chosen = choose_round(usable, "label_free")
    best = choose_round(usable, "metric", accuracy_metric)
    if chosen is None or best is None:
        return None
    chosen_value = float(usable[chosen][accuracy_metric])
    best_value = float(usable[best][accuracy_metric])
    return {
        "accuracy_metric": accuracy_metric,
        "chosen_round": chosen,
        "chosen_score": label_free_score(usable[chosen]),
        "chosen_value": chosen_value,
        "best_round": best,
        "best_value": best_value,
        "loss": best_value - chosen_value,
        "n_rounds": len(usable),
    }
