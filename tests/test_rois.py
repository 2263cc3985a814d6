"""Regional MD statistics, the gray-matter rule and the atlas transfer, on phantoms."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from ketamine_dti.anat.registration import matrix_to_affine
from ketamine_dti.rois import (
    CSF_PROB_MAX,
    FA_WM_MAX,
    GM_PROB_MIN,
    MD_CSF_MAX,
    ROI_NAMES,
    STAT_COLUMNS,
    GrayMatterRule,
    atlas_to_dwi,
    footprint_sigma_voxels,
    gray_matter_mask,
    labels_from_fractions,
    regional_statistics,
    warp_probability,
)

#: Tissue parameters of the phantom (mm^2/s), as in the simulator's tissue model.
GM_MD, WM_MD, CSF_MD = 0.8e-3, 0.72e-3, 3.0e-3
GM_FA, WM_FA = 0.12, 0.68
S0 = {"gm": 1.4, "wm": 1.0, "csf": 3.0}
BVAL = 1000.0


def test_roi_names_unchanged():
    assert ROI_NAMES == (
        "ba10_left",
        "ba10_right",
        "amygdala_left",
        "amygdala_right",
        "hippocampus_left",
        "hippocampus_right",
        "vacc",
    )


def test_regional_statistics_known_values():
    rng = np.random.default_rng(3)
    shape = (10, 10, 7)
    labels = np.zeros(shape, np.int16)
    md = rng.uniform(0.6e-3, 1.0e-3, shape)
    for index in range(1, 8):
        labels[:, :, index - 1] = index  # one slab of 100 voxels per ROI
    labels[0, 0, :] = 0  # one background voxel per slab
    table = regional_statistics(md, labels, rule=GrayMatterRule(None, None, None, None))
    assert list(table.columns) == list(STAT_COLUMNS)
    assert list(table.roi) == list(ROI_NAMES)
    for index in range(1, 8):
        values = md[labels == index]
        row = table.iloc[index - 1]
        assert row["index"] == index
        assert row.n_voxels == row.n_voxels_atlas == 99
        assert row.md_mean == pytest.approx(values.mean())
        assert row.md_median == pytest.approx(np.median(values))
        assert row.md_std == pytest.approx(values.std(ddof=1))
        assert np.isnan(row.fa_mean)


def test_md_threshold_and_failed_fits_are_dropped():
    labels = np.ones((4, 1, 1), int)
    md = np.array([0.8e-3, 2.0e-3, np.nan, -1e-4]).reshape(4, 1, 1)
    fa = np.array([0.1, 0.1, 0.1, 0.1]).reshape(4, 1, 1)
    table = regional_statistics(md, labels, fa=fa, roi_names=("one",))
    row = table.iloc[0]
    assert row.n_voxels_atlas == 4
    assert row.n_voxels == 1
    assert row.md_mean == pytest.approx(0.8e-3)
    assert np.isnan(row.md_std)  # one voxel: no SD
    assert row.fa_mean == pytest.approx(0.1)


def test_empty_roi_gives_nan_and_a_warning(caplog):
    labels = np.zeros((5, 5, 5), int)
    labels[:2] = 1
    labels[3:] = 2  # ROI 2 has voxels, all of them CSF
    md = np.full(labels.shape, 0.8e-3)
    md[3:] = 3.0e-3
    with caplog.at_level(logging.WARNING, logger="ketamine_dti.rois"):
        table = regional_statistics(md, labels, roi_names=("a", "b", "c"))
    assert table.n_voxels.tolist() == [50, 0, 0]
    assert table.n_voxels_atlas.tolist() == [50, 50, 0]
    assert table.loc[1, ["md_mean", "md_median", "md_std", "fa_mean"]].isna().all()
    assert "ROI b" in caplog.text and "ROI c" in caplog.text


def _mixture(gm: float, wm: float, csf: float) -> tuple[float, float]:
    """Apparent MD and FA of a voxel mixing isotropic-ish GM, WM and CSF (mono-exponential)."""
    weights = np.array([S0["gm"] * gm, S0["wm"] * wm, S0["csf"] * csf])
    # WM tensor along x; GM nearly isotropic; CSF isotropic: diffusion-weighted along x, y, z
    gm_eig = GM_MD * np.array([1.14, 0.93, 0.93])
    wm_eig = np.array([1.40e-3, 0.38e-3, 0.38e-3])
    csf_eig = np.full(3, CSF_MD)
    signal_b = np.array(
        [
            weights @ np.exp(-BVAL * np.array([g, w, c]))
            for g, w, c in zip(gm_eig, wm_eig, csf_eig, strict=True)
        ]
    )
    eig = np.log(weights.sum() / signal_b) / BVAL
    md = eig.mean()
    fa = np.sqrt(1.5 * ((eig - md) ** 2).sum() / (eig**2).sum())
    return md, fa


def test_gray_matter_rule_on_tissue_fraction_phantom():
    """Known fractions -> known mixture MD/FA -> which voxels the documented rule keeps."""
    fractions = [  # (gm, wm, csf)
        (1.0, 0.0, 0.0),  # pure GM: kept
        (0.8, 0.2, 0.0),  # GM with some WM: MD hardly changes, FA stays low: kept
        (0.0, 1.0, 0.0),  # WM: FA 0.68, GM fraction 0
        (0.3, 0.7, 0.0),  # mostly WM
        (0.6, 0.0, 0.4),  # heavy CSF partial volume: MD above 1.5e-3
        (0.85, 0.0, 0.15),  # mild CSF: MD below 1.5e-3 but biased; only the T1w rule sees it
        (0.0, 0.0, 1.0),  # CSF
    ]
    md, fa = np.array([_mixture(*f) for f in fractions]).T.reshape(2, -1, 1, 1)
    gm_prob, _, csf_prob = np.array(fractions).T.reshape(3, -1, 1, 1)
    assert md[0, 0, 0] == pytest.approx(GM_MD, rel=0.02)
    assert md[5, 0, 0] > 1.15 * GM_MD  # 15% CSF biases MD by more than 15%
    # MD/FA alone catch the WM-dominated and heavily CSF-contaminated voxels ...
    mdfa = gray_matter_mask(md, fa, rule=GrayMatterRule(gm_prob_min=None, csf_prob_max=None))
    assert mdfa.ravel().tolist() == [True, True, False, False, False, True, False]
    # ... and the T1w fractions also drop the mild-CSF voxel
    keep = gray_matter_mask(md, fa, gm_prob, csf_prob)
    assert keep.ravel().tolist() == [True, True, False, False, False, False, False]
    # each criterion alone
    only_gm = GrayMatterRule(md_max=None, fa_max=None, csf_prob_max=None)
    assert gray_matter_mask(md, fa, gm_prob, csf_prob, only_gm).ravel().tolist() == [
        True,
        True,
        False,
        False,
        True,
        True,
        False,
    ]


def test_rule_defaults_are_the_documented_constants():
    rule = GrayMatterRule()
    assert (rule.md_max, rule.fa_max) == (MD_CSF_MAX, FA_WM_MAX)
    assert (rule.gm_prob_min, rule.csf_prob_max) == (GM_PROB_MIN, CSF_PROB_MAX)
    md = np.array([0.8e-3]).reshape(1, 1, 1)
    with pytest.raises(ValueError, match="shape"):
        gray_matter_mask(md, fa=np.zeros((2, 1, 1)))


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
