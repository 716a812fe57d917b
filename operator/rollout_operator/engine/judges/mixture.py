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

__all__ = ["chi2_quantile", "radius", "t_bounds", "t_log_ratio", "variance_upper_bound"]


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


def t_log_ratio(d: float, q: float, w: float, k: int, rho: float, delta0: float = 0.0) -> float:
    """log of Lai's mixture likelihood ratio for H0: difference = delta0, with sigma unknown.

    Linear model d_i = delta + sigma * e_i / sqrt(w_i) over k intervals, summarised by
    D = sum w_i d_i, Q = sum w_i d_i^2 and W = sum w_i. The mixture puts delta/sigma ~ N(0, 1/rho)
    and the scale-invariant prior on sigma, which integrates sigma out:
    Lambda = sqrt(rho / (W + rho)) * (Q0 / (Q0 - D0^2 / (W + rho)))^(k/2), with D0, Q0 shifted by
    delta0. Under H0 it is a test martingale for the scale-invariant filtration (Lai 1976;
    Perez-Ortiz et al. 2024), so crossing 1/alpha has probability at most alpha, at any look.
    """
    d0 = d - w * delta0
    q0 = q - 2.0 * delta0 * d + delta0 * delta0 * w
    rest = q0 - d0 * d0 / (w + rho)
    if q0 <= 0 or rest <= 0:
        return math.inf if d0 != 0 else -math.inf
    return 0.5 * math.log(rho / (w + rho)) + 0.5 * k * (math.log(q0) - math.log(rest))


def t_bounds(d: float, q: float, w: float, k: int, rho: float, alpha: float) -> tuple[float, float]:
    """The confidence sequence from inverting `t_log_ratio`: every delta0 it does not reject.

    Closed form: with S = Q - D^2/W (free of delta0), x = D0^2/W and c = rho/(W + rho),
    log Lambda = log(c)/2 + (k/2) log((S + x) / (S + c x)), increasing in x; setting it to
    log(1/alpha) gives x*, and the sequence is estimate +- sqrt(x*/W). When even x -> infinity
    stays below the threshold (too few intervals for this alpha), it is the whole line.
    """
    estimate = d / w
    s = max(q - d * d / w, 0.0)
    c = rho / (w + rho)
    ratio = math.exp((2.0 * math.log(1.0 / alpha) - math.log(c)) / k)
    if ratio * c >= 1.0:
        return -math.inf, math.inf
    half_width = math.sqrt(s * (ratio - 1.0) / (1.0 - ratio * c) / w)
    return estimate - half_width, estimate + half_width
