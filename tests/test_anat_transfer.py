"""Atlas labels and tissue probabilities moved onto the DWI grid, on phantoms."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ketamine_dti.anat.transfer import (
    atlas_to_grid,
    footprint_sigma_voxels,
    labels_from_fractions,
)
from ketamine_dti.ants_backend import matrix_to_affine


def test_labels_from_fractions():
    fractions = np.array(
        [
            [0.9, 0.1, 0.0],  # label 1
            [0.3, 0.6, 0.1],  # label 2
            [0.4, 0.4, 0.0],  # tie below threshold -> 0
            [0.0, 0.0, 0.5],  # label 3 at exactly the threshold
            [0.0, 0.0, 0.0],  # background
        ]
    )
    assert labels_from_fractions(fractions).tolist() == [1, 2, 0, 3, 0]
    assert labels_from_fractions(fractions, [10, 20, 30], 0.35).tolist() == [10, 20, 10, 30, 0]


def _block_atlas(tmp_path):
    """1 mm atlas of 2x2x2-aligned blocks, and a 2 mm reference on the same field of view."""
    atlas = np.zeros((16, 16, 16), np.uint8)
    atlas[2:8, 2:8, 2:8] = 1
    atlas[8:14, 2:8, 2:8] = 2
    atlas[4:10, 9:15, 6:12] = 7
    affine = np.eye(4)
    nib.save(nib.Nifti1Image(atlas, affine), tmp_path / "atlas.nii.gz")
    ref_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    ref_affine[:3, 3] = 0.5  # 2 mm voxel i covers 1 mm voxels 2i and 2i+1
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), ref_affine), tmp_path / "ref.nii.gz")
    return atlas


def test_atlas_to_grid_identity_is_block_majority(tmp_path):
    """Each 2 mm voxel takes the label covering most of its 8 atlas voxels (exact fractions
    0.5 are ties the Gaussian footprint may break either way: only other labels are wrong)."""
    atlas = _block_atlas(tmp_path)
    identity = matrix_to_affine(np.eye(4), tmp_path / "id.mat")
    out = atlas_to_grid(
        tmp_path / "atlas.nii.gz", tmp_path / "ref.nii.gz", [identity], tmp_path / "d.nii.gz"
    )
    labels = np.asarray(nib.load(out).dataobj)
    blocks = atlas.reshape(8, 2, 8, 2, 8, 2)
    expected = np.zeros((8, 8, 8), int)
    tie = np.zeros((8, 8, 8), bool)
    for value in (1, 2, 7):
        fraction = (blocks == value).mean(axis=(1, 3, 5))
        expected[fraction > 0.5] = value
        tie |= fraction == 0.5
    assert np.array_equal(labels[~tie], expected[~tie])
    assert tie.sum() > 0 and set(np.unique(labels[tie])) <= {0, 7}
    nearest = atlas_to_grid(
        tmp_path / "atlas.nii.gz",
        tmp_path / "ref.nii.gz",
        [identity],
        tmp_path / "n.nii.gz",
        method="nearest",
    )
    assert set(np.unique(np.asarray(nib.load(nearest).dataobj))) <= {0, 1, 2, 7}


def test_footprint_sigma():
    # 1 mm -> 2 mm: box variance (4 - 1) / 12 = 0.25 mm^2 -> sigma 0.5 voxel
    assert np.allclose(footprint_sigma_voxels((1, 1, 1), (2, 2, 2)), 0.5)
    assert np.allclose(footprint_sigma_voxels((2, 2, 2), (2, 2, 2)), 0.0)
    assert np.allclose(footprint_sigma_voxels((2, 2, 2), (1, 1, 1)), 0.0)


def test_atlas_to_grid_follows_a_translation(tmp_path):
    atlas = _block_atlas(tmp_path)
    shift = np.eye(4)
    shift[0, 3] = -4.0  # LPS x -4 mm = RAS x +4 mm: the output grid samples the atlas 4 mm right
    xfm = matrix_to_affine(shift, tmp_path / "shift.mat")
    out = atlas_to_grid(
        tmp_path / "atlas.nii.gz", tmp_path / "ref.nii.gz", [xfm], tmp_path / "d.nii.gz"
    )
    labels = np.asarray(nib.load(out).dataobj)
    # label 1 spans RAS x 2..7 mm in the atlas: it shows at x 2-4 = -2..3 mm, 2 mm voxels 0..1
    assert np.argwhere(labels == 1)[:, 0].max() == 1
    assert np.argwhere(labels == 1)[:, 0].min() == 0
    assert atlas.max() == 7


def test_atlas_crop_keeps_the_labels(tmp_path):
    """Labels in one corner of a large 1 mm grid, a rotated 2 mm target: the cropped stack
    gives exactly the labels of the full one."""
    labels = np.zeros((60, 70, 50), np.int16)
    labels[8:20, 10:25, 5:15] = 1
    labels[20:26, 12:18, 10:20] = 3
    labels[45:50, 50:60, 30:40] = 2
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "atlas.nii.gz")
    reference = np.zeros((30, 35, 25), np.float32)
    nib.save(nib.Nifti1Image(reference, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "ref.nii.gz")
    center = np.array([-30.0, -35.0, 25.0])  # LPS mm, mid-grid
    rotation = np.eye(4)
    angle = np.deg2rad(7.0)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    rotation[:3, 3] = center - rotation[:3, :3] @ center + [0.7, -1.3, 0.4]
    xfm = matrix_to_affine(rotation, tmp_path / "rot.mat")
    out = {}
    for crop in (True, False):
        path = atlas_to_grid(
            tmp_path / "atlas.nii.gz", tmp_path / "ref.nii.gz", [xfm],
            tmp_path / f"crop_{crop}.nii.gz", crop=crop,
        )  # fmt: skip
        out[crop] = np.asarray(nib.load(path).dataobj)
    assert set(np.unique(out[False])) == {0, 1, 2, 3}
    assert np.array_equal(out[True], out[False])


def test_template_points_land_in_the_dwi_voxel_that_holds_them(tmp_path):
    """A rigid map (an ANTs .mat) and a 2 mm DWI grid: ANTs itself, resampling an image of
    template voxel numbers onto the DWI grid (nearest neighbour), names the template voxel
    at each DWI voxel's centre; that template point must land in that DWI voxel."""
    from ketamine_dti.anat.transfer import template_to_dwi_points
    from ketamine_dti.ants_backend import apply_transforms, matrix_to_affine

    angle = np.deg2rad(10.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]])  # fmt: skip
    dwi_to_template_lps = np.eye(4)
    dwi_to_template_lps[:3, :3] = rotation
    dwi_to_template_lps[:3, 3] = [3.0, -2.0, 1.5]
    xfm = matrix_to_affine(dwi_to_template_lps, tmp_path / "from_template_to_dwi.mat")
    template_shape, dwi_shape = (40, 40, 30), (16, 16, 12)
    template_affine = np.eye(4)
    template_affine[:3, 3] = [-20, -20, -15]
    dwi_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    dwi_affine[:3, 3] = [-16, -16, -12]
    numbers = np.arange(np.prod(template_shape), dtype=np.float32).reshape(template_shape)
    nib.save(nib.Nifti1Image(numbers, template_affine), tmp_path / "numbers.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(dwi_shape, np.float32), dwi_affine), tmp_path / "dwi.nii.gz")
    apply_transforms(tmp_path / "numbers.nii.gz", tmp_path / "dwi.nii.gz", [xfm],
                     tmp_path / "at_dwi.nii.gz", interpolation="nearestNeighbor")  # fmt: skip
    at_centre = np.rint(nib.load(tmp_path / "at_dwi.nii.gz").get_fdata()).astype(np.int64)
    sampled = at_centre > 0  # centres that map inside the template (voxel 0 is a corner)
    assert sampled.mean() > 0.5
    points = np.argwhere(np.ones(template_shape, bool))
    flat = template_to_dwi_points(points, template_affine, [xfm], dwi_affine, dwi_shape)
    dwi_voxels = np.flatnonzero(sampled.ravel())
    assert np.array_equal(flat[at_centre.ravel()[dwi_voxels]], dwi_voxels)
    assert (flat == -1).any()  # part of the template lies off the DWI grid


def test_majority_labels_and_containing_voxel_footprint():
    from ketamine_dti.anat.transfer import containing_voxel_fraction, majority_labels

    voxel = np.array([0, 0, 0, 1, 1, 2, -1])
    labels = np.array([3, 3, 1, 2, 1, 1, 2])
    assert majority_labels(voxel, labels, 4).tolist() == [3, 1, 1, 0]  # tie -> lowest label
    assert majority_labels(voxel, labels, 4, min_count=2).tolist() == [3, 0, 0, 0]
    # the containing voxel's footprint (box * box) is wider than a centred voxel's
    assert np.allclose(footprint_sigma_voxels((1, 1, 1), (2, 2, 2), boxes=2), np.sqrt(7 / 12))
    slab = np.zeros((30, 30, 30))
    slab[:15] = 1.0
    share = containing_voxel_fraction(slab, (1, 1, 1), (2, 2, 2))
    assert share[14, 15, 15] == pytest.approx(0.5 + 0.5 * 0.5, abs=0.1)  # half a voxel away
    assert share[5, 15, 15] == pytest.approx(1.0) and share[25, 15, 15] == pytest.approx(0.0)
