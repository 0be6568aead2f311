"""ODN: shapes, GM / DM / LM maths, switches, BRNet equivalence, eq. 3 loss terms and units, nuclear norm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from flmk.models.baseline import BRNet
from flmk.models.blocks.lowrank import RegressionHead, nuclear_norm
from flmk.models.odn import ODN, DistillationModule, GeometryAwareModule, ODNLoss

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
TINY = {"gm_width": 8, "dm_width": 4}  # small modules for fast tests


class Const(nn.Module):
    """Stands in for a sub-network: always returns the same tensor."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.value


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def from_yaml(name: str, num_points: int = 68) -> tuple[nn.Module, nn.Module]:
    cfg = OmegaConf.create({"data": {"num_points": num_points}, "model": OmegaConf.load(CONF / f"{name}.yaml")})
    cfg.model.pretrained = False  # nothing can be downloaded here
    return instantiate(cfg.model.net), instantiate(cfg.model.loss)


@pytest.fixture(scope="module")
def odn() -> nn.Module:
    return from_yaml("odn")[0].eval()


def test_parameter_count_matches_paper(odn: nn.Module) -> None:
    assert params(odn) == pytest.approx(6.6e6, rel=0.05)


@pytest.mark.parametrize("size", [160, 224, 256])
def test_output_shapes(odn: nn.Module, size: int) -> None:
    with torch.no_grad():
        out = odn(torch.randn(1, 3, size, size))
    h = size // 16
    assert out["points"].shape == (1, 68, 2)
    assert out["occlusion_map"].shape == (1, h, h) and out["feature_energy"].shape == (1, h, h)
    assert ((out["occlusion_map"] > 0) & (out["occlusion_map"] < 1)).all()
    torch.testing.assert_close(out["occlusion_map"], torch.sigmoid(out["occlusion_logits"]))
    assert set(odn.visual_keys) <= set(out)


def test_gm_products_hand_computed() -> None:
    gm = GeometryAwareModule(channels=2, width=3)
    a, b = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    gm.pathway_a, gm.pathway_b, gm.fuse = Const(a), Const(b), nn.Identity()
    z = torch.zeros(1, 2, 4, 4)
    expected = {"matmul": a @ b / 4, "matmul_T": a @ b.transpose(-1, -2) / 4, "hadamard": a * b}
    for product, want in expected.items():
        gm.product = product
        torch.testing.assert_close(gm(z), want)
    # entry (i, j) of channel k mixes row i of A_k with column j of B_k
    gm.product = "matmul"
    assert gm(z)[0, 1, 2, 3].item() == pytest.approx(float(a[0, 1, 2] @ b[0, 1, :, 3]) / 4, rel=1e-5)
    gm.normalise = False
    torch.testing.assert_close(gm(z), a @ b)


def test_gm_matrix_product_needs_square_maps() -> None:
    gm = GeometryAwareModule(channels=4, width=2)
    with pytest.raises(ValueError, match="square"):
        gm(torch.randn(1, 4, 4, 6))
    gm.product = "hadamard"
    assert gm(torch.randn(1, 4, 4, 6)).shape == (1, 4, 4, 6)
    with pytest.raises(ValueError, match="gm_product"):
        GeometryAwareModule(4, 2, product="kron")


def test_dm_weights_pathway_c_by_sigmoid_of_p() -> None:
    dm = DistillationModule(channels=3, width=2)
    c, logits = torch.randn(2, 3, 5, 5), torch.randn(2, 1, 5, 5)
    dm.pathway_c, dm.pathway_d = Const(c), Const(logits)
    clean, maps = dm(torch.zeros(2, 3, 5, 5))
    torch.testing.assert_close(maps["occlusion_map"], torch.sigmoid(logits[:, 0]))
    torch.testing.assert_close(maps["occlusion_logits"], logits[:, 0])
    torch.testing.assert_close(clean, c * torch.sigmoid(logits))


@pytest.mark.parametrize("absent, x_dim", [("drop", 256), ("identity", 512)])
def test_switches_remove_parameters_and_outputs(absent: str, x_dim: int) -> None:
    full = ODN(num_points=5, absent=absent, **TINY)
    names = {n for n, _ in full.named_parameters()}
    assert any(n.startswith("gm.") for n in names) and any(n.startswith("branch.") for n in names)
    assert "head.M" in names and full.head.M.shape == (512, 512)
    no_gm, no_dm, no_lm = (ODN(num_points=5, absent=absent, **TINY, **{k: False}) for k in ("gm", "dm", "lm"))
    for one_off in (no_gm, no_dm):  # X is what LM reads: one module's C channels (drop) or Z beside it
        assert one_off.head.M.shape == (x_dim, x_dim)
    assert params(full) - params(no_lm) == 512 * 512 and no_lm.head.M is None
    assert not any(n.startswith("branch.") for n, _ in no_dm.named_parameters())
    out = no_dm(torch.randn(2, 3, 64, 64))
    assert set(out) == {"points"} and no_dm.visual_keys == ()
    head_change = params(full.head) - params(no_gm.head)  # a smaller X shrinks M and W_fc
    assert params(full) - params(no_gm) == params(full.gm) + head_change
    assert params(full) - params(no_dm) == params(full.branch) + head_change
    assert head_change == (0 if absent == "identity" else 512 * 512 - 256 * 256 + 256 * 10)


def test_all_modules_off_with_layer4_is_brnet() -> None:
    brnet = BRNet(num_points=7).eval()
    odn = ODN(num_points=7, gm=False, dm=False, lm=False, cut_stage=4).eval()
    odn.load_state_dict(brnet.state_dict())  # strict: the same parameters, the same names
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(odn(x)["points"], brnet(x)["points"])


def test_one_module_off_feeds_only_the_other_to_lm() -> None:
    """Table 4 "BRNet+DM+LM" / "BRNet+GM+LM": X is the pooled output of the module left on, nothing of Z beside it."""
    x = torch.randn(2, 3, 64, 64)
    for off in ("gm", "dm"):
        net = ODN(num_points=3, **TINY, **{off: False}).eval()
        with torch.no_grad():
            z = net.trunk(x)
            feats = net.branch(z)[0] if off == "gm" else net.gm(z)
            torch.testing.assert_close(net(x)["points"], net.head(feats.mean(dim=(2, 3))))
    with pytest.raises(ValueError, match="absent"):
        ODN(num_points=3, absent="zeros", **TINY)


def test_one_module_off_is_identity_on_z_when_asked() -> None:
    net = ODN(num_points=3, gm=False, lm=False, absent="identity", **TINY).eval()
    net.head.fc.weight.data[:, 256:] = 0  # read only the GM half of the hybrid, i.e. Z itself
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        z = net.trunk(x).mean(dim=(2, 3))
        torch.testing.assert_close(net(x)["points"].flatten(), net.head.fc(torch.cat([z, 0 * z], 1)).flatten())


def test_lm_is_fc_of_m_transpose_x() -> None:
    head = RegressionHead(4, num_points=3, low_rank=True, m_init="orthogonal")
    x = torch.randn(2, 4)
    want = (head.fc.weight @ head.M.T @ x.T).T + head.fc.bias  # S = W_fc^T M^T X (+ bias)
    torch.testing.assert_close(head(x), want.view(2, 3, 2))


@pytest.mark.parametrize("rank", [5, 3])
def test_nuclear_norm_gradient_is_u_sign_sigma_vt(rank: int) -> None:
    g = torch.Generator().manual_seed(rank)
    m = torch.zeros(6, 5)
    m[:, :rank] = torch.randn(6, rank, generator=g)  # exactly rank `rank`
    m.requires_grad_()
    value = nuclear_norm(m)
    value.backward()
    u, s, vt = np.linalg.svd(m.detach().double().numpy(), full_matrices=False)
    assert value.item() == pytest.approx(s.sum(), rel=1e-5)
    sign = (s > 1e-6 * s[0]).astype(float)  # the paper's sign(Sigma): zero singular values drop out
    np.testing.assert_allclose(m.grad.numpy(), (u * sign) @ vt, atol=1e-5)
    if rank == 5:  # full rank: autograd of torch's nuclear norm (U V^T) agrees
        ref = m.detach().clone().requires_grad_()
        torch.linalg.matrix_norm(ref, "nuc").backward()
        torch.testing.assert_close(m.grad, ref.grad, atol=1e-5, rtol=1e-5)


def test_nuclear_norm_is_fp32_under_autocast() -> None:
    m = torch.randn(8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = nuclear_norm(m)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(torch.linalg.svdvals(m.detach()).sum().item(), rel=1e-5)


class _HandNet(nn.Module):
    """Just what the loss reads: one conv and a low-rank head with known weights."""

    def __init__(self, low_rank: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 2, bias=False)
        nn.init.constant_(self.conv.weight, 0.5)  # ||W_c||_F^2 = 4 * 0.25 = 1
        self.head = RegressionHead(3, num_points=1, low_rank=low_rank)
        nn.init.constant_(self.head.fc.weight, 2.0)  # ||W_fc||_F^2 = 6 * 4 = 24
        if low_rank:
            self.head.M.data = torch.diag(torch.tensor([3.0, -4.0, 0.0]))  # ||M||_* = 7, ||M||_F^2 = 25


def test_loss_terms_hand_computed() -> None:
    outputs = {"points": torch.tensor([[[0.5, 0.5]], [[0.2, 0.1]]]),
               "occlusion_map": torch.tensor([[[0.5, 0.25]], [[1.0, 0.0]]])}
    batch = {"points": torch.tensor([[[0.4, 0.7]], [[0.2, 0.4]]]), "visible": torch.tensor([[1.0], [0.0]])}
    loss = ODNLoss(beta=1.0, gamma=2.0, alpha=3.0, lambda_=4.0, eta=5.0, l1_on="probabilities", units="normalised")
    terms = loss(outputs, batch, _HandNet())
    want = {"points": (0.01 + 0.04 + 0.09) / 2, "nuclear_M": 7.0, "frobenius_M": 2 * 25.0,
            "conv_weights": 3 * 1.0, "fc_weights": 4 * 24.0, "occlusion_l1": 5 * (0.75 + 1.0) / 2}
    assert set(terms) == set(want) | {"loss"}
    for key, value in want.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-5), key
    assert terms["loss"].item() == pytest.approx(sum(want.values()), rel=1e-5)
    visible = ODNLoss(visible_only=True, units="normalised")(outputs, batch, _HandNet())
    assert visible["points"].item() == pytest.approx(0.05 / 2)
    pixels = ODNLoss(crop_size=10)(outputs, batch, _HandNet())  # crop pixels: (10 * error)^2
    assert pixels["points"].item() == pytest.approx(100 * (0.01 + 0.04 + 0.09) / 2, rel=1e-5)


def test_l1_acts_on_the_pre_sigmoid_map_by_default() -> None:
    """Eq. 9: d||P||_1/dp_k = -1 where p_k < 0, so the L1 is on P before the sigmoid, not on sigmoid(P) > 0."""
    logits = torch.tensor([[[-2.0, 0.5], [1.0, -0.25]]], requires_grad=True)
    outputs = {"points": torch.zeros(1, 1, 2), "occlusion_logits": logits, "occlusion_map": torch.sigmoid(logits)}
    batch = {"points": torch.zeros(1, 1, 2)}
    terms = ODNLoss(eta=2.0)(outputs, batch, _HandNet())
    assert terms["occlusion_l1"].item() == pytest.approx(2.0 * 3.75)
    terms["occlusion_l1"].backward()
    torch.testing.assert_close(logits.grad, 2.0 * torch.tensor([[[-1.0, 1.0], [1.0, -1.0]]]))
    old = ODNLoss(eta=2.0, l1_on="probabilities")(outputs, batch, _HandNet())["occlusion_l1"]
    assert old.item() == pytest.approx(2.0 * torch.sigmoid(logits).sum().item())
    with pytest.raises(ValueError, match="l1_on"):
        ODNLoss(l1_on="both")


def test_zero_weight_or_missing_module_drops_the_term() -> None:
    outputs = {"points": torch.zeros(1, 1, 2), "occlusion_logits": torch.ones(1, 2, 2)}
    batch = {"points": torch.zeros(1, 1, 2)}
    assert "occlusion_l1" not in ODNLoss(eta=0.0)(outputs, batch, _HandNet())
    assert "occlusion_l1" not in ODNLoss()({"points": outputs["points"]}, batch, _HandNet())
    no_lm = ODNLoss()(outputs, batch, _HandNet(low_rank=False))
    assert "nuclear_M" not in no_lm and "frobenius_M" not in no_lm and "fc_weights" in no_lm
    assert set(ODNLoss(beta=0, gamma=0, alpha=0, lambda_=0, eta=0)(outputs, batch, _HandNet())) == {"points", "loss"}


def test_runs_under_bf16_autocast() -> None:
    net, loss = ODN(num_points=4, **TINY), ODNLoss()
    batch = {"points": torch.rand(2, 4, 2)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = loss(net(torch.randn(2, 3, 64, 64)), batch, net)
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in terms.values())
    terms["loss"].backward()
    assert net.head.M.grad is not None and net.gm.pathway_b[1][0].weight.grad is not None


def test_a_few_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    net, loss = ODN(num_points=4, **TINY), ODNLoss()
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


def regulariser_ratios(net: nn.Module, loss_cfg, units: str, batch: dict) -> tuple[dict[str, float], torch.Tensor]:
    loss = instantiate(loss_cfg, units=units)
    with torch.no_grad():
        terms = loss(net(batch["image"]), batch, net)
    return {k: (v / terms["points"]).item() for k, v in terms.items() if k not in ("points", "loss")}, terms["points"]


def test_loss_units_set_the_regulariser_balance() -> None:
    """Eq. 3 in crop pixels (default) vs crop-normalised units, at initialisation on a fixed batch.

    The regularisers do not depend on the unit and the data term scales by S^2,
    so every regulariser-to-data ratio in pixels is the normalised one over S^2.
    """
    cfg = OmegaConf.create({"data": {"num_points": 68}, "model": OmegaConf.load(CONF / "odn.yaml")})
    cfg.model.pretrained = False
    assert cfg.model.loss.units == "pixels" and cfg.model.loss.crop_size == cfg.model.crop_size == 224
    torch.manual_seed(0)
    net = instantiate(cfg.model.net).eval()
    batch = {"image": torch.randn(2, 3, 64, 64), "points": torch.rand(2, 68, 2)}
    pixels, data_px = regulariser_ratios(net, cfg.model.loss, "pixels", batch)
    normalised, data_n = regulariser_ratios(net, cfg.model.loss, "normalised", batch)
    assert set(pixels) == {"nuclear_M", "frobenius_M", "conv_weights", "fc_weights", "occlusion_l1"}
    with torch.no_grad():
        err = ((net(batch["image"])["points"] - batch["points"]) * 224).pow(2).sum((1, 2)).mean()
    assert data_px.item() == pytest.approx(err.item(), rel=1e-5)  # (1/N) sum ||S_hat - S||_F^2 in crop pixels
    for term in pixels:
        assert pixels[term] == pytest.approx(normalised[term] / 224**2, rel=1e-4), term
    # in pixels alpha ||W_c||^2 is a light decay beside the data term; crop-normalised it is not
    assert pixels["conv_weights"] < 1e-4 < normalised["conv_weights"]
