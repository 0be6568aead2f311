"""HRNet-style 300W split CSVs (HRNet-Facial-Landmark-Detection ``data/300w/*.csv``).

One header line, then one face per row::

    image_name,scale,center_w,center_h,original_0_x,original_0_y,...,original_67_y

``image_name`` is relative to the 300W root (``ibug/image_99.jpg``); the
points are the raw 1-based .pts values and the centre was computed from
them, so both get minus one. ``scale * 200`` is the side of HRNet's square
face box, which becomes the record's box.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from flmk.data.records import AnnotationError, DatasetNotFoundError, FaceRecord, check_points
from flmk.data.sources.common import check_split, require
from flmk.layouts import get_layout

HRNET_CSVS: dict[str, str] = {
    "train": "face_landmarks_300w_train.csv",
    "common": "face_landmarks_300w_valid_common.csv",
    "challenging": "face_landmarks_300w_valid_challenge.csv",
    "full": "face_landmarks_300w_valid.csv",
    "private": "face_landmarks_300w_test.csv",
}

CSV_LAYOUT_DOC = """\
  <csv_dir>/face_landmarks_300w_{train,valid_common,valid_challenge,valid,test}.csv
  <root>/<image_name> for every row (afw/, helen/, lfpw/, ibug/, Test/01_Indoor, ...)"""

CSV_HINT = "Point data.csv_dir at the folder of the CSVs, e.g. `python -m flmk.train data=300w_csv data.csv_dir=/path/to/csvs`."
HRNET_BOX_UNIT = 200.0  # HRNet: scale = box side / 200


class W300CsvSource:
    """300W read from HRNet's split CSVs; splits train / common / challenging / full / private."""

    def __init__(
        self,
        root: str | Path,
        csv_dir: str | Path | None = None,
        splits: dict[str, str] | None = None,
        layout: str = "68",
        name: str = "300W",
        how_to_obtain: str = "images: https://ibug.doc.ic.ac.uk/resources/300-W/; CSVs: "
        "https://github.com/HRNet/HRNet-Facial-Landmark-Detection (data/300w)",
    ):
        self.root = Path(root).expanduser()
        self.csv_dir = Path(csv_dir).expanduser() if csv_dir is not None else self.root
        self.split_files = dict(splits or HRNET_CSVS)
        self.optional_splits = ["private"] if "private" in self.split_files else []  # the private test set's CSV
        self.layout = str(layout)
        self.name = name
        self.how_to_obtain = how_to_obtain

    def splits(self) -> list[str]:
        return list(self.split_files)

    def read(self, split: str) -> list[FaceRecord]:
        check_split(self.name, split, self.splits())
        require(self.root, self.name, CSV_LAYOUT_DOC, self.how_to_obtain)
        path = self.csv_dir / self.split_files[split]
        if not path.exists():
            raise DatasetNotFoundError(self.name, path, CSV_LAYOUT_DOC, self.how_to_obtain, hint=CSV_HINT)
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows or rows[0][:4] != ["image_name", "scale", "center_w", "center_h"]:
            raise AnnotationError(path, 1, "expected the header image_name,scale,center_w,center_h,original_0_x,...")
        records = []
        for lineno, row in enumerate(rows[1:], start=2):
            try:
                values = np.array(row[1:], dtype=np.float64)
            except ValueError:
                raise AnnotationError(path, lineno, "non-numeric scale, centre or point value") from None
            if len(values) < 5 or (len(values) - 3) % 2:
                raise AnnotationError(path, lineno, f"expected scale, center_w, center_h and x/y pairs, got {len(values)} numbers")
            points = check_points(values[3:].reshape(-1, 2), get_layout(self.layout).num_points, path, lineno) - 1.0
            if not np.isfinite(values[:3]).all() or values[0] <= 0:
                raise AnnotationError(path, lineno, f"scale must be a positive number and the centre finite, got {values[:3].tolist()}")
            scale, centre = values[0], values[1:3] - 1.0
            half = scale * HRNET_BOX_UNIT / 2
            records.append(
                FaceRecord(
                    image=self.root / row[0],
                    points=points,
                    layout=self.layout,
                    box=np.concatenate([centre - half, centre + half]),
                    attributes={"hrnet_scale": float(scale), "hrnet_center": centre},
                    subsets=frozenset({split}),
                    source=f"{path}:{lineno}",
                )
            )
        return records
