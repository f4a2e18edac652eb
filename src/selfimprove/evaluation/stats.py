"""Confidence intervals by the bootstrap: deterministic (seeded), no labels needed.

Every function resamples *questions* with replacement (the unit a held-out score averages
over) and returns an :class:`Interval`: the point estimate (the plain mean, as the metrics
files report it) and the percentile interval at ``level`` (default 95%).

* :func:`bootstrap_ci`: the mean of per-question scores (accuracy: 0/1; DROP F1: in [0, 1]).
* :func:`paired_bootstrap_diff`: ``mean(b) - mean(a)`` for two systems scored on the *same*
  questions: each resample draws one set of questions for both, so the question-to-question
  spread that both share cancels out (a much narrower interval than two separate ones).
* :func:`seeds_bootstrap_ci` / :func:`paired_seeds_diff`: the same when several runs (seeds)
  exist: a resample draws runs with replacement *and* questions with replacement (crossed: the
  drawn questions apply to every drawn run), so the interval covers both the run-to-run spread
  (sampling and training randomness) and the question sampling. With one run each they are
  exactly :func:`bootstrap_ci` / :func:`paired_bootstrap_diff`.

The first two are :func:`scipy.stats.bootstrap` (``method="percentile"``, seeded generator,
batches of resamples to bound memory); the crossed one is ours, because scipy resamples the
observations of each sample independently and cannot draw one set of questions shared by runs.

Same inputs, seed and ``n_resamples`` give the same interval, bit for bit. Caveat of the
percentile bootstrap: a score of 0 or 1 on every question gives a zero-width interval (no
spread to resample), and with few questions (n < ~30) intervals come out somewhat too narrow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

#: resampled means held in memory at once (resamples x questions), to bound memory on big sets
_CHUNK = 2_000_000


class Interval(NamedTuple):
    """A point estimate and its confidence interval ``[lo, hi]``."""

    estimate: float
    lo: float
    hi: float

    def rounded(self, digits: int = 4) -> Interval:
        """The three numbers rounded (for display and doctests).

        >>> Interval(0.123456, 0.1, 0.2).rounded(3)
        Interval(estimate=0.123, lo=0.1, hi=0.2)
        """
        return Interval(*(round(float(x), digits) for x in self))

    @property
    def width(self) -> float:
        return self.hi - self.lo


def _check(level: float, n_resamples: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r}: a confidence level is between 0 and 1 (e.g. 0.95)")
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples!r}: need at least 1 resample (e.g. 1000)")


def _matrix(runs: Sequence[Sequence[float]], name: str) -> np.ndarray:
    """Runs x questions as floats; every run must score the same (non-empty) questions."""
    lengths = {len(r) for r in runs}
    if not runs or lengths == {0}:
        raise ValueError(f"{name}: no scores (need at least one run with one question)")
    if len(lengths) > 1:
        raise ValueError(
            f"{name}: runs score different numbers of questions {sorted(lengths)}; pair them "
            "on the same questions first (selfimprove.evaluation.intervals.align)"
        )
    out = np.asarray(runs, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name}: scores must be finite numbers")
    return out


def _percentiles(stats: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _scipy_percentile(
    data: tuple[np.ndarray, ...], statistic, seed: int, n_resamples: int, level: float
) -> tuple[float, float]:
    """The percentile-bootstrap interval of ``statistic`` over questions, ``data``'s samples
    resampled together (paired) when there are two."""
    n = data[0].shape[-1]
    if n == 1:  # scipy needs two observations; every resample of one question is that question
        point = float(statistic(*data, axis=-1))
        return point, point
    res = stats.bootstrap(
        data,
        statistic,
        n_resamples=n_resamples,
        batch=max(1, _CHUNK // n),
        vectorized=True,
        paired=len(data) > 1,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean_diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return (b - a).mean(axis=axis)


def bootstrap_ci(
    values: Sequence[float], seed: int = 0, n_resamples: int = 1000, level: float = 0.95
) -> Interval:
    """The mean of per-question scores and its percentile-bootstrap interval.

    >>> bootstrap_ci([1, 0, 1, 1, 0, 1, 1, 0, 1, 1], seed=0).rounded(2)
    Interval(estimate=0.7, lo=0.4, hi=1.0)
    >>> bootstrap_ci([1.0] * 20)  # no spread to resample: zero width
    Interval(estimate=1.0, lo=1.0, hi=1.0)
    >>> bootstrap_ci([1, 0] * 50, seed=3) == bootstrap_ci([1, 0] * 50, seed=3)  # deterministic
    True
    """
    _check(level, n_resamples)
    v = _matrix([values], "bootstrap_ci")[0]
    lo, hi = _scipy_percentile((v,), np.mean, seed, n_resamples, level)
    return Interval(float(v.mean()), lo, hi)


def paired_bootstrap_diff(
    a: Sequence[float],
    b: Sequence[float],
    seed: int = 0,
    n_resamples: int = 1000,
    level: float = 0.95,
) -> Interval:
    """``mean(b) - mean(a)`` over the same questions (``a[i]`` and ``b[i]`` score question i)
    and its paired percentile-bootstrap interval.

    >>> a = [1, 0, 1, 0, 1, 0, 0, 1, 0, 0]
    >>> paired_bootstrap_diff(a, a)  # identical systems: exactly zero, zero width
    Interval(estimate=0.0, lo=0.0, hi=0.0)
    >>> paired_bootstrap_diff(a, [1] * 10).rounded(2)  # b right everywhere: +0.6
    Interval(estimate=0.6, lo=0.3, hi=0.9)
    """
    _check(level, n_resamples)
    m = _matrix([a, b], "paired_bootstrap_diff")
    lo, hi = _scipy_percentile((m[0], m[1]), _mean_diff, seed, n_resamples, level)
    return Interval(float((m[1] - m[0]).mean()), lo, hi)


def _seed_means(
    m: np.ndarray, q_idx: np.ndarray, rng: np.random.Generator, sizes: int
) -> np.ndarray:
    """Per resample (a row of ``q_idx``): the mean over ``len(m)`` runs drawn with replacement
    of each run's mean over the drawn questions."""
    n_runs = len(m)
    per_run = m[:, q_idx].mean(axis=2)  # runs x resamples
    if n_runs == 1:
        return per_run[0]
    s_idx = rng.integers(0, n_runs, size=(sizes, n_runs))
    return np.take_along_axis(per_run.T, s_idx, axis=1).mean(axis=1)


def _crossed(
    groups: Sequence[np.ndarray], rng: np.random.Generator, n_resamples: int
) -> list[np.ndarray]:
    """Resampled grand means of each group (runs x the same questions), the questions drawn
    once per resample for all groups (paired), the runs independently per group."""
    n = groups[0].shape[1]
    step = max(1, _CHUNK // (n * max(len(g) for g in groups)))
    out: list[list[np.ndarray]] = [[] for _ in groups]
    for start in range(0, n_resamples, step):
        size = min(step, n_resamples - start)
        q_idx = rng.integers(0, n, size=(size, n))
        for i, g in enumerate(groups):
            out[i].append(_seed_means(g, q_idx, rng, size))
    return [np.concatenate(o) for o in out]


def seeds_bootstrap_ci(
    runs: Sequence[Sequence[float]], seed: int = 0, n_resamples: int = 1000, level: float = 0.95
) -> Interval:
    """The mean over several runs (seeds) scored on the same questions, with an interval that
    resamples both runs and questions (``runs[s][i]``: run s's score on question i).

    >>> runs = [[1, 0, 1, 1, 0, 1, 1, 0, 1, 1], [0, 0, 1, 1, 0, 1, 0, 0, 1, 1]]
    >>> seeds_bootstrap_ci(runs).rounded(2)
    Interval(estimate=0.6, lo=0.3, hi=0.9)
    >>> seeds_bootstrap_ci(runs[:1]) == bootstrap_ci(runs[0])  # one run: over questions only
    True
    """
    _check(level, n_resamples)
    m = _matrix(runs, "seeds_bootstrap_ci")
    if len(m) == 1:
        return bootstrap_ci(m[0], seed, n_resamples, level)
    rng = np.random.default_rng(seed)
    (means,) = _crossed([m], rng, n_resamples)
    lo, hi = _percentiles(means, level)
    return Interval(float(m.mean()), lo, hi)


def paired_seeds_diff(
    runs_a: Sequence[Sequence[float]],
    runs_b: Sequence[Sequence[float]],
    seed: int = 0,
    n_resamples: int = 1000,
    level: float = 0.95,
) -> Interval:
    """``mean(b runs) - mean(a runs)`` for two systems with several runs each on the same
    questions: the questions are drawn once per resample for both (paired), the runs of each
    system independently (seed s of a and seed s of b are not assumed to be related).

    >>> a = [[1, 0, 1, 0, 1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 1, 0, 1, 1, 0, 0]]
    >>> paired_seeds_diff(a, a).estimate, paired_seeds_diff(a[:1], a[:1]).width
    (0.0, 0.0)
    >>> paired_seeds_diff(a, [[1] * 10, [1] * 10]).rounded(2)
    Interval(estimate=0.6, lo=0.3, hi=0.9)
    >>> paired_seeds_diff(a[:1], [[1] * 10]) == paired_bootstrap_diff(a[0], [1] * 10)
    True
    """
    _check(level, n_resamples)
    ma, mb = _matrix(runs_a, "paired_seeds_diff (a)"), _matrix(runs_b, "paired_seeds_diff (b)")
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(
            f"paired_seeds_diff: a scores {ma.shape[1]} questions, b {mb.shape[1]}; pair them "
            "on the same questions first (selfimprove.evaluation.intervals.align)"
        )
    if len(ma) == len(mb) == 1:
        return paired_bootstrap_diff(ma[0], mb[0], seed, n_resamples, level)
    rng = np.random.default_rng(seed)
    means_a, means_b = _crossed([ma, mb], rng, n_resamples)
    lo, hi = _percentiles(means_b - means_a, level)
    return Interval(float(mb.mean() - ma.mean()), lo, hi)
