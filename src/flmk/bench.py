"""Speed and memory of a model: `python -m flmk.bench model=<m> data=<d> [bench.mode=e2e]`.

``bench.mode=parts`` (default) measures training throughput (images/s) on
in-memory tensors and through the real data path, batch-1 and batch-N
inference latency, peak GPU memory and parameter count, in fp32 and bf16
autocast, optionally with torch.compile (``bench.compile_mode``, e.g.
reduce-overhead: CUDA graphs) and channels_last. With ``bench.latency=true``
it adds ``"latency"``: batch-1 and batch-N latency in fp32 of the bare network
eager and under ``torch.compile(mode="reduce-overhead")``, and of flmk's own
inference path (:class:`flmk.landmarker.TorchNet`: crops and affines from the
host, network, decoder, inverse affine, points back on the host) eager and
compiled (:class:`flmk.landmarker.CompiledPoints`), with the ratio of the
compiled path to the compiled bare network (issue 18's goal: <= 1.25), and
the compiled path on inputs already on the device (no host copies).

``bench.mode=e2e`` measures what users get: ``flmk.train`` itself (Trainer,
data module, logging, checkpointing) for ``bench.epochs`` epochs, timed per
training epoch by :class:`EpochThroughput`, against a plain PyTorch loop of
the same network, loss, optimiser, batch and precision on batches preloaded on
the device, and against the training data loader alone (``loader_img_s``:
workers, transfer and the batch finished on the device, no network: the most
``flmk.train`` can reach); with ``bench.ddp=true`` also ``flmk.train
trainer=ddp`` on every visible GPU. Prints a table and writes ``bench.json``.
Record GPU numbers in experiments/BENCHMARKS.md with the GPU, versions and
command.
"""

from __future__ import annotations

import itertools
import json
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from flmk.compiled import compile_fn
from flmk.data.device_augment import finish_batch
from flmk.data.transforms import to_chw_uint8, to_uint8_image
from flmk.predict import cpus
from flmk.train import CONF_DIR, build_datamodule, build_module


def _to(batch: dict, device: torch.device, channels_last: bool, crop_size: int) -> dict:
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    out = finish_batch(out, crop_size)
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


def compiled_net(net, mode: str, backend: str, cache: dict | None = None):
    """``torch.compile(net)`` with static shapes, one per (mode, backend) in ``cache``: runs of one benchmark
    share its graphs (dynamo keeps them per compiled object) instead of tracing the network again."""
    cache = {} if cache is None else cache
    if (mode, backend) not in cache:
        cache[mode, backend] = compile_fn(net, mode, backend, "bench.compile_mode")
    return cache[mode, backend]


class Runner:
    def __init__(self, module, device, precision: str, compiled: bool, channels_last: bool, mode: str = "default",
                 backend: str = "inductor", cache: dict | None = None):
        self.net, self.loss, self.device = module.net, module.loss, device
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.forward = compiled_net(self.net, mode, backend, cache) if compiled else self.net
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


def _batch_images(batch: dict) -> int:
    """Images in a batch (frames for clips)."""
    image = batch["image"]
    return image.shape[0] * (image.shape[1] if image.dim() == 5 else 1)


def _latency_ms(fn, steps: int, warmup: int, device) -> float:
    """Median milliseconds of one call with the device synchronised after it: what a caller waiting for the
    result sees (launches included). Warm-up calls compile and record CUDA graphs first."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


LATENCY_GOAL = 1.25  # issue 18: flmk's compiled inference path within 1.25x of the bare network's CUDA graphs
LATENCY_MODE = "reduce-overhead"


def latency(module, batch: dict, b: DictConfig, device: torch.device, cache: dict | None = None) -> dict:
    """Batch-1 and batch-N fp32 latency: bare network eager and compiled (``net_*``), flmk's path (``flmk_*``)."""
    from flmk.landmarker import TorchNet

    compiles = device.type == "cuda" or b.compile_backend != "inductor"  # on CPU inductor's path stays eager
    desc = {"crop_size": module.crop_size}
    flmk_eager = TorchNet(module, desc, str(device), precision="fp32")
    flmk_compiled = TorchNet(module, desc, str(device), precision="fp32", compile=LATENCY_MODE,
                             max_batch=b.batch_size, compile_backend=b.compile_backend)
    net = module.net.eval()
    bare = compiled_net(net, LATENCY_MODE, b.compile_backend, cache) if compiles else net
    warmup = max(b.warmup, 3)  # compile, CUDA-graph warm-up, record
    sizes = list(dict.fromkeys((1, b.batch_size)))
    out = {"precision": "fp32", "compile_mode": LATENCY_MODE, "compiled": compiles, "goal_ratio": LATENCY_GOAL,
           "batch_sizes": sizes}
    for n in sizes:
        image = batch["image"][:n].float()
        # flmk's path takes uint8 crops, as Landmarker.crop makes them (these: the batch's crops back in bytes)
        x = np.stack([to_chw_uint8(to_uint8_image(i)) for i in image.cpu().numpy()])
        a = batch["affine"][:n].float().cpu().numpy()
        with torch.no_grad():  # as Runner.infer: the graphs of a compiled run serve here too
            row = {"net_eager_ms": _latency_ms(lambda: net(image), b.steps, b.warmup, device),
                   "net_compiled_ms": _latency_ms(lambda: bare(image), b.steps, warmup, device)}
        row["flmk_eager_ms"] = _latency_ms(lambda: flmk_eager(x, a), b.steps, b.warmup, device)
        row["flmk_compiled_ms"] = _latency_ms(lambda: flmk_compiled(x, a), b.steps, warmup, device)
        if flmk_compiled.compiled is not None:  # the same graph on inputs already on the device: no copies
            affine, x_dev = batch["affine"][:n].float(), torch.from_numpy(x).to(device)
            with torch.inference_mode():
                row["flmk_compiled_on_device_ms"] = _latency_ms(lambda: flmk_compiled.compiled(x_dev, affine),
                                                                b.steps, warmup, device)
        row["ratio"] = row["flmk_compiled_ms"] / row["net_compiled_ms"]
        row["meets_goal"] = row["ratio"] <= LATENCY_GOAL
        out[f"b{n}"] = row
    return out


class EpochThroughput(pl.Callback):
    """Training images per second of every epoch (all ranks' images on rank 0's clock), written as JSON."""

    def __init__(self, out: str):
        self.out, self.epochs, self.images, self.start = Path(out), [], 0, 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self.images, self.start = 0, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += _batch_images(batch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self.epochs.append({"epoch": trainer.current_epoch, "images": self.images * trainer.world_size,
                            "seconds": time.perf_counter() - self.start})

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps({"world_size": trainer.world_size, "epochs": self.epochs}, indent=2))


def _loaders(loaders) -> list:
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]


def _full_images(loader) -> int:
    """Images one full pass of a loader yields (its last partial batch dropped if it drops it)."""
    return len(loader) * loader.batch_size if loader.drop_last else len(loader.dataset)


class RowTimes(EpochThroughput):
    """Where one run's time goes, for experiments/table_walltime.py: EpochThroughput's training epochs (whose
    ``seconds`` include the validation inside them) split into training (``train_seconds``), validation
    (``val_seconds``, ``val_images``) and what follows it before the epoch ends (``post_val_seconds``: the
    validation metrics, a cost per epoch rather than per image), with ``start`` and ``end`` placing the epoch in
    time (the gaps between epochs show: ModelCheckpoint, whose hook runs after this one, writes there); the test;
    and the images (and training batches) a full pass of each loader yields (what the run would see without
    ``trainer.limit_*_batches``). A relative ``out`` lands in the run folder. Written after fitting and again after
    testing."""

    def __init__(self, out: str = "row_times.json"):
        super().__init__(out)
        self.val = {"seconds": 0.0, "images": 0, "end": None}
        self.test = {"seconds": 0.0, "images": 0}
        self.full: dict[str, int] = {}
        self.stage_start = 0.0
        self.t0 = time.perf_counter()  # epochs' start and end: seconds after this callback was made

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not self.out.is_absolute():
            self.out = Path(trainer.default_root_dir) / self.out

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.val = {"seconds": 0.0, "images": 0, "end": None}
        self.full["train"] = _full_images(trainer.train_dataloader)
        self.full["train_batches"] = len(trainer.train_dataloader)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            _sync(pl_module.device)
            self.stage_start = time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.val["images"] += _batch_images(batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            _sync(pl_module.device)
            self.val["end"] = time.perf_counter()
            self.val["seconds"] += self.val["end"] - self.stage_start
            self.full["val"] = sum(_full_images(d) for d in _loaders(trainer.val_dataloaders))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        epoch, start = self.epochs[-1], self.start - self.t0
        post = self.start + epoch["seconds"] - self.val["end"] if self.val["end"] is not None else 0.0
        epoch.update(val_seconds=self.val["seconds"], val_images=self.val["images"], post_val_seconds=post,
                     train_seconds=epoch["seconds"] - self.val["seconds"] - post, start=start,
                     end=start + epoch["seconds"])

    def on_test_start(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self.test, self.stage_start = {"seconds": 0.0, "images": 0}, time.perf_counter()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.test["images"] += _batch_images(batch)

    def on_test_end(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self.test["seconds"] = time.perf_counter() - self.stage_start
        self.full["test"] = sum(_full_images(d) for d in _loaders(trainer.test_dataloaders))
        self.write(trainer)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.write(trainer)

    def write(self, trainer) -> None:
        if trainer.is_global_zero:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps({"world_size": trainer.world_size, "epochs": self.epochs,
                                            "test": self.test, "full": self.full}, indent=2))


def steady_img_s(epochs: list[dict]) -> float:
    """Images/s over the epochs after the first (start-up, cache filling and compilation land in epoch 0)."""
    steady = epochs[1:] or epochs
    return sum(e["images"] for e in steady) / sum(e["seconds"] for e in steady)


def train_img_s(overrides: list[str], run_dir: Path, epochs: int, *extra: str) -> dict:
    """Run `flmk.train` as a user would, for `epochs` epochs without testing, and read where its epochs' time went
    (RowTimes): whole epochs (``img_s``), their training part alone (``train_only_img_s``), the fixed costs inside
    an epoch (``val_s``: validation; ``post_val_s``: what follows it, the validation metrics), the time between one
    epoch's end and the next one's start (``gap_s``: ModelCheckpoint writes last/best there, then the loaders turn
    to the next epoch), and the rate with those gaps counted (``wall_img_s``), steady state."""
    log_path = run_dir / "throughput.json"
    cmd = [sys.executable, "-m", "flmk.train", *overrides, f"trainer.max_epochs={epochs}", "test=false",
           f"+callbacks.throughput={{_target_:flmk.bench.RowTimes,out:'{log_path}'}}",
           f"hydra.run.dir={run_dir}", *extra]
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "bench_train.log", "w") as out:
        if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
            raise RuntimeError(f"flmk.train failed during the e2e benchmark; its log: {run_dir / 'bench_train.log'}")
    done = json.loads(log_path.read_text())["epochs"]
    steady = done[1:] or done
    train_s = sum(e["train_seconds"] for e in steady)
    gaps = [b["start"] - a["end"] for a, b in zip(done, done[1:])]
    gap_s = sum(gaps) / len(gaps) if gaps else float("nan")
    images = sum(e["images"] for e in steady)
    return {"img_s": steady_img_s(done), "epochs": len(done),
            "train_only_img_s": images / train_s if train_s > 0 else float("nan"),
            "val_s": sum(e["val_seconds"] for e in steady) / len(steady),
            "post_val_s": sum(e["post_val_seconds"] for e in steady) / len(steady),
            "gap_s": gap_s, "wall_img_s": images / (sum(e["seconds"] for e in steady) + gap_s * len(steady))}


def fit_datamodule(cfg: DictConfig, device: torch.device):
    """The data module flmk.train builds, set up for fitting on ``device``; ``data.augment_on=auto`` resolved as
    the Trainer would resolve it (on the device when it is a GPU), since here no Trainer is attached."""
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    if dm.augment_on == "auto":
        dm.augment_on = "device" if device.type == "cuda" else "workers"
    return dm


def plain_img_s(cfg: DictConfig, device: torch.device) -> float:
    """The same network, loss, optimiser, batch and precision in a bare loop on batches already on the device."""
    b = cfg.bench
    dm = fit_datamodule(cfg, device)
    module = build_module(cfg, dm)
    module.set_mean_shape(dm.mean_shape())
    module.to(device)
    batches = [_to(x, device, b.channels_last, module.crop_size)
               for x in itertools.islice(dm.train_dataloader(), b.plain_batches)]
    precision = "bf16" if "bf16" in str(cfg.trainer.precision) and device.type == "cuda" else "fp32"
    runner = Runner(module, device, precision, compiled=bool(cfg.model.get("compile", False)),  # as flmk.train
                    channels_last=b.channels_last, mode=cfg.model.get("compile_mode", "default"),
                    backend=cfg.model.get("compile_backend", "inductor"))
    cycle = itertools.cycle(batches)
    step_s = _timed(lambda: runner.train_step(next(cycle)), b.steps, b.warmup, device)
    return batches[0]["image"].shape[0] / step_s


def loader_img_s(cfg: DictConfig, device: torch.device) -> float:
    """The training loader alone, with no network: its workers' per-sample work, collation, pinning, the copy to
    the device and the batch finished there as LandmarkModule.on_after_batch_transfer finishes it (device
    augmentation, normalisation). Images/s over ``bench.loader_epochs`` epochs (each cut after
    ``bench.loader_batches`` batches when that is > 0), the first left out when there are several."""
    b = cfg.bench
    loader = fit_datamodule(cfg, device).train_dataloader()
    epochs = []
    for epoch in range(b.loader_epochs):
        loader.sampler.set_epoch(epoch)  # as Lightning does at every epoch start
        images, start = 0, time.perf_counter()
        for batch in itertools.islice(loader, b.loader_batches or None):
            images += _batch_images(_to(batch, device, b.channels_last, cfg.model.crop_size))
        _sync(device)
        epochs.append({"images": images, "seconds": time.perf_counter() - start})
    return steady_img_s(epochs)


def user_overrides() -> list[str]:
    """This benchmark's command-line overrides, less its own `bench.*` keys: what `flmk.train` is given."""
    return [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith("bench.")]


def bench_e2e(cfg: DictConfig) -> dict:
    b, out = cfg.bench, Path(cfg.paths.output_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = user_overrides()
    flmk_run = train_img_s(overrides, out / "e2e_flmk", b.epochs)
    plain = plain_img_s(cfg, device)
    loader = loader_img_s(cfg, device)
    results = {
        "model": cfg.model.name, "data": cfg.data.name, "crop_size": cfg.model.crop_size,
        "batch_size": cfg.data.batch_size, "precision": str(cfg.trainer.precision), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "num_workers": cfg.data.num_workers, "cpus": cpus(),
        "e2e": {"flmk_img_s": flmk_run["img_s"], "plain_img_s": plain, "ratio": flmk_run["img_s"] / plain,
                "epochs": flmk_run["epochs"],
                # where an epoch's time goes: its training part alone against the plain loop, its fixed costs, and
                # the gap to the next epoch (checkpoints); the wall rate counts the gaps too
                "flmk_train_only_img_s": flmk_run["train_only_img_s"],
                "train_only_ratio": flmk_run["train_only_img_s"] / plain,
                "epoch_val_s": flmk_run["val_s"], "epoch_metrics_s": flmk_run["post_val_s"],
                "epoch_gap_s": flmk_run["gap_s"], "flmk_wall_img_s": flmk_run["wall_img_s"],
                "wall_ratio": flmk_run["wall_img_s"] / plain,
                # the training loader alone (workers, transfer, finishing on the device): flmk.train's ceiling
                "loader_img_s": loader, "loader_ratio": loader / plain},
    }
    gpus = torch.cuda.device_count()
    if b.ddp and gpus > 1:
        ddp_run = train_img_s(overrides, out / "e2e_ddp", b.epochs, "trainer=ddp")
        results["ddp"] = {"gpus": gpus, "img_s_1": flmk_run["img_s"], "img_s_n": ddp_run["img_s"],
                          "scaling": ddp_run["img_s"] / flmk_run["img_s"],
                          "train_only_scaling": ddp_run["train_only_img_s"] / flmk_run["train_only_img_s"]}
    elif b.ddp:
        results["ddp"] = {"gpus": gpus, "skipped": "bench.ddp=true needs several visible GPUs"}
    return results


def bench(cfg: DictConfig) -> dict:
    b = cfg.bench
    if b.mode == "e2e":
        results = bench_e2e(cfg)
        _write(results, Path(b.out))
        return results
    if b.mode != "parts":
        raise ValueError(f"bench.mode must be 'parts' or 'e2e', got {b.mode!r}")
    pl.seed_everything(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dm = build_datamodule(cfg)
    dm.batch_size = b.batch_size  # the data-path measurement trains on the same batch size
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, dm)
    module.set_mean_shape(dm.mean_shape())
    module.to(device)
    batch = _to(_repeat(next(iter(dm.train_dataloader())), b.batch_size), device, b.channels_last, module.crop_size)
    frames = _batch_images(batch)
    precisions = [p for p in b.precisions if device.type == "cuda" or p == "fp32"]
    results = {
        "model": cfg.model.name, "data": cfg.data.name, "crop_size": cfg.model.crop_size, "batch_size": b.batch_size,
        "params_M": sum(p.numel() for p in module.net.parameters()) / 1e6,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "runs": [],
    }
    cache = {}  # compiled forwards of module.net by (mode, backend), shared by the runs and the latency section
    for precision in precisions:
        for compiled in [False] + ([True] if b.compile else []):
            runner = Runner(module, device, precision, compiled, b.channels_last, b.compile_mode, b.compile_backend,
                            cache)
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
                        real = _to(next(loader), device, b.channels_last, module.crop_size)
                    except StopIteration:
                        break
                    runner.train_step(real)
                    n_img += real["image"].shape[0] * (real["image"].shape[1] if real["image"].dim() == 5 else 1)
                _sync(device)
                run["train_img_s_data_path"] = n_img / (time.perf_counter() - start)
            results["runs"].append(run)
    if b.latency:
        results["latency"] = latency(module, batch, b, device, cache)
    _write(results, Path(b.out))
    return results


def _write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    _print(results, out)


def _print(results: dict, out: Path) -> None:
    if "e2e" in results:
        table = Table(title=f"{results['model']} end to end on {results['device']}, batch {results['batch_size']}, "
                            f"{results['precision']}, {results['num_workers']} workers on {results['cpus']} CPUs")
        for col in ("what", "img/s", "ratio"):
            table.add_column(col, justify="right")
        e = results["e2e"]
        table.add_row(f"flmk.train ({e['epochs']} epochs)", f"{e['flmk_img_s']:.1f}", f"{e['ratio']:.2f}")
        table.add_row(f"  its training part alone (per epoch: validation {e['epoch_val_s']:.2f} s, metrics "
                      f"{e['epoch_metrics_s']:.2f} s)", f"{e['flmk_train_only_img_s']:.1f}", f"{e['train_only_ratio']:.2f}")
        table.add_row(f"  with the gaps between epochs ({e['epoch_gap_s']:.2f} s each: checkpoints, next epoch's start)",
                      f"{e['flmk_wall_img_s']:.1f}", f"{e['wall_ratio']:.2f}")
        table.add_row("data loader alone (workers, transfer, device finishing)", f"{e['loader_img_s']:.1f}",
                      f"{e['loader_ratio']:.2f}")
        table.add_row("plain PyTorch loop", f"{e['plain_img_s']:.1f}", "1.00")
        if "scaling" in results.get("ddp", {}):
            d = results["ddp"]
            table.add_row(f"flmk.train trainer=ddp, {d['gpus']} GPUs", f"{d['img_s_n']:.1f}", f"{d['scaling']:.2f} x 1 GPU")
        Console().print(table)
        Console().print(f"Written: {out}")
        return
    table = Table(title=f"{results['model']} on {results['device']} — {results['params_M']:.2f} M parameters, "
                        f"crop {results['crop_size']}, batch {results['batch_size']}")
    keys = [k for k in results["runs"][0] if k not in ("precision", "compile", "channels_last")]
    for col in ["precision", "compile", *keys]:
        table.add_column(col, justify="right")
    for run in results["runs"]:
        table.add_row(run["precision"], str(run["compile"]), *(f"{run[k]:.2f}" if k in run else "-" for k in keys))
    Console().print(table)
    if "latency" in results:
        lat = results["latency"]
        table = Table(title=f"{results['model']} latency (ms, {lat['precision']}, median; compiled = torch.compile "
                            f"mode {lat['compile_mode']}{'' if lat['compiled'] else ', eager here'})")
        times = ("net_eager_ms", "net_compiled_ms", "flmk_eager_ms", "flmk_compiled_ms", "flmk_compiled_on_device_ms")
        for col in ("batch", "net eager", "net compiled", "flmk eager", "flmk compiled", "flmk compiled, inputs on device",
                    "flmk compiled / net compiled", f"<= {lat['goal_ratio']}"):
            table.add_column(col, justify="right")
        for n in lat["batch_sizes"]:
            r = lat[f"b{n}"]
            table.add_row(str(n), *(f"{r[k]:.3f}" if k in r else "-" for k in times), f"{r['ratio']:.2f}",
                          "yes" if r["meets_goal"] else "no")
        Console().print(table)
    Console().print(f"Written: {out}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="bench")
def main(cfg: DictConfig) -> None:
    torch.set_float32_matmul_precision("high")
    # one graph per (mode, precision, batch size) of the same forward: more than dynamo's default 8 in one run
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    bench(cfg)


if __name__ == "__main__":
    main()
