"""Participant anatomy: one unbiased within-subject T1w template and one MNI registration."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ketamine_dti.anat.registration import MNI_RESOLUTION
from ketamine_dti.bids import ParticipantInputs, raw_uri
from ketamine_dti.interfaces.anat import (
    BiasCorrect,
    CompositeTransform,
    ExtractBrain,
    RegisterToMNI,
    SegmentTissues,
    SubjectTemplate,
)
from ketamine_dti.resources import TEMPLATE as MNI_SPACE

#: Where the MNI-space outputs' reference grid is published (cited, never downloaded).
TEMPLATEFLOW_URL = "https://templateflow.s3.amazonaws.com"

#: GB held by a T1w registration step (1 mm T1w + 2 mm template + warps).
ANAT_STEP_MEM_GB = 1.5


def init_anat_wf(omp_nthreads: int = 1, name: str = "anat_wf") -> pe.Workflow:
    """Longitudinal anatomy of one participant, shared by all sessions.

    Inputs (inputnode): ``t1w_files``, one raw T1w per session, baseline first.
    Outputs (outputnode): ``t1w_n4_files`` (bias-corrected, session order),
    ``from_template_to_session`` (one transform list per session), ``template_file``,
    ``template_mask`` (brain mask in the subject template), ``gm_file``/``csf_file``/``wm_file``
    (tissue probabilities in the subject template), ``mni_warped_file`` (the
    template brain in MNI), ``from_mni_to_template``
    ``from_template_to_mni`` (transform lists), ``template_qc``, ``mni_qc``.

    The sessions are averaged in a rigid halfway space, so neither is privileged; brain
    extraction, tissue segmentation and the SyN registration to MNI152NLin6Asym run once on that
    template, so both sessions see the same anatomy through the same template mapping.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w_files"]), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(
            fields=[
                "t1w_n4_files",
                "from_template_to_session",
                "from_session_to_template",
                "template_file",
                "template_brain",
                "template_mask",
                "gm_file",
                "csf_file",
                "wm_file",
                "mni_warped_file",
                "from_mni_to_template",
                "from_template_to_mni",
                "template_qc",
                "mni_qc",
            ]
        ),
        name="outputnode",
    )
    n4 = pe.MapNode(
        BiasCorrect(n_threads=omp_nthreads),
        iterfield=["in_file"],
        name="bias_correct",
        n_procs=omp_nthreads,
    )
    template = pe.Node(
        SubjectTemplate(n_threads=omp_nthreads),
        name="subject_template",
        n_procs=omp_nthreads,
        mem_gb=ANAT_STEP_MEM_GB,
    )
    brain = pe.Node(
        ExtractBrain(n_threads=omp_nthreads),
        name="extract_brain",
        n_procs=omp_nthreads,
        mem_gb=ANAT_STEP_MEM_GB,
    )
    segment = pe.Node(
        SegmentTissues(n_threads=omp_nthreads), name="segment_tissues", n_procs=omp_nthreads
    )
    to_mni = pe.Node(
        RegisterToMNI(n_threads=omp_nthreads),
        name="register_to_mni",
        n_procs=omp_nthreads,
        mem_gb=ANAT_STEP_MEM_GB,
    )
    workflow.connect([
        (inputnode, n4, [("t1w_files", "in_file")]),
        (n4, template, [("out_file", "t1w_files")]),
        (template, brain, [("template_file", "in_file")]),
        (brain, segment, [("brain_file", "brain_file"), ("mask_file", "mask_file")]),
        (brain, to_mni, [("brain_file", "brain_file"), ("mask_file", "mask_file"),
                         ("from_t1w_to_template", "initial_transform")]),
        (n4, outputnode, [("out_file", "t1w_n4_files")]),
        (template, outputnode, [("from_template_to_session", "from_template_to_session"),
                                ("from_session_to_template", "from_session_to_template"),
                                ("template_file", "template_file"), ("qc", "template_qc")]),
        (brain, outputnode, [("brain_file", "template_brain"), ("mask_file", "template_mask")]),
        (segment, outputnode, [("gm_file", "gm_file"), ("csf_file", "csf_file"),
                               ("wm_file", "wm_file")]),
        (to_mni, outputnode, [("from_mni_to_t1w", "from_mni_to_template"),
                              ("from_t1w_to_mni", "from_template_to_mni"), ("qc", "mni_qc"),
                              ("warped_file", "mni_warped_file")]),
    ])  # fmt: skip
    return workflow


def connect_anat_sinks(
    workflow: pe.Workflow,
    anat_wf: pe.Workflow,
    participant: ParticipantInputs,
    output_dir: Path,
    bids_dir: Path,
) -> None:
    """Publish the participant's anatomy under ``sub-<label>/anat/`` (one set per participant).

    "T1w" space is the subject template, as in fMRIPrep's longitudinal mode: the sessions'
    ``from-orig_to-T1w`` and ``from-dwi_to-T1w`` maps (session workflows) end there.
    """
    from ketamine_dti.workflows.outputs import add_sink, uri

    subject = participant.subject
    raw = [raw_uri(bids_dir, session.t1w) for session in participant.sessions]
    t1w_uri = uri(output_dir, "T1w", ".nii.gz", datatype="anat", sub=subject, desc="preproc")
    mask_uri = uri(output_dir, "mask", ".nii.gz", datatype="anat", sub=subject, desc="brain")
    to_mni = pe.Node(CompositeTransform(), name="xfm_template_to_mni")
    from_mni = pe.Node(CompositeTransform(), name="xfm_mni_to_template")
    workflow.connect([
        (anat_wf, to_mni, [("outputnode.from_template_to_mni", "transforms")]),
        (anat_wf, from_mni, [("outputnode.from_mni_to_template", "transforms")]),
    ])  # fmt: skip

    def sink(source, field, name, suffix, entities, metadata):
        add_sink(
            workflow, source, field, output_dir, name, suffix, {"sub": subject, **entities},
            datatype="anat", metadata=metadata,
        )  # fmt: skip

    sink(anat_wf, "outputnode.template_file", "ds_t1w", "T1w", {"desc": "preproc"}, {
        "Sources": raw,
        "SkullStripped": False,
        "Description": "Subject template: the sessions' N4-corrected T1w averaged in their "
        "rigid halfway space (a copy of the T1w for a single session).",
    })  # fmt: skip
    sink(anat_wf, "outputnode.template_mask", "ds_t1w_mask", "mask", {"desc": "brain"}, {
        "Sources": [t1w_uri], "Type": "Brain", "SpatialReference": t1w_uri,
        "Description": "Brain mask of the subject template (template-based extraction).",
    })  # fmt: skip
    for label in ("GM", "WM", "CSF"):
        sink(anat_wf, f"outputnode.{label.lower()}_file", f"ds_probseg_{label.lower()}",
             "probseg", {"label": label}, {"Sources": [t1w_uri, mask_uri]})  # fmt: skip
    mni = {"space": MNI_SPACE, "res": str(MNI_RESOLUTION), "desc": "brain"}
    sink(anat_wf, "outputnode.mni_warped_file", "ds_t1w_mni", "T1w", mni, {
        "Sources": [t1w_uri], "SkullStripped": True,
        "Description": "The subject template's brain resampled into MNI space (SyN).",
        "SpatialReference": f"{TEMPLATEFLOW_URL}/tpl-{MNI_SPACE}/tpl-{MNI_SPACE}"
        f"_res-0{MNI_RESOLUTION}_desc-brain_T1w.nii.gz",
        "Resolution": f"The grid of TemplateFlow's {MNI_SPACE} res-0{MNI_RESOLUTION} "
        f"({MNI_RESOLUTION} mm isotropic).",
    })  # fmt: skip
    for node, source, target in ((to_mni, "T1w", MNI_SPACE), (from_mni, MNI_SPACE, "T1w")):
        sink(node, "out_file", f"ds_xfm_{source}_{target}".lower(), "xfm",
             {"from": source, "to": target, "mode": "image"}, {
                 "Sources": [t1w_uri],
                 "Description": "ITK composite transform (affine + SyN warp, ANTs); apply with "
                 "antsApplyTransforms -t <file>.",
             })  # fmt: skip
