"""Wall time of a whole table at 300W scale, its rows packed onto the GPUs by hydra/launcher=gpu_pack, from
measured epochs.

    python experiments/table_walltime.py --out DIR --table odn/table4 [--per-gpu K] [--epochs 3]
        [--train-batches 40] [--size 1280] [--rows a,b] [flmk.train overrides, e.g. trainer=gpu ...]

1. Data: synthetic faces (flmk.data.synth) laid out as the 300W release (afw/, helen/{trainset,testset}/,
   lfpw/{trainset,testset}/, ibug/; at --n 3148: 3,148 training faces, of which data=300w holds 5 % out for
   validation, and 554 common + 135 challenging test faces), so the table's own data config reads them through
   data.root. Generated once under --data-dir, its images checked once (data.cache_dir beside it, as a user's
   dataset is checked before its first run), and reused by every row and table. --size 1280 (1.6 MP JPEGs):
   300W's training images are mostly HELEN's (2,000 of 3,148; ten of them in the fixtures average 2.2 MP), with
   smaller AFW and LFPW ones; synthetic and real JPEGs cost about the same to decode per pixel.
2. Measurement: every row trains exactly as a user runs the table (`python -m flmk.train -m experiment=<table>
   hydra/launcher=gpu_pack hydra.launcher.per_gpu=K <overrides>`), for --epochs epochs of at most
   --train-batches batches each, with its full validation every epoch and its full test at the end, timed by
   flmk.bench.RowTimes (per epoch: training, validation, after validation, the gap to the next epoch; the test)
   and by the
   launcher's launcher.json (the row's process from start to exit).
3. Extrapolation, per row, to its own schedule (E = trainer.max_epochs of its composed config, or max_steps
   over the batches of a full epoch when that ends it first):
       overhead + warm-up + E x (full epoch's images / steady img/s + validation + after validation)
       + (E - 1) x gap + test
   steady = the epochs after the first; "after validation" = its metrics and the checkpoints (per epoch, not per
   image); warm-up = the first epoch's excess over a steady one; overhead = the
   row's wall time outside its epochs, gaps and test (interpreter start, data setup, model build, checkpoint
   reload, teardown). The rates are those measured while K rows shared each GPU.
4. The table: the rows scheduled as gpu_pack runs them (K at a time per GPU, in job order, the next as soon as
   one ends), and the sum of the row times.

Writes <out>/table_walltime.json and <out>/table_walltime.md (a section for experiments/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

# The 300W release: training folders and the test folders of the common (helen, lfpw) and challenging (ibug) sets.
W300_TRAIN = {"afw": 337, "helen/trainset": 2000, "lfpw/trainset": 811}
W300_COMMON = {"helen/testset": 330, "lfpw/testset": 224}
W300_CHALLENGING = {"ibug": 135}
W300_N = sum(W300_TRAIN.values())  # 3,148
# Keys the measurement sets itself; the same keys on the command line only shape the extrapolated schedule.
MEASUREMENT_KEYS = ("trainer.max_epochs", "trainer.max_steps", "trainer.limit_train_batches", "hydra.sweep.dir")


# -- data --------------------------------------------------------------------------------------------------------
def w300_counts(n: int) -> dict[str, int]:
    """Faces per 300W folder for n training faces: the release's proportions (n = 3,148: its exact counts)."""
    scale = n / W300_N
    counts = {k: max(1, round(v * scale)) for k, v in {**W300_TRAIN, **W300_COMMON, **W300_CHALLENGING}.items()}
    counts["helen/trainset"] += n - sum(counts[k] for k in W300_TRAIN)
    return counts


def synthetic_300w(data_dir: Path, n: int, size: int, seed: int = 0, workers: int | None = None) -> Path:
    """Synthetic faces (``ensure_synthetic``) linked into the 300W folder layout: training faces into afw/,
    helen/trainset/, lfpw/trainset/; the common test set from the unoccluded test faces then the validation
    ones; ibug/ from the occluded test faces. Built once (``ensure``: atomic, reused while the parameters match)."""
    from flmk.data.synth import ensure_synthetic
    from flmk.data.synth.files import ensure, write_readme

    if n < 20:
        raise SystemExit(f"--n {n}: the 300W layout needs at least 20 training faces (got {n})")
    faces = ensure_synthetic(data_dir / f"synthetic-{size}px", n=n, seed=seed, size=size,
                             workers=workers or os.cpu_count() or 1)
    counts = w300_counts(n)
    params = {"kind": "300w-layout", "faces": faces.name, "n": n, "seed": seed, "size": size, "counts": counts}

    def stems(*splits: str) -> list[Path]:
        return [p.with_suffix("") for s in splits for p in sorted((faces / s).glob("*.pts"))]

    def build(tmp: Path) -> None:
        pools = {"train": stems("train"), "common": stems("test/clean", "val"), "challenging": stems("test/occluded")}
        for pool, folders in (("train", W300_TRAIN), ("common", W300_COMMON), ("challenging", W300_CHALLENGING)):
            need = sum(counts[f] for f in folders)
            if need > len(pools[pool]):
                raise RuntimeError(f"{faces} has {len(pools[pool])} faces for 300W's {pool} folders, which need {need}")
            taken = iter(pools[pool])
            for folder in folders:
                (tmp / folder).mkdir(parents=True)
                for _ in range(counts[folder]):
                    stem = next(taken)
                    for suffix in (".jpg", ".pts", ".vis"):
                        link = tmp / folder / (stem.name + suffix)
                        # relative: tmp is renamed to a sibling of the same depth, so the links stay valid
                        link.symlink_to(os.path.relpath(stem.with_suffix(suffix), link.parent))
        write_readme(tmp, f"Synthetic faces of {faces.name} ({size} px) in the 300W folder layout, for "
                          f"experiments/table_walltime.py: {counts}", params)

    return ensure(data_dir / f"300W-synthetic-{size}px", params, build)


# -- configs -----------------------------------------------------------------------------------------------------
def _compose_overrides(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.lstrip("+~").startswith("hydra")]


def compose_table(table: str, overrides: list[str], row: str | None = None):
    """conf/train.yaml with experiment=<table> (and ablation=<row>) and the user's overrides, as flmk.train
    composes it; without a row, with the Hydra node (the table's sweep)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"experiment={table}", *([f"ablation={row}"] if row else []),
                                           *_compose_overrides(overrides)], return_hydra_config=row is None)


def table_rows(table: str, overrides: list[str]) -> list[str]:
    params = compose_table(table, overrides).hydra.sweeper.params
    if "ablation" not in params:
        raise SystemExit(f"--table {table}: its experiment file sweeps no ablation rows (hydra.sweeper.params)")
    return [r.strip() for r in str(params.ablation).split(",")]


def schedule_epochs(trainer_cfg, train_batches: int) -> float:
    """Epochs a run trains: trainer.max_epochs, or fewer when trainer.max_steps ends it first."""
    max_epochs = trainer_cfg.get("max_epochs")
    max_steps = trainer_cfg.get("max_steps") or -1
    by_steps = max_steps / train_batches if max_steps > 0 else math.inf
    by_epochs = max_epochs if max_epochs is not None and max_epochs >= 0 else math.inf
    if math.isinf(by_steps) and math.isinf(by_epochs):
        raise SystemExit("trainer.max_epochs and trainer.max_steps are both unlimited: no schedule to extrapolate to")
    return min(by_steps, by_epochs)


# -- one row -----------------------------------------------------------------------------------------------------
def row_model(times: dict, wall_s: float) -> dict:
    """A row's time as a linear function of its epochs, from RowTimes' record and its process wall time."""
    from flmk.bench import steady_img_s

    epochs, full, test = times["epochs"], times["full"], times.get("test") or {"seconds": 0.0, "images": 0}
    steady = epochs[1:] or epochs
    img_s = steady_img_s([{"images": e["images"], "seconds": e["train_seconds"]} for e in steady])
    val_images = sum(e["val_images"] for e in steady)
    val_s_per_image = sum(e["val_seconds"] for e in steady) / val_images if val_images else 0.0
    post_s = sum(e["post_val_seconds"] for e in steady) / len(steady)  # validation metrics (checkpoints: in the gap)
    gaps = [b["start"] - a["end"] for a, b in zip(epochs, epochs[1:])]  # after each epoch, to the next one
    steady_gaps = gaps[1:] or gaps
    gap_s = sum(steady_gaps) / len(steady_gaps) if gaps else 0.0
    first = epochs[0]
    warmup_s = (first["seconds"] - (first["images"] / img_s + first["val_images"] * val_s_per_image + post_s)
                + (gaps[0] - gap_s if gaps else 0.0))  # the first epoch's and first gap's excess over steady ones
    test_s = test["seconds"] * full["test"] / test["images"] if test["images"] else 0.0
    return {
        "epochs_measured": len(epochs),
        "images_per_epoch_measured": sum(e["images"] for e in epochs) / len(epochs),
        "img_s": img_s,
        "full_epoch_images": full["train"],
        "full_epoch_batches": full["train_batches"],
        "train_s_per_epoch": full["train"] / img_s,
        "val_s_per_epoch": val_s_per_image * full.get("val", 0),
        "post_val_s": post_s,
        "gap_s": gap_s,
        "s_per_epoch": full["train"] / img_s + val_s_per_image * full.get("val", 0) + post_s + gap_s,
        "warmup_s": warmup_s,
        "test_s": test_s,
        "test_images": full.get("test", 0) if test["images"] else 0,
        "overhead_s": wall_s - sum(e["seconds"] for e in epochs) - sum(gaps) - test["seconds"],
        "wall_s_measured": wall_s,
    }


def row_seconds(model: dict, epochs: float) -> float:
    """The row's wall time over ``epochs`` epochs (linear in them)."""
    return (model["overhead_s"] + model["warmup_s"] + model["test_s"] - model["gap_s"]
            + epochs * model["s_per_epoch"])


# -- the table ---------------------------------------------------------------------------------------------------
def pack(durations: list[float], gpus: list[str], per_gpu: int) -> tuple[float, list[dict]]:
    """gpu_pack's schedule: jobs in order, each on the first of per_gpu x GPUs slots to come free."""
    names = gpus or ["cpu"]
    free = [(0.0, s) for s in range(per_gpu * len(names))]  # slot s -> GPU s % n, as gpu_pack queues them
    plan = []
    for d in durations:
        t, s = heapq.heappop(free)
        plan.append({"gpu": names[s % len(names)], "start_s": t, "end_s": t + d})
        heapq.heappush(free, (t + d, s))
    return max((p["end_s"] for p in plan), default=0.0), plan


def read_jobs(sweep: Path) -> list[dict]:
    """The sweep's jobs in launch order: row, seed, folder, RowTimes record, launcher.json, peak GPU memory."""
    jobs = []
    for hydra_file in sweep.glob("**/.hydra/hydra.yaml"):
        folder = hydra_file.parent.parent
        h = yaml.safe_load(hydra_file.read_text())["hydra"]
        cfg = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        for name in ("row_times.json", "launcher.json"):
            if not (folder / name).exists():
                raise SystemExit(f"{folder}: no {name}; see {folder / 'launcher.log'}")
        metrics = folder / "metrics.json"
        launcher = json.loads((folder / "launcher.json").read_text())
        jobs.append({
            "num": launcher["job"], "row": h["runtime"]["choices"].get("ablation"), "seed": cfg.get("seed"),
            "folder": str(folder.relative_to(sweep)), "times": json.loads((folder / "row_times.json").read_text()),
            "launcher": launcher,
            "peak_gpu_mem_GiB": json.loads(metrics.read_text())["meta"].get("peak_gpu_mem_GiB")
            if metrics.exists() else None,
        })
    return sorted(jobs, key=lambda j: j["num"])


def table_times(jobs: list[dict], epochs_of: dict[str, float], gpus: list[str], per_gpu: int,
                sweep_wall_s: float) -> dict:
    """Rows extrapolated and packed; the table's wall time adds the launcher's own start (the measured sweep's
    wall time outside its rows' span: composing every job's config) to the packed rows."""
    rows = []
    for job in jobs:
        model = row_model(job["times"], job["launcher"]["seconds"])
        epochs = epochs_of[job["row"]]
        seconds = row_seconds(model, epochs)
        rows.append({"row": job["row"], "seed": job["seed"], "folder": job["folder"], **model,
                     "schedule_epochs": epochs, "extrapolated_s": seconds, "extrapolated_h": seconds / 3600,
                     "peak_gpu_mem_GiB": job["peak_gpu_mem_GiB"]})
    makespan, plan = pack([r["extrapolated_s"] for r in rows], gpus, per_gpu)
    for r, p in zip(rows, plan):
        r["schedule"] = p
    measured_makespan, _ = pack([j["launcher"]["seconds"] for j in jobs], gpus, per_gpu)
    span = max(j["launcher"]["end"] for j in jobs) - min(j["launcher"]["start"] for j in jobs)
    launcher_s = sweep_wall_s - span
    wall, total = launcher_s + makespan, sum(r["extrapolated_s"] for r in rows)
    return {
        "rows": rows,
        "table": {"gpus": len(gpus), "per_gpu": per_gpu, "packed_wall_s": wall, "packed_wall_h": wall / 3600,
                  "launcher_s": launcher_s, "sum_rows_s": total, "sum_rows_h": total / 3600},
        # the schedule model checked on the measurement itself: its rows' measured walls, packed as gpu_pack does,
        # against the span gpu_pack took
        "measured_sweep": {"wall_s": sweep_wall_s, "span_s": span, "packed_from_rows_s": measured_makespan},
    }


# -- output ------------------------------------------------------------------------------------------------------
def machine() -> dict:
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip().splitlines()
    except (OSError, subprocess.CalledProcessError):
        gpus = []
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or None
    except OSError:
        commit = None
    versions = {}
    for package in ("torch", "pytorch-lightning", "timm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"gpus": gpus, "cpu_cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), **versions, "commit": commit}


def markdown(result: dict) -> str:
    m, t, data = result["measurement"], result["table"], result["data"]
    where = f"{t['gpus']} GPU(s)" if t["gpus"] else "the CPU"
    packed = f"{t['per_gpu']} per GPU" if t["gpus"] else f"{t['per_gpu']} at once"
    lines = [
        f"### {result['table_name']}: {len(result['rows'])} runs at 300W scale, {packed} on {where}",
        "",
        f"Synthetic faces in 300W's layout ({data['counts_text']}), {data['size']}-px JPEGs; each row measured for "
        f"{m['epochs']} epochs of {m['train_batches'] or 'all its'} training batches with full validation and test, "
        f"{packed} as in the table run; rates are steady state (epochs after the first), and each row is "
        f"extrapolated to its schedule as overhead + warm-up + epochs x (training + validation + checkpoints + "
        f"gap) + test. "
        f"Machine: "
        f"{', '.join(result['machine']['gpus']) or result['machine']['cpu']}, {result['machine']['cpu_cores']} CPU "
        f"cores, torch {result['machine']['torch']}.",
        "",
        "| row | seed | img/s | s/epoch | val s/epoch | ckpt + gap s/epoch | test s | overhead + warm-up s "
        "| epochs | row h | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        peak = "–" if r["peak_gpu_mem_GiB"] is None else f"{r['peak_gpu_mem_GiB']:.2f}"
        lines.append(f"| {r['row']} | {r['seed']} | {r['img_s']:.{0 if r['img_s'] >= 10 else 2}f} | "
                     f"{r['s_per_epoch']:.1f} | {r['val_s_per_epoch']:.1f} | {r['post_val_s'] + r['gap_s']:.1f} | "
                     f"{r['test_s']:.1f} | {r['overhead_s'] + r['warmup_s']:.0f} | "
                     f"{r['schedule_epochs']:g} | {r['extrapolated_h']:.2f} | {peak} |")
    lines += [
        "",
        f"**Whole table: {t['packed_wall_h']:.2f} h wall** on {where}, {packed} (the launcher's start, "
        f"{t['launcher_s']:.0f} s, included; sum of the rows: {t['sum_rows_h']:.2f} h).",
        f"Measurement: {m['wall_s']:.0f} s for the sweep; its rows ran over {result['measured_sweep']['span_s']:.0f} s "
        f"(the schedule model on their measured walls: {result['measured_sweep']['packed_from_rows_s']:.0f} s).",
        "",
        "```bash",
        result["command_text"],
        "```",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="experiments/table_walltime.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output folder (the measurement sweep goes to <out>/sweep)")
    ap.add_argument("--table", required=True, help="experiment of the table, e.g. odn/table4")
    ap.add_argument("--rows", help="comma-separated ablation rows (default: the table's own)")
    ap.add_argument("--per-gpu", type=int, help="rows at once per GPU (default: all rows in one wave; 1 on a CPU)")
    ap.add_argument("--gpus", help="comma-separated GPU indices (default: every visible GPU)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs measured per row (the first is warm-up)")
    ap.add_argument("--train-batches", type=int, default=40, help="training batches per measured epoch (0: all)")
    ap.add_argument("--n", type=int, default=W300_N, help="synthetic training faces (300W: 3148)")
    ap.add_argument("--size", type=int, default=1280, help="synthetic image side in pixels (1280: 1.6 MP)")
    ap.add_argument("--data-dir", type=Path, help="where the synthetic data is made once (default: <out>/data)")
    ap.add_argument("--workers", type=int, help="processes generating the data (default: every core)")
    ap.add_argument("overrides", nargs="*", help="flmk.train overrides for every row, e.g. trainer=gpu")
    args = ap.parse_intermixed_args(argv)
    if args.epochs < 1 or args.train_batches < 0:
        raise SystemExit(f"--epochs must be >= 1 and --train-batches >= 0, got {args.epochs} and {args.train_batches}")
    from flmk.data.images import verify_images
    from hydra_plugins.flmk_launchers.gpu_pack import visible_gpus

    out = args.out.resolve()
    sweep = out / "sweep"
    if sweep.exists():
        raise SystemExit(f"{sweep} exists: choose a new --out (a measurement never mixes with an earlier one)")
    base = compose_table(args.table, args.overrides)
    if base.data.name != "300w":
        raise SystemExit(f"--table {args.table}: its data is {base.data.name!r}; this measures tables on data=300w")
    rows = args.rows.split(",") if args.rows else table_rows(args.table, args.overrides)
    gpus = visible_gpus(args.gpus)
    per_gpu = args.per_gpu or (math.ceil(len(rows) / len(gpus)) if gpus else 1)

    start = time.monotonic()
    data_dir = (args.data_dir or out / "data").resolve()
    data = synthetic_300w(data_dir, args.n, args.size, workers=args.workers)
    # checked once here, as a user's dataset is before its first table: no row decodes every image at its start
    verify_images(sorted(data.glob("**/*.jpg")), data_dir / "cache")
    data_s = time.monotonic() - start
    user = [f"data.root={data}", f"data.cache_dir={data_dir / 'cache'}", *args.overrides]
    measure = [o for o in user if o.lstrip("+~").split("=", 1)[0] not in MEASUREMENT_KEYS]
    cmd = [sys.executable, "-m", "flmk.train", "-m", f"experiment={args.table}",
           *([f"ablation={args.rows}"] if args.rows else []), *measure,
           "hydra/launcher=gpu_pack", f"hydra.launcher.per_gpu={per_gpu}",
           *([f"hydra.launcher.gpus='{args.gpus}'"] if args.gpus else []),
           f"trainer.max_epochs={args.epochs}", "trainer.max_steps=-1",
           f"trainer.limit_train_batches={args.train_batches or 'null'}",
           "+callbacks.row_times={_target_:flmk.bench.RowTimes,out:row_times.json}", f"hydra.sweep.dir={sweep}"]
    out.mkdir(parents=True, exist_ok=True)
    print(f"measuring {len(rows)} rows of {args.table}, {per_gpu} per GPU on "
          f"{'GPUs ' + ','.join(gpus) if gpus else 'the CPU'}: log in {out / 'measure.log'}", flush=True)
    start = time.monotonic()
    with open(out / "measure.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    wall_s = time.monotonic() - start
    if rc != 0:
        raise SystemExit(f"the measurement sweep failed (exit {rc}): see {out / 'measure.log'} and each row's "
                         f"{sweep}/<job>/launcher.log")

    jobs = read_jobs(sweep)
    epochs_of = {}
    for job in jobs:
        if job["row"] not in epochs_of:
            cfg = compose_table(args.table, user, job["row"])
            epochs_of[job["row"]] = schedule_epochs(cfg.trainer, job["times"]["full"]["train_batches"])
    counts = w300_counts(args.n)
    train = sum(counts[k] for k in W300_TRAIN)
    common, challenging = sum(counts[k] for k in W300_COMMON), sum(counts[k] for k in W300_CHALLENGING)
    result = {
        "table_name": args.table,
        "machine": machine(),
        "data": {"root": str(data), "synthetic": True, "size": args.size, "n": args.n, "counts": counts,
                 "prepare_s": data_s, "checked_before_the_rows": True,
                 "counts_text": f"{train:,} training faces, {common:,} common + {challenging:,} challenging test "
                                f"faces"},
        "measurement": {"epochs": args.epochs, "train_batches": args.train_batches, "per_gpu": per_gpu,
                        "gpus": gpus, "wall_s": wall_s, "sweep": str(sweep),
                        "validation": "full, every epoch", "test": "full, once per row"},
        "command": cmd,
        "command_text": shlex.join(["python", *cmd[1:]]),
        **table_times(jobs, epochs_of, gpus, per_gpu, wall_s),
    }
    (out / "table_walltime.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (out / "table_walltime.md").write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
