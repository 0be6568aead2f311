"""ODN's low-rank learning module (LM): S = W_fc^T M^T X and the nuclear norm of M.

The regression layer is shared by BRNet (plain FC, ``low_rank=False``) and by
ODN / AODN (shared structural matrix M in front of the FC, ODN eq. 1).
"""

from __future__ import annotations

import torch
from torch import nn

OUTPUTS = ("linear", "sigmoid")
M_INITS = ("identity", "orthogonal")


class RegressionHead(nn.Module):
    """Pooled features X (B, D) -> crop-normalised points (B, N, 2).

    ``low_rank=True`` is ODN's LM: S = W_fc^T M^T X with M (D x D) bias-free
    (ODN §3.3, eq. 1); ``low_rank=False`` is the plain FC of BRNet and of the
    "LM off" ablation rows (no M at all, so no M parameters and no M terms).
    ``output="linear"`` regresses [0, 1] coordinates directly (FC bias starts
    at the crop centre 0.5); ``"sigmoid"`` squashes them into (0, 1).
    """

    def __init__(self, in_features: int, num_points: int, low_rank: bool = True,
                 output: str = "linear", m_init: str = "identity") -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"model.net.output must be one of {OUTPUTS}, got {output!r}")
        if m_init not in M_INITS:
            raise ValueError(f"model.net.lm_init must be one of {M_INITS}, got {m_init!r}")
        self.num_points = num_points
        self.output = output
        self.M: nn.Parameter | None = None
        if low_rank:
            # identity start: LM begins as the plain FC and learns the shared structure
            init = torch.eye(in_features) if m_init == "identity" else nn.init.orthogonal_(
                torch.empty(in_features, in_features))
            self.M = nn.Parameter(init)
        self.fc = nn.Linear(in_features, 2 * num_points)  # W_fc (stored transposed, as nn.Linear does)
        nn.init.normal_(self.fc.weight, std=1e-3)
        nn.init.constant_(self.fc.bias, 0.0 if output == "sigmoid" else 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.M is not None:
            x = x @ self.M  # row form of M^T X (ODN eq. 1)
        s = self.fc(x)
        if self.output == "sigmoid":
            s = torch.sigmoid(s)
        return s.view(-1, self.num_points, 2)


NUCLEAR_METHODS = ("svd", "newton_schulz")


class NuclearNormError(RuntimeError):
    """||M||_* could not be computed (non-finite M, or an SVD that did not converge)."""


def svd_polar(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U sign(Sigma) V^T, singular values, V^T) of M by SVD; singular values below the rank tolerance count as zero."""
    if not torch.isfinite(m).all():
        raise NuclearNormError(f"the LM matrix M ({tuple(m.shape)}) has non-finite entries, so ||M||_* "
                               f"is undefined: the run diverged (lower model.optimizer.lr)")
    try:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
    except torch.linalg.LinAlgError as err:
        raise NuclearNormError(f"the SVD of the LM matrix M ({tuple(m.shape)}) did not converge: {err}. "
                               f"model.loss.nuclear=newton_schulz computes ||M||_* by matmuls only") from err
    sign = (s > s.max() * max(m.shape) * torch.finfo(s.dtype).eps).to(s.dtype)
    return (u * sign) @ vh, s, vh  # eq. 8: U sign(Sigma) V^T


def newton_schulz_polar(m: torch.Tensor, scale: torch.Tensor | float, steps: int) -> torch.Tensor:
    """Polar factor U sign(Sigma) V^T of M by the cubic Newton-Schulz iteration X <- 1.5 X - 0.5 X X^T X.

    Each step maps every singular value s of X = M / scale to 1.5 s - 0.5 s^3,
    which drives s in (0, sqrt 3) to 1 and keeps s = 0 at 0, so a
    rank-deficient M gets the paper's sign(Sigma) (eq. 8) with matmuls only.
    ``scale`` must be at least about the largest singular value of M.
    """
    x = m / scale
    for _ in range(steps):
        x = 1.5 * x - 0.5 * x @ (x.transpose(-1, -2) @ x)
    return x


class _TraceWithPolar(torch.autograd.Function):
    """||M||_* = tr(M^T Q) for Q = polar(M) = U sign(Sigma) V^T (eq. 4), with gradient Q (eq. 8)."""

    @staticmethod
    def forward(ctx, m: torch.Tensor, q: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(q)
        return (m * q).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (q,) = ctx.saved_tensors
        return grad * q, None


class NuclearNorm(nn.Module):
    """||M||_* and its subgradient U sign(Sigma) V^T (ODN eqs. 4-8), by SVD or by Newton-Schulz.

    ``method="svd"`` takes a 512 x 512 SVD at every call. ``"newton_schulz"``
    takes one every ``svd_every`` calls (the anchor) and in between runs
    ``ns_steps`` Newton-Schulz iterations scaled by the largest singular value,
    which a power iteration warm-started from the last call's singular vector
    tracks in two steps (four matrix-vector products). At each anchor the NS
    factor is checked against the SVD's; where they differ by more than
    ``ns_tol`` (relative Frobenius) the step count grows, up to ``ns_max_steps``. A failed anchor SVD falls back to
    NS scaled by ||M||_F (an upper bound of every singular value).
    """

    def __init__(self, method: str = "newton_schulz", ns_steps: int = 8, svd_every: int = 100,
                 ns_tol: float = 1e-2, ns_max_steps: int = 32) -> None:
        super().__init__()
        if method not in NUCLEAR_METHODS:
            raise ValueError(f"model.loss.nuclear must be one of {NUCLEAR_METHODS}, got {method!r}")
        if ns_steps < 1 or svd_every < 1:
            raise ValueError(f"model.loss.ns_steps and svd_every must be >= 1, got {ns_steps}, {svd_every}")
        self.method, self.ns_steps, self.svd_every = method, ns_steps, svd_every
        self.ns_tol, self.ns_max_steps = ns_tol, max(ns_max_steps, ns_steps)
        self.calls = 0
        self.register_buffer("v", torch.empty(0), persistent=False)  # warm start of the power iteration

    @torch.no_grad()
    def polar(self, m: torch.Tensor) -> torch.Tensor:
        anchor = self.method == "svd" or self.calls % self.svd_every == 0 or self.v.shape != m.shape[-1:]
        self.calls += 1
        if not anchor:
            w = m @ self.v
            for _ in range(2):  # power iteration for the largest singular value
                self.v = m.transpose(-1, -2) @ (w / w.norm().clamp_min(1e-30))
                self.v = self.v / self.v.norm().clamp_min(1e-30)
                w = m @ self.v
            q = newton_schulz_polar(m, 1.1 * w.norm().clamp_min(1e-30), self.ns_steps)
            if torch.isfinite(q).all():
                return q
        try:
            q, s, vh = svd_polar(m)
        except NuclearNormError:
            if self.method == "svd" or not torch.isfinite(m).all():
                raise
            return newton_schulz_polar(m, m.norm().clamp_min(1e-30), self.ns_max_steps)
        if self.method == "newton_schulz":
            self.v = vh[0].clone()
            while self.ns_steps < self.ns_max_steps and (
                    (newton_schulz_polar(m, 1.1 * s[0], self.ns_steps) - q).norm() > self.ns_tol * q.norm()):
                self.ns_steps = min(2 * self.ns_steps, self.ns_max_steps)
        return q

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        """||M||_* of M in fp32 whatever the autocast state."""
        with torch.autocast(device_type=m.device.type, enabled=False):
            m = m.float()
            return _TraceWithPolar.apply(m, self.polar(m))


def nuclear_norm(m: torch.Tensor) -> torch.Tensor:
    """Sum of singular values of a matrix, by SVD in fp32 whatever the autocast state (stateless)."""
    with torch.autocast(device_type=m.device.type, enabled=False):
        m = m.float()
        return _TraceWithPolar.apply(m, svd_polar(m.detach())[0])
