"""Spread and significance of a table's numbers: a bootstrap over test images and over seeds.

Two kinds of chance move a row's number: which test images were drawn (the same N images for every row) and
which seed trained the model (each row its own seeds). The bootstrap here redraws both. Each draw picks one
multiset of the N images, shared by every run of every row, so that rows stay paired on the same images; then,
for each row, a multiset of its n seeds. A row's draw is the mean over its drawn seeds of each seed's metric on
the drawn images. With one seed per row this is the plain paired bootstrap over images; with several, a gap
between rows that is smaller than the seed-to-seed swing is not called significant.

Every metric of a table is a mean of a per-image score (:func:`per_image_score`), so a run's metric on a
multiset of images is a weighted mean of its scores, with the multiset's counts as weights.
"""

from __future__ import annotations

import numpy as np

ALPHA = 0.05  # a difference with p >= ALPHA is "not significant" (a tie) in reports
N_BOOT = 2000  # bootstrap draws: p-values resolve to about 1 / N_BOOT
_CHUNK = 4_000_000  # image-count matrix entries per block of draws (bounds memory on large test sets)
_HUGE = 1e6  # stands for an infinite per-image error (a non-finite prediction) inside weighted means


def per_image_score(metric: str, errors: np.ndarray) -> np.ndarray:
    """Per-image values whose mean is ``metric``, from per-image NMEs (NaN stays NaN: an image with no points).

    ``nme_*``: the NME itself; ``fr@t``: 1 if NME > t (failure), else 0; ``auc@t``: max(0, 1 - NME / t), the
    exact area under the image's own CED step from 0 to t, divided by t (flmk.metrics.auc integrates the same
    curve with Simpson's rule on a 1e-4 grid, within 1e-4 of this).
    """
    e = np.asarray(errors, dtype=np.float64)
    name, _, t = metric.partition("@")
    if not t and name.startswith("nme"):
        return e
    if name not in ("fr", "auc") or not t:
        raise ValueError(f"metric {metric!r}: expected nme_<normaliser>, fr@<t> or auc@<t>")
    score = (e > float(t)).astype(np.float64) if name == "fr" else np.clip(1.0 - e / float(t), 0.0, 1.0)
    return np.where(np.isnan(e), np.nan, score)


def image_draws(scores: np.ndarray, rng: np.random.Generator, n_boot: int = N_BOOT) -> np.ndarray:
    """(R, N) per-image scores of R runs -> (R, n_boot): each run's mean on ``n_boot`` image multisets.

    The multisets are shared by all R runs (paired). NaN scores are left out of a run's mean.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    n_img = scores.shape[1]
    valid = ~np.isnan(scores)
    filled = np.where(valid, np.nan_to_num(scores, posinf=_HUGE, neginf=-_HUGE), 0.0)
    out = np.empty((scores.shape[0], n_boot))
    block = max(1, _CHUNK // n_img)
    for start in range(0, n_boot, block):  # blocks of draws, so that the count matrix stays small
        b = min(block, n_boot - start)
        picks = rng.integers(0, n_img, size=(b, n_img)) + n_img * np.arange(b)[:, None]
        counts = np.bincount(picks.ravel(), minlength=b * n_img).reshape(b, n_img).T.astype(np.float64)  # (N, b)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, start:start + b] = (filled @ counts) / (valid @ counts)
    return out


def seed_draws(run_draws: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, B) draws of one row's n seeds -> (B,) row draws: the mean over a multiset of n seeds per draw."""
    run_draws = np.atleast_2d(run_draws)
    n, n_boot = run_draws.shape
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n  # (B, n)
    return (weights * run_draws.T).sum(1)


def interval(draws: np.ndarray, level: float = 1 - ALPHA) -> tuple[float, float]:
    """Percentile bootstrap interval."""
    lo, hi = np.nanpercentile(draws, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def p_value(delta_draws: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "no difference": twice the smaller share of draws on either side of 0.

    p < alpha exactly when the (1 - alpha) percentile interval of the difference excludes 0.
    """
    d = np.asarray(delta_draws)
    d = d[~np.isnan(d)]
    tail = min(np.sum(d <= 0), np.sum(d >= 0))
    return float(min(1.0, 2 * (tail + 1) / (d.size + 1)))


def paired_test(scores_a: np.ndarray, scores_b: np.ndarray, seed: int = 0, n_boot: int = N_BOOT) -> tuple[float, float]:
    """Row a minus row b on the same images: (difference of the seed-averaged means, p-value).

    ``scores_a`` (n_a, N) and ``scores_b`` (n_b, N): per-image scores of each row's seeds on the same N images.
    """
    a, b = np.atleast_2d(scores_a), np.atleast_2d(scores_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired test on different test sets: {a.shape[1]} vs {b.shape[1]} images")
    rng = np.random.default_rng(seed)
    runs = image_draws(np.concatenate([a, b]), rng, n_boot)
    delta = seed_draws(runs[: len(a)], rng) - seed_draws(runs[len(a):], rng)
    return float(np.nanmean(a, 1).mean() - np.nanmean(b, 1).mean()), p_value(delta)
