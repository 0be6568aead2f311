"""300VW (Shen et al., ICCV-W 2015; ibug.doc.ic.ac.uk/resources/300-VW/).

Layout::

    <root>/<video>/vid.avi               the video
    <root>/<video>/annot/NNNNNN.pts      68 points for frame NNNNNN (1-based)
    <root>/<video>/imgs/NNNNNN.jpg       optional: frames already extracted (used instead of vid.avi)
    <root>/splits.json                   optional: {"train": [...], "cat1": [...], ...} overrides the lists

Frames are decoded from ``vid.avi`` once (cv2) into ``<root>/<video>/frames/``
or ``<frames_dir>/<video>/``; a ``DONE`` file there records the video's size
and mtime so a changed video is decoded again.

Splits: ``train`` (50 videos), ``cat1`` / ``cat2`` / ``cat3`` (31 / 19 / 14 test
videos) and ``test`` (all 64). The lists below are the ones in D-X-Y/landmark-detection
(SBR, ``generate_300VW.py``), which match the paper's category sizes; they were not
checked against the organisers' own files, hence the ``splits`` / splits.json override.
Every record carries ``video`` and ``frame``; ``attributes["valid"]`` is False for
frames in ``broken_frames`` ({video: [frame, ...]}), which evaluation skips.
[assume] The organisers' broken-frame list is not bundled (none could be verified);
give it in the config.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2

from flmk.data.images import write_atomic
from flmk.data.records import DatasetNotFoundError, FaceRecord
from flmk.data.sources.common import check_split, file_stamp, require
from flmk.data.sources.pts import read_pts

VW300_URL = "https://ibug.doc.ic.ac.uk/resources/300-VW/ (300VW_Dataset_2015_12_14.zip)"
VW300_LAYOUT_DOC = """\
  <root>/<video>/vid.avi  (or <root>/<video>/imgs/NNNNNN.jpg)
  <root>/<video>/annot/NNNNNN.pts
  <root>/splits.json      (optional: {"train": [video, ...], "cat1": [...], "cat2": [...], "cat3": [...]})"""

VW300_VIDEOS: dict[str, list[str]] = {
    "train": ["001", "002", "003", "004", "007", "009", "010", "011", "013", "015", "016", "017", "018",
              "019", "020", "022", "025", "027", "028", "029", "031", "033", "034", "035", "037", "039",
              "041", "043", "044", "046", "047", "048", "049", "053", "057", "059", "112", "113", "115",
              "119", "120", "123", "138", "143", "144", "160", "204", "205", "223", "225"],
    "cat1": ["114", "124", "125", "126", "150", "158", "401", "402", "505", "506", "507", "508", "509",
             "510", "511", "514", "515", "518", "519", "520", "521", "522", "524", "525", "537", "538",
             "540", "541", "546", "547", "548"],
    "cat2": ["203", "208", "211", "212", "213", "214", "218", "224", "403", "404", "405", "406", "407",
             "408", "409", "412", "550", "551", "553"],
    "cat3": ["410", "411", "516", "517", "526", "528", "529", "530", "531", "533", "557", "558", "559", "562"],
}
TEST_CATEGORIES = ("cat1", "cat2", "cat3")
FRAME_SUFFIXES = (".jpg", ".png")


def decode_video(video: Path, out_dir: Path) -> None:
    """Write every frame of ``video`` as ``out_dir/NNNNNN.jpg`` (1-based), once."""
    done = out_dir / "DONE"
    stamp = file_stamp(video)
    if done.exists() and done.read_text() == stamp:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise OSError(f"{video}: cv2 cannot open this video")
    count = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        count += 1
        write_atomic(out_dir / f"{count:06d}.jpg",
                     lambda tmp: cv2.imwrite(str(tmp), frame, [cv2.IMWRITE_JPEG_QUALITY, 95]))
    cap.release()
    if count == 0:
        raise OSError(f"{video}: no frame could be decoded")
    done.write_text(stamp)


class Vw300Source:
    """300VW per-frame records; see the module docstring."""

    layout = "68"

    def __init__(
        self,
        root: str | Path,
        splits: dict[str, list[str]] | None = None,
        splits_file: str = "splits.json",
        frames_dir: str | Path | None = None,
        broken_frames: dict[str, list[int]] | None = None,
        name: str = "300VW",
    ):
        self.root = Path(root).expanduser()
        self._splits = {k: [str(v) for v in vs] for k, vs in splits.items()} if splits else None
        self.splits_file = self.root / splits_file
        self.frames_dir = Path(frames_dir).expanduser() if frames_dir is not None else None
        self.broken = {str(v): set(map(int, fs)) for v, fs in (broken_frames or {}).items()}
        self.name = name

    def video_lists(self) -> dict[str, list[str]]:
        if self._splits is not None:
            lists = dict(self._splits)
        elif self.splits_file.exists():
            lists = {k: [str(v) for v in vs] for k, vs in json.loads(self.splits_file.read_text()).items()}
        else:
            lists = dict(VW300_VIDEOS)
        if "test" not in lists and all(c in lists for c in TEST_CATEGORIES):
            lists["test"] = [v for c in TEST_CATEGORIES for v in lists[c]]
        return lists

    def splits(self) -> list[str]:
        return list(self.video_lists())

    def read(self, split: str) -> list[FaceRecord]:
        check_split(self.name, split, self.splits())
        require(self.root, self.name, VW300_LAYOUT_DOC, VW300_URL)
        missing = [v for v in self.video_lists()[split] if not (self.root / v / "annot").is_dir()]
        if missing:
            raise DatasetNotFoundError(
                self.name, f"{self.root} (split {split!r} lacks videos {', '.join(missing)})", VW300_LAYOUT_DOC, VW300_URL
            )
        return [r for video in self.video_lists()[split] for r in self.read_video(video, split)]

    def read_video(self, video: str, split: str) -> list[FaceRecord]:
        frames = self.frames_of(video)
        records = []
        for pts_path in sorted((self.root / video / "annot").glob("*.pts")):
            frame = int(pts_path.stem)
            records.append(
                FaceRecord(
                    image=frames / f"{frame:06d}{self._suffix(frames, frame)}",
                    points=read_pts(pts_path, 68),
                    layout=self.layout,
                    attributes={"valid": frame not in self.broken.get(video, ())},
                    subsets=frozenset({split}),
                    source=str(pts_path),
                    video=video,
                    frame=frame,
                )
            )
        return records

    def frames_of(self, video: str) -> Path:
        """The folder of the video's frames, decoding ``vid.avi`` there on first use."""
        imgs = self.root / video / "imgs"
        if imgs.is_dir():
            return imgs
        avi = self.root / video / "vid.avi"
        if not avi.exists():
            raise DatasetNotFoundError(self.name, avi, VW300_LAYOUT_DOC, VW300_URL)
        out = (self.frames_dir / video) if self.frames_dir is not None else (self.root / video / "frames")
        decode_video(avi, out)
        return out

    @staticmethod
    def _suffix(folder: Path, frame: int) -> str:
        for suffix in FRAME_SUFFIXES:
            if (folder / f"{frame:06d}{suffix}").exists():
                return suffix
        return FRAME_SUFFIXES[0]
