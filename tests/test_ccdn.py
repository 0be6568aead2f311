"""CCDN: CTM, CFF, COCS loss, variants, heads, activation maps, loss units, bf16 autocast (tiny widths)."""

from __future__ import annotations

import itertools

import pytest
import torch

from flmk.models.blocks.hourglass import StackedHourglass
from flmk.models.ccdn import CCDN, CFF, CTM, CCDNLoss, cross_semantic_loss

N = 5  # landmarks in the tiny tests
TINY = dict(num_points=N, num_stacks=1, channels=16, hg_depth=2, stem_channels=(8, 16), t_channels=32)


def tiny(**kw) -> CCDN:
    torch.manual_seed(0)
    return CCDN(**{**TINY, **kw})


def batch(b: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"points": torch.rand(b, N, 2, generator=g), "visible": torch.ones(b, N)}


def image(b: int = 3, size: int = 64) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(2))


# -- CTM / CFF ---------------------------------------------------------------------------------------


def test_ctm_excitation_is_gated_input_per_order() -> None:
    """X̂ᵖ = s^{p,st} ⊙ X + s^{p,nd} ⊙ X (eq. 4) with independent gates per p and per order."""
    torch.manual_seed(0)
    ctm = CTM(8, excitations=3, reduction=4)
    x = torch.randn(2, 8, 4, 4)
    out = ctm(x)
    assert out.shape == (2, 3, 8, 4, 4)
    s_st = ctm.first_order(x.mean(dim=(2, 3)))
    s_nd = ctm.second_order(ctm.gcp(x))
    torch.testing.assert_close(out, (s_st + s_nd)[..., None, None] * x[:, None])
    # each gate is a sigmoid in (0, 1), so each order scales X by at most 1
    assert ((s_st > 0) & (s_st < 1)).all() and ((s_nd > 0) & (s_nd < 1)).all()
    assert not torch.allclose(out[:, 0], out[:, 1])  # excitations differ


def test_ctm_gates_are_independent_per_excitation() -> None:
    """The grouped convs hold P separate MLPs: changing excitation 0's weights leaves excitation 1 alone."""
    torch.manual_seed(0)
    ctm = CTM(8, excitations=2, second_order=False, reduction=2)
    x = torch.randn(2, 8, 3, 3)
    before = ctm(x)
    with torch.no_grad():
        ctm.first_order.mlp[0].weight[:4].add_(1.0)  # W_V of excitation 0 (first D/r output rows)
    after = ctm(x)
    assert not torch.allclose(before[:, 0], after[:, 0])
    torch.testing.assert_close(before[:, 1], after[:, 1])


def test_fcdn_ctm_has_no_second_order_parameters() -> None:
    ctm = CTM(16, excitations=4, second_order=False)
    assert ctm.gcp is None and ctm.second_order is None
    assert not any("second_order" in n or "gcp" in n for n, _ in ctm.named_parameters())
    # 4 MLPs of 16 -> 4 -> 16 with biases
    assert sum(p.numel() for p in ctm.parameters()) == 4 * (16 * 4 + 4 + 4 * 16 + 16)


def test_cff_per_excitation_weights_are_separate() -> None:
    torch.manual_seed(0)
    cff = CFF(t_channels=8, channels=4, excitations=2, weights="per_excitation")
    x_t, x_t1 = torch.randn(2, 2, 8, 3, 3), torch.randn(2, 2, 4, 6, 6)
    g, pre = cff(x_t, x_t1)
    assert g.shape == pre.shape == (2, 2, 4, 6, 6)
    x_t2 = x_t.clone()
    x_t2[:, 1] += 1.0  # perturb excitation 1 at layer T only
    g2, _ = cff(x_t2, x_t1)
    torch.testing.assert_close(g[:, 0], g2[:, 0])
    assert not torch.allclose(g[:, 1], g2[:, 1])


def test_cff_shared_applies_one_k1_fconv_k2_bn_to_every_excitation() -> None:
    """Eq. 7 indexes the features by p, not K₁, K₂: one set of kernels; the BN (after) is the only coupling."""
    torch.manual_seed(0)
    shared, grouped = CFF(8, 4, 3, "shared"), CFF(8, 4, 3, "per_excitation")
    assert sum(q.numel() for q in grouped.parameters()) == 3 * sum(q.numel() for q in shared.parameters())
    x_t, x_t1 = torch.randn(2, 3, 8, 3, 3), torch.randn(2, 3, 4, 6, 6)
    _, pre = shared(x_t, x_t1)
    for p in range(3):  # excitation p alone, through the same kernels
        _, alone = shared(x_t[:, p : p + 1], x_t1[:, p : p + 1])
        torch.testing.assert_close(pre[:, p], alone[:, 0])
    with pytest.raises(ValueError, match="cff_weights"):
        CFF(8, 4, 3, "per_level")


# -- COCS (eqs. 5, 6) --------------------------------------------------------------------------------


def test_cocs_orthogonal_excitations_give_zero() -> None:
    p = 4
    f = torch.eye(6)[:p].expand(3, p, 6) * 2.5  # every sample: excitation p along e_p (scale removed by L2)
    assert float(cross_semantic_loss(f)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("p", [2, 3, 4])
def test_cocs_identical_excitations_give_p_minus_one(p: int) -> None:
    f = torch.rand(5, 1, 7).expand(5, p, 7)
    assert float(cross_semantic_loss(f)) == pytest.approx(p - 1, rel=1e-5)


def test_cocs_q_is_the_mean_over_all_batch_pairs() -> None:
    """Per-sample orthogonal, but swapped across the batch: Q = mean over (b, b') pairs = all 0.5 -> L = 1."""
    e1, e2 = torch.eye(2)
    f = torch.stack([torch.stack([e1, e2]), torch.stack([e2, e1])])  # (B=2, P=2, D=2)
    assert float(cross_semantic_loss(f)) == pytest.approx(1.0, rel=1e-6)


def test_cocs_matches_the_written_out_formula() -> None:
    torch.manual_seed(0)
    pooled = torch.rand(4, 3, 5)
    f = pooled / pooled.norm(dim=-1, keepdim=True)
    q = torch.zeros(3, 3)
    for i, j in itertools.product(range(3), repeat=2):
        q[i, j] = sum(f[b, i] @ f[c, j] for b in range(4) for c in range(4)) / 16
    expected = ((q**2).sum() - (q.diagonal() ** 2).sum()) / (q.diagonal() ** 2).sum()
    torch.testing.assert_close(cross_semantic_loss(pooled), expected)


# -- network -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("variant,p", [("ccdn", 4), ("fcdn", 2), ("no_ctm", 1)])
def test_output_shapes(size: int, variant: str, p: int) -> None:
    net = tiny(variant=variant, excitations=p).eval()
    with torch.no_grad():
        out = net(image(2, size))
    s = size // 4
    assert out["points"].shape == (2, N, 2)
    assert out["semantic_t"].shape == (2, p, 32)
    assert out["semantic_t1"].shape == (2, p, 16)
    assert out["semantic_g"].shape == (2, p, 16)
    if variant == "no_ctm":
        assert net.visual_keys == () and "excitation_maps" not in out
    else:
        assert net.visual_keys == ("excitation_maps",)
        assert out["excitation_maps"].shape == (2, p, s // 2, s // 2)
        assert (out["excitation_maps"] >= 0).all()


def test_starts_at_the_mean_shape() -> None:
    net = tiny(head_init_std=0.0)
    shape = torch.rand(N, 2)
    net.set_mean_shape(shape)
    out = net(image(2))
    torch.testing.assert_close(out["points"], shape.expand(2, N, 2))


def test_class_activation_maps_decompose_the_prediction() -> None:
    """Σ_p mean_hw CAM_k^p = offset_scale · (prediction − mean shape) − head biases: the maps explain the output
    (Fig. 8), and the heads speak in 1/offset_scale crop units (crop pixels at offset_scale = crop size)."""
    net = tiny(excitations=3, head_init_std=0.1, offset_scale=64.0).eval()
    with torch.no_grad():
        for lin in net.heads.values():
            lin.bias.normal_()
        x = image(2)
        out = net(x)
        cam = net.class_activation_maps(net.level_features(x))
    assert cam.shape == (2, 3, 2 * N, 8, 8)  # T−1 at 64 / 8
    bias = sum(lin.bias for lin in net.heads.values())
    explained = cam.mean(dim=(-2, -1)).sum(dim=1) + bias
    torch.testing.assert_close(explained.view(2, N, 2), 64.0 * (out["points"] - net.mean_shape), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["excitation_maps"], cam.abs().mean(dim=2))


def test_fcdn_has_no_second_order_parameters() -> None:
    ccdn, fcdn = tiny(variant="ccdn", excitations=4), tiny(variant="fcdn", excitations=4)
    assert not any("second_order" in n or "gcp" in n for n, _ in fcdn.named_parameters())
    nd = sum(p.numel() for n, p in ccdn.named_parameters() if "second_order" in n)
    # 4 second-order MLPs at T−1 (16 -> 4 -> 16) and at T (32 -> 8 -> 32)
    assert nd == 4 * (2 * 16 * 4 + 4 + 16) + 4 * (2 * 32 * 8 + 8 + 32)
    assert sum(p.numel() for p in ccdn.parameters()) - sum(p.numel() for p in fcdn.parameters()) == nd


def test_baseline_is_four_hourglasses_regressing_coordinates() -> None:
    """Tables 2–5 "Baseline": the stacked hourglasses regress the points (GAP + Linear on the last HG), with
    none of CCDN's blocks T−1 / T, CFF or summed heads (the former baseline kept them: now ``no_ctm``)."""
    net = tiny(variant="baseline", excitations=1, head_init_std=0.1).eval()
    assert net.block_t is None and net.block_t1 is None and net.cff is None and set(net.heads) == {"hg"}
    torch.manual_seed(0)
    hourglasses = StackedHourglass(1, 16, 3, 2, (8, 16))
    head = 16 * 2 * N + 2 * N  # Linear(channels -> 2N)
    assert sum(q.numel() for q in net.parameters()) == sum(q.numel() for q in hourglasses.parameters()) + head
    x = image(2)
    with torch.no_grad():
        out = net(x)
        gap = net.backbone(x)[-1].mean(dim=(-2, -1))
    assert set(out) == {"points"} and net.visual_keys == ()
    expected = net.mean_shape + net.heads["hg"](gap).view(2, N, 2) / net.offset_scale
    torch.testing.assert_close(out["points"], expected)
    assert set(CCDNLoss()(net(x), batch(2), net)) == {"regression", "loss"}


def test_no_ctm_keeps_the_blocks_without_ctm_and_variants_without_excitations_need_p1() -> None:
    net = tiny(variant="no_ctm", excitations=1)
    assert net.block_t.ctm is None and net.block_t1.ctm is None and set(net.heads) == {"t", "t1", "g"}
    for variant in ("baseline", "no_ctm"):
        with pytest.raises(ValueError, match="excitations=1"):
            tiny(variant=variant, excitations=4)


@pytest.mark.parametrize("kw,match", [
    (dict(variant="scdn"), "variant"), (dict(head="g_only"), "head"), (dict(excitations=0), "excitations"),
    (dict(offset_scale=0.0), "offset_scale"), (dict(cocs_g="relu"), "cocs_g"), (dict(cff_weights="x"), "cff_weights"),
])
def test_bad_options_are_named(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


def test_t_only_head_uses_layer_t_only() -> None:
    net = tiny(head="t_only", excitations=2)
    assert set(net.heads) == {"t"}
    assert net.cff is not None  # COCS still needs the fused level G
    assert tiny(head="t_only", variant="no_ctm", excitations=1).cff is None


# -- loss (eq. 9) ------------------------------------------------------------------------------------


def test_loss_terms_and_values() -> None:
    net = tiny(excitations=3)
    out, b = net(image()), batch()
    terms = CCDNLoss(gamma1=0.025, gamma2=0.01, gamma3=0.05)(out, b, net)
    assert set(terms) == {"regression", "cocs_t", "cocs_t1", "cocs_g", "loss"}
    reg = (out["points"] - b["points"]).pow(2).sum(dim=(1, 2)).mean()
    torch.testing.assert_close(terms["regression"], reg)
    torch.testing.assert_close(terms["cocs_t"], 0.025 * cross_semantic_loss(out["semantic_t"]))
    torch.testing.assert_close(terms["cocs_t1"], 0.01 * cross_semantic_loss(out["semantic_t1"]))
    torch.testing.assert_close(terms["cocs_g"], 0.05 * cross_semantic_loss(out["semantic_g"]))
    torch.testing.assert_close(terms["loss"], sum(v for k, v in terms.items() if k != "loss"))


def test_zero_gamma_drops_its_term() -> None:
    net = tiny(excitations=2)
    terms = CCDNLoss(gamma2=0.0)(net(image()), batch(), net)
    assert "cocs_t1" not in terms and "cocs_t" in terms and "cocs_g" in terms


@pytest.mark.parametrize("variant", ["ccdn", "fcdn", "no_ctm", "baseline"])
def test_one_excitation_has_no_cocs_term(variant: str) -> None:
    net = tiny(variant=variant, excitations=1)
    terms = CCDNLoss()(net(image()), batch(), net)
    assert set(terms) == {"regression", "loss"}


@pytest.mark.parametrize("variant,p", [("ccdn", 4), ("fcdn", 2), ("no_ctm", 1), ("baseline", 1)])
def test_one_training_step_reaches_every_parameter(variant: str, p: int) -> None:
    net, loss_fn = tiny(variant=variant, excitations=p), CCDNLoss()
    opt = torch.optim.RMSprop(net.parameters(), lr=2.5e-4)
    before = [q.detach().clone() for q in net.parameters()]
    loss_fn(net(image()), batch(), net)["loss"].backward()
    missing = [n for n, q in net.named_parameters() if q.grad is None or not torch.isfinite(q.grad).all()]
    assert not missing
    opt.step()
    assert all(not torch.equal(a, q) for a, q in zip(before, net.parameters()))


def test_bf16_autocast_gives_finite_outputs_and_gradients() -> None:
    net, loss_fn = tiny(excitations=4), CCDNLoss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(image())
        terms = loss_fn(out, batch(), net)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert all(torch.isfinite(v) for v in terms.values())
    assert set(terms) == {"regression", "cocs_t", "cocs_t1", "cocs_g", "loss"}
    terms["loss"].backward()
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in net.parameters())


def test_paper_sized_network_parameter_counts() -> None:
    """4 HGs × 256 at 128², P = 4 (the paper gives no count; these are ours, in the report)."""
    counts = {
        (v, p): sum(q.numel() for q in CCDN(variant=v, excitations=p).parameters())
        for v, p in [("ccdn", 4), ("fcdn", 4), ("baseline", 1)]
    }
    nd = 4 * (2 * 256 * 64 + 64 + 256) + 4 * (2 * 512 * 128 + 128 + 512)  # second-order MLPs at T−1 and T
    assert counts[("ccdn", 4)] - counts[("fcdn", 4)] == nd
    assert 17.5e6 < counts[("ccdn", 4)] < 17.8e6  # shared CFF; 22.97 M with per-excitation CFF weights
    assert 12.7e6 < counts[("baseline", 1)] < 13.0e6  # the hourglasses and one Linear(256 -> 136)


# -- issue 13: where Q^G is built (item 5) and the units of the data term (item 3) ------------------


def cocs_at_init(**kw) -> dict[str, float]:
    net = tiny(excitations=4, **kw)
    with torch.no_grad():
        out = net(image(6))
    return {lvl: float(cross_semantic_loss(out[f"semantic_{lvl}"])) for lvl in ("t", "t1", "g")}


def test_cocs_g_starts_comparable_to_the_other_levels() -> None:
    """At initialisation the P excitations are near copies (gates ≈ σ(0)), so L(Q^T) ≈ L(Q^{T−1}) ≈ P − 1.
    Default (one set of eq. 7 kernels, Q^G before the BN): L(Q^G) starts there too. The literal reading
    (per-excitation kernels, Q^G after the BN, which centres every channel over the batch) starts near 0,
    so γ₃ had next to nothing to act on."""
    paper = cocs_at_init()
    assert paper["t"] > 2.5 and paper["t1"] > 2.5
    assert 0.8 < paper["g"] / paper["t"] < 1.2
    literal = cocs_at_init(cff_weights="per_excitation", cocs_g="post_bn")
    assert literal["g"] < 0.05 * literal["t"]


def test_cocs_g_before_the_bn_acts_on_the_excitations_not_on_the_bn_bias() -> None:
    """L(Q^G) built before the BN cannot be met by BN's per-channel bias (no gradient reaches it) and reaches
    the CTM gates; after a per-excitation BN it can (its bias gets a gradient)."""
    def grads(**kw):
        net = tiny(excitations=3, **kw)
        cross_semantic_loss(net(image(4))["semantic_g"]).backward()
        gate = net.block_t1.ctm.first_order.mlp[0].weight.grad
        return net.cff.bn.bias.grad, gate

    bn_bias, gate = grads()
    assert bn_bias is None and gate is not None and gate.abs().sum() > 0
    bn_bias, _ = grads(cff_weights="per_excitation", cocs_g="post_bn")
    assert bn_bias is not None and bn_bias.abs().sum() > 0


def test_loss_units_set_the_regulariser_to_data_ratio() -> None:
    """Fixed batch at initialisation, 68 points about 5 % of the crop off the mean shape (a mean-shape start):
    in normalised units (default) each γ L(Q) is of the data term's order (0.05–1), as Table 6's γ need; in
    crop pixels the data term grows by crop_size² and the same γ leave the COCS terms < 1e-4 of it."""
    torch.manual_seed(0)
    net = CCDN(**{**TINY, "num_points": 68}, excitations=4)
    out = net(image(4))
    g = torch.Generator().manual_seed(3)
    target = {"points": out["points"].detach() + 0.035 * torch.randn(4, 68, 2, generator=g)}
    norm = CCDNLoss()(out, target, net)
    pix = CCDNLoss(units="pixels", crop_size=128)(out, target, net)
    torch.testing.assert_close(pix["regression"], norm["regression"] * 128.0**2)
    for term in ("cocs_t", "cocs_t1", "cocs_g"):
        torch.testing.assert_close(pix[term], norm[term])
        assert 0.05 < float(norm[term] / norm["regression"]) < 1.0
        assert float(pix[term] / pix["regression"]) < 1e-4
    with pytest.raises(ValueError, match="units"):
        CCDNLoss(units="mm")
