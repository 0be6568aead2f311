"""flmk.stats: the paired bootstrap over test images and seeds behind every report's intervals and p-values."""

from __future__ import annotations

import numpy as np
import pytest

from flmk.metrics import auc, failure_rate
from flmk.stats import image_draws, interval, paired_test, per_image_score, seed_draws


def errors(seed: int, n: int = 300) -> np.ndarray:
    """Per-image NMEs shaped like a landmark detector's: skewed, around 4 %."""
    return np.random.default_rng(seed).gamma(4.0, 0.01, n)


def test_a_known_difference_on_the_same_images_is_significant():
    a = errors(0)
    b = a + 0.002 + np.random.default_rng(1).normal(0, 0.004, a.size)  # 0.2 points worse, image by image
    delta, p = paired_test(b, a)
    assert delta == pytest.approx(0.002, abs=5e-4)
    assert p < 0.01


def test_two_draws_from_one_distribution_are_not_significant():
    delta, p = paired_test(errors(10), errors(11))
    assert p > 0.2
    rejected = [paired_test(errors(100 + 2 * s), errors(101 + 2 * s), seed=s, n_boot=500)[1] < 0.05 for s in range(30)]
    assert sum(rejected) <= 4  # about 5 % of 30 expected; a test that always rejects fails here


def test_a_gap_smaller_than_the_seed_to_seed_swing_is_not_significant():
    """Row a's two seeds land 4 points apart, row b's both in the middle: a 0.5-point gap between the means is
    constant image by image (an image-only test calls it certain), but a third seed could flip it."""
    base = errors(2)
    a = np.stack([base, base + 0.04])
    b = np.stack([base + 0.015, base + 0.015])
    assert paired_test(a.mean(0), b.mean(0))[1] < 0.01  # pooled over seeds: "significant"
    delta, p = paired_test(a, b)
    assert delta == pytest.approx(0.005)
    assert p > 0.2


def test_per_image_scores_average_to_the_metrics():
    e = np.concatenate([errors(3), [np.inf, np.nan, 0.2]])
    for t in (0.08, 0.10):
        assert np.nanmean(per_image_score(f"fr@{t}", e)) == pytest.approx(failure_rate(e, t))
        assert np.nanmean(per_image_score(f"auc@{t}", e)) == pytest.approx(auc(e, t), abs=2e-4)
    assert np.array_equal(per_image_score("nme_io", e), e, equal_nan=True)
    with pytest.raises(ValueError, match="jitter"):
        per_image_score("jitter", e)


def test_image_interval_matches_the_standard_error_of_the_mean():
    e = errors(4, 2000)
    lo, hi = interval(seed_draws(image_draws(e[None], np.random.default_rng(0)), np.random.default_rng(1)))
    half = 1.96 * e.std(ddof=1) / np.sqrt(e.size)
    assert lo < e.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)


def test_image_draws_keep_runs_paired_and_skip_nan_images():
    e = errors(5, 50)
    runs = np.stack([e, e + 1.0, np.where(np.arange(50) % 2, e, np.nan)])
    draws = image_draws(runs, np.random.default_rng(0), n_boot=64)
    np.testing.assert_allclose(draws[1] - draws[0], 1.0)  # the same images in every run of a draw
    assert np.isfinite(draws[2]).all() and not np.allclose(draws[2], draws[0])
