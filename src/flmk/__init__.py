"""flmk: occlusion-robust facial landmark detection (ODN, AODN, CCDN, HM1D, SRN)."""

__version__ = "0.1.0"
