"""MaskedSource: any source's frames wearing a synthetic mask, cached once, lower face occluded."""

from __future__ import annotations

import numpy as np

from flmk.data.images import read_rgb
from flmk.data.sources.masked import MaskedSource
from flmk.data.sources.synthetic_video import SyntheticVideoSource


def test_masked_clips_hide_the_lower_face_and_are_cached(tmp_path, synthetic_video_root):
    inner = SyntheticVideoSource(synthetic_video_root, n_videos=3, frames=12, seed=0, size=96)
    source = MaskedSource(inner, tmp_path / "masked")
    plain, masked = inner.read("cat1"), source.read("cat1")
    assert len(masked) == len(plain) and not source.comparable
    for p, m in zip(plain, masked):
        assert (p.video, p.frame) == (m.video, m.frame) and np.array_equal(p.points, m.points)
        assert not m.visible[[8, 57, 62]].any()  # chin and lips are under the mask
        assert m.visible[36:48].sum() >= (p.visible[36:48] if p.visible is not None else np.ones(12, bool)).sum() - 2
    a, b = read_rgb(plain[0].image).astype(float), read_rgb(masked[0].image).astype(float)
    x, y = np.round(plain[0].points[57]).astype(int)  # lower lip: repainted
    assert np.abs(a[y, x] - b[y, x]).sum() > 30
    stamp = masked[0].image.stat().st_mtime_ns
    again = source.read("cat1")
    assert again[0].image.stat().st_mtime_ns == stamp  # written once
