"""Global covariance pooling with iSQRT-COV (Li et al. 2018; SAN's SOCA, Dai et al. 2019).

CCDN eq. 2: the second-order squeeze is the row mean of the matrix square root of
the centred channel covariance. The square root is computed by coupled
Newton–Schulz iterations between a trace pre-normalisation and a trace
post-compensation, which only needs matrix products (GPU friendly). All of it
runs in (at least) fp32 with autocast disabled: in bf16 the iterations diverge.
"""

from __future__ import annotations

import torch
from torch import nn


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def covariance(x: torch.Tensor) -> torch.Tensor:
    """Centred channel covariance Σ = X Ī Xᵀ, Ī = (1/M)(I − (1/M)11ᵀ): (B, D, H, W) -> (B, D, D)."""
    feats = x.flatten(2)  # (B, D, M)
    centred = feats - feats.mean(dim=2, keepdim=True)
    return centred @ centred.transpose(1, 2) / feats.shape[2]


def newton_schulz_sqrt(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Coupled Newton–Schulz iterations for A^{1/2}, A (B, D, D) SPD with spectrum in (0, 1].

    Y₀ = A, Z₀ = I; T_k = ½(3I − Z_{k−1}Y_{k−1}), Y_k = Y_{k−1}T_k, Z_k = T_k Z_{k−1};
    the last step only forms Y_N = ½ Y_{N−1}(3I − Z_{N−1}Y_{N−1}) (fast-MPN-COV).
    Converges quadratically once close; eigenvalues near 0 need many iterations.
    """
    if iterations < 1:
        raise ValueError(f"Newton–Schulz iterations must be >= 1, got {iterations}")
    eye3 = 3.0 * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    y, z = a, torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    for _ in range(iterations - 1):
        t = 0.5 * (eye3 - z @ y)
        y, z = y @ t, t @ z
    return 0.5 * y @ (eye3 - z @ y)


def isqrt_cov(sigma: torch.Tensor, iterations: int = 5, eps: float = 1e-5) -> torch.Tensor:
    """Ŷ = NS(Σ / tr Σ) · √tr Σ: trace pre-normalisation, Newton–Schulz, post-compensation."""
    trace = sigma.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None] + eps
    return newton_schulz_sqrt(sigma / trace, iterations) * trace.sqrt()


class GlobalCovariancePooling(nn.Module):
    """GCP squeeze of CCDN eq. 2: κ_nd = row mean of isqrt_cov(cov(X)); (B, D, H, W) -> (B, D), fp32."""

    def __init__(self, iterations: int = 5, eps: float = 1e-5) -> None:
        super().__init__()
        self.iterations = iterations
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            y_hat = isqrt_cov(covariance(_at_least_fp32(x)), self.iterations, self.eps)
            return y_hat.mean(dim=1)  # eq. 2 (Ŷ is symmetric: row or column mean alike)
