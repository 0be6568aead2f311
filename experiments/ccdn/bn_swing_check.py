"""Where do CCDN's epoch-to-epoch swings of validation NME come from? (issue 15 item 4)

Trains one CCDN row of the synthetic tables (experiments/synthetic_tables.sh: 2 stacks, 128 px, RMSprop 2.5e-4,
batch 32) with a plain loop and, after every epoch, scores the validation split four ways:
``running`` (eval mode, BN running statistics: what the Lightning run logs), ``precise`` (BN statistics recomputed
on the last ``--precise`` training batches), ``ema`` (an exponential moving average of the weights, decay
``--ema``, BN buffers copied), ``ema_precise``. A curve that stays smooth where ``running`` swings names the cause:
stale BN statistics (precise) or the optimiser's step noise on the weights (ema).
Usage: python experiments/ccdn/bn_swing_check.py [--epochs 30] [--steps 0] [--val-batches 0] [--device cuda] [hydra overrides ...]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from flmk.data.device_augment import finish_batch
from flmk.models.module import TrainForward
from flmk.train import CONF_DIR, build_datamodule, build_module


def on_device(b: dict, device: str, crop_size: int) -> dict:
    """The batch on ``device``, finished as LandmarkModule.on_after_batch_transfer does (augmentation, normalisation)."""
    return finish_batch({k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}, crop_size)


def nme_io(net: torch.nn.Module, batches: list[dict]) -> float:
    """Mean inter-ocular NME (%) in crop coordinates (ocular corners 36, 45 of the 68-point layout)."""
    net.eval()
    errs = []
    with torch.no_grad():
        for b in batches:
            p, t = net(b["image"])["points"].float(), b["points"]
            errs.append((p - t).norm(dim=-1).mean(-1) / (t[:, 36] - t[:, 45]).norm(dim=-1))
    return 100 * float(torch.cat(errs).mean())


def with_precise_bn(net: torch.nn.Module, batches: list[dict]) -> torch.nn.Module:
    """A copy whose BN statistics are the plain average over ``batches`` (what model.precise_bn does in training)."""
    m = copy.deepcopy(net)
    update_bn(batches, TrainForward(m, takes_points=False))
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--precise", type=int, default=50, help="training batches for the recomputed BN statistics")
    ap.add_argument("--ema", type=float, default=0.999, help="decay of the weight EMA")
    ap.add_argument("--steps", type=int, default=0, help="training steps per epoch (0: the whole split)")
    ap.add_argument("--val-batches", type=int, default=0, help="validation batches scored (0: the whole split)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args()
    base = ["experiment=ccdn/table7_synthetic", "ablation=ccdn/t7_p4", "hydra.mode=RUN", "++model.net.num_stacks=2",
            "data.num_workers=4"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=[*base, *args.overrides])
    torch.manual_seed(cfg.seed)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg, dm)
    module.set_mean_shape(dm.mean_shape())
    net, loss_fn = module.net.to(args.device), module.loss
    opt = instantiate(cfg.model.optimizer)(net.parameters())
    sched = instantiate(cfg.model.scheduler)(opt)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True)
    val = [on_device(b, args.device, module.crop_size) for b in itertools.islice(dm.val_dataloader(), args.val_batches or None)]
    curves: dict[str, list[float]] = {"running": [], "precise": [], "ema": [], "ema_precise": []}
    for epoch in range(args.epochs):
        net.train()
        recent: list[dict] = []
        for step, b in enumerate(dm.train_dataloader()):
            if args.steps and step == args.steps:
                break
            b = on_device(b, args.device, module.crop_size)
            with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda"):
                terms = loss_fn(net(b["image"]), b, net)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()
            ema.update_parameters(net)
            recent = (recent + [b])[-args.precise:]
        sched.step()
        row = {"epoch": epoch, "running": nme_io(net, val), "precise": nme_io(with_precise_bn(net, recent), val),
               "ema": nme_io(ema.module, val), "ema_precise": nme_io(with_precise_bn(ema.module, recent), val)}
        for k in curves:
            curves[k].append(row[k])
        print(json.dumps(row), flush=True)
    for k, c in curves.items():
        t = torch.tensor(c[min(3, len(c) - 2):])  # past the mean-shape start
        print(f"{k}: mean |epoch-to-epoch change| from epoch 3 = {float((t[1:] - t[:-1]).abs().mean()):.2f} points, "
              f"last {c[-1]:.2f}")


if __name__ == "__main__":
    main()
