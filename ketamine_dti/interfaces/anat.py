"""Thin Nipype interfaces over the anatomy core (ketamine_dti.anat, ketamine_dti.ants_backend):
files in, files out. Interfaces with an ``n_threads`` input run under ``limit_threads``."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ketamine_dti.threads import limited_by_n_threads

_TransformList = traits.List(traits.Str, desc="ANTs transform files, from-X_to-Y convention")


class _BiasCorrectInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="raw T1w")
    n_threads = traits.Int(1, usedefault=True)


class _BiasCorrectOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class BiasCorrect(SimpleInterface):
    """N4 bias-field correction of a T1w."""

    input_spec = _BiasCorrectInputSpec
    output_spec = _BiasCorrectOutputSpec

    @limited_by_n_threads
    def _run_interface(self, runtime):
        from ketamine_dti.anat.brain import bias_correct

        self._results["out_file"] = bias_correct(self.inputs.in_file, runtime.cwd)
        return runtime


class _SubjectTemplateInputSpec(BaseInterfaceInputSpec):
    t1w_files = InputMultiObject(File(exists=True), mandatory=True, desc="baseline first")
    n_threads = traits.Int(1, usedefault=True)


class _SubjectTemplateOutputSpec(TraitedSpec):
    template_file = File(exists=True)
    from_session_to_template = traits.List(_TransformList)
    from_template_to_session = traits.List(_TransformList)
    qc = traits.Dict()


class SubjectTemplate(SimpleInterface):
    """Unbiased within-subject (halfway) T1w reference of all sessions."""

    input_spec = _SubjectTemplateInputSpec
    output_spec = _SubjectTemplateOutputSpec

    @limited_by_n_threads
    def _run_interface(self, runtime):
        from ketamine_dti.anat.longitudinal import build_subject_template

        result = build_subject_template(
            self.inputs.t1w_files, runtime.cwd, n_threads=self.inputs.n_threads
        )
        self._results["template_file"] = result.template_file
        self._results["from_session_to_template"] = [
            list(t) for t in result.from_session_to_template
        ]
        self._results["from_template_to_session"] = [
            list(t) for t in result.from_template_to_session
        ]
        self._results["qc"] = dict(result.qc)
        return runtime


class _ExtractBrainInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="bias-corrected T1w (head)")
    n_threads = traits.Int(1, usedefault=True)


class _ExtractBrainOutputSpec(TraitedSpec):
    brain_file = File(exists=True)
    mask_file = File(exists=True)
    from_t1w_to_template = _TransformList
    qc = traits.Dict()


class ExtractBrain(SimpleInterface):
    """Template-based brain extraction of a T1w."""

    input_spec = _ExtractBrainInputSpec
    output_spec = _ExtractBrainOutputSpec

    @limited_by_n_threads
    def _run_interface(self, runtime):
        from ketamine_dti.anat.brain import extract_brain

        result = extract_brain(self.inputs.in_file, runtime.cwd, n_threads=self.inputs.n_threads)
        self._results["brain_file"] = result.brain_file
        self._results["mask_file"] = result.mask_file
        self._results["from_t1w_to_template"] = list(result.affine_t1w_to_template)
        self._results["qc"] = dict(result.qc)
        return runtime


class _SegmentInputSpec(BaseInterfaceInputSpec):
    brain_file = File(exists=True, mandatory=True)
    mask_file = File(exists=True, mandatory=True)
    prior_files = traits.List(
        File(exists=True), minlen=3, maxlen=3, desc="CSF, GM, WM priors in MNI (none: k-means)"
    )
    from_mni_to_t1w = _TransformList
    n_threads = traits.Int(1, usedefault=True)


class _SegmentOutputSpec(TraitedSpec):
    csf_file = File(exists=True)
    gm_file = File(exists=True)
    wm_file = File(exists=True)
    dseg_file = File(exists=True)


class SegmentTissues(SimpleInterface):
    """Three-class tissue segmentation (CSF, GM, WM probabilities), with the template's tissue
    priors moved into the T1w when they are given."""

    input_spec = _SegmentInputSpec
    output_spec = _SegmentOutputSpec

    @limited_by_n_threads
    def _run_interface(self, runtime):
        from ketamine_dti.allocator import freed_memory_returned
        from ketamine_dti.anat.segmentation import segment_tissues

        # Atropos' peak, not its page faults, decides whether two participants' fit in memory
        with freed_memory_returned():
            result = segment_tissues(
                self.inputs.brain_file,
                self.inputs.mask_file,
                runtime.cwd,
                priors=self.inputs.prior_files if isdefined(self.inputs.prior_files) else None,
                prior_transforms=(
                    self.inputs.from_mni_to_t1w if isdefined(self.inputs.from_mni_to_t1w) else ()
                ),
                n_threads=self.inputs.n_threads,
            )
        for name in ("csf", "gm", "wm", "dseg"):
            self._results[f"{name}_file"] = getattr(result, f"{name}_file")
        return runtime


class _RegisterMNIInputSpec(BaseInterfaceInputSpec):
    brain_file = File(exists=True, mandatory=True)
    mask_file = File(exists=True, mandatory=True)
    initial_transform = _TransformList
    dwi_files = traits.List(
        File(exists=True), desc="DWI series the ROIs are read in (grids only; none: all levels)"
    )
    n_threads = traits.Int(1, usedefault=True)


class _RegisterMNIOutputSpec(TraitedSpec):
    from_t1w_to_mni = _TransformList
    from_mni_to_t1w = _TransformList
    warped_file = File(exists=True)
    qc = traits.Dict()


class RegisterToMNI(SimpleInterface):
    """SyN registration of the brain-extracted T1w to MNI152NLin6Asym."""

    input_spec = _RegisterMNIInputSpec
    output_spec = _RegisterMNIOutputSpec

    @limited_by_n_threads
    def _run_interface(self, runtime):
        from ketamine_dti.anat.registration import register_to_mni
        from ketamine_dti.interfaces.rois import voxel_sizes

        initial = self.inputs.initial_transform or None
        edges = [min(zoom) for zoom in voxel_sizes(self.inputs.dwi_files)]
        result = register_to_mni(
            self.inputs.brain_file,
            self.inputs.mask_file,
            runtime.cwd,
            initial_transform=initial,
            dwi_voxel_mm=float(min(edges)) if edges else None,
            n_threads=self.inputs.n_threads,
        )
        self._results["from_t1w_to_mni"] = list(result.from_moving_to_fixed)
        self._results["from_mni_to_t1w"] = list(result.from_fixed_to_moving)
        self._results["warped_file"] = result.warped_file
        self._results["qc"] = dict(result.qc)
        return runtime


class _SessionBrainInputSpec(BaseInterfaceInputSpec):
    all_t1w_files = InputMultiObject(File(exists=True), mandatory=True, desc="bias-corrected")
    template_mask_file = File(exists=True, mandatory=True, desc="brain mask, subject template")
    all_template_to_session = traits.List(_TransformList, mandatory=True)
    all_session_to_template = traits.List(_TransformList, mandatory=True)
    session_index = traits.Int(mandatory=True, desc="position of this session (baseline 0)")


class _SessionBrainOutputSpec(TraitedSpec):
    t1w_file = File(exists=True, desc="this session's bias-corrected T1w")
    brain_file = File(exists=True)
    mask_file = File(exists=True)
    from_template_to_session = _TransformList
    from_session_to_template = _TransformList


class SessionBrain(SimpleInterface):
    """The subject-template brain mask brought onto one session's T1w, and that brain."""

    input_spec = _SessionBrainInputSpec
    output_spec = _SessionBrainOutputSpec

    def _run_interface(self, runtime):
        from ketamine_dti.anat.brain import mask_in_session
        from ketamine_dti.ants_backend import WORK_EXTENSION, apply_mask

        index = self.inputs.session_index
        transforms = list(self.inputs.all_template_to_session[index])
        t1w_file = self.inputs.all_t1w_files[index]
        cwd = Path(runtime.cwd)
        mask = mask_in_session(
            self.inputs.template_mask_file,
            t1w_file,
            transforms,
            cwd / "t1w_brainmask.nii.gz",
        )
        self._results["mask_file"] = mask
        self._results["t1w_file"] = t1w_file
        brain_file = cwd / f"t1w_brain{WORK_EXTENSION}"
        self._results["brain_file"] = apply_mask(t1w_file, mask, brain_file)
        self._results["from_template_to_session"] = transforms
        self._results["from_session_to_template"] = list(
            self.inputs.all_session_to_template[index]
        )
        return runtime


class _DWIToT1wInputSpec(BaseInterfaceInputSpec):
    t1w_brain_file = File(exists=True, mandatory=True)
    t1w_mask_file = File(exists=True, mandatory=True)
    b0_file = File(exists=True, mandatory=True, desc="b0 reference of the DWI")
    dwi_mask_file = File(exists=True, mandatory=True)
    tissue_dseg_file = File(
        exists=True, desc="hard tissue labels of the subject template: BBR's white surface"
    )
    from_session_to_template = _TransformList(desc="affine .mat list; needed with the labels")
    n_threads = traits.Int(1, usedefault=True)


class _DWIToT1wOutputSpec(TraitedSpec):
    from_dwi_to_t1w = _TransformList
    from_t1w_to_dwi = _TransformList
    warped_file = File(exists=True)
    qc = traits.Dict()


class DWIToT1w(SimpleInterface):
    """Rigid b0 -> T1w coregistration (mutual information, then boundary-based when the tissue
    labels are given) with a Dice QC of the masks."""

    input_spec = _DWIToT1wInputSpec
    output_spec = _DWIToT1wOutputSpec

    @limited_by_n_threads
    def _run_interface(self, runtime):
        from ketamine_dti.anat.registration import register_dwi_to_t1w

        result = register_dwi_to_t1w(
            self.inputs.b0_file,
            self.inputs.dwi_mask_file,
            self.inputs.t1w_brain_file,
            self.inputs.t1w_mask_file,
            Path(runtime.cwd),
            white_surface=self._white_surface(),
            n_threads=self.inputs.n_threads,
        )
        self._results["from_dwi_to_t1w"] = list(result.from_moving_to_fixed)
        self._results["from_t1w_to_dwi"] = list(result.from_fixed_to_moving)
        self._results["warped_file"] = result.warped_file
        self._results["qc"] = dict(result.qc)
        return runtime

    def _white_surface(self):
        """The template's gray/white boundary carried into the session T1w, or None."""
        if not isdefined(self.inputs.tissue_dseg_file):
            return None
        if not isdefined(self.inputs.from_session_to_template):
            raise ValueError(
                "DWIToT1w: tissue_dseg_file is in the subject template, so the boundary-based "
                "refinement needs from_session_to_template (an empty list when the session T1w "
                "is the template) to carry its white surface into the session T1w"
            )
        from ketamine_dti.anat.boundary_registration import moved_surface, white_surface
        from ketamine_dti.anat.transfer import linear_point_map
        from ketamine_dti.ants_backend import image_affine, load_image

        labels = load_image(self.inputs.tissue_dseg_file)
        points, normals = white_surface(labels.numpy(), image_affine(labels))
        template_to_session = linear_point_map(self.inputs.from_session_to_template)
        return moved_surface(points, normals, template_to_session)


class _CompositeInputSpec(BaseInterfaceInputSpec):
    transforms = _TransformList(mandatory=True)


class _CompositeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="ITK composite transform (.h5)")


class CompositeTransform(SimpleInterface):
    """A from-X_to-Y transform list as the single ``.h5`` file that is published."""

    input_spec = _CompositeInputSpec
    output_spec = _CompositeOutputSpec

    def _run_interface(self, runtime):
        from ketamine_dti.ants_backend import write_composite_transform

        self._results["out_file"] = write_composite_transform(
            self.inputs.transforms, Path(runtime.cwd) / "composite_xfm.h5"
        )
        return runtime


class _CollapseInputSpec(BaseInterfaceInputSpec):
    first = _TransformList(mandatory=True, desc="from-X_to-Y (affine .mat files)")
    second = _TransformList(mandatory=True, desc="from-Y_to-Z (affine .mat files)")


class _CollapseOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="from-X_to-Z as one .mat")


class CollapseLinear(SimpleInterface):
    """Chain two linear steps (e.g. DWI -> session T1w -> subject template) into one ``.mat``."""

    input_spec = _CollapseInputSpec
    output_spec = _CollapseOutputSpec

    def _run_interface(self, runtime):
        from ketamine_dti.ants_backend import collapse_linear, compose_transforms

        self._results["out_file"] = collapse_linear(
            compose_transforms(self.inputs.first, self.inputs.second),
            Path(runtime.cwd) / "collapsed_xfm.mat",
        )
        return runtime


class _VentricleCoverageInputSpec(BaseInterfaceInputSpec):
    md_file = File(exists=True, mandatory=True, desc="MD, native DWI grid")
    mask_file = File(exists=True, mandatory=True, desc="DWI brain mask")
    tissue_dseg_file = File(exists=True, mandatory=True, desc="subject template tissue labels")
    template_mask = File(exists=True, mandatory=True, desc="subject template brain mask")
    from_dwi_to_template = File(exists=True, mandatory=True, desc="one affine .mat")


class _VentricleCoverageOutputSpec(TraitedSpec):
    qc = traits.Dict(desc="ventricle_coverage (NaN when n/a) and ventricle_volume_ml")


class VentricleCoverage(SimpleInterface):
    """Share of the DWI's ventricles on the T1w's deep CSF (``anat.ventricles``): the check
    that the T1w is this person's, which the brain-mask Dice cannot make."""

    input_spec = _VentricleCoverageInputSpec
    output_spec = _VentricleCoverageOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ketamine_dti.anat import ventricles
        from ketamine_dti.anat.transfer import dwi_to_template_map

        md, mask = nib.load(self.inputs.md_file), nib.load(self.inputs.mask_file)
        dseg, brain = nib.load(self.inputs.tissue_dseg_file), nib.load(self.inputs.template_mask)
        if not np.allclose(dseg.affine, brain.affine, atol=1e-4) or dseg.shape != brain.shape:
            raise ValueError(f"{self.inputs.tissue_dseg_file}: not on the brain mask's grid")
        found = ventricles.dwi_ventricles(
            np.asanyarray(md.dataobj), np.asanyarray(mask.dataobj) > 0, md.header.get_zooms()
        )
        csf = ventricles.deep_csf_fraction(
            np.asanyarray(dseg.dataobj), np.asanyarray(brain.dataobj),
            dseg.header.get_zooms()[:3], md.header.get_zooms()[:3],
        )  # fmt: skip
        to_template = dwi_to_template_map(self.inputs.from_dwi_to_template)
        coverage, volume = ventricles.ventricle_coverage(
            found, md.affine, csf, dseg.affine, to_template
        )
        self._results["qc"] = {"ventricle_coverage": coverage, "ventricle_volume_ml": volume}
        return runtime


class _GrayMatterReferenceInputSpec(BaseInterfaceInputSpec):
    gm_file = File(exists=True, mandatory=True, desc="GM share of the DWI voxel, subject template")
    csf_file = File(exists=True, mandatory=True, desc="CSF share, the same grid")
    mask_file = File(exists=True, mandatory=True, desc="DWI brain mask (the grid of the output)")
    from_dwi_to_template = File(exists=True, mandatory=True, desc="one affine .mat")


class _GrayMatterReferenceOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="uint8 mask on the DWI grid: gray matter without CSF")


class GrayMatterReference(SimpleInterface):
    """The DWI voxels that the T1w segmentation calls gray matter without CSF
    (``free_water.REFERENCE_MIN_GM_SHARE``/``REFERENCE_MAX_CSF_SHARE``): the tissue whose b0
    single-shell free water takes as "no free water"."""

    input_spec = _GrayMatterReferenceInputSpec
    output_spec = _GrayMatterReferenceOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ketamine_dti.anat.transfer import dwi_to_template_map, values_at_voxels
        from ketamine_dti.dwi.free_water import REFERENCE_MAX_CSF_SHARE, REFERENCE_MIN_GM_SHARE

        mask = nib.load(self.inputs.mask_file)
        inside = np.asanyarray(mask.dataobj) > 0
        voxels = np.argwhere(inside)
        to_template = dwi_to_template_map(self.inputs.from_dwi_to_template)
        shares = {}
        for name in ("gm", "csf"):
            image = nib.load(getattr(self.inputs, f"{name}_file"))
            shares[name] = values_at_voxels(
                np.asanyarray(image.dataobj), image.affine, voxels, mask.affine, to_template
            )
        gray = (shares["gm"] >= REFERENCE_MIN_GM_SHARE) & (
            shares["csf"] <= REFERENCE_MAX_CSF_SHARE
        )
        out = np.zeros(inside.shape, np.uint8)
        out[tuple(voxels[gray].T)] = 1
        image = nib.Nifti1Image(out, mask.affine)
        image.header.set_xyzt_units("mm")
        self._results["out_file"] = str(Path(runtime.cwd) / "gray_matter_reference.nii.gz")
        nib.save(image, self._results["out_file"])
        return runtime
