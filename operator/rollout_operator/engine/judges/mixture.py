"""Always-valid confidence sequences for a difference in means (normal mixture, Robbins 1970).

Why a mixture: a fixed-horizon test looked at after every interval rolls back far more often
than its alpha. The normal-mixture likelihood ratio is a non-negative martingale under the null,
so by Ville's inequality it crosses 1/alpha with probability at most alpha *ever*; inverting it
gives a confidence sequence that may be checked after every interval. Same maths as the mSPRT
of Johari et al. ("Always valid inference", 2017), written for a weighted sum of interval means.

Setting: interval i gives a difference d_i of the variants' mean rewards with variance
sigma^2 / w_i. With D = sum w_i d_i and W = sum w_i, D is a Gaussian martingale in the
information W, and the interval below covers the true difference at every W simultaneously.
"""

from __future__ import annotations

import math
from statistics import NormalDist

__all__ = ["chi2_quantile", "radius", "variance_upper_bound"]


def radius(variance: float, information: float, tau: float, alpha: float) -> float:
    """Half-width of the (1 - alpha) normal-mixture confidence sequence at information W.

    `variance` is one observation's sigma^2, `tau` the mixture's standard deviation (the effect
    size it is tuned to), `alpha` the error allowed over the whole, unbounded sequence.
    """
    if information <= 0 or variance <= 0 or tau <= 0:
        return math.inf
    v = variance / information  # variance of the weighted mean
    t2 = tau * tau
    return math.sqrt(v * (v + t2) / t2 * (2.0 * math.log(1.0 / alpha) + math.log((v + t2) / v)))


def chi2_quantile(q: float, dof: int) -> float:
    """The chi-square quantile: exact for 1 and 2 degrees of freedom, else Wilson-Hilferty.

    Wilson-Hilferty is within ~5% for dof >= 5 and errs low in the lower tail, which only makes
    the variance bound more conservative.
    """
    if dof == 1:
        return NormalDist().inv_cdf((1.0 + q) / 2.0) ** 2
    if dof == 2:
        return -2.0 * math.log(1.0 - q)
    z = NormalDist().inv_cdf(q)
    c = 2.0 / (9.0 * dof)
    return dof * max(1.0 - c + z * math.sqrt(c), 1e-6) ** 3


def variance_upper_bound(sum_sq_dev: float, intervals: int, confidence: float) -> float:
    """An upper confidence bound for sigma^2 from sum w_i (d_i - mean)^2 over `intervals` batches.

    Plugging a point estimate into the mixture makes early looks (few intervals, a noisy
    variance) too bold; the upper bound is wide early and tightens as intervals accumulate.
    """
    dof = intervals - 1
    if dof < 1:
        return math.inf
    return max(sum_sq_dev, 0.0) / chi2_quantile(confidence, dof)
