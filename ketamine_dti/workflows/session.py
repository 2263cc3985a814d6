"""One session: DWI preprocessing, tensor maps, atlas transfer, ROI table, QC and outputs."""

from __future__ import annotations

import logging

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ketamine_dti.anat.boundary_registration import GM_DISTANCE_MM, WM_DISTANCE_MM
from ketamine_dti.bids import SessionInputs
from ketamine_dti.config import Config
from ketamine_dti.derivatives import SidecarContext, input_fields, session_output_keys
from ketamine_dti.dwi import free_water
from ketamine_dti.dwi.motion import pe_axis_from_metadata
from ketamine_dti.dwi.slice_outliers import slice_axis_from_metadata
from ketamine_dti.fieldmaps import corrects, session_plan
from ketamine_dti.interfaces.anat import (
    CollapseLinear,
    DWIToT1w,
    GrayMatterReference,
    SessionBrain,
    VentricleCoverage,
)
from ketamine_dti.interfaces.bids import SessionQC
from ketamine_dti.interfaces.dwi import FreeWaterElimination
from ketamine_dti.interfaces.inputs import ExcludeVoxels, PrepareDWI
from ketamine_dti.interfaces.rois import SampleRegions
from ketamine_dti.resources import ATLAS as BUNDLED_ATLAS
from ketamine_dti.resources import TEMPLATE as MNI_SPACE
from ketamine_dti.rois import GrayMatterRule
from ketamine_dti.workflows.boilerplate import LiterateWorkflow
from ketamine_dti.workflows.dwi import DWI_STEP_MEM_GB, init_dwi_preproc_wf
from ketamine_dti.workflows.nodes import threaded_node
from ketamine_dti.workflows.outputs import init_derivatives_wf, init_session_derivatives_wf

LOGGER = logging.getLogger(__name__)

#: What a session takes from the participant's anatomical workflow (its inputnode fields).
ANAT_FIELDS = (
    "t1w_n4_files",
    "from_template_to_session",
    "from_session_to_template",
    "template_mask",
    "tissue_dseg_file",
    "from_mni_to_template",
    "template_qc",
    "mni_qc",
)
#: The participant's ROI points in the subject template (TemplateRegions outputs).
REGION_FIELDS = {"roi_atlas_file": "atlas_file", "roi_gm_file": "gm_file",
                 "roi_csf_file": "csf_file"}  # fmt: skip
#: What the session's QC reads (SessionQC inputs), passed on by the session's outputnode.
QC_FIELDS = (
    "dwi_file",
    "bval_file",
    "bvec_file",
    "mask_file",
    "confounds_file",
    "outlier_volumes",
    "residual_median",
    "n_nonfinite_voxels",
    "n_zero_volumes",
    "template_qc",
    "mni_qc",
    "t1w_mask_file",
    "dwi_t1w_qc",
    "ventricle_qc",
)
OUTPUT_FIELDS = ("samples_file", "md_file", "dseg_file", "b0_reference", *QC_FIELDS)
#: Outputs published after the participant's ROI statistics (they need every session).
MEASURE_OUTPUTS = ("roi_table", "qc_table", "atlas_gm")
#: The preprocessing output (dwi_preproc_wf outputnode field) behind each published output.
PREPROC_OUTPUTS = {
    "dwi_preproc": "dwi_file",
    "bval_file": "bval_file",
    "bvec_file": "bvec_file",
    "dwi_mask": "mask_file",
    "b0_reference": "b0_reference",
    "md": "md_file",
    "fa": "fa_file",
    "ad": "ad_file",
    "rd": "rd_file",
    "residual": "residual_file",
    "noise": "noise_file",
    "confounds": "confounds_file",
    "b0_uncorrected": "b0_uncorrected",
    "sdc_field": "field_file",
    "sdc_displacement": "displacement_file",
}


_FREE_WATER_SENTENCE = f"""In the DWI brain mask, free water was eliminated by fitting a
tissue tensor plus an isotropic compartment of diffusivity {free_water.FREE_WATER_DIFFUSIVITY:g}
mm^2/s [free_water]: with two or more shells by the two-compartment fit of Hoy et al.
[free_water_multishell]; with one shell, whose data cannot separate tissue MD from free water,
by a voxelwise penalised least-squares fit with a prior on the free-water fraction implied by
the b0 intensity between a gray-matter and a CSF reference (SD {free_water.F_PRIOR_SD:g}; the
{free_water.REFERENCE_GM_PERCENTILE:g}th percentile of the b0 of the DWI voxels that the T1w
segmentation, mapped through the coregistration, puts at >=
{free_water.REFERENCE_MIN_GM_SHARE:g} GM and <= {free_water.REFERENCE_MAX_CSF_SHARE:g} CSF, and
the median b0 of the voxels with DTI MD >= {free_water.WATER_REFERENCE_MD:g} mm^2/s; the b0
read after dividing out the receive coil's shading, an N4 field of the mean b0 fitted on
voxels with DTI MD < {free_water.RECEIVE_FIELD_MAX_MD:g} mm^2/s [n4]) and a weak prior on
tissue MD ({free_water.TISSUE_MD_PRIOR_MEAN:g} +- {free_water.TISSUE_MD_PRIOR_SD:g} mm^2/s)
[free_water_init], the fraction allowed down to {free_water.SINGLE_SHELL_MIN_F:g} below the
gray-matter reference so that a bound at 0 does not bias regional means (with a b0 prior;
without both references the fraction stays between 0 and 1). This gave the
free-water fraction and the free-water-corrected MD."""


#: Derivatives of the free-water fit: output key -> FreeWaterElimination output.
FREE_WATER_OUTPUTS = {
    "fw_md": "md_file",
    "fw_fraction": "fwf_file",
    "fw_metadata": "metadata_file",
}

#: Methods sentence for each --dwi-runs choice (none for "error": a session has one run).
_RUNS_SENTENCES = {
    "combine": "Several DWI runs of a session were concatenated before preprocessing. ",
    "first": "Of several DWI runs in a session, the first was used. ",
    "error": "",
}


def _inputs_description(config: Config) -> str:
    return f"""**Inputs.** Volumes with b <= {config.b0_threshold:g} s/mm^2 were treated as b0;
b-vectors that were not unit length were normalised and their b-values scaled by the squared
norm (as MRtrix3 does). {_RUNS_SENTENCES[config.dwi_runs]}Voxels holding NaN/Inf were zeroed
and excluded from the ROIs; all-zero volumes were left out."""


def _regions_description(config: Config) -> str:
    rule = GrayMatterRule()
    atlas = config.roi_atlas or (
        f"the bundled {BUNDLED_ATLAS} atlas ({MNI_SPACE}) [harvard_oxford, talairach]"
    )
    return f"""The b0 reference was rigidly coregistered to its session's T1w (Mattes mutual
information, both brain-masked) from two starts, the scanner's alignment of the two images
and the best of a coarse rotation search about the brains' aligned centres of mass. Each result
was refined by boundary-based registration [bbr] on the gray/white boundary of the subject
template's tissue labels, carried into the session T1w (the b0 sampled {WM_DISTANCE_MM:g} mm
inside and {GM_DISTANCE_MM:g} mm outside the surface; the cost's slope scaled to the b0's own
contrast; Powell's method on a smoothed, then the unsmoothed b0), and the lower cost was
kept. {_FREE_WATER_SENTENCE}

**Regions.** Each ROI was defined once per participant as a set of points of the subject
template: the ROI atlas ({atlas}) was brought into the subject template (one interpolation,
label fractions >= 0.5), and a point was kept if the DWI voxel that holds it, wherever the DWI
grid falls, was expected to contain a GM fraction >= {rule.gm_prob_min} and a CSF fraction at
most a cap (the template's hard tissue labels averaged over that footprint): per ROI the
strictest of {rule.csf_caps_text()} under which the ROI kept enough of its volume in every session,
the same for all sessions (reported as csf_fraction_max). The same
points were mapped into each session's native DWI grid (subject template -> session T1w ->
DWI) and read the MD of the voxel they fall in; MD maps were never resampled. A point was
averaged in every session or in none: it had to lie inside every session's DWI brain mask (less
the voxels without data: NaN/Inf in the raw series, or read outside some volume's field of view
by the one interpolation) with a successful tensor fit. The voxel set therefore came from
anatomy alone and was the same tissue in both sessions, so the MD being measured never chose its
own voxels (MD and FA only counted CSF-like and WM-like voxels for QC); the number of DWI
voxels averaged per ROI is reported. An ROI that kept less than
{100 * config.roi_min_fraction:g}% of its atlas volume, or fewer than {config.roi_min_voxels}
DWI voxels, was reported missing."""


def init_session_wf(
    session: SessionInputs,
    session_index: int,
    config: Config,
    name: str | None = None,
) -> pe.Workflow:
    """One session up to its ROI samples: DWI preprocessing, registration, the maps.

    Inputs (inputnode, ANAT_FIELDS and REGION_FIELDS), from the participant's anatomy:
    ``t1w_n4_files``, ``from_template_to_session``, ``from_session_to_template``,
    ``template_mask``, ``tissue_dseg_file``, ``from_mni_to_template``, ``template_qc``,
    ``mni_qc`` and the ROI points of the subject template (``roi_atlas_file``,
    ``roi_gm_file``, ``roi_csf_file``). The raw DWI files are set here. Outputs (outputnode,
    OUTPUT_FIELDS): ``samples_file`` (the ROI points read in this session's maps), ``md_file``,
    ``dseg_file``, ``b0_reference`` and what the session's QC reads (QC_FIELDS). The ROI
    table and QC come after every session (``init_session_measures_wf``).

    The ROI points reach the native DWI grid through subject template -> session T1w -> DWI;
    the MD map is never resampled.
    """
    workflow = LiterateWorkflow(
        name or f"ses_{session.session}_wf",
        desc=_inputs_description(config),
        postdesc=_regions_description(config),
    )
    threads = config.omp_nthreads
    inputnode = pe.Node(
        niu.IdentityInterface(fields=[*ANAT_FIELDS, *REGION_FIELDS]), name="inputnode"
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=list(OUTPUT_FIELDS)), name="outputnode")
    prepare, preproc = _init_preproc(workflow, session, config)
    session_brain, dwi_to_t1w, dwi_to_template = _connect_registration(
        workflow, inputnode, preproc, session_index, threads
    )
    plan = session_plan(session)
    sdc = corrects(plan)
    if sdc and plan.method == "syn":  # fieldmap-less: the DWI workflow needs the T1w brain
        workflow.connect([
            (session_brain, preproc, [("brain_file", "inputnode.t1w_brain_file"),
                                      ("mask_file", "inputnode.t1w_mask_file")]),
        ])  # fmt: skip
    fw = _connect_free_water(workflow, inputnode, preproc, dwi_to_template, threads)
    sample = pe.Node(SampleRegions(), name="sample_rois")
    if sdc:
        workflow.connect([
            (preproc, sample, [("outputnode.displacement_file", "displacement_file"),
                               ("outputnode.jacobian_file", "jacobian_file")]),
        ])  # fmt: skip
    valid = pe.Node(ExcludeVoxels(), name="exclude_nonfinite")
    workflow.connect([
        (preproc, valid, [("outputnode.mask_file", "mask_file"),
                          ("outputnode.outside_file", "outside_file")]),
        (prepare, valid, [("nonfinite_mask", "exclude_file")]),
        (inputnode, sample, list(REGION_FIELDS.items())),
        (session_brain, sample, [("from_template_to_session", "from_template_to_session")]),
        (dwi_to_t1w, sample, [("from_t1w_to_dwi", "from_t1w_to_dwi")]),
        (preproc, sample, [("outputnode.md_file", "md_file"),
                           ("outputnode.fa_file", "fa_file")]),
        (fw, sample, [("md_file", "fw_md_file"), ("fwf_file", "fw_fraction_file")]),
        (valid, sample, [("out_file", "mask_file")]),
        (sample, outputnode, [("samples_file", "samples_file"), ("dseg_file", "dseg_file")]),
        (preproc, outputnode, [("outputnode.dwi_file", "dwi_file"),
                               ("outputnode.bval_file", "bval_file"),
                               ("outputnode.bvec_file", "bvec_file"),
                               ("outputnode.mask_file", "mask_file"),
                               ("outputnode.confounds_file", "confounds_file"),
                               ("outputnode.n_outlier_volumes", "outlier_volumes"),
                               ("outputnode.residual_median", "residual_median"),
                               ("outputnode.md_file", "md_file"),
                               ("outputnode.b0_reference", "b0_reference")]),
        (prepare, outputnode, [("n_nonfinite_voxels", "n_nonfinite_voxels"),
                               ("n_zero_volumes", "n_zero_volumes")]),
        (inputnode, outputnode, [("template_qc", "template_qc"), ("mni_qc", "mni_qc"),
                                 ("template_mask", "t1w_mask_file")]),
        (dwi_to_t1w, outputnode, [("qc", "dwi_t1w_qc")]),
    ])  # fmt: skip
    ventricles = pe.Node(VentricleCoverage(), name="ventricle_coverage")
    workflow.connect([
        (preproc, ventricles, [("outputnode.md_file", "md_file"),
                               ("outputnode.mask_file", "mask_file")]),
        (inputnode, ventricles, [("tissue_dseg_file", "tissue_dseg_file"),
                                 ("template_mask", "template_mask")]),
        (dwi_to_template, ventricles, [("out_file", "from_dwi_to_template")]),
        (ventricles, outputnode, [("qc", "ventricle_qc")]),
    ])  # fmt: skip
    derivatives = init_session_derivatives_wf(session, config, exclude=MEASURE_OUTPUTS)
    fields = input_fields(session_output_keys(config.denoise, sdc))
    workflow.connect([
        (preproc, derivatives, [(f"outputnode.{field}", f"inputnode.{key}")
                                for key, field in PREPROC_OUTPUTS.items()
                                if key in fields]),
        (fw, derivatives, [(field, f"inputnode.{key}") for key, field in FREE_WATER_OUTPUTS.items()
                           if key in fields]),
        (sample, derivatives, [("dseg_file", "inputnode.atlas_dseg")]),
        (dwi_to_template, derivatives, [("out_file", "inputnode.xfm_dwi_t1w")]),
        (session_brain, derivatives, [(("from_session_to_template", _first),
                                       "inputnode.xfm_orig_t1w")]),
    ])  # fmt: skip
    return workflow


def init_session_measures_wf(
    session: SessionInputs, n_sessions: int, config: Config, name: str | None = None
) -> pe.Workflow:
    """A session's QC and its outputs that need the participant's ROI statistics.

    Inputs (inputnode): ``roi_file`` and ``kept_dseg_file`` (this session's ROI table and
    averaged voxels, from ``RegionalStatistics``) and QC_FIELDS (the session workflow's
    outputnode). Publishes MEASURE_OUTPUTS.
    """
    workflow = pe.Workflow(name=name or f"ses_{session.session}_measures_wf")
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["roi_file", "kept_dseg_file", *QC_FIELDS]),
        name="inputnode",
    )
    plan = session_plan(session)
    qc = pe.Node(
        SessionQC(
            participant_id=session.subject, session_id=session.session, n_sessions=n_sessions
        ),
        name="session_qc",
    )
    if corrects(plan):
        qc.inputs.sdc_method = plan.method
    context = SidecarContext(config, session.subject, session=session)
    derivatives = init_derivatives_wf(MEASURE_OUTPUTS, context, "ds_measures_wf")
    workflow.connect([
        (inputnode, qc, [(field, field) for field in ("roi_file", *QC_FIELDS)]),
        (inputnode, derivatives, [("roi_file", "inputnode.roi_table"),
                                  ("kept_dseg_file", "inputnode.atlas_gm")]),
        (qc, derivatives, [("out_file", "inputnode.qc_table")]),
    ])  # fmt: skip
    return workflow


def _init_preproc(workflow, session: SessionInputs, config: Config):
    """The session's DWI preprocessing with the run's methods, fed its conditioned series.

    Returns (prepare_dwi, dwi_preproc_wf): the first makes one clean series of the raw run(s)
    (runs concatenated, NaN/Inf zeroed, all-zero volumes out, b0s by ``b0_threshold``).
    """
    runs = session.dwi_runs
    prepare = pe.Node(
        PrepareDWI(
            dwi_files=[run[0] for run in runs],
            bval_files=[run[1] for run in runs],
            bvec_files=[run[2] for run in runs],
            b0_threshold=config.b0_threshold,
        ),
        name="prepare_dwi",
        mem_gb=DWI_STEP_MEM_GB,
    )
    preproc = init_dwi_preproc_wf(
        denoise=config.denoise,
        gibbs=config.gibbs,
        tensor_fit=config.tensor_fit,
        slice_outliers=config.slice_outliers,
        interpolation=config.interpolation,
        omp_nthreads=config.omp_nthreads,
        pe_axis=pe_axis_from_metadata(session.dwi_metadata),
        slice_axis=slice_axis_from_metadata(session.dwi_metadata),
        fieldmap=session_plan(session),
        b0_threshold=config.b0_threshold,
    )
    workflow.connect([
        (prepare, preproc, [("out_file", "inputnode.dwi_file"),
                            ("out_bval", "inputnode.bval_file"),
                            ("out_bvec", "inputnode.bvec_file")]),
    ])  # fmt: skip
    return prepare, preproc


def _connect_registration(workflow, inputnode, preproc, session_index, threads):
    """Session T1w brain and b0 -> T1w coregistration (refined on the template's white
    surface).

    Returns the (session_brain, dwi_to_t1w, dwi_to_template) nodes."""
    session_brain = pe.Node(SessionBrain(session_index=session_index), name="session_t1w_brain")
    dwi_to_t1w = threaded_node(DWIToT1w(n_threads=threads), "dwi_to_t1w", threads)
    # the published DWI -> T1w map ends in the subject template (the participant's "T1w" space)
    dwi_to_template = pe.Node(CollapseLinear(), name="dwi_to_template_xfm")
    workflow.connect([
        (inputnode, session_brain, [("t1w_n4_files", "all_t1w_files"),
                                    ("template_mask", "template_mask_file"),
                                    ("from_template_to_session", "all_template_to_session"),
                                    ("from_session_to_template", "all_session_to_template")]),
        (session_brain, dwi_to_t1w, [("brain_file", "t1w_brain_file"),
                                     ("mask_file", "t1w_mask_file"),
                                     ("from_session_to_template",
                                      "from_session_to_template")]),
        (inputnode, dwi_to_t1w, [("tissue_dseg_file", "tissue_dseg_file")]),
        (preproc, dwi_to_t1w, [("outputnode.b0_reference", "b0_file"),
                               ("outputnode.mask_file", "dwi_mask_file")]),
        (dwi_to_t1w, dwi_to_template, [("from_dwi_to_t1w", "first")]),
        (session_brain, dwi_to_template, [("from_session_to_template", "second")]),
    ])  # fmt: skip
    return session_brain, dwi_to_t1w, dwi_to_template


def _connect_free_water(workflow, inputnode, preproc, dwi_to_template, threads):
    """Free-water elimination on the preprocessed DWI, its single-shell tissue b0 reference
    taken from the gray matter of the subject template's segmentation (hence after the
    coregistration). Returns the fit's node."""
    reference = pe.Node(GrayMatterReference(), name="gray_matter_reference")
    fw = threaded_node(
        FreeWaterElimination(n_threads=threads), "free_water", threads, DWI_STEP_MEM_GB
    )
    workflow.connect([
        (inputnode, reference, [("roi_gm_file", "gm_file"), ("roi_csf_file", "csf_file")]),
        (preproc, reference, [("outputnode.mask_file", "mask_file")]),
        (dwi_to_template, reference, [("out_file", "from_dwi_to_template")]),
        (reference, fw, [("out_file", "gray_matter_file")]),
        (preproc, fw, [("outputnode.dwi_file", "in_file"),
                       ("outputnode.bval_file", "bval_file"),
                       ("outputnode.bvec_file", "bvec_file"),
                       ("outputnode.mask_file", "mask_file"),
                       ("outputnode.md_file", "md_file"), ("outputnode.fa_file", "fa_file")]),
    ])  # fmt: skip
    return fw


def _first(files):
    return files[0]
