"""The quality share of routed traffic relative to the reference model, with a confidence interval.

Each judged call gives a pair of judge scores in [0, 1]: the routed answer's and the reference model's answer
to the same prompt, and a weight, the inverse of the probability that the call was judged (calls where routing
cannot differ from the reference are judged less often). The share is the weighted ``mean(routed) /
mean(reference)`` (a Hajek ratio). A judge is biased; where some of the judged calls also carry exact labels
(human review, ``/v1/feedback``), prediction-powered inference (Angelopoulos et al., 2023) corrects each mean by
the judge's weighted average error on the calls with an exact label of that answer (the served answer's feedback
often comes without one of the reference's), once there are :data:`MIN_EXACT` of them, and the interval widens by
the uncertainty of that correction (the two corrections' variances are added when they rest on different calls,
which ignores their covariance).
The interval is the delta method's normal interval of the ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

# Exact labels of an answer from which its judge's error is corrected. The correction and its variance are estimated
# from those labels alone, and from a handful of weighted ones both are too rough to trust: one flipped label among
# two can double a share and narrow its interval. Chosen on the validation streams of benchmarks/online_quality.py.
MIN_EXACT = 10


@dataclass(frozen=True)
class ShareEstimate:
    """The share, its interval at the confidence asked for, and how many judged and exact labels are behind it.
    An estimate without labels has share None and the interval [0, inf)."""

    share: float | None
    lower: float
    upper: float
    labels: int
    exact: int

    def as_dict(self) -> dict:
        """JSON-safe: an unbounded upper end is None."""
        upper = self.upper if math.isfinite(self.upper) else None
        return {"share": self.share, "lower": self.lower, "upper": upper, "labels": self.labels, "exact": self.exact}


def _weighted(values: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """(weighted mean, the variance of that mean) of ``values``; the variance is inf below two values."""
    total = weights.sum()
    mean = float((weights * values).sum() / total)
    if len(values) < 2:
        return mean, float("inf")
    n = len(values)
    return mean, float((weights**2 * (values - mean) ** 2).sum() / total**2 * n / (n - 1))


def quality_share(routed, reference, exact_routed=None, exact_reference=None, weights=None,
                  confidence: float = 0.8) -> ShareEstimate:
    """The routed traffic's share of the reference's quality from judged pairs (``routed[i]``,
    ``reference[i]``) of weight ``weights[i]`` (default 1); ``exact_*`` hold the exact labels of the same answers,
    NaN where an answer has none. ``confidence`` is the two-sided level of the interval (0.8: the lower bound holds
    with 90%)."""
    routed, reference = np.asarray(routed, dtype=float), np.asarray(reference, dtype=float)
    if routed.shape != reference.shape:
        raise ValueError(f"routed ({routed.shape}) and reference ({reference.shape}) scores differ in shape")
    n = routed.size
    if n == 0:
        return ShareEstimate(None, 0.0, float("inf"), 0, 0)
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    exact_r = np.full(n, np.nan) if exact_routed is None else np.asarray(exact_routed, dtype=float)
    exact_f = np.full(n, np.nan) if exact_reference is None else np.asarray(exact_reference, dtype=float)
    known_r, known_f = ~np.isnan(exact_r), ~np.isnan(exact_f)
    m = int((known_r | known_f).sum())
    correct_r, correct_f = int(known_r.sum()) >= MIN_EXACT, int(known_f.sum()) >= MIN_EXACT
    error_r, error_f = exact_r - routed, exact_f - reference
    mean_f = _weighted(reference, weights)[0] + (_weighted(error_f[known_f], weights[known_f])[0] if correct_f else 0.0)
    if mean_f <= 0:
        return ShareEstimate(None, 0.0, float("inf"), n, m)
    mean_r = _weighted(routed, weights)[0] + (_weighted(error_r[known_r], weights[known_r])[0] if correct_r else 0.0)
    share = mean_r / mean_f
    variance = _weighted((routed - share * reference) / mean_f, weights)[1]
    both = known_r & known_f
    if correct_r and correct_f and (both == known_r).all() and (both == known_f).all():
        variance += _weighted((error_r[both] - share * error_f[both]) / mean_f, weights[both])[1]
    else:  # labelled on different calls (feedback on the served answer alone): the two corrections' variances
        if correct_r:
            variance += _weighted(error_r[known_r] / mean_f, weights[known_r])[1]
        if correct_f:
            variance += share**2 * _weighted(error_f[known_f] / mean_f, weights[known_f])[1]
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * float(np.sqrt(variance))
    return ShareEstimate(float(share), max(0.0, float(share - half)), float(share + half), n, m)
