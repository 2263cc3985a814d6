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


class _ToDWIInputSpec(BaseInterfaceInputSpec):
    method = traits.Enum(
        "fraction",
        "nearest",
        usedefault=True,
        desc="label transfer: linear label fractions, or nearest neighbour",
    )
    atlas_file = File(exists=True, mandatory=True, desc="atlas dseg in MNI152NLin6Asym")
    tissue_dseg_file = File(
        exists=True,
        mandatory=True,
        desc="tissue segmentation (1 CSF, 2 GM, 3 WM), subject template",
    )
    reference_file = File(exists=True, mandatory=True, desc="b0 reference (DWI grid)")
    from_mni_to_template = _TransformList
    from_template_to_session = _TransformList
    from_t1w_to_dwi = _TransformList
    n_threads = traits.Int(1, usedefault=True)


class _ToDWIOutputSpec(TraitedSpec):
    dseg_file = File(exists=True, desc="atlas labels on the DWI grid")
    gm_file = File(exists=True, desc="GM fraction of each DWI voxel")
    csf_file = File(exists=True, desc="CSF fraction of each DWI voxel")


class AtlasToDWI(SimpleInterface):
    """Move the atlas (MNI) and tissue fractions (subject template) onto the DWI grid.

    Transforms are composed MNI -> subject template -> session T1w -> DWI, so each mask is
    interpolated once; the MD map itself never moves.
    """

    input_spec = _ToDWIInputSpec
    output_spec = _ToDWIOutputSpec

    @limited_by_n_threads
    def _run_interface(self, runtime):
        from ketamine_dti.anat.segmentation import TISSUE_NAMES
        from ketamine_dti.anat.transfer import atlas_to_dwi, warp_tissue_fraction
        from ketamine_dti.ants_backend import compose_transforms

        cwd = Path(runtime.cwd)
        template_to_dwi = compose_transforms(
            self.inputs.from_template_to_session, self.inputs.from_t1w_to_dwi
        )
        mni_to_dwi = compose_transforms(self.inputs.from_mni_to_template, template_to_dwi)
        threads = self.inputs.n_threads
        self._results["dseg_file"] = atlas_to_dwi(
            self.inputs.atlas_file,
            self.inputs.reference_file,
            mni_to_dwi,
            cwd / "atlas_dwi.nii.gz",
            method=self.inputs.method,
            n_threads=threads,
        )
        for name in ("gm", "csf"):
            self._results[f"{name}_file"] = warp_tissue_fraction(
                self.inputs.tissue_dseg_file,
                TISSUE_NAMES.index(name) + 1,
                self.inputs.reference_file,
                template_to_dwi,
                cwd / f"{name}_dwi.nii.gz",
                n_threads=threads,
            )
        return runtime


class _ROIStatsInputSpec(BaseInterfaceInputSpec):
    md_file = File(exists=True, mandatory=True, desc="MD, mm^2/s, native DWI grid")
    fa_file = File(exists=True, mandatory=True)
    fw_md_file = File(exists=True, desc="free-water-corrected MD, mm^2/s, the MD map's grid")
    fw_fraction_file = File(exists=True, desc="free-water fraction, the MD map's grid")
    dseg_file = File(exists=True, mandatory=True)
    displacement_file = File(exists=True, desc="corrected susceptibility displacement (mm)")
    jacobian_file = File(exists=True, desc="its Jacobian intensity factor")
    gm_file = File(exists=True, mandatory=True)
    csf_file = File(exists=True, mandatory=True)
    mask_file = File(exists=True, mandatory=True)
    roi_names = traits.List(traits.Str, mandatory=True)
    min_fraction = traits.Float(desc="ROI missing below this fraction of its atlas voxels")
    min_voxels = traits.Int(desc="ROI missing below this many kept voxels")


class _ROIStatsOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="TSV: one row per ROI")
    kept_dseg_file = File(exists=True, desc="labels of the voxels kept by the GM rule")


class ROIStats(SimpleInterface):
    """Gray-matter MD statistics per ROI, on the never-resampled MD map (and, when given, the
    free-water maps of the same grid, over the same voxels)."""

    input_spec = _ROIStatsInputSpec
    output_spec = _ROIStatsOutputSpec

    def _run_interface(self, runtime):
        from ketamine_dti.rois import (
            RetentionRule,
            gray_matter_mask,
            regional_statistics,
            valid_fit,
        )

        md_image = nib.load(self.inputs.md_file)

        def load(path):
            return np.asanyarray(nib.load(path).dataobj)

        md = md_image.get_fdata()
        fa, gm, csf = (
            load(self.inputs.fa_file),
            load(self.inputs.gm_file),
            load(self.inputs.csf_file),
        )
        free_water = {}
        for name in ("fw_md", "fw_fraction"):
            path = getattr(self.inputs, f"{name}_file")
            free_water[name] = None
            if isdefined(path):
                image = nib.load(path)
                if not np.allclose(image.affine, md_image.affine, atol=1e-4):
                    raise ValueError(f"{path}: not on the MD map's grid; fit it on the same DWI")
                free_water[name] = np.asanyarray(image.dataobj)
        distortion = {
            name: load(getattr(self.inputs, f"{name}_file"))
            if isdefined(getattr(self.inputs, f"{name}_file")) else None
            for name in ("displacement", "jacobian")
        }  # fmt: skip
        labels = load(self.inputs.dseg_file).astype(np.int64)
        brain = load(self.inputs.mask_file) > 0
        retention = RetentionRule(
            **{
                name: getattr(self.inputs, name)
                for name in ("min_fraction", "min_voxels")
                if isdefined(getattr(self.inputs, name))
            }
        )
        table = regional_statistics(
            md,
            labels,
            fa=fa,
            **free_water,
            gm_prob=gm,
            csf_prob=csf,
            brain_mask=brain,
            displacement_mm=distortion["displacement"],
            jacobian=distortion["jacobian"],
            retention=retention,
            roi_names=self.inputs.roi_names,
        )
        out = Path(runtime.cwd) / "roi_md.tsv"
        table.to_csv(out, sep="\t", index=False, float_format="%.6g", na_rep="n/a")
        kept = gray_matter_mask(gm, csf) & valid_fit(md) & brain
        kept = np.where(kept, labels, 0).astype(np.uint8)
        kept_image = nib.Nifti1Image(kept, md_image.affine)
        kept_image.header.set_xyzt_units("mm")
        nib.save(kept_image, Path(runtime.cwd) / "roi_kept_dseg.nii.gz")
        self._results["out_file"] = str(out)
        self._results["kept_dseg_file"] = str(Path(runtime.cwd) / "roi_kept_dseg.nii.gz")
        return runtime
