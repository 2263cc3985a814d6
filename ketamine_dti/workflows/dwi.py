"""DWI preprocessing: checks -> MP-PCA -> Gibbs unringing -> motion/eddy correction -> mask."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ketamine_dti.interfaces.dwi import (
    BrainMask,
    CheckDWI,
    Denoise,
    MotionCorrect,
    TensorFit,
    Unring,
)

#: GB a DWI step may hold in memory (a standard session in float32 plus copies); Nipype's
#: MultiProc uses it to avoid running too many at once.
DWI_STEP_MEM_GB = 1.5


def init_dwi_preproc_wf(
    denoise: str = "mppca",
    gibbs: bool = True,
    tensor_fit: str = "wls",
    omp_nthreads: int = 1,
    pe_axis: int | None = None,
    name: str = "dwi_preproc_wf",
) -> pe.Workflow:
    """Preprocess one DWI series and fit the tensor.

    Inputs (inputnode): ``dwi_file``, ``bval_file``, ``bvec_file`` (raw BIDS files).
    Outputs (outputnode): ``dwi_file``/``bval_file``/``bvec_file`` (preprocessed, rotated
    b-vectors), ``b0_reference``, ``mask_file``, ``noise_file`` (MP-PCA sigma; only with
    ``denoise="mppca"``), ``confounds_file``, ``n_outlier_volumes``, ``md_file``, ``fa_file``,
    ``ad_file``, ``rd_file``, ``residual_file``, ``residual_median``.

    Denoising comes first (it needs the untouched noise), unringing second (it needs the
    original slice grid), then a single interpolation aligns every volume to the b0 reference.
    ``pe_axis`` (the phase-encode voxel axis, from the sidecar) keeps eddy-current shear and
    shift out of the head-motion estimates.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["dwi_file", "bval_file", "bvec_file"]), name="inputnode"
    )
    outputnode = pe.Node(
        niu.IdentityInterface(
            fields=[
                "dwi_file",
                "bval_file",
                "bvec_file",
                "b0_reference",
                "mask_file",
                "noise_file",
                "confounds_file",
                "n_outlier_volumes",
                "md_file",
                "fa_file",
                "ad_file",
                "rd_file",
                "residual_file",
                "residual_median",
            ]
        ),
        name="outputnode",
    )
    check = pe.Node(CheckDWI(), name="check_dwi")
    motion = pe.Node(
        MotionCorrect(n_threads=omp_nthreads, pe_axis=pe_axis),
        name="motion_correct",
        n_procs=omp_nthreads,
        mem_gb=DWI_STEP_MEM_GB,
    )
    mask = pe.Node(BrainMask(), name="brain_mask")
    tensor = pe.Node(
        TensorFit(method=tensor_fit, n_threads=omp_nthreads),
        name="tensor_fit",
        n_procs=omp_nthreads,
        mem_gb=DWI_STEP_MEM_GB,
    )
    workflow.connect([
        (inputnode, check, [("dwi_file", "dwi_file"), ("bval_file", "bval_file"),
                            ("bvec_file", "bvec_file")]),
        (check, motion, [("out_bval", "bval_file"), ("out_bvec", "bvec_file")]),
        (motion, mask, [("b0_reference", "in_file")]),
        (motion, tensor, [("out_file", "in_file"), ("out_bval", "bval_file"),
                          ("out_bvec", "bvec_file")]),
        (mask, tensor, [("out_file", "mask_file")]),
        (motion, outputnode, [("out_file", "dwi_file"), ("out_bval", "bval_file"),
                              ("out_bvec", "bvec_file"), ("b0_reference", "b0_reference"),
                              ("confounds_file", "confounds_file"),
                              ("n_outlier_volumes", "n_outlier_volumes")]),
        (mask, outputnode, [("out_file", "mask_file")]),
        (tensor, outputnode, [("md_file", "md_file"), ("fa_file", "fa_file"),
                              ("ad_file", "ad_file"), ("rd_file", "rd_file"),
                              ("residual_file", "residual_file"),
                              ("residual_median", "residual_median")]),
    ])  # fmt: skip

    last, last_field = check, "out_file"
    if denoise == "mppca":
        mppca = pe.Node(
            Denoise(n_threads=omp_nthreads),
            name="denoise",
            n_procs=omp_nthreads,
            mem_gb=DWI_STEP_MEM_GB,
        )
        workflow.connect([
            (last, mppca, [(last_field, "in_file")]),
            (mppca, outputnode, [("noise_file", "noise_file")]),
        ])  # fmt: skip
        last, last_field = mppca, "out_file"
    elif denoise != "none":
        raise ValueError(f"denoise must be 'mppca' or 'none', got {denoise!r}")
    if gibbs:
        unring = pe.Node(Unring(n_threads=omp_nthreads), name="unring", n_procs=omp_nthreads)
        workflow.connect(last, last_field, unring, "in_file")
        last, last_field = unring, "out_file"
    workflow.connect(last, last_field, motion, "in_file")
    return workflow
