"""One session: DWI preprocessing, tensor maps, atlas transfer, ROI table, QC and outputs."""

from __future__ import annotations

import logging
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ketamine_dti.bids import SessionInputs
from ketamine_dti.config import Config
from ketamine_dti.derivatives import input_fields, session_output_keys
from ketamine_dti.dwi.motion import pe_axis_from_metadata
from ketamine_dti.fieldmaps import corrects, session_plan
from ketamine_dti.interfaces.anat import CollapseLinear, DWIToT1w, SessionBrain
from ketamine_dti.interfaces.bids import SessionQC
from ketamine_dti.interfaces.inputs import ExcludeVoxels, PrepareDWI
from ketamine_dti.interfaces.rois import AtlasToDWI, ROIStats
from ketamine_dti.resources import ATLAS as BUNDLED_ATLAS
from ketamine_dti.resources import TEMPLATE as MNI_SPACE
from ketamine_dti.rois import GrayMatterRule
from ketamine_dti.workflows.boilerplate import LiterateWorkflow
from ketamine_dti.workflows.dwi import DWI_STEP_MEM_GB, init_dwi_preproc_wf
from ketamine_dti.workflows.nodes import threaded_node
from ketamine_dti.workflows.outputs import init_session_derivatives_wf

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
OUTPUT_FIELDS = ("roi_file", "qc_file", "md_file", "dseg_file", "confounds_file", "b0_reference")
#: Atlas transfer onto the DWI grid: a voxel gets a label covering >= half of it (linear label
#: fractions), which respects partial volume at 2-4 mm better than nearest neighbour.
ATLAS_TRANSFER_METHOD = "fraction"
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
    "fw_md": "fw_md_file",
    "fw_fraction": "fw_fraction_file",
    "fw_metadata": "fw_metadata_file",
    "noise": "noise_file",
    "confounds": "confounds_file",
    "b0_uncorrected": "b0_uncorrected",
    "sdc_field": "field_file",
    "sdc_displacement": "displacement_file",
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
    return f"""The b0 reference was rigidly coregistered to its session's T1w (mutual information).

**Regions.** The ROI atlas ({atlas}) was brought onto each session's native DWI grid through
the composed transforms MNI -> subject template -> session T1w -> DWI (one interpolation,
label fractions >= 0.5); the tissue segmentation likewise, each tissue's hard labels averaged
over the DWI voxel's footprint into a volume fraction. MD maps were never resampled. A voxel
counted toward an ROI if it lay inside the DWI brain mask (less the voxels without data: NaN/Inf
in the raw series, or read outside some volume's field of view by the one interpolation) with a
GM fraction >=
{rule.gm_prob_min} and a CSF fraction <= {rule.csf_prob_max}: anatomy alone, so the MD being
measured never chose its own voxels (MD and FA only counted CSF-like and WM-like voxels for
QC); the number of voxels kept per ROI is reported. An ROI that kept less than
{100 * config.roi_min_fraction:g}% of its atlas voxels, or fewer than {config.roi_min_voxels}
voxels, was reported missing."""


def init_session_wf(
    session: SessionInputs,
    session_index: int,
    n_sessions: int,
    config: Config,
    atlas_file: Path,
    roi_names: tuple[str, ...],
    name: str | None = None,
) -> pe.Workflow:
    """Everything for one session of one participant.

    Inputs (inputnode, ANAT_FIELDS), from the participant's anatomy: ``t1w_n4_files``,
    ``from_template_to_session``, ``from_session_to_template``, ``template_mask``,
    ``tissue_dseg_file``, ``from_mni_to_template``, ``template_qc``, ``mni_qc``. The raw DWI
    files are set here. Outputs (outputnode, OUTPUT_FIELDS): ``roi_file``, ``qc_file``,
    ``md_file``, ``dseg_file``, ``confounds_file``, ``b0_reference``.

    The atlas reaches the native DWI grid through MNI -> subject template -> session T1w ->
    DWI, composed into one interpolation; the MD map is never resampled.
    """
    workflow = LiterateWorkflow(
        name or f"ses_{session.session}_wf",
        desc=_inputs_description(config),
        postdesc=_regions_description(config),
    )
    threads = config.omp_nthreads
    inputnode = pe.Node(niu.IdentityInterface(fields=list(ANAT_FIELDS)), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=list(OUTPUT_FIELDS)), name="outputnode")
    prepare, preproc = _init_preproc(workflow, session, config)
    session_brain, dwi_to_t1w, dwi_to_template, to_dwi = _connect_registration(
        workflow, inputnode, preproc, session_index, threads, atlas_file
    )
    plan = session_plan(session)
    sdc = corrects(plan)
    roi_stats, qc = _measure_nodes(session, n_sessions, config, roi_names)
    if sdc:
        qc.inputs.sdc_method = plan.method
        workflow.connect([
            (preproc, roi_stats, [("outputnode.displacement_file", "displacement_file"),
                                  ("outputnode.jacobian_file", "jacobian_file")]),
        ])  # fmt: skip
    valid = pe.Node(ExcludeVoxels(), name="exclude_nonfinite")
    workflow.connect([
        (preproc, valid, [("outputnode.mask_file", "mask_file"),
                          ("outputnode.outside_file", "outside_file")]),
        (prepare, valid, [("nonfinite_mask", "exclude_file")]),
        (preproc, roi_stats, [("outputnode.md_file", "md_file"),
                              ("outputnode.fa_file", "fa_file"),
                              ("outputnode.fw_md_file", "fw_md_file"),
                              ("outputnode.fw_fraction_file", "fw_fraction_file")]),
        (valid, roi_stats, [("out_file", "mask_file")]),
        (to_dwi, roi_stats, [("dseg_file", "dseg_file"), ("gm_file", "gm_file"),
                             ("csf_file", "csf_file")]),
        (preproc, qc, [("outputnode.dwi_file", "dwi_file"),
                       ("outputnode.bval_file", "bval_file"),
                       ("outputnode.mask_file", "mask_file"),
                       ("outputnode.confounds_file", "confounds_file"),
                       ("outputnode.n_outlier_volumes", "outlier_volumes"),
                       ("outputnode.residual_median", "residual_median")]),
        (roi_stats, qc, [("out_file", "roi_file")]),
        (prepare, qc, [("n_nonfinite_voxels", "n_nonfinite_voxels"),
                       ("n_zero_volumes", "n_zero_volumes")]),
        (inputnode, qc, [("template_qc", "template_qc"), ("mni_qc", "mni_qc"),
                         ("template_mask", "t1w_mask_file")]),
        (dwi_to_t1w, qc, [("qc", "dwi_t1w_qc")]),
        (roi_stats, outputnode, [("out_file", "roi_file")]),
        (qc, outputnode, [("out_file", "qc_file")]),
        (preproc, outputnode, [("outputnode.md_file", "md_file"),
                               ("outputnode.confounds_file", "confounds_file"),
                               ("outputnode.b0_reference", "b0_reference")]),
        (to_dwi, outputnode, [("dseg_file", "dseg_file")]),
    ])  # fmt: skip
    derivatives = init_session_derivatives_wf(session, config)
    fields = input_fields(session_output_keys(config.denoise, sdc))
    workflow.connect([
        (preproc, derivatives, [(f"outputnode.{field}", f"inputnode.{key}")
                                for key, field in PREPROC_OUTPUTS.items()
                                if key in fields]),
        (to_dwi, derivatives, [("dseg_file", "inputnode.atlas_dseg")]),
        (roi_stats, derivatives, [("kept_dseg_file", "inputnode.atlas_gm"),
                                  ("out_file", "inputnode.roi_table")]),
        (qc, derivatives, [("out_file", "inputnode.qc_table")]),
        (dwi_to_template, derivatives, [("out_file", "inputnode.xfm_dwi_t1w")]),
        (session_brain, derivatives, [(("from_session_to_template", _first),
                                       "inputnode.xfm_orig_t1w")]),
    ])  # fmt: skip
    return workflow


def _measure_nodes(
    session: SessionInputs, n_sessions: int, config: Config, roi_names: tuple[str, ...]
) -> tuple[pe.Node, pe.Node]:
    """The session's ROI statistics (with the retention rule) and its QC table."""
    roi_stats = pe.Node(
        ROIStats(
            roi_names=list(roi_names),
            min_fraction=config.roi_min_fraction,
            min_voxels=config.roi_min_voxels,
        ),
        name="roi_stats",
    )
    qc = pe.Node(
        SessionQC(
            participant_id=session.subject, session_id=session.session, n_sessions=n_sessions
        ),
        name="session_qc",
    )
    return roi_stats, qc


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
        omp_nthreads=config.omp_nthreads,
        pe_axis=pe_axis_from_metadata(session.dwi_metadata),
        fieldmap=session_plan(session),
        b0_threshold=config.b0_threshold,
    )
    workflow.connect([
        (prepare, preproc, [("out_file", "inputnode.dwi_file"),
                            ("out_bval", "inputnode.bval_file"),
                            ("out_bvec", "inputnode.bvec_file")]),
    ])  # fmt: skip
    return prepare, preproc


def _connect_registration(workflow, inputnode, preproc, session_index, threads, atlas_file):
    """Session T1w brain, b0 -> T1w coregistration and the atlas on the DWI grid.

    Returns the (session_brain, dwi_to_t1w, dwi_to_template, atlas_to_dwi) nodes."""
    session_brain = pe.Node(SessionBrain(session_index=session_index), name="session_t1w_brain")
    dwi_to_t1w = threaded_node(DWIToT1w(n_threads=threads), "dwi_to_t1w", threads)
    # the published DWI -> T1w map ends in the subject template (the participant's "T1w" space)
    dwi_to_template = pe.Node(CollapseLinear(), name="dwi_to_template_xfm")
    to_dwi = threaded_node(
        AtlasToDWI(atlas_file=str(atlas_file), method=ATLAS_TRANSFER_METHOD, n_threads=threads),
        "atlas_to_dwi",
        threads,
    )
    workflow.connect([
        (inputnode, session_brain, [("t1w_n4_files", "all_t1w_files"),
                                    ("template_mask", "template_mask_file"),
                                    ("from_template_to_session", "all_template_to_session"),
                                    ("from_session_to_template", "all_session_to_template")]),
        (session_brain, dwi_to_t1w, [("brain_file", "t1w_brain_file"),
                                     ("mask_file", "t1w_mask_file")]),
        (preproc, dwi_to_t1w, [("outputnode.b0_reference", "b0_file"),
                               ("outputnode.mask_file", "dwi_mask_file")]),
        (inputnode, to_dwi, [("tissue_dseg_file", "tissue_dseg_file"),
                             ("from_mni_to_template", "from_mni_to_template")]),
        (session_brain, to_dwi, [("from_template_to_session", "from_template_to_session")]),
        (dwi_to_t1w, to_dwi, [("from_t1w_to_dwi", "from_t1w_to_dwi")]),
        (dwi_to_t1w, dwi_to_template, [("from_dwi_to_t1w", "first")]),
        (session_brain, dwi_to_template, [("from_session_to_template", "second")]),
        (preproc, to_dwi, [("outputnode.b0_reference", "reference_file")]),
    ])  # fmt: skip
    return session_brain, dwi_to_t1w, dwi_to_template, to_dwi


def _first(files):
    return files[0]
