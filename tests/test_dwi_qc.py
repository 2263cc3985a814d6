"""The neighbouring-DWI correlation (QSIPrep's NDC): defined for every diffusion-weighted
volume, none for b0s, and lower when slices of some volumes are dropped. The phantom is built
here: a tensor ellipsoid with a fibre direction turning across x, Rician noise."""

from __future__ import annotations

import numpy as np

from ketamine_dti.dwi.qc import neighbor_correlation

SHAPE = (18, 20, 12)
N_B0 = 2
N_DIRECTIONS = 30
B_VALUE = 1000.0
NOISE_SD = 25.0  # b0 brain signal 1000


def phantom(seed: int = 0):
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(N_DIRECTIONS, 3))
    bvecs = np.vstack(
        [np.zeros((N_B0, 3)), directions / np.linalg.norm(directions, axis=1)[:, None]]
    )
    bvals = np.r_[np.zeros(N_B0), np.full(N_DIRECTIONS, B_VALUE)]
    grid = np.stack(np.indices(SHAPE), -1).astype(float)
    centre, radius = (np.array(SHAPE) - 1) / 2, (np.array(SHAPE) - 3) / 2
    mask = np.sum(((grid - centre) / radius) ** 2, axis=-1) <= 1.0
    angle = np.pi * grid[..., 0] / SHAPE[0]
    fibre = np.stack([np.cos(angle), np.sin(angle), np.zeros_like(angle)], -1)
    projection = np.einsum("xyzk,nk->xyzn", fibre, bvecs) ** 2
    adc = 0.4e-3 + 1.2e-3 * projection  # MD 0.8e-3 mm^2/s, FA ~0.6
    clean = np.where(mask, 1000.0, 0.0)[..., None] * np.exp(-bvals * adc)
    noisy = np.hypot(
        clean + rng.normal(0, NOISE_SD, clean.shape), rng.normal(0, NOISE_SD, clean.shape)
    )
    return noisy.astype(np.float32), mask, bvals, bvecs


def test_neighbouring_dwi_correlation_is_lower_for_corrupted_data():
    """Dropping 1-3 slices (signal x 0.1-0.7) in 30% of the diffusion volumes lowers the mean."""
    data, mask, bvals, bvecs = phantom()
    clean = neighbor_correlation(data, bvals, bvecs, mask)
    assert np.isnan(clean[bvals == 0]).all() and np.isfinite(clean[bvals > 0]).all()
    rng = np.random.default_rng(1)
    corrupted = data.copy()
    for volume in rng.choice(np.flatnonzero(bvals > 0), size=9, replace=False):
        for index in rng.choice(
            np.arange(2, SHAPE[2] - 2), size=rng.integers(1, 4), replace=False
        ):
            corrupted[:, :, index, volume] *= rng.uniform(0.1, 0.7)
    worse = neighbor_correlation(corrupted, bvals, bvecs, mask)
    print(f"NDC clean {np.nanmean(clean):.4f}, corrupted {np.nanmean(worse):.4f}")
    assert np.nanmean(worse) < np.nanmean(clean) - 0.01
    # antipodal b-vectors are the same measurement: flipping half of them changes nothing
    flipped = bvecs.copy()
    flipped[::2] *= -1
    np.testing.assert_allclose(neighbor_correlation(data, bvals, flipped, mask), clean)
