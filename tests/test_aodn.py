"""AODN: CBAM gates against hand-computed maps, the AM fusion, switches, eq. 8 terms, parameter count."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from flmk.models.aodn import AODN, AODNLoss, AttentionModule
from flmk.models.blocks.cbam import CBAMBasicBlock, ChannelGate, SpatialGate
from flmk.models.blocks.lowrank import RegressionHead

CONF = Path(__file__).resolve().parents[1] / "conf" / "model" / "aodn.yaml"
TINY = {"gm_width": 8}


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def aodn() -> nn.Module:
    cfg = OmegaConf.create({"data": {"num_points": 68}, "model": OmegaConf.load(CONF)})
    cfg.model.pretrained = False  # nothing can be downloaded here
    return instantiate(cfg.model.net).eval()


def test_parameter_count_matches_paper(aodn: nn.Module) -> None:
    assert params(aodn) == pytest.approx(6.46e6, rel=0.05)


@pytest.mark.parametrize("size", [160, 224, 256])
def test_output_shapes_and_maps(aodn: nn.Module, size: int) -> None:
    with torch.no_grad():
        out = aodn(torch.randn(2, 3, size, size))
    h = size // 16
    assert out["points"].shape == (2, 68, 2)
    assert out["attention_channel"].shape == (2, 256)
    assert out["attention_spatial"].shape == (2, h, h) and out["feature_energy"].shape == (2, h, h)
    for key in ("attention_channel", "attention_spatial"):
        assert ((out[key] >= 0) & (out[key] <= 1)).all()
    for key in ("attention_channel_map", "attention_spatial_logits"):  # P', P'': single-channel maps
        assert out[key].shape == (2, h, h)
    torch.testing.assert_close(out["attention_spatial"], torch.sigmoid(out["attention_spatial_logits"]))
    assert set(aodn.visual_keys) <= set(out)


def test_channel_gate_hand_computed() -> None:
    gate = ChannelGate(channels=4, reduction=2)
    z = torch.randn(3, 4, 5, 6)
    out, m_c = gate(z)
    w0, w1 = gate.mlp[0], gate.mlp[2]
    mlp = lambda v: w1(torch.relu(w0(v)))  # noqa: E731
    want = torch.sigmoid(mlp(z.mean(dim=(2, 3))) + mlp(z.amax(dim=(2, 3))))
    assert m_c.shape == (3, 4) and w0.out_features == 2
    torch.testing.assert_close(m_c, want)
    torch.testing.assert_close(out, z * want[:, :, None, None])


def test_spatial_gate_hand_computed() -> None:
    gate = SpatialGate().eval()
    nn.init.normal_(gate.conv.weight)
    z = torch.randn(2, 5, 6, 4)
    out, m_s = gate(z)
    pooled = torch.stack([z.amax(dim=1), z.mean(dim=1)], dim=1)  # max first, then mean
    bn = gate.bn
    logits = nn.functional.conv2d(pooled, gate.conv.weight, padding=3)
    logits = (logits - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    want = torch.sigmoid(logits)[:, 0]
    assert m_s.shape == (2, 6, 4) and ((m_s >= 0) & (m_s <= 1)).all()
    torch.testing.assert_close(m_s, want)
    torch.testing.assert_close(out, z * want[:, None])


def test_cbam_gates_act_on_z_as_eqs_3_4() -> None:
    """Z' = M_c(Z) ⊙ Z, Z'' = M_s(Z') ⊙ Z' on the block input; the residual branch is added after."""
    block = CBAMBasicBlock(channels=8, reduction=4).eval()
    z = torch.randn(1, 8, 5, 5)
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)  # an empty residual branch: the output is the gated Z alone
    out, maps = block(z)
    z1, m_c = block.channel_gate(z)
    z2, m_s = block.spatial_gate(z1)
    torch.testing.assert_close(out, torch.relu(z2))
    torch.testing.assert_close(maps["attention_channel"], m_c)
    torch.testing.assert_close(maps["attention_spatial"], m_s)
    torch.testing.assert_close(maps["attention_channel_map"], z1.mean(dim=1))  # P', eq. 3's map on one channel
    torch.testing.assert_close(maps["attention_spatial_logits"], block.spatial_gate.logits(z1)[:, 0])  # P''
    with pytest.raises(ValueError, match="gates"):
        CBAMBasicBlock(channels=8, reduction=4, gates="both")


def test_cbam_on_the_residual_branch_when_asked() -> None:
    block = CBAMBasicBlock(channels=8, reduction=4, gates="branch").eval()
    z = torch.randn(1, 8, 5, 5)
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    out, maps = block(z)  # an empty residual branch leaves relu(Z) whatever the gates say
    torch.testing.assert_close(out, torch.relu(z))
    assert maps["attention_channel"].shape == (1, 8) and maps["attention_spatial"].shape == (1, 5, 5)


def test_attention_module_fusion() -> None:
    am = AttentionModule(channels=8, reduction=4).eval()
    z = torch.randn(2, 8, 4, 4)
    z2, _ = am.sub_network_c(z)
    torch.testing.assert_close(am(z)[0], z2 * z)  # EWM, eq. 2
    am.fuse = "add"
    torch.testing.assert_close(am(z)[0], z2 + z)  # EWA


@pytest.mark.parametrize("kwargs, match", [({"reduction": 3}, "reduction"), ({"fuse": "cat"}, "fuse")])
def test_bad_options_name_the_key(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AttentionModule(channels=8, **kwargs)


def test_reduction_sets_the_mlp_size() -> None:
    def mlp_params(r: int) -> int:
        return params(AttentionModule(256, r).sub_network_c.channel_gate)
    for r in (8, 16, 32, 64):
        assert mlp_params(r) == 2 * 256 * (256 // r) + 256 // r + 256


def test_am_switch_removes_parameters_maps_and_terms() -> None:
    full, no_am = AODN(num_points=3, **TINY), AODN(num_points=3, am=False, **TINY)
    head_change = params(full.head) - params(no_am.head)  # LM reads the GM features alone: X 512 -> 256
    assert params(full) - params(no_am) == params(full.branch) + head_change
    assert head_change == 512 * 512 - 256 * 256 + 256 * 6
    batch = {"points": torch.rand(2, 3, 2)}
    x = torch.randn(2, 3, 64, 64)
    with_terms = AODNLoss()(full(x), batch, full)
    without = AODNLoss()(no_am(x), batch, no_am)
    assert {"channel_attention_l1", "spatial_attention_l1"} <= set(with_terms)
    assert not {"channel_attention_l1", "spatial_attention_l1"} & set(without)
    assert no_am.visual_keys == () and "attention_spatial" not in no_am(x)


def test_loss_attention_terms_hand_computed() -> None:
    net = nn.Module()
    net.head = RegressionHead(2, num_points=1, low_rank=False)
    outputs = {"points": torch.zeros(2, 1, 2),
               "attention_channel": torch.tensor([[0.5, 0.5, 1.0], [0.0, 0.0, 1.0]]),
               "attention_spatial": torch.tensor([[[0.25, 0.25]], [[0.5, 0.0]]])}
    batch = {"points": torch.zeros(2, 1, 2)}
    old = AODNLoss(alpha=0, lambda_=0, eta_channel=2.0, eta_spatial=3.0, l1_maps="gates")
    terms = old(outputs, batch, net)
    assert set(terms) == {"points", "channel_attention_l1", "spatial_attention_l1", "loss"}
    assert terms["channel_attention_l1"].item() == pytest.approx(2.0 * (2.0 + 1.0) / 2)
    assert terms["spatial_attention_l1"].item() == pytest.approx(3.0 * (0.5 + 0.5) / 2)
    no_l1 = AODNLoss(alpha=0, eta_channel=0.0, eta_spatial=0.0)(outputs, batch, net)
    assert not {"channel_attention_l1", "spatial_attention_l1"} & set(no_l1)


def test_l1_on_single_channel_maps_by_default() -> None:
    """Eq. 8 / 14: L1 on the single-channel maps P' (channel mean of Z') and P'' (pre-sigmoid, P_k < 0 allowed)."""
    net = nn.Module()
    net.head = RegressionHead(2, num_points=1, low_rank=False)
    p1 = torch.tensor([[[0.5, 1.5]], [[0.0, 2.0]]])
    p2 = torch.tensor([[[-1.0, 0.5]], [[2.0, -0.5]]], requires_grad=True)
    outputs = {"points": torch.zeros(2, 1, 2), "attention_channel_map": p1, "attention_spatial_logits": p2,
               "attention_channel": torch.ones(2, 3), "attention_spatial": torch.sigmoid(p2)}
    batch = {"points": torch.zeros(2, 1, 2)}
    terms = AODNLoss(alpha=0, lambda_=0, eta_channel=2.0, eta_spatial=3.0)(outputs, batch, net)
    assert terms["channel_attention_l1"].item() == pytest.approx(2.0 * 4.0 / 2)
    assert terms["spatial_attention_l1"].item() == pytest.approx(3.0 * 4.0 / 2)
    terms["spatial_attention_l1"].backward()
    torch.testing.assert_close(p2.grad, 1.5 * torch.tensor([[[-1.0, 1.0]], [[1.0, -1.0]]]))
    with pytest.raises(ValueError, match="l1_maps"):
        AODNLoss(l1_maps="vector")


def test_a_few_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    net, loss = AODN(num_points=4, **TINY), AODNLoss()
    batch = {"image": torch.randn(4, 3, 32, 32), "points": torch.rand(4, 4, 2)}
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    history = []
    for _ in range(10):
        terms = loss(net(batch["image"]), batch, net)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        history.append(terms["points"].item())
    assert history[-1] < 0.5 * history[0]
    assert net.branch.sub_network_c.spatial_gate.conv.weight.grad.abs().sum() > 0


def test_loss_units_set_the_regulariser_balance() -> None:
    """Eq. 8 in crop pixels (default) vs crop-normalised units, at initialisation on a fixed batch."""
    cfg = OmegaConf.create({"data": {"num_points": 68}, "model": OmegaConf.load(CONF)})
    cfg.model.pretrained = False
    assert cfg.model.loss.units == "pixels" and cfg.model.loss.crop_size == cfg.model.crop_size == 224
    torch.manual_seed(0)
    net = instantiate(cfg.model.net).eval()
    batch = {"image": torch.randn(2, 3, 64, 64), "points": torch.rand(2, 68, 2)}
    with torch.no_grad():
        out = net(batch["image"])
        terms = {u: instantiate(cfg.model.loss, units=u)(out, batch, net) for u in ("pixels", "normalised")}
    regularisers = {"nuclear_M", "frobenius_M", "conv_weights", "fc_weights", "channel_attention_l1",
                    "spatial_attention_l1"}
    assert set(terms["pixels"]) == regularisers | {"points", "loss"}
    err = ((out["points"] - batch["points"]) * 224).pow(2).sum((1, 2)).mean()
    assert terms["pixels"]["points"].item() == pytest.approx(err.item(), rel=1e-5)
    for term in regularisers:
        ratio = {u: (t[term] / t["points"]).item() for u, t in terms.items()}
        assert ratio["pixels"] == pytest.approx(ratio["normalised"] / 224**2, rel=1e-4), term
    assert (terms["pixels"]["conv_weights"] / terms["pixels"]["points"]).item() < 1e-4
