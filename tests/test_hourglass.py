"""Stacked hourglass: shapes, recursion, re-injection and gradients (tiny widths)."""

from __future__ import annotations

import pytest
import torch

from flmk.models.blocks.hourglass import Hourglass, Residual, StackedHourglass


def test_residual_shapes_and_skip() -> None:
    x = torch.randn(2, 8, 16, 16)
    assert Residual(8, 8).skip.__class__.__name__ == "Identity"
    assert Residual(8, 16)(x).shape == (2, 16, 16, 16)
    assert Residual(8, 16, stride=2)(x).shape == (2, 16, 8, 8)


def test_residual_identity_when_branch_is_zero() -> None:
    block = Residual(8, 8)
    torch.nn.init.zeros_(block.branch[-1].weight)
    torch.nn.init.zeros_(block.branch[-1].bias)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(block(x), x)


def test_hourglass_keeps_shape_and_recurses() -> None:
    hg = Hourglass(depth=3, channels=8)
    x = torch.randn(2, 8, 16, 16)
    assert hg(x).shape == x.shape
    # depth 3 -> three nested Hourglass modules (itself + 2), innermost a Residual
    assert sum(isinstance(m, Hourglass) for m in hg.modules()) == 3
    assert isinstance(hg.inner.inner.inner, Residual)


def test_hourglass_rejects_indivisible_side() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        Hourglass(depth=3, channels=4)(torch.randn(1, 4, 12, 12))


def test_hourglass_avg_pool_and_bad_pool() -> None:
    assert Hourglass(2, 4, pool="avg")(torch.randn(1, 4, 8, 8)).shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="pool"):
        Hourglass(2, 4, pool="median")  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [64, 32])
def test_stacked_hourglass_returns_one_map_per_stack(size: int) -> None:
    net = StackedHourglass(num_stacks=3, channels=16, depth=2, stem_channels=(8, 16))
    feats = net(torch.randn(2, 3, size, size))
    assert len(feats) == 3
    for f in feats:
        assert f.shape == (2, 16, size // 4, size // 4)
    assert len(net.merges) == 2


def test_stacks_are_chained_by_reinjection() -> None:
    """Zeroing the merge convs makes stack 2 see exactly the stem output, like stack 1."""
    torch.manual_seed(0)
    net = StackedHourglass(num_stacks=2, channels=8, depth=2, stem_channels=(4, 8)).eval()
    net.stacks[1].load_state_dict(net.stacks[0].state_dict())
    x = torch.randn(1, 3, 32, 32)
    f0, f1 = net(x)
    assert not torch.allclose(f0, f1)
    torch.nn.init.zeros_(net.merges[0].weight)
    torch.nn.init.zeros_(net.merges[0].bias)
    f0, f1 = net(x)
    torch.testing.assert_close(f0, f1)


def test_stacked_hourglass_is_differentiable() -> None:
    net = StackedHourglass(num_stacks=2, channels=8, depth=2, stem_channels=(4, 8))
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    sum(f.square().mean() for f in net(x)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_default_is_fan_sized() -> None:
    """4 stacks x 256 channels, depth 4: 128 input -> 4 maps of 256 x 32 x 32 (notes §4.1)."""
    net = StackedHourglass()
    n = sum(p.numel() for p in net.parameters())
    # Newell bottleneck, 4 stacks: about 13 M parameters (FAN's multi-scale block: ~24 M)
    assert 10e6 < n < 16e6, n
    with torch.no_grad():
        feats = net.eval()(torch.randn(1, 3, 128, 128))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 32, 32)] * 4
