"""Input conditioning: runs combined, NaN/Inf zeroed, all-zero volumes out, T1w squeezed."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from ketamine_dti.dwi import gradients
from ketamine_dti.dwi.conditioning import (
    condition_dwi,
    exclude_voxels,
    squeeze_singleton,
    zero_volumes,
)


def _run(rng, n_dw=7, b0=0.0):
    directions = rng.normal(size=(n_dw, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    bvals = np.r_[b0, np.full(n_dw, 1000.0)]
    bvecs = np.vstack([np.zeros((1, 3)), directions])
    data = rng.uniform(50, 100, (5, 5, 4, n_dw + 1)).astype(np.float32)
    return data, bvals, bvecs


def test_runs_are_concatenated_and_cleaned():
    rng = np.random.default_rng(0)
    first, second = _run(rng), _run(rng, b0=30.0)  # scanner-style b=30 "b0"
    first[0][1, 1, 1, 2] = np.nan
    first[0][2, 2, 2, 5] = np.inf
    second[0][..., 4] = 0  # a dropped volume
    clean = condition_dwi([first, second])
    assert clean.data.shape == (5, 5, 4, 15) and clean.n_zero_volumes == 1
    assert int(clean.nonfinite_mask.sum()) == 2 and np.isfinite(clean.data).all()
    assert np.all(clean.data[1, 1, 1] == 0)  # the whole voxel, not one volume
    assert clean.bvals.tolist() == [0] + [1000] * 7 + [0] + [1000] * 6  # b=30 -> 0
    expected = second[0][..., 1:4].copy()
    expected[clean.nonfinite_mask] = 0
    assert np.array_equal(clean.data[..., 9:12], expected)
    assert np.allclose(np.linalg.norm(clean.bvecs[clean.bvals > 0], axis=1), 1)


def test_zero_volumes_and_squeeze():
    data = np.ones((2, 2, 2, 3))
    data[..., 1] = 0
    assert zero_volumes(data).tolist() == [False, True, False]
    assert squeeze_singleton(np.ones((3, 4, 5, 1))).shape == (3, 4, 5)
    assert squeeze_singleton(np.ones((3, 4, 5))).shape == (3, 4, 5)
    assert exclude_voxels(np.ones(3), np.array([0, 1, 0])).tolist() == [True, False, True]


def test_prepare_interfaces(tmp_path):
    from ketamine_dti.interfaces.inputs import PrepareDWI, PrepareT1w

    rng = np.random.default_rng(1)
    files = {}
    for index in (1, 2):
        data, bvals, bvecs = _run(rng)
        stem = tmp_path / f"run{index}"
        nib.save(nib.Nifti1Image(data, np.eye(4)), f"{stem}.nii.gz")
        gradients.write_bvals(f"{stem}.bval", bvals)
        gradients.write_bvecs(f"{stem}.bvec", bvecs * 0.5)  # |g| = 0.5: b = 250
        files.setdefault("dwi", []).append(f"{stem}.nii.gz")
        files.setdefault("bval", []).append(f"{stem}.bval")
        files.setdefault("bvec", []).append(f"{stem}.bvec")
    work = tmp_path / "work"
    work.mkdir()
    result = (
        PrepareDWI(dwi_files=files["dwi"], bval_files=files["bval"], bvec_files=files["bvec"])
        .run(cwd=str(work))
        .outputs
    )
    assert nib.load(result.out_file).shape == (5, 5, 4, 16)
    assert set(gradients.read_bvals(result.out_bval)) == {0.0, 250.0}
    assert result.n_nonfinite_voxels == 0 and result.n_zero_volumes == 0
    t1w = tmp_path / "t1w.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6, 1), np.float32), np.eye(4)), t1w)
    plain = tmp_path / "plain.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)), plain)
    out = PrepareT1w(in_files=[str(t1w), str(plain)]).run(cwd=str(work)).outputs.out_files
    assert nib.load(out[0]).shape == (6, 6, 6) and out[1] == str(plain)
