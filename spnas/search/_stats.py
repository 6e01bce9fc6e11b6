"""The statistics of a search's verdicts: the paired 95 % interval and a trial's noise.

No scipy: Student's t quantile is found numerically (Simpson's rule on the density, then
bisection on the distribution function), which is exact to far more digits than any AP.
The interval is the paired *t* interval, not a bootstrap: verification runs 2–5 repeats, and
a bootstrap of 3 paired differences has 10 distinct resamples, so its percentiles are the
sample's own extremes and its interval is far too narrow.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence

#: Simpson intervals between 0 and ``x`` for Student's t distribution function.
_SIMPSON_STEPS = 2000


def _t_density(x: float, df: int) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def _t_cdf(x: float, df: int) -> float:
    """P(T ≤ x) for ``x ≥ 0``: one half plus the density integrated from 0 to ``x``."""
    h = x / _SIMPSON_STEPS
    total = _t_density(0.0, df) + _t_density(x, df)
    for i in range(1, _SIMPSON_STEPS):
        total += (4 if i % 2 else 2) * _t_density(i * h, df)
    return 0.5 + total * h / 3


@functools.lru_cache(maxsize=64)
def t_quantile(p: float, df: int) -> float:
    """Student's t quantile: the ``x`` with P(T ≤ x) = ``p``, for ``0.5 ≤ p < 1``.

    Raises:
        ValueError: ``df`` is not a positive integer, or ``p`` is outside ``[0.5, 1)``.
    """
    if not isinstance(df, int) or df < 1:
        raise ValueError(f"t_quantile: degrees of freedom {df!r}: expected an integer ≥ 1")
    if not 0.5 <= p < 1:
        raise ValueError(f"t_quantile: probability {p!r}: expected 0.5 ≤ p < 1")
    high = 1.0
    while _t_cdf(high, df) < p:
        high *= 2
    low = 0.0
    while high - low > 1e-9 * high:
        middle = (low + high) / 2
        if _t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def paired_interval(differences: Sequence[float], level: float = 0.95) -> list[float] | None:
    """The paired *t* interval of the mean of ``differences`` (one per paired seed):
    ``mean ± t((1 + level) / 2, n − 1) · s / √n``, as ``[low, high]``; ``None`` with fewer
    than two differences (their spread is unknown)."""
    n = len(differences)
    if n < 2:
        return None
    mean = statistics.fmean(differences)
    half = t_quantile((1 + level) / 2, n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return [mean - half, mean + half]


def noise_sigma(values: Sequence[float]) -> float | None:
    """σ_trial: the standard deviation of one network's trials that differ only by their
    training seed (a round's control repeats); ``None`` with fewer than two."""
    return statistics.stdev(values) if len(values) >= 2 else None
