"""Thin Nipype interfaces over the DWI numeric core (ketamine_dti.dwi).

Each interface reads its files, calls one plain function and writes the result into the node's
working directory. No science happens here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ketamine_dti.dwi import gradients
from ketamine_dti.dwi.denoise import mppca
from ketamine_dti.dwi.tensor import fit_tensor

LOGGER = logging.getLogger(__name__)

CONFOUND_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def _set_threads(n_threads: int) -> None:
    """Cap the threads of every numeric library this process may use."""
    value = str(max(1, int(n_threads)))
    for name in (
        "OMP_NUM_THREADS",
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
        "OPENBLAS_NUM_THREADS",
    ):
        os.environ[name] = value


def _save(data: np.ndarray, reference: nib.Nifti1Image, path: str, dtype=np.float32) -> str:
    """Write `data` on the grid of `reference` (same affine, header units kept)."""
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    image = nib.Nifti1Image(np.asarray(data, dtype=dtype), reference.affine, header)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)
    return str(Path(path).resolve())


# --------------------------------------------------------------------------------- interfaces
class _CheckDWIInputSpec(BaseInterfaceInputSpec):
    dwi_file = File(exists=True, mandatory=True, desc="raw 4-D DWI")
    bval_file = File(exists=True, mandatory=True)
    bvec_file = File(exists=True, mandatory=True)


class _CheckDWIOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the DWI, checked")
    out_bval = File(exists=True)
    out_bvec = File(exists=True, desc="unit b-vectors (b0: zero)")


class CheckDWI(SimpleInterface):
    """Check the DWI and its gradient table (InputError if wrong); normalise b-vectors."""

    input_spec = _CheckDWIInputSpec
    output_spec = _CheckDWIOutputSpec

    def _run_interface(self, runtime):
        from ketamine_dti.bids import check_dwi

        gtab = check_dwi(self.inputs.dwi_file, self.inputs.bval_file, self.inputs.bvec_file)
        cwd = Path(runtime.cwd)
        self._results["out_file"] = self.inputs.dwi_file  # checked, passed on unchanged
        gradients.write_bvals(cwd / "dwi.bval", gtab.bvals)
        gradients.write_bvecs(cwd / "dwi.bvec", gtab.bvecs)
        self._results["out_bval"] = str(cwd / "dwi.bval")
        self._results["out_bvec"] = str(cwd / "dwi.bvec")
        return runtime


class _DenoiseInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    patch_radius = traits.Int(2, usedefault=True, desc="voxels; 5x5x5 patches")
    n_threads = traits.Int(1, usedefault=True)


class _DenoiseOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    noise_file = File(exists=True, desc="voxelwise noise SD (signal units)")


class Denoise(SimpleInterface):
    """MP-PCA denoising (Veraart et al. 2016), saving the noise map."""

    input_spec = _DenoiseInputSpec
    output_spec = _DenoiseOutputSpec

    def _run_interface(self, runtime):
        _set_threads(self.inputs.n_threads)
        image = nib.load(self.inputs.in_file)
        denoised, sigma = mppca(
            image.get_fdata(dtype=np.float32),
            patch_radius=self.inputs.patch_radius,
            n_threads=self.inputs.n_threads,
        )
        cwd = Path(runtime.cwd)
        self._results["out_file"] = _save(denoised, image, str(cwd / "dwi_denoised.nii"))
        self._results["noise_file"] = _save(sigma, image, str(cwd / "noise_sigma.nii.gz"))
        return runtime


class _UnringInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    n_threads = traits.Int(1, usedefault=True)


class _UnringOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class Unring(SimpleInterface):
    """Gibbs-ringing removal (Kellner et al. 2016)."""

    input_spec = _UnringInputSpec
    output_spec = _UnringOutputSpec

    def _run_interface(self, runtime):
        from ketamine_dti.dwi.gibbs import remove_gibbs

        _set_threads(self.inputs.n_threads)
        image = nib.load(self.inputs.in_file)
        unrung = remove_gibbs(image.get_fdata(dtype=np.float32), self.inputs.n_threads)
        out = str(Path(runtime.cwd) / "dwi_unrung.nii")
        self._results["out_file"] = _save(unrung, image, out)
        return runtime


class _MotionInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    bval_file = File(exists=True, mandatory=True)
    bvec_file = File(exists=True, mandatory=True)
    pe_axis = traits.Enum(None, 0, 1, 2, usedefault=True, desc="phase-encode voxel axis")
    n_threads = traits.Int(1, usedefault=True)


class _MotionOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="motion/eddy-corrected DWI on the b0 reference grid")
    out_bval = File(exists=True)
    out_bvec = File(exists=True, desc="b-vectors rotated with the head")
    b0_reference = File(exists=True, desc="mean of the aligned b0 volumes")
    confounds_file = File(exists=True, desc="TSV: 6 motion parameters + framewise_displacement")
    affines_file = File(exists=True, desc="(N, 4, 4) RAS+ reference -> raw-volume maps, .npy")
    mean_fd = traits.Float(desc="mm")
    max_fd = traits.Float(desc="mm")
    n_outlier_volumes = traits.Int()


class MotionCorrect(SimpleInterface):
    """Per-volume affine registration to a b0 reference, with b-vector rotation and FD."""

    input_spec = _MotionInputSpec
    output_spec = _MotionOutputSpec

    def _run_interface(self, runtime):
        from ketamine_dti.dwi.mask import brain_mask
        from ketamine_dti.dwi.motion import correct_motion

        _set_threads(self.inputs.n_threads)
        image = nib.load(self.inputs.in_file)
        data = image.get_fdata(dtype=np.float32)
        gtab = gradients.GradientTable(
            bvals=gradients.read_bvals(self.inputs.bval_file),
            bvecs=gradients.read_bvecs(self.inputs.bvec_file),
        )
        first_b0 = data[..., int(np.flatnonzero(gtab.b0_mask)[0])]
        initial_mask = brain_mask(first_b0, image.header.get_zooms()[:3])
        result = correct_motion(
            data, gtab, image.affine, mask=initial_mask, pe_axis=self.inputs.pe_axis
        )
        cwd = Path(runtime.cwd)
        self._results["out_file"] = _save(result.corrected, image, str(cwd / "dwi_hmc.nii"))
        self._results["b0_reference"] = _save(
            result.reference, image, str(cwd / "b0_reference.nii.gz")
        )
        gradients.write_bvals(cwd / "dwi_hmc.bval", gtab.bvals)
        gradients.write_bvecs(cwd / "dwi_hmc.bvec", result.bvecs)
        self._results["out_bval"] = str(cwd / "dwi_hmc.bval")
        self._results["out_bvec"] = str(cwd / "dwi_hmc.bvec")
        confounds = pd.DataFrame(result.parameters, columns=list(CONFOUND_COLUMNS))
        confounds["framewise_displacement"] = result.framewise_displacement
        confounds["motion_outlier"] = result.outliers.astype(int)
        confounds.to_csv(cwd / "confounds.tsv", sep="\t", index=False, float_format="%.6g")
        np.save(cwd / "affines.npy", result.affines)
        self._results["confounds_file"] = str(cwd / "confounds.tsv")
        self._results["affines_file"] = str(cwd / "affines.npy")
        # FD of the first volume is 0 by definition, so it is left out of the mean.
        self._results["mean_fd"] = float(np.mean(result.framewise_displacement[1:]))
        self._results["max_fd"] = float(np.max(result.framewise_displacement))
        self._results["n_outlier_volumes"] = int(result.outliers.sum())
        return runtime


class _MaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="b0 reference")


class _MaskOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class BrainMask(SimpleInterface):
    """Brain mask of the b0 reference."""

    input_spec = _MaskInputSpec
    output_spec = _MaskOutputSpec

    def _run_interface(self, runtime):
        from ketamine_dti.dwi.mask import brain_mask

        image = nib.load(self.inputs.in_file)
        mask = brain_mask(image.get_fdata(dtype=np.float32), image.header.get_zooms()[:3])
        out = str(Path(runtime.cwd) / "brain_mask.nii.gz")
        self._results["out_file"] = _save(mask, image, out, dtype=np.uint8)
        return runtime


class _TensorInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    bval_file = File(exists=True, mandatory=True)
    bvec_file = File(exists=True, mandatory=True)
    mask_file = File(exists=True, mandatory=True)
    method = traits.Enum("wls", "ols", "nlls", usedefault=True)
    n_threads = traits.Int(1, usedefault=True)


class _TensorOutputSpec(TraitedSpec):
    md_file = File(exists=True, desc="mean diffusivity, mm^2/s")
    fa_file = File(exists=True)
    ad_file = File(exists=True, desc="axial diffusivity, mm^2/s")
    rd_file = File(exists=True, desc="radial diffusivity, mm^2/s")
    s0_file = File(exists=True)
    residual_file = File(exists=True, desc="RMS fit residual / S0")
    residual_median = traits.Float(desc="median RMS residual / S0 in the brain")


class TensorFit(SimpleInterface):
    """Diffusion tensor fit (MD, FA, AD, RD) plus a fit-residual QC map."""

    input_spec = _TensorInputSpec
    output_spec = _TensorOutputSpec

    def _run_interface(self, runtime):
        from ketamine_dti.dwi.qc import tensor_residual

        _set_threads(self.inputs.n_threads)
        image = nib.load(self.inputs.in_file)
        data = image.get_fdata(dtype=np.float32)
        bvals = gradients.read_bvals(self.inputs.bval_file)
        bvecs = gradients.read_bvecs(self.inputs.bvec_file)
        mask = np.asanyarray(nib.load(self.inputs.mask_file).dataobj) > 0
        fit = fit_tensor(
            data,
            bvals,
            bvecs,
            mask=mask,
            method=self.inputs.method,
            n_threads=self.inputs.n_threads,
        )
        residual_map, residual_median = tensor_residual(
            data, fit.evals, fit.evecs, fit.s0, bvals, bvecs, mask
        )
        cwd = Path(runtime.cwd)
        for name in ("md", "fa", "ad", "rd", "s0"):
            self._results[f"{name}_file"] = _save(
                getattr(fit, name), image, str(cwd / f"{name}.nii.gz")
            )
        self._results["residual_file"] = _save(residual_map, image, str(cwd / "residual.nii.gz"))
        self._results["residual_median"] = residual_median
        return runtime
