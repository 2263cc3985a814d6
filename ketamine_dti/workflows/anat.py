"""Participant anatomy: one unbiased within-subject T1w template and one MNI registration."""

from __future__ import annotations

from collections.abc import Sequence

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ketamine_dti.anat.registration import MNI_RESOLUTION, SYN_SHRINK
from ketamine_dti.anat.segmentation import PRIOR_WEIGHT
from ketamine_dti.interfaces.anat import (
    BiasCorrect,
    ExtractBrain,
    RegisterToMNI,
    SegmentTissues,
    SubjectTemplate,
)
from ketamine_dti.resources import TEMPLATE as MNI_SPACE
from ketamine_dti.resources import get_tissue_priors
from ketamine_dti.workflows.boilerplate import LiterateWorkflow
from ketamine_dti.workflows.nodes import threaded_node

#: GB held by a T1w registration step (1 mm T1w + 2 mm template + warps).
ANAT_STEP_MEM_GB = 1.5
#: GB held by the worker that runs the tissue segmentation. On a 1 mm standard participant
#: (seed 11 sub-001) the step peaks at 1.04 GB in a fresh process under glibc's own allocation
#: policy (``allocator.freed_memory_returned``; 1.55 GB with freed memory kept). A long-lived
#: worker of the CLI peaked at 1.16-1.39 GB while segmenting (participant_paper_session28_cli.md,
#: two at once in 2.86 GB). 1.6 keeps two apart within a 3 GB budget.
SEGMENT_MEM_GB = 1.6

OUTPUT_FIELDS = (
    "t1w_n4_files",
    "from_template_to_session",
    "from_session_to_template",
    "template_file",
    "template_brain",
    "template_mask",
    "gm_file",
    "csf_file",
    "wm_file",
    "tissue_dseg_file",
    "mni_warped_file",
    "from_mni_to_template",
    "from_template_to_mni",
    "template_qc",
    "mni_qc",
)

#: The anatomy's published outputs (derivatives.ANAT_OUTPUTS keys) and the fields behind them.
PUBLISHED_OUTPUTS = {
    "t1w_preproc": "template_file",
    "t1w_mask": "template_mask",
    "probseg_gm": "gm_file",
    "probseg_wm": "wm_file",
    "probseg_csf": "csf_file",
    "t1w_mni": "mni_warped_file",
    "xfm_t1w_mni": "from_template_to_mni",
    "xfm_mni_t1w": "from_mni_to_template",
}

#: The MNI SyN's levels (mm), as the methods state them.
_SYN_LEVELS_MM = tuple(shrink * MNI_RESOLUTION for shrink in SYN_SHRINK)
_SYN_LEVELS_TEXT = (
    ", ".join(f"{mm:g}" for mm in _SYN_LEVELS_MM[:-1]) + f" and {_SYN_LEVELS_MM[-1]:g}"
)

DESCRIPTION = f"""**Anatomy.** Each session's T1w was bias corrected with N4 [n4] (ketamine-dti's
implementation of ANTs' N4BiasFieldCorrection, same algorithm and settings; median field difference
below 0.1%). The sessions of a participant were averaged in a rigid halfway space, an unbiased
within-subject template [halfway]; brain extraction, one SyN registration to {MNI_SPACE} [mni] and
three-class tissue segmentation (Atropos, with the template's tissue priors moved into the subject,
weight {PRIOR_WEIGHT}) [atropos] were computed once on that template, so every session sees the
same anatomy through the same template mapping. The brain was extracted as in antsBrainExtraction:
the head was registered (from an alignment of the upper head, then affine and SyN) to the
whole-head Colin27 template [colin27], whose brain mask, pulled back, was refined by the T1w's own
tissue intensities after a second N4 inside the brain. The SyN to {MNI_SPACE} (Mattes MI,
{MNI_RESOLUTION} mm template) ran at {_SYN_LEVELS_TEXT} mm, stopping at {_SYN_LEVELS_MM[-2]:g} mm
when the DWI voxels were {_SYN_LEVELS_MM[-2]:g} mm or coarser (the regions are read on the DWI
grid)."""


def init_anat_wf(
    omp_nthreads: int = 1, dwi_files: Sequence[str] = (), name: str = "anat_wf"
) -> pe.Workflow:
    """Longitudinal anatomy of one participant, shared by all sessions.

    Inputs (inputnode): ``t1w_files``, one raw T1w per session, baseline first.
    Outputs (outputnode): ``t1w_n4_files`` (bias-corrected, session order),
    ``from_template_to_session`` (one transform list per session), ``template_file``,
    ``template_mask`` (brain mask in the subject template), ``gm_file``/``csf_file``/``wm_file``
    (tissue probabilities in the subject template), ``tissue_dseg_file`` (their hard labels),
    ``mni_warped_file`` (the template brain in MNI), ``from_mni_to_template``,
    ``from_template_to_mni`` (transform lists), ``template_qc``, ``mni_qc``.
    ``dwi_files``: the DWI series the ROIs will be read in; the MNI SyN needs no level finer
    than their voxels (``registration.mni_syn_levels``).

    The sessions are averaged in a rigid halfway space, so neither is privileged; brain
    extraction, tissue segmentation and the SyN registration to MNI152NLin6Asym run once on that
    template, so both sessions see the same anatomy through the same template mapping.
    """
    workflow = LiterateWorkflow(name, desc=DESCRIPTION)
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w_files"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=list(OUTPUT_FIELDS)), name="outputnode")
    n4 = pe.MapNode(
        BiasCorrect(n_threads=omp_nthreads),
        iterfield=["in_file"],
        name="bias_correct",
        n_procs=omp_nthreads,
    )
    template = threaded_node(
        SubjectTemplate(n_threads=omp_nthreads), "subject_template", omp_nthreads,
        ANAT_STEP_MEM_GB,
    )  # fmt: skip
    brain = threaded_node(
        ExtractBrain(n_threads=omp_nthreads), "extract_brain", omp_nthreads, ANAT_STEP_MEM_GB
    )
    segment = threaded_node(
        SegmentTissues(
            prior_files=[str(p) for p in get_tissue_priors(resolution=2)], n_threads=omp_nthreads
        ),
        "segment_tissues",
        omp_nthreads,
        SEGMENT_MEM_GB,
    )
    to_mni = threaded_node(
        RegisterToMNI(dwi_files=list(dwi_files), n_threads=omp_nthreads),
        "register_to_mni",
        omp_nthreads,
        ANAT_STEP_MEM_GB,
    )
    workflow.connect([
        (inputnode, n4, [("t1w_files", "in_file")]),
        (n4, template, [("out_file", "t1w_files")]),
        (template, brain, [("template_file", "in_file")]),
        (brain, segment, [("brain_file", "brain_file"), ("mask_file", "mask_file")]),
        (to_mni, segment, [("from_mni_to_t1w", "from_mni_to_t1w")]),
        (brain, to_mni, [("brain_file", "brain_file"), ("mask_file", "mask_file"),
                         ("from_t1w_to_template", "initial_transform")]),
        (n4, outputnode, [("out_file", "t1w_n4_files")]),
        (template, outputnode, [("from_template_to_session", "from_template_to_session"),
                                ("from_session_to_template", "from_session_to_template"),
                                ("template_file", "template_file"), ("qc", "template_qc")]),
        (brain, outputnode, [("brain_file", "template_brain"), ("mask_file", "template_mask")]),
        (segment, outputnode, [("gm_file", "gm_file"), ("csf_file", "csf_file"),
                               ("wm_file", "wm_file"), ("dseg_file", "tissue_dseg_file")]),
        (to_mni, outputnode, [("from_mni_to_t1w", "from_mni_to_template"),
                              ("from_t1w_to_mni", "from_template_to_mni"), ("qc", "mni_qc"),
                              ("warped_file", "mni_warped_file")]),
    ])  # fmt: skip
    return workflow
