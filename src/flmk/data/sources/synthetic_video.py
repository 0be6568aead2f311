"""Synthetic face videos in the 300VW format, generated on first use, read by the 300VW reader."""

from __future__ import annotations

from pathlib import Path

from flmk.data.sources.vw300 import Vw300Source


class SyntheticVideoSource(Vw300Source):
    def __init__(self, root: str | Path, n_videos: int = 12, frames: int = 60, seed: int = 0, size: int = 128,
                 frames_dir: str | Path | None = None):
        super().__init__(root, frames_dir=frames_dir, name="synthetic_video")
        self.n_videos, self.frames, self.seed, self.size = n_videos, frames, seed, size

    def prepare(self) -> None:
        from flmk.data.synth import ensure_synthetic_videos

        # root, or <root>-<hash> when root holds clips with other parameters (never replaced under a reader)
        self.root = ensure_synthetic_videos(self.root, n_videos=self.n_videos, frames=self.frames, seed=self.seed,
                                            size=self.size)
        self.splits_file = self.root / self.splits_file.name

    def read(self, split: str):
        self.prepare()
        return super().read(split)
