"""Box-restricted morphology gives exactly the voxels of the whole-volume distance transform."""

import numpy as np
import pytest
from scipy import ndimage

from ketamine_dti.anat.morphology import (
    bounding_box,
    depth_mm,
    dilate_mm,
    erode_mm,
    largest_component,
)


def _masks(n: int):
    rng = np.random.default_rng(0)
    for trial in range(n):
        shape = tuple(int(v) for v in rng.integers(10, 40, 3))
        mask = ndimage.gaussian_filter(rng.normal(size=shape), 2) > rng.uniform(0.0, 0.15)
        if trial % 4 == 0:
            mask[:, :, 0] = True  # touches the array's edge
        yield mask, tuple(rng.uniform(0.7, 5.0, 3)), float(rng.uniform(0.5, 9.0))


@pytest.mark.parametrize("case", list(_masks(24)), ids=lambda c: f"r{c[2]:.1f}")
def test_box_morphology_equals_the_whole_volume_transform(case):
    mask, spacing, radius = case
    whole_dilation = ndimage.distance_transform_edt(~mask, sampling=spacing) <= radius
    whole_erosion = ndimage.distance_transform_edt(mask, sampling=spacing) > radius
    np.testing.assert_array_equal(dilate_mm(mask, radius, spacing), whole_dilation)
    np.testing.assert_array_equal(erode_mm(mask, radius, spacing), whole_erosion)
    # depth: the array's edge counts as outside (the whole volume padded by one layer)
    whole_depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)
    np.testing.assert_array_equal(depth_mm(mask, spacing), whole_depth[1:-1, 1:-1, 1:-1])


@pytest.mark.parametrize("case", list(_masks(8)), ids=lambda c: f"r{c[2]:.1f}")
def test_bounding_box_and_largest_component_match_their_definitions(case):
    mask = case[0] & (np.random.default_rng(1).random(case[0].shape) < 0.7)  # many components
    inside = np.argwhere(mask)
    lower = np.maximum(inside.min(axis=0) - 2, 0)
    upper = np.minimum(inside.max(axis=0) + 3, mask.shape)
    expected = tuple(slice(lo, hi) for lo, hi in zip(lower, upper, strict=True))
    assert bounding_box(mask, 2) == expected
    labels, n = ndimage.label(mask)
    sizes = [(labels == i).sum() for i in range(1, n + 1)]
    np.testing.assert_array_equal(largest_component(mask), labels == 1 + int(np.argmax(sizes)))


def test_bounding_box_grows_by_the_margin_and_stops_at_the_edge():
    mask = np.zeros((10, 12, 14), bool)
    mask[2:4, 5, 0] = True
    assert bounding_box(mask, 3) == (slice(0, 7), slice(2, 9), slice(0, 4))
    assert bounding_box(mask, (0, 1, 2)) == (slice(2, 4), slice(4, 7), slice(0, 3))
    assert bounding_box(np.zeros((3, 3, 3), bool)) is None
    empty = np.zeros((5, 5, 5), bool)
    assert not dilate_mm(empty, 3.0, (1, 1, 1)).any()
    assert not erode_mm(empty, 3.0, (1, 1, 1)).any()
    assert not depth_mm(empty, (1, 1, 1)).any()
