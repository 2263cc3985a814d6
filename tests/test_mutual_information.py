"""Our Mattes mutual information: its derivative is the metric's, and a small affine between
volumes of different contrast is recovered."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ketamine_dti.dwi import mutual_information as mi
from ketamine_dti.dwi.series_registration import resample

SHAPE = (40, 44, 36)
VOXEL_MM = 2.0


def _affine():
    affine = np.diag([-VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = [40.0, -44.0, -36.0]
    return affine


def _head(seed: int = 0):
    """An ellipsoid with smooth texture, and a mask a little inside it."""
    rng = np.random.default_rng(seed)
    grid = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]].astype(float)
    centre = (np.array(SHAPE, float) - 1) / 2
    r = np.sqrt(sum(((grid[i] - centre[i]) / ([15, 17, 13][i])) ** 2 for i in range(3)))
    texture = ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.5)
    image = (r < 1) * (100.0 + 40.0 * texture / texture.std())
    return ndimage.gaussian_filter(image, 0.7).astype(np.float32), r < 0.95


def _map(linear_delta, translation, centre):
    """x -> centre + (I + linear_delta)(x - centre) + translation."""
    matrix = np.eye(4)
    matrix[:3, :3] += linear_delta
    matrix[:3, 3] = centre - matrix[:3, :3] @ centre + translation
    return matrix


def test_analytic_derivative_matches_finite_differences():
    affine = _affine()
    fixed, mask = _head()
    moving = np.sqrt(np.clip(fixed, 0, None)) * 10.0  # another contrast, same anatomy
    target = mi.prepare(fixed, affine, mask, sampling=0.5)
    params = np.zeros(12)
    params[[0, 4, 9, 10, 11]] = [0.01, -0.02, 0.6, -0.4, 0.3]
    gradients = np.stack(np.gradient(moving)).astype(np.float32)
    low, delta = mi._bin_scale(moving)
    voxel_map = np.linalg.inv(affine) @ mi._as_map(params, target.centre) @ affine
    _, analytic, _ = mi._metric_and_gradient(
        moving, gradients, voxel_map, np.linalg.inv(affine[:3, :3]).T, target.points,
        target.fixed_bins, target.centred, low, delta, mi.MI_BINS,
    )  # fmt: skip
    # the derivative interpolates the image's central-difference gradient (as ITK's Mattes
    # metric does), not the derivative of the trilinear interpolant: the same direction, not
    # the same numbers (measured: cosine 0.99 here, single entries within ~10-40%)
    reach = np.abs(target.centred).max(axis=0)
    physical = np.concatenate([np.tile(reach, 3), np.ones(3)])  # mm moved per unit parameter
    numeric = np.zeros(12)
    for index in range(12):
        step = 1e-4 if index < 9 else 5e-3
        offset = np.zeros(12)
        offset[index] = step
        plus = mi.mutual_information(target, moving, mi._as_map(params + offset, target.centre))
        minus = mi.mutual_information(target, moving, mi._as_map(params - offset, target.centre))
        numeric[index] = (plus - minus) / (2 * step)
    a, n = analytic / physical, numeric / physical
    assert a @ n / np.linalg.norm(a) / np.linalg.norm(n) > 0.97


def test_register_recovers_a_small_affine_across_contrasts():
    affine = _affine()
    fixed, mask = _head(1)
    target = mi.prepare(fixed, affine, mask, sampling=0.3)
    truth = _map(
        np.array([[0.01, 0.005, 0.0], [-0.004, -0.008, 0.0], [0.0, 0.006, 0.004]]),
        [0.5, -0.4, 0.3],
        target.centre,
    )
    moved = resample(fixed, np.linalg.inv(truth), affine)  # the head moved by `truth`
    moved = 400.0 - 2.0 * moved  # inverted contrast: least squares could not align this
    before = _displacement(np.eye(4), truth, target)
    estimate = mi.register(target, moved, n_steps=40)
    after = _displacement(estimate, truth, target)
    # measured: 1.14 -> 0.17 mm at the farthest point (ANTs' full pyramid: 0.13 mm)
    assert before > 1.0
    assert after < 0.25, (before, after)


def _displacement(estimate, truth, target):
    """Largest mm between where two maps send the sampled points."""
    world = np.c_[target.centred + target.centre, np.ones(len(target.centred))]
    return float(np.linalg.norm((world @ (estimate - truth).T)[:, :3], axis=1).max())


def _on_grid(volume, affine, world_map, grid_shape, grid_affine):
    """``volume`` moved by ``world_map`` (its point x goes to world_map x), sampled
    (trilinear) on another grid."""
    to_source = np.linalg.inv(affine) @ np.linalg.inv(world_map) @ grid_affine
    index = np.indices(grid_shape).reshape(3, -1)
    source = to_source[:3, :3] @ index + to_source[:3, 3:]
    return ndimage.map_coordinates(volume, source, order=1).reshape(grid_shape)


def test_a_moving_image_on_its_own_grid_scores_as_on_the_fixed_grid():
    """The fixed image copied exactly onto another grid (axes permuted and flipped, origin
    moved by whole voxels): the metric with its own affine is the same-grid metric."""
    affine = _affine()
    fixed, mask = _head(2)
    target = mi.prepare(fixed, affine, mask, sampling=0.3)
    to_fixed_voxel = np.eye(4)  # moving voxel -> fixed voxel
    to_fixed_voxel[:3] = [[0, 0, -1, SHAPE[0] - 1], [1, 0, 0, 2], [0, 1, 0, 0]]
    grid_shape = (SHAPE[1] - 2, SHAPE[2], SHAPE[0])
    index = np.indices(grid_shape).reshape(3, -1)
    source = (to_fixed_voxel[:3, :3] @ index + to_fixed_voxel[:3, 3:]).astype(int)
    copy = fixed[tuple(source)].reshape(grid_shape)
    tilt = Rotation.from_euler("xyz", [4.0, -2.0, 1.5], degrees=True).as_matrix()
    for matrix in (np.eye(4), _map(tilt - np.eye(3), [1.5, -1.0, 0.5], target.centre)):
        same_grid = mi.mutual_information(target, fixed, matrix)
        own_grid = mi.mutual_information(target, copy, matrix, affine @ to_fixed_voxel)
        assert own_grid == pytest.approx(same_grid, rel=1e-9)
        # the copy read as if it were on the fixed grid is another image
        assert mi.mutual_information(target, copy, matrix) < same_grid - 0.2


def test_search_rotations_finds_a_tilt_across_grids_and_contrasts():
    """A head tilted 15 degrees about one axis and moved, on a 2.5 mm grid with b0-like
    contrast: the search returns that rotation and the position within a voxel (measured:
    0.24 mm)."""
    affine = _affine()
    fixed, mask = _head(3)
    fixed = np.where(mask, fixed, 0.0).astype(np.float32)  # brain-masked, as the pipeline's
    centre = (affine @ np.append((np.array(SHAPE) - 1) / 2, 1.0))[:3]
    truth = _map(Rotation.from_euler("y", 15.0, degrees=True).as_matrix() - np.eye(3),
                 [5.0, -4.0, 3.0], centre)  # fmt: skip
    grid_shape, grid_mm = (36, 40, 34), 2.5
    grid_affine = np.diag([grid_mm, grid_mm, grid_mm, 1.0])
    grid_centre = (truth @ np.append(centre, 1.0))[:3]
    grid_affine[:3, 3] = grid_centre - grid_mm * (np.array(grid_shape) - 1) / 2
    moved = _on_grid(fixed, affine, truth, grid_shape, grid_affine)
    b0 = np.where(moved > 0.2 * moved.max(), 300.0 - moved, 0.0)  # bright where T1w is dark
    found = mi.search_rotations(fixed, affine, b0, grid_affine, step_deg=15.0, arc_fraction=0.15)
    residual = np.linalg.inv(truth) @ found
    assert np.degrees(Rotation.from_matrix(residual[:3, :3]).magnitude()) < 3.0
    world = np.c_[np.argwhere(mask), np.ones(int(mask.sum()))] @ affine.T
    error = np.linalg.norm((world @ (found - truth).T)[:, :3], axis=1)
    assert error.max() < grid_mm, error.max()
