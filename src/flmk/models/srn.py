"""SRN: Structural Relation Network (Zhu, Li, Li, Dai, Tong), image model and tracker.

Cascaded shape regression from an initial shape (eqs. 1-2): at each of
``iterations`` steps (shared weights) the net crops shape-indexed patches
around the current estimate, encodes them with a small conv stack, relates
all patch positions with a non-local block (eqs. 3-4), updates an RNN
state (eq. 5) and reasons the shape residual through the hierarchical
structural relation module HSRM (g -> f -> d -> mu, eqs. 6-7).
The tracker (eq. 13) carries one RNN chain per cascade step across frames.

Wiring follows the official TF code as read in IMPLEMENTATION_NOTES.md §6.2;
choices marked [assume] there are constructor arguments (conf/model/srn.yaml).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from flmk.data.occlusion import occlude_random_landmark
from flmk.layouts import Layout, get_layout
from flmk.models.blocks.nonlocal_block import NLVariant, NonLocalBlock
from flmk.models.blocks.patches import extract_patches

# --- the facial hierarchy (paper Fig. 1-2, notes §6.2 items 5-9) ---------------------------------------
# SRN group -> layout groups it is made of (alternatives: layouts name brows/eyes jointly or split).
_FROM_LAYOUT: dict[str, tuple[tuple[str, ...], ...]] = {
    "brow": (("right_brow", "left_brow"), ("brows",)),
    "eye": (("right_eye", "left_eye"), ("eyes",)),
    "nose": (("nose",),),
    "mouth": (("mouth",),),
}
G_LEVEL = {"ocular": ("brow", "eye"), "snout": ("nose", "mouth"), "cheek": ("cheek_left", "cheek_right")}
F_LEVEL = {  # f branch -> the g branches it reads (plus the RNN state h)
    "brow": ("ocular", "snout"), "eye": ("ocular", "snout"),
    "nose": ("ocular", "snout", "cheek"), "mouth": ("ocular", "snout", "cheek"),
    "cheek_left": ("snout", "cheek"), "cheek_right": ("snout", "cheek"),
}
D_PAIRS = (("brow", "eye"), ("nose", "mouth"), ("cheek_left", "cheek_right"))  # each d reads both f's of its pair
MU_ORDER = ("cheek_left", "cheek_right", "brow", "nose", "eye", "mouth")      # concat order into mu (code)

HSRMLevel = Literal["g", "f", "d", "mu"]


def srn_groups(layout: str | Layout) -> dict[str, tuple[int, ...]]:
    """The six SRN component groups, derived by name from ``layout.groups``.

    The cheek groups split the jaw contour: the first ceil(n/2) points are "cheek_left", the rest
    "cheek_right" (9 / 8 for 68 points; [assume] notes §8 item 22).
    """
    lay = get_layout(layout)

    def pick(name: str) -> tuple[int, ...]:
        for names in _FROM_LAYOUT[name]:
            if all(n in lay.groups for n in names):
                return tuple(i for n in names for i in lay.groups[n])
        raise ValueError(f"SRN: layout {lay.name!r} has no groups {_FROM_LAYOUT[name]} for the {name!r} component; "
                         f"its groups are {list(lay.groups)}")

    groups = {name: pick(name) for name in _FROM_LAYOUT}
    jaw = lay.groups.get("jaw")
    if jaw is None or len(jaw) < 2:
        raise ValueError(f"SRN: layout {lay.name!r} needs a 'jaw' group of >= 2 points to form the cheek groups; "
                         f"its groups are {list(lay.groups)}")
    half = math.ceil(len(jaw) / 2)
    groups["cheek_left"], groups["cheek_right"] = tuple(jaw[:half]), tuple(jaw[half:])
    covered = sorted(i for g in groups.values() for i in g)
    if covered != list(range(lay.num_points)):
        raise ValueError(f"SRN: the groups of layout {lay.name!r} do not cover each of its {lay.num_points} points "
                         "exactly once")
    return groups


def generic_mean_shape_68() -> torch.Tensor:
    """A procedural frontal 68-point face in crop coordinates (face inside [0.2, 0.8]^2).

    Only a placeholder until :meth:`SRN.set_mean_shape` receives the training set's mean shape.
    """
    def arc(x0, x1, y, bend, n):
        t = torch.linspace(0, 1, n)
        return torch.stack([x0 + (x1 - x0) * t, y - bend * torch.sin(math.pi * t)], -1)

    def ring(cx, cy, w, h, n):  # starts at the left corner, runs over the top, back along the bottom
        a = math.pi - torch.arange(n) * 2 * math.pi / n
        return torch.stack([cx + w / 2 * torch.cos(a), cy - h / 2 * torch.sin(a)], -1)

    phi = torch.linspace(-0.15, math.pi + 0.15, 17)
    jaw = torch.stack([-0.95 * torch.cos(phi), -0.15 + 1.05 * torch.sin(phi)], -1)
    nose_tip = torch.linspace(-0.2, 0.2, 5)
    parts = [
        jaw,
        arc(-0.8, -0.15, -0.55, 0.1, 5), arc(0.15, 0.8, -0.55, 0.1, 5),               # brows
        torch.stack([torch.zeros(4), torch.linspace(-0.35, 0.15, 4)], -1),            # nose bridge
        torch.stack([nose_tip, 0.25 + 0.05 * (1 - (nose_tip / 0.2) ** 2)], -1),       # lower nose
        ring(-0.45, -0.3, 0.3, 0.12, 6), ring(0.45, -0.3, 0.3, 0.12, 6),              # eyes
        ring(0.0, 0.55, 0.7, 0.3, 12), ring(0.0, 0.55, 0.45, 0.12, 8),                # lips
    ]
    return 0.5 + 0.3 * torch.cat(parts)


def default_mean_shape(layout: Layout) -> torch.Tensor:
    """The generic face for 68 points (or a layout derived from them); a ring for other layouts."""
    if layout.name == "68":
        return generic_mean_shape_68()
    if layout.parent == "68":
        return generic_mean_shape_68()[list(layout.parent_indices)]
    a = torch.arange(layout.num_points) * 2 * math.pi / layout.num_points
    return 0.5 + 0.25 * torch.stack([torch.cos(a), torch.sin(a)], -1)


# --- network parts -------------------------------------------------------------------------------------
class PatchEncoder(nn.Module):
    """The three-conv stack of §4.1 (VALID convs, ReLU, 2x2 max-pool, no BN): a patch -> x, (C, h, w).

    Default 36x36 -> 64 x 2 x 2 = 256-d per patch. Shared by SRN and the HOFS Q-net.
    """

    def __init__(self, patch_size: int = 36, channels: tuple[int, ...] = (32, 64, 64),
                 kernels: tuple[int, ...] = (7, 3, 3), init_std: float | None = 0.01) -> None:
        super().__init__()
        if len(channels) != len(kernels):
            raise ValueError(f"SRN conv_channels {list(channels)} and conv_kernels {list(kernels)} differ in length")
        layers: list[nn.Module] = []
        c_in = 3
        for c, k in zip(channels, kernels):
            layers += [nn.Conv2d(c_in, c, k), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        self.body = nn.Sequential(*layers)
        side = patch_size
        for k in kernels:
            side = (side - k + 1) // 2
        if side < 1:
            raise ValueError(f"SRN: patch_size {patch_size} is too small for conv_kernels {list(kernels)}")
        self.out_shape = (c_in, side, side)
        self.init_std = init_std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated normal (std ``init_std``), bias 0 (code:SRN); PyTorch's default when ``init_std`` is None."""
        for m in self.body:
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()
                if self.init_std is not None:
                    nn.init.trunc_normal_(m.weight, std=self.init_std, a=-2 * self.init_std, b=2 * self.init_std)
                    nn.init.zeros_(m.bias)

    @property
    def out_dim(self) -> int:
        return math.prod(self.out_shape)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, 3, P, P) -> (B, N, C, h, w)."""
        b, n = patches.shape[:2]
        return self.body(patches.flatten(0, 1)).unflatten(0, (b, n))


class RNNCell(nn.Module):
    """h = tanh((x (+) h_prev) W + b), eq. 5 (eq. 13 in the tracker)."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim + hidden, hidden)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(torch.cat([x, h], dim=1)))


class HSRM(nn.Module):
    """Hierarchical structural relation module: g (3 neighbourhoods), f (6 components), d, mu (eqs. 6-7).

    ``without`` removes one level (Table 7), wired as notes §7.5 recommend, never enlarging the model:
    g: each f reads the raw patch features its g branches would read (plus h);
    f: each d reads [g..., h] of its pair's f branches;
    d: each component's own f output is average-pooled to one value per landmark (256 -> #points,
    parameter-free), so mu reads the same 68-wide vector as in the full model, without d's learned,
    pair-mixing projection (the pooling is one fixed d, so the row's model class lies inside the full one);
    mu: each d outputs 2 x #points, placed at its group's landmark indices.
    """

    def __init__(self, groups: dict[str, tuple[int, ...]], patch_dim: int, hidden: int, g_dim: int = 512,
                 f_dim: int = 256, without: HSRMLevel | None = None) -> None:
        super().__init__()
        if without not in (None, "g", "f", "d", "mu"):
            raise ValueError(f"SRN hsrm_without: expected null, 'g', 'f', 'd' or 'mu', got {without!r}")
        self.without = without
        self.size = {name: len(groups[name]) for name in MU_ORDER}
        for name in MU_ORDER:
            self.register_buffer(f"index_{name}", torch.tensor(groups[name], dtype=torch.long), persistent=False)
        order = torch.tensor([i for name in MU_ORDER for i in groups[name]])
        self.register_buffer("order_inverse", torch.argsort(order), persistent=False)  # concat slot of each point
        size = self.size
        num_points = sum(size.values())
        raw = {g: sum(size[c] for c in comps) * patch_dim for g, comps in G_LEVEL.items()}  # g inputs

        def fc(i: int, o: int, act: nn.Module | None) -> nn.Module:
            return nn.Sequential(nn.Linear(i, o), act) if act is not None else nn.Linear(i, o)

        if without != "g":
            self.g = nn.ModuleDict({g: fc(raw[g], g_dim, nn.Tanh()) for g in G_LEVEL})
        g_out = {g: raw[g] if without == "g" else g_dim for g in G_LEVEL}
        if without != "f":
            self.f = nn.ModuleDict({c: fc(sum(g_out[g] for g in gs) + hidden, f_dim, nn.ReLU())
                                    for c, gs in F_LEVEL.items()})
        if without != "d":
            d_out = {c: size[c] * (2 if without == "mu" else 1) for c in MU_ORDER}
            self.d = nn.ModuleDict({
                c: nn.Linear(2 * f_dim if without != "f" else sum(g_out[g] for g in self._pair_g(c)) + hidden,
                             d_out[c])
                for c in MU_ORDER
            })
        if without != "mu":
            self.mu = nn.Linear(num_points, 2 * num_points)

    @staticmethod
    def _pair(c: str) -> tuple[str, str]:
        return next(p for p in D_PAIRS if c in p)

    def _pair_g(self, c: str) -> tuple[str, ...]:
        """The g branches read by the two f branches of c's pair, in G_LEVEL order."""
        used = {g for f in self._pair(c) for g in F_LEVEL[f]}
        return tuple(g for g in G_LEVEL if g in used)

    def forward(self, relation: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """(B, N, D) per-patch relation features R, (B, H) RNN state -> (B, N, 2) shape residual."""
        comp = {c: relation.index_select(1, getattr(self, f"index_{c}")).flatten(1) for c in MU_ORDER}
        g_raw = {g: torch.cat([comp[c] for c in cs], 1) for g, cs in G_LEVEL.items()}
        g = g_raw if self.without == "g" else {k: self.g[k](v) for k, v in g_raw.items()}
        if self.without == "f":
            d_in = {c: torch.cat([g[k] for k in self._pair_g(c)] + [h], 1) for c in MU_ORDER}
        else:
            f = {c: self.f[c](torch.cat([g[k] for k in gs] + [h], 1)) for c, gs in F_LEVEL.items()}
            if self.without == "d":  # fixed reduction of each component's own f to its #points
                pooled = [nn.functional.adaptive_avg_pool1d(f[c][:, None], self.size[c])[:, 0] for c in MU_ORDER]
                return self.mu(torch.cat(pooled, 1)).unflatten(1, (-1, 2))
            d_in = {c: torch.cat([f[k] for k in self._pair(c)], 1) for c in MU_ORDER}
        d = torch.cat([self.d[c](d_in[c]) for c in MU_ORDER], 1)               # groups in MU_ORDER
        if self.without == "mu":
            return d.unflatten(1, (-1, 2)).index_select(1, self.order_inverse)  # scatter to fixed indices
        return self.mu(d).unflatten(1, (-1, 2))                                # eq. 7


class HourglassInit(nn.Module):
    """Initial shape from a one-stack hourglass (Table 4's SRN+HG): heatmaps -> soft-argmax points."""

    def __init__(self, num_points: int, channels: int = 128, depth: int = 4) -> None:
        super().__init__()
        from flmk.models.blocks.hourglass import StackedHourglass

        self.backbone = StackedHourglass(num_stacks=1, channels=channels, depth=depth)
        self.head = nn.Conv2d(channels, num_points, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        heat = self.head(self.backbone(image)[-1]).float()                     # (B, N, h, w)
        b, n, h, w = heat.shape
        prob = torch.softmax(heat.flatten(2), -1).view(b, n, h, w)
        xs = (torch.arange(w, device=heat.device) + 0.5) / w                   # bin centres, crop-normalised
        ys = (torch.arange(h, device=heat.device) + 0.5) / h
        return torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], -1)


class SRN(nn.Module):
    """Structural Relation Network. ``forward(image) -> {points, points_iter (B, K, N, 2), points_init}``.

    In training (``self.training``) with ``noise_occlusion`` the forward first pastes a ``noise_size``
    square of uniform noise around one random landmark per image, on the normalised image (§3.1). The
    landmark is taken from ``points`` (ground truth) when the caller passes them, else from the initial shape.
    """

    def __init__(
        self,
        num_points: int = 68,
        layout: str = "68",
        crop_size: int = 224,
        patch_size: int = 36,
        iterations: int = 3,
        conv_channels: tuple[int, ...] = (32, 64, 64),
        conv_kernels: tuple[int, ...] = (7, 3, 3),
        conv_init_std: float | None = 0.01,
        non_local: bool = True,
        nl_inter_channels: int = 64,
        nl_variant: NLVariant = "official",
        rnn_hidden: int = 512,
        g_dim: int = 512,
        f_dim: int = 256,
        hsrm_without: HSRMLevel | None = None,
        noise_occlusion: bool = True,
        noise_size: int = 48,
        noise_keep_inside: bool = True,
        init: Literal["mean_shape", "hourglass"] = "mean_shape",
        hourglass_channels: int = 128,
        hourglass_depth: int = 4,
    ) -> None:
        super().__init__()
        self.layout = get_layout(layout)
        if self.layout.num_points != num_points:
            raise ValueError(f"SRN: num_points={num_points} but layout {self.layout.name!r} has "
                             f"{self.layout.num_points} points")
        if init not in ("mean_shape", "hourglass"):
            raise ValueError(f"SRN init: expected 'mean_shape' or 'hourglass', got {init!r}")
        self.num_points, self.crop_size, self.patch_size = num_points, crop_size, patch_size
        self.iterations, self.rnn_hidden = iterations, rnn_hidden
        self.noise_occlusion, self.noise_size, self.noise_keep_inside = noise_occlusion, noise_size, noise_keep_inside
        self.register_buffer("mean_shape", default_mean_shape(self.layout))
        self.encoder = PatchEncoder(patch_size, tuple(conv_channels), tuple(conv_kernels), conv_init_std)
        channels = self.encoder.out_shape[0]
        self.relation = NonLocalBlock(channels, nl_inter_channels, nl_variant) if non_local else None
        self.rnn = RNNCell(num_points * self.encoder.out_dim, rnn_hidden)
        self.hsrm = HSRM(srn_groups(self.layout), self.encoder.out_dim, rnn_hidden, g_dim, f_dim, hsrm_without)
        self.hourglass = HourglassInit(num_points, hourglass_channels, hourglass_depth) if init == "hourglass" else None

    def set_mean_shape(self, points: torch.Tensor) -> None:
        """The cascade's initial shape: (N, 2) crop-normalised, usually the training set's mean."""
        points = torch.as_tensor(points, dtype=torch.float32)
        if points.shape != (self.num_points, 2) or not torch.isfinite(points).all():
            raise ValueError(f"SRN.set_mean_shape: expected finite ({self.num_points}, 2), got {tuple(points.shape)}")
        self.mean_shape.copy_(points)

    def initial_shape(self, image: torch.Tensor) -> torch.Tensor:
        """L^0: the mean shape, or the hourglass' estimate."""
        if self.hourglass is not None:
            return self.hourglass(image)
        return self.mean_shape.to(image.dtype).expand(image.shape[0], -1, -1)

    def occlude(self, image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """The §3.1 noise occlusion around a random landmark of ``points`` (training only)."""
        return occlude_random_landmark(image, points.detach(), self.noise_size, self.noise_keep_inside)

    def cascade(self, image: torch.Tensor, shape: torch.Tensor,
                h_prev: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Refine ``shape`` (B, N, 2) for ``iterations`` steps -> (points_iter (B, K, N, 2), h (B, K, H)).

        ``h_prev`` None: one RNN chain across the iterations (eq. 5). ``h_prev`` (B, K, H): iteration i
        continues the chain of iteration i of the previous frame instead (eq. 13, notes §8 item 23).
        """
        b = image.shape[0]
        h = image.new_zeros(b, self.rnn_hidden)
        points, hidden = [], []
        for i in range(self.iterations):
            x = self.encoder(extract_patches(image, shape, self.patch_size))     # (B, N, C, h, w), rho of eq. 2
            h = self.rnn(x.flatten(1), h if h_prev is None else h_prev[:, i])     # eq. 5 / eq. 13, pre-NL x
            r = x if self.relation is None else self._relate(x)                   # eqs. 3-4
            shape = shape + self.hsrm(r.flatten(2), h)                            # eqs. 1, 6-7
            points.append(shape)
            hidden.append(h)
        return torch.stack(points, 1), torch.stack(hidden, 1)

    def _relate(self, x: torch.Tensor) -> torch.Tensor:
        """Non-local block over all N*h*w patch positions of a face."""
        b, n, c, h, w = x.shape
        positions = x.permute(0, 2, 1, 3, 4).reshape(b, c, n * h * w)
        return self.relation(positions).view(b, c, n, h, w).permute(0, 2, 1, 3, 4)

    def forward(self, image: torch.Tensor, points: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        init = self.initial_shape(image)
        if self.training and self.noise_occlusion:
            image = self.occlude(image, init if points is None else points)
        points_iter, _ = self.cascade(image, init)
        return {"points": points_iter[:, -1], "points_iter": points_iter, "points_init": init}


class SRNTracker(SRN):
    """SRN on clips (eq. 13): image (B, T, 3, S, S) -> points (B, T, N, 2), frame by frame.

    Each cascade iteration keeps its own RNN chain across frames; every frame starts from the initial
    shape. ``occlusion_policy`` picks the training-time occlusion of the fine-tuning stage (Table 9):
    "none", "rsf" (a noise square at a random landmark of each frame) or "hofs" (the learned HOFS policy
    from ``hofs_ckpt`` moves the square along each clip; see flmk.models.hofs). ``srn_ckpt`` loads a
    pre-trained image SRN. A null ``srn_ckpt`` (or ``hofs_ckpt`` under "hofs") stops before training unless
    ``allow_scratch`` (flmk.models.tracking.require_pretrained).
    """

    def __init__(self, occlusion_policy: Literal["none", "rsf", "hofs"] = "hofs", hofs_ckpt: str | None = None,
                 hofs_q_hidden: int = 512, srn_ckpt: str | None = None, allow_scratch: bool = False,
                 **srn_kwargs) -> None:
        if occlusion_policy not in ("none", "rsf", "hofs"):
            raise ValueError(f"SRNTracker occlusion_policy: expected 'none', 'rsf' or 'hofs', got {occlusion_policy!r}")
        from flmk.models.hofs import HOFSPolicy, require_stages  # hofs imports this module

        require_stages("model.net (SRNTracker)", srn_ckpt, hofs_ckpt, occlusion_policy == "hofs", allow_scratch)
        srn_kwargs["noise_occlusion"] = occlusion_policy == "rsf"
        super().__init__(**srn_kwargs)
        self.occlusion_policy = occlusion_policy
        if srn_ckpt:
            load_srn_weights(self, srn_ckpt)
        self.hofs_policy = None
        if occlusion_policy == "hofs":
            self.hofs_policy = HOFSPolicy(copy.deepcopy(self.encoder), self.num_points, self.patch_size,
                                          self.noise_size, hofs_q_hidden, self.noise_keep_inside)
            if hofs_ckpt:
                self.hofs_policy.load_qnet(hofs_ckpt)
            self.hofs_policy.requires_grad_(False)

    def train(self, mode: bool = True) -> SRNTracker:
        super().train(mode)
        if self.hofs_policy is not None:
            self.hofs_policy.eval()  # a frozen policy, never trained here
        return self

    def init_state(self, batch_size: int, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Zero RNN state for a new clip: (B, iterations, hidden)."""
        return torch.zeros(batch_size, self.iterations, self.rnn_hidden, device=device, dtype=dtype)

    def step(self, frame: torch.Tensor, state: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One frame (B, 3, S, S) and the previous state -> (outputs, new state); streaming inference."""
        init = self.initial_shape(frame)
        points_iter, state = self.cascade(frame, init, state)
        return {"points": points_iter[:, -1], "points_iter": points_iter, "points_init": init}, state

    def forward(self, image: torch.Tensor, points: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if image.dim() != 5:
            raise ValueError(f"SRNTracker: expected a clip (B, T, 3, S, S), got {tuple(image.shape)}")
        b, t = image.shape[:2]
        if self.training and points is not None and self.occlusion_policy == "rsf":
            image = self.occlude(image.flatten(0, 1), points.flatten(0, 1)).unflatten(0, (b, t))
        elif self.training and points is not None and self.occlusion_policy == "hofs":
            image = self.hofs_policy(image, points)
        state = self.init_state(b, image.device, image.dtype)
        frames = []
        for i in range(t):  # the recurrence over time
            out, state = self.step(image[:, i], state)
            frames.append(out)
        return {k: torch.stack([f[k] for f in frames], 1) for k in frames[0]}


def load_srn_weights(net: nn.Module, path: str | Path) -> None:
    """Load an SRN state dict from a LandmarkModule checkpoint or a bare state dict.

    A checkpoint trained with ``model.ema_decay`` gives its EMA weights (``ema.module.``), the ones its
    evaluation used; otherwise the raw weights (``net.``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SRN checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("state_dict", state)
    for prefix in ("ema.module.", "net."):
        if any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            break
    own = {k for k in net.state_dict() if not k.startswith("hofs_policy.")}
    missing = own - state.keys()
    if missing:
        raise KeyError(f"SRN checkpoint {path} lacks {len(missing)} weights, e.g. {sorted(missing)[:3]}; "
                       "was it trained with the same model.net settings?")
    net.load_state_dict({k: state[k] for k in own}, strict=False)


class SRNLoss(nn.Module):
    """Sum over the cascade iterations of the per-iteration error (eq. 8).

    ``loss_form`` "nme" (code:SRN, notes §8 item 21): batch-mean NME, point-to-point Euclidean over the
    inter-ocular distance of the layout; "l2": eq. 8's squared L2, summed over points, batch mean.
    Terms: ``iter<k>`` per iteration, ``init`` for the hourglass' initial shape (SRN+HG) scaled by
    ``init_weight``. Clips (B, T, ...) are flattened to frames.
    """

    def __init__(self, layout: str = "68", loss_form: Literal["nme", "l2"] = "nme", init_weight: float = 1.0) -> None:
        super().__init__()
        if loss_form not in ("nme", "l2"):
            raise ValueError(f"SRNLoss loss_form: expected 'nme' or 'l2', got {loss_form!r}")
        self.ocular = get_layout(layout).ocular
        self.loss_form, self.init_weight = loss_form, init_weight

    def error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(M, N, 2) vs (M, N, 2) -> scalar, batch mean of the chosen per-sample error."""
        pred, target = pred.float(), target.float()
        if self.loss_form == "l2":
            return (pred - target).pow(2).sum((1, 2)).mean()
        eta = (target[:, self.ocular[0]] - target[:, self.ocular[1]]).norm(dim=-1).clamp_min(1e-6)
        return ((pred - target).norm(dim=-1).mean(1) / eta).mean()

    def forward(self, outputs: dict, batch: dict, net: nn.Module | None = None) -> dict[str, torch.Tensor]:
        target = batch["points"]
        points_iter = outputs["points_iter"]
        if target.dim() == 4:  # clips
            target, points_iter = target.flatten(0, 1), points_iter.flatten(0, 1)
        terms = {f"iter{k}": self.error(points_iter[:, k], target) for k in range(points_iter.shape[1])}
        if self.init_weight > 0 and getattr(net, "hourglass", None) is not None:
            init = outputs["points_init"]
            terms["init"] = self.init_weight * self.error(init.flatten(0, 1) if init.dim() == 4 else init, target)
        terms["loss"] = sum(terms.values())
        return terms
