"""Where the shared real-data fixtures are (../shared/fixtures/real, or $FLMK_SHARED/fixtures/real).

They are third-party research data: tests read them in place, never copy them into the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_dir() -> Path:
    env = os.environ.get("FLMK_SHARED")
    return Path(env) if env else (Path(__file__).resolve().parents[1] / ".." / "shared").resolve()


REAL = shared_dir() / "fixtures" / "real"

requires_real = pytest.mark.skipif(
    not REAL.is_dir(), reason=f"real-data fixtures not found at {REAL} (set FLMK_SHARED to the shared folder)"
)
