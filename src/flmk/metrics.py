"""Landmark error metrics: NME (inter-ocular, inter-pupil, face box), FR@t, AUC@t, CED.

Conventions (IMPLEMENTATION_NOTES.md §1.2, DESIGN.md):

* NME of one image = mean over points of ``||pred - gt||_2`` / normaliser, both in
  original image pixels. Normalisers come from the :class:`~flmk.layouts.Layout`:
  ``io``  ``||p_a - p_b||`` for ``layout.ocular = (a, b)`` (outer eye corners on 68 points);
  ``ip``  distance between the centroids of the two ``layout.pupils`` groups;
  ``box`` ``sqrt(w * h)`` of the face box ``x1, y1, x2, y2`` (w = x2 - x1, h = y2 - y1).
* CED(x) = share of images with NME <= x, sampled on the exact grid
  ``np.arange(0, t + step / 2, step)`` (0, step, ..., t; 1001 points for t = 0.1, step = 1e-4).
* AUC@t = Simpson integral of the CED over that grid, divided by t.
* FR@t = share of images with NME > t.

Errors are fractions (0.05 = 5 %); reports multiply by 100 where papers print percent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from scipy.integrate import simpson
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from flmk.layouts import Layout, get_layout

NormaliserKind = Literal["io", "ip", "box"]
NORMALISERS: tuple[str, ...] = ("io", "ip", "box")
_NAMES = {"io": "inter-ocular", "ip": "inter-pupil", "box": "face-box"}


# --------------------------------------------------------------------------- pure functions


def _span(idx: Sequence[int]) -> str:
    idx = list(idx)
    if len(idx) > 2 and idx == list(range(idx[0], idx[-1] + 1)):
        return f"{idx[0]}–{idx[-1]}"
    return ", ".join(map(str, idx))


def _sample(b: int, ids: Tensor | Sequence | None, names: Sequence[str] | None) -> str:
    who = f"sample {int(ids[b])}" if ids is not None else f"sample at batch position {b}"
    return f"{who} ({names[b]})" if names is not None else who


def _why(kind: str, layout: Layout, box: Tensor | None, b: int, finite: bool) -> str:
    if kind == "box":
        return f"face box {[round(v, 3) for v in box[b].tolist()]} must have x2 > x1 and y2 > y1"
    a, c = layout.ocular if kind == "io" else layout.pupils
    pts = f"points {a} and {c}" if kind == "io" else f"the centroids of points {_span(a)} and {_span(c)}"
    return f"{pts} coincide" if finite else f"ground truth of {pts} is not finite"


def normaliser(
    gt: Tensor,
    layout: str | Layout,
    kind: NormaliserKind,
    box: Tensor | None = None,
    *,
    ids: Tensor | Sequence | None = None,
    names: Sequence[str] | None = None,
) -> Tensor:
    """Per-image normaliser (B,) of ground truth ``gt`` (B, N, 2).

    Raises ``ValueError`` naming the first sample (by ``ids[b]`` and ``names[b]``
    when given) whose normaliser is zero or not finite.
    """
    layout = get_layout(layout)
    if kind == "io":
        a, c = layout.ocular
        norm = torch.linalg.vector_norm(gt[:, a] - gt[:, c], dim=-1)
    elif kind == "ip":
        left, right = (gt[:, list(g)].mean(1) for g in layout.pupils)
        norm = torch.linalg.vector_norm(left - right, dim=-1)
    elif kind == "box":
        if box is None:
            raise ValueError("normaliser kind 'box' needs the face box (B, 4) x1, y1, x2, y2")
        w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
        norm = torch.where((w > 0) & (h > 0), (w * h).clamp_min(0).sqrt(), torch.zeros_like(w))
    else:
        raise ValueError(f"unknown normaliser kind {kind!r}; expected one of {NORMALISERS}")

    bad = ~(torch.isfinite(norm) & (norm > 0))
    if bad.any():
        b = int(bad.nonzero()[0])
        value = norm[b].item()
        why = _why(kind, layout, box, b, finite=np.isfinite(value))
        raise ValueError(f"{_sample(b, ids, names)}: {_NAMES[kind]} normaliser is {value:g} — {why}")
    return norm


def nme(pred: Tensor, gt: Tensor, norm: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-image NME (B,): mean point-to-point error over the points where ``mask`` (B, N) is 1, / ``norm``.

    An image with no selected point gives NaN (ignored by :func:`ced`, :func:`auc`,
    :func:`failure_rate` and the metric's means). A non-finite prediction gives an
    infinite error: a failure at every threshold. ``norm`` is assumed valid (see :func:`normaliser`).
    """
    d = torch.linalg.vector_norm(pred - gt, dim=-1).nan_to_num(nan=torch.inf)  # (B, N)
    if mask is None:
        return d.mean(-1) / norm
    m = mask > 0.5
    return torch.where(m, d, torch.zeros_like(d)).sum(-1) / m.sum(-1) / norm  # 0 / 0 -> NaN


def _errors(errors: Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    e = errors.detach().cpu().double().numpy() if isinstance(errors, Tensor) else np.asarray(errors, np.float64)
    e = e.reshape(-1)
    e = e[~np.isnan(e)]
    if e.size == 0:
        raise ValueError("no per-image errors to summarise (empty, or all NaN)")
    return e


def ced(errors: Tensor | np.ndarray | Sequence[float], t: float, step: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution on the grid ``np.arange(0, t + step / 2, step)``.

    Returns ``(thresholds, fraction)`` where ``fraction[i]`` = share of images with NME <= thresholds[i].
    NaN errors are ignored.
    """
    e = _errors(errors)
    x = np.arange(0.0, t + step / 2, step)
    return x, (e[:, None] <= x[None, :]).mean(0)


def auc(errors: Tensor | np.ndarray | Sequence[float], t: float, step: float = 1e-4) -> float:
    """AUC@t: Simpson integral of the CED over ``np.arange(0, t + step / 2, step)``, divided by ``t``."""
    x, y = ced(errors, t, step)
    return float(simpson(y, x=x) / t)


def failure_rate(errors: Tensor | np.ndarray | Sequence[float], t: float) -> float:
    """FR@t: share of images with NME > t (NaN errors are ignored)."""
    return float((_errors(errors) > t).mean())


def threshold_key(t: float) -> str:
    """``0.1 -> '0.10'``, ``0.08 -> '0.08'``, ``0.075 -> '0.075'`` (the suffix of ``fr@`` / ``auc@`` keys)."""
    return f"{t:.2f}" if abs(t * 100 - round(t * 100)) < 1e-9 else f"{t:g}"


# --------------------------------------------------------------------------- torchmetrics


class LandmarkMetrics(Metric):
    """NME (io, ip, box), FR@t, AUC@t and visible / occluded NME over a split; DDP-safe.

    Every per-image value is a ``dist_reduce_fx="cat"`` state, kept in float64.
    ``ids`` (the record index of each image in its split) lets :meth:`compute` drop
    the duplicates a ``DistributedSampler`` adds to even out ranks: the first
    occurrence of each id is kept, and images are returned sorted by id. Images
    updated without ids (id -1) are all kept, in arrival order, before the others.

    ``primary`` is the normaliser FR, AUC and the visible / occluded NME use
    (keys ``nme_<primary>_visible`` / ``nme_<primary>_occluded``).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        layout: str | Layout,
        thresholds: Sequence[float] = (0.08, 0.10),
        primary: NormaliserKind = "io",
        step: float = 1e-4,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.layout = get_layout(layout)
        if primary not in NORMALISERS:
            raise ValueError(f"LandmarkMetrics: primary={primary!r}; expected one of {NORMALISERS}")
        if primary == "box" and not self.layout.has_box_normaliser:
            raise ValueError(f"LandmarkMetrics: layout {self.layout.name} has no face-box normaliser (primary='box')")
        self.primary = primary
        self.thresholds = tuple(float(t) for t in thresholds)
        self.step = step
        for name in ("ids", "nme_io", "nme_ip", "nme_box", "nme_visible", "nme_occluded", "has_visibility"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        pred: Tensor,
        gt: Tensor,
        box: Tensor | None = None,
        visible: Tensor | None = None,
        has_visibility: Tensor | None = None,
        ids: Tensor | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        """Add a batch. ``pred``, ``gt`` (B, N, 2) and ``box`` (B, 4) in original pixels.

        ``visible`` (B, N) is 1 visible / 0 occluded; ``has_visibility`` (B,) says whether
        it is annotated (default: True where ``visible`` is given). ``ids`` (B,) long;
        ``names`` (B,) strings (e.g. image paths) are used only in error messages.
        """
        B, N = gt.shape[0], self.layout.num_points
        expected = {"pred": (B, N, 2), "gt": (B, N, 2), "box": (B, 4), "visible": (B, N), "has_visibility": (B,),
                    "ids": (B,)}
        given = {"pred": pred, "gt": gt, "box": box, "visible": visible, "has_visibility": has_visibility, "ids": ids}
        for key, x in given.items():
            if x is not None and tuple(x.shape) != expected[key]:
                raise ValueError(f"LandmarkMetrics(layout={self.layout.name}): {key} has shape {tuple(x.shape)}, "
                                 f"expected {expected[key]}")
        if self.primary == "box" and box is None:
            raise ValueError("LandmarkMetrics(primary='box'): update() needs box (B, 4)")
        pred, gt = pred.detach().double(), gt.detach().double()
        bad = ~torch.isfinite(gt).all(-1)  # (B, N)
        if bad.any():
            b = int(bad.any(-1).nonzero()[0])
            raise ValueError(f"{_sample(b, ids, names)}: ground truth of points {bad[b].nonzero()[:, 0].tolist()} "
                             "is not finite")
        box = box.detach().double() if box is not None and self.layout.has_box_normaliser else None
        kinds = NORMALISERS if box is not None else ("io", "ip")
        norms = {k: normaliser(gt, self.layout, k, box, ids=ids, names=names) for k in kinds}
        nan = torch.full((B,), torch.nan, dtype=torch.float64, device=gt.device)

        self.ids.append(torch.full((B,), -1, device=gt.device) if ids is None else ids.detach().long())
        self.nme_io.append(nme(pred, gt, norms["io"]))
        self.nme_ip.append(nme(pred, gt, norms["ip"]))
        self.nme_box.append(nme(pred, gt, norms["box"]) if box is not None else nan)

        known = torch.zeros(B, dtype=torch.bool, device=gt.device)
        if visible is not None:
            known = torch.ones_like(known) if has_visibility is None else has_visibility.bool()
        vis = (visible.detach() > 0.5) if visible is not None else torch.ones_like(gt[..., 0], dtype=torch.bool)
        for state, mask in ((self.nme_visible, vis), (self.nme_occluded, ~vis)):
            state.append(torch.where(known, nme(pred, gt, norms[self.primary], mask), nan))
        self.has_visibility.append(known)

    def per_image(self) -> dict[str, Tensor]:
        """Per-image errors after dropping duplicate ids, sorted by id (for ``errors_<split>.npy``).

        Keys: ``ids``, ``nme_io``, ``nme_ip``, ``nme_box`` (only when every update had a box),
        ``nme_<primary>_visible`` / ``nme_<primary>_occluded`` (only when some image has
        annotated visibility; NaN where it has none, or no visible / occluded point).
        """
        if isinstance(self.ids, list) and not self.ids:
            raise RuntimeError("LandmarkMetrics: per_image()/compute() called before any update()")
        ids = dim_zero_cat(self.ids)
        keep = _first_occurrences(ids)
        out = {"ids": ids[keep]}
        out.update({f"nme_{k}": dim_zero_cat(getattr(self, f"nme_{k}"))[keep] for k in ("io", "ip", "box")})
        if out["nme_box"].isnan().any():
            del out["nme_box"]
        if dim_zero_cat(self.has_visibility)[keep].any():
            for k in ("visible", "occluded"):
                out[f"nme_{self.primary}_{k}"] = dim_zero_cat(getattr(self, f"nme_{k}"))[keep]
        return out

    def compute(self) -> dict[str, Tensor]:
        """Means of the per-image NMEs, ``fr@t`` / ``auc@t`` on the primary NME, and ``count``."""
        per = self.per_image()
        primary = per[f"nme_{self.primary}"]
        out = {k: v.nanmean() for k, v in per.items() if k != "ids"}
        for t in self.thresholds:
            out[f"fr@{threshold_key(t)}"] = failure_rate(primary, t)
            out[f"auc@{threshold_key(t)}"] = auc(primary, t, self.step)
        out = {k: torch.as_tensor(v, dtype=torch.float64, device=primary.device) for k, v in out.items()}
        out["count"] = torch.tensor(len(primary), device=primary.device)
        return out


def _first_occurrences(ids: Tensor) -> Tensor:
    """Indices that keep the first occurrence of each id >= 0 and every id -1, ordered by id (stable)."""
    pos = torch.arange(len(ids), device=ids.device)
    uniq, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((len(uniq),), len(ids), device=ids.device).scatter_reduce(0, inverse, pos, "amin")
    keep = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    keep[first] = True
    keep |= ids < 0
    idx = pos[keep]
    return idx[torch.sort(ids[idx], stable=True).indices]


def jitter_terms(pred, layout: Layout | str, target=None, valid=None) -> tuple:
    """(sum, count) of per-frame-pair landmark jitter over (..., T, N, 2) tracks (numpy arrays or tensors).

    Jitter of frames t-1 -> t: the mean over points of ``||Δpred - Δtarget||`` (``||Δpred||`` without a
    target: the stability of a video with no ground truth) divided by the inter-ocular distance at t.
    ``valid`` (..., T) drops pairs with an invalid frame. The video figure is sum / count.
    """
    layout = get_layout(layout) if isinstance(layout, str) else layout
    motion = pred[..., 1:, :, :] - pred[..., :-1, :, :]
    ref = pred if target is None else target
    if target is not None:
        motion = motion - (target[..., 1:, :, :] - target[..., :-1, :, :])
    a, b = layout.ocular
    iod = ((ref[..., 1:, a, :] - ref[..., 1:, b, :]) ** 2).sum(-1) ** 0.5
    per_pair = ((motion ** 2).sum(-1) ** 0.5).mean(-1) / iod
    pair = (valid[..., 1:] & valid[..., :-1]) if valid is not None else per_pair == per_pair
    return (per_pair * pair).sum(), pair.sum()


def jitter(pred, layout: Layout | str, target=None) -> float:
    """Jitter of one video (T, N, 2): see :func:`jitter_terms`; NaN for fewer than two frames."""
    total, count = jitter_terms(pred, layout, target)
    return float(total) / float(count) if float(count) else float("nan")
