"""Thin Nipype interfaces over the DWI numeric core (ketamine_dti.dwi).

Each interface reads its files, calls the core (``dwi/``) and writes the result into the node's
working directory; every choice of method or threshold lives in the core. Interfaces with an
``n_threads`` input run under ``ketamine_dti.threads.limit_threads``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ketamine_dti.dwi import gradients
from ketamine_dti.dwi.denoise import mppca
from ketamine_dti.dwi.layout import f_ordered
from ketamine_dti.dwi.resampling import INTERPOLATION_ORDER
from ketamine_dti.dwi.tensor import fit_tensor
from ketamine_dti.threads import limited_by_n_threads

LOGGER = logging.getLogger(__name__)


def _save(data: np.ndarray, reference: nib.Nifti1Image, path: str, dtype=np.float32) -> str:
    """Write `data` on the grid of `reference` (same affine, header units kept)."""
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    image = nib.Nifti1Image(f_ordered(np.asarray(data, dtype=dtype)), reference.affine, header)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)
    return str(Path(path).resolve())


def b0_volume_indices(image: nib.Nifti1Image, bval_file: str, b0_threshold: float) -> np.ndarray:
    """Indices of an image's b0 volumes by ``bval_file``; without one every volume is a b0 (an
    fmap EPI image, or a single b0)."""
    n_volumes = image.shape[3] if len(image.shape) == 4 else 1
    if not bval_file:
        return np.arange(n_volumes)
    return np.flatnonzero(gradients.read_bvals(bval_file) <= b0_threshold)


def _load_dwi(in_file: str, bval_file: str, bvec_file: str):
    """The 4-D DWI image, its float32 data and its gradient table."""
    image = nib.load(in_file)
    gtab = gradients.GradientTable(
        bvals=gradients.read_bvals(bval_file), bvecs=gradients.read_bvecs(bvec_file)
    )
    return image, image.get_fdata(dtype=np.float32), gtab


def _write_gradients(cwd: Path, stem: str, gtab: gradients.GradientTable, results: dict) -> None:
    """Write ``<stem>.bval``/``<stem>.bvec`` and record them as ``out_bval``/``out_bvec``."""
    gradients.write_bvals(cwd / f"{stem}.bval", gtab.bvals)
    gradients.write_bvecs(cwd / f"{stem}.bvec", gtab.bvecs)
    results["out_bval"] = str(cwd / f"{stem}.bval")
    results["out_bvec"] = str(cwd / f"{stem}.bvec")


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
        self._results["out_file"] = self.inputs.dwi_file  # checked, passed on unchanged
        _write_gradients(Path(runtime.cwd), "dwi", gtab, self._results)
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

    @limited_by_n_threads
    def _run_interface(self, runtime):
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
    b0_only_bval = traits.Str(
        desc="'' or a .bval: with one, only the b0 volumes (b <= b0_threshold) are unrung and "
        "written (a reverse-PE DWI series, of which only the b0s are used); '' (an fmap EPI) "
        "or undefined: every volume"
    )
    b0_threshold = traits.Float(gradients.B0_THRESHOLD, usedefault=True)
    n_threads = traits.Int(1, usedefault=True)


class _UnringOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class Unring(SimpleInterface):
    """Gibbs-ringing removal (Kellner et al. 2016)."""

    input_spec = _UnringInputSpec
    output_spec = _UnringOutputSpec

    @limited_by_n_threads
    def _run_interface(self, runtime):
        from ketamine_dti.dwi.gibbs import remove_gibbs

        image = nib.load(self.inputs.in_file)
        bval = self.inputs.b0_only_bval if isdefined(self.inputs.b0_only_bval) else ""
        if bval and len(image.shape) == 4:  # read only the b0 volumes, not the whole series
            indices = b0_volume_indices(image, bval, self.inputs.b0_threshold)
            data = np.stack([image.dataobj[..., int(i)] for i in indices], axis=-1)
        else:
            data = image.dataobj[...]
        unrung = remove_gibbs(np.asarray(data, dtype=np.float32), self.inputs.n_threads)
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
    out_bval = File(exists=True)
    out_bvec = File(exists=True, desc="b-vectors rotated with the head")
    b0_reference = File(exists=True, desc="mean of the aligned b0 volumes (not SDC-corrected)")
    confounds_file = File(exists=True, desc="TSV: 6 motion parameters + framewise_displacement")
    affines_file = File(exists=True, desc="(N, 4, 4) RAS+ reference -> raw-volume maps, .npy")
    mean_fd = traits.Float(desc="mm")
    max_fd = traits.Float(desc="mm")
    n_outlier_volumes = traits.Int()


class MotionCorrect(SimpleInterface):
    """Per-volume affine registration (b0s to a b0 reference, DW volumes to their shell mean),
    with b-vector rotation and FD. The volumes are resampled later, once, by ResampleDWI
    (with the susceptibility displacement when there is one)."""

    input_spec = _MotionInputSpec
    output_spec = _MotionOutputSpec

    @limited_by_n_threads
    def _run_interface(self, runtime):
        from ketamine_dti.dwi import motion

        image, data, gtab = _load_dwi(
            self.inputs.in_file, self.inputs.bval_file, self.inputs.bvec_file
        )
        result = motion.correct_series(
            data, gtab, image.affine, image.header.get_zooms()[:3], pe_axis=self.inputs.pe_axis,
            resample_volumes=False,
        )  # fmt: skip
        cwd = Path(runtime.cwd)
        self._results["b0_reference"] = _save(
            result.reference, image, str(cwd / "b0_reference.nii.gz")
        )
        rotated = gradients.GradientTable(bvals=gtab.bvals, bvecs=result.bvecs)
        _write_gradients(cwd, "dwi_hmc", rotated, self._results)
        table = motion.confounds_table(result)
        table.to_csv(cwd / "confounds.tsv", sep="\t", index=False, float_format="%.6g")
        np.save(cwd / "affines.npy", result.affines)
        self._results["confounds_file"] = str(cwd / "confounds.tsv")
        self._results["affines_file"] = str(cwd / "affines.npy")
        self._results.update(motion.motion_summary(result))
        return runtime


class _ResampleInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="the series motion was estimated on")
    bval_file = File(exists=True, mandatory=True)
    bvec_file = File(exists=True, mandatory=True)
    affines_file = File(exists=True, mandatory=True, desc="MotionCorrect's reference -> raw maps")
    field_file = File(exists=True, desc="susceptibility field (Hz) on the reference grid")
    pe_direction = traits.Str(desc="BIDS PhaseEncodingDirection (with field_file)")
    readout = traits.Float(desc="TotalReadoutTime, s (with field_file)")
    order = traits.Enum(
        INTERPOLATION_ORDER, *({1, 3} - {INTERPOLATION_ORDER}), usedefault=True,
        desc="spline order: 3 cubic B-spline, 1 trilinear (dwi.resampling)",
    )  # fmt: skip


class _ResampleOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="corrected DWI on the b0 reference grid")
    b0_reference = File(exists=True, desc="mean of the corrected b0 volumes")
    displacement_file = File(
        desc="displacement that was corrected (mm, signed along the PE direction)"
    )
    outside_file = File(
        exists=True, desc="voxels some volume read outside its field of view (no data there)"
    )
    jacobian_file = File(desc="Jacobian intensity factor that was applied")


class ResampleDWI(SimpleInterface):
    """The one interpolation of the series (``dwi.resampling``): motion/eddy maps plus the
    susceptibility displacement and Jacobian when a field is given."""

    input_spec = _ResampleInputSpec
    output_spec = _ResampleOutputSpec

    def _run_interface(self, runtime):
        from ketamine_dti.dwi import resampling, susceptibility

        image, data, gtab = _load_dwi(
            self.inputs.in_file, self.inputs.bval_file, self.inputs.bvec_file
        )
        cwd = Path(runtime.cwd)
        displacement = None
        if isdefined(self.inputs.field_file):
            field = nib.load(self.inputs.field_file).get_fdata(dtype=np.float32)
            pe, readout = self.inputs.pe_direction, self.inputs.readout
            axis, _ = susceptibility.phase_encoding(pe)
            displacement = resampling.Displacement(
                shift=susceptibility.displacement_voxels(field, readout, pe),
                axis=axis,
                jacobian=susceptibility.jacobian(field, readout, pe),
            )
            zoom = float(np.linalg.norm(image.affine[:3, axis]))
            self._results["displacement_file"] = _save(
                displacement.shift * zoom, image, str(cwd / "displacement_mm.nii.gz")
            )
            self._results["jacobian_file"] = _save(
                displacement.jacobian, image, str(cwd / "jacobian.nii.gz")
            )
        affines = np.load(self.inputs.affines_file)
        corrected = resampling.resample_series(
            data, affines, image.affine, displacement, order=self.inputs.order
        )
        outside = resampling.outside_field_of_view(affines, image.affine, data.shape, displacement)
        self._results["outside_file"] = _save(
            outside, image, str(cwd / "outside_fov.nii.gz"), np.uint8
        )
        self._results["out_file"] = _save(corrected, image, str(cwd / "dwi_corrected.nii"))
        reference = corrected[..., gtab.b0_mask].mean(axis=-1)
        self._results["b0_reference"] = _save(reference, image, str(cwd / "b0_reference.nii.gz"))
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
    method = traits.Enum("wls", "ols", "nlls", "restore", usedefault=True)
    noise_file = File(exists=True, desc="noise SD map (MP-PCA) for RESTORE's outlier test")
    n_threads = traits.Int(1, usedefault=True)


def _load_masked_dwi(inputs):
    """The image, data, gradient table and boolean brain mask of a fit's inputs."""
    image, data, gtab = _load_dwi(inputs.in_file, inputs.bval_file, inputs.bvec_file)
    return image, data, gtab, np.asanyarray(nib.load(inputs.mask_file).dataobj) > 0


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

    @limited_by_n_threads
    def _run_interface(self, runtime):
        from ketamine_dti.dwi.qc import tensor_residual

        image, data, gtab, mask = _load_masked_dwi(self.inputs)
        bvals, bvecs = gtab.bvals, gtab.bvecs
        noise = None
        if isdefined(self.inputs.noise_file):
            noise = nib.load(self.inputs.noise_file).get_fdata(dtype=np.float32)
        fit = fit_tensor(
            data,
            bvals,
            bvecs,
            mask=mask,
            method=self.inputs.method,
            n_threads=self.inputs.n_threads,
            noise=noise,
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


class _SliceOutliersInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="corrected DWI, still on the raw slice grid")
    bval_file = File(exists=True, mandatory=True)
    bvec_file = File(exists=True, mandatory=True)
    mask_file = File(exists=True, mandatory=True)
    confounds_file = File(exists=True, mandatory=True, desc="MotionCorrect's confounds TSV")
    slice_axis = traits.Enum(2, 0, 1, usedefault=True, desc="voxel axis of the slices")
    replace = traits.Bool(True, usedefault=True, desc="False: detect and count only")
    n_threads = traits.Int(1, usedefault=True)


class _SliceOutliersOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="DWI with outlier slices replaced by the prediction")
    confounds_file = File(exists=True, desc="the confounds TSV plus per-volume slice counts")
    n_replaced_slices = traits.Int()


class SliceOutliers(SimpleInterface):
    """Slice-dropout detection and replacement (``dwi.slice_outliers``), counted per volume in
    the confounds table."""

    input_spec = _SliceOutliersInputSpec
    output_spec = _SliceOutliersOutputSpec

    @limited_by_n_threads
    def _run_interface(self, runtime):
        import pandas as pd

        from ketamine_dti.dwi.slice_outliers import replace_slice_outliers

        image, data, gtab, mask = _load_masked_dwi(self.inputs)
        result = replace_slice_outliers(
            data, gtab.bvals, gtab.bvecs, mask, slice_axis=self.inputs.slice_axis,
            replace=self.inputs.replace,
        )  # fmt: skip
        cwd = Path(runtime.cwd)
        confounds = pd.read_csv(self.inputs.confounds_file, sep="\t")
        columns = result.confounds(self.inputs.replace)
        for name, values in columns.items():
            confounds[name] = values
        confounds.to_csv(cwd / "confounds.tsv", sep="\t", index=False, float_format="%.6g")
        self._results["confounds_file"] = str(cwd / "confounds.tsv")
        self._results["n_replaced_slices"] = int(columns["replaced_slices"].sum())
        if self.inputs.replace:
            self._results["out_file"] = _save(result.data, image, str(cwd / "dwi_repol.nii"))
        else:
            self._results["out_file"] = self.inputs.in_file
        return runtime


class _FreeWaterInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="preprocessed DWI (the tensor fit's input)")
    bval_file = File(exists=True, mandatory=True)
    bvec_file = File(exists=True, mandatory=True)
    mask_file = File(exists=True, mandatory=True, desc="the tensor fit's brain mask")
    md_file = File(exists=True, desc="the tensor fit's MD (single shell: b0 references)")
    fa_file = File(exists=True, desc="the tensor fit's FA (single shell: b0 references)")
    gray_matter_file = File(
        exists=True, desc="gray matter by anatomy, same grid (single shell: tissue b0 reference)"
    )
    n_threads = traits.Int(1, usedefault=True)


class _FreeWaterOutputSpec(TraitedSpec):
    md_file = File(exists=True, desc="free-water-corrected (tissue) MD, mm^2/s")
    fwf_file = File(exists=True, desc="free-water signal fraction, 0..1")
    metadata_file = File(exists=True, desc="JSON sidecar content of the fit as run")
    single_shell = traits.Bool(desc="whether the single-shell (prior-regularised) fit ran")


class FreeWaterElimination(SimpleInterface):
    """Free-water elimination (``dwi.free_water``): tissue MD and free-water fraction maps.

    The single-shell b0 references come from the session's tensor fit when its maps are given
    (a second WLS fit of the same data cost ~3 s per standard session) and, for tissue, from
    the gray matter of ``gray_matter_file`` when given, after the b0's receive field is
    divided out; the sidecar records the prior the fit used and the field's spread.
    """

    input_spec = _FreeWaterInputSpec
    output_spec = _FreeWaterOutputSpec

    @limited_by_n_threads
    def _run_interface(self, runtime):
        from ketamine_dti.dwi import free_water

        image, data, gtab, mask = _load_masked_dwi(self.inputs)
        shells = np.unique(gtab.shells[gtab.shells > 0])
        tensor = {
            f"dti_{name}": nib.load(getattr(self.inputs, f"{name}_file")).get_fdata()
            for name in ("md", "fa")
            if isdefined(getattr(self.inputs, f"{name}_file"))
        }
        gray_matter = None
        if isdefined(self.inputs.gray_matter_file):
            gray = nib.load(self.inputs.gray_matter_file)
            if gray.shape[:3] != image.shape[:3] or not np.allclose(gray.affine, image.affine,
                                                                    atol=1e-4):  # fmt: skip
                raise ValueError(f"{self.inputs.gray_matter_file}: not on the DWI's grid")
            gray_matter = np.asanyarray(gray.dataobj) > 0
        fit = free_water.fit_free_water(
            data, gtab.bvals, gtab.bvecs, mask=mask, n_threads=self.inputs.n_threads,
            voxel_mm=image.header.get_zooms()[:3], gray_matter=gray_matter, **tensor,
        )  # fmt: skip
        cwd = Path(runtime.cwd)
        self._results["md_file"] = _save(fit.md, image, str(cwd / "fw_md.nii.gz"))
        self._results["fwf_file"] = _save(fit.f_water, image, str(cwd / "fw_fraction.nii.gz"))
        metadata = {"Model": _free_water_record(fit, shells)}
        (cwd / "fwdti.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        self._results["metadata_file"] = str(cwd / "fwdti.json")
        self._results["single_shell"] = fit.single_shell
        return runtime


def _free_water_record(fit, shells: np.ndarray) -> dict:
    """What the sidecar records of one fit: method, shells (s/mm^2), prior values, failures."""
    prior = fit.prior
    record = {
        "FitMethod": "single-shell" if fit.single_shell else "multi-shell",
        "Shells": [round(float(b), 1) for b in shells],
        "FailedVoxels": int(fit.failed.sum()),
    }
    if prior is not None:
        finite = bool(np.isfinite(prior.s0_tissue))
        record["SingleShellPrior"] = {
            "B0ReferenceTissue": round(prior.s0_tissue, 4) if finite else None,
            "B0ReferenceWater": round(prior.s0_water, 4) if finite else None,
            "B0ReferenceTissueVoxels": prior.tissue_reference if finite else None,
            "NoiseSD": round(prior.noise_sd, 4),
            "B0PriorUsed": finite,
            "B0ReceiveFieldRange": (
                None
                if prior.receive_field_range is None
                else [round(v, 4) for v in prior.receive_field_range]
            ),
        }
    return record
