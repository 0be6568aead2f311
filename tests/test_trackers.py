"""Trackers: eq. 13 recursion, streaming = clip-at-once, refinement wiring, detector checkpoint and LR groups,
and the refusal to train without pre-trained parts (issue 13 item 7)."""

from __future__ import annotations

import logging

import pytest
import pytorch_lightning as pl
import torch

from conftest import compose_train
from flmk.models.fan2d import FAN2DLoss, FAN2DTracker
from flmk.models.hm1d import HM1D, HM1DLoss, HM1DTracker
from flmk.models.tracking import ConvGRUMemory, ExponentialMemory, MissingCheckpointError, TemporalRefiner
from flmk.train import train

DETECTOR = dict(crop_size=64, num_stacks=1, channels=8, hourglass_depth=2, head_channels=8, deconv_channels=4,
                length=40)
DETECTOR_2D = dict(crop_size=64, num_stacks=2, channels=8, hourglass_depth=2, deconv_channels=4, length=32)


def hm1d_tracker(**kw) -> HM1DTracker:
    torch.manual_seed(0)
    return HM1DTracker(4, temporal_channels=6, **{**DETECTOR, "allow_scratch": True, **kw})


def randomise_refinement(tracker) -> None:
    """Move CNN4's zero-initialised last layer so the refinement is not trivially zero."""
    with torch.no_grad():
        for refiner in tracker.refiners.values():
            refiner.decoder[-1].weight.normal_(0, 0.3)
            refiner.decoder[-1].bias.normal_(0, 0.3)


@pytest.mark.parametrize("lam", (0.0, 0.3, 1.0))
def test_recursive_memory_equals_the_explicit_sum_of_eq_13(lam: float) -> None:
    u = torch.randn(2, 6, 3, 5)  # (B, T, C, L)
    memory, state, fused = ExponentialMemory(lam), None, []
    for t in range(6):
        v, state = memory.step(u[:, t], state)
        fused.append(v)
    for t in range(6):  # V_t = U_t + sum_{tau < t} lambda^(t - tau) U_tau (0-based t)
        explicit = u[:, t] + sum(lam ** (t - tau) * u[:, tau] for tau in range(t))
        torch.testing.assert_close(fused[t], explicit)


def test_memory_rejects_lambda_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="lam"):
        ExponentialMemory(1.5)


@pytest.mark.parametrize(("dim", "size"), [(1, 37), (1, 40), (2, 11)])
def test_refiner_clip_equals_streaming_and_restores_the_shape(dim: int, size: int) -> None:
    torch.manual_seed(0)
    memory = ExponentialMemory(0.3) if dim == 1 else ConvGRUMemory(2, 5, 3)
    refiner = TemporalRefiner(dim, 3, 5, 3, 5 if dim == 1 else 3, memory, zero_init=False)
    e = torch.randn(2, 4, 3, *(size,) * dim)
    clip = refiner(e)
    assert clip.shape == e.shape
    state = None
    for t in range(4):
        frame, state = refiner.step(e[:, t], state)
        torch.testing.assert_close(frame, clip[:, t])


def test_hm1d_tracker_streaming_equals_clip_at_once() -> None:
    tracker = hm1d_tracker(lam=0.3).eval()
    randomise_refinement(tracker)
    clip = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        whole = tracker(clip)
        state = tracker.init_state()
        for t in range(4):
            out, state = tracker.step(clip[:, t], state)
            for key in ("points", "heatmap_x", "heatmap_y"):
                torch.testing.assert_close(out[key], whole[key][:, t], atol=1e-5, rtol=1e-5)
    assert whole["points"].shape == (2, 4, 4, 2) and whole["heatmap_x"].shape == (2, 4, 4, 40)


def test_fan2d_tracker_streaming_equals_clip_at_once() -> None:
    torch.manual_seed(0)
    tracker = FAN2DTracker(3, temporal_channels=4, allow_scratch=True, **DETECTOR_2D).eval()
    randomise_refinement(tracker)
    clip = torch.randn(1, 3, 3, 64, 64)
    with torch.no_grad():
        whole = tracker(clip)
        state = tracker.init_state()
        for t in range(3):
            out, state = tracker.step(clip[:, t], state)
            torch.testing.assert_close(out["heatmap"], whole["heatmap"][:, t], atol=1e-5, rtol=1e-5)
    assert whole["heatmap"].shape == (1, 3, 3, 32, 32)


def test_zero_initialised_tracker_starts_as_the_detector() -> None:
    tracker = hm1d_tracker().eval()
    clip = torch.randn(1, 3, 3, 64, 64)
    with torch.no_grad():
        out = tracker(clip)
        detected = tracker.detector(clip.flatten(0, 1))
    torch.testing.assert_close(out["heatmap_x"].flatten(0, 1), detected["heatmap_x"])
    torch.testing.assert_close(out["points"].flatten(0, 1), detected["points"])


def test_lambda_zero_forgets_the_past_and_lambda_positive_remembers() -> None:
    for lam, remembers in ((0.0, False), (0.3, True)):
        torch.manual_seed(0)
        refiner = TemporalRefiner(1, 4, 6, 3, 5, ExponentialMemory(lam), zero_init=False)
        e = torch.randn(1, 3, 4, 40)
        changed = e.clone()
        changed[:, 0] = torch.randn(4, 40)  # only the first frame's detection differs
        a, b = refiner(e)[:, 2], refiner(changed)[:, 2]
        assert (not torch.allclose(a, b)) == remembers


def test_tracker_loss_is_eq_11_summed_over_frames_and_trains_both_parts() -> None:
    tracker = hm1d_tracker()
    randomise_refinement(tracker)
    batch = {"image": torch.randn(2, 3, 3, 64, 64), "points": torch.rand(2, 3, 4, 2)}
    out = tracker(batch["image"])
    clip_loss = HM1DLoss()(out, batch, tracker)["loss"]
    frame = lambda t: {k: out[k][:, t] for k in ("heatmap_x", "heatmap_y")}  # noqa: E731
    per_frame = sum(HM1DLoss()(frame(t), {"points": batch["points"][:, t]}, tracker)["loss"] for t in range(3))
    torch.testing.assert_close(clip_loss, per_frame)  # eq. 14
    clip_loss.backward()
    assert tracker.refiners["heatmap_x"].encoder[0].weight.grad.abs().sum() > 0
    assert tracker.detector.backbone.stem.layers[0].weight.grad.abs().sum() > 0


def test_fan2d_tracker_loss_supervises_the_refined_heatmaps() -> None:
    torch.manual_seed(0)
    tracker = FAN2DTracker(3, temporal_channels=4, allow_scratch=True, **DETECTOR_2D)
    batch = {"image": torch.randn(1, 2, 3, 64, 64), "points": torch.rand(1, 2, 3, 2)}
    terms = FAN2DLoss()(tracker(batch["image"]), batch, tracker)
    assert set(terms) == {"heatmap", "loss"}  # intermediate stacks are not part of the tracker's output


def test_param_groups_scale_the_detector_lr() -> None:
    tracker = hm1d_tracker(detector_lr_scale=0.1, lr=1e-4)
    groups = tracker.param_groups()
    assert groups[0]["lr"] == pytest.approx(1e-5) and "lr" not in groups[1]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in tracker.parameters())
    optimizer = torch.optim.Adam(groups, lr=1e-4)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-5, 1e-4])
    with pytest.raises(ValueError, match="model.net.lr"):
        hm1d_tracker(detector_lr_scale=0.1, lr=None).param_groups()
    assert len(hm1d_tracker(detector_lr_scale=1.0).param_groups()) == 1


def test_detector_checkpoint_loads_lightning_and_plain_state_dicts(tmp_path) -> None:
    torch.manual_seed(1)
    detector = HM1D(4, **DETECTOR)
    lightning = tmp_path / "best.ckpt"
    module_state = {f"net.{k}": v for k, v in detector.state_dict().items()} | {"mean_shape": torch.zeros(4, 2)}
    torch.save({"state_dict": module_state, "epoch": 3}, lightning)
    plain = tmp_path / "detector.pt"
    torch.save(detector.state_dict(), plain)
    for path in (lightning, plain):
        tracker = hm1d_tracker(detector_ckpt=str(path))
        for k, v in detector.state_dict().items():
            assert torch.equal(tracker.detector.state_dict()[k], v), k
    with pytest.raises(FileNotFoundError, match="detector_ckpt"):
        hm1d_tracker(detector_ckpt=str(tmp_path / "missing.ckpt"))
    torch.save({"state_dict": {"net.other.weight": torch.zeros(1)}}, tmp_path / "wrong.ckpt")
    with pytest.raises(ValueError, match="not a checkpoint of this detector"):
        hm1d_tracker(detector_ckpt=str(tmp_path / "wrong.ckpt"))


def test_tracker_rejects_image_batches() -> None:
    with pytest.raises(ValueError, match=r"\(B, T, 3, S, S\)"):
        hm1d_tracker()(torch.randn(1, 3, 64, 64))


# -- pre-trained parts: no silent training from scratch ------------------------------------------------------------
@pytest.mark.parametrize(("make", "command"), [
    (lambda **kw: HM1DTracker(4, temporal_channels=6, **DETECTOR, **kw),
     "`python -m flmk.train experiment=hm1d/300w_300vw model.net.length=40`"),
    (lambda **kw: FAN2DTracker(3, temporal_channels=4, **DETECTOR_2D, **kw),
     "`python -m flmk.train model=fan2d data=300w_300vw data.batch_size=10 trainer.max_epochs=60 model.net.length=32`"),
])
def test_tracker_without_detector_checkpoint_stops_unless_scratch_is_allowed(make, command, caplog) -> None:
    with pytest.raises(MissingCheckpointError) as refused:
        make()
    message = str(refused.value)
    assert "model.net.detector_ckpt is null" in message and command in message
    assert "model.net.allow_scratch=true" in message
    with caplog.at_level(logging.WARNING, logger="flmk.models.tracking"):
        tracker = make(allow_scratch=True)
    assert "model.net.detector_ckpt null and model.net.allow_scratch=true" in caplog.text
    assert tracker.detector_lr_scale == 0.1  # the scratch detector still trains at the scaled LR: the user asked


class FitCalled(Exception):
    """Raised by the patched Trainer.fit: training would have started."""


VIDEO = ["data=synthetic_video", "data.sources.synthetic_video.n_videos=3", "data.sources.synthetic_video.frames=12",
         "data.sources.synthetic_video.size=96", "data.clip_length=3", "data.batch_size=2", "trainer=cpu",
         "test=false", "logger=csv", "hydra.mode=RUN"]
HM1D_TINY = ["model.crop_size=64", "model.net.channels=32", "model.net.num_stacks=1"]


@pytest.mark.parametrize(("overrides", "keys", "scratch_key"), [
    (["experiment=hm1d/table2_lambda", "ablation=hm1d/lambda_0_3", *HM1D_TINY],
     ["model.net.detector_ckpt"], "model.net.allow_scratch"),
    (["experiment=hm1d/table1_tracker", "ablation=hm1d/trk2d_64", *HM1D_TINY],
     ["model.net.detector_ckpt"], "model.net.allow_scratch"),
    (["experiment=srn/table9", "ablation=srn/track_hofs", "model.crop_size=128"],
     ["model.net.srn_ckpt", "model.net.hofs_ckpt"], "model.net.allow_scratch"),
    (["experiment=srn/hofs", "model.crop_size=128"], ["model.module_kwargs.srn_ckpt"], "model.module_kwargs.allow_scratch"),
], ids=["hm1d_tracker", "fan2d_tracker", "srn_tracker", "hofs"])
def test_train_refuses_before_fit_and_allow_scratch_lets_it_train(
    overrides, keys, scratch_key, tmp_path, synthetic_video_root, monkeypatch
) -> None:
    """Through `flmk.train` as a user runs it: the run stops before Trainer.fit with the keys and the commands;
    with the explicit <scratch_key>=true it reaches Trainer.fit."""
    def fit(*args, **kwargs):
        raise FitCalled

    monkeypatch.setattr(pl.Trainer, "fit", fit)
    data = [*VIDEO, f"data.sources.synthetic_video.root={synthetic_video_root}"]
    with pytest.raises(Exception) as refused:  # hydra wraps the constructor's MissingCheckpointError
        train(compose_train([*overrides, *data], tmp_path / "refused"))
    assert not isinstance(refused.value, FitCalled)
    message = str(refused.value)
    for key in keys:
        assert f"{key} is null: produce it with `python -m flmk.train" in message
    assert f"{scratch_key}=true" in message
    assert not (tmp_path / "refused" / "checkpoints").exists()
    with pytest.raises(FitCalled):
        train(compose_train([*overrides, *data, f"{scratch_key}=true"], tmp_path / "scratch"))
