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


class _NuclearNorm(torch.autograd.Function):
    """||M||_* with the paper's subgradient U sign(Sigma) V^T (ODN eqs. 4-8)."""

    @staticmethod
    def forward(ctx, m: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        ctx.save_for_backward(u, s, vh)
        return s.sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        u, s, vh = ctx.saved_tensors
        # sign(Sigma) in floating point: singular values below the rank tolerance count as zero
        sign = (s > s.max() * max(u.shape[0], vh.shape[1]) * torch.finfo(s.dtype).eps).to(s.dtype)
        return grad * (u * sign) @ vh  # eq. 8: U sign(Sigma) V^T


def nuclear_norm(m: torch.Tensor) -> torch.Tensor:
    """Sum of singular values of a matrix, SVD in fp32 whatever the autocast state."""
    with torch.autocast(device_type=m.device.type, enabled=False):
        return _NuclearNorm.apply(m.float())
