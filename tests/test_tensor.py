"""Tensor fit: analytic signals give their tensors back; invariance; DIPY agreement; bad voxels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ketamine_dti.dwi.tensor import N_TENSOR_PARAMS, fit_tensor

B_VALUE = 1000.0  # s/mm^2
N_DIRECTIONS = 30
N_B0 = 3


def gradient_table(n_directions: int = N_DIRECTIONS, seed: int = 0):
    """b-values (s/mm^2) and unit b-vectors: N_B0 b0 volumes then random directions."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(n_directions, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    bvecs = np.vstack([np.zeros((N_B0, 3)), directions])
    bvals = np.r_[np.zeros(N_B0), np.full(n_directions, B_VALUE)]
    return bvals, bvecs


def known_tensors(n_voxels: int, seed: int = 1):
    """Random orientations; eigenvalues (mm^2/s) spanning isotropic GM to anisotropic WM."""
    rng = np.random.default_rng(seed)
    evals = np.sort(rng.uniform(2e-4, 2.0e-3, size=(n_voxels, 3)), axis=1)[:, ::-1]
    evals[0] = 0.8e-3  # exactly isotropic
    evecs = Rotation.random(n_voxels, random_state=seed).as_matrix()
    tensors = np.einsum("nij,nj,nkj->nik", evecs, evals, evecs)
    s0 = rng.uniform(500.0, 2000.0, size=n_voxels)
    return evals, evecs, tensors, s0


def signal_of(tensors, s0, bvals, bvecs):
    """S = S0 exp(-b g^T D g), shape (n_voxels, n_volumes)."""
    adc = np.einsum("gi,nij,gj->ng", bvecs, tensors, bvecs)
    return s0[:, None] * np.exp(-bvals[None, :] * adc)


def as_volume(values):
    """(n, ...) -> (n, 1, 1, ...) so voxel rows become a 3-D grid."""
    return values.reshape((values.shape[0], 1, 1) + values.shape[1:])


@pytest.mark.parametrize("method", ["ols", "wls", "nlls"])
def test_known_tensor_is_recovered_noiselessly(method):
    bvals, bvecs = gradient_table()
    evals, evecs, tensors, s0 = known_tensors(40)
    data = as_volume(signal_of(tensors, s0, bvals, bvecs))

    fit = fit_tensor(data, bvals, bvecs, method=method, n_threads=1)

    rel = dict(rtol=1e-6, atol=0)
    np.testing.assert_allclose(fit.evals[:, 0, 0], evals, **rel)
    np.testing.assert_allclose(fit.md[:, 0, 0], evals.mean(axis=1), **rel)
    np.testing.assert_allclose(fit.ad[:, 0, 0], evals[:, 0], **rel)
    np.testing.assert_allclose(fit.rd[:, 0, 0], evals[:, 1:].mean(axis=1), **rel)
    np.testing.assert_allclose(fit.s0[:, 0, 0], s0, **rel)
    deviation = evals - evals.mean(axis=1, keepdims=True)
    true_fa = np.sqrt(1.5 * (deviation**2).sum(1) / (evals**2).sum(1))
    np.testing.assert_allclose(fit.fa[:, 0, 0], true_fa, atol=1e-6)
    # the eigen-decomposition rebuilds the tensor (this also checks the eigenvectors)
    rebuilt = np.einsum(
        "nij,nj,nkj->nik", fit.evecs[:, 0, 0], fit.evals[:, 0, 0], fit.evecs[:, 0, 0]
    )
    np.testing.assert_allclose(rebuilt, tensors, atol=1e-6 * np.abs(tensors).max())
    principal_alignment = np.abs(np.einsum("ni,ni->n", fit.evecs[1:, 0, 0, :, 0], evecs[1:, :, 0]))
    np.testing.assert_allclose(principal_alignment, 1.0, atol=1e-6)


def test_rotated_gradient_table_gives_the_same_md():
    bvals, bvecs = gradient_table()
    _, _, tensors, s0 = known_tensors(60, seed=3)
    rng = np.random.default_rng(4)
    clean = signal_of(tensors, s0, bvals, bvecs)
    noisy = as_volume(np.abs(clean + rng.normal(0, 20.0, clean.shape)))
    rotation = Rotation.from_euler("xyz", [30, -50, 70], degrees=True).as_matrix()

    original = fit_tensor(noisy, bvals, bvecs, n_threads=1)
    # the same measurements described in a rotated frame: the fit must not care
    rotated = fit_tensor(noisy, bvals, bvecs @ rotation.T, n_threads=1)
    np.testing.assert_allclose(rotated.md, original.md, rtol=1e-9)
    np.testing.assert_allclose(rotated.fa, original.fa, rtol=1e-9)
    principal = np.einsum("ij,nj->ni", rotation, original.evecs[:, 0, 0, :, 0])
    alignment = np.abs(np.einsum("ni,ni->n", principal, rotated.evecs[:, 0, 0, :, 0]))
    np.testing.assert_allclose(alignment, 1.0, atol=1e-6)
    # a rotated acquisition of the same tensors gives the same MD too (noiseless)
    rotated_bvecs = bvecs @ rotation.T
    resampled = as_volume(signal_of(tensors, s0, bvals, rotated_bvecs))
    refit = fit_tensor(resampled, bvals, rotated_bvecs, n_threads=1)
    np.testing.assert_allclose(
        refit.md[:, 0, 0], np.trace(tensors, axis1=1, axis2=2) / 3, rtol=1e-6
    )


@pytest.mark.parametrize("method", ["OLS", "WLS", "NLLS"])
def test_md_matches_dipy_on_noisy_data(method):
    from dipy.core.gradients import gradient_table as dipy_gradient_table
    from dipy.reconst.dti import TensorModel

    bvals, bvecs = gradient_table()
    _, _, tensors, s0 = known_tensors(200, seed=5)
    rng = np.random.default_rng(6)
    clean = signal_of(tensors, s0, bvals, bvecs)
    noisy = np.sqrt(
        (clean + rng.normal(0, 40.0, clean.shape)) ** 2 + rng.normal(0, 40.0, clean.shape) ** 2
    )
    data = as_volume(noisy)

    ours = fit_tensor(data, bvals, bvecs, method=method.lower(), n_threads=1)
    gtab = dipy_gradient_table(bvals, bvecs=bvecs)
    dipy_fit = TensorModel(gtab, fit_method=method).fit(data)

    valid = (dipy_fit.md > 1e-4) & (dipy_fit.md < 4e-3)
    assert valid.sum() > 150
    tolerance = 1e-4 if method != "NLLS" else 1e-3  # NLLS: two iterative optimisers
    relative = np.abs(ours.md[valid] - dipy_fit.md[valid]) / dipy_fit.md[valid]
    assert np.median(relative) < tolerance / 10
    assert relative.max() < tolerance


def test_unfittable_voxels_are_nan_and_do_not_disturb_the_rest():
    bvals, bvecs = gradient_table()
    _, _, tensors, s0 = known_tensors(6, seed=7)
    data = as_volume(signal_of(tensors, s0, bvals, bvecs))
    data[1] = 0.0  # all-zero signal
    data[2] = -5.0  # at or below zero in every volume
    data[3, ..., 4] = np.nan  # one missing sample
    data[4, ..., 5] = -1.0  # one negative sample: still fitted (floored like DIPY)

    for method in ("ols", "wls", "nlls"):
        fit = fit_tensor(data, bvals, bvecs, method=method, n_threads=1)
        for name in ("md", "fa", "ad", "rd", "s0"):
            values = getattr(fit, name)[:, 0, 0]
            assert np.all(np.isnan(values[1:4])), (method, name)
            assert np.all(np.isfinite(values[[0, 4, 5]])), (method, name)
        assert np.all(np.isnan(fit.evecs[1:4])) and np.all(np.isnan(fit.evals[1:4]))
        np.testing.assert_allclose(
            fit.md[[0, 5], 0, 0], np.trace(tensors[[0, 5]], axis1=1, axis2=2) / 3, rtol=1e-6
        )


def test_mask_limits_the_fit_and_an_empty_mask_gives_all_nan():
    bvals, bvecs = gradient_table()
    _, _, tensors, s0 = known_tensors(8, seed=8)
    data = as_volume(signal_of(tensors, s0, bvals, bvecs))
    mask = np.zeros(data.shape[:3], dtype=bool)
    mask[2:5] = True

    fit = fit_tensor(data, bvals, bvecs, mask=mask, n_threads=1)
    assert np.all(np.isfinite(fit.md[mask])) and np.all(np.isnan(fit.md[~mask]))

    empty = fit_tensor(data, bvals, bvecs, mask=np.zeros_like(mask), n_threads=1)
    assert empty.md.shape == data.shape[:3] and empty.evecs.shape == data.shape[:3] + (3, 3)
    assert np.all(np.isnan(empty.md)) and np.all(np.isnan(empty.evals))


def test_too_few_volumes_or_a_degenerate_table_raise_clear_errors():
    bvals, bvecs = gradient_table(n_directions=N_TENSOR_PARAMS - N_B0 - 1)
    data = np.ones((2, 2, 2, bvals.size))
    with pytest.raises(ValueError, match="at least 7"):
        fit_tensor(data, bvals, bvecs)

    collinear = np.tile([[1.0, 0.0, 0.0]], (N_DIRECTIONS, 1))
    bvals, _ = gradient_table()
    bvecs = np.vstack([np.zeros((N_B0, 3)), collinear])
    with pytest.raises(ValueError, match="non-collinear"):
        fit_tensor(np.ones((2, 2, 2, bvals.size)), bvals, bvecs)
    with pytest.raises(ValueError, match="method"):
        fit_tensor(np.ones((2, 2, 2, bvals.size)), bvals, gradient_table()[1], method="ls")
    with pytest.raises(ValueError, match="gradient table does not match"):
        fit_tensor(np.ones((2, 2, 2, bvals.size + 1)), bvals, gradient_table()[1])


def test_float32_input_and_thread_count_do_not_change_the_result():
    bvals, bvecs = gradient_table()
    _, _, tensors, s0 = known_tensors(300, seed=9)
    rng = np.random.default_rng(10)
    clean = signal_of(tensors, s0, bvals, bvecs)
    noisy = np.abs(clean + rng.normal(0, 30.0, clean.shape)).reshape(10, 10, 3, -1)

    one = fit_tensor(noisy, bvals, bvecs, n_threads=1)
    two = fit_tensor(noisy, bvals, bvecs, n_threads=2)
    np.testing.assert_array_equal(one.md, two.md)
    np.testing.assert_array_equal(one.evecs, two.evecs)

    single = fit_tensor(noisy.astype(np.float32), bvals, bvecs, n_threads=1)
    assert single.md.dtype == np.float32 and one.md.dtype == np.float64
    np.testing.assert_allclose(single.md, one.md, rtol=1e-5)
    # FSL's (3, N) b-vector layout is accepted as well
    np.testing.assert_array_equal(fit_tensor(noisy, bvals, bvecs.T, n_threads=1).md, one.md)


@pytest.mark.parametrize("relative_gap", [0.0, 1e-9, 1e-3, 0.99e-2, 1.01e-2, 0.1, 1.0])
def test_eigen_decomposition_matches_lapack_across_eigenvalue_gaps(relative_gap):
    # closed form above CLOSED_FORM_MIN_GAP, Jacobi below: both must give LAPACK's answer,
    # including prolate (two small equal) and oblate (two large equal) tensors
    from ketamine_dti.dwi.tensor import eigh3

    rotations = Rotation.random(20, random_state=3).as_matrix()
    large, small = 1.7e-3, 0.3e-3
    cases = [
        (large, small * (1.0 + relative_gap), small),  # prolate
        (large * (1.0 + relative_gap), large, small),  # oblate
    ]
    for evals_true in cases:
        for rotation in rotations:
            tensor = rotation @ np.diag(evals_true) @ rotation.T
            evals = np.empty(3)
            evecs = np.empty((3, 3))
            eigh3(tensor.copy(), evals, evecs)
            reference = np.linalg.eigvalsh(tensor)[::-1]
            np.testing.assert_allclose(evals, reference, rtol=0, atol=1e-12 * large)
            np.testing.assert_allclose(evecs.T @ evecs, np.eye(3), atol=1e-10)
            rebuilt = evecs @ np.diag(evals) @ evecs.T
            np.testing.assert_allclose(rebuilt, tensor, rtol=0, atol=1e-12 * large)


def test_restore_leaves_out_a_dropped_volume_that_biases_wls():
    """One diffusion volume lost 70% of its signal (a dropout): WLS absorbs it into the tensor
    (MD biased up), RESTORE with the true noise SD rejects that sample in nearly every voxel and
    recovers MD; on clean data it rejects almost nothing and agrees with WLS."""
    bvals, bvecs = gradient_table()
    _, _, tensors, s0 = known_tensors(300, seed=8)
    rng = np.random.default_rng(9)
    sigma = 10.0
    clean = signal_of(tensors, s0, bvals, bvecs)
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    corrupted = noisy.copy()
    dropped = N_B0 + 4
    corrupted[:, dropped] *= 0.3
    true_md = np.trace(tensors, axis1=1, axis2=2) / 3

    def md_error(fit):
        return float(np.median(np.abs(fit.md[:, 0, 0] - true_md) / true_md))

    wls = fit_tensor(as_volume(corrupted), bvals, bvecs, method="wls", n_threads=1)
    restore = fit_tensor(
        as_volume(corrupted), bvals, bvecs, method="restore", n_threads=1, noise=sigma
    )
    assert md_error(restore) < 0.6 * md_error(wls)
    assert np.mean(restore.n_rejected >= 1) > 0.9
    clean_restore = fit_tensor(as_volume(noisy), bvals, bvecs, method="restore", noise=sigma)
    clean_wls = fit_tensor(as_volume(noisy), bvals, bvecs, method="wls")
    assert np.mean(clean_restore.n_rejected) < 0.2
    assert md_error(clean_restore) < 1.1 * md_error(clean_wls)
    # without a noise map the voxel's own residuals set the scale: still robust
    unknown = fit_tensor(as_volume(corrupted), bvals, bvecs, method="restore", n_threads=1)
    assert md_error(unknown) < 0.6 * md_error(wls)
    print(
        f"median |MD error|: WLS {md_error(wls):.2%}, RESTORE {md_error(restore):.2%} "
        f"(noise given) {md_error(unknown):.2%} (estimated); clean WLS "
        f"{md_error(clean_wls):.2%}, RESTORE {md_error(clean_restore):.2%}"
    )
