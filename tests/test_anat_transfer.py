"""Atlas labels and tissue probabilities moved onto the DWI grid, on phantoms."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ketamine_dti.anat.transfer import (
    atlas_to_dwi,
    footprint_sigma_voxels,
    labels_from_fractions,
    warp_probability,
    warp_tissue_fraction,
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


def test_atlas_to_dwi_identity_is_block_majority(tmp_path):
    """Each 2 mm voxel takes the label covering most of its 8 atlas voxels (exact fractions
    0.5 are ties the Gaussian footprint may break either way: only other labels are wrong)."""
    atlas = _block_atlas(tmp_path)
    identity = matrix_to_affine(np.eye(4), tmp_path / "id.mat")
    out = atlas_to_dwi(
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
    nearest = atlas_to_dwi(
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


def test_atlas_to_dwi_follows_a_translation(tmp_path):
    atlas = _block_atlas(tmp_path)
    shift = np.eye(4)
    shift[0, 3] = -4.0  # LPS x -4 mm = RAS x +4 mm: the output grid samples the atlas 4 mm right
    xfm = matrix_to_affine(shift, tmp_path / "shift.mat")
    out = atlas_to_dwi(
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
        path = atlas_to_dwi(
            tmp_path / "atlas.nii.gz", tmp_path / "ref.nii.gz", [xfm],
            tmp_path / f"crop_{crop}.nii.gz", crop=crop,
        )  # fmt: skip
        out[crop] = np.asarray(nib.load(path).dataobj)
    assert set(np.unique(out[False])) == {0, 1, 2, 3}
    assert np.array_equal(out[True], out[False])


def test_warp_probability_is_clipped(tmp_path):
    prob = np.full((8, 8, 8), 1.2, np.float32)
    prob[:4] = -0.1
    nib.save(nib.Nifti1Image(prob, np.eye(4)), tmp_path / "p.nii.gz")
    identity = matrix_to_affine(np.eye(4), tmp_path / "id.mat")
    out = warp_probability(
        tmp_path / "p.nii.gz", tmp_path / "p.nii.gz", [identity], tmp_path / "o.nii.gz"
    )
    data = nib.load(out).get_fdata()
    assert data.min() == 0.0 and data.max() == 1.0


def test_tissue_fraction_is_the_labelled_share_of_each_dwi_voxel(tmp_path):
    """A 1 mm segmentation whose CSF fills one x-half of each 3 mm block: every 3 mm voxel on
    the boundary gets ~1/3 or ~2/3 CSF, a pure voxel 0 or 1, whatever the posteriors were."""
    dseg = np.full((30, 30, 30), 2, np.int16)  # GM
    dseg[:14] = 1  # CSF below x = 14 (1 mm voxels 0..13)
    dseg[0:2] = 0  # background
    nib.save(nib.Nifti1Image(dseg, np.eye(4)), tmp_path / "dseg.nii.gz")
    reference = nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), np.diag([3.0, 3, 3, 1]))
    nib.save(reference, tmp_path / "ref.nii.gz")
    identity = matrix_to_affine(np.eye(4), tmp_path / "id.mat")
    fractions = {}
    for label in (1, 2):
        out = warp_tissue_fraction(
            tmp_path / "dseg.nii.gz", label, tmp_path / "ref.nii.gz", [identity],
            tmp_path / f"f{label}.nii.gz",
        )  # fmt: skip
        fractions[label] = nib.load(out).get_fdata()[:, 5, 5]
    # 3 mm voxel i is centred on 1 mm voxel 3i: i = 4 (x 12, 1 mm voxels 11-13) is CSF,
    # i = 5 (x 15) is GM; their neighbours are pure
    assert fractions[1][2] == pytest.approx(1.0, abs=0.02)
    assert fractions[1][7] == pytest.approx(0.0, abs=0.02)
    assert fractions[2][7] == pytest.approx(1.0, abs=0.02)
    assert 0.5 < fractions[1][4] < 1.0 and 0.0 < fractions[1][5] < 0.5
    assert np.allclose((fractions[1] + fractions[2])[2:], 1.0, atol=0.02)  # 0: background
