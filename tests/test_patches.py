"""Shape-indexed patches, the non-local block and the noise-patch occlusion."""

from __future__ import annotations

import math

import pytest
import torch

from flmk.data.occlusion import IMAGENET_MEAN, IMAGENET_STD, paste_noise, square_mask
from flmk.models.blocks.nonlocal_block import NonLocalBlock
from flmk.models.blocks.patches import extract_patches


def reference_patch(image: torch.Tensor, point: torch.Tensor, size: int) -> torch.Tensor:
    """Slow crop of one (C, H, W) image: bilinear at pixel u + k, zeros outside the image."""
    c, h, w = image.shape
    u = point[0].item() * w - 0.5
    v = point[1].item() * h - 0.5
    out = torch.zeros(c, size, size, dtype=torch.float64)
    for j in range(size):
        for i in range(size):
            x, y = u + i - size // 2, v + j - size // 2
            x0, y0 = math.floor(x), math.floor(y)
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    if 0 <= xx < w and 0 <= yy < h:
                        out[:, j, i] += wx * wy * image[:, yy, xx].double()
    return out


def test_integer_aligned_patches_are_exact_crops_with_zero_padding():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 20, 24, generator=g)
    px = torch.tensor([[[10, 9], [0, 0], [23, 19], [2, 15]], [[5, 5], [22, 1], [12, 18], [1, 1]]])
    points = (px.float() + 0.5) / torch.tensor([24.0, 20.0])
    patches = extract_patches(image, points, 6)
    assert patches.shape == (2, 4, 3, 6, 6)
    padded = torch.nn.functional.pad(image, (6, 6, 6, 6))
    for b in range(2):
        for n in range(4):
            x, y = px[b, n].tolist()
            crop = padded[b, :, y + 6 - 3: y + 6 + 3, x + 6 - 3: x + 6 + 3]  # offsets -3..2
            torch.testing.assert_close(patches[b, n], crop, atol=1e-5, rtol=0)
    assert patches[0, 1, :, :3, :3].abs().max() < 1e-6  # the corner point sees zeros beyond the border


@pytest.mark.parametrize("size", [5, 8])
def test_subpixel_patches_match_slow_reference_including_border(size):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 16, 16, generator=g)
    points = torch.rand(2, 7, 2, generator=g) * 1.2 - 0.1  # some points outside or near the border
    patches = extract_patches(image, points, size)
    for b in range(2):
        for n in range(7):
            ref = reference_patch(image[b], points[b, n], size)
            torch.testing.assert_close(patches[b, n].double(), ref, atol=1e-5, rtol=0)


def test_no_gradient_through_patch_positions():
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    points = torch.rand(1, 4, 2, requires_grad=True)
    extract_patches(image, points, 4).sum().backward()
    assert points.grad is None and image.grad is not None and image.grad.abs().sum() > 0


def test_extract_patches_rejects_bad_shapes():
    with pytest.raises(ValueError, match="points"):
        extract_patches(torch.rand(1, 3, 8, 8), torch.rand(1, 4, 3), 4)


def test_standard_nonlocal_block_is_identity_at_init_and_learns():
    torch.manual_seed(0)
    block = NonLocalBlock(8, 4, variant="standard")
    x = torch.randn(3, 8, 5, 4)
    y = block(x)
    torch.testing.assert_close(y, x)
    y.pow(2).sum().backward()
    assert block.out.weight.grad.abs().sum() > 0  # the zero-initialised W still receives gradient


def test_standard_nonlocal_block_matches_hand_formula():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6)
    block = NonLocalBlock(4, 3, variant="standard")
    torch.nn.init.normal_(block.out.weight)
    th = torch.einsum("oc,bcl->blo", block.theta.weight[..., 0], x) + block.theta.bias
    ph = torch.einsum("oc,bcl->blo", block.phi.weight[..., 0], x) + block.phi.bias
    gg = torch.einsum("oc,bcl->blo", block.g.weight[..., 0], x) + block.g.bias
    y = torch.softmax(th @ ph.transpose(1, 2), -1) @ gg
    expected = torch.einsum("oc,blc->bol", block.out.weight[..., 0], y) + block.out.bias[:, None] + x
    torch.testing.assert_close(block(x), expected)


def tf_official_block(block: NonLocalBlock, feats: torch.Tensor, batch: int, transpose_phi: bool = False):
    """The SRN TF code's ops, transcribed on channels-last patch features (B*N, h, w, C) (models.py).

    ``transpose_phi`` swaps the code's reshape of phi for the transpose a standard block uses.
    """
    def conv(m, t):  # slim 1x1 conv2d + ReLU on NHWC
        return torch.relu(t @ m.weight[..., 0].T + m.bias)

    num, h, w, c = feats.shape
    ims_1 = conv(block.theta, feats).reshape(batch, -1, 64)
    phi = conv(block.phi, feats)
    ims_2 = phi.reshape(batch, -1, 64).transpose(1, 2) if transpose_phi else phi.reshape(batch, 64, -1)
    ims_3 = conv(block.g, feats).reshape(batch, -1, 64)
    ims_5 = (torch.softmax(ims_1 @ ims_2, -1) @ ims_3).reshape(num, h, w, 64) / (num * h * w * c)
    return conv(block.out, ims_5) + feats


def test_official_nonlocal_block_equals_the_tf_code_and_is_near_inert():
    torch.manual_seed(0)
    block = NonLocalBlock(64, 64, variant="official")
    assert 0 < block.out.weight.abs().max() <= 0.02 and not block.out.bias.any()   # slim init, std 0.01
    b, n, h, w = 2, 5, 2, 2
    feats = torch.rand(b * n, h, w, 64)                                          # ReLU'd conv features
    x = feats.view(b, n * h * w, 64).transpose(1, 2)   # SRN._relate's (B, C, N*h*w): patch, row, column
    out = lambda: block(x).transpose(1, 2).reshape(b * n, h, w, 64)             # noqa: E731
    assert (out() - feats).abs().max() < 1e-5 * feats.abs().max()              # near-inert at init
    with torch.no_grad():  # a huge W makes y visible, to check the affinity, the reshape and the scaling
        torch.nn.init.normal_(block.out.weight, std=1e5)
        block.theta.weight.mul_(100)
        block.phi.weight.mul_(100)
    assert (out() - feats).abs().max() > 1e-2
    torch.testing.assert_close(out(), tf_official_block(block, feats, b))
    assert not torch.allclose(out(), tf_official_block(block, feats, b, transpose_phi=True), atol=1e-4)
    with torch.no_grad():                                                        # R = x + ReLU(bias) in effect
        torch.nn.init.trunc_normal_(block.out.weight, std=0.01, a=-0.02, b=0.02)
        block.out.bias.fill_(0.3)
    torch.testing.assert_close(block(x) - x, torch.full_like(x, 0.3), atol=1e-5, rtol=0)


def test_nonlocal_block_rejects_an_unknown_variant():
    with pytest.raises(ValueError, match="nl_variant"):
        NonLocalBlock(4, 4, variant="code")


def test_square_mask_covers_size_squared_pixels_and_stays_inside():
    centre = torch.tensor([[10.5 / 32, 20.5 / 32]])          # pixel (10, 20)
    m = square_mask(centre, 6, 32, 32, keep_inside=False)[0, 0]
    assert m.sum() == 36 and m[17:23, 7:13].all()            # rows 17..22, cols 7..12
    corner = torch.tensor([[0.0, 1.0]])
    assert square_mask(corner, 6, 32, 32, keep_inside=False).sum() < 36
    inside = square_mask(corner, 6, 32, 32, keep_inside=True)[0, 0]
    assert inside.sum() == 36 and inside[26:, :6].all()


def test_paste_noise_only_inside_the_square_and_in_pixel_range():
    image = torch.full((2, 3, 16, 16), 7.0)
    out = paste_noise(image, torch.tensor([[0.5, 0.5], [0.25, 0.75]]), 4, generator=torch.Generator().manual_seed(0))
    changed = out != 7.0
    assert changed.all(1).sum() == 2 * 16 and (changed.any(1) == changed.all(1)).all()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1), torch.tensor(IMAGENET_STD).view(3, 1)
    pixels = out.permute(1, 0, 2, 3)[changed.permute(1, 0, 2, 3)].view(3, -1) * std + mean
    assert pixels.min() >= 0 and pixels.max() < 1
