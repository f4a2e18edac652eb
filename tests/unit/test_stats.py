"""The bootstrap intervals (evaluation/stats.py): known small cases, determinism, coverage of
the true mean in repeated draws, paired differences, and the several-seeds versions."""

from __future__ import annotations

import numpy as np
import pytest

import selfimprove.evaluation.stats as stats_mod
from selfimprove.evaluation.stats import (
    Interval,
    bootstrap_ci,
    paired_bootstrap_diff,
    paired_seeds_diff,
    seeds_bootstrap_ci,
)


def test_known_small_cases():
    # a constant has no spread: the interval is the point, at any level
    assert bootstrap_ci([0.0] * 7) == Interval(0.0, 0.0, 0.0)
    assert bootstrap_ci([1] * 3, level=0.5) == Interval(1.0, 1.0, 1.0)
    # one question: every resample is that question
    assert bootstrap_ci([0.25]) == Interval(0.25, 0.25, 0.25)
    # the estimate is the plain mean (what metrics.json reports), inside its interval
    iv = bootstrap_ci([1, 1, 0, 1])
    assert iv.estimate == 0.75 and iv.lo <= 0.75 <= iv.hi
    # two values 0 and 1: resampled means are k/2, k ~ Binomial(2, 1/2): 0, .5 or 1
    assert bootstrap_ci([0, 1], n_resamples=2000, level=0.9) == Interval(0.5, 0.0, 1.0)
    assert bootstrap_ci([0, 1], n_resamples=2000, level=0.4) == Interval(0.5, 0.5, 0.5)


def test_matches_the_normal_approximation_on_a_large_sample():
    rng = np.random.default_rng(1)
    x = (rng.random(2000) < 0.3).astype(float)
    iv = bootstrap_ci(x, n_resamples=4000)
    se = np.sqrt(x.mean() * (1 - x.mean()) / len(x))
    assert iv.lo == pytest.approx(x.mean() - 1.96 * se, abs=0.004)
    assert iv.hi == pytest.approx(x.mean() + 1.96 * se, abs=0.004)


def test_deterministic_and_seeded():
    x = [1, 0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 1]
    assert bootstrap_ci(x, seed=4) == bootstrap_ci(list(x), seed=4)
    assert bootstrap_ci(x, seed=4) == bootstrap_ci(np.array(x, dtype=float), seed=4)
    # another seed, other resamples (continuous scores: the interval ends move)
    f1 = np.random.default_rng(0).random(30)
    assert len({bootstrap_ci(f1, seed=s) for s in range(4)}) == 4
    # wider at a higher level, same resamples
    a, b = bootstrap_ci(x, level=0.8), bootstrap_ci(x, level=0.99)
    assert b.lo <= a.lo <= a.hi <= b.hi and b.width > a.width


@pytest.mark.parametrize("p, n", [(0.5, 100), (0.8, 60)])
def test_coverage_is_near_the_level(p, n):
    """Draw many test sets from a known accuracy p: about 95% of the intervals hold p (the
    percentile bootstrap runs a bit narrow at small n, hence the loose lower bound)."""
    rng = np.random.default_rng(12345)
    trials = 300
    hits = 0
    for t in range(trials):
        x = (rng.random(n) < p).astype(float)
        iv = bootstrap_ci(x, seed=t, n_resamples=400)
        hits += iv.lo <= p <= iv.hi
    assert 0.88 <= hits / trials <= 0.99, hits / trials


def test_paired_difference():
    a = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1]
    assert paired_bootstrap_diff(a, a) == Interval(0.0, 0.0, 0.0)
    assert paired_bootstrap_diff(a, a, seed=9, level=0.5).width == 0.0
    b = [1, 1, 1, 1, 0, 1, 1, 0, 1, 1]  # a plus two more right
    iv = paired_bootstrap_diff(a, b)
    assert iv.estimate == pytest.approx(0.2) and iv.lo >= 0.0 and iv.hi <= 0.5
    # antisymmetric: a - b is minus b - a (the same resampled questions)
    back = paired_bootstrap_diff(b, a)
    assert back.estimate == pytest.approx(-iv.estimate)
    assert (back.lo, back.hi) == pytest.approx((-iv.hi, -iv.lo))


def test_pairing_is_narrower_than_two_separate_intervals():
    """Two strongly correlated systems (b = a with a few flips): the paired interval of the
    difference is much narrower than the intervals of either system alone."""
    rng = np.random.default_rng(0)
    a = (rng.random(200) < 0.5).astype(float)
    b = a.copy()
    b[:10] = 1.0
    paired = paired_bootstrap_diff(a, b)
    alone = bootstrap_ci(a)
    assert paired.width < alone.width / 2


def test_seeds_versions():
    rng = np.random.default_rng(2)
    same = (rng.random(80) < 0.5).astype(float)
    one = seeds_bootstrap_ci([same])
    assert one == bootstrap_ci(same)
    # identical runs: the grand mean is the one run's; seed resampling adds nothing
    assert seeds_bootstrap_ci([same, same, same]).estimate == pytest.approx(same.mean())
    # runs that disagree a lot widen the interval beyond the one-run bootstrap
    runs = [(rng.random(80) < p).astype(float) for p in (0.2, 0.5, 0.8)]
    wide = seeds_bootstrap_ci(runs, n_resamples=2000)
    assert wide.width > bootstrap_ci(np.mean(runs, axis=0), n_resamples=2000).width
    # paired over seeds: identical groups give an exact 0; one run each = the paired bootstrap
    assert paired_seeds_diff(runs, runs).estimate == 0.0
    assert paired_seeds_diff([runs[0]], [runs[1]]) == paired_bootstrap_diff(runs[0], runs[1])
    assert paired_seeds_diff(runs[:2], runs[1:]).estimate == pytest.approx(
        np.mean(runs[1:]) - np.mean(runs[:2])
    )
    assert seeds_bootstrap_ci(runs, seed=5) == seeds_bootstrap_ci(runs, seed=5)


def test_chunked_resampling_is_deterministic(monkeypatch):
    """Large sets are resampled in chunks: still deterministic, and the same interval up to
    resampling noise."""
    x = (np.arange(5000) % 3 == 0).astype(float)
    whole = bootstrap_ci(x, n_resamples=500)
    monkeypatch.setattr(stats_mod, "_CHUNK", 50_000)  # 10 resamples per chunk
    chunked = bootstrap_ci(x, n_resamples=500)
    assert chunked == bootstrap_ci(x, n_resamples=500)
    assert chunked.lo == pytest.approx(whole.lo, abs=0.005)
    assert chunked.hi == pytest.approx(whole.hi, abs=0.005)
    runs = [x, np.roll(x, 1)]
    assert seeds_bootstrap_ci(runs, n_resamples=50) == seeds_bootstrap_ci(runs, n_resamples=50)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: bootstrap_ci([]), "no scores"),
        (lambda: bootstrap_ci([1, 0], level=1.0), "level=1.0"),
        (lambda: bootstrap_ci([1, 0], n_resamples=0), "n_resamples=0"),
        (lambda: bootstrap_ci([1, float("nan")]), "finite"),
        (lambda: paired_bootstrap_diff([1, 0], [1]), "different numbers of questions"),
        (lambda: seeds_bootstrap_ci([[1, 0], [1]]), "different numbers of questions"),
        (lambda: paired_seeds_diff([[1, 0]], [[1, 0, 1]]), "a scores 2 questions, b 3"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call()


def _numpy_reference(values, seed=0, n_resamples=1000, level=0.95):
    """The hand-written bootstrap these functions used before scipy (one chunk of resamples):
    kept here as the reference the scipy-based intervals must reproduce."""
    v = np.asarray(values, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n_resamples, len(v)))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(v[idx].mean(axis=1), [alpha, 1.0 - alpha])
    return Interval(float(v.mean()), float(lo), float(hi))


@pytest.mark.parametrize("n", [2, 10, 137, 1319])
@pytest.mark.parametrize("seed", [0, 7])
def test_scipy_intervals_match_the_former_numpy_bootstrap(n, seed):
    """scipy.stats.bootstrap (method='percentile', same n_resamples, generator seeded with the
    same seed) draws the same resamples as the former numpy code: the intervals agree to 1e-12
    (float rounding only), for accuracies (0/1), F1-like scores and paired differences."""
    rng = np.random.default_rng(100 + n)
    acc = (rng.random(n) < 0.4).astype(float)
    f1 = rng.random(n)
    for values in (acc, f1):
        for level in (0.95, 0.8):
            old = _numpy_reference(values, seed, level=level)
            assert bootstrap_ci(values, seed, level=level) == pytest.approx(old, abs=1e-12, rel=0)
    b = np.where(rng.random(n) < 0.2, 1.0 - acc, acc)
    assert paired_bootstrap_diff(acc, b, seed) == pytest.approx(
        _numpy_reference(b - acc, seed), abs=1e-12, rel=0
    )
    # deterministic for a seed, bit for bit
    assert bootstrap_ci(f1, seed) == bootstrap_ci(f1.copy(), seed)
    assert paired_bootstrap_diff(acc, b, seed) == paired_bootstrap_diff(list(acc), list(b), seed)
