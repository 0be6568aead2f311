"""``python -m flmk.data.synth --out DIR [--n N] [--seed S] [--size PX] [--video [--frames T]] [--workers W]``."""

from __future__ import annotations

import argparse
import time

from flmk.data.synth.stills import generate, split_sizes
from flmk.data.synth.video import generate_videos, video_split_sizes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flmk.data.synth", description=__doc__)
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--n", type=int, default=None, help="training faces (default 2000) or, with --video, training clips (default 12)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default 160; 128 with --video)")
    ap.add_argument("--video", action="store_true", help="write 300VW-style clips instead of 300W-style stills")
    ap.add_argument("--frames", type=int, default=60, help="frames per clip (--video)")
    ap.add_argument("--workers", type=int, default=1, help="processes for stills (output is identical for any value)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    if args.video:
        n, size = args.n or 12, args.size or 128
        out = generate_videos(args.out, n, args.frames, args.seed, size)
        counts = video_split_sizes(n)
    else:
        n, size = args.n or 2000, args.size or 160
        out = generate(args.out, n, args.seed, size, workers=args.workers)
        counts = split_sizes(n)
    print(f"wrote {out}: {counts} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
