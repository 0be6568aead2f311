"""flmk.bench: the end-to-end mode's arithmetic, and (slow) a CPU run through flmk.train and a plain loop."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flmk.bench import steady_img_s

ROOT = Path(__file__).resolve().parents[1]


def test_steady_rate_leaves_out_the_first_epoch():
    epochs = [{"images": 100, "seconds": 10.0}, {"images": 300, "seconds": 1.0}, {"images": 300, "seconds": 2.0}]
    assert steady_img_s(epochs) == pytest.approx(600 / 3.0)
    assert steady_img_s(epochs[:1]) == pytest.approx(10.0)  # one epoch: its own rate


@pytest.mark.slow
def test_e2e_mode_times_flmk_train_and_a_plain_loop(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-m", "flmk.bench", "bench.mode=e2e", "model=baseline", "model.pretrained=false",
           "model.crop_size=64", "bench.epochs=2", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
           "bench.steps=2", "bench.warmup=1", "bench.plain_batches=2", "callbacks.progress_bar=null",
           "bench.loader_epochs=2", "bench.loader_batches=2", f"hydra.run.dir={tmp_path}"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results["num_workers"] == 2 and results["cpus"] == len(os.sched_getaffinity(0))  # data=synthetic's 2
    e2e = results["e2e"]
    assert e2e["epochs"] == 2 and e2e["flmk_img_s"] > 0 and e2e["plain_img_s"] > 0
    assert e2e["ratio"] == pytest.approx(e2e["flmk_img_s"] / e2e["plain_img_s"])
    epochs = json.loads((tmp_path / "e2e_flmk" / "throughput.json").read_text())["epochs"]
    assert [e["images"] for e in epochs] == [64, 64]  # 2 batches of 32 per epoch, counted by the callback
    # the training part alone is faster than whole epochs, which also validate and write checkpoints
    assert e2e["flmk_train_only_img_s"] > e2e["flmk_img_s"] and e2e["train_only_ratio"] > e2e["ratio"]
    steady = epochs[1]
    assert e2e["epoch_val_s"] == pytest.approx(steady["val_seconds"]) and e2e["epoch_val_s"] > 0
    assert e2e["epoch_metrics_s"] == pytest.approx(steady["post_val_seconds"]) and e2e["epoch_metrics_s"] > 0
    # between the epochs: ModelCheckpoint writes last.ckpt and best.ckpt (135 MB each for BRNet with Adam's state)
    assert e2e["epoch_gap_s"] == pytest.approx(epochs[1]["start"] - epochs[0]["end"]) and e2e["epoch_gap_s"] > 0
    wall = steady["images"] / (steady["seconds"] + e2e["epoch_gap_s"])
    assert e2e["flmk_wall_img_s"] == pytest.approx(wall) and e2e["flmk_wall_img_s"] < e2e["flmk_img_s"]
    assert e2e["wall_ratio"] == pytest.approx(e2e["flmk_wall_img_s"] / e2e["plain_img_s"])
    # the training loader alone, in the benchmark's own process (2 epochs of 2 batches, the second timed)
    assert 0 < e2e["loader_img_s"] < float("inf") and 0 < e2e["loader_ratio"] < float("inf")
    assert e2e["loader_ratio"] == pytest.approx(e2e["loader_img_s"] / e2e["plain_img_s"])


def test_latency_section_on_a_tiny_cpu_run(tmp_path, synthetic_root):
    """bench.json keeps its keys and gains "latency": bare net / flmk's path, eager / compiled, batch 1 and N."""
    from conftest import compose_train
    from flmk.bench import LATENCY_GOAL, bench

    cfg = compose_train(["model=baseline", "model.pretrained=false", "model.crop_size=32", "model.net.cut_stage=1",
                         "bench.batch_size=3", "bench.steps=1", "bench.warmup=1", "bench.precisions=[fp32]",
                         "bench.data_path=false", "bench.compile_backend=eager"], tmp_path, synthetic_root,
                        config_name="bench")
    results = bench(cfg)
    assert json.loads((tmp_path / "bench.json").read_text()) == results
    assert {"model", "crop_size", "batch_size", "params_M", "device", "torch", "runs"} <= set(results)
    assert set(results["runs"][0]) == {"precision", "compile", "channels_last", "train_img_s_memory",
                                       "latency_b1_ms", "latency_b3_ms"}
    lat = results["latency"]
    assert lat["batch_sizes"] == [1, 3] and lat["compiled"] and lat["goal_ratio"] == LATENCY_GOAL
    assert lat["compile_mode"] == "reduce-overhead" and lat["precision"] == "fp32"
    for n in (1, 3):
        row = lat[f"b{n}"]
        times = ("net_eager_ms", "net_compiled_ms", "flmk_eager_ms", "flmk_compiled_ms", "flmk_compiled_on_device_ms")
        assert set(row) == {*times, "ratio", "meets_goal"}
        assert all(row[k] > 0 for k in times)
        assert row["ratio"] == pytest.approx(row["flmk_compiled_ms"] / row["net_compiled_ms"])
        assert row["meets_goal"] == (row["ratio"] <= LATENCY_GOAL)


def test_latency_table_rows_from_bench_jsons(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("latency_table", ROOT / "experiments" / "latency_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    row = {"net_eager_ms": 15.5, "net_compiled_ms": 2.0, "flmk_eager_ms": 16.0, "flmk_compiled_ms": 2.6,
           "flmk_compiled_on_device_ms": 2.1, "ratio": 1.3, "meets_goal": False}
    run = {"model": "hm1d", "crop_size": 256, "batch_size": 10, "device": "NVIDIA H200", "torch": "2.11",
           "runs": [{"precision": "fp32", "compile": False, "train_img_s_memory": 100.0},
                    {"precision": "fp32", "compile": True, "train_img_s_memory": 350.0}],
           "latency": {"batch_sizes": [1, 10], "b1": row, "b10": {**row, "ratio": 1.1, "meets_goal": True}}}
    (tmp_path / "hm1d_L768.json").write_text(json.dumps(run))
    (tmp_path / "notes.json").write_text("{}")  # not a bench.json: left out
    runs = table.load(tmp_path)
    assert [name for name, _ in runs] == ["hm1d_L768"]
    lat = table.latency_rows(runs)
    assert lat[2] == "| hm1d_L768 | 256 | 1 | 15.50 | 2.00 | 16.00 | 2.60 | 2.10 | 1.30 | not met |"
    assert lat[3].endswith("| 1.10 | met |") and len(lat) == 4
    assert table.training_rows(runs)[2] == "| hm1d_L768 | 256 | 10 | fp32 | 100 | 350 | 3.50x |"
