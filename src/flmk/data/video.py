"""VideoClipDataModule: clips of T consecutive frames for trackers (HM1D, SRN).

Sources return per-frame records carrying ``video`` and ``frame``; this module
groups them into videos and cuts clips: training clips start every
``clip_stride`` frames, evaluation clips tile each video without overlap so
that every frame is counted exactly once (the last clip is padded by repeating
its final frame, marked ``valid = False``, as are frames the organisers flag
as broken). One geometric augmentation is shared by all frames of a clip.
The per-frame view for detectors is the plain LandmarkDataModule over the
same source.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import Dataset

from flmk.data.datamodule import FaceDataset, LandmarkDataModule
from flmk.data.records import FaceRecord
from flmk.data.sampling import SampleKey, sample_rng
from flmk.data.transforms import FaceTransform


def group_videos(records: list[FaceRecord]) -> dict[str, list[int]]:
    """Record indices of each video, in frame order."""
    videos: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if r.video is None or r.frame is None:
            raise ValueError(f"{r.source}: a clip data module needs records with video and frame (a video source)")
        videos[r.video].append(i)
    return {v: sorted(idx, key=lambda i: records[i].frame) for v, idx in videos.items()}


def cut_clips(videos: dict[str, list[int]], length: int, stride: int, cover: bool) -> list[list[int]]:
    """Windows of ``length`` record indices; ``cover`` tiles every frame once (short tails padded with -1)."""
    clips = []
    for idx in videos.values():
        if cover:
            for start in range(0, len(idx), length):
                window = idx[start:start + length]
                clips.append(window + [-1] * (length - len(window)))
        else:
            starts = range(0, max(len(idx) - length, 0) + 1, stride)
            clips.extend(idx[s:s + length] for s in starts if len(idx[s:s + length]) == length)
    return clips


class ClipDataset(Dataset):
    def __init__(self, records: list[FaceRecord], transform: FaceTransform, length: int, stride: int, cover: bool,
                 box_policy: str = "clip", cached: tuple[np.ndarray, np.ndarray] | None = None):
        if box_policy not in ("clip", "frame"):
            raise ValueError(f"data.box_policy={box_policy!r}; expected 'clip' (one box per clip) or 'frame'")
        self.frames = FaceDataset(records, transform.layout, transform, cached)
        self.records, self.transform, self.box_policy = records, transform, box_policy
        self.clips = cut_clips(group_videos(records), length, stride, cover)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int | SampleKey) -> dict:
        i = key[0] if isinstance(key, tuple) else int(key)
        clip = self.clips[i]
        real = [j for j in clip if j >= 0]
        padded = [j if j >= 0 else real[-1] for j in clip]
        rng = sample_rng(key)
        params = self.transform.sample_params(rng)
        boxes = np.stack([self.records[j].box_or_points_box() for j in padded])
        clip_box = np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])
        frames = [self.frames.sample(j, rng, box=clip_box if self.box_policy == "clip" else None, params=params)
                  for j in padded]
        sample = {k: torch.stack([f[k] for f in frames]) for k in frames[0]}
        sample["valid"] = torch.tensor([j >= 0 and self.records[j].attributes.get("valid", True) for j in clip])
        return sample


class VideoClipDataModule(LandmarkDataModule):
    def __init__(self, *args, clip_length: int = 16, clip_stride: int = 8, box_policy: str = "clip",
                 val_fraction: float = 0.1, **kwargs):
        super().__init__(*args, val_fraction=val_fraction, **kwargs)
        self.clip_length, self.clip_stride, self.box_policy = clip_length, clip_stride, box_policy

    def hold_out(self, train: list[FaceRecord]) -> tuple[list[FaceRecord], list[FaceRecord]]:
        """Whole videos are held out, so validation never sees frames of a training video."""
        videos = sorted({r.video for r in train})
        order = np.random.default_rng(self.seed).permutation(len(videos))
        held = {videos[i] for i in order[:max(1, int(round(self.val_fraction * len(videos))))]}
        return [r for r in train if r.video not in held], [r for r in train if r.video in held]

    def dataset(self, split: str) -> ClipDataset:
        transform, cached = self.transform_and_cache(split)
        return ClipDataset(self.splits[split], transform, self.clip_length, self.clip_stride, cover=split != "train",
                           box_policy=self.box_policy, cached=cached)
