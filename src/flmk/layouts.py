"""Landmark schemes: the one place that knows point indices.

Every reader, flip, metric and structured model (SRN's hierarchy) reads a
:class:`Layout` from :data:`LAYOUTS`; nothing else hard-codes an index.
Indices are 0-based. Values follow DESIGN.md and IMPLEMENTATION_NOTES.md §1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _perm(n: int, pairs: list[tuple[int, int]]) -> tuple[int, ...]:
    perm = list(range(n))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


@dataclass(frozen=True)
class Layout:
    """A landmark scheme.

    ``flip[i]`` is the index point ``i`` becomes after a horizontal flip.
    ``pupils`` holds two index groups whose centroids are the pupils.
    ``parent``/``parent_indices`` describe a subset of another layout.
    """

    name: str
    num_points: int
    flip: tuple[int, ...]
    ocular: tuple[int, int]
    pupils: tuple[tuple[int, ...], tuple[int, ...]]
    groups: dict[str, tuple[int, ...]]
    has_box_normaliser: bool = True
    parent: str | None = None
    parent_indices: tuple[int, ...] | None = None
    notes: str = ""
    _flip_array: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        flip = np.asarray(self.flip, dtype=np.int64)
        if sorted(flip.tolist()) != list(range(self.num_points)):
            raise ValueError(f"layout {self.name}: flip is not a permutation of 0..{self.num_points - 1}")
        object.__setattr__(self, "_flip_array", flip)

    @property
    def flip_index(self) -> np.ndarray:
        return self._flip_array

    def group_of(self) -> np.ndarray:
        """Group id of every point (order of ``groups``); -1 where a point is in no group."""
        out = np.full(self.num_points, -1, dtype=np.int64)
        for gid, idx in enumerate(self.groups.values()):
            out[list(idx)] = gid
        return out


def _r(a: int, b: int) -> tuple[int, ...]:
    """Inclusive index range."""
    return tuple(range(a, b + 1))


LAYOUTS: dict[str, Layout] = {}


def register(layout: Layout) -> Layout:
    LAYOUTS[layout.name] = layout
    return layout


IBUG68 = register(
    Layout(
        name="68",
        num_points=68,
        flip=_perm(
            68,
            [(0, 16), (1, 15), (2, 14), (3, 13), (4, 12), (5, 11), (6, 10), (7, 9),
             (17, 26), (18, 25), (19, 24), (20, 23), (21, 22), (31, 35), (32, 34),
             (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
             (48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)],
        ),
        ocular=(36, 45),
        pupils=(_r(36, 41), _r(42, 47)),
        groups={
            "jaw": _r(0, 16),
            "right_brow": _r(17, 21),
            "left_brow": _r(22, 26),
            "nose": _r(27, 35),
            "right_eye": _r(36, 41),
            "left_eye": _r(42, 47),
            "mouth": _r(48, 67),
        },
        notes="iBUG 68-point markup (300W, 300VW, Menpo, COFW-68). Right/left are the subject's.",
    )
)

WFLW98 = register(
    Layout(
        name="98",
        num_points=98,
        flip=_perm(
            98,
            [(i, 32 - i) for i in range(16)]
            + [(33, 46), (34, 45), (35, 44), (36, 43), (37, 42), (38, 50), (39, 49), (40, 48), (41, 47),
               (55, 59), (56, 58), (60, 72), (61, 71), (62, 70), (63, 69), (64, 68), (65, 75), (66, 74),
               (67, 73), (76, 82), (77, 81), (78, 80), (83, 87), (84, 86), (88, 92), (89, 91), (93, 95),
               (96, 97)],
        ),
        ocular=(60, 72),
        pupils=((96,), (97,)),
        groups={
            "jaw": _r(0, 32),
            "right_brow": _r(33, 41),
            "left_brow": _r(42, 50),
            "nose": _r(51, 59),
            "right_eye": _r(60, 67) + (96,),
            "left_eye": _r(68, 75) + (97,),
            "mouth": _r(76, 95),
        },
        notes="WFLW 98-point markup.",
    )
)

COFW29 = register(
    Layout(
        name="29",
        num_points=29,
        flip=_perm(29, [(0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (10, 11), (12, 14), (13, 15),
                        (16, 17), (18, 19), (22, 23)]),
        ocular=(8, 9),
        pupils=((16,), (17,)),
        groups={
            "brows": _r(0, 7),
            "eyes": _r(8, 17),
            "nose": _r(18, 21),
            "mouth": _r(22, 27),
            "chin": (28,),
        },
        notes="COFW 29-point markup (RCPR). Inter-pupil ||p16-p17|| and inter-ocular ||p8-p9|| are both available.",
    )
)

AFLW19 = register(
    Layout(
        name="19",
        num_points=19,
        flip=_perm(19, [(0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9), (12, 14), (15, 17)]),
        ocular=(6, 11),
        pupils=((7,), (10,)),
        groups={
            "brows": _r(0, 5),
            "eyes": _r(6, 11),
            "nose": _r(12, 14),
            "mouth": _r(15, 17),
            "chin": (18,),
        },
        notes="AFLW 21-point markup without the two ears. The papers' normaliser is the face box size sqrt(w*h).",
    )
)

_TF7 = (36, 39, 42, 45, 30, 48, 54)
TF7 = register(
    Layout(
        name="7",
        num_points=7,
        flip=_perm(7, [(0, 3), (1, 2), (5, 6)]),
        ocular=(0, 3),
        pupils=((0, 1), (2, 3)),
        groups={"eyes": (0, 1, 2, 3), "nose": (4,), "mouth": (5, 6)},
        parent="68",
        parent_indices=_TF7,
        notes=(
            "7 points shared by 68-point markups for the Talking Face protocol: eye corners, nose tip, "
            "mouth corners (iBUG 36, 39, 42, 45, 30, 48, 54). [assume] The exact TSTN subset is unverified."
        ),
    )
)


def get_layout(name: str | int | Layout) -> Layout:
    if isinstance(name, Layout):
        return name
    key = str(name)
    if key not in LAYOUTS:
        raise KeyError(f"unknown landmark layout {key!r}; known layouts: {', '.join(LAYOUTS)}")
    return LAYOUTS[key]
