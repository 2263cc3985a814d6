"""Least-squares registration of volumes of one series: known maps are recovered, the volume
edge does not bias the fit, and the resampling is trilinear."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ketamine_dti.dwi import series_registration

SHAPE = (40, 44, 36)
VOXEL_MM = 2.5


def _affine():
    affine = np.diag([-VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])  # LAS, as many scanners store it
    affine[:3, 3] = [50.0, -55.0, -45.0]
    return affine


def _head(seed=0):
    """An ellipsoid with smooth texture, and its interior."""
    rng = np.random.default_rng(seed)
    grid = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]].astype(float)
    centre = (np.array(SHAPE, dtype=float) - 1) / 2
    radii = np.array([15.0, 17.0, 13.0])
    inside = sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(3)) < 1
    texture = ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.5)
    return ndimage.gaussian_filter(inside * (100.0 + 40.0 * texture / texture.std()), 0.7), inside


def _world_points(mask, affine):
    points = np.argwhere(mask)
    return np.c_[points @ affine[:3, :3].T + affine[:3, 3], np.ones(len(points))]


def _map(angles_deg, translation_mm, linear_extra=None, affine=None):
    """A RAS+ fixed -> moving map about the grid centre, optionally with a non-rigid part."""
    centre = (affine @ np.append((np.array(SHAPE) - 1) / 2, 1.0))[:3]
    linear = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    if linear_extra is not None:
        linear = linear @ (np.eye(3) + linear_extra)
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre - linear @ centre + np.asarray(translation_mm)
    return matrix


def _max_error_mm(estimate, truth, mask, affine):
    return np.abs(((estimate - truth) @ _world_points(mask, affine).T)[:3]).max()


def test_affine_with_eddy_shear_and_scale_is_recovered():
    affine = _affine()
    fixed, inside = _head()
    eddy = np.zeros((3, 3))
    eddy[1] = [0.02, 0.03, -0.015]  # shear and scale along phase encoding (axis y)
    truth = _map([2.0, -3.0, 1.5], [2.5, -1.5, 3.0], eddy, affine)
    moving = series_registration.resample(fixed, np.linalg.inv(truth), affine)
    mask = ndimage.binary_dilation(inside, iterations=2)
    target = series_registration.prepare(fixed, affine, mask)
    estimate = series_registration.register(target, moving)
    assert _max_error_mm(estimate, truth, inside, affine) < 0.1
    # from the identity, the error was the full motion
    assert _max_error_mm(np.eye(4), truth, inside, affine) > 3.0


def test_rigid_is_exactly_rigid_and_tolerates_a_cut_field_of_view():
    affine = _affine()
    fixed, inside = _head(1)
    truth = _map([-2.5, 1.0, 3.0], [1.0, 4.0, -2.0], affine=affine)
    moving = series_registration.resample(fixed, np.linalg.inv(truth), affine)
    moving[:, :, -6:] = 0.0  # the top of the head fell out of the slab
    mask = ndimage.binary_dilation(inside, iterations=2)
    estimate = series_registration.register(
        series_registration.prepare(fixed, affine, mask, rigid=True), moving
    )
    assert np.allclose(estimate[:3, :3].T @ estimate[:3, :3], np.eye(3), atol=1e-9)
    kept = inside.copy()
    kept[:, :, -10:] = False
    assert _max_error_mm(estimate, truth, kept, affine) < 0.2


def test_warm_start_and_noise():
    """Started near the answer, registration of noisy copies stays within a fraction of a voxel
    and a prepared target serves several moving volumes."""
    affine = _affine()
    fixed, inside = _head(2)
    rng = np.random.default_rng(4)
    mask = ndimage.binary_dilation(inside, iterations=2)
    target = series_registration.prepare(fixed, affine, mask)
    for seed in range(3):
        truth = _map(rng.uniform(-2, 2, 3), rng.uniform(-2, 2, 3), affine=affine)
        moving = series_registration.resample(fixed, np.linalg.inv(truth), affine)
        moving += rng.normal(scale=5.0, size=moving.shape).astype(np.float32)
        start = _map([0.0, 0.0, 0.0], [0.5, 0.0, 0.0], affine=affine) @ truth
        estimate = series_registration.register(target, moving, initial=start)
        assert _max_error_mm(estimate, truth, inside, affine) < 0.25, seed


def test_resample_is_trilinear_and_zero_outside():
    affine = _affine()
    volume, _ = _head(3)
    shift = np.eye(4)
    shift[:3, 3] = [0.4 * VOXEL_MM, -0.7 * VOXEL_MM, 0.25 * VOXEL_MM]
    ours = series_registration.resample(volume, shift, affine)
    voxel_map = np.linalg.inv(affine) @ shift @ affine
    reference = ndimage.affine_transform(
        volume, voxel_map[:3, :3], offset=voxel_map[:3, 3], order=1, mode="constant"
    )
    interior = (slice(2, -2),) * 3
    assert np.allclose(ours[interior], reference[interior], atol=1e-3)
    far = np.eye(4)
    far[:3, 3] = [500.0, 0.0, 0.0]
    assert not series_registration.resample(volume, far, affine).any()


def test_bad_inputs_are_refused():
    affine = _affine()
    fixed, _ = _head()
    with pytest.raises(ValueError, match="empty"):
        series_registration.prepare(fixed, affine, np.zeros(SHAPE, dtype=bool))
    tiny = np.zeros(SHAPE, dtype=bool)
    tiny[20, 20, 18] = True
    with pytest.raises(ValueError, match="fewer than"):
        series_registration.prepare(fixed, affine, tiny)
    with pytest.raises(ValueError, match="interpolate"):
        series_registration.resample(np.zeros((1, 4, 4)), np.eye(4), affine)
