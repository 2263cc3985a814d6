"""One session: DWI preprocessing, tensor maps, atlas transfer, ROI table, QC and outputs."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ketamine_dti.bids import SessionInputs, raw_uri
from ketamine_dti.config import Config
from ketamine_dti.dwi.motion import FD_OUTLIER_MM, pe_axis_from_metadata
from ketamine_dti.interfaces.anat import CollapseLinear, DWIToT1w, SessionBrain
from ketamine_dti.interfaces.bids import SessionQC
from ketamine_dti.interfaces.rois import AtlasToDWI, ROIStats
from ketamine_dti.rois import GrayMatterRule
from ketamine_dti.workflows.dwi import init_dwi_preproc_wf
from ketamine_dti.workflows.outputs import DWI_METADATA_KEYS, MD_UNITS, add_sink, uri

#: What a session takes from the participant's anatomical workflow (its inputnode fields).
ANAT_FIELDS = (
    "t1w_n4_files",
    "from_template_to_session",
    "from_session_to_template",
    "template_mask",
    "gm_file",
    "csf_file",
    "from_mni_to_template",
    "template_qc",
    "mni_qc",
)

TENSOR_PARAMS = {
    "md": ("Mean diffusivity", MD_UNITS),
    "fa": ("Fractional anisotropy", "arbitrary"),
    "ad": ("Axial diffusivity (largest eigenvalue)", MD_UNITS),
    "rd": ("Radial diffusivity (mean of the two smaller eigenvalues)", MD_UNITS),
}
ATLAS_LABEL = "ketamine7"
#: Atlas transfer onto the DWI grid: a voxel gets a label covering >= half of it (linear label
#: fractions), which respects partial volume at 2-4 mm better than nearest neighbour.
ATLAS_TRANSFER_METHOD = "fraction"


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

    Inputs (inputnode), from the participant's anatomy: ``t1w_n4_files``,
    ``from_template_to_session``, ``template_mask``, ``gm_file``, ``csf_file``,
    ``from_mni_to_template``, ``template_qc``, ``mni_qc``. The raw DWI files are set here.
    Outputs (outputnode): ``roi_file``, ``qc_file``, ``md_file``, ``dseg_file``,
    ``confounds_file``, ``b0_reference``.

    The atlas reaches the native DWI grid through MNI -> subject template -> session T1w ->
    DWI, composed into one interpolation; the MD map is never resampled.
    """
    workflow = pe.Workflow(name=name or f"ses_{session.session}_wf")
    threads = config.omp_nthreads
    inputnode = pe.Node(niu.IdentityInterface(fields=list(ANAT_FIELDS)), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(
            fields=[
                "roi_file",
                "qc_file",
                "md_file",
                "dseg_file",
                "confounds_file",
                "b0_reference",
            ]
        ),
        name="outputnode",
    )
    preproc = init_dwi_preproc_wf(
        denoise=config.denoise,
        gibbs=config.gibbs,
        tensor_fit=config.tensor_fit,
        omp_nthreads=threads,
        pe_axis=pe_axis_from_metadata(session.dwi_metadata),
    )
    preproc.inputs.inputnode.dwi_file = session.dwi
    preproc.inputs.inputnode.bval_file = session.bval
    preproc.inputs.inputnode.bvec_file = session.bvec

    session_brain = pe.Node(SessionBrain(session_index=session_index), name="session_t1w_brain")
    dwi_to_t1w = pe.Node(DWIToT1w(n_threads=threads), name="dwi_to_t1w", n_procs=threads)
    # the published DWI -> T1w map ends in the subject template (the participant's "T1w" space)
    dwi_to_template = pe.Node(CollapseLinear(), name="dwi_to_template_xfm")
    to_dwi = pe.Node(
        AtlasToDWI(atlas_file=str(atlas_file), method=ATLAS_TRANSFER_METHOD, n_threads=threads),
        name="atlas_to_dwi",
        n_procs=threads,
    )
    roi_stats = pe.Node(ROIStats(roi_names=list(roi_names)), name="roi_stats")
    qc = pe.Node(
        SessionQC(
            participant_id=session.subject, session_id=session.session, n_sessions=n_sessions
        ),
        name="session_qc",
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
        (inputnode, to_dwi, [("gm_file", "gm_file"), ("csf_file", "csf_file"),
                             ("from_mni_to_template", "from_mni_to_template")]),
        (session_brain, to_dwi, [("from_template_to_session", "from_template_to_session")]),
        (dwi_to_t1w, to_dwi, [("from_t1w_to_dwi", "from_t1w_to_dwi")]),
        (dwi_to_t1w, dwi_to_template, [("from_dwi_to_t1w", "first")]),
        (session_brain, dwi_to_template, [("from_session_to_template", "second")]),
        (preproc, to_dwi, [("outputnode.b0_reference", "reference_file")]),
        (preproc, roi_stats, [("outputnode.md_file", "md_file"),
                              ("outputnode.fa_file", "fa_file"),
                              ("outputnode.mask_file", "mask_file")]),
        (to_dwi, roi_stats, [("dseg_file", "dseg_file"), ("gm_file", "gm_file"),
                             ("csf_file", "csf_file")]),
        (preproc, qc, [("outputnode.dwi_file", "dwi_file"),
                       ("outputnode.bval_file", "bval_file"),
                       ("outputnode.mask_file", "mask_file"),
                       ("outputnode.confounds_file", "confounds_file"),
                       ("outputnode.n_outlier_volumes", "outlier_volumes"),
                       ("outputnode.residual_median", "residual_median")]),
        (roi_stats, qc, [("out_file", "roi_file")]),
        (dwi_to_t1w, qc, [("qc", "dwi_t1w_qc")]),
        (inputnode, qc, [("template_qc", "template_qc"), ("mni_qc", "mni_qc")]),
        (roi_stats, outputnode, [("out_file", "roi_file")]),
        (qc, outputnode, [("out_file", "qc_file")]),
        (preproc, outputnode, [("outputnode.md_file", "md_file"),
                               ("outputnode.confounds_file", "confounds_file"),
                               ("outputnode.b0_reference", "b0_reference")]),
        (to_dwi, outputnode, [("dseg_file", "dseg_file")]),
    ])  # fmt: skip
    _connect_sinks(
        workflow, preproc, to_dwi, roi_stats, qc, session_brain, dwi_to_template, session, config
    )
    return workflow


def _connect_sinks(
    workflow, preproc, to_dwi, roi_stats, qc, session_brain, dwi_to_template, session, config
):
    """One DerivativesSink per output, with BIDS names and sidecars (Sources, units)."""
    out = Path(config.output_dir)
    base = {"sub": session.subject, "ses": session.session}
    dwi_entities = {**base, "space": "dwi", "desc": "preproc"}
    dwi_uri = uri(out, "dwi", ".nii.gz", **dwi_entities)
    mask_entities = {**base, "space": "dwi", "desc": "brain"}
    mask_uri = uri(out, "mask", ".nii.gz", **mask_entities)
    raw = raw_uri(config.bids_dir, session.dwi)
    steps = ["MP-PCA denoising"] if config.denoise == "mppca" else []
    steps += ["Gibbs unringing"] if config.gibbs else []
    steps += ["per-volume affine motion/eddy-current correction to a b0 reference"]
    preproc_meta = {
        key: session.dwi_metadata[key] for key in DWI_METADATA_KEYS if key in session.dwi_metadata
    }
    preproc_meta.update(
        {
            "Sources": [raw],
            "SpatialReference": dwi_uri,
            "SkullStripped": False,
            "Description": "Preprocessed DWI: " + ", ".join(steps) + "; b-vectors rotated.",
        }
    )
    add_sink(
        workflow,
        preproc,
        "outputnode.dwi_file",
        out,
        "ds_dwi",
        "dwi",
        dwi_entities,
        metadata=preproc_meta,
        extra={
            "bval_file": (preproc, "outputnode.bval_file"),
            "bvec_file": (preproc, "outputnode.bvec_file"),
        },
    )
    add_sink(
        workflow,
        preproc,
        "outputnode.mask_file",
        out,
        "ds_mask",
        "mask",
        mask_entities,
        metadata={
            "Type": "Brain",
            "Sources": [dwi_uri],
            "SpatialReference": dwi_uri,
            "Description": "Brain mask of the b0 reference (median-Otsu).",
        },
    )
    add_sink(
        workflow,
        preproc,
        "outputnode.b0_reference",
        out,
        "ds_b0ref",
        "dwiref",
        {**base, "space": "dwi", "desc": "b0"},
        metadata={
            "Sources": [raw],
            "SpatialReference": dwi_uri,
            "Description": "Mean of the aligned b0 volumes (motion reference).",
        },
    )
    for param, (description, units) in TENSOR_PARAMS.items():
        add_sink(
            workflow,
            preproc,
            f"outputnode.{param}_file",
            out,
            f"ds_{param}",
            "dwimap",
            {**base, "space": "dwi", "model": "tensor", "param": param},
            metadata={
                "Sources": [dwi_uri, mask_uri],
                "Units": units,
                "Description": description,
                "Model": {
                    "Description": "Diffusion tensor",
                    "FitMethod": config.tensor_fit.upper(),
                },
            },
        )
    add_sink(
        workflow,
        preproc,
        "outputnode.residual_file",
        out,
        "ds_residual",
        "dwimap",
        {**base, "space": "dwi", "model": "tensor", "param": "residual"},
        metadata={
            "Sources": [dwi_uri, mask_uri],
            "Units": "arbitrary",
            "Description": "RMS tensor-fit residual relative to S0.",
        },
    )
    if config.denoise == "mppca":
        add_sink(
            workflow,
            preproc,
            "outputnode.noise_file",
            out,
            "ds_noise",
            "dwimap",
            {**base, "space": "dwi", "model": "mppca", "param": "sigma"},
            metadata={
                "Sources": [raw],
                "Units": "arbitrary",
                "Description": "MP-PCA noise standard deviation (signal units).",
            },
        )
    add_sink(
        workflow,
        preproc,
        "outputnode.confounds_file",
        out,
        "ds_confounds",
        "timeseries",
        {**base, "desc": "confounds"},
        metadata=_CONFOUNDS_META | {"Sources": [raw]},
    )
    add_sink(
        workflow,
        to_dwi,
        "dseg_file",
        out,
        "ds_atlas",
        "dseg",
        {**base, "space": "dwi", "atlas": ATLAS_LABEL},
        metadata={
            "Sources": [dwi_uri],
            "SpatialReference": dwi_uri,
            "Description": "ROI atlas on the native DWI grid (MNI -> subject "
            "template -> T1w -> DWI, composed).",
        },
    )
    add_sink(
        workflow,
        roi_stats,
        "kept_dseg_file",
        out,
        "ds_atlas_gm",
        "dseg",
        {**base, "space": "dwi", "atlas": ATLAS_LABEL, "desc": "graymatter"},
        metadata={
            "Sources": [dwi_uri],
            "SpatialReference": dwi_uri,
            "Description": "ROI voxels kept by the gray-matter rule.",
        },
    )
    md_uri = uri(out, "dwimap", ".nii.gz", **base, space="dwi", model="tensor", param="md")
    add_sink(
        workflow,
        roi_stats,
        "out_file",
        out,
        "ds_roi",
        "md",
        {**base, "desc": "roi"},
        metadata=_ROI_META | {"Sources": [md_uri]},
    )
    add_sink(
        workflow,
        qc,
        "out_file",
        out,
        "ds_qc",
        "metrics",
        {**base, "desc": "qc"},
        metadata=_QC_META | {"Sources": [dwi_uri]},
    )
    t1w_uri = uri(out, "T1w", ".nii.gz", datatype="anat", sub=session.subject, desc="preproc")
    add_sink(
        workflow,
        dwi_to_template,
        "out_file",
        out,
        "ds_xfm_dwi_t1w",
        "xfm",
        {**base, "from": "dwi", "to": "T1w", "mode": "image"},
        metadata={
            "Sources": [dwi_uri, t1w_uri],
            "Description": "ANTs rigid transform (ITK .mat): the b0 reference to the session "
            "T1w (mutual information), chained with that T1w's rigid map to the subject "
            "template (the participant's T1w space).",
        },
    )
    add_sink(
        workflow,
        session_brain,
        ("from_session_to_template", _first),
        out,
        "ds_xfm_orig_t1w",
        "xfm",
        {**base, "from": "orig", "to": "T1w", "mode": "image"},
        datatype="anat",
        metadata={
            "Sources": [raw_uri(config.bids_dir, session.t1w), t1w_uri],
            "Description": "ANTs rigid transform (ITK .mat): this session's T1w to the subject "
            "template (halfway space of the sessions).",
        },
    )


def _first(files):
    return files[0]


_RULE = GrayMatterRule()
_CONFOUNDS_META = {
    "trans_x": {"Description": "Translation along x (RAS+) of the grid centre", "Units": "mm"},
    "trans_y": {"Description": "Translation along y (RAS+) of the grid centre", "Units": "mm"},
    "trans_z": {"Description": "Translation along z (RAS+) of the grid centre", "Units": "mm"},
    "rot_x": {"Description": "Rotation about x (Euler xyz)", "Units": "rad"},
    "rot_y": {"Description": "Rotation about y (Euler xyz)", "Units": "rad"},
    "rot_z": {"Description": "Rotation about z (Euler xyz)", "Units": "rad"},
    "framewise_displacement": {
        "Description": "Power et al. (2012) framewise displacement, 50 mm head radius",
        "Units": "mm",
    },
    "motion_outlier": {"Description": f"1 if framewise displacement > {FD_OUTLIER_MM} mm"},
}
_ROI_META = {
    "roi": {"Description": "ROI name (atlas index order)"},
    "index": {"Description": "Atlas index"},
    "md_mean": {"Description": "Mean MD over kept gray-matter voxels", "Units": MD_UNITS},
    "md_median": {"Description": "Median MD over kept voxels", "Units": MD_UNITS},
    "md_std": {
        "Description": "Standard deviation (ddof=1) of MD over kept voxels",
        "Units": MD_UNITS,
    },
    "n_voxels": {"Description": "Voxels kept after the gray-matter rule (native DWI grid)"},
    "n_voxels_atlas": {"Description": "Atlas voxels in the brain mask before the rule"},
    "fa_mean": {"Description": "Mean FA over kept voxels"},
    "GrayMatterRule": (
        f"keep atlas voxels inside the DWI brain mask with GM probability >= "
        f"{_RULE.gm_prob_min}, CSF probability <= {_RULE.csf_prob_max}, "
        f"MD < {_RULE.md_max} mm^2/s and FA < {_RULE.fa_max}"
    ),
}
_QC_META = {
    "mean_fd": {"Description": "Mean framewise displacement (volumes 2..N)", "Units": "mm"},
    "max_fd": {"Description": "Maximum framewise displacement", "Units": "mm"},
    "n_outlier_volumes": {
        "Description": f"Volumes with framewise displacement > {FD_OUTLIER_MM} mm"
    },
    "tsnr": {"Description": "Median over the brain of mean/SD across b0 volumes"},
    "tensor_residual": {"Description": "Median RMS tensor-fit residual / S0 in the brain"},
    "reg_dwi_t1w_mi": {"Description": "Mattes mutual information b0 vs T1w (lower = better)"},
    "reg_dwi_t1w_dice": {"Description": "Dice of DWI and T1w brain masks after coregistration"},
    "reg_session_halfway_ncc": {"Description": "NCC of the sessions' T1w in halfway space"},
    "reg_t1w_mni_ncc": {"Description": "NCC of the subject template and MNI brain"},
    "reg_t1w_mni_dice": {"Description": "Dice of subject and MNI brain masks after SyN"},
    "n_sessions": {"Description": "Sessions of this participant (1: flagged for group stage)"},
}
