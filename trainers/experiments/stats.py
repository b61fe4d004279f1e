"""Intervals and power over seeds: the 95% t-interval of a mean, and the smallest difference between
two methods that the design detects (two-sided Student t-test at 5%, power 80%), and the 95% interval of
a difference between two methods (that test)."""

from __future__ import annotations

import math
import statistics

# Quantiles of Student's t for df = 1..30 (standard tables): two-sided 95% (t_0.975) and t_0.80.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
T80 = (1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879, 0.876, 0.873, 0.870, 0.868, 0.866,
       0.865, 0.863, 0.862, 0.861, 0.860, 0.859, 0.858, 0.858, 0.857, 0.856, 0.856, 0.855, 0.855, 0.854, 0.854)


def _cornish_fisher(z: float, df: int) -> float:
    """Student's t quantile from the normal one z, beyond the tables (df > 30): the first two terms
    of the Cornish-Fisher expansion, within 1e-3 there (Abramowitz & Stegun 26.7.5)."""
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t975(df: int) -> float:
    return T975[df - 1] if df <= len(T975) else _cornish_fisher(1.959964, df)


def t80(df: int) -> float:
    return T80[df - 1] if df <= len(T80) else _cornish_fisher(0.841621, df)


def t_interval(scores: list[float]) -> tuple[float, list[float]]:
    """(mean, [lo, hi]): the 95% t-interval of the mean of independent runs (one run: [mean, mean])."""
    m = statistics.fmean(scores)
    if len(scores) < 2:
        return m, [m, m]
    half = t975(len(scores) - 1) * statistics.stdev(scores) / math.sqrt(len(scores))
    return m, [m - half, m + half]


def difference_interval(a: list[float], b: list[float]) -> tuple[float, list[float]]:
    """(mean(a) - mean(b), its 95% interval) from Student's two-sample t with pooled variance, df =
    len(a) + len(b) - 2: the test `detectable_difference` is designed for. The interval excludes 0
    exactly when that two-sided t-test rejects equal means at 5%."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    df = len(a) + len(b) - 2
    if len(a) < 2 or len(b) < 2:
        return diff, [diff, diff]
    half = t975(df) * pooled_sd([a, b]) * math.sqrt(1 / len(a) + 1 / len(b))
    return diff, [diff - half, diff + half]


def pooled_sd(groups: list[list[float]]) -> float:
    """The pooled standard deviation of several groups of runs (each >= 2 runs)."""
    groups = [g for g in groups if len(g) >= 2]
    df = sum(len(g) - 1 for g in groups)
    if not df:
        return 0.0
    return math.sqrt(sum(statistics.variance(g) * (len(g) - 1) for g in groups) / df)


def detectable_difference(sd: float, n: int) -> float:
    """The smallest true difference between two methods' means, each over n seeds with standard
    deviation sd, that a two-sided t-test at 5% detects with probability 80%: the usual approximation
    (t_{0.975, 2n-2} + t_{0.80, 2n-2}) * sd * sqrt(2 / n), whose exact power (noncentral t) is 0.77 at
    n = 2 and within 0.02 of 0.80 from n = 3 (tests/trainers/test_experiments.py)."""
    if n < 2:
        return math.inf
    df = 2 * n - 2
    return (t975(df) + t80(df)) * sd * math.sqrt(2 / n)
