"""CropCache: crops each face once, maps points with its affine, rebuilds when settings or records change."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from flmk.data.cache import CropCache, warp_crop
from flmk.data.records import FaceRecord
from flmk.data.transforms import apply_affine


def make_records(tmp_path, n: int = 3) -> list[FaceRecord]:
    """Faces on a 200 x 160 image, each with a bright 3x3 dot at its first landmark."""
    records = []
    for i in range(n):
        image = np.zeros((160, 200, 3), np.uint8)
        dot = (60 + 20 * i, 50 + 10 * i)
        image[dot[1] - 1 : dot[1] + 2, dot[0] - 1 : dot[0] + 2] = (255, 40, 10)
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        points = np.array([dot, (dot[0] + 40, dot[1] + 60)], float)
        records.append(FaceRecord(image=path, points=points, layout="68", box=np.r_[points.min(0), points.max(0)]))
    return records


def stores(cache_dir) -> list:
    """Published stores (lock files and temporary folders start with a dot)."""
    return [p for p in cache_dir.iterdir() if not p.name.startswith(".")]


def test_crops_hold_the_faces_where_the_affine_says(tmp_path):
    records = make_records(tmp_path)
    crops, affines = CropCache(tmp_path / "cache", crop_size=32, margin=0.5).get(records)
    assert crops.shape == (3, 32, 32, 3) and crops.dtype == np.uint8 and isinstance(crops, np.memmap)
    assert affines.shape == (3, 2, 3)
    for crop, affine, r in zip(crops, affines, records):
        side = 1.5 * 60  # (1 + margin) * max(w, h), box 40 x 60
        np.testing.assert_allclose(affine[:, :2], np.eye(2) * 32 / side)
        # the box centre lands on the crop centre
        np.testing.assert_allclose(apply_affine(affine, r.box.reshape(2, 2).mean(0, keepdims=True)), [[15.5, 15.5]])
        u, v = np.rint(apply_affine(affine, r.points[:1])[0]).astype(int)
        assert crop[v, u, 0] > 60 and crop[v, u, 0] > 2 * crop[v, u, 2]  # the red dot, in RGB order


def test_cache_is_reused_and_rebuilt_when_settings_change(tmp_path):
    records = make_records(tmp_path)
    cache = CropCache(tmp_path / "cache", crop_size=32, margin=0.5)
    cache.get(records)
    assert cache.last_built
    cache.get(records)
    assert not cache.last_built  # same settings and records: reused
    assert len(stores(tmp_path / "cache")) == 1
    bigger = CropCache(tmp_path / "cache", crop_size=48, margin=0.5)
    crops, _ = bigger.get(records)
    assert bigger.last_built and crops.shape == (3, 48, 48, 3)
    wider = CropCache(tmp_path / "cache", crop_size=32, margin=1.0)
    wider.get(records)
    assert wider.last_built
    records[1].box = records[1].box + 1.0
    cache.get(records)
    assert cache.last_built  # a changed record list is a new store too
    cache.get(records[:2])
    assert cache.last_built


def test_warp_crop_antialiases_large_shrinks():
    stripes = np.zeros((512, 512, 3), np.uint8)
    stripes[:, np.arange(512) % 8 < 4] = 255  # 4-px stripes: point-sampling every 16 px sees one phase only
    affine = np.array([[1 / 16, 0, -1.5 / 16], [0, 1 / 16, -1.5 / 16]])  # samples x = 16u + 1.5: mid white stripe
    crop = warp_crop(stripes, affine, 32)
    inner = crop[2:-2, 2:-2].astype(float)  # pyrDown reflects at the border
    assert abs(inner.mean() - 127.5) < 3 and inner.std() < 3
    aliased = cv2.warpAffine(stripes, affine, (32, 32), flags=cv2.INTER_LINEAR)
    assert abs(aliased.astype(float).mean() - 127.5) > 60  # what plain warpAffine gives


_BUILD = """
import sys, time, pickle
import flmk.data.cache as cache
records = pickle.load(open(sys.argv[1], "rb"))
if len(sys.argv) > 3:  # hang while reading the second image, so the test can kill a half-built store
    read = cache.read_rgb
    def slow(path):
        if str(path).endswith("1.png"):
            print("building", flush=True)
            time.sleep(600)
        return read(path)
    cache.read_rgb = slow
crops, affines = cache.CropCache(sys.argv[2], crop_size=32, margin=0.5).get(records)
print(crops.sum(), affines.sum(), flush=True)
"""


def _builder(tmp_path, records, *extra):
    import os
    import pickle
    import subprocess
    import sys
    from pathlib import Path

    with open(tmp_path / "records.pkl", "wb") as f:
        pickle.dump(records, f)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.Popen([sys.executable, "-c", _BUILD, str(tmp_path / "records.pkl"), str(tmp_path / "cache"), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_two_processes_building_one_store_at_once_both_succeed(tmp_path):
    """Once, the second run died with a Bus error (it mapped a file the first was still truncating)."""
    records = make_records(tmp_path, n=40)
    procs = [_builder(tmp_path, records) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    crops, affines = CropCache(tmp_path / "cache", crop_size=32, margin=0.5).get(records)
    expected = f"{crops.sum()} {affines.sum()}"
    assert [o[0].strip() for o in outs] == [expected, expected]
    assert len(stores(tmp_path / "cache")) == 1 and not list((tmp_path / "cache").glob(".*tmp*"))


@pytest.mark.slow
def test_a_killed_builder_publishes_nothing_and_the_next_run_rebuilds(tmp_path):
    records = make_records(tmp_path)
    proc = _builder(tmp_path, records, "hang")
    assert proc.stdout.readline().strip() == "building", proc.stderr.read()[-2000:]
    proc.kill()
    proc.wait()
    assert stores(tmp_path / "cache") == []          # the half-written crops never appear under the key
    cache = CropCache(tmp_path / "cache", crop_size=32, margin=0.5)
    crops, _ = cache.get(records)
    assert cache.last_built and crops.shape == (3, 32, 32, 3) and crops[2].any()
    assert not list((tmp_path / "cache").glob(".*tmp*"))  # the killed builder's folder is cleaned up
