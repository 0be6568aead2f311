"""A hand-built 3D face of the 68 iBUG points, its identity and expression modes, pose and projection.

Coordinates of the model: x to the image right, y down, z towards the camera,
in "face units" (the frontal jaw, point 0 to point 16, is one unit wide).
Only the subject's right half and the midline are written out; the left half is
its mirror through the layout's flip permutation (IMPLEMENTATION_NOTES §1.1:
"right" is the subject's right, drawn on the image left).

A face is ``MEAN + identity modes + expression modes`` (PCA-like linear modes,
each a (68, 3) displacement), rotated by yaw / pitch / roll and projected with
a weak-perspective camera ``p = s · R[:2] X + t``. Hair, forehead and neck are
extra vertices derived from the landmarks so that they follow pose and identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flmk.layouts import get_layout

_IBUG = get_layout("68")
_FLIP = _IBUG.flip_index

# index: (x, y, z) with x, y in a 0..1 frontal box and z in the same unit (0 = eye-corner plane).
_RIGHT_HALF_AND_MIDLINE: dict[int, tuple[float, float, float]] = {
    # jaw 0-8 (0 = right ear level, 8 = chin)
    0: (0.00, 0.20, -0.40), 1: (0.01, 0.33, -0.38), 2: (0.03, 0.46, -0.34), 3: (0.06, 0.58, -0.29),
    4: (0.11, 0.70, -0.22), 5: (0.18, 0.81, -0.15), 6: (0.27, 0.89, -0.08), 7: (0.38, 0.95, -0.02),
    8: (0.50, 0.97, 0.02),
    # right brow 17-21, outer to inner
    17: (0.07, 0.10, -0.12), 18: (0.13, 0.05, -0.04), 19: (0.21, 0.04, 0.01), 20: (0.29, 0.05, 0.04),
    21: (0.37, 0.08, 0.05),
    # nose bridge 27-30 and lower nose 31-33
    27: (0.50, 0.18, 0.05), 28: (0.50, 0.27, 0.09), 29: (0.50, 0.35, 0.13), 30: (0.50, 0.43, 0.17),
    31: (0.41, 0.48, 0.06), 32: (0.45, 0.50, 0.09), 33: (0.50, 0.51, 0.11),
    # right eye 36-41: outer corner, upper lid, inner corner, lower lid
    36: (0.17, 0.20, -0.06), 37: (0.22, 0.17, -0.02), 38: (0.28, 0.17, -0.01), 39: (0.34, 0.205, -0.01),
    40: (0.28, 0.22, -0.01), 41: (0.22, 0.22, -0.02),
    # outer lip: right corner 48, upper 49-51, lower 57-59
    48: (0.33, 0.68, 0.02), 49: (0.39, 0.64, 0.07), 50: (0.45, 0.62, 0.10), 51: (0.50, 0.63, 0.11),
    57: (0.50, 0.77, 0.095), 58: (0.45, 0.76, 0.09), 59: (0.39, 0.73, 0.07),
    # inner lip: right corner 60, upper 61-62, lower 66-67
    60: (0.35, 0.68, 0.03), 61: (0.45, 0.665, 0.08), 62: (0.50, 0.67, 0.09),
    66: (0.50, 0.675, 0.085), 67: (0.45, 0.675, 0.075),
}


def _mean_shape() -> np.ndarray:
    shape = np.full((68, 3), np.nan)
    idx = np.array(list(_RIGHT_HALF_AND_MIDLINE))
    shape[idx] = np.array(list(_RIGHT_HALF_AND_MIDLINE.values()))
    shape[_FLIP[idx]] = shape[idx] * [-1, 1, 1] + [1, 0, 0]  # mirror x about 0.5
    assert not np.isnan(shape).any()
    return shape - shape.mean(0)


MEAN_SHAPE = _mean_shape()
"""(68, 3) mean face, centred on its centroid."""

_G = {k: np.array(v) for k, v in _IBUG.groups.items()}
_JAW, _MOUTH = _G["jaw"], _G["mouth"]
_BROWS = np.concatenate([_G["right_brow"], _G["left_brow"]])
_EYES = (_G["right_eye"], _G["left_eye"])
_NOSE_LOW = np.arange(31, 36)  # nostrils and columella (§1.1 "lower nose")


def _in(indices: np.ndarray) -> np.ndarray:
    w = np.zeros(68)
    w[indices] = 1.0
    return w


def _identity_modes() -> tuple[np.ndarray, np.ndarray]:
    """PCA-like identity modes (K, 68, 3) and their standard deviations (K,)."""
    m = MEAN_SHAPE
    x, y, z = m.T
    zero = np.zeros(68)
    modes, sd = [], []

    def add(dx, dy, dz, s):
        modes.append(np.stack([dx, dy, dz], 1))
        sd.append(s)

    jaw = _in(_JAW)
    add(x * (0.3 + 0.7 * jaw), zero, zero, 0.08)                       # face width
    add(zero, np.clip(y - m[33, 1], 0, None), zero, 0.12)              # lower-face length
    square = jaw * np.clip(1 - np.abs(np.abs(np.arange(68) - 8) - 4.5) / 3, 0, 1)
    add(np.sign(x) * square, zero, zero, 0.03)                         # square vs. round jaw
    eyes = _in(np.r_[_EYES])
    add(np.sign(x) * eyes, zero, zero, 0.02)                           # eye spacing
    eye_scale = np.zeros((68, 3))                                      # eye size (both eyes alike)
    for e in _EYES:
        eye_scale[e] = m[e] - m[e].mean(0)
    add(eye_scale[:, 0], eye_scale[:, 1], zero, 0.15)
    nose_low = _in(np.r_[30, _NOSE_LOW])
    add(zero, nose_low, zero, 0.03)                                    # nose length
    add((x - m[33, 0]) * _in(_NOSE_LOW), zero, zero, 0.15)             # nose width
    c = m[_MOUTH].mean(0)
    add((x - c[0]) * _in(_MOUTH), zero, zero, 0.12)                    # mouth width
    add(zero, -_in(np.arange(49, 54)) + _in(np.arange(55, 60)), zero, 0.012)  # lip thickness
    add(zero, -_in(_BROWS), zero, 0.02)                                # brow height
    add(zero, zero, _in(np.arange(27, 36)) * np.clip(z, 0, None), 0.4)     # nose depth (relative)
    add(zero, zero, z, 0.15)                                           # face depth
    return np.stack(modes), np.array(sd)


IDENTITY_MODES, IDENTITY_SD = _identity_modes()


def _expression_modes() -> dict[str, np.ndarray]:
    """Named (68, 3) expression displacements for a coefficient of 1."""
    m = MEAN_SHAPE
    zero = np.zeros((68, 3))
    mouth_open = zero.copy()
    mouth_open[np.r_[55:60, 65:68], 1] = 0.12
    chin_weight = np.cos(np.clip(np.abs(np.arange(17) - 8) / 5, 0, 1) * np.pi / 2) ** 2
    mouth_open[_JAW, 1] = 0.10 * chin_weight
    mouth_open[np.r_[61:64], 1] = -0.01
    smile = zero.copy()
    corners = np.array([48, 54, 60, 64])
    smile[corners, 0] = np.sign(m[corners, 0]) * 0.03
    smile[corners, 1] = -0.035
    smile[[49, 53], 1] = -0.01
    modes = {"mouth_open": mouth_open, "smile": smile}
    for name, eye in zip(("right_eye_closed", "left_eye_closed"), _EYES):
        closed = zero.copy()
        upper, lower = eye[[1, 2]], eye[[5, 4]]  # 37,38 over 41,40 (and 43,44 over 47,46)
        closed[upper, 1] = m[lower, 1] - m[upper, 1]
        modes[name] = closed
    raise_ = zero.copy()
    raise_[_BROWS, 1] = -0.04
    modes["brow_raise"] = raise_
    return modes


EXPRESSION_MODES = _expression_modes()


@dataclass(frozen=True)
class Expression:
    """Expression coefficients; 0 is neutral, eye closure 1 shuts the eye."""

    mouth_open: float = 0.0
    smile: float = 0.0
    right_eye_closed: float = 0.0
    left_eye_closed: float = 0.0
    brow_raise: float = 0.0


def sample_identity(rng: np.random.Generator, strength: float = 1.0, jitter: float = 0.006) -> np.ndarray:
    """A random neutral face (68, 3): mean + Gaussian mode coefficients + a little per-point noise."""
    coeffs = rng.standard_normal(len(IDENTITY_SD)) * IDENTITY_SD * strength
    noise = rng.standard_normal((68, 3)) * jitter
    noise = 0.5 * noise + 0.5 * noise[_FLIP] * [-1, 1, 1]  # mostly symmetric
    return MEAN_SHAPE + np.einsum("k,kij->ij", coeffs, IDENTITY_MODES) + noise


def sample_expression(rng: np.random.Generator, p_open: float = 0.4, p_blink: float = 0.1) -> Expression:
    blink = rng.random() < p_blink
    both = rng.random() < 0.7
    r = rng.uniform(0.6, 1.0) if blink else rng.uniform(0.0, 0.3)
    return Expression(
        mouth_open=rng.uniform(0.1, 1.0) if rng.random() < p_open else 0.0,
        smile=rng.uniform(-0.4, 1.0),
        right_eye_closed=r,
        left_eye_closed=r if both else rng.uniform(0.0, 0.3),
        brow_raise=rng.uniform(-0.5, 1.0),
    )


def apply_expression(shape: np.ndarray, expression: Expression) -> np.ndarray:
    out = shape.copy()
    for name, mode in EXPRESSION_MODES.items():
        out += getattr(expression, name) * mode
    return out


def extra_vertices(shape: np.ndarray) -> dict[str, np.ndarray]:
    """Non-landmark vertices that follow the face: forehead, hair outline and neck (each (k, 3))."""
    brows = shape[_BROWS]
    up = np.array([0.0, -1.0, 0.0])
    forehead = np.concatenate([brows + up * 0.10 + [0, 0, -0.03], brows[[0, 2, 4, 5, 7, 9]] + up * 0.24 + [0, 0, -0.10]])
    forehead[:5, 0] -= 0.02 * np.sign(forehead[:5, 0])
    side = shape[[0, 1, 2, 14, 15, 16]] * [1.08, 1, 1] + [0, 0, -0.08]
    hair = np.concatenate([forehead[10:] + up * 0.12 + [0, 0, -0.05], forehead[10:] * [1.15, 1, 1] + up * 0.05, side])
    chin = shape[[5, 11]]
    neck = np.concatenate([chin * [0.7, 1, 1] + [0, -0.05, -0.15], chin * [0.7, 1, 1] + [0, 0.5, -0.3]])
    return {"forehead": forehead, "hair": hair, "neck": neck[[0, 1, 3, 2]]}


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) Rx(pitch) Ry(yaw), angles in degrees."""
    a, b, c = np.deg2rad([yaw, pitch, roll])
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ rx @ ry


def project(vertices: np.ndarray, rot: np.ndarray, scale: float, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weak perspective: image points ``scale · (R X)[:2] + shift`` (k, 2) and depth ``(R X)[2]`` (k,)."""
    rotated = vertices @ rot.T
    return scale * rotated[:, :2] + shift, rotated[:, 2]
