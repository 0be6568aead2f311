"""LandmarkModule: any network that returns a dict, any loss that returns named terms.

Predictions are crop-normalised; they are mapped back to original pixels
with the inverse crop affine before any metric (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections import deque
from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from flmk.compiled import compile_options, pad_rows, unpad, uses_cuda_graphs
from flmk.data.device_augment import finish_batch
from flmk.errors import OptionError
from flmk.layouts import get_layout
from flmk.metrics import LandmarkMetrics, jitter_terms

# The module's on_after_batch_transfer (device augmentation, normalisation) is meant to run beside the data module.
warnings.filterwarnings("ignore", message="You have overridden `on_after_batch_transfer` in `LightningModule` but")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; training stops and the last good checkpoint stays as it was."""


# [assume] "diverged": validation NME above DIVERGENCE_FACTOR x the mean shape's for DIVERGENCE_EPOCHS epochs in a row
DIVERGENCE_FACTOR = 2.0
DIVERGENCE_EPOCHS = 3


class TrainForward(nn.Module):
    """The net's training forward on a finished batch (the points too for nets that take them), eager: what
    torch.optim.swa_utils.update_bn calls to recompute BatchNorm statistics (model.precise_bn)."""

    def __init__(self, net: nn.Module, takes_points: bool):
        super().__init__()
        self.net, self.takes_points = net, takes_points

    def forward(self, batch: dict) -> dict:
        if self.takes_points:
            return self.net.forward(batch["image"], points=batch["points"])
        return self.net.forward(batch["image"])


def to_original(points: torch.Tensor, affine: torch.Tensor, crop_size: int) -> torch.Tensor:
    """Crop-normalised (..., N, 2) -> original pixels, with the (..., 2, 3) original->crop affine.

    The 2x2 inverse is written out (Cramer's rule): elementwise operations only, so the GPU never waits on the
    host (``torch.linalg.solve`` checks its result there) and the inference path fits in one CUDA graph."""
    a = affine.float()
    v = points.float() * crop_size - 0.5 - a[..., None, :, 2]
    m00, m01, m10, m11 = (a[..., i, j, None] for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    det = m00 * m11 - m01 * m10
    return torch.stack([m11 * v[..., 0] - m01 * v[..., 1], m00 * v[..., 1] - m10 * v[..., 0]], -1) / det[..., None]


def flatten_clips(batch: dict, outputs: dict) -> tuple[dict, dict]:
    """(B, T, ...) clip tensors -> (B*T, ...) frames, keeping only frames marked valid."""
    if batch["image"].dim() != 5:
        return batch, outputs
    valid = batch.get("valid")
    b, t = batch["image"].shape[:2]
    keep = valid.reshape(-1) if valid is not None else torch.ones(b * t, dtype=torch.bool, device=batch["image"].device)

    def flat(x):
        if not torch.is_tensor(x) or x.dim() < 2 or x.shape[:2] != (b, t):
            return x
        return x.reshape(b * t, *x.shape[2:])[keep]

    return {k: flat(v) for k, v in batch.items()}, {k: flat(v) for k, v in outputs.items()}


def ema_multi_avg_fn(decay: float) -> Callable:
    """EMA of the weights as tf.train.ExponentialMovingAverage(decay, num_updates) (code:SRN):
    at the t-th average the decay is min(decay, (1 + t) / (10 + t)); integer buffers are copied."""
    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if not ema[0].is_floating_point():
            torch._foreach_copy_(ema, current)
            return
        t = float(num_averaged)
        torch._foreach_lerp_(ema, current, 1.0 - min(decay, (1.0 + t) / (10.0 + t)))

    return update


class LandmarkModule(pl.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable,
        layout: str,
        crop_size: int,
        scheduler: Callable | None = None,
        scheduler_interval: str = "epoch",
        primary_nme: str = "nme_io",
        test_names: list[str] | None = None,
        test_eval_layouts: dict[str, str | None] | None = None,
        mean_shape: np.ndarray | None = None,
        ema_decay: float | None = None,
        test_flip: bool = False,
        finite_check_every: int = 50,
        compile: bool = False,
        compile_mode: str = "default",
        compile_backend: str = "inductor",
        precise_bn: int = 0,
    ):
        super().__init__()
        self.net, self.loss = net, loss
        # model.ema_decay: val/test (and checkpoints' ema.module.*) use an EMA of the weights; null = off
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise OptionError(f"model.ema_decay={ema_decay}: expected a decay in (0, 1), or null for no EMA")
        self.ema = None if ema_decay is None else AveragedModel(net, multi_avg_fn=ema_multi_avg_fn(ema_decay),
                                                                  use_buffers=True).requires_grad_(False)
        # model.precise_bn: before each validation the evaluated net's BatchNorm statistics are recomputed, a plain
        # average (torch.optim.swa_utils.update_bn), over the last that many training batches with the weights that
        # validation uses, instead of the running statistics' momentum-0.1 average over batches of earlier weights;
        # 0 = off (the papers). Those batches stay in memory (on the device) until the validation.
        if precise_bn < 0:
            raise OptionError(f"model.precise_bn={precise_bn}: expected a number of training batches >= 0 (0 = off)")
        self.recent_batches: deque[dict] = deque(maxlen=precise_bn)
        self.test_flip = test_flip  # model.test_flip: average with the un-flipped prediction of the mirrored image
        # nets that use the ground truth while training (SRN's noise occlusion centred on a true landmark)
        self.net_takes_points = "points" in inspect.signature(net.forward).parameters
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval = scheduler_interval
        self.layout = get_layout(layout)
        self.crop_size = crop_size
        self.primary_nme = primary_nme
        self.test_names = list(test_names or [])
        # a test split may be scored on a subset layout (Talking Face's 7 points of the 68)
        self.test_eval_layouts = {k: get_layout(v) for k, v in (test_eval_layouts or {}).items() if v}
        for name, sub in self.test_eval_layouts.items():
            if sub.parent != self.layout.name:
                raise ValueError(f"test split {name}: eval_layout {sub.name} is not a subset of layout {self.layout.name}")
        # model.finite_check_every: the loss is checked for NaN/inf on the device every step and the flag read back
        # every that many steps and before any checkpoint is written, so a GPU never waits on the host for it
        if finite_check_every < 1:
            raise OptionError(f"model.finite_check_every={finite_check_every}: expected a whole number >= 1")
        self.finite_check_every = finite_check_every
        self._nonfinite: torch.Tensor | None = None  # device flag: a loss since the last read-back was NaN/inf
        # model.compile / compile_mode: the net (and its EMA copy) under torch.compile, static shapes (see setup)
        self.compile_options = compile_options(compile_mode, compile_backend) if compile else None
        self.cuda_graphs = compile and uses_cuda_graphs(compile_mode, compile_backend)
        self.eval_rows = 0  # compiled: evaluation batches are padded to the largest seen (one graph, not one per size)
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler", "mean_shape"])
        self.register_buffer("mean_shape", torch.full((self.layout.num_points, 2), float("nan")))
        if mean_shape is not None:
            self.set_mean_shape(mean_shape)
        self.val_metric = self._metric()
        self.val_mean_metric = self._metric()  # the mean shape's validation NME: the divergence yardstick
        self.epochs_above_mean, self.divergence = 0, None
        self.test_metrics = nn.ModuleList()
        self.mean_shape_metrics = nn.ModuleList()
        self.test_results: dict[str, dict] = {}
        self.test_jitter: list[list] = []
        # the composed config this module was built from (flmk.checkpoint.describe); saved in every checkpoint
        self.flmk_config: dict | None = None

    def _metric(self, split: str | None = None) -> LandmarkMetrics:
        layout = self.test_eval_layouts.get(split, self.layout)
        return LandmarkMetrics(layout.name, primary=self.primary_nme.removeprefix("nme_"))

    def set_mean_shape(self, mean_shape: np.ndarray | torch.Tensor) -> None:
        self.mean_shape.copy_(torch.as_tensor(mean_shape, dtype=torch.float32))
        for net in (self.net, self.ema.module if self.ema is not None else None):
            if hasattr(net, "set_mean_shape"):
                net.set_mean_shape(self.mean_shape)

    @property
    def eval_net(self) -> nn.Module:
        """The net that validation and test score: the EMA copy with model.ema_decay, else the trained net."""
        return self.net if self.ema is None else self.ema.module

    def setup(self, stage: str) -> None:
        """model.compile: compile the net and its EMA copy in place (``nn.Module.compile``: the state-dict keys stay
        those of the plain net, no ``_orig_mod.``) once a Trainer uses the module; a module rebuilt from a
        checkpoint for inference (flmk.checkpoint, the Landmarker) stays eager."""
        if self.compile_options is None or self.net._compiled_call_impl is not None:  # off, or compiled already
            return
        for net in (self.net, self.ema.module if self.ema is not None else None):
            if net is not None:
                net.compile(**self.compile_options)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_finite()  # a checkpoint never holds weights trained through a NaN loss
        if self.flmk_config is not None:  # a self-describing checkpoint: flmk.checkpoint rebuilds the module from it
            checkpoint["flmk"] = self.flmk_config

    def forward(self, image: torch.Tensor) -> dict:
        return self.net(image)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Device augmentation (data.augment_on=device) and the normalisation of uint8 crops run here, on the device."""
        return finish_batch(batch, self.crop_size)

    # -- training ----------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int):
        outputs = self.net(batch["image"], points=batch["points"]) if self.net_takes_points else self.net(batch["image"])
        try:
            terms = self.loss(outputs, batch, self.net)
        except torch.linalg.LinAlgError as e:  # an SVD / solve inside a loss term fails on non-finite input
            raise self._non_finite("not finite", f" ({str(e).splitlines()[0]})") from e
        loss = terms["loss"]
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        if (self.global_step + 1) % self.finite_check_every == 0:
            self.check_finite(terms)
        bs = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, prog_bar=False, batch_size=bs,
                      sync_dist=False)
        self.log("train_loss", loss.detach(), prog_bar=True, batch_size=bs, logger=False)
        return loss

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        if self.recent_batches.maxlen:
            self.recent_batches.append({k: batch[k] for k in ("image", "points")})

    def on_validation_epoch_start(self) -> None:
        """model.precise_bn: the evaluated net's BN statistics from the last training batches (see __init__)."""
        if not self.recent_batches:  # off, the sanity check, or a validation before any training step
            return
        net = self.eval_net
        with self.trainer.precision_plugin.forward_context():
            # update_bn puts the module it is given back in that module's mode: the net's (eval, for validation)
            update_bn(self.recent_batches, TrainForward(net, self.net_takes_points).train(net.training))
        self.recent_batches.clear()

    def check_finite(self, terms: dict | None = None) -> None:
        """Read the device flag back; a NaN/inf loss since the last check stops training with the terms."""
        flag, self._nonfinite = self._nonfinite, None
        if flag is None or not bool(flag):
            return
        values = {k: float(v.detach()) for k, v in (terms or {}).items()}
        late = "" if self.finite_check_every == 1 else f", first within the last {self.finite_check_every} steps"
        raise self._non_finite(f"{values.get('loss', float('nan'))}", f" (terms: {values}{late})")

    def on_train_epoch_end(self) -> None:
        self.check_finite()

    def _non_finite(self, value: str, detail: str) -> NonFiniteLossError:
        return NonFiniteLossError(
            f"loss is {value} at epoch {self.current_epoch}, step {self.global_step}{detail}. "
            "Training stopped; checkpoints written before this step are untouched. Lower the learning rate "
            "or enable gradient clipping (trainer.gradient_clip_val)."
        )

    # -- evaluation --------------------------------------------------------------------------------
    def predict_eval(self, image: torch.Tensor) -> dict:
        """Validation/test outputs: the EMA weights if ``ema_decay``; with ``test_flip`` the points are the
        mean of the prediction and the mirrored image's prediction, mapped back (x -> 1 - x, flip permutation)."""
        net = self.eval_net
        n = rows = image.shape[0]
        if self.compile_options is not None:  # a smaller last batch is padded: no new graph for it
            self.eval_rows = rows = max(self.eval_rows, n)
            image = pad_rows(image, rows)
        outputs = unpad(net(image), n, rows, clone=self.cuda_graphs)  # a CUDA graph's next replay overwrites them
        if self.test_flip:
            mirrored = unpad(net(image.flip(-1)), n, rows)["points"][..., self.layout.flip_index, :]
            unflipped = torch.stack([1.0 - mirrored[..., 0], mirrored[..., 1]], -1)
            outputs = {**outputs, "points": (outputs["points"] + unflipped) / 2}
        return outputs

    def _update(self, metric: LandmarkMetrics, batch: dict, points: torch.Tensor) -> None:
        pred, target, visible = to_original(points, batch["affine"], self.crop_size), batch["target_orig"], batch.get("visible")
        if metric.layout.parent_indices is not None and metric.layout.parent == self.layout.name:
            idx = list(metric.layout.parent_indices)
            pred, target = pred[:, idx], target[:, idx]
            visible = visible[:, idx] if visible is not None else None
        metric.update(
            pred,
            target,
            box=batch.get("box"),
            visible=visible,
            has_visibility=batch.get("has_visibility"),
            ids=batch["index"],
        )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        batch, outputs = flatten_clips(batch, self.predict_eval(batch["image"]))
        self._update(self.val_metric, batch, outputs["points"])
        if torch.isfinite(self.mean_shape).all():
            self._update(self.val_mean_metric, batch, self.mean_shape.expand_as(batch["points"]))

    def on_validation_epoch_end(self) -> None:
        result = self.val_metric.compute()
        self.val_metric.reset()
        if self.val_mean_metric.update_called:
            mean_nme = float(self.val_mean_metric.compute()[self.primary_nme])
            self.val_mean_metric.reset()
            if not self.trainer.sanity_checking:
                self._watch_divergence(float(result[self.primary_nme]), mean_nme)
        self.log_dict({f"val/{k}": float(v) for k, v in result.items() if k != "count"}, sync_dist=False)
        self.log("val/nme", float(result[self.primary_nme]), prog_bar=True)

    def _watch_divergence(self, nme: float, mean_nme: float) -> None:
        """Warn once the validation NME stays far above the mean shape's (see DIVERGENCE_FACTOR)."""
        above = not math.isfinite(nme) or nme > DIVERGENCE_FACTOR * mean_nme
        self.epochs_above_mean = self.epochs_above_mean + 1 if above else 0
        if self.epochs_above_mean >= DIVERGENCE_EPOCHS and self.divergence is None:
            self.divergence = (f"validation {self.primary_nme} {100 * nme:.4g}% stayed above {DIVERGENCE_FACTOR:g}x the "
                               f"mean shape's {100 * mean_nme:.2f}% for {DIVERGENCE_EPOCHS} epochs (epoch {self.current_epoch}); "
                               "lower the learning rate")
            warnings.warn(f"training diverges: {self.divergence}", stacklevel=1)

    def on_test_start(self) -> None:
        names = self.test_names or ["test"]
        self.test_metrics = nn.ModuleList([self._metric(n) for n in names]).to(self.device)
        self.mean_shape_metrics = nn.ModuleList([self._metric(n) for n in names]).to(self.device)
        self.test_jitter = [[0.0, 0] for _ in names]  # video splits: jitter sum and frame-pair count

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        outputs = self.predict_eval(batch["image"])
        if batch["image"].dim() == 5:  # clips: prediction motion minus ground-truth motion (flmk.metrics.jitter_terms)
            pred = to_original(outputs["points"], batch["affine"], self.crop_size)
            total, count = jitter_terms(pred, self.layout, batch["target_orig"].float(), batch.get("valid"))
            self.test_jitter[dataloader_idx][0] += float(total)
            self.test_jitter[dataloader_idx][1] += int(count)
        batch, outputs = flatten_clips(batch, outputs)
        self._update(self.test_metrics[dataloader_idx], batch, outputs["points"])
        if torch.isfinite(self.mean_shape).all():
            mean = self.mean_shape.expand_as(batch["points"])
            self._update(self.mean_shape_metrics[dataloader_idx], batch, mean)

    def on_test_epoch_end(self) -> None:
        names = self.test_names or ["test"]
        for name, metric, mean_metric in zip(names, self.test_metrics, self.mean_shape_metrics):
            if not metric.update_called:
                continue
            result = {k: float(v) for k, v in metric.compute().items()}
            jit_sum, jit_count = self.test_jitter[names.index(name)] if self.test_jitter else (0.0, 0)
            if jit_count:
                result["jitter"] = jit_sum / jit_count
            entry = {"metrics": result, "per_image": {k: v.cpu() for k, v in metric.per_image().items()}}
            if mean_metric.update_called:
                entry["mean_shape"] = {k: float(v) for k, v in mean_metric.compute().items()}
            self.test_results[name] = entry
            self.log_dict({f"test/{name}/{k}": v for k, v in result.items() if k != "count" and math.isfinite(v)},
                          add_dataloader_idx=False)

    # -- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = self.net.param_groups() if hasattr(self.net, "param_groups") else self.net.parameters()
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}
