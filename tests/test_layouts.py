import numpy as np
import pytest

from flmk.layouts import LAYOUTS, get_layout


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_flip_is_an_involution(name):
    flip = get_layout(name).flip_index
    assert np.array_equal(flip[flip], np.arange(len(flip)))


@pytest.mark.parametrize("name, a, b", [("68", 36, 45), ("98", 60, 72), ("29", 8, 9), ("19", 6, 11), ("7", 0, 3)])
def test_flip_swaps_outer_eye_corners(name, a, b):
    layout = get_layout(name)
    assert layout.flip_index[a] == b and layout.flip_index[b] == a
    assert layout.ocular == (a, b)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_groups_partition_the_points(name):
    layout = get_layout(name)
    idx = np.concatenate([np.asarray(g) for g in layout.groups.values()])
    assert sorted(idx.tolist()) == list(range(layout.num_points))
    assert (layout.group_of() >= 0).all()


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_flip_maps_groups_onto_mirror_groups(name):
    layout = get_layout(name)
    for group, idx in layout.groups.items():
        mirrored = set(layout.flip_index[list(idx)].tolist())
        partner = group.replace("right", "#").replace("left", "right").replace("#", "left")
        assert mirrored == set(layout.groups[partner]), group


def test_talking_face_subset_points_into_68():
    tf = get_layout("7")
    assert tf.parent == "68" and tf.parent_indices == (36, 39, 42, 45, 30, 48, 54)
    parent_flip = get_layout("68").flip_index
    # flipping then taking the subset == taking the subset then flipping within it
    sub = np.asarray(tf.parent_indices)
    assert np.array_equal(parent_flip[sub], sub[tf.flip_index])


def test_unknown_layout_names_the_known_ones():
    with pytest.raises(KeyError, match="68"):
        get_layout("67")
