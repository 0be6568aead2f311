"""WFLW-98 (Wu et al., "Look at Boundary", CVPR 2018; wywu.github.io/projects/LAB/WFLW.html).

Layout::

    <root>/WFLW_images/<event folder>/<image>.jpg
    <root>/WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_{train,test}.txt
    <root>/WFLW_annotations/list_98pt_test/list_98pt_test_<subset>.txt   (optional, official subset lists)

A rect_attr line has 207 fields: x0 y0 ... x97 y97, x_min y_min x_max y_max,
six 0/1 attributes (pose, expression, illumination, make-up, occlusion, blur),
image name. A subset list line has 197 fields: the 196 coordinates and the name.
Splits: ``train`` (7,500), ``test`` (2,500) and the six attribute subsets of the
test set, built from the attribute columns (``pose``: 326, ``expression``: 314,
``illumination``: 698, ``makeup``: 206, ``occlusion``: 736, ``blur``: 773). Where
an official subset list is present the subset is cross-checked against it;
without the rect_attr test file, the subsets are read from those lists (no box).
WFLW coordinates are used as given (0-based, as HRNet and PIPNet use them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from flmk.data.records import AnnotationError, DatasetNotFoundError, FaceRecord, check_points
from flmk.data.sources.common import check_split, file_stamp

WFLW_URL = "https://wywu.github.io/projects/LAB/WFLW.html (WFLW_images.tar.gz, WFLW_annotations.tar.gz)"
WFLW_LAYOUT_DOC = """\
  <root>/WFLW_images/<event>/<image>.jpg
  <root>/WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_{train,test}.txt
  <root>/WFLW_annotations/list_98pt_test/list_98pt_test_<subset>.txt  (optional)"""

NUM_COORDS = 196
ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")  # column order
SUBSET_LIST_NAMES = {"pose": "largepose", "expression": "expression", "illumination": "illumination",
                     "makeup": "makeup", "occlusion": "occlusion", "blur": "blur"}


def parse_line(path: Path, lineno: int, line: str, with_attributes: bool) -> FaceRecord:
    """One line of a WFLW list -> FaceRecord (``image`` relative to the images folder)."""
    fields = line.split()
    expected = NUM_COORDS + (10 if with_attributes else 0) + 1
    if len(fields) != expected:
        raise AnnotationError(path, lineno, f"expected {expected} fields, got {len(fields)}")
    try:
        numbers = np.array(fields[:-1], dtype=np.float64)
    except ValueError:
        raise AnnotationError(path, lineno, "non-numeric coordinate, box or attribute") from None
    check_points(numbers[:NUM_COORDS].reshape(-1, 2), NUM_COORDS // 2, path, lineno)
    attributes, box = {}, None
    if with_attributes:
        box = numbers[NUM_COORDS : NUM_COORDS + 4]
        if not np.isfinite(box).all():
            raise AnnotationError(path, lineno, f"non-finite face box {box.tolist()}")
        flags = numbers[NUM_COORDS + 4 :]
        if not np.isin(flags, (0, 1)).all():
            raise AnnotationError(path, lineno, f"attributes must be 0 or 1, got {flags.tolist()}")
        attributes = {a: bool(f) for a, f in zip(ATTRIBUTES, flags)}
    return FaceRecord(
        image=Path(fields[-1]),
        points=numbers[:NUM_COORDS].reshape(-1, 2),
        layout="98",
        box=box,
        attributes=attributes,
        subsets=frozenset(a for a, on in attributes.items() if on),
        source=f"{path}:{lineno}",
    )


def read_list(path: Path, with_attributes: bool) -> list[FaceRecord]:
    lines = path.read_text().splitlines()
    return [parse_line(path, i, line, with_attributes) for i, line in enumerate(lines, start=1) if line.strip()]


def face_key(image: Path, points: np.ndarray) -> tuple:
    """Identity of a face across WFLW lists: image name and its first two points to 1e-3 px."""
    return (image.as_posix(), *np.round(points[:2].ravel(), 3).tolist())


class WflwSource:
    """WFLW-98; see the module docstring."""

    layout = "98"

    def __init__(
        self,
        root: str | Path,
        images_dir: str = "WFLW_images",
        attr_dir: str = "WFLW_annotations/list_98pt_rect_attr_train_test",
        subset_dir: str = "WFLW_annotations/list_98pt_test",
        strict_subsets: bool = True,
        name: str = "WFLW",
    ):
        self.root = Path(root).expanduser()
        self.images_dir = self.root / images_dir
        self.attr_dir = self.root / attr_dir
        self.subset_dir = self.root / subset_dir
        self.strict_subsets = strict_subsets
        self.name = name
        self._parsed: dict[str, tuple[str, list[FaceRecord]]] = {}

    def splits(self) -> list[str]:
        return ["train", "test", *ATTRIBUTES]

    def attr_file(self, split: str) -> Path:
        return self.attr_dir / f"list_98pt_rect_attr_{split}.txt"

    def subset_file(self, subset: str) -> Path:
        return self.subset_dir / f"list_98pt_test_{SUBSET_LIST_NAMES[subset]}.txt"

    def read(self, split: str) -> list[FaceRecord]:
        check_split(self.name, split, self.splits())
        if split in ("train", "test"):
            records = self._read_attr(split)
        elif self.attr_file("test").exists():
            records = [r for r in self._read_attr("test") if r.attributes[split]]
            problems = self.cross_check(split, records)
            if problems and self.strict_subsets:
                raise AnnotationError(self.subset_file(split), None, "; ".join(problems))
        else:
            records = self._read_official_subset(split)
        for r in records:
            r.subsets = r.subsets | {split}
        return records

    def cross_check(self, subset: str, records: list[FaceRecord] | None = None) -> list[str]:
        """Problems found comparing the attribute-built ``subset`` with its official list (none if absent)."""
        official_path = self.subset_file(subset)
        if not official_path.exists():
            return []
        if records is None:
            records = [r for r in self._read_attr("test") if r.attributes[subset]]
        ours = Counter(face_key(r.image.relative_to(self.images_dir), r.points) for r in records)
        official = Counter(face_key(r.image, r.points) for r in read_list(official_path, with_attributes=False))
        if ours == official:
            return []
        extra, missing = ours - official, official - ours
        return [
            f"{subset}: attribute column gives {sum(ours.values())} faces, {official_path.name} lists "
            f"{sum(official.values())}; {sum(missing.values())} listed faces lack the attribute "
            f"(e.g. {next(iter(missing))[0] if missing else '-'}), {sum(extra.values())} flagged faces are not listed "
            f"(e.g. {next(iter(extra))[0] if extra else '-'})"
        ]

    def _read_attr(self, split: str) -> list[FaceRecord]:
        """The parsed rect_attr file (parsed once per source while unchanged; copies handed out)."""
        path = self.attr_file(split)
        if not path.exists():
            raise DatasetNotFoundError(self.name, path, WFLW_LAYOUT_DOC, WFLW_URL)
        stamp = file_stamp(path)
        if self._parsed.get(split, (None,))[0] != stamp:
            self._parsed[split] = (stamp, [self._absolute(r) for r in read_list(path, with_attributes=True)])
        return [replace(r) for r in self._parsed[split][1]]

    def _read_official_subset(self, subset: str) -> list[FaceRecord]:
        path = self.subset_file(subset)
        if not path.exists():
            raise DatasetNotFoundError(self.name, self.attr_file("test"), WFLW_LAYOUT_DOC, WFLW_URL)
        return [self._absolute(r) for r in read_list(path, with_attributes=False)]

    def _absolute(self, record: FaceRecord) -> FaceRecord:
        record.image = self.images_dir / record.image
        return record
