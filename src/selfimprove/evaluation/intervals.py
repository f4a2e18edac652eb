"""Uncertainty of the held-out scores: per-question scores from the evaluate step's predictions,
95% intervals next to every accuracy in metrics.json, paired differences between two rounds or
two runs, and the label-free self-consistency agreement.

The evaluate step scores each question once and saves the scores with its predictions
(``eval/<set>__<style>.jsonl``, one record per question with its id): a greedy record's
``correct_strict`` / ``correct_flexible`` (GSM8K) or ``em`` / ``f1`` (DROP), a self-consistency
record's ``scores`` (``{"maj@k": .., "pass@m": ..}``, DROP ``maj@k_em`` ...). Its metrics are
their means; :func:`question_scores` reads them back (it scores nothing), so the intervals and
the paired differences bootstrap exactly the scores the metrics average.
:func:`annotate_metrics` adds, to each style's metrics,

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

from collections.abc import Mapping, Sequence
from pathlib import Path

from selfimprove.config.evaluation import StatsConfig
from selfimprove.core.io import InputError, read_jsonl
from selfimprove.core.paths import round_index, sort_rounds
from selfimprove.core.voting import majority_vote
from selfimprove.evaluation.metrics.drop import normalize_span
from selfimprove.evaluation.stats import (
    Interval,
    bootstrap_ci,
    paired_bootstrap_diff,
    paired_seeds_diff,
)

#: per-question fields of a greedy prediction, by metric
_GREEDY = {"strict": "correct_strict", "flexible": "correct_flexible", "em": "em", "f1": "f1"}


# --------------------------------------------------------------------------- per question


def mean(values: Sequence[float]) -> float:
    """The mean of per-question scores, 0.0 for none (how every metric in metrics.json is
    computed from its scores).

    >>> mean([1.0, 0.0, 1.0, 1.0]), mean([])
    (0.75, 0.0)
    """
    return sum(values) / len(values) if values else 0.0


def question_scores(preds: Sequence[dict]) -> tuple[list, dict[str, list[float]]]:
    """``(ids, {metric: per-question scores})`` of one set and style's prediction records, as
    the evaluate step scored them (see the module docstring); nothing is scored again.

    >>> preds = [{"id": "a", "correct_strict": True, "correct_flexible": True},
    ...          {"id": "b", "correct_strict": False, "correct_flexible": True}]
    >>> question_scores(preds)
    (['a', 'b'], {'strict': [1.0, 0.0], 'flexible': [1.0, 1.0]})
    >>> sc = [{"id": "a", "scores": {"maj@1": 0.0, "pass@3": 1.0}},
    ...       {"id": "b", "scores": {"maj@1": 1.0, "pass@3": 1.0}}]
    >>> question_scores(sc)[1]
    {'maj@1': [0.0, 1.0], 'pass@3': [1.0, 1.0]}
    """
    return [p["id"] for p in preds], scores_by_metric(preds)


def scores_by_metric(preds: Sequence[dict]) -> dict[str, list[float]]:
    """:func:`question_scores` without the ids."""
    if not preds:
        return {}
    if "scores" in preds[0]:
        return {m: [float(p["scores"][m]) for p in preds] for m in preds[0]["scores"]}
    fields = {m: f for m, f in _GREEDY.items() if all(f in p for p in preds)}
    return {m: [float(p[f]) for p in preds] for m, f in fields.items()}


def majority_share(answers: Sequence[str | None], drop: bool = False) -> float:
    """The majority answer's share of the paths (``None`` / empty answers count in the
    denominator and never win); DROP answers vote by their normalized span.

    >>> majority_share(["4", "4", "5", None]), majority_share(["the Bears", "Bears.", ""], True)
    (0.5, 0.6666666666666666)
    """
    if drop:
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
    ``label_free`` to ``sc``), from the per-question scores of the predictions keyed
    ``<set>__<style>`` (the scores those metrics are the means of).

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
            _, scores = question_scores(preds)
            ci: dict = {"level": cfg.level}
            for metric in values:
                if metric not in scores:
                    continue
                iv = _interval(scores[metric], cfg)
                if abs(iv.estimate - float(values[metric])) > 1e-9:
                    raise AssertionError(
                        f"internal error: {set_name}.{style}.{metric} is {values[metric]}, "
                        f"but its per-question scores average {iv.estimate}"
                    )
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


#: the compact per-question scores of a round kept in git instead of its predictions
#: (:mod:`selfimprove.evaluation.question_scores` writes it)
QUESTION_SCORES = "question_scores.json"


def read_question_scores(path: str | Path) -> Scores:
    """The compact per-question scores file of a round (:data:`QUESTION_SCORES`):
    ``{"ids": {set: [ids]}, "scores": {"<set>__<style>": {metric: [scores], "ids"?: [..]}}}``;
    a style's scores belong to the first ``len(scores)`` ids of its set unless it has its own
    ``ids``."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        out: Scores = {}
        for key, by_metric in data["scores"].items():
            set_name, style = key.split("__", 1)
            by_metric = dict(by_metric)
            ids = by_metric.pop("ids", None)
            n = len(next(iter(by_metric.values()), []))
            ids = list(ids if ids is not None else data["ids"][set_name][:n])
            out[(set_name, style)] = ids, {m: [float(x) for x in v] for m, v in by_metric.items()}
    except (ValueError, KeyError, TypeError, AttributeError, StopIteration) as e:
        raise InputError(f"{path}: not a question-scores file ({e!r}); rewrite it") from None
    return out


def read_scores(round_path: str | Path, metrics: Mapping) -> Scores:
    """Per-question scores of one round folder (``eval/<set>__<style>.jsonl`` next to its
    metrics.json, whose nested contents are ``metrics``; where a style has no predictions
    file, the compact :data:`QUESTION_SCORES` file kept in git instead); styles with neither
    are left out."""
    round_path = Path(round_path)
    compact_path = round_path / QUESTION_SCORES
    compact = read_question_scores(compact_path) if compact_path.is_file() else {}
    out: Scores = {}
    for set_name, styles in metrics.items():
        if not isinstance(styles, Mapping):
            continue
        for style, values in styles.items():
            path = round_path / "eval" / f"{set_name}__{style}.jsonl"
            if not isinstance(values, Mapping):
                continue
            if path.is_file():
                ids, scores = question_scores(read_jsonl(path, required=["id"]))
            elif (set_name, style) in compact:
                ids, scores = compact[(set_name, style)]
            else:
                continue
            out[(set_name, style)] = ids, {m: v for m, v in scores.items() if m in values}
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
