"""1D-HM detector and the FAN 2D baseline: shapes at tiny sizes, eq. 11 loss, decoders, configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from flmk.models.fan2d import FAN2D, FAN2DLoss
from flmk.models.heads.targets import gaussian_1d, gaussian_2d
from flmk.models.hm1d import HM1D, HM1DLoss

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = dict(crop_size=64, num_stacks=2, channels=8, hourglass_depth=2)
TINY_1D = dict(TINY, head_channels=8, deconv_channels=4)
TINY_2D = dict(TINY, deconv_channels=4)


def tiny_hm1d(**kw) -> HM1D:
    torch.manual_seed(0)
    return HM1D(5, **{**TINY_1D, **kw})


@pytest.mark.parametrize(("length", "layout"), [(64, "tokens"), (100, "natural"), (768, "tokens")])
def test_hm1d_shapes_and_points_in_the_crop(length: int, layout: str) -> None:
    net = tiny_hm1d(length=length, coattention_layout=layout)
    out = net(torch.randn(2, 3, 64, 64))
    assert out["heatmap_x"].shape == out["heatmap_y"].shape == (2, 5, length)
    assert out["points"].shape == (2, 5, 2)
    assert ((out["points"] > 0) & (out["points"] < 1)).all()
    assert set(net.visual_keys) <= set(out)


def test_hm1d_points_are_the_decoded_heatmaps() -> None:
    for decoder in ("argmax", "dark"):
        net = tiny_hm1d(length=80, decoder=decoder).eval()
        out = net(torch.randn(1, 3, 64, 64))
        bins = out["heatmap_x"].argmax(-1)
        if decoder == "argmax":
            torch.testing.assert_close(out["points"][..., 0], (bins + 0.5) / 80)  # eq. 7 in crop units
        else:  # DARK moves by at most one bin
            assert ((out["points"][..., 0] * 80 - 0.5 - bins).abs() <= 1 + 1e-4).all()


def test_hm1d_loss_is_eq_11_and_zero_at_the_targets() -> None:
    net = tiny_hm1d(length=50, sigma=4.0)  # 4 px at a 64 crop -> 3.125 bins
    points = torch.rand(2, 5, 2)
    tx, ty = gaussian_1d(points[..., 0], 50, 3.125), gaussian_1d(points[..., 1], 50, 3.125)
    hx, hy = torch.rand(2, 5, 50), torch.rand(2, 5, 50)
    terms = HM1DLoss()({"heatmap_x": hx, "heatmap_y": hy}, {"points": points}, net)
    expected = sum(((hx[b, n] - tx[b, n]) ** 2).sum() + ((hy[b, n] - ty[b, n]) ** 2).sum()
                   for b in range(2) for n in range(5)) / 2
    torch.testing.assert_close(terms["heatmap"], expected)
    torch.testing.assert_close(terms["loss"], terms["heatmap"])
    zero = HM1DLoss()({"heatmap_x": tx, "heatmap_y": ty}, {"points": points}, net)
    assert float(zero["loss"]) == 0.0
    assert set(HM1DLoss(heatmap_weight=0.0)({"heatmap_x": hx, "heatmap_y": hy}, {"points": points}, net)) == {"loss"}


def test_hm1d_trains_end_to_end_through_the_coattention() -> None:
    net = tiny_hm1d(length=32, gamma=0.5)
    batch = {"image": torch.randn(2, 3, 64, 64), "points": torch.rand(2, 5, 2)}
    HM1DLoss()(net(batch["image"]), batch, net)["loss"].backward()
    assert net.head.coattention.P.grad.abs().sum() > 0
    assert net.backbone.stem.layers[0].weight.grad.abs().sum() > 0


def test_hm1d_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="decoder"):
        tiny_hm1d(decoder="integral")
    with pytest.raises(ValueError, match="coattention_layout"):
        tiny_hm1d(coattention_layout="rows")
    with pytest.raises(ValueError, match="crop_size"):
        tiny_hm1d(crop_size=40)
    with pytest.raises(ValueError, match="crop_size is 64"):
        tiny_hm1d()(torch.randn(1, 3, 128, 128))


@pytest.mark.parametrize("decoder", ("argmax", "dark", "integral", "dsnt"))
def test_fan2d_shapes_and_loss_form_follow_the_decoder(decoder: str) -> None:
    torch.manual_seed(0)
    net = FAN2D(5, length=32, decoder=decoder, **TINY_2D)
    batch = {"image": torch.randn(2, 3, 64, 64), "points": torch.rand(2, 5, 2)}
    out = net(batch["image"])
    assert out["heatmap"].shape == (2, 5, 32, 32)
    assert out["heatmap_stacks"].shape == (2, 1, 5, 16, 16)  # one intermediate stack at S/4
    assert out["points"].shape == (2, 5, 2)
    terms = FAN2DLoss()(out, batch, net)
    expected = {"argmax": {"heatmap"}, "dark": {"heatmap"}, "integral": {"coord"}, "dsnt": {"coord", "dsnt_reg"}}
    assert set(terms) == expected[decoder] | {"intermediate", "loss"}
    torch.testing.assert_close(terms["loss"], sum(v for k, v in terms.items() if k != "loss"))
    terms["loss"].backward()
    assert net.backbone.stem.layers[0].weight.grad.abs().sum() > 0


def test_fan2d_heatmap_loss_value_and_integral_coordinate_loss() -> None:
    net = FAN2D(3, length=16, intermediate_supervision=False, sigma=4.0, **TINY_2D)  # 1 bin at 16 / 64
    points = torch.tensor([[[0.3, 0.6], [0.5, 0.45], [0.7, 0.35]]])  # >= 4 bins from the border
    target = gaussian_2d(points, 16, 1.0)
    heatmap = torch.rand(1, 3, 16, 16)
    terms = FAN2DLoss()({"heatmap": heatmap}, {"points": points}, net)
    torch.testing.assert_close(terms["heatmap"], ((heatmap - target) ** 2).sum())
    net.decoder = "integral"
    logits = target.clamp_min(1e-12).log()  # soft-argmax of log g is g's centre: tiny L1
    assert float(FAN2DLoss()({"heatmap": logits}, {"points": points}, net)["coord"]) < 1e-3


def test_fan2d_without_intermediate_supervision_and_newell_pooling() -> None:
    net = FAN2D(4, length=16, intermediate_supervision=False, pool="max", **TINY_2D)
    out = net(torch.randn(1, 3, 64, 64))
    assert "heatmap_stacks" not in out and len(net.intermediate.heads) == 0
    assert isinstance(net.backbone.stem.layers[4], torch.nn.MaxPool2d)
    with pytest.raises(ValueError, match="decoder"):
        FAN2D(4, decoder="soft", **TINY_2D)


@pytest.mark.parametrize("make", [
    # cnn1/cnn2 one layer each: torch 2.14's CPU bf16 conv returns NaNs for stride (1, 2) on a width-2 input
    # (the last CNN2y layer of deeper settings); GPU bf16 and CPU fp32, the supported paths, are unaffected.
    lambda: (tiny_hm1d(length=96, coattention_layout="natural", cnn1_layers=1, cnn2_layers=1), HM1DLoss()),
    lambda: (FAN2D(5, length=32, decoder="dsnt", **TINY_2D), FAN2DLoss()),
])
def test_bf16_autocast_forward_and_loss_are_finite(make) -> None:
    torch.manual_seed(0)
    net, loss = make()
    batch = {"image": torch.randn(2, 3, 64, 64), "points": torch.rand(2, 5, 2)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(batch["image"])
        terms = loss(out, batch, net)
    assert out["points"].dtype == torch.float32 and torch.isfinite(out["points"]).all()
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()


@pytest.mark.slow
def test_parameter_counts_at_paper_size() -> None:
    """1D-HM gives no parameter count; these pin ours (68 points, 256 channels, 4 stacks)."""
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    assert count(HM1D(68)) == pytest.approx(20.47, abs=0.01)  # hourglass 12.81 M + 1D head at L = 768
    assert count(FAN2D(68, length=64)) == pytest.approx(12.94, abs=0.01)
    assert count(FAN2D(68, length=256)) == pytest.approx(15.03, abs=0.01)


# -- configs ------------------------------------------------------------------------------------
ROWS = sorted(p.stem for p in (CONF / "ablation" / "hm1d").glob("*.yaml"))
ROW_MODEL = {
    **{f"l2d_{n}": "fan2d" for n in (64, 128, 256)}, **{f"trk2d_{n}": "fan2d_tracker" for n in (64, 128, 256)},
    **{f"l1d_{n}": "hm1d" for n in (64, 128, 256, 384, 512, 640, 768)},
    **{f"trk1d_{n}": "hm1d_tracker" for n in (64, 128, 256, 384, 512, 640, 768)},
    "ours": "hm1d", "ours_dark": "hm1d", "fan2d_dark": "fan2d", "fan2d_integral": "fan2d", "fan2d_dsnt": "fan2d",
    "newell": "fan2d",
}
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment" / "hm1d").glob("*.yaml"))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def _tiny(cfg) -> None:
    cfg.model.crop_size = 64
    net = cfg.model.net
    net.num_stacks, net.channels, net.hourglass_depth = 1, 4, 2
    for key, value in (("head_channels", 4), ("deconv_channels", 4), ("temporal_channels", 4)):
        if key in net:
            net[key] = value


@pytest.mark.parametrize("row", ROWS)
def test_every_row_composes_to_its_model_and_runs_a_step(row: str) -> None:
    """Rows that change the model override it in their defaults list; the others work on hm1d or hm1d_tracker."""
    base = [] if row in ROW_MODEL else ["model=hm1d_tracker" if row.startswith("lambda") else "model=hm1d"]
    cfg = _compose([*base, f"ablation=hm1d/{row}"])
    assert cfg.hydra.runtime.choices.ablation == f"hm1d/{row}"
    assert cfg.model.name == ROW_MODEL.get(row, base[0].split("=")[1] if base else None)
    _tiny(cfg)
    if clip := cfg.model.name.endswith("tracker"):
        cfg.model.net.allow_scratch = True  # no detector checkpoint in a unit test
    net, loss = instantiate(cfg.model.net), instantiate(cfg.model.loss)
    lead = (1, 2) if clip else (1,)
    batch = {"image": torch.randn(*lead, 3, 64, 64), "points": torch.rand(*lead, cfg.data.num_points, 2)}
    out = net(batch["image"])
    assert out["points"].shape == (*lead, cfg.data.num_points, 2)
    loss(out, batch, net)["loss"].backward()
    params = net.param_groups() if hasattr(net, "param_groups") else net.parameters()
    instantiate(cfg.model.optimizer)(params=params).step()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose_and_rows_keep_their_model(experiment: str) -> None:
    text = (CONF / "experiment" / "hm1d" / f"{experiment}.yaml").read_text()
    data = text.split("override /data: ")[1].split()[0]
    if not (CONF / "data" / f"{data}.yaml").exists():
        pytest.skip(f"conf/data/{data}.yaml not written yet")
    cfg = _compose([f"experiment=hm1d/{experiment}"])
    assert cfg.table == f"hm1d/{experiment}"
    sweep = (cfg.hydra.sweeper.get("params") or {}).get("ablation")
    rows = sweep.split(",") if sweep else [cfg.hydra.runtime.choices.ablation]
    assert all(row.removeprefix("hm1d/") in ROWS for row in rows), rows
    for row in {rows[0], rows[-1]}:  # composing every row is the integrator's generic test
        name = row.removeprefix("hm1d/")
        composed = _compose([f"experiment=hm1d/{experiment}", f"ablation={row}"])
        assert composed.model.name == ROW_MODEL.get(name, cfg.model.name), f"{experiment} row {row}"


def test_paper_number_files_name_existing_rows() -> None:
    import yaml

    for path in (CONF.parent / "experiments" / "hm1d").glob("*.yaml"):
        spec = yaml.safe_load(path.read_text())
        assert spec["paper"] == "hm1d" and spec["table"] == f"hm1d/{path.stem}"
        for row, values in spec["rows"].items():
            assert row.removeprefix("hm1d/") in ROWS, f"{path.name}: {row}"
            assert set(values) == set(spec["columns"]), f"{path.name}: {row}"


# -- intermediate supervision: one switch on both models (issue 13 item 11) ---------------------------------------
@pytest.mark.parametrize("model", ("hm1d", "fan2d"))
def test_intermediate_switch_decides_which_stacks_get_loss(model: str) -> None:
    """On: the earlier stack draws 2D maps whose L2 to the eq. 2 Gaussians is a loss term that reaches stack 1 and
    neither stack 2 nor the last head. Off: no stack maps, no such term (eq. 11 for hm1d)."""
    make, loss = {"hm1d": (lambda **kw: HM1D(5, **TINY_1D, length=32, **kw), HM1DLoss()),
                  "fan2d": (lambda **kw: FAN2D(5, **TINY_2D, length=32, **kw), FAN2DLoss())}[model]
    batch = {"image": torch.randn(2, 3, 64, 64), "points": torch.rand(2, 5, 2)}
    torch.manual_seed(0)
    net = make(intermediate_supervision=True)
    out = net(batch["image"])
    terms = loss(out, batch, net)
    target = gaussian_2d(batch["points"], 16, 1.0)  # sigma 2 px at 64 -> 0.5 bins at 16, floored at 1
    torch.testing.assert_close(terms["intermediate"], ((out["heatmap_stacks"][:, 0] - target) ** 2).sum() / 2)
    terms["intermediate"].backward()
    assert net.intermediate.heads[0].weight.grad.abs().sum() > 0
    assert net.backbone.stacks[0][2].weight.grad.abs().sum() > 0           # the earlier stack gets this loss
    assert net.backbone.stacks[1][2].weight.grad is None                   # the last stack does not
    assert all(p.grad is None for p in net.head.parameters())
    torch.manual_seed(0)
    off = make(intermediate_supervision=False)
    out = off(batch["image"])
    assert "heatmap_stacks" not in out and len(off.intermediate.heads) == 0
    assert set(loss(out, batch, off)) == ({"heatmap", "loss"})


def test_intermediate_switch_has_one_name_and_each_papers_default() -> None:
    defaults = {m: _compose([f"model={m}"]).model.net.intermediate_supervision for m in ("hm1d", "fan2d")}
    assert defaults == {"hm1d": False, "fan2d": True}  # eq. 11 (notes §8 item 17) | FAN: MSE on every stack
    for row, flag in (("hm1d/ours", "true"), ("hm1d/fan2d_dark", "false")):  # like-for-like Table 3
        cfg = _compose(["experiment=hm1d/table3", f"ablation={row}", f"++model.net.intermediate_supervision={flag}"])
        _tiny(cfg)
        cfg.model.net.num_stacks = 2
        net = instantiate(cfg.model.net)
        assert ("heatmap_stacks" in net(torch.randn(1, 3, 64, 64))) == (flag == "true")


def test_hm1d_detector_without_stack_heads_keeps_its_checkpoint_keys() -> None:
    """Off, the switch adds no parameters: hm1d checkpoints from before the switch still load."""
    assert not any(k.startswith("intermediate.") for k in tiny_hm1d().state_dict())
