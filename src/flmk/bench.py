"""Speed and memory of a model: `python -m flmk.bench model=<m> data=<d>`.

Measures training throughput (images/s) on in-memory tensors and through the
real data path, batch-1 and batch-N inference latency, peak GPU memory and
parameter count, in fp32 and bf16 autocast, optionally with torch.compile and
channels_last. Prints a table and writes ``bench.json``. Record GPU numbers in
experiments/BENCHMARKS.md with the GPU, versions and command.
"""

from __future__ import annotations

import json
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from flmk.train import CONF_DIR, build_datamodule, build_module


def _to(batch: dict, device: torch.device, channels_last: bool) -> dict:
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    if channels_last and out["image"].dim() == 4:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


def _repeat(batch: dict, n: int) -> dict:
    """A batch of exactly ``n`` samples, tiling a smaller one."""
    b = batch["image"].shape[0]
    idx = torch.arange(n) % b
    return {k: v[idx] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == b else v for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    def __init__(self, module, device, precision: str, compiled: bool, channels_last: bool):
        self.net, self.loss, self.device = module.net, module.loss, device
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.net) if compiled else self.net
        self.optimizer = module.optimizer_factory(params=self.net.parameters())
        bf16 = precision == "bf16"
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext

    def train_step(self, batch: dict) -> None:
        self.net.train()
        with self.autocast():
            terms = self.loss(self.forward(batch["image"]), batch, self.net)
        terms["loss"].backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer(self, image: torch.Tensor) -> None:
        self.net.eval()
        with self.autocast():
            self.forward(image)


def _timed(fn, steps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def bench(cfg: DictConfig) -> dict:
    b = cfg.bench
    pl.seed_everything(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dm = build_datamodule(cfg)
    dm.batch_size = b.batch_size  # the data-path measurement trains on the same batch size
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, dm)
    module.set_mean_shape(dm.mean_shape())
    module.to(device)
    batch = _to(_repeat(next(iter(dm.train_dataloader())), b.batch_size), device, b.channels_last)
    frames = batch["image"].shape[0] * (batch["image"].shape[1] if batch["image"].dim() == 5 else 1)
    precisions = [p for p in b.precisions if device.type == "cuda" or p == "fp32"]
    results = {
        "model": cfg.model.name, "data": cfg.data.name, "crop_size": cfg.model.crop_size, "batch_size": b.batch_size,
        "params_M": sum(p.numel() for p in module.net.parameters()) / 1e6,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "runs": [],
    }
    for precision in precisions:
        for compiled in [False] + ([True] if b.compile else []):
            runner = Runner(module, device, precision, compiled, b.channels_last)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            step_s = _timed(lambda: runner.train_step(batch), b.steps, b.warmup, device)
            run = {"precision": precision, "compile": compiled, "channels_last": bool(b.channels_last),
                   "train_img_s_memory": frames / step_s}
            if device.type == "cuda":
                run["peak_mem_train_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
            for n in (1, b.batch_size):
                image = batch["image"][:n]
                run[f"latency_b{n}_ms"] = 1e3 * _timed(lambda: runner.infer(image), b.steps, b.warmup, device)
            if b.data_path:
                loader = iter(dm.train_dataloader())
                n_img, start = 0, time.perf_counter()
                for _ in range(b.steps):
                    try:
                        real = _to(next(loader), device, b.channels_last)
                    except StopIteration:
                        break
                    runner.train_step(real)
                    n_img += real["image"].shape[0] * (real["image"].shape[1] if real["image"].dim() == 5 else 1)
                _sync(device)
                run["train_img_s_data_path"] = n_img / (time.perf_counter() - start)
            results["runs"].append(run)
    out = Path(b.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    _print(results, out)
    return results


def _print(results: dict, out: Path) -> None:
    table = Table(title=f"{results['model']} on {results['device']} — {results['params_M']:.2f} M parameters, "
                        f"crop {results['crop_size']}, batch {results['batch_size']}")
    keys = [k for k in results["runs"][0] if k not in ("precision", "compile", "channels_last")]
    for col in ["precision", "compile", *keys]:
        table.add_column(col, justify="right")
    for run in results["runs"]:
        table.add_row(run["precision"], str(run["compile"]), *(f"{run[k]:.2f}" if k in run else "-" for k in keys))
    Console().print(table)
    Console().print(f"Written: {out}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="bench")
def main(cfg: DictConfig) -> None:
    torch.set_float32_matmul_precision("high")
    bench(cfg)


if __name__ == "__main__":
    main()
