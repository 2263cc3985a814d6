"""Thin Nipype interfaces that condition raw inputs (ketamine_dti.dwi.conditioning)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ketamine_dti.dwi import gradients
from ketamine_dti.dwi.conditioning import condition_dwi, exclude_voxels, squeeze_singleton
from ketamine_dti.interfaces.dwi import _save, _write_gradients


class _PrepareDWIInputSpec(BaseInterfaceInputSpec):
    dwi_files = InputMultiObject(File(exists=True), mandatory=True, desc="raw runs, in order")
    bval_files = InputMultiObject(File(exists=True), mandatory=True)
    bvec_files = InputMultiObject(File(exists=True), mandatory=True)
    b0_threshold = traits.Float(gradients.B0_THRESHOLD, usedefault=True, desc="s/mm^2")


class _PrepareDWIOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="one float32 series: runs concatenated, cleaned")
    out_bval = File(exists=True, desc="b0 volumes as 0; b scaled by |g|^2 (MRtrix3)")
    out_bvec = File(exists=True, desc="unit b-vectors (b0: zero)")
    nonfinite_mask = File(exists=True, desc="voxels that held NaN/Inf (zeroed)")
    n_nonfinite_voxels = traits.Int()
    n_zero_volumes = traits.Int(desc="all-zero volumes left out")


class PrepareDWI(SimpleInterface):
    """Runs of a session as one clean series (see ``conditioning.condition_dwi``)."""

    input_spec = _PrepareDWIInputSpec
    output_spec = _PrepareDWIOutputSpec

    def _run_interface(self, runtime):
        images = [nib.load(path) for path in self.inputs.dwi_files]
        runs = [
            (
                image.get_fdata(dtype=np.float32),
                gradients.read_bvals(bval),
                gradients.read_bvecs(bvec),
            )
            for image, bval, bvec in zip(
                images, self.inputs.bval_files, self.inputs.bvec_files, strict=True
            )
        ]
        clean = condition_dwi(runs, self.inputs.b0_threshold)
        cwd = Path(runtime.cwd)
        self._results["out_file"] = _save(clean.data, images[0], str(cwd / "dwi.nii"))
        self._results["nonfinite_mask"] = _save(
            clean.nonfinite_mask, images[0], str(cwd / "nonfinite_mask.nii.gz"), np.uint8
        )
        table = gradients.GradientTable(bvals=clean.bvals, bvecs=clean.bvecs)
        _write_gradients(cwd, "dwi", table, self._results)
        self._results["n_nonfinite_voxels"] = int(clean.nonfinite_mask.sum())
        self._results["n_zero_volumes"] = clean.n_zero_volumes
        return runtime


class _PrepareT1wInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="raw T1w per session")


class _PrepareT1wOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="3-D T1w per session (same order)")


class PrepareT1w(SimpleInterface):
    """T1w images as 3-D, finite images; files that are already so pass unchanged."""

    input_spec = _PrepareT1wInputSpec
    output_spec = _PrepareT1wOutputSpec

    def _run_interface(self, runtime):
        out_files = []
        for index, path in enumerate(self.inputs.in_files):
            image = nib.load(path)
            data = np.asanyarray(image.dataobj)
            finite = not np.issubdtype(data.dtype, np.floating) or np.isfinite(data).all()
            if image.ndim == 3 and finite:
                out_files.append(path)
                continue
            clean = np.nan_to_num(squeeze_singleton(image.get_fdata(dtype=np.float32)))
            out = Path(runtime.cwd) / f"t1w_{index}.nii.gz"
            header = image.header.copy()
            header.set_data_shape(clean.shape)
            header.set_data_dtype(np.float32)
            nib.save(nib.Nifti1Image(clean, image.affine, header), out)
            out_files.append(str(out))
        self._results["out_files"] = out_files
        return runtime


class _ExcludeVoxelsInputSpec(BaseInterfaceInputSpec):
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the DWI grid")
    exclude_file = File(exists=True, mandatory=True, desc="voxels to leave out (same grid)")
    outside_file = File(exists=True, desc="more voxels to leave out: read outside the FOV")


class _ExcludeVoxelsOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the mask without them (the input if none is excluded)")


class ExcludeVoxels(SimpleInterface):
    """Mask out voxels whose raw signal was unusable (NaN/Inf, zeroed by PrepareDWI) or that
    the one resampling read outside some volume's field of view (``outside_file``)."""

    input_spec = _ExcludeVoxelsInputSpec
    output_spec = _ExcludeVoxelsOutputSpec

    def _run_interface(self, runtime):
        excluded = np.asanyarray(nib.load(self.inputs.exclude_file).dataobj) > 0
        if isdefined(self.inputs.outside_file):
            excluded = excluded | (np.asanyarray(nib.load(self.inputs.outside_file).dataobj) > 0)
        if not excluded.any():
            self._results["out_file"] = self.inputs.mask_file
            return runtime
        image = nib.load(self.inputs.mask_file)
        mask = exclude_voxels(np.asanyarray(image.dataobj) > 0, excluded)
        out = str(Path(runtime.cwd) / "mask_valid.nii.gz")
        self._results["out_file"] = _save(mask, image, out, np.uint8)
        return runtime
