"""Procedural 68-point faces and face videos, written in the real 300W and 300VW formats.

``python -m flmk.data.synth --out DIR --n N --seed S [--size 160] [--video]``.
"""

from __future__ import annotations

from flmk.data.synth.stills import SynthConfig, ensure_synthetic, generate, split_sizes
from flmk.data.synth.video import ensure_synthetic_videos, generate_videos, video_split_sizes

__all__ = [
    "SynthConfig", "generate", "ensure_synthetic", "split_sizes",
    "generate_videos", "ensure_synthetic_videos", "video_split_sizes",
]
