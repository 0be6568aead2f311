"""hydra/launcher=gpu_pack: rows side by side, per_gpu per GPU, each in its own sweep folder."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

APP = textwrap.dedent("""
    import json, os, time
    from pathlib import Path
    import hydra
    from hydra.core.hydra_config import HydraConfig

    @hydra.main(version_base="1.3", config_path=None, config_name=None)
    def main(cfg):
        out = Path(HydraConfig.get().runtime.output_dir)
        start = time.time()
        time.sleep(1.0)
        if cfg.x == "fail":
            raise SystemExit(3)
        (out / "job.json").write_text(json.dumps({"x": cfg.x, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "omp": os.environ.get("OMP_NUM_THREADS"), "mode": str(HydraConfig.get().mode),
            "start": start, "end": time.time()}))

    if __name__ == "__main__":
        main()
""")


def sweep(tmp_path: Path, xs: str, *extra: str) -> subprocess.CompletedProcess:
    (tmp_path / "app.py").write_text(APP)
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{tmp_path}")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "app", "-m", f"+x={xs}", "hydra/launcher=gpu_pack_base",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweep.subdir=${hydra.job.num}", *extra]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_rows_are_spread_over_gpus_per_gpu_at_a_time(tmp_path):
    res = sweep(tmp_path, "a,b,c,d,e,f", "hydra.launcher.per_gpu=2", "hydra.launcher.gpus='0,1'",
                "hydra.launcher.cpu_threads=3")
    assert res.returncode == 0, res.stderr
    jobs = [json.loads((tmp_path / "sweep" / str(i) / "job.json").read_text()) for i in range(6)]
    assert sorted(j["x"] for j in jobs) == list("abcdef")  # every row in its own numbered folder
    assert {j["gpu"] for j in jobs} == {"0", "1"}
    assert all(j["omp"] == "3" and j["mode"] == "RunMode.RUN" for j in jobs)
    for gpu in ("0", "1"):  # never more than per_gpu rows on one GPU at any moment
        spans = [(j["start"], j["end"]) for j in jobs if j["gpu"] == gpu]
        for t, _ in spans:
            assert sum(s <= t < e for s, e in spans) <= 2
    # 6 one-second rows on 4 slots overlap: some rows ran at the same time
    assert any(a["start"] < b["end"] and b["start"] < a["end"] for a in jobs for b in jobs if a is not b)


def test_a_failed_row_fails_the_multirun_after_the_others_finish(tmp_path):
    res = sweep(tmp_path, "a,fail,b", "hydra.launcher.per_gpu=3")
    assert res.returncode != 0
    assert "exited with 3" in res.stderr + res.stdout and "launcher.log" in res.stderr + res.stdout
    assert (tmp_path / "sweep" / "0" / "job.json").exists() and (tmp_path / "sweep" / "2" / "job.json").exists()


def test_per_gpu_must_be_positive(tmp_path):
    res = sweep(tmp_path, "a", "hydra.launcher.per_gpu=0")
    assert res.returncode != 0 and "per_gpu must be >= 1" in res.stderr + res.stdout


@pytest.mark.slow
def test_table_rows_through_flmk_train_land_in_the_sweep_folder(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC))
    cmd = [sys.executable, "-m", "flmk.train", "-m", "experiment=odn/table4", "data=synthetic",
           "ablation=odn/brnet,odn/gm_dm", "model.pretrained=false", "model.crop_size=64", "trainer.max_epochs=1",
           "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
           "callbacks.progress_bar=null", "hydra/launcher=gpu_pack", "hydra.launcher.per_gpu=2",
           f"hydra.sweep.dir={tmp_path}"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-2000:]
    for row in ("0_odn/brnet", "1_odn/gm_dm"):
        assert (tmp_path / row / "metrics.json").exists()
        assert (tmp_path / row / ".hydra" / "overrides.yaml").exists()
