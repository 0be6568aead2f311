"""Masked-300W: 300W test faces wearing synthetic masks (SAAT / SRN).

[assume] The released set (linked from github.com/zhuccly/SAAT) is read as a
copy of the 300W test folders, images replaced by masked ones::

    <root>/helen/testset/, <root>/lfpw/testset/, <root>/ibug/   (image + .pts [+ .vis])
    <root>/NONCOMPARABLE.txt   present when the set was built by `python -m flmk.data.mask`

Splits: common / challenging / full, as in 300W. ``comparable`` is False for a
home-built set (marked by NONCOMPARABLE.txt): its numbers must not be compared
with published Masked-300W results.
"""

from __future__ import annotations

from pathlib import Path

from flmk.data.sources.folders import W300_SPLITS
from flmk.data.sources.w300 import W300Source

NONCOMPARABLE_MARKER = "NONCOMPARABLE.txt"
MASKED_SPLITS = {k: W300_SPLITS[k] for k in ("common", "challenging", "full")}
MASKED_LAYOUT_DOC = """\
  <root>/helen/testset/, <root>/lfpw/testset/, <root>/ibug/  (masked image + .pts, optional .vis)
  <root>/NONCOMPARABLE.txt  (only in sets built by `python -m flmk.data.mask`)"""
MASKED_URL = "the Masked-300W link in https://github.com/zhuccly/SAAT, or build one: python -m flmk.data.mask --src <300W> --out <dir>"


class Masked300wSource(W300Source):
    """Masked-300W test folders; ``comparable`` tells a released set from a home-built one."""

    def __init__(self, root: str | Path, name: str = "Masked300W", **kwargs):
        kwargs.setdefault("splits", MASKED_SPLITS)
        super().__init__(root, name=name, expected_layout=MASKED_LAYOUT_DOC, how_to_obtain=MASKED_URL, **kwargs)

    @property
    def comparable(self) -> bool:
        return not (self.root / NONCOMPARABLE_MARKER).exists()
