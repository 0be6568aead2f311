"""The embedded synthetic dataset: generated on first use, then read as 300W-format folders."""

from __future__ import annotations

from pathlib import Path

from flmk.data.sources.folders import PtsFolderSource

SYNTHETIC_SPLITS = {
    "train": ["train"],
    "val": ["val"],
    "clean": ["test/clean"],
    "occluded": ["test/occluded"],
    "full": ["test/clean", "test/occluded"],
}


class SyntheticSource(PtsFolderSource):
    def __init__(self, root: str | Path, n: int = 2000, seed: int = 0, size: int = 160):
        super().__init__(
            root,
            splits=SYNTHETIC_SPLITS,
            layout="68",
            name="synthetic",
            how_to_obtain="generated on first use; or run `python -m flmk.data.synth --out <root>`",
            expected_layout="  <root>/{train,val,test/clean,test/occluded}/*.jpg + .pts + .vis",
        )
        self.n, self.seed, self.size = n, seed, size

    def prepare(self) -> None:
        from flmk.data.synth import ensure_synthetic

        # root, or <root>-<hash> when root holds a set with other parameters (never replaced under a reader)
        self.root = ensure_synthetic(self.root, n=self.n, seed=self.seed, size=self.size)

    def read(self, split: str):
        self.prepare()
        return super().read(split)
