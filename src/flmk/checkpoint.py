"""Self-describing checkpoints: read one with errors naming the file, rebuild its module from it alone.

Every checkpoint ``flmk.train`` writes carries ``checkpoint["flmk"]`` (:func:`describe`): the
composed model config, the data config, layout, crop size and margin, input normalisation and
the flmk version. ``flmk.evaluate``, ``flmk.predict`` and ``flmk.export`` rebuild the network from
it wherever the file lies; a checkpoint written before it existed falls back to the run folder's
``.hydra/config.yaml``. A run that asks for another model, layout, crop size or network setting
than the checkpoint holds is refused with both values named (``force=true`` overrides).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

from omegaconf import DictConfig, OmegaConf

import flmk
from flmk.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from flmk.errors import FlmkUserError
from flmk.layouts import get_layout

FORMAT = 1  # version of the checkpoint["flmk"] record


class CheckpointError(FlmkUserError, ValueError):
    """A checkpoint that cannot be used: unreadable, not flmk's, or not the model this run builds."""


def _container(cfg, key: str) -> dict:
    node = cfg.get(key) if cfg is not None else None
    if node is None:
        return {}
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:  # an interpolation that only resolves inside a Hydra run (${hydra:...})
        return OmegaConf.to_container(node, resolve=False)


def describe(cfg: DictConfig) -> dict:
    """The record stored in ``checkpoint["flmk"]``: everything needed to rebuild and feed the network."""
    layout = get_layout(cfg.data.layout)
    augment = cfg.get("augment") or {}
    return {
        "format": FORMAT,
        "version": flmk.__version__,
        "model": _container(cfg, "model"),
        "data": _container(cfg, "data"),
        "layout": layout.name,
        "num_points": layout.num_points,
        "crop_size": int(cfg.model.crop_size),
        # crop side = crop_scale x the longer side of the face box (flmk.data.transforms.crop_affine)
        "crop_scale": float(augment.get("crop_scale", 1.25)),
        # the face box the model saw: the dataset's box where it gives one, else the landmarks' bounding box
        "box": "dataset box or landmark bounding box, x1 y1 x2 y2, original pixels",
        "normalise": {"mean": IMAGENET_MEAN.tolist(), "std": IMAGENET_STD.tolist(), "scale": 1 / 255},
        "row": cfg.get("row"),
        "seed": cfg.get("seed"),
    }


def summary(desc: Mapping) -> str:
    """"model=odn, 68 points, crop 224"."""
    model = desc.get("model") or {}
    return f"model={model.get('name', '?')}, {desc.get('num_points', '?')} points, crop {desc.get('crop_size', '?')}"


def read(path: str | Path) -> dict:
    """The checkpoint dict; :class:`CheckpointError` naming the file when it is missing, broken or not flmk's."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path}: not a readable PyTorch checkpoint (truncated or another kind of "
                              f"file?): {reason}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        what = f"keys {sorted(ckpt)[:5]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"checkpoint {path}: not an flmk checkpoint (no 'state_dict'; it holds {what})")
    return ckpt


def _from_run_folder(path: Path) -> dict | None:
    for parent in path.resolve().parents:
        cfg_file = parent / ".hydra" / "config.yaml"
        if cfg_file.exists():
            return describe(OmegaConf.load(cfg_file))
    return None


def description(ckpt: dict, path: str | Path) -> dict:
    """The checkpoint's own record, else one rebuilt from its run folder (checkpoints older than the record)."""
    desc = ckpt.get("flmk") or _from_run_folder(Path(path))
    if desc is None:
        raise CheckpointError(
            f"checkpoint {path}: carries no flmk config (written before checkpoints described themselves) and no "
            ".hydra/config.yaml lies in a parent folder; keep it in its run folder or pass model=<name> and its options")
    return desc


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, Mapping):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def weight_source(key: str) -> bool:
    """Net keys that say where starting weights come from (ImageNet, a file, another run), not what is built."""
    return key in ("pretrained", "pretrained_path", "allow_scratch") or key.endswith("_ckpt")


def conflicts(desc: Mapping, cfg: DictConfig) -> list[tuple[str, object, object]]:
    """(key, checkpoint value, this run's value) for every model / layout / crop / net key the run changes."""
    found = []
    model = _container(cfg, "model")
    if model:
        for key in ("name", "crop_size"):
            if key in model and model[key] != desc["model"].get(key):
                found.append((f"model.{key}", desc["model"].get(key), model[key]))
        ours, theirs = _flat(model.get("net") or {}), _flat(desc["model"].get("net") or {})
        found += [(f"model.net.{k}", theirs[k], v) for k, v in ours.items()
                  if k in theirs and theirs[k] != v and not weight_source(k.rpartition(".")[2])]
    layout = (cfg.get("data") or {}).get("layout")
    if layout is not None and str(layout) != desc["layout"]:
        found.append(("data.layout", desc["layout"], str(layout)))
    return found


def check_compatible(desc: Mapping, cfg: DictConfig, path: str | Path, force: bool = False) -> None:
    """Refuse a run whose model, layout, crop size or net keys differ from the checkpoint's (unless ``force``)."""
    found = conflicts(desc, cfg)
    if not found or force:
        return
    run = {"model": _container(cfg, "model") or desc["model"], "crop_size": (cfg.get("model") or {}).get(
        "crop_size", desc["crop_size"]), "num_points": get_layout((cfg.get("data") or {}).get(
            "layout", desc["layout"])).num_points}
    details = "; ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, a, b in found[:6])
    more = f" (+{len(found) - 6} more)" if len(found) > 6 else ""
    raise CheckpointError(
        f"checkpoint {path}: trained as {summary(desc)}; this run builds {summary(run)} ({details}{more}). "
        "Leave model/layout options out (the checkpoint describes its model) or pass force=true.")


def model_config(desc: Mapping, cfg: DictConfig | None = None) -> DictConfig:
    """The checkpoint's model config with this run's model keys merged on top (only with force=true do they differ)."""
    model = OmegaConf.create(desc["model"])
    if cfg is not None and cfg.get("model") is not None:
        model = OmegaConf.merge(model, OmegaConf.create(_container(cfg, "model")))
    net = model.get("net") or {}
    for key in list(net):  # weights come from the checkpoint: never load pretrained or detector files again
        if weight_source(key):
            net[key] = {"pretrained": False, "allow_scratch": True}.get(key)
    return model


def build(desc: Mapping, model: DictConfig | None = None, test_names: list[str] | None = None,
          test_eval_layouts: dict | None = None, primary_nme: str | None = None):
    """A LandmarkModule (or the module the model config names) as described, without weights."""
    from flmk.train import build_module

    data = desc.get("data") or {}
    cfg = OmegaConf.create({
        "model": model if model is not None else model_config(desc),
        "data": {"layout": desc["layout"], "num_points": desc["num_points"],
                 "primary_nme": primary_nme or data.get("primary_nme", "nme_io")},
    })
    dm = SimpleNamespace(test_names=list(test_names or []), test_eval_layouts=dict(test_eval_layouts or {}))
    return build_module(cfg, dm)


def load_weights(module, ckpt: dict, path: str | Path, desc: Mapping) -> None:
    """Strict state-dict load; a mismatch names the file, what it holds and what was built."""
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        built = f"model={getattr(module.hparams, 'name', None) or type(module.net).__name__}"
        raise CheckpointError(f"checkpoint {path}: its weights (trained as {summary(desc)}) do not fit the network "
                              f"built here ({built}): {first[:300]}") from None


def load_module(path: str | Path):
    """(module in eval mode on CPU, description) from a checkpoint file alone."""
    ckpt = read(path)
    desc = description(ckpt, path)
    module = build(desc)
    load_weights(module, ckpt, path, desc)
    module.flmk_config = desc
    return module.eval(), desc
