"""experiments/table_walltime.py: a table's wall time from measured epochs (the 300W-layout data, the per-row
model, gpu_pack's schedule), flmk.bench.RowTimes through flmk.train, and (slow) a two-row table on the CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_train
from test_gpu_pack import sweep
from flmk.data.sources.w300 import W300Source
from flmk.train import train

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("table_walltime", ROOT / "experiments" / "table_walltime.py")
tw = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tw)


def record(epochs: list[tuple], full: dict, test: tuple[float, int]) -> dict:
    """A RowTimes record from (images, train s, val images, val s, start[, after-validation s]) per epoch."""
    out = []
    for i, t, vi, v, s, *post in epochs:
        post = post[0] if post else 0.0
        out.append({"images": i, "train_seconds": t, "val_images": vi, "val_seconds": v, "post_val_seconds": post,
                    "seconds": t + v + post, "start": s, "end": s + t + v + post})
    return {"epochs": out, "full": full, "test": {"seconds": test[0], "images": test[1]}}


def test_w300_counts_are_the_release_at_its_size_and_scale_down():
    assert tw.w300_counts(3148) == {"afw": 337, "helen/trainset": 2000, "lfpw/trainset": 811, "helen/testset": 330,
                                    "lfpw/testset": 224, "ibug": 135}
    small = tw.w300_counts(40)
    assert sum(small[k] for k in tw.W300_TRAIN) == 40 and min(small.values()) >= 1


def test_synthetic_faces_read_as_300w_and_are_made_once(tmp_path):
    root = tw.synthetic_300w(tmp_path, n=20, size=48, workers=1)
    counts = tw.w300_counts(20)
    src = W300Source(root)
    assert len(src.read("train")) == 20
    assert len(src.read("common")) == counts["helen/testset"] + counts["lfpw/testset"]
    assert len(src.read("challenging")) == counts["ibug"]
    assert all(r.visible is not None and not r.visible.all() for r in src.read("challenging"))  # occluded faces
    stamp = (root / "README.txt").stat().st_mtime_ns
    assert tw.synthetic_300w(tmp_path, n=20, size=48, workers=1) == root
    assert (root / "README.txt").stat().st_mtime_ns == stamp  # reused, not rebuilt
    with pytest.raises(SystemExit, match="at least 20"):
        tw.synthetic_300w(tmp_path, n=10, size=48)


def test_row_model_reproduces_a_measured_run_and_is_linear_in_epochs():
    # 3 full epochs of 100 images: 10 s warm-up epoch, then 5 s + 1 s validation of 20 images; 0.5 s gaps
    # (2 s after the first epoch); a 4 s test of 50 images; the process ran 60 s.
    times = record([(100, 10.0, 20, 2.0, 0.0), (100, 5.0, 20, 1.0, 14.0), (100, 5.0, 20, 1.0, 20.5)],
                   {"train": 100, "train_batches": 10, "val": 20, "test": 50}, (4.0, 50))
    model = tw.row_model(times, wall_s=60.0)
    assert model["img_s"] == pytest.approx(20.0)
    assert model["s_per_epoch"] == pytest.approx(5.0 + 1.0 + 0.5)
    assert model["warmup_s"] == pytest.approx((12.0 - 6.0) + (2.0 - 0.5))
    assert model["overhead_s"] == pytest.approx(60.0 - 24.0 - 2.5 - 4.0)
    assert tw.row_seconds(model, 3) == pytest.approx(60.0)  # the measured epochs give back the measured wall
    e10, e20, e30 = (tw.row_seconds(model, e) for e in (10, 20, 30))
    assert e20 - e10 == pytest.approx(e30 - e20) == pytest.approx(10 * model["s_per_epoch"])


def test_row_model_scales_limited_epochs_to_full_ones():
    # 2 epochs of 40 of 300 images at 20 img/s; validation and test measured on half their images; checkpoints
    # 0.5 s an epoch, whatever its length
    times = record([(40, 4.0, 10, 1.0, 0.0, 0.7), (40, 2.0, 10, 0.5, 5.7, 0.5)],
                   {"train": 300, "train_batches": 30, "val": 20, "test": 100}, (3.0, 50))
    model = tw.row_model(times, wall_s=30.0)
    assert model["train_s_per_epoch"] == pytest.approx(300 / 20.0)
    assert model["val_s_per_epoch"] == pytest.approx(1.0)
    assert model["post_val_s"] == pytest.approx(0.5)  # not scaled by 300 / 40
    assert model["test_s"] == pytest.approx(6.0)
    assert model["s_per_epoch"] == pytest.approx(15.0 + 1.0 + 0.5 + 0.0)  # one gap: steady by definition
    assert model["warmup_s"] == pytest.approx(5.7 - (2.0 + 0.5 + 0.5))
    assert tw.row_seconds(model, 60) - tw.row_seconds(model, 30) == pytest.approx(30 * 16.5)


def test_gpu_pack_records_each_jobs_time(tmp_path):
    sweep(tmp_path, "a,fail", "hydra.launcher.per_gpu=2")  # the app sleeps 1 s; "fail" exits with 3
    jobs = [json.loads((tmp_path / "sweep" / str(i) / "launcher.json").read_text()) for i in range(2)]
    assert [(j["job"], j["returncode"]) for j in jobs] == [(0, 0), (1, 3)] and all("gpu" in j for j in jobs)
    for j in jobs:
        assert j["seconds"] >= 1.0 and j["end"] - j["start"] == pytest.approx(j["seconds"], abs=0.05)


def test_pack_follows_gpu_packs_order():
    wall, plan = tw.pack([3.0, 1.0, 1.0, 1.0], ["0"], per_gpu=2)
    assert wall == 3.0 and [p["start_s"] for p in plan] == [0.0, 0.0, 1.0, 2.0]
    wall, plan = tw.pack([1.0, 1.0, 1.0, 3.0], ["0"], per_gpu=2)  # the long row last: it waits for a slot
    assert wall == 4.0
    wall, plan = tw.pack([2.0] * 6, ["0", "1"], per_gpu=3)
    assert wall == 2.0 and [p["gpu"] for p in plan] == ["0", "1"] * 3
    wall, _ = tw.pack([2.0] * 7, ["0", "1"], per_gpu=3)
    assert wall == 4.0


def test_table_times_extrapolates_every_job_and_packs_them_after_the_launcher():
    times = record([(100, 10.0, 20, 2.0, 0.0), (100, 5.0, 20, 1.0, 12.0)],
                   {"train": 100, "train_batches": 10, "val": 20, "test": 50}, (4.0, 50))
    jobs = [{"row": row, "seed": 0, "folder": f"{i}_{row}", "times": times, "peak_gpu_mem_GiB": 1.0,
             "launcher": {"start": 100.0 + i, "end": 130.0 + i, "seconds": 30.0}}
            for i, row in enumerate(["a", "b", "a"])]
    result = tw.table_times(jobs, {"a": 60, "b": 30}, ["0"], per_gpu=2, sweep_wall_s=40.0)
    a, b = (tw.row_seconds(tw.row_model(times, 30.0), e) for e in (60, 30))
    assert [r["extrapolated_s"] for r in result["rows"]] == pytest.approx([a, b, a])
    table = result["table"]
    assert table["launcher_s"] == pytest.approx(40.0 - 32.0)  # the sweep's wall outside its rows' span
    assert table["packed_wall_s"] == pytest.approx(8.0 + b + a)  # the third job waits for the shorter second one
    assert table["sum_rows_s"] == pytest.approx(2 * a + b)
    assert result["measured_sweep"]["packed_from_rows_s"] == pytest.approx(60.0)


def test_schedule_epochs_from_max_epochs_or_max_steps():
    assert tw.schedule_epochs(OmegaConf.create({"max_epochs": 60, "max_steps": -1}), 93) == 60
    assert tw.schedule_epochs(OmegaConf.create({"max_epochs": -1, "max_steps": 1000}), 100) == 10
    assert tw.schedule_epochs(OmegaConf.create({"max_epochs": 5, "max_steps": 1000}), 100) == 5
    with pytest.raises(SystemExit, match="unlimited"):
        tw.schedule_epochs(OmegaConf.create({"max_epochs": -1, "max_steps": -1}), 100)


def test_table_rows_and_schedules_come_from_the_presets():
    assert tw.table_rows("odn/table4", []) == ["odn/brnet", "odn/gm_dm", "odn/dm_lm", "odn/gm_lm", "odn/all_no_l1",
                                               "odn/all"]
    assert len(tw.table_rows("hm1d/table1_detector", [])) == 10
    cfg = tw.compose_table("hm1d/table1_detector", ["trainer=gpu", "hydra/launcher=gpu_pack"], "hm1d/l2d_256")
    assert (cfg.model.name, cfg.model.crop_size, cfg.model.net.num_stacks, cfg.data.batch_size) == ("fan2d", 256, 4, 10)
    assert cfg.trainer.max_epochs == 60


def test_row_times_splits_validation_and_test_out_of_training(tmp_path, synthetic_root):
    cfg = compose_train(["model=baseline", "model.crop_size=64", "model.pretrained=false", "trainer.max_epochs=2",
                         "trainer.limit_train_batches=2",
                         "+callbacks.row_times={_target_:flmk.bench.RowTimes,out:row_times.json}"],
                        tmp_path, synthetic_root)
    train(cfg)
    times = json.loads((tmp_path / "row_times.json").read_text())
    # synthetic n=24: 24 training faces (batch 4, 6 full batches), 2 validation, 2 + 2 + 4 test faces
    assert times["full"] == {"train": 24, "train_batches": 6, "val": 2, "test": 8}
    assert [e["images"] for e in times["epochs"]] == [8, 8]  # limit_train_batches=2
    assert [e["val_images"] for e in times["epochs"]] == [2, 2]
    assert times["test"]["images"] == 8 and times["test"]["seconds"] > 0
    for e in times["epochs"]:
        assert e["train_seconds"] + e["val_seconds"] + e["post_val_seconds"] == pytest.approx(e["seconds"])
        assert min(e["train_seconds"], e["val_seconds"], e["post_val_seconds"]) > 0  # checkpoints after validation
        assert e["end"] == pytest.approx(e["start"] + e["seconds"])
    assert times["epochs"][0]["end"] <= times["epochs"][1]["start"]


@pytest.mark.slow
def test_a_two_row_table_on_the_cpu(tmp_path):
    """Two rows, two full epochs each, packed side by side on the CPU: the JSON a GPU run writes, whose rows
    extrapolated to the measured epochs give back the measured wall times."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "experiments" / "table_walltime.py"), "--out", str(out), "--table",
           "odn/table4", "--rows", "odn/brnet,odn/all", "--per-gpu", "2", "--epochs", "2", "--train-batches", "0",
           "--n", "40", "--size", "96", "--workers", "1", "model.pretrained=false", "model.crop_size=64",
           "data.batch_size=4", "data.num_workers=0", "callbacks.progress_bar=null",
           "trainer.enable_model_summary=false"]
    env.pop("CUDA_VISIBLE_DEVICES", None)
    res = subprocess.run(cmd, cwd=ROOT, env={**env, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    result = json.loads((out / "table_walltime.json").read_text())
    assert {"machine", "data", "measurement", "command", "rows", "table", "measured_sweep"} <= set(result)
    assert result["data"]["counts"] == tw.w300_counts(40)
    assert [r["row"] for r in result["rows"]] == ["odn/brnet", "odn/all"]
    for r in result["rows"]:
        assert r["epochs_measured"] == 2 and r["schedule_epochs"] == 60 and r["img_s"] > 0
        assert r["full_epoch_images"] == 36  # 38 training faces after the 5 % hold-out, batches of 4
        assert r["test_images"] == sum(tw.w300_counts(40)[k] for k in ("helen/testset", "lfpw/testset")) * 2 \
            + tw.w300_counts(40)["ibug"] * 2  # common + challenging + full (= both)
        assert tw.row_seconds(r, 2) == pytest.approx(r["wall_s_measured"])
        assert r["extrapolated_s"] == pytest.approx(tw.row_seconds(r, 60)) and r["extrapolated_s"] > 0
        assert tw.row_seconds(r, 120) - r["extrapolated_s"] == pytest.approx(60 * r["s_per_epoch"])
        assert (out / "sweep" / r["folder"] / "launcher.json").exists()
    table = result["table"]  # both rows at once: the table takes as long as its longest row (after the launcher)
    assert 0 < table["launcher_s"] < result["measurement"]["wall_s"]
    longest = max(r["extrapolated_s"] for r in result["rows"])
    assert table["packed_wall_s"] == pytest.approx(table["launcher_s"] + longest)
    assert table["sum_rows_s"] == pytest.approx(sum(r["extrapolated_s"] for r in result["rows"]))
    assert "| odn/brnet |" in (out / "table_walltime.md").read_text()


def test_the_script_says_no_gpu_unless_told_to_run_on_the_cpu(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    script = ROOT / "experiments" / "table_walltime.sh"
    done = subprocess.run(["bash", str(script), str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "no GPU found" in done.stderr and not (tmp_path / "out").exists()
    done = subprocess.run(["bash", str(script), str(tmp_path / "out"), "odn_table5"], capture_output=True, text=True,
                          env={**env, "TRAINER": "cpu"})
    assert done.returncode == 2 and "unknown table odn_table5" in done.stderr
