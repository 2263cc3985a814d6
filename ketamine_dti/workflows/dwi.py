"""DWI preprocessing: checks -> MP-PCA -> Gibbs unringing -> motion/eddy correction -> mask,
then the tensor fit."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ketamine_dti.config import Config
from ketamine_dti.dwi.gre_fieldmap import SMOOTHING_FWHM_MM as GRE_SMOOTHING_MM
from ketamine_dti.dwi.motion import (
    FD_HEAD_RADIUS_MM,
    FD_OUTLIER_MM,
    FINAL_MI_ITERATIONS,
    SHELL_PASS_LEVELS,
)
from ketamine_dti.dwi.resampling import INTERPOLATION_ORDERS
from ketamine_dti.dwi.slice_outliers import DEFAULT_SLICE_AXIS
from ketamine_dti.dwi.slice_outliers import OUTLIER_SD as SLICE_OUTLIER_SD
from ketamine_dti.dwi.slice_outliers import SH_DEGREE as SLICE_SH_DEGREE
from ketamine_dti.dwi.susceptibility import knot_spacings
from ketamine_dti.dwi.syn_sdc import FINAL_FWHM_MM as SYN_FINAL_FWHM_MM
from ketamine_dti.dwi.syn_sdc import HARMONIC_DEGREE as SYN_HARMONIC_DEGREE
from ketamine_dti.dwi.tensor import RESTORE_OUTLIER_SD
from ketamine_dti.fieldmaps import FieldmapInputs, corrects
from ketamine_dti.interfaces.anat import DWIToT1w
from ketamine_dti.interfaces.dwi import (
    BrainMask,
    CheckDWI,
    Denoise,
    MotionCorrect,
    ResampleDWI,
    SliceOutliers,
    TensorFit,
    Unring,
)
from ketamine_dti.interfaces.fieldmap import (
    EstimateSusceptibilityField,
    EstimateSynField,
    GreFieldToB0,
)
from ketamine_dti.workflows.boilerplate import LiterateWorkflow
from ketamine_dti.workflows.nodes import threaded_node

#: GB a DWI step may hold in memory (a standard session in float32 plus copies); Nipype's
#: MultiProc uses it to avoid running too many at once.
DWI_STEP_MEM_GB = 1.5


OUTPUT_FIELDS = (
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
    "b0_uncorrected",
    "field_file",
    "displacement_file",
    "jacobian_file",
    "outside_file",
)

#: Inputs of a workflow with a ``syn`` plan: the session's T1w brain and its mask, which the
#: fieldmap-less estimate registers the b0 to.
SYN_T1W_FIELDS = ("t1w_brain_file", "t1w_mask_file")


def _sdc_sentence(fieldmap: FieldmapInputs | None) -> str:
    """What the methods say of susceptibility distortion (the method that actually ran)."""
    if fieldmap is None or fieldmap.method == "none":
        return "Susceptibility distortion was not corrected (no fieldmap was used). "
    if fieldmap.method == "syn":
        return f"""No fieldmap was found, so susceptibility distortion was corrected without one
(SyN-SDC, as sdcflows [syn_sdc]): the b0 reference, rigidly registered to the session's T1w,
was registered to the T1w brain with ANTs SyN [ants] restricted to the phase-encoding axis,
driven by local cross-correlation with the T1w intensities inverted inside the brain (a b0-like
contrast) and by mutual information with the T1w. The displacement along phase encoding,
divided by the readout time, gave the field in Hz; inside the brain, where the field has no
sources, it was replaced by its least-squares fit with solid harmonics up to degree
{SYN_HARMONIC_DEGREE}, continued smoothly beyond the brain and smoothed (FWHM
{SYN_FINAL_FWHM_MM:g} mm). The displacement and its Jacobian entered the same single
interpolation as the motion and eddy-current maps. """
    if fieldmap.method == "fieldmap":
        return f"""Susceptibility distortion was corrected with the GRE fieldmap
({fieldmap.gre.kind}): the field in Hz ({_GRE_CONVERSION[fieldmap.gre.kind]}) was carried onto
the b0 reference by a rigid registration of the fieldmap's magnitude (mutual information
[ants]), continued smoothly beyond the head and smoothed (FWHM {GRE_SMOOTHING_MM:g} mm). The
displacement along phase encoding and its Jacobian entered the same single interpolation as the
motion and eddy-current maps. """
    return f"""Susceptibility distortion was corrected from reverse phase-encoded b0 images, as
TOPUP [topup] and HySCO [hysco] do: the off-resonance field was a cubic B-spline (knots
{knot_spacings()}) fitted by least squares with a bending-energy penalty to make the series'
first b0 (which defines the reference frame; restored as above, not resampled) and the reverse
image agree after displacement along phase encoding and Jacobian intensity modulation, after a
rigid least-squares alignment of the reverse image to that b0. The displacement and its
Jacobian entered the same single interpolation as the motion and eddy-current maps. """


_GRE_CONVERSION = {
    "phasediff": "the phase difference unwrapped by quality-guided region growing and divided by "
    "2 pi (TE2 - TE1)",
    "fieldmap": "converted from the fieldmap's units",
}


def _slice_outlier_sentence(slice_outliers: str) -> str:
    """What the methods say of slice dropouts (replaced, or only counted)."""
    found = f"""Slice dropouts were detected as FSL eddy does [repol]: per shell, every
diffusion-weighted volume was predicted from the shell's other volumes by spherical harmonics
of even degree up to {SLICE_SH_DEGREE} with a Laplace-Beltrami penalty [sh_laplace_beltrami],
and a slice whose mean signal in the brain lay more than {SLICE_OUTLIER_SD:g} robust SDs below
the prediction was an outlier; detection was repeated with the outliers left out of the
predictions until they no longer changed"""
    if slice_outliers == "replace":
        return f"""{found}. The outliers' brain voxels were replaced by the prediction of
the same model fitted to the log signal of the slice's other volumes. """
    return f"{found}; outliers were counted, not replaced. "


#: How the methods text names each --interpolation choice.
_KERNEL_NAMES = {"trilinear": "trilinear", "cubic": "cubic B-spline"}


def _description(
    denoise: str,
    gibbs: bool,
    tensor_fit: str,
    fieldmap: FieldmapInputs | None = None,
    slice_outliers: str = Config.slice_outliers,
    interpolation: str = Config.interpolation,
) -> str:
    steps = []
    if denoise == "mppca":
        steps.append("denoised with Marchenko-Pastur PCA [mppca] (the noise map is saved)")
    if gibbs:
        pair = fieldmap is not None and fieldmap.method == "pepolar"
        steps.append(
            "corrected for Gibbs ringing by local subvoxel shifts [gibbs]"
            + (" (so were the reverse phase-encoded images)" if pair else "")
        )
    done = "; ".join(steps) + ("; " if steps else "")
    dropouts = _slice_outlier_sentence(slice_outliers)
    return f"""**Diffusion.** Each session's DWI series was {done}head motion and eddy-current
distortion were corrected by registering each volume to a target of its own contrast, as FSL
eddy and SHORELine do: b0 volumes rigidly to the first b0 (their mean is the reference), by least
squares (inverse-compositional Gauss-Newton [ic_gn]); diffusion-weighted volumes with a
12-parameter affine to the mean image of their shell, recomputed from the aligned volumes over
{len(SHELL_PASS_LEVELS)} least-squares passes, then refined at full resolution by
{FINAL_MI_ITERATIONS} steps of gradient ascent on Mattes mutual information [mattes] (each step
must raise the metric). The shell mean carries the eddy-current distortion of the shell's mean
gradient direction; with the phase-encoding axis known, it was estimated by fitting each
volume's phase-encoding row of its affine linearly on its gradient direction (the linear model
of FSL eddy) and removed before the shell mean was brought to the b0 reference by one rigid
registration with Mattes mutual information (ANTs). Each volume was interpolated once
({_KERNEL_NAMES[interpolation]}) and multiplied by the Jacobian determinant of its affine
(restoring the signal an eddy-current stretch spreads thinner); b-vectors were rotated by the
rotation part of each affine [bvec_rotation].
Translations along phase encoding, which the eddy-current field offset confounds in
diffusion-weighted volumes, were taken from the b0 volumes. Six motion parameters and the framewise
displacement (FD, {FD_HEAD_RADIUS_MM:g} mm head radius) [fd] were saved; volumes with FD >
{FD_OUTLIER_MM} mm were counted as outliers. {_sdc_sentence(fieldmap)}A brain mask was
computed from the b0 reference (median filter and Otsu threshold). {dropouts}A diffusion tensor was
fitted ({_tensor_sentence(tensor_fit, denoise)}), giving MD, FA, AD and RD (mm^2/s) and the RMS
fit residual."""


def _tensor_sentence(tensor_fit: str, denoise: str) -> str:
    """The estimator as the methods name it (RESTORE's noise comes from MP-PCA when it ran)."""
    if tensor_fit != "restore":
        return f"{tensor_fit.upper()} [wls]"
    noise = "the MP-PCA noise map" if denoise == "mppca" else "each voxel's median residual"
    return (
        f"RESTORE [restore]: samples more than {RESTORE_OUTLIER_SD:g} noise SDs ({noise}) from a "
        "Geman-McClure robust fit were left out of a weighted least-squares fit [wls]"
    )


def init_dwi_preproc_wf(
    denoise: str = Config.denoise,
    gibbs: bool = Config.gibbs,
    tensor_fit: str = Config.tensor_fit,
    slice_outliers: str = Config.slice_outliers,
    interpolation: str = Config.interpolation,
    omp_nthreads: int = 1,
    pe_axis: int | None = None,
    slice_axis: int = DEFAULT_SLICE_AXIS,
    fieldmap: FieldmapInputs | None = None,
    b0_threshold: float = Config.b0_threshold,
    name: str = "dwi_preproc_wf",
) -> pe.Workflow:
    """Preprocess one DWI series and fit the tensor (defaults: those of Config).

    Inputs (inputnode): ``dwi_file``, ``bval_file``, ``bvec_file`` (raw BIDS files); with a
    ``syn`` ``fieldmap`` also SYN_T1W_FIELDS, the session's T1w brain and mask.
    Outputs (outputnode, OUTPUT_FIELDS): ``dwi_file``/``bval_file``/``bvec_file``
    (preprocessed, rotated b-vectors), ``b0_reference``, ``mask_file``, ``noise_file`` (MP-PCA
    sigma; only with ``denoise="mppca"``), ``confounds_file``, ``n_outlier_volumes``,
    ``md_file``, ``fa_file``, ``ad_file``, ``rd_file``, ``residual_file``, ``residual_median``
    (free water is fitted after coregistration, ``workflows.session``); with a ``fieldmap``
    that corrects (``fieldmaps.corrects``) also ``b0_uncorrected`` (the motion-aligned b0
    before SDC), ``field_file`` (Hz), ``displacement_file`` (mm along PE) and
    ``jacobian_file``; ``outside_file``: voxels the resampling read outside some volume's
    field of view.

    Denoising comes first (it needs the untouched noise), unringing second (it needs the
    original slice grid), then a single interpolation aligns every volume to the b0 reference
    and, with a ``fieldmap`` plan (``fieldmaps.FieldmapInputs``), undoes the
    susceptibility distortion (reverse-PE images: estimated from the first restored b0;
    SyN-SDC and GRE fieldmaps: through the motion-aligned b0 reference). ``pe_axis``
    (the phase-encode voxel axis, from the sidecar) keeps eddy-current shear and field offsets
    out of the head-motion estimates. Slice dropouts are found on the resampled series, still on
    the raw slice grid (``slice_axis``, from SliceEncodingDirection), and with
    ``slice_outliers="replace"`` replaced before the tensor fit; their counts
    join ``confounds_file``.
    """
    if denoise not in ("mppca", "none"):
        raise ValueError(f"denoise must be 'mppca' or 'none', got {denoise!r}")
    if slice_outliers not in ("replace", "none"):
        raise ValueError(f"slice_outliers must be 'replace' or 'none', got {slice_outliers!r}")
    if interpolation not in INTERPOLATION_ORDERS:
        raise ValueError(
            f"interpolation must be one of {sorted(INTERPOLATION_ORDERS)}, got {interpolation!r}"
        )
    workflow = LiterateWorkflow(
        name,
        desc=_description(denoise, gibbs, tensor_fit, fieldmap, slice_outliers, interpolation),
    )
    syn = corrects(fieldmap) and fieldmap.method == "syn"
    inputs = ["dwi_file", "bval_file", "bvec_file"] + (list(SYN_T1W_FIELDS) if syn else [])
    inputnode = pe.Node(niu.IdentityInterface(fields=inputs), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=list(OUTPUT_FIELDS)), name="outputnode")
    check = pe.Node(CheckDWI(), name="check_dwi")
    motion = threaded_node(
        MotionCorrect(n_threads=omp_nthreads, pe_axis=pe_axis), "motion_correct", omp_nthreads,
        DWI_STEP_MEM_GB,
    )  # fmt: skip
    resample = pe.Node(
        ResampleDWI(order=INTERPOLATION_ORDERS[interpolation]), name="resample_dwi",
        mem_gb=DWI_STEP_MEM_GB,
    )  # fmt: skip
    mask = pe.Node(BrainMask(), name="brain_mask")
    repol = threaded_node(
        SliceOutliers(
            slice_axis=slice_axis, replace=slice_outliers == "replace", n_threads=omp_nthreads
        ),
        "slice_outliers", omp_nthreads, DWI_STEP_MEM_GB,
    )  # fmt: skip
    tensor = threaded_node(
        TensorFit(method=tensor_fit, n_threads=omp_nthreads), "tensor_fit", omp_nthreads,
        DWI_STEP_MEM_GB,
    )  # fmt: skip
    workflow.connect([
        (inputnode, check, [("dwi_file", "dwi_file"), ("bval_file", "bval_file"),
                            ("bvec_file", "bvec_file")]),
        (check, motion, [("out_bval", "bval_file"), ("out_bvec", "bvec_file")]),
        (check, resample, [("out_bval", "bval_file"), ("out_bvec", "bvec_file")]),
        (motion, resample, [("affines_file", "affines_file")]),
        (resample, mask, [("b0_reference", "in_file")]),
        (resample, repol, [("out_file", "in_file")]),
        (motion, repol, [("out_bval", "bval_file"), ("out_bvec", "bvec_file"),
                         ("confounds_file", "confounds_file")]),
        (mask, repol, [("out_file", "mask_file")]),
        (repol, tensor, [("out_file", "in_file")]),
        (motion, tensor, [("out_bval", "bval_file"), ("out_bvec", "bvec_file")]),
        (mask, tensor, [("out_file", "mask_file")]),
        (resample, outputnode, [("b0_reference", "b0_reference"),
                                ("outside_file", "outside_file")]),
        (repol, outputnode, [("out_file", "dwi_file"), ("confounds_file", "confounds_file")]),
        (motion, outputnode, [("out_bval", "bval_file"), ("out_bvec", "bvec_file"),
                              ("n_outlier_volumes", "n_outlier_volumes")]),
        (mask, outputnode, [("out_file", "mask_file")]),
        (tensor, outputnode, [("md_file", "md_file"), ("fa_file", "fa_file"),
                              ("ad_file", "ad_file"), ("rd_file", "rd_file"),
                              ("residual_file", "residual_file"),
                              ("residual_median", "residual_median")]),
    ])  # fmt: skip
    restored = _connect_restoration(
        workflow, check, (motion, resample), outputnode, denoise, gibbs, omp_nthreads
    )
    if denoise == "mppca":
        if tensor_fit == "restore":
            workflow.connect(workflow.get_node("denoise"), "noise_file", tensor, "noise_file")
    if corrects(fieldmap):
        if syn:
            estimate = _syn_estimate(workflow, inputnode, motion, fieldmap, omp_nthreads)
        elif fieldmap.method == "pepolar":
            estimate = _pepolar_node(fieldmap, b0_threshold, unrung=gibbs)
            workflow.connect(*restored, estimate, "b0_file")
            workflow.connect(check, "out_bval", estimate, "bval_file")
            if gibbs:  # the pair must ring alike, or the field fits the DWI's ringing away
                used = _reverse_images(fieldmap)
                unring_reverse = pe.MapNode(
                    Unring(n_threads=omp_nthreads, b0_threshold=b0_threshold),
                    iterfield=["in_file", "b0_only_bval"], name="unring_reverse",
                    n_procs=omp_nthreads,
                )  # fmt: skip
                # only the b0s of a reverse DWI series are used: only they are unrung
                unring_reverse.inputs.in_file = [image.path for image in used]
                unring_reverse.inputs.b0_only_bval = [image.bval for image in used]
                workflow.connect(unring_reverse, "out_file", estimate, "reverse_files")
        else:
            estimate = _gre_node(fieldmap)
            workflow.connect(motion, "b0_reference", estimate, "b0_file")
        resample.inputs.pe_direction = fieldmap.phase_encoding.direction
        resample.inputs.readout = fieldmap.phase_encoding.total_readout_time
        workflow.connect([
            (estimate, resample, [("field_file", "field_file")]),
            (motion, outputnode, [("b0_reference", "b0_uncorrected")]),
            (estimate, outputnode, [("field_file", "field_file")]),
            (resample, outputnode, [("displacement_file", "displacement_file"),
                                    ("jacobian_file", "jacobian_file")]),
        ])  # fmt: skip
    return workflow


def _syn_estimate(workflow, inputnode, motion, fieldmap: FieldmapInputs, omp_nthreads: int):
    """Fieldmap-less SyN-SDC (``dwi.syn_sdc``): the motion-aligned, still distorted b0 is
    registered rigidly to the session's T1w brain (``DWIToT1w``, the step that later aligns
    the corrected b0), then SyN along phase encoding gives the field. Returns the node whose
    ``field_file`` is the field."""
    uncorrected_mask = pe.Node(BrainMask(), name="syn_b0_mask")
    rigid = threaded_node(DWIToT1w(n_threads=omp_nthreads), "syn_dwi_to_t1w", omp_nthreads)
    estimate = threaded_node(
        EstimateSynField(
            pe_direction=fieldmap.phase_encoding.direction,
            readout=fieldmap.phase_encoding.total_readout_time,
            n_threads=omp_nthreads,
        ),
        "estimate_susceptibility",
        omp_nthreads,
        DWI_STEP_MEM_GB,
    )
    workflow.connect([
        (motion, uncorrected_mask, [("b0_reference", "in_file")]),
        (motion, rigid, [("b0_reference", "b0_file")]),
        (uncorrected_mask, rigid, [("out_file", "dwi_mask_file")]),
        (inputnode, rigid, [("t1w_brain_file", "t1w_brain_file"),
                            ("t1w_mask_file", "t1w_mask_file")]),
        (motion, estimate, [("b0_reference", "b0_file")]),
        (inputnode, estimate, [("t1w_brain_file", "t1w_brain_file"),
                               ("t1w_mask_file", "t1w_mask_file")]),
        (rigid, estimate, [("from_t1w_to_dwi", "from_t1w_to_dwi")]),
    ])  # fmt: skip
    return estimate


def _gre_node(fieldmap: FieldmapInputs) -> pe.Node:
    """The GRE fieldmap converted to Hz and moved onto the b0 grid through its magnitude."""
    gre = fieldmap.gre
    inputs = {"fieldmap_file": gre.path, "kind": gre.kind, "magnitude_file": gre.magnitudes[0]}
    if gre.echo_times is not None:
        inputs["echo_times"] = list(gre.echo_times)
    if gre.units:
        inputs["units"] = gre.units
    return pe.Node(GreFieldToB0(**inputs), name="estimate_susceptibility", mem_gb=DWI_STEP_MEM_GB)


def _reverse_images(fieldmap: FieldmapInputs) -> list:
    """The reverse-PE images one estimate takes: those read out like the first (one readout)."""
    reverse = fieldmap.reverse_pe
    return [image for image in reverse if image.phase_encoding == reverse[0].phase_encoding]


def _pepolar_node(fieldmap: FieldmapInputs, b0_threshold: float, unrung: bool = False) -> pe.Node:
    """The field from the restored series' first b0 and the reverse-PE images (``unrung``:
    the caller connects the unrung images, holding only the volumes the field reads, so none
    is selected by b-value here).

    The first b0 defines the reference frame, so it needs no resampling. The b0 reference, a
    mean of trilinearly resampled b0s, is smoother than the reverse image, and the pair's
    mismatch in sharpness reads as displacement at sharp edges (the frontal pole above the
    sinus). The raw first b0 did as well on the simulator but not on the real Prisma pair,
    whose AP field then strayed by up to 60 Hz at the brain's edge."""
    used = _reverse_images(fieldmap)
    dwi_pe = fieldmap.phase_encoding
    files = {} if unrung else {"reverse_files": [image.path for image in used]}
    return pe.Node(
        EstimateSusceptibilityField(
            pe_direction=dwi_pe.direction,
            readout=dwi_pe.total_readout_time,
            reverse_bvals=["" if unrung else image.bval for image in used],
            **files,
            reverse_pe_direction=used[0].phase_encoding.direction,
            reverse_readout=used[0].phase_encoding.total_readout_time,
            b0_threshold=b0_threshold,
        ),
        name="estimate_susceptibility",
        mem_gb=DWI_STEP_MEM_GB,
    )


def _connect_restoration(workflow, check, targets, outputnode, denoise, gibbs, omp_nthreads):
    """check -> [MP-PCA] -> [Gibbs unringing] -> motion estimation and the resampling, as the
    options ask. Returns (node, output field) of the restored series."""
    last, last_field = check, "out_file"
    if denoise == "mppca":
        mppca = threaded_node(Denoise(n_threads=omp_nthreads), "denoise", omp_nthreads,
                              DWI_STEP_MEM_GB)  # fmt: skip
        workflow.connect([
            (last, mppca, [(last_field, "in_file")]),
            (mppca, outputnode, [("noise_file", "noise_file")]),
        ])  # fmt: skip
        last, last_field = mppca, "out_file"
    if gibbs:
        unring = threaded_node(Unring(n_threads=omp_nthreads), "unring", omp_nthreads)
        workflow.connect(last, last_field, unring, "in_file")
        last, last_field = unring, "out_file"
    for target in targets:
        workflow.connect(last, last_field, target, "in_file")
    return last, last_field
