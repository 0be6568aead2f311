"""Small helpers shared by the dataset readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flmk.data.records import DatasetNotFoundError


def require(path: Path, name: str, expected_layout: str, how_to_obtain: str) -> Path:
    """Return ``path`` if it exists, else raise the one clear missing-dataset message."""
    if not path.exists():
        raise DatasetNotFoundError(name, path, expected_layout, how_to_obtain)
    return path


def file_stamp(path: Path) -> str:
    """Size and mtime of a file: what a decoded-once cache compares to know its source is unchanged."""
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns}"


def check_split(name: str, split: str, known: list[str]) -> None:
    if split not in known:
        raise KeyError(f"{name}: unknown split {split!r}; known: {', '.join(known)}")


def load_mat(path: Path, names: list[str]) -> dict[str, Any]:
    """Read variables from a MATLAB file, v7.3 (HDF5, via h5py) or older (via scipy.io).

    v7.3 arrays come back transposed to MATLAB's own (row, column) order;
    cell arrays of arrays come back as lists of numpy arrays in MATLAB order.
    """
    import h5py

    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            missing = [n for n in names if n not in f]
            if missing:
                raise KeyError(f"{path}: no variable(s) {', '.join(missing)}; found {', '.join(f.keys())}")
            return {n: _h5_value(f, f[n]) for n in names}
    from scipy.io import loadmat

    mat = loadmat(path)
    missing = [n for n in names if n not in mat]
    if missing:
        found = ", ".join(k for k in mat if not k.startswith("__"))
        raise KeyError(f"{path}: no variable(s) {', '.join(missing)}; found {found}")
    out = {}
    for n in names:
        v = mat[n]
        out[n] = [np.asarray(c) for c in v.ravel(order="F")] if v.dtype == object else v
    return out


def _h5_value(f, ds) -> Any:
    import h5py

    data = ds[()]
    if ds.dtype == h5py.ref_dtype:  # a cell array: one object reference per cell
        return [np.asarray(f[ref][()]).T for ref in data.T.ravel(order="F")]
    return np.asarray(data).T
