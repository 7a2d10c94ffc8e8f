"""The quality share estimate (router_ml.online.estimate) on real RouterBench outcomes: a cheaper model's answers
against GPT-4's on the same prompts."""

from __future__ import annotations

import numpy as np
import pytest

from router_ml.online.estimate import MIN_EXACT, quality_share
from real_streams import REFERENCE, routerbench_matrix


@pytest.fixture(scope="module")
def pairs(real_files):
    matrix = routerbench_matrix(real_files)
    return matrix.quality[:, matrix.models.index("mistralai/mixtral-8x7b-chat")], \
        matrix.quality[:, matrix.models.index(REFERENCE)]


def test_the_share_is_the_ratio_of_means_inside_its_interval(pairs):
    routed, reference = pairs
    estimate = quality_share(routed, reference)
    assert estimate.share == pytest.approx(routed.mean() / reference.mean())
    assert estimate.lower < estimate.share < estimate.upper and estimate.labels == len(routed)
    assert quality_share(routed, reference, confidence=0.95).lower < estimate.lower  # wider at 95%


def test_the_lower_bound_holds_about_as_often_as_asked(pairs):
    """200 random samples of 100 pairs: the 90% one-sided bound (confidence 0.8) stays under the share of all."""
    routed, reference = pairs
    truth = routed.mean() / reference.mean()
    rng = np.random.default_rng(0)
    held = [quality_share(routed[s], reference[s]).lower <= truth
            for s in (rng.choice(len(routed), 100, replace=False) for _ in range(200))]
    assert 0.84 <= np.mean(held) <= 0.97


def test_exact_labels_correct_a_biased_judge(pairs):
    """A judge that fails 30% of the routed answers it should pass: alone it underrates the share; exact labels on
    a fifth of the calls bring the estimate back within its interval of the truth."""
    routed, reference = pairs
    truth = routed.mean() / reference.mean()
    rng = np.random.default_rng(1)
    judged = np.where((routed == 1) & (rng.random(len(routed)) < 0.3), 0.0, routed)
    biased = quality_share(judged, reference)
    assert biased.upper < truth
    labeled = rng.random(len(routed)) < 0.2
    corrected = quality_share(judged, reference, np.where(labeled, routed, np.nan), np.where(labeled, reference, np.nan))
    assert corrected.lower <= truth <= corrected.upper and corrected.exact == labeled.sum()
    assert corrected.upper - corrected.lower > biased.upper - biased.lower  # the correction's own uncertainty
    everything = quality_share(judged, reference, routed, reference)
    assert everything.share == pytest.approx(truth)


def test_too_few_exact_labels_correct_nothing(pairs):
    """Below MIN_EXACT exact labels of an answer the judge's scores stand as they are: a correction estimated from a
    handful of labels (here one judge error among them) would move the share by far more than it knows."""
    routed, reference = pairs
    judged = routed.copy()
    few = np.flatnonzero(routed == 1)[:MIN_EXACT - 1]
    judged[few[0]] = 0.0  # the judge got one of the labelled answers wrong
    exact = np.full(len(routed), np.nan)
    exact[few] = routed[few]
    alone = quality_share(judged, reference)
    assert quality_share(judged, reference, exact).share == pytest.approx(alone.share)
    exact[np.flatnonzero(routed == 1)[MIN_EXACT - 1]] = 1.0
    assert quality_share(judged, reference, exact).share > alone.share


def test_feedback_on_the_served_answers_alone_corrects_the_judge_too(pairs):
    """/v1/feedback labels the served answer, seldom the reference's: exact labels of the routed answers only, on
    a fifth of the calls, still bring the biased judge's estimate back within its interval of the truth."""
    routed, reference = pairs
    truth = routed.mean() / reference.mean()
    rng = np.random.default_rng(2)
    judged = np.where((routed == 1) & (rng.random(len(routed)) < 0.3), 0.0, routed)
    assert quality_share(judged, reference).upper < truth
    labeled = rng.random(len(routed)) < 0.2
    corrected = quality_share(judged, reference, np.where(labeled, routed, np.nan))
    assert corrected.lower <= truth <= corrected.upper and corrected.exact == labeled.sum()


def test_no_labels_is_no_estimate_and_mismatched_pairs_are_refused():
    assert quality_share([], []).share is None and quality_share([], []).lower == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        quality_share([1.0, 0.0], [1.0])
