"""Temporal refinement of detected heatmaps, shared by the 1D-HM tracker and its 2D baseline.

1D-HM (sec. 4.2, Fig. 2b): CNN3 encodes the detected heatmaps E_t of each frame into U_t,
past frames are fused by V_t = U_t + sum_{tau<t} lambda^(t-tau) U_tau (eq. 13), CNN4 decodes
V_t into a refinement E'_t and the output is E_t + E'_t. Eq. 13 runs recursively:
    V_t = U_t + A_t,  A_{t+1} = lambda (A_t + U_t),  A_1 = 0   (one step per frame).
The 2D baseline (Peng et al.'s recurrent encoder-decoder) swaps the fixed memory for a
convolutional GRU. Encoders/decoders are per-frame and carry no batch norm, so a clip
processed at once and the same clip streamed frame by frame give identical outputs (in eval
mode; in training the detector's batch norm sees B*T frames at once).
Every tracker fine-tunes pre-trained parts (1D-HM §5.1, notes §8 item 18; SRN §3.2): built without their
checkpoints it stops with :class:`MissingCheckpointError` (:func:`require_pretrained`) unless
``model.net.allow_scratch=true`` says that training them from scratch is meant.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

State = dict[str, Any]
log = logging.getLogger(__name__)


class MissingCheckpointError(ValueError):
    """A tracker's pre-trained part has no checkpoint and ``model.net.allow_scratch`` is false."""


def require_pretrained(model: str, missing: dict[str, str], allow_scratch: bool,
                       scratch_key: str = "model.net.allow_scratch") -> None:
    """Refuse to build ``model`` without its pre-trained parts, before anything trains.

    ``missing`` maps each null checkpoint key (e.g. ``model.net.detector_ckpt``) to the command that
    produces that checkpoint. ``allow_scratch`` (config key ``scratch_key``) lets the parts start from
    random weights, with a warning.
    """
    if not missing:
        return
    if allow_scratch:
        log.warning("%s: %s null and %s=true: these parts start from random weights",
                    model, ", ".join(missing), scratch_key)
        return
    steps = "; ".join(f"{key} is null: produce it with `{command}`" for key, command in missing.items())
    raise MissingCheckpointError(
        f"{model} fine-tunes pre-trained parts and would otherwise train them silently from scratch. {steps} "
        "(with the model.net settings of this run). Pass each as <key>=<that run>/checkpoints/<best|last>.ckpt, "
        f"or set {scratch_key}=true to train from scratch on purpose."
    )


class ExponentialMemory(nn.Module):
    """Eq. 13 as a recurrence; the state is the accumulator A_t (None before the first frame)."""

    def __init__(self, lam: float = 0.3) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"tracker lam (lambda of eq. 13) must lie in [0, 1], got {lam}")
        self.lam = lam

    def step(self, u: torch.Tensor, acc: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        v = u if acc is None else u + acc
        return v, self.lam * v  # A_{t+1} = lambda (A_t + U_t) = lambda V_t


class ConvGRUMemory(nn.Module):
    """Convolutional GRU over the encoded heatmaps (the recurrent bottleneck of Peng et al. 2016)."""

    def __init__(self, dim: int, channels: int, kernel: int = 3) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d}[dim]
        self.gates = conv(2 * channels, 2 * channels, kernel, padding=kernel // 2)
        self.candidate = conv(2 * channels, channels, kernel, padding=kernel // 2)

    def step(self, u: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.zeros_like(u) if h is None else h
        z, r = torch.sigmoid(self.gates(torch.cat((u, h), 1))).chunk(2, 1)
        n = torch.tanh(self.candidate(torch.cat((u, r * h), 1)))
        h = (1 - z) * h + z * n
        return h, h


class TemporalRefiner(nn.Module):
    """CNN3 -> memory -> CNN4 on one heatmap tensor: (B, T, N, *spatial) -> refinement of the same shape.

    CNN3: ``layers`` stride-2 convs (kernel ``kernel``, ReLU); CNN4 mirrors them with transposed
    convs sized back to the encoder's input sizes; its last layer is linear (zero-initialised
    when ``zero_init`` so that training starts from the detector's output).
    """

    def __init__(
        self, dim: int, num_points: int, channels: int, layers: int, kernel: int, memory: nn.Module,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if dim not in (1, 2) or layers < 1 or kernel % 2 == 0:
            raise ValueError(
                f"TemporalRefiner: need dim in (1, 2), layers >= 1 and an odd kernel; got {dim}, {layers}, {kernel}"
            )
        conv = {1: nn.Conv1d, 2: nn.Conv2d}[dim]
        deconv = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}[dim]
        widths = [num_points] + [channels] * layers
        self.dim, self.memory = dim, memory
        self.encoder = nn.ModuleList(conv(a, b, kernel, 2, kernel // 2) for a, b in zip(widths, widths[1:]))  # CNN3
        self.decoder = nn.ModuleList(
            deconv(b, a, kernel, 2, kernel // 2) for a, b in reversed(list(zip(widths, widths[1:])))
        )  # CNN4
        if zero_init:
            nn.init.zeros_(self.decoder[-1].weight)
            nn.init.zeros_(self.decoder[-1].bias)

    def encode(self, e: torch.Tensor) -> tuple[torch.Tensor, list[torch.Size]]:
        sizes = []
        for layer in self.encoder:
            sizes.append(e.shape[-self.dim:])
            e = torch.relu(layer(e))
        return e, sizes

    def decode(self, v: torch.Tensor, sizes: list[torch.Size]) -> torch.Tensor:
        for i, (layer, size) in enumerate(zip(self.decoder, reversed(sizes))):
            v = layer(v, output_size=list(size))
            if i < len(self.decoder) - 1:
                v = torch.relu(v)
        return v

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """Whole clip: frames are encoded and decoded at once; only the memory steps through time."""
        b, t = e.shape[:2]
        u, sizes = self.encode(e.flatten(0, 1))
        u = u.unflatten(0, (b, t))
        state, fused = None, []
        for step in range(t):
            v, state = self.memory.step(u[:, step], state)
            fused.append(v)
        return self.decode(torch.stack(fused, 1).flatten(0, 1), sizes).unflatten(0, (b, t))

    def step(self, e: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One frame (B, N, *spatial) with the memory state of the frames before it."""
        u, sizes = self.encode(e)
        v, state = self.memory.step(u, state)
        return self.decode(v, sizes), state


class HeatmapTracker(nn.Module):
    """A heatmap detector plus one :class:`TemporalRefiner` per heatmap output (``detector.heatmap_keys``).

    ``forward(clip (B, T, 3, S, S))`` -> ``points`` (B, T, N, 2) and the refined heatmaps (B, T, ...).
    Streaming: ``state = init_state()``, then ``outputs, state = step(frame, state)`` per frame.
    The detector starts from ``detector_ckpt`` (a run of ``detector_command``; null refuses unless
    ``allow_scratch``) and trains at ``detector_lr_scale`` x the base ``lr`` (1D-HM notes item 18) through
    :meth:`param_groups`.
    """

    visual_keys: tuple[str, ...] = ()
    detector_command = ""  # trains the detector on 300W + 300VW-train stills (1D-HM §5.1); named when it is missing

    def __init__(
        self, detector: nn.Module, refiners: dict[str, TemporalRefiner], detector_ckpt: str | None = None,
        detector_lr_scale: float = 0.1, lr: float | None = None, allow_scratch: bool = False,
    ) -> None:
        super().__init__()
        self.detector = detector
        self.refiners = nn.ModuleDict(refiners)
        self.detector_lr_scale, self.lr = detector_lr_scale, lr
        command = f"{self.detector_command} model.net.length={detector.length}"
        require_pretrained(f"model.net ({type(self).__name__})",
                           {} if detector_ckpt else {"model.net.detector_ckpt": command}, allow_scratch)
        if detector_ckpt:
            self.load_detector(detector_ckpt)

    def load_detector(self, path: str | Path) -> None:
        """Load detector weights from a Lightning checkpoint (keys ``net.*``) or a plain state dict."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model.net.detector_ckpt: no checkpoint at {path}")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if "state_dict" in state:  # a LandmarkModule checkpoint: keep the network's weights
            state = {k.removeprefix("net."): v for k, v in state["state_dict"].items() if k.startswith("net.")}
        try:
            self.detector.load_state_dict(state)
        except RuntimeError as error:  # missing / unexpected keys or shape mismatches
            raise ValueError(
                f"model.net.detector_ckpt {path}: not a checkpoint of this detector; train the detector model "
                f"with the same net settings first ({error})"
            ) from None

    def param_groups(self) -> list[dict]:
        """Detector parameters at ``detector_lr_scale * lr``, the refiners at the optimiser's lr."""
        if self.detector_lr_scale == 1.0:
            return [{"params": list(self.parameters())}]
        if self.lr is None:
            raise ValueError("model.net.lr must be set (e.g. ${model.optimizer.lr}) when detector_lr_scale != 1")
        return [
            {"params": list(self.detector.parameters()), "lr": self.lr * self.detector_lr_scale},
            {"params": list(self.refiners.parameters())},
        ]

    @property
    def decoder(self) -> str:
        return self.detector.decoder

    @property
    def heatmap_keys(self) -> tuple[str, ...]:
        """The refined (and supervised, eq. 14) heatmaps; the detector's intermediate stacks are not among them."""
        return tuple(self.refiners)

    def targets(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """Targets of the refined heatmaps, drawn by the detector."""
        return {k: v for k, v in self.detector.targets(points).items() if k in self.refiners}

    def refine(self, detected: dict[str, torch.Tensor], refined: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(refined)
        out["points"] = self.detector.decode_heatmaps(refined)
        out.update({f"detected_{k}": detected[k] for k in self.refiners})
        return out

    def forward(self, clip: torch.Tensor) -> dict[str, torch.Tensor]:
        if clip.dim() != 5:
            raise ValueError(f"{type(self).__name__} expects a clip batch (B, T, 3, S, S), got {tuple(clip.shape)}")
        b, t = clip.shape[:2]
        frames = self.detector(clip.flatten(0, 1))
        detected = {k: frames[k].unflatten(0, (b, t)) for k in self.refiners}
        return self.refine(detected, {k: e + self.refiners[k](e) for k, e in detected.items()})

    def init_state(self) -> State:
        return {k: None for k in self.refiners}

    def step(self, frame: torch.Tensor, state: State) -> tuple[dict[str, torch.Tensor], State]:
        """One frame (B, 3, S, S) -> outputs for that frame (``points`` (B, N, 2), ...) and the next state."""
        frame_out = self.detector(frame)
        detected = {k: frame_out[k] for k in self.refiners}
        refined, new_state = {}, {}
        for k, e in detected.items():
            delta, new_state[k] = self.refiners[k].step(e, state[k])
            refined[k] = e + delta
        return self.refine(detected, refined), new_state
