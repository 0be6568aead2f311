"""iSQRT-COV global covariance pooling: covariance, Newton–Schulz square root, gradients, fp32 under autocast."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from flmk.models.blocks.covpool import (
    GlobalCovariancePooling,
    covariance,
    isqrt_cov,
    newton_schulz_sqrt,
)


def random_features(b: int = 4, d: int = 16, side: int = 8, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, side, side, generator=g, dtype=dtype)


def scipy_sqrtm(s: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.real(scipy.linalg.sqrtm(m.numpy()))) for m in s.double()])


def eig_sqrtm(s: torch.Tensor) -> torch.Tensor:
    """The exact route: Σ^{1/2} = V diag(√λ) Vᵀ (differentiable through torch.linalg.eigh)."""
    lam, v = torch.linalg.eigh(s)
    return v @ torch.diag_embed(lam.clamp_min(0).sqrt()) @ v.transpose(-1, -2)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()).norm(dim=(-2, -1)) / b.double().norm(dim=(-2, -1))).max())


def test_covariance_matches_numpy() -> None:
    x = random_features(b=2, d=5, side=3)
    got = covariance(x)
    for b in range(2):
        ref = np.cov(x[b].flatten(1).numpy(), bias=True)  # 1/M normalisation, centred
        np.testing.assert_allclose(got[b].numpy(), ref, rtol=1e-12, atol=1e-12)


def test_newton_schulz_converges_to_scipy_sqrtm_in_fp32() -> None:
    """Random SPD covariances (D = 16, M = 64, λ_min / tr ≈ 0.02): fp32 error ~2e-7 after 15 iterations."""
    sigma = covariance(random_features()).float()
    ref = scipy_sqrtm(sigma)
    assert rel_err(isqrt_cov(sigma, iterations=15, eps=0.0), ref) < 1e-5
    assert rel_err(isqrt_cov(sigma, iterations=60, eps=0.0), ref) < 1e-5  # stable, no drift


def test_newton_schulz_with_n5_is_approximate() -> None:
    """N = 5 (SAN / CCDN default) is iSQRT-COV's truncated root: ~5 % relative error on these matrices.

    The error shrinks monotonically with N (6e-1 at N=1, 2.8e-1 at 3, 5.2e-2 at 5, 2e-5 at 8).
    """
    sigma = covariance(random_features()).float()
    ref = scipy_sqrtm(sigma)
    errors = [rel_err(isqrt_cov(sigma, n, eps=0.0), ref) for n in (1, 3, 5, 8)]
    assert errors == sorted(errors, reverse=True)
    assert 0.02 < errors[2] < 0.1


def test_newton_schulz_exact_on_diagonal_with_unit_spectrum() -> None:
    """√I = I: on a matrix whose eigenvalues are all 1 every NS step is exact."""
    a = torch.eye(6).expand(2, 6, 6)
    torch.testing.assert_close(newton_schulz_sqrt(a, 5), a)
    with pytest.raises(ValueError, match="iterations"):
        newton_schulz_sqrt(a, 0)


def test_gradient_matches_eigendecomposition_route() -> None:
    """d/dX of <W, Σ(X)^{1/2}> through 40 NS iterations == autograd through eigh (float64)."""
    x_ns = random_features(b=2, d=8, side=4, seed=1).requires_grad_(True)
    x_eig = x_ns.detach().clone().requires_grad_(True)
    w = torch.randn(2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (isqrt_cov(covariance(x_ns), iterations=40, eps=0.0) * w).sum().backward()
    (eig_sqrtm(covariance(x_eig)) * w).sum().backward()
    torch.testing.assert_close(x_ns.grad, x_eig.grad, rtol=1e-6, atol=1e-9)


def test_gcp_is_row_mean_of_the_square_root() -> None:
    x = random_features(b=3, d=6, side=4, seed=3)
    kappa = GlobalCovariancePooling(iterations=40, eps=0.0)(x)
    ref = scipy_sqrtm(covariance(x)).mean(dim=1)
    assert kappa.shape == (3, 6)
    torch.testing.assert_close(kappa, ref, rtol=1e-8, atol=1e-10)


def test_gcp_runs_in_fp32_under_bf16_autocast() -> None:
    x = random_features(dtype=torch.float32)
    gcp = GlobalCovariancePooling(iterations=5)
    ref = gcp(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = gcp(x.bfloat16())
    assert got.dtype == torch.float32
    # only the bf16 rounding of the input differs
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-3)


def test_gcp_constant_features_stay_finite() -> None:
    """A constant map has Σ = 0: the trace ε keeps the pre-normalisation finite."""
    x = torch.ones(2, 4, 3, 3, requires_grad=True)
    kappa = GlobalCovariancePooling()(x)
    kappa.sum().backward()
    assert torch.isfinite(kappa).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(kappa, torch.zeros(2, 4))
