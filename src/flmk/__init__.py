"""flmk: occlusion-robust facial landmark detection (ODN, AODN, CCDN, HM1D, SRN)."""

import os

# albumentations asks the network for its latest version at import; flmk runs offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"


def __getattr__(name: str):
    """``from flmk import Landmarker`` without importing torch for ``import flmk`` (the ONNX path needs none)."""
    if name == "Landmarker":
        from flmk.landmarker import Landmarker

        return Landmarker
    raise AttributeError(f"module 'flmk' has no attribute {name!r}")
