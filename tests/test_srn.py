"""SRN network, loss and tracker on tiny sizes."""

from __future__ import annotations

import pytest
import torch

from flmk.layouts import get_layout
from flmk.models.srn import MU_ORDER, SRN, SRNLoss, SRNTracker, generic_mean_shape_68, load_srn_weights, srn_groups

# 32x32 crops, 12x12 patches -> 8-d per patch; narrow FC levels.
TINY = dict(crop_size=32, patch_size=12, conv_channels=(4, 8, 8), conv_kernels=(3, 1, 1), conv_init_std=None,
            nl_inter_channels=4, rnn_hidden=16, g_dim=16, f_dim=8, noise_size=6)


def test_groups_cover_each_point_exactly_once_and_follow_the_layout():
    groups = srn_groups("68")
    assert {k: len(v) for k, v in groups.items()} == {
        "brow": 10, "eye": 12, "nose": 9, "mouth": 20, "cheek_left": 9, "cheek_right": 8}
    flat = sorted(i for v in groups.values() for i in v)
    assert flat == list(range(68))
    assert groups["eye"] == tuple(range(36, 48)) and groups["cheek_left"] == tuple(range(9))
    assert sorted(i for v in srn_groups("98").values() for i in v) == list(range(98))
    with pytest.raises(ValueError, match="jaw"):
        srn_groups("29")


def test_parameter_count_matches_the_notes_arithmetic():
    n = sum(p.numel() for p in SRN().parameters())
    assert 20.7e6 < n < 20.9e6  # notes §6.2: ~20.8 M by the code (paper reports 19.89 M)


@pytest.mark.parametrize("without", [None, "g", "f", "d", "mu"])
@pytest.mark.parametrize("non_local", [True, False])
def test_forward_shapes_and_cascade(without, non_local):
    torch.manual_seed(0)
    net = SRN(hsrm_without=without, non_local=non_local, **TINY).eval()
    out = net(torch.randn(2, 3, 32, 32))
    assert out["points"].shape == (2, 68, 2) and out["points_iter"].shape == (2, 3, 68, 2)
    torch.testing.assert_close(out["points"], out["points_iter"][:, -1])
    torch.testing.assert_close(out["points_init"], net.mean_shape.expand(2, -1, -1))
    assert (net.relation is None) != non_local
    assert all(hasattr(net.hsrm, level) == (level != without) for level in ("g", "f", "d", "mu"))


def test_without_mu_places_each_group_output_at_its_landmarks():
    net = SRN(hsrm_without="mu", **TINY)
    groups = srn_groups("68")
    with torch.no_grad():
        for c in MU_ORDER:
            net.hsrm.d[c].weight.zero_()
            idx = torch.tensor(groups[c], dtype=torch.float32)
            net.hsrm.d[c].bias.copy_(torch.stack([idx, -idx], 1).flatten())
    delta = net.hsrm(torch.randn(2, 68, 8), torch.randn(2, 16))
    expected = torch.stack([torch.arange(68.0), -torch.arange(68.0)], 1).expand(2, -1, -1)
    torch.testing.assert_close(delta, expected)


def test_without_d_keeps_the_68_wide_bottleneck_and_adds_no_parameters():
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    full, wo_d = SRN(), SRN(hsrm_without="d")
    d_params = sum(p.numel() for p in full.hsrm.d.parameters())
    assert count(full) - count(wo_d) == d_params                 # only d's weights go, nothing is added
    assert wo_d.hsrm.mu.in_features == full.hsrm.mu.in_features == 68


def test_without_d_feeds_mu_each_components_own_f_average_pooled_per_landmark():
    torch.manual_seed(0)
    net = SRN(hsrm_without="d", **TINY)   # f_dim 8: brow (10 points) pools 8 -> 10, cheek_right 8 -> 8
    relation, h = torch.randn(2, 68, 8), torch.randn(2, 16)
    seen = {}
    net.hsrm.mu.register_forward_hook(lambda m, inp, out: seen.setdefault("mu_in", inp[0]))
    net.hsrm(relation, h)
    groups = srn_groups("68")
    comp = {c: relation[:, list(groups[c])].flatten(1) for c in MU_ORDER}
    g = {k: net.hsrm.g[k](torch.cat([comp[c] for c in cs], 1)) for k, cs in
         {"ocular": ("brow", "eye"), "snout": ("nose", "mouth"), "cheek": ("cheek_left", "cheek_right")}.items()}
    fin = {"brow": ("ocular", "snout"), "eye": ("ocular", "snout"), "nose": ("ocular", "snout", "cheek"),
           "mouth": ("ocular", "snout", "cheek"), "cheek_left": ("snout", "cheek"), "cheek_right": ("snout", "cheek")}
    expected = []
    for c in MU_ORDER:
        f = net.hsrm.f[c](torch.cat([g[k] for k in fin[c]] + [h], 1))
        n = len(groups[c])  # adaptive average pooling: bin j averages f[floor(j*8/n):ceil((j+1)*8/n)]
        expected += [f[:, (j * 8) // n:-(-(j + 1) * 8 // n)].mean(1) for j in range(n)]
    torch.testing.assert_close(seen["mu_in"], torch.stack(expected, 1))


@pytest.mark.parametrize("variant", ["official", "standard"])
def test_non_local_variant_is_a_constructor_switch(variant):
    torch.manual_seed(0)
    net = SRN(nl_variant=variant, **TINY).eval()
    assert net.relation.variant == variant
    x = torch.rand(2, 68, 8, 1, 1)
    r = net._relate(x)
    if variant == "standard":                    # zero-initialised W: the identity at start
        torch.testing.assert_close(r, x)
    else:                                        # slim-initialised W, y divided by B*positions*C: near-inert
        assert 0 < (r - x).abs().max() < 1e-5
    assert torch.isfinite(net(torch.rand(2, 3, 32, 32))["points"]).all()
    with pytest.raises(ValueError, match="nl_variant"):
        SRN(nl_variant="code", **TINY)


def test_mean_shape_is_the_initial_shape_and_validated():
    net = SRN(**TINY)
    shape = torch.rand(68, 2)
    net.set_mean_shape(shape)
    torch.testing.assert_close(net.eval()(torch.randn(1, 3, 32, 32))["points_init"][0], shape)
    with pytest.raises(ValueError, match="set_mean_shape"):
        net.set_mean_shape(torch.rand(67, 2))
    generic = generic_mean_shape_68()
    assert generic.shape == (68, 2) and generic.min() >= 0.2 - 1e-6 and generic.max() <= 0.8 + 1e-6
    lay = get_layout("68")
    assert generic[lay.ocular[0], 0] < generic[lay.ocular[1], 0]  # subject's right eye on the image left


def _record_cascade_input(net: SRN, seen: dict) -> None:
    """Replace the cascade by a stub that keeps the image it receives."""
    def cascade(img, shape, h_prev=None):
        seen["img"] = img
        return shape[:, None], None
    net.cascade = cascade


def test_noise_occlusion_only_in_training_and_switchable():
    torch.manual_seed(0)
    image = torch.zeros(2, 3, 32, 32)
    gt = torch.full((2, 68, 2), 0.5)
    net = SRN(**TINY)
    net.eval()
    a, b = net(image)["points"], net(image)["points"]
    torch.testing.assert_close(a, b)
    net.train()
    seen = {}
    _record_cascade_input(net, seen)
    net(image, points=gt)
    occluded = (seen["img"] != 0).any(1)[0]
    assert occluded.sum() == 36 and occluded[13:19, 13:19].all()  # 6x6 square centred on the GT landmark
    off = SRN(noise_occlusion=False, **TINY).train()
    _record_cascade_input(off, seen)
    off(image, points=gt)
    assert (seen["img"] == 0).all()


def test_loss_nme_and_l2_by_hand():
    target = torch.zeros(1, 68, 2)
    target[0, 36] = torch.tensor([0.0, 0.0])
    target[0, 45] = torch.tensor([0.5, 0.0])                # inter-ocular distance 0.5
    pred = target + torch.tensor([0.03, 0.04])              # every point off by 0.05
    outputs = {"points_iter": torch.stack([pred, target], 1), "points_init": pred}
    terms = SRNLoss(loss_form="nme")(outputs, {"points": target}, None)
    torch.testing.assert_close(terms["iter0"], torch.tensor(0.1))
    torch.testing.assert_close(terms["iter1"], torch.tensor(0.0))
    torch.testing.assert_close(terms["loss"], torch.tensor(0.1))
    l2 = SRNLoss(loss_form="l2")(outputs, {"points": target}, None)
    torch.testing.assert_close(l2["iter0"], torch.tensor(68 * 0.0025))
    clip = {k: v[:, None].expand(-1, 3, *v.shape[1:]) for k, v in outputs.items()}
    torch.testing.assert_close(SRNLoss()(clip, {"points": target[:, None].expand(-1, 3, -1, -1)}, None)["loss"],
                               terms["loss"])
    with pytest.raises(ValueError, match="loss_form"):
        SRNLoss(loss_form="l1")


def _toy_batch(n: int = 8):
    """Faces: the mean shape shifted per image, drawn as bright dots, so patches carry the offset."""
    g = torch.Generator().manual_seed(0)
    base = generic_mean_shape_68()
    shift = (torch.rand(n, 1, 2, generator=g) - 0.5) * 0.12
    points = base + shift
    image = torch.zeros(n, 3, 32, 32)
    px = (points * 32).long().clamp(0, 31)
    for i in range(n):
        image[i, :, px[i, :, 1], px[i, :, 0]] = 3.0
    return image, points


def test_cascade_improves_over_iterations_after_toy_training():
    torch.manual_seed(0)
    image, points = _toy_batch()
    net = SRN(noise_occlusion=False, nl_variant="standard", **TINY)  # the cascade, not the NL block, is under test
    loss_fn = SRNLoss()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(60):
        terms = loss_fn(net(image), {"points": points}, net)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        out = net(image)
        errs = [float(loss_fn.error(p, points)) for p in [out["points_init"], *out["points_iter"].unbind(1)]]
    assert errs[1] < errs[0] and errs[3] < errs[1], errs


def test_hourglass_initialisation_adds_init_term_and_trains():
    torch.manual_seed(0)
    net = SRN(init="hourglass", hourglass_channels=8, hourglass_depth=2, noise_occlusion=False, **TINY)
    out = net(torch.randn(2, 3, 32, 32))
    assert out["points_init"].shape == (2, 68, 2) and (out["points_init"] > 0).all() and (out["points_init"] < 1).all()
    terms = SRNLoss(init_weight=0.5)(out, {"points": torch.rand(2, 68, 2)}, net)
    assert set(terms) == {"iter0", "iter1", "iter2", "init", "loss"}
    terms["loss"].backward()
    assert net.hourglass.head.weight.grad.abs().sum() > 0
    assert "init" not in SRNLoss()(SRN(**TINY)(torch.randn(2, 3, 32, 32)), {"points": torch.rand(2, 68, 2)},
                                   SRN(**TINY))


def test_tracker_streaming_equals_clip_at_once_and_carries_state():
    torch.manual_seed(0)
    tracker = SRNTracker(occlusion_policy="none", allow_scratch=True, **TINY).eval()
    clip = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        whole = tracker(clip)
        state = tracker.init_state(2)
        streamed = []
        for t in range(4):
            out, state = tracker.step(clip[:, t], state)
            streamed.append(out["points"])
        changed = clip.clone()
        changed[:, 0] += 1.0
        other = tracker(changed)
    assert whole["points"].shape == (2, 4, 68, 2) and whole["points_iter"].shape == (2, 4, 3, 68, 2)
    torch.testing.assert_close(torch.stack(streamed, 1), whole["points"])
    assert state.shape == (2, 3, 16)
    assert not torch.allclose(other["points"][:, 1], whole["points"][:, 1])  # frame 0 reaches frame 1 via h


def test_tracker_rsf_occludes_every_frame_in_training_only():
    tracker = SRNTracker(occlusion_policy="rsf", allow_scratch=True, **TINY).train()
    seen = []

    def step(frame, state):
        seen.append(frame)
        return {"points": torch.zeros(1, 68, 2)}, state
    tracker.step = step
    tracker(torch.zeros(1, 3, 3, 32, 32), points=torch.full((1, 3, 68, 2), 0.5))
    assert all((f != 0).any(1).sum() == 36 for f in seen)
    with pytest.raises(ValueError, match="occlusion_policy"):
        SRNTracker(occlusion_policy="random", **TINY)


def test_load_srn_weights_from_a_lightning_style_checkpoint(tmp_path):
    torch.manual_seed(0)
    src = SRN(**TINY)
    torch.save({"state_dict": {f"net.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "a.ckpt")
    tracker = SRNTracker(occlusion_policy="none", srn_ckpt=str(tmp_path / "a.ckpt"), **TINY)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(tracker.state_dict()[k], v)
    torch.save({"state_dict": {}}, tmp_path / "b.ckpt")
    with pytest.raises(KeyError, match="lacks"):
        load_srn_weights(SRN(**TINY), tmp_path / "b.ckpt")


def test_load_srn_weights_prefers_the_ema_weights(tmp_path):
    torch.manual_seed(0)
    raw, ema = SRN(**TINY).state_dict(), SRN(**TINY).state_dict()
    state = {**{f"net.{k}": v for k, v in raw.items()}, **{f"ema.module.{k}": v for k, v in ema.items()}}
    torch.save({"state_dict": state}, tmp_path / "ema.ckpt")
    net = SRN(**TINY)
    load_srn_weights(net, tmp_path / "ema.ckpt")
    torch.testing.assert_close(net.hsrm.mu.weight, ema["hsrm.mu.weight"])    # what the run evaluated with
