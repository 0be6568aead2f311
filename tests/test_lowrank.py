"""LM's nuclear norm ||M||_*: the Newton-Schulz path against the SVD (value, gradient, rank-deficient M), failures."""

from __future__ import annotations

import pytest
import torch

from flmk.models.blocks.lowrank import NuclearNorm, NuclearNormError, newton_schulz_polar, nuclear_norm, svd_polar


def with_singular_values(s: list[float], n: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    sigma = torch.zeros(n, dtype=torch.float64)
    sigma[: len(s)] = torch.tensor(s, dtype=torch.float64)
    return ((u * sigma) @ v.T).float()


def value_and_grad(norm, m: torch.Tensor) -> tuple[float, torch.Tensor]:
    m = m.clone().requires_grad_()
    value = norm(m)
    value.backward()
    return value.item(), m.grad


@pytest.mark.parametrize("s", [[1.3, 1.1, 1.0, 0.9, 0.8, 0.7] * 5 + [0.75, 0.95],  # full rank, near I
                               [2.0, 1.5, 1.0, 0.8, 0.6, 0.3]])  # rank 6 of 32: zero singular values stay zero
def test_newton_schulz_matches_the_svd(s: list[float]) -> None:
    m = with_singular_values(s)
    norm = NuclearNorm("newton_schulz", svd_every=1000)
    value_and_grad(norm, m)  # the first call is the SVD anchor: it seeds the power iteration and the step count
    step = 1e-3 * torch.randn(m.shape, generator=torch.Generator().manual_seed(1))
    m = m @ (torch.eye(32) + step)  # the next training step: M moves a little and keeps its rank
    calls = norm.calls
    value, grad = value_and_grad(norm, m)
    assert norm.calls == calls + 1 and calls % norm.svd_every != 0  # a Newton-Schulz call, not an anchor
    want_value, want_grad = value_and_grad(nuclear_norm, m)
    assert value == pytest.approx(want_value, rel=1e-4)
    assert (grad - want_grad).norm() <= 1e-2 * want_grad.norm()  # U sign(Sigma) V^T, eq. 8
    if len(s) < 32:  # the 26 zero singular directions get no gradient, as sign(0) = 0 in the paper's subgradient
        u, sig, vh = torch.linalg.svd(m.double())
        assert (u[:, 10:].T @ grad.double() @ vh[10:].T).abs().max() < 1e-3


def test_polar_iteration_maps_each_singular_value() -> None:
    m = with_singular_values([1.0, 0.5, 0.0], n=3)
    x = newton_schulz_polar(m, 1.0, steps=1)
    sv = torch.linalg.svdvals(x)
    torch.testing.assert_close(sv, torch.tensor([1.0, 1.5 * 0.5 - 0.5 * 0.125, 0.0]), atol=1e-5, rtol=1e-5)


def test_anchor_grows_the_step_count_until_ns_meets_the_svd() -> None:
    m = with_singular_values([1.0, 0.05])  # a spread of 20: two steps are far from enough
    norm = NuclearNorm("newton_schulz", ns_steps=2, svd_every=1000)
    norm(m)
    assert norm.ns_steps > 2
    q, _, _ = svd_polar(m)
    assert (newton_schulz_polar(m, 1.1, norm.ns_steps) - q).norm() <= norm.ns_tol * q.norm()


def test_svd_path_is_exact_at_every_call() -> None:
    m = with_singular_values([3.0, 2.0, 0.5])
    value, grad = value_and_grad(NuclearNorm("svd"), m)
    assert value == pytest.approx(5.5, rel=1e-5)
    q, _, _ = svd_polar(m)
    torch.testing.assert_close(grad, q)


def test_failed_svd_raises_a_clear_error_or_falls_back(monkeypatch) -> None:
    m = with_singular_values([1.2, 1.0, 0.9] * 10 + [1.1, 0.95])
    want = torch.linalg.svdvals(m).sum().item()

    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", broken)
    with pytest.raises(NuclearNormError, match="model.loss.nuclear=newton_schulz"):
        NuclearNorm("svd")(m)
    assert NuclearNorm("newton_schulz")(m).item() == pytest.approx(want, rel=1e-3)  # anchor falls back to NS


def test_non_finite_m_names_the_lm_matrix() -> None:
    m = torch.eye(4)
    m[1, 2] = float("nan")
    for method in ("svd", "newton_schulz"):
        with pytest.raises(NuclearNormError, match="LM matrix M"):
            NuclearNorm(method)(m)
    with pytest.raises(ValueError, match="model.loss.nuclear"):
        NuclearNorm("eig")


def test_fp32_under_bf16_autocast() -> None:
    m = with_singular_values([1.0, 0.9, 0.8] * 10 + [1.0, 1.0])
    norm = NuclearNorm("newton_schulz", svd_every=1000)
    norm(m)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = norm(m)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(torch.linalg.svdvals(m).sum().item(), rel=1e-4)
