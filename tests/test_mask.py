"""DWI brain mask of a known phantom."""

from __future__ import annotations

import numpy as np
import pytest

from ketamine_dti.dwi.mask import brain_mask


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_mask_of_known_phantom():
    """A noisy ellipsoid 'brain' with a dark ventricle and a detached bright blob (an eye)."""
    rng = np.random.default_rng(0)
    shape = (48, 56, 44)
    grid = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(float)
    centre = np.array([23.5, 27.5, 21.5])
    r = np.sqrt(sum(((grid[i] - centre[i]) / s) ** 2 for i, s in enumerate((17, 21, 15))))
    brain = r < 1
    ventricle = np.sqrt(sum(((grid[i] - centre[i]) / s) ** 2 for i, s in enumerate((3, 6, 3)))) < 1
    eye = np.sqrt(sum((grid[i] - c) ** 2 for i, c in enumerate((23.5, 53.0, 10.0)))) < 2.5
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
