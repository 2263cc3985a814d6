"""DWI brain mask of a known phantom."""

from __future__ import annotations

import numpy as np
import pytest

from ketamine_dti.dwi.mask import brain_mask


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _ellipsoid(grid: np.ndarray, centre, radii) -> np.ndarray:
    return sum(((grid[i] - centre[i]) / r) ** 2 for i, r in enumerate(radii)) < 1


def test_mask_of_known_phantom():
    """A noisy ellipsoid 'brain' with a dark ventricle and a detached bright blob (an eye)."""
    rng = np.random.default_rng(0)
    shape = (48, 56, 44)
    grid = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(float)
    centre = np.array([23.5, 27.5, 21.5])
    brain = _ellipsoid(grid, centre, (17, 21, 15))
    ventricle = _ellipsoid(grid, centre, (3, 6, 3))
    eye = _ellipsoid(grid, (23.5, 53.0, 10.0), (2.5, 2.5, 2.5))
    b0 = np.where(brain, 400.0, 0.0)
    b0[ventricle] = 150.0  # darker than tissue, but brain
    b0[eye] = 500.0
    b0 = np.abs(b0 + rng.normal(0, 25, shape))  # magnitude noise in the background too
    mask = brain_mask(b0, (4.0, 4.0, 4.0))
    assert _dice(mask, brain) > 0.95
    assert mask[ventricle].all()  # holes filled
    assert not mask[eye].any()  # islands dropped


def test_mask_rejects_empty_and_wrong_shape():
    with pytest.raises(ValueError, match="empty"):
        brain_mask(np.zeros((8, 8, 8)), (2, 2, 2))
    with pytest.raises(ValueError, match="3-D"):
        brain_mask(np.ones((8, 8, 8, 2)), (2, 2, 2))


def test_a_ventricle_open_to_the_outside_is_filled_on_any_axis_order():
    """A dark channel from a ventricle to the brain's surface is no 3-D hole; it is one in the
    slices across the channel, so slice-wise filling keeps the ventricle in the mask."""
    rng = np.random.default_rng(1)
    shape = (40, 48, 36)
    grid = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(float)
    centre = np.array([19.5, 23.5, 17.5])
    brain = _ellipsoid(grid, centre, (14, 18, 12))
    ventricle = _ellipsoid(grid, centre, (4, 7, 4))
    channel = (np.abs(grid[0] - centre[0]) < 2.5) & (np.abs(grid[1] - centre[1]) < 2.5)
    channel &= grid[2] < centre[2]  # down to the inferior surface
    dark = ventricle | (channel & brain)
    b0 = np.where(brain, 400.0, 0.0)
    b0[dark] = 10.0  # as dark as air: Otsu cuts it out
    b0 = np.abs(b0 + rng.normal(0, 20, shape))
    for order in ((0, 1, 2), (2, 0, 1)):
        mask = brain_mask(np.transpose(b0, order), (4.0, 4.0, 4.0))
        assert mask[np.transpose(ventricle, order)].mean() > 0.95
        assert _dice(mask, np.transpose(brain, order)) > 0.95
