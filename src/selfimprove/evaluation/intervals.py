"""Uncertainty of the held-out scores: per-question scores from the evaluate step's predictions,
95% intervals next to every accuracy in metrics.json, paired differences between two rounds or
two runs, and the label-free self-consistency agreement.

The evaluate stage saves every prediction (``eval/<set>__<style>.jsonl``, one record per
question with its id); :func:`question_scores` turns one such file back into per-question
scores (0/1 correctness; DROP EM/F1 in [0, 1]) whose mean is exactly the metric in
metrics.json. :func:`annotate_metrics` then adds, to each style's metrics,

* ``ci``: ``{"level": 0.95, "<metric>": {"lo": .., "hi": ..}, ...}`` for every accuracy metric
  of the style (strict / flexible, em / f1, maj@k / pass@m): a percentile bootstrap over
  questions (:func:`selfimprove.evaluation.stats.bootstrap_ci`);
* for ``sc`` only, ``label_free``: ``{"agreement": .., "n": ..}``, the mean majority share of
  the sampled answers (no labels used; what ``tracking.best_by: label_free`` ranks rounds by).

Both are nested mappings, so every existing reader of metrics.json keeps working: the report's
accuracy rows skip mappings, the flattened keys (``<set>.<style>.ci.strict.lo``,
``<set>.sc.label_free.agreement``) are new MLflow metrics, and no old key changes value.

Differences (:func:`paired_difference`, :func:`difference_rows`) pair two score lists on the
question ids both have (:func:`align`) and bootstrap the difference over those questions.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from selfimprove.config.evaluation import StatsConfig
from selfimprove.core.answers import answers_match
from selfimprove.core.io import InputError, read_jsonl
from selfimprove.core.voting import maj_at_k, majority_vote
from selfimprove.evaluation.stats import (
    Interval,
    bootstrap_ci,
    paired_bootstrap_diff,
    paired_seeds_diff,
)

log = logging.getLogger(__name__)

#: per-question fields of a greedy prediction, by metric
_GREEDY = {"strict": "correct_strict", "flexible": "correct_flexible", "em": "em", "f1": "f1"}
_SC_KEY = re.compile(r"^(maj|pass)@(\d+)(?:_(em|f1))?$")


# --------------------------------------------------------------------------- per question


def drop_majority(answers: list[str], k: int) -> str | None:
    """maj@k over DROP answers, the rule of
    :func:`selfimprove.evaluation.evaluate.drop_majority` (votes keyed by the normalized span,
    the winner as first written, empty answers never win); kept here so that the report does
    not import the evaluate step and its sampler (tests/unit/test_intervals.py compares them).

    >>> drop_majority(["the Bears", "Chicago", "Bears.", "Chicago"], 4)
    'the Bears'
    """
    from selfimprove.evaluation.metrics.drop import normalize_span

    keys = [normalize_span(a) or None for a in answers]
    key = maj_at_k(keys, k)
    return None if key is None else answers[keys.index(key)]


def _sc_score(kind: str, k: int, sub: str | None, pred: dict) -> float:
    answers = pred["answers"]
    if "golds" in pred:  # DROP: EM / F1 of the majority span, or of the best path
        from selfimprove.evaluation.metrics.drop import drop_em_f1

        j = 0 if sub == "em" else 1
        if kind == "maj":
            maj = drop_majority(answers, k)
            return 0.0 if maj is None else drop_em_f1(maj, pred["golds"])[j]
        return max((drop_em_f1(x, pred["golds"])[j] for x in answers if x), default=0.0)
    if kind == "maj":
        return float(answers_match(maj_at_k(answers, k), pred["gold"]))
    return float(any(answers_match(x, pred["gold"]) for x in answers))


def question_scores(preds: Sequence[dict], metrics: Mapping) -> tuple[list, dict[str, list]]:
    """``(ids, {metric: per-question scores})`` of one set and style, for each accuracy metric
    in ``metrics`` (that style's dict in metrics.json) that the predictions can score.

    >>> preds = [{"id": "a", "correct_strict": True, "correct_flexible": True},
    ...          {"id": "b", "correct_strict": False, "correct_flexible": True}]
    >>> question_scores(preds, {"n": 2, "strict": 0.5, "flexible": 1.0, "no_answer": 0.0})
    (['a', 'b'], {'strict': [1.0, 0.0], 'flexible': [1.0, 1.0]})
    >>> sc = [{"id": "a", "gold": "2", "answers": ["3", "2", "2"]},
    ...       {"id": "b", "gold": "4", "answers": ["5", None, "4"]}]
    >>> question_scores(sc, {"n": 2, "maj@1": 0.0, "maj@3": 0.5, "pass@3": 1.0})[1]
    {'maj@1': [0.0, 0.0], 'maj@3': [1.0, 0.0], 'pass@3': [1.0, 1.0]}
    """
    ids = [p["id"] for p in preds]
    out: dict[str, list] = {}
    for metric in metrics:
        if metric in _GREEDY:
            field = _GREEDY[metric]
            if preds and all(field in p for p in preds):
                out[metric] = [float(p[field]) for p in preds]
        elif m := _SC_KEY.match(metric):
            if preds and all("answers" in p and ("gold" in p or "golds" in p) for p in preds):
                kind, k, sub = m.group(1), int(m.group(2)), m.group(3)
                out[metric] = [_sc_score(kind, k, sub, p) for p in preds]
    return ids, out


def majority_share(answers: Sequence[str | None], drop: bool = False) -> float:
    """The majority answer's share of the paths (``None`` / empty answers count in the
    denominator and never win); DROP answers vote by their normalized span.

    >>> majority_share(["4", "4", "5", None]), majority_share(["the Bears", "Bears.", ""], True)
    (0.5, 0.6666666666666666)
    """
    if drop:
        from selfimprove.evaluation.metrics.drop import normalize_span

        answers = [normalize_span(a) or None if a else None for a in answers]
    return majority_vote(list(answers))[1]


def label_free_agreement(preds: Sequence[dict]) -> dict:
    """Mean majority share over a set's self-consistency predictions (no labels used).

    >>> label_free_agreement([{"id": "a", "answers": ["1", "1"]},
    ...                       {"id": "b", "answers": ["2", None]}])
    {'agreement': 0.75, 'n': 2}
    """
    shares = [majority_share(p["answers"], "golds" in p) for p in preds]
    return {"agreement": sum(shares) / len(shares) if shares else 0.0, "n": len(shares)}


# --------------------------------------------------------------------------- metrics.json


def _interval(values: Sequence[float], cfg: StatsConfig) -> Interval:
    return bootstrap_ci(values, cfg.seed, cfg.n_resamples, cfg.level)


def annotate_metrics(
    metrics: Mapping, predictions: Mapping[str, Sequence[dict]], cfg: StatsConfig | None = None
) -> dict:
    """A copy of the evaluate step's metrics with ``ci`` added to every style (and
    ``label_free`` to ``sc``), from the predictions keyed ``<set>__<style>``. A metric whose
    per-question scores do not average to its reported value gets no interval (logged: it
    would describe another number).

    >>> m = {"s": {"fewshot_cot": {"n": 4, "strict": 0.75, "flexible": 0.75, "no_answer": 0.0}}}
    >>> p = {"s__fewshot_cot": [{"id": i, "correct_strict": i > 0, "correct_flexible": i > 0}
    ...                         for i in range(4)]}
    >>> annotate_metrics(m, p, StatsConfig(n_resamples=200))["s"]["fewshot_cot"]["ci"]
    {'level': 0.95, 'strict': {'lo': 0.25, 'hi': 1.0}, 'flexible': {'lo': 0.25, 'hi': 1.0}}
    """
    cfg = cfg or StatsConfig()
    out: dict = {}
    for set_name, styles in metrics.items():
        if not isinstance(styles, Mapping):
            out[set_name] = styles
            continue
        out[set_name] = {}
        for style, values in styles.items():
            preds = predictions.get(f"{set_name}__{style}")
            if not isinstance(values, Mapping) or not preds:
                out[set_name][style] = values
                continue
            _, scores = question_scores(preds, values)
            ci: dict = {"level": cfg.level}
            for metric, vals in scores.items():
                iv = _interval(vals, cfg)
                if abs(iv.estimate - float(values[metric])) > 1e-9:
                    log.warning(
                        "%s.%s.%s: per-question scores average %s, metrics say %s; no interval",
                        set_name, style, metric, iv.estimate, values[metric],
                    )  # fmt: skip
                    continue
                ci[metric] = {"lo": iv.lo, "hi": iv.hi}
            extra: dict = {"ci": ci} if len(ci) > 1 else {}
            if style == "sc":
                extra["label_free"] = label_free_agreement(preds)
            out[set_name][style] = dict(values) | extra
    return out


def interval_rows(metrics_by_round: Mapping[str, Mapping]) -> list[dict]:
    """Long rows ``{round, round_index, set, style, metric, value, lo, hi, level}`` of every
    interval in nested metrics.json contents (rounds without ``ci`` give none).

    >>> interval_rows({"r1": {"s": {"cot": {"strict": 0.5, "ci": {"level": 0.95,
    ...                                     "strict": {"lo": 0.25, "hi": 0.75}}}}}})
    ... # doctest: +NORMALIZE_WHITESPACE
    [{'round': 'r1', 'round_index': 1, 'set': 's', 'style': 'cot', 'metric': 'strict',
      'value': 0.5, 'lo': 0.25, 'hi': 0.75, 'level': 0.95}]
    """
    from selfimprove.core.paths import round_index, sort_rounds

    rows = []
    for name in sort_rounds(metrics_by_round):
        for set_name, styles in metrics_by_round[name].items():
            if not isinstance(styles, Mapping):
                continue
            for style, values in styles.items():
                ci = values.get("ci") if isinstance(values, Mapping) else None
                if not isinstance(ci, Mapping):
                    continue
                for metric, iv in ci.items():
                    if isinstance(iv, Mapping) and metric in values:
                        rows.append(
                            {
                                "round": name,
                                "round_index": round_index(name),
                                "set": set_name,
                                "style": style,
                                "metric": metric,
                                "value": float(values[metric]),
                                "lo": float(iv["lo"]),
                                "hi": float(iv["hi"]),
                                "level": float(ci.get("level", 0.0)),
                            }
                        )
    return rows


# --------------------------------------------------------------------------- differences

#: (set, style) -> (question ids, {metric: scores})
Scores = dict[tuple[str, str], tuple[list, dict[str, list]]]


def read_scores(round_path: str | Path, metrics: Mapping) -> Scores:
    """Per-question scores of one round folder (``eval/<set>__<style>.jsonl`` next to its
    metrics.json, whose nested contents are ``metrics``); styles without a predictions file
    are left out."""
    round_path = Path(round_path)
    out: Scores = {}
    for set_name, styles in metrics.items():
        if not isinstance(styles, Mapping):
            continue
        for style, values in styles.items():
            path = round_path / "eval" / f"{set_name}__{style}.jsonl"
            if isinstance(values, Mapping) and path.is_file():
                out[(set_name, style)] = question_scores(read_jsonl(path, required=["id"]), values)
    return out


def align(
    ids_a: Sequence, a: Sequence[float], ids_b: Sequence, b: Sequence[float]
) -> tuple[list, list[float], list[float]]:
    """The questions both lists score (in ``ids_a``'s order) and their two scores.

    >>> align(["q1", "q2", "q3"], [1, 0, 1], ["q3", "q1"], [0, 1])
    (['q1', 'q3'], [1, 1], [1, 0])
    """
    if len(set(ids_a)) != len(ids_a) or len(set(ids_b)) != len(ids_b):
        raise InputError("align: question ids repeat within one list; ids must be unique")
    pos = {q: i for i, q in enumerate(ids_b)}
    common = [q for q in ids_a if q in pos]
    where = {q: i for i, q in enumerate(ids_a)}
    return common, [a[where[q]] for q in common], [b[pos[q]] for q in common]


def paired_difference(
    ids_a: Sequence, a: Sequence[float], ids_b: Sequence, b: Sequence[float], cfg: StatsConfig
) -> tuple[Interval, int] | None:
    """``mean(b) - mean(a)`` over the questions both score, its paired bootstrap interval and
    how many questions that is; None when they share none."""
    common, xa, xb = align(ids_a, a, ids_b, b)
    if not common:
        return None
    return paired_bootstrap_diff(xa, xb, cfg.seed, cfg.n_resamples, cfg.level), len(common)


def difference_rows(scores_by_round: Mapping[str, Scores], cfg: StatsConfig) -> list[dict]:
    """Per round after the first and per set/style/metric: the paired difference to the first
    round (``vs`` = its name, normally r0) and, from the third round on, to the previous one.

    >>> s0 = {("s", "cot"): (["a", "b", "c", "d"], {"strict": [0, 0, 1, 0]})}
    >>> s1 = {("s", "cot"): (["a", "b", "c", "d"], {"strict": [1, 0, 1, 1]})}
    >>> (row,) = difference_rows({"r0": s0, "r1": s1}, StatsConfig(n_resamples=200))
    >>> row["round"], row["vs"], row["diff"], row["n"], row["lo"] >= 0.0
    ('r1', 'r0', 0.5, 4, True)
    """
    from selfimprove.core.paths import round_index, sort_rounds

    names = sort_rounds(scores_by_round)
    rows = []
    for i, name in enumerate(names[1:], start=1):
        for vs in dict.fromkeys([names[0], names[i - 1]]):
            for key, (ids_b, metrics_b) in sorted(scores_by_round[name].items()):
                if key not in scores_by_round[vs]:
                    continue
                ids_a, metrics_a = scores_by_round[vs][key]
                for metric, b in metrics_b.items():
                    if metric not in metrics_a:
                        continue
                    found = paired_difference(ids_a, metrics_a[metric], ids_b, b, cfg)
                    if found is None:
                        continue
                    iv, n = found
                    rows.append(
                        {
                            "round": name,
                            "round_index": round_index(name),
                            "vs": vs,
                            "set": key[0],
                            "style": key[1],
                            "metric": metric,
                            "diff": iv.estimate,
                            "lo": iv.lo,
                            "hi": iv.hi,
                            "n": n,
                            "level": cfg.level,
                        }
                    )
    return rows


def runs_difference(
    runs_a: Sequence[tuple[Sequence, Sequence[float]]],
    runs_b: Sequence[tuple[Sequence, Sequence[float]]],
    cfg: StatsConfig,
) -> tuple[Interval, int]:
    """Two systems with one or more runs (seeds) each, every run a ``(question ids, scores)``:
    the difference of their means (b - a) over the questions *every* run scores, with the
    interval of :func:`~selfimprove.evaluation.stats.paired_seeds_diff` (questions paired,
    runs resampled). Returns the interval and the number of shared questions.

    >>> a = [(["q1", "q2", "q3"], [0, 1, 0]), (["q1", "q2", "q3"], [0, 0, 0])]
    >>> b = [(["q3", "q2", "q1"], [1, 1, 1])]
    >>> iv, n = runs_difference(a, b, StatsConfig(n_resamples=200))
    >>> round(iv.estimate, 4), n
    (0.8333, 3)
    """
    runs = [*runs_a, *runs_b]
    if not runs_a or not runs_b:
        raise InputError("runs_difference: each side needs at least one run")
    common = [q for q in runs[0][0] if all(q in set(ids) for ids, _ in runs[1:])]
    if not common:
        raise InputError("runs_difference: the runs share no question ids")

    def pick(ids: Sequence, scores: Sequence[float]) -> list[float]:
        pos = {q: i for i, q in enumerate(ids)}
        return [float(scores[pos[q]]) for q in common]

    ma = [pick(ids, s) for ids, s in runs_a]
    mb = [pick(ids, s) for ids, s in runs_b]
    return paired_seeds_diff(ma, mb, cfg.seed, cfg.n_resamples, cfg.level), len(common)
