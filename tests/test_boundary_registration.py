"""Boundary-based registration: the white surface, recovery of a known rigid map, stability
under perturbations far below the noise, and its use by the b0 -> T1w coregistration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ketamine_dti.anat import boundary_registration as bbr

#: T2-weighted b0 contrast of the synthetic head (relative to WM), as at TE ~ 80-90 ms.
B0_CONTRAST = {1: 3.0, 2: 1.4, 3: 1.0}
T1W_MM, B0_MM = 1.0, 2.5


def _folded_head(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Hard labels (1 CSF, 2 GM, 3 WM) of a head with gyri on a 1 mm grid, and its affine:
    white matter inside a radius that undulates with direction, 3 mm of cortex, then CSF."""
    grid = (np.indices((size,) * 3).astype(float) - size / 2 + 0.5) * T1W_MM
    radius = np.sqrt((grid**2).sum(axis=0))
    theta = np.arccos(np.clip(grid[2] / np.maximum(radius, 1e-6), -1, 1))
    phi = np.arctan2(grid[1], grid[0])
    white = 28.0 + 3.0 * np.sin(5 * phi) * np.sin(4 * theta) + 2.0 * np.cos(3 * theta)
    labels = np.zeros(radius.shape, np.uint8)
    labels[radius < white + 9.0] = 1
    labels[radius < white + 3.0] = 2
    labels[radius < white] = 3
    affine = np.eye(4)
    affine[:3, 3] = -size / 2 * T1W_MM + 0.5
    return labels, affine


def _b0(labels, affine, truth: np.ndarray, noise_sd: float, seed: int):
    """A 2.5 mm b0 of the labelled head whose points map to T1w points by inv(truth), i.e.
    ``truth`` maps T1w points to b0 points; Rician-free Gaussian noise of ``noise_sd``."""
    contrast = np.zeros(4, np.float32)
    for label, value in B0_CONTRAST.items():
        contrast[label] = value
    fine = ndimage.gaussian_filter(contrast[labels] * 1000.0, 0.8)  # blur of a 2.5 mm PSF
    shape = (40, 40, 40)
    b0_affine = np.diag([B0_MM, B0_MM, B0_MM, 1.0])
    b0_affine[:3, 3] = -np.array(shape) / 2 * B0_MM + 0.3
    index = np.indices(shape).reshape(3, -1)
    world = b0_affine @ np.r_[index, np.ones((1, index.shape[1]))]
    t1w_index = np.linalg.inv(affine) @ np.linalg.inv(truth) @ world
    image = ndimage.map_coordinates(fine, t1w_index[:3], order=1).reshape(shape)
    rng = np.random.default_rng(seed)
    return (image + rng.normal(0, noise_sd, shape)).astype(np.float32), b0_affine


def _rigid(angles_deg, translation_mm) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    matrix[:3, 3] = translation_mm
    return matrix


def _rms_mm(points, a, b) -> float:
    moved = points @ (a[:3, :3] - b[:3, :3]).T + (a[:3, 3] - b[:3, 3])
    return float(np.sqrt(np.mean(np.sum(moved**2, axis=1))))


@pytest.fixture(scope="module")
def head():
    labels, affine = _folded_head()
    points, normals = bbr.white_surface(labels, affine)
    return labels, affine, points, normals


def test_white_surface_lies_between_white_and_gray_matter(head):
    labels, affine, points, normals = head
    assert 2000 < len(points) <= bbr.MAX_POINTS
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0)
    to_index = np.linalg.inv(affine)

    def label_at(offset_mm):
        world = points + offset_mm * normals
        index = np.rint(world @ to_index[:3, :3].T + to_index[:3, 3]).astype(int)
        return labels[tuple(index.T)]

    assert np.mean(label_at(-1.5) == 3) > 0.9  # inside: white matter
    assert np.mean(label_at(+1.5) == 2) > 0.9  # outside: cortex


def test_refine_recovers_a_known_rigid_map_from_a_start_millimetres_off(head):
    labels, affine, points, normals = head
    truth = _rigid([2.0, -1.5, 3.0], [1.2, -2.0, 0.8])
    image, b0_affine = _b0(labels, affine, truth, noise_sd=40.0, seed=0)
    start = truth @ _rigid([-3.0, 2.0, 1.0], [3.0, -2.0, 2.5])
    assert _rms_mm(points, start, truth) > 3.0
    fit = bbr.refine(image, b0_affine, points, normals, start)
    assert _rms_mm(points, fit.matrix, truth) < 0.3  # 2.5 mm voxels, SNR 25 in WM
    assert fit.cost < fit.start_cost
    assert fit.shift_mm == pytest.approx(_rms_mm(points, fit.matrix, start), rel=0.05)


def test_refine_does_not_amplify_a_perturbation_far_below_the_noise(head):
    """The property MI lacked: 1/100 of the noise SD, added to every sample, must move the
    result by far less than the noise itself does (< 0.05 mm here; MI moved by up to 2 mm)."""
    labels, affine, points, normals = head
    truth = _rigid([1.0, 0.0, -2.0], [0.5, 1.0, -1.0])
    image, b0_affine = _b0(labels, affine, truth, noise_sd=40.0, seed=1)
    start = truth @ _rigid([1.0, -1.0, 0.0], [1.5, 0.0, -1.5])
    first = bbr.refine(image, b0_affine, points, normals, start)
    again = bbr.refine(image, b0_affine, points, normals, start)
    assert np.array_equal(first.matrix, again.matrix)  # deterministic
    rng = np.random.default_rng(2)
    nudged = image + rng.normal(0, 0.4, image.shape).astype(np.float32)
    moved = bbr.refine(nudged, b0_affine, points, normals, start)
    assert _rms_mm(points, moved.matrix, first.matrix) < 0.05


def test_refine_refuses_a_b0_that_misses_the_surface(head):
    labels, affine, points, normals = head
    image, b0_affine = _b0(labels, affine, np.eye(4), noise_sd=40.0, seed=3)
    far = _rigid([0, 0, 0], [500.0, 0, 0])
    with pytest.raises(ValueError, match="fall inside the b0"):
        bbr.refine(image, b0_affine, points, normals, far)


def test_moved_surface_keeps_normals_normal_under_an_affine(head):
    _, _, points, normals = head
    matrix = _rigid([10, 0, 5], [3, 4, 5])
    matrix[:3, :3] = matrix[:3, :3] @ np.diag([1.1, 0.9, 1.0])
    moved, turned = bbr.moved_surface(points[:50], normals[:50], matrix)
    assert np.allclose(moved, points[:50] @ matrix[:3, :3].T + matrix[:3, 3])
    # a tangent of the surface (orthogonal to the normal) stays orthogonal to the new normal
    tangent = np.cross(normals[:50], [0.0, 0.0, 1.0])
    assert np.allclose(np.sum((tangent @ matrix[:3, :3].T) * turned, axis=1), 0.0, atol=1e-9)


def test_dwi_to_t1w_names_the_missing_template_transform(head, tmp_path):
    """The labels live in the subject template: without the session -> template map the
    interface must say so before it registers anything, not fail on an undefined input."""
    import nibabel as nib

    from ketamine_dti.interfaces.anat import DWIToT1w

    labels, affine, _, _ = head
    files = {}
    for name, data in {
        "t1w": (labels > 0) * 100.0,
        "mask": labels > 0,
        "dseg": labels,
        "b0": labels * 10.0,
    }.items():
        files[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), files[name])
    node = DWIToT1w(
        t1w_brain_file=str(files["t1w"]),
        t1w_mask_file=str(files["mask"]),
        b0_file=str(files["b0"]),
        dwi_mask_file=str(files["mask"]),
        tissue_dseg_file=str(files["dseg"]),
    )
    with pytest.raises(ValueError, match="needs from_session_to_template"):
        node.run(cwd=str(tmp_path))
