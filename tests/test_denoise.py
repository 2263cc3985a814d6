"""MP-PCA: noise level on pure noise, denoising power against DIPY, masks and bad samples."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ketamine_dti.dwi.denoise import PATCH_STRIDE, _patch_starts, _rows_by_colour, mppca

SIGMA = 10.0  # planted Gaussian noise SD, signal units
N_VOLUMES = 40


def low_rank_signal(shape=(14, 14, 14), n_volumes=N_VOLUMES, rank=3, seed=0):
    """Smooth spatial maps times a few volume profiles: locally low-rank, like DWI (units ~100)."""
    rng = np.random.default_rng(seed)
    maps = [np.full(shape, 3.0)]
    maps += [ndimage.gaussian_filter(rng.normal(size=shape), 2.0) * 8.0 for _ in range(rank - 1)]
    profiles = rng.uniform(0.5, 1.5, size=(rank, n_volumes))
    return (np.stack(maps, axis=-1) @ profiles * 100.0).astype(np.float32)


@pytest.mark.parametrize("patch_radius", [2, 1])  # 125 voxels > 40 volumes, and 27 < 40
def test_sigma_of_pure_noise_is_the_planted_one(patch_radius):
    rng = np.random.default_rng(1)
    noise = rng.normal(100.0, SIGMA, size=(12, 12, 12, N_VOLUMES)).astype(np.float32)

    denoised, sigma = mppca(noise, patch_radius=patch_radius, n_threads=1)

    assert abs(np.median(sigma) / SIGMA - 1) < 0.05
    # no structure to keep: what is left is (close to) the constant mean
    assert np.std(denoised) < 0.5 * np.std(noise)


def test_low_rank_signal_is_denoised_at_least_as_well_as_dipy():
    from dipy.denoise.localpca import mppca as dipy_mppca

    clean = low_rank_signal()
    rng = np.random.default_rng(2)
    noisy = clean + rng.normal(0.0, SIGMA, clean.shape).astype(np.float32)

    ours, sigma = mppca(noisy, n_threads=1)
    theirs = dipy_mppca(noisy, patch_radius=2)

    def rmse(x):
        return np.sqrt(np.mean((x - clean) ** 2))

    our_gain = rmse(noisy) / rmse(ours)
    dipy_gain = rmse(noisy) / rmse(theirs)
    assert our_gain >= dipy_gain, (our_gain, dipy_gain)
    assert our_gain > 2.0
    assert abs(np.median(sigma) / SIGMA - 1) < 0.05


def test_result_is_deterministic_for_any_thread_count_and_keeps_dtype():
    clean = low_rank_signal(shape=(13, 11, 15), seed=3)
    rng = np.random.default_rng(4)
    noisy = (clean + rng.normal(0.0, SIGMA, clean.shape)).astype(np.float64)

    one = mppca(noisy, n_threads=1)
    two = mppca(noisy, n_threads=2)
    again = mppca(noisy, n_threads=1)
    for a, b, c in zip(one, two, again, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert one[0].dtype == np.float64 and one[1].dtype == np.float64
    assert one[0].shape == noisy.shape and one[1].shape == noisy.shape[:3]


def test_rows_run_together_never_overlap():
    for size, width in ((60, 5), (68, 5), (9, 7), (5, 5), (12, 3)):
        starts = _patch_starts(size, width, min(PATCH_STRIDE, width))  # as mppca does
        assert starts[0] == 0 and starts[-1] == size - width  # the whole axis is covered
        assert np.all(np.diff(starts) <= width)
        for group in _rows_by_colour(starts, width):
            group_starts = starts[group[group >= 0]]
            assert np.all(np.diff(group_starts) >= width)


def test_mask_nan_and_zero_voxels():
    clean = low_rank_signal(shape=(12, 12, 12), seed=5)
    rng = np.random.default_rng(6)
    noisy = clean + rng.normal(0.0, SIGMA, clean.shape).astype(np.float32)
    noisy[:3] = 0.0  # a zero-filled slab, as outside a skull-stripped head
    noisy[6, 6, 6, 7] = np.nan
    mask = np.zeros(clean.shape[:3], dtype=bool)
    mask[1:10, 2:10, 2:10] = True

    denoised, sigma = mppca(noisy, mask=mask, n_threads=1)

    assert np.isnan(denoised[6, 6, 6, 7])  # a missing sample stays missing
    finite = np.isfinite(noisy)
    assert np.all(np.isfinite(denoised[finite]))
    np.testing.assert_array_equal(denoised[~mask], noisy[~mask])  # outside: untouched
    assert np.all(np.isnan(sigma[~mask])) and np.all(np.isfinite(sigma[mask]))
    assert np.all(np.abs(denoised[1:3][mask[1:3]]) < 0.05 * SIGMA)  # zeros stay ~zero
    inner = mask.copy()
    inner[:5] = False
    assert abs(np.median(sigma[inner]) / SIGMA - 1) < 0.1
    assert np.sqrt(np.nanmean((denoised[inner] - clean[inner]) ** 2)) < 0.6 * SIGMA

    untouched, no_sigma = mppca(noisy, mask=np.zeros_like(mask), n_threads=1)
    np.testing.assert_array_equal(untouched, noisy)
    assert np.all(np.isnan(no_sigma))


def test_thin_volumes_and_bad_arguments():
    clean = low_rank_signal(shape=(3, 12, 12), seed=7)  # thinner than a patch along x
    rng = np.random.default_rng(8)
    noisy = clean + rng.normal(0.0, SIGMA, clean.shape).astype(np.float32)
    denoised, sigma = mppca(noisy, n_threads=1)
    assert np.sqrt(np.mean((denoised - clean) ** 2)) < 0.8 * SIGMA
    assert np.all(np.isfinite(sigma))

    with pytest.raises(ValueError, match="4-D"):
        mppca(noisy[..., 0])
    with pytest.raises(ValueError, match="mask shape"):
        mppca(noisy, mask=np.ones((2, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="patch_radius"):
        mppca(noisy, patch_radius=0)
    with pytest.raises(ValueError, match="n_threads"):
        mppca(noisy, n_threads=0)
