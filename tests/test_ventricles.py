"""The ventricle-coverage QC metric (anat.ventricles) on synthetic heads with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ketamine_dti.anat import ventricles

VOXEL_MM = 2.0


def _head(shape=(60, 72, 60), shift_mm=(0.0, 0.0, 0.0)):
    """A 2 mm ellipsoid brain (MD 0.8e-3) with two 'lateral ventricles' (MD 3e-3) that can be
    moved by ``shift_mm``; returns (md, brain mask, ventricle truth, dseg 1=CSF 2=GM 3=WM)."""
    grid = np.indices(shape).astype(float)
    centre = (np.asarray(shape) - 1)[:, None, None, None] / 2.0
    mm = (grid - centre) * VOXEL_MM
    brain = ((mm / np.array([55.0, 68.0, 55.0])[:, None, None, None]) ** 2).sum(0) <= 1.0
    ventricle = np.zeros(shape, dtype=bool)
    for side in (-1.0, 1.0):
        offset = mm - np.array([side * 9.0, 0.0, 5.0])[:, None, None, None]
        offset = offset - np.asarray(shift_mm)[:, None, None, None]
        ventricle |= ((offset / np.array([5.0, 20.0, 8.0])[:, None, None, None]) ** 2).sum(0) <= 1
    ventricle &= brain
    md = np.where(brain, 0.8e-3, 0.0)
    md[ventricle] = 3.0e-3
    dseg = np.where(brain, 3, 0).astype(np.uint8)
    dseg[ventricle] = 1
    return md, brain, ventricle, dseg


def _coverage(dwi_shift_mm=(0.0, 0.0, 0.0), t1w_shift_mm=(0.0, 0.0, 0.0), register=None):
    md, mask, _, _ = _head(shift_mm=dwi_shift_mm)
    _, brain, _, dseg = _head(shift_mm=t1w_shift_mm)
    affine = np.diag([VOXEL_MM] * 3 + [1.0])
    found = ventricles.dwi_ventricles(md, mask, (VOXEL_MM,) * 3)
    csf = ventricles.deep_csf_fraction(dseg, brain, (VOXEL_MM,) * 3, (VOXEL_MM,) * 3)
    return ventricles.ventricle_coverage(
        found, affine, csf, affine, np.eye(4) if register is None else register
    )


def test_dwi_ventricles_are_the_deep_free_water_clusters():
    md, mask, truth, _ = _head()
    md = md.copy()
    md[mask & ~truth & (np.indices(md.shape)[0] == 30) & (np.indices(md.shape)[1] == 36)] = 3e-3
    surface = mask & ~np.pad(mask, 1)[2:, 1:-1, 1:-1]  # a CSF-like rim at the mask's edge
    md[surface] = 3e-3
    found = ventricles.dwi_ventricles(md, mask, (VOXEL_MM,) * 3)
    deep_truth = truth  # the ventricles sit >= 8 mm from the edge
    assert found[deep_truth].mean() > 0.95
    assert not found[surface].any(), "surface CSF is left out"
    # a line of high MD one voxel across (a vessel) is below the cluster size
    assert found.sum() <= deep_truth.sum() + 4


def test_the_right_t1w_covers_the_ventricles_and_another_does_not():
    coverage, volume = _coverage()
    assert coverage > 0.95 and volume > 2.0
    # another person's ventricles 10 mm lower: the DWI's fall outside them
    other, _ = _coverage(t1w_shift_mm=(0.0, 0.0, -10.0))
    assert other < 0.3
    # the same T1w, moved 10 mm and registered back exactly by the DWI -> T1w map
    moved = np.eye(4)
    moved[2, 3] = -10.0
    registered, _ = _coverage(t1w_shift_mm=(0.0, 0.0, -10.0), register=moved)
    assert registered == pytest.approx(coverage)


def test_coverage_is_na_without_enough_ventricle():
    md, mask, truth, dseg = _head()
    md = np.where(truth, 0.8e-3, md)  # no free water anywhere
    affine = np.diag([VOXEL_MM] * 3 + [1.0])
    found = ventricles.dwi_ventricles(md, mask, (VOXEL_MM,) * 3)
    csf = ventricles.deep_csf_fraction(dseg, mask, (VOXEL_MM,) * 3, (VOXEL_MM,) * 3)
    coverage, volume = ventricles.ventricle_coverage(found, affine, csf, affine, np.eye(4))
    assert math.isnan(coverage) and volume == 0.0


def test_the_interface_follows_the_dwi_to_template_transform(tmp_path):
    """VentricleCoverage reads the published from-DWI_to-template .mat the right way round: a
    template whose head sits 10 mm higher is covered only through the transform."""
    import nibabel as nib

    from ketamine_dti.ants_backend import matrix_to_affine
    from ketamine_dti.interfaces.anat import VentricleCoverage

    md, mask, _, _ = _head()
    _, brain, _, dseg = _head(shift_mm=(0.0, 0.0, 10.0))
    affine = np.diag([VOXEL_MM] * 3 + [1.0])
    files = {}
    for name, data in (("md", md), ("mask", mask), ("dseg", dseg), ("brain", brain)):
        files[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), files[name])
    # a from-DWI_to-template .mat maps template points to DWI points: 10 mm down (S = +z in LPS)
    down = np.eye(4)
    down[2, 3] = -10.0
    results = {}
    for label, matrix in (("right", down), ("identity", np.eye(4))):
        xfm = matrix_to_affine(matrix, tmp_path / f"{label}.mat")
        node = VentricleCoverage(
            md_file=files["md"], mask_file=files["mask"], tissue_dseg_file=files["dseg"],
            template_mask=files["brain"], from_dwi_to_template=xfm,
        )  # fmt: skip
        results[label] = node.run(cwd=str(tmp_path)).outputs.qc["ventricle_coverage"]
    assert results["right"] > 0.95
    assert results["identity"] < 0.3
