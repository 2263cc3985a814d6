"""Thin Nipype interfaces over the atlas transfer (ketamine_dti.anat.transfer) and the ROI
statistics (ketamine_dti.rois)."""

from __future__ import annotations

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

from ketamine_dti.threads import limited_by_n_threads

_TransformList = traits.List(traits.Str, desc="ANTs transform files, from-X_to-Y convention")


class _TemplateRegionsInputSpec(BaseInterfaceInputSpec):
    atlas_file = File(exists=True, mandatory=True, desc="atlas dseg in MNI152NLin6Asym")
    tissue_dseg_file = File(
        exists=True,
        mandatory=True,
        desc="tissue segmentation (1 CSF, 2 GM, 3 WM), subject template",
    )
    from_mni_to_template = _TransformList
    dwi_files = traits.List(
        File(exists=True), mandatory=True, desc="the participant's DWI series (grids only)"
    )
    n_threads = traits.Int(1, usedefault=True)


class _TemplateRegionsOutputSpec(TraitedSpec):
    atlas_file = File(exists=True, desc="atlas labels on the subject-template grid")
    gm_file = File(exists=True, desc="GM share of the DWI voxel that holds each point")
    csf_file = File(exists=True, desc="CSF share of the DWI voxel that holds each point")


class TemplateRegions(SimpleInterface):
    """The ROIs once per participant, in the subject template: the atlas (one interpolation
    from MNI) and the tissue shares that decide which points count as gray matter."""

    input_spec = _TemplateRegionsInputSpec
    output_spec = _TemplateRegionsOutputSpec

    @limited_by_n_threads
    def _run_interface(self, runtime):
        from ketamine_dti.anat.segmentation import TISSUE_NAMES
        from ketamine_dti.anat.transfer import atlas_to_grid, containing_voxel_fraction

        cwd = Path(runtime.cwd)
        dseg = nib.load(self.inputs.tissue_dseg_file)
        self._results["atlas_file"] = atlas_to_grid(
            self.inputs.atlas_file,
            self.inputs.tissue_dseg_file,
            self.inputs.from_mni_to_template,
            cwd / "atlas_template.nii.gz",
            n_threads=self.inputs.n_threads,
        )
        labels = np.rint(np.asanyarray(dseg.dataobj)).astype(np.int16)
        dwi_voxel = largest_voxel(self.inputs.dwi_files)
        for name in ("gm", "csf"):
            share = containing_voxel_fraction(
                labels == TISSUE_NAMES.index(name) + 1, dseg.header.get_zooms()[:3], dwi_voxel
            )
            out = nib.Nifti1Image(share.astype(np.float32), dseg.affine)
            out.header.set_xyzt_units("mm")
            self._results[f"{name}_file"] = str(cwd / f"{name}_share.nii.gz")
            nib.save(out, self._results[f"{name}_file"])
        return runtime


def voxel_sizes(paths: list[str]) -> list[tuple[float, float, float]]:
    """Each image's voxel (mm per axis), from its header only."""
    return [tuple(float(z) for z in nib.load(path).header.get_zooms()[:3]) for path in paths]


def largest_voxel(paths: list[str]) -> tuple[float, float, float]:
    """The voxel (mm per axis) with the largest volume among images: the ROI points' tissue
    rule must hold for the coarsest DWI grid they will be read in."""
    return max(voxel_sizes(paths), key=lambda zoom: zoom[0] * zoom[1] * zoom[2])


class _SampleRegionsInputSpec(BaseInterfaceInputSpec):
    atlas_file = File(exists=True, mandatory=True, desc="atlas labels, subject template")
    gm_file = File(exists=True, mandatory=True, desc="GM shares, subject template")
    csf_file = File(exists=True, mandatory=True, desc="CSF shares, subject template")
    from_template_to_session = _TransformList
    from_t1w_to_dwi = _TransformList
    md_file = File(exists=True, mandatory=True, desc="MD, mm^2/s, native DWI grid")
    fa_file = File(exists=True, mandatory=True)
    fw_md_file = File(exists=True, desc="free-water-corrected MD, mm^2/s, the MD map's grid")
    fw_fraction_file = File(exists=True, desc="free-water fraction, the MD map's grid")
    displacement_file = File(exists=True, desc="corrected susceptibility displacement (mm)")
    jacobian_file = File(exists=True, desc="its Jacobian intensity factor")
    mask_file = File(exists=True, mandatory=True, desc="DWI voxels with data (brain mask)")


class _SampleRegionsOutputSpec(TraitedSpec):
    samples_file = File(exists=True, desc="NPZ: the ROI points' DWI voxels and values")
    dseg_file = File(exists=True, desc="atlas labels on the DWI grid (majority of points)")


class SampleRegions(SimpleInterface):
    """Read one session's maps at the participant's ROI points: each subject-template point
    of the atlas takes the value of the DWI voxel it falls in; no map is resampled."""

    input_spec = _SampleRegionsInputSpec
    output_spec = _SampleRegionsOutputSpec

    def _run_interface(self, runtime):
        from ketamine_dti.anat.transfer import majority_labels, template_to_dwi_points
        from ketamine_dti.ants_backend import compose_transforms

        md_image = nib.load(self.inputs.md_file)
        atlas = nib.load(self.inputs.atlas_file)
        labels = np.rint(np.asanyarray(atlas.dataobj)).astype(np.int16)
        points = np.argwhere(labels > 0)
        voxel = template_to_dwi_points(
            points,
            atlas.affine,
            compose_transforms(self.inputs.from_template_to_session, self.inputs.from_t1w_to_dwi),
            md_image.affine,
            md_image.shape,
        )
        inside = voxel >= 0
        at = tuple(points.T)
        samples = {
            "label": labels[at],
            "voxel": voxel,
            "gm": np.asanyarray(nib.load(self.inputs.gm_file).dataobj)[at].astype(np.float32),
            "csf": np.asanyarray(nib.load(self.inputs.csf_file).dataobj)[at].astype(np.float32),
            "dwi_shape": np.asarray(md_image.shape[:3]),
            "dwi_affine": md_image.affine,
        }
        mask = np.asanyarray(nib.load(self.inputs.mask_file).dataobj) > 0
        samples["in_brain"] = inside & mask.ravel()[np.where(inside, voxel, 0)]
        for name in ("md", "fa", "fw_md", "fw_fraction", "displacement", "jacobian"):
            path = getattr(self.inputs, f"{name}_file")
            if not isdefined(path):
                continue
            image = nib.load(path)
            if not np.allclose(image.affine, md_image.affine, atol=1e-4):
                raise ValueError(f"{path}: not on the MD map's grid; fit it on the same DWI")
            flat = np.asanyarray(image.dataobj).astype(np.float32).ravel()
            samples[name] = np.where(inside, flat[np.where(inside, voxel, 0)], np.nan)
        capacity = np.prod(md_image.header.get_zooms()[:3]) / np.prod(atlas.header.get_zooms()[:3])
        dwi_labels = majority_labels(voxel, samples["label"], mask.size, 0.5 * capacity)
        cwd = Path(runtime.cwd)
        self._results["dseg_file"] = _save_labels(dwi_labels, md_image, cwd / "atlas_dwi.nii.gz")
        self._results["samples_file"] = str(cwd / "roi_samples.npz")
        np.savez_compressed(self._results["samples_file"], **samples)
        return runtime


class _RegionalStatisticsInputSpec(BaseInterfaceInputSpec):
    samples_files = traits.List(
        File(exists=True), mandatory=True, desc="SampleRegions outputs, one per session"
    )
    roi_names = traits.List(traits.Str, mandatory=True)
    min_fraction = traits.Float(desc="ROI missing below this fraction of its atlas volume")
    min_voxels = traits.Int(desc="ROI missing below this many DWI voxels")


class _RegionalStatisticsOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="TSV per session: one row per ROI")
    kept_dseg_files = traits.List(
        File(exists=True), desc="per session: labels of the DWI voxels averaged"
    )


class RegionalStatistics(SimpleInterface):
    """Gray-matter MD statistics per ROI and session over one voxel set: the ROI points every
    session could measure (``rois.longitudinal_statistics``)."""

    input_spec = _RegionalStatisticsInputSpec
    output_spec = _RegionalStatisticsOutputSpec

    def _run_interface(self, runtime):
        from ketamine_dti.anat.transfer import majority_labels
        from ketamine_dti.rois import RetentionRule, longitudinal_statistics

        retention = RetentionRule(
            **{
                name: getattr(self.inputs, name)
                for name in ("min_fraction", "min_voxels")
                if isdefined(getattr(self.inputs, name))
            }
        )
        samples = []
        for path in self.inputs.samples_files:
            with np.load(path) as data:
                samples.append({key: data[key] for key in data.files})
        tables, kept = longitudinal_statistics(samples, retention, self.inputs.roi_names)
        cwd = Path(runtime.cwd)
        self._results["out_files"], self._results["kept_dseg_files"] = [], []
        for index, (table, session, used) in enumerate(zip(tables, samples, kept, strict=True)):
            out = cwd / f"roi_md_{index}.tsv"
            table.to_csv(out, sep="\t", index=False, float_format="%.6g", na_rep="n/a")
            grid = nib.Nifti1Image(np.zeros(session["dwi_shape"], np.uint8), session["dwi_affine"])
            labels = majority_labels(
                np.where(used, session["voxel"], -1), session["label"], grid.dataobj.size
            )
            self._results["out_files"].append(str(out))
            self._results["kept_dseg_files"].append(
                _save_labels(labels, grid, cwd / f"roi_kept_{index}_dseg.nii.gz")
            )
        return runtime


def _save_labels(flat: np.ndarray, reference: nib.Nifti1Image, path: Path) -> str:
    """A flat label array as a uint8 dseg on ``reference``'s grid."""
    data = np.asarray(flat).reshape(reference.shape[:3]).astype(np.uint8)
    image = nib.Nifti1Image(data, reference.affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
    return str(path)
