"""The derivatives specification: every published file's name, folder and sidecar, in one table.

The sinks (``workflows/outputs.py``), the group level, the run summary and the reports find an
output through :func:`spec_path` and its key, so no other module spells an entity. Column
descriptions sit beside the code that writes the columns (``rois.ROI_COLUMN_DESCRIPTIONS``,
``interfaces.bids.QC_COLUMN_DESCRIPTIONS``, and here the confounds, which
``interfaces.dwi.MotionCorrect`` writes from ``CONFOUND_COLUMNS``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ketamine_dti import bids, storage
from ketamine_dti.anat.registration import MNI_RESOLUTION
from ketamine_dti.config import Config
from ketamine_dti.dwi import free_water
from ketamine_dti.dwi.motion import FD_OUTLIER_MM
from ketamine_dti.dwi.slice_outliers import OUTLIER_SD as SLICE_OUTLIER_SD
from ketamine_dti.resources import TEMPLATE as MNI_SPACE
from ketamine_dti.rois import ROI_COLUMN_DESCRIPTIONS, GrayMatterRule

MD_UNITS = "mm^2/s"
#: Entity value replaced by the run's atlas label (``Config.atlas_label``).
ATLAS = "<atlas>"
#: Where the MNI-space outputs' reference grid is published (cited, never downloaded).
TEMPLATEFLOW_URL = "https://templateflow.s3.amazonaws.com"
#: Raw DWI sidecar keys carried over to the preprocessed DWI's sidecar.
DWI_METADATA_KEYS = (
    "PhaseEncodingDirection",
    "TotalReadoutTime",
    "EffectiveEchoSpacing",
    "EchoTime",
    "RepetitionTime",
    "MagneticFieldStrength",
    "Manufacturer",
    "SliceEncodingDirection",
)
#: Sidecar description of every column of the confounds TSV (MotionCorrect writes it).
CONFOUNDS_COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
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
    "outlier_slices": {
        "Description": f"Slices of this diffusion-weighted volume whose mean brain signal lay "
        f"more than {SLICE_OUTLIER_SD:g} robust SDs below its prediction from the shell's other "
        "volumes (dropouts)"
    },
    "replaced_slices": {
        "Description": "Outlier slices replaced by the prediction (0 with --slice-outliers none)"
    },
    "tested_slices": {
        "Description": "Slices tested (enough brain voxels; b0 volumes and small shells are "
        "not tested)"
    },
}


@dataclass(frozen=True)
class SidecarContext:
    """What a sidecar needs: the run (folders, methods, atlas) and the participant's inputs."""

    config: Config
    subject: str
    session: bids.SessionInputs | None = None
    raw_t1w: tuple[str, ...] = ()  # every session's raw T1w (participant-level outputs)

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)


@dataclass(frozen=True)
class OutputSpec:
    """One published file: BIDS suffix, entities, extension and where its sidecar comes from.

    ``sources``/``reference`` name other outputs by key (or ``raw:dwi``, ``raw:t1w``,
    ``raw:t1w_all`` for inputs); ``extra`` adds run-dependent sidecar content;
    ``runtime_metadata`` names an input (a JSON file) whose content is known only once the step
    ran (e.g. the free-water fit's priors), merged into the sidecar by the sink.
    """

    suffix: str
    entities: dict
    extension: str = ".nii.gz"
    datatype: str = "dwi"
    level: str = "session"  # "session" (sub-X/ses-Y/) or "participant" (sub-X/)
    sources: tuple[str, ...] = ()
    reference: str | None = None
    metadata: dict = field(default_factory=dict)
    extra: Callable[[SidecarContext], dict] | None = None
    companions: tuple[str, ...] = ()  # inputs written beside the file (bval_file, bvec_file)
    runtime_metadata: str | None = None
    #: a rule of ``storage.RULES`` (integers in steps finer than the data resolve), for images
    #: whose float32 copy is mostly noise bits; None: as the step computed it (NaN kept)
    storage: str | None = None


def _preproc_dwi(context: SidecarContext) -> dict:
    steps = ["MP-PCA denoising"] if context.config.denoise == "mppca" else []
    steps += ["Gibbs unringing"] if context.config.gibbs else []
    steps += [
        "per-volume affine motion/eddy-current correction to a b0 reference (one "
        f"{context.config.interpolation} interpolation)"
    ]
    metadata = context.session.dwi_metadata
    kept = {key: metadata[key] for key in DWI_METADATA_KEYS if key in metadata}
    return kept | {
        "Description": "Preprocessed DWI: " + ", ".join(steps) + "; b-vectors rotated. "
        "The fits ran on the unrounded series (Storage)."
    }


def _sdc_metadata(context: SidecarContext) -> dict:
    """The DWI readout the field and displacement refer to, and the estimation method."""
    from ketamine_dti.dwi.susceptibility import knot_spacings
    from ketamine_dti.fieldmaps import session_plan

    plan = session_plan(context.session)
    method = {
        "pepolar": "pepolar: cubic B-spline field (knot spacing "
        f"{knot_spacings()}, coarse to fine) fitted by least squares with a bending-energy "
        "penalty to the series' first b0 (restored, defining the reference frame) and the "
        "rigidly aligned reverse phase-encoded b0 "
        "(TOPUP/HySCO model: "
        "displacement along phase encoding with Jacobian intensity modulation)",
        "fieldmap": "fieldmap: the GRE fieldmap in Hz (a phasediff unwrapped and divided by "
        "2 pi (TE2 - TE1)), moved onto the b0 grid by a rigid mutual-information registration "
        "of its magnitude, continued smoothly beyond the head and smoothed",
        "syn": "syn: fieldmap-less (SyN-SDC, as sdcflows): the displacement along phase "
        "encoding of an ANTs SyN registration, restricted to that axis, of the b0 reference to "
        "the session's T1w brain (rigidly aligned first; local cross-correlation with the T1w "
        "inverted inside the brain plus mutual information with the T1w), divided by the "
        "readout time, fitted inside the brain with solid harmonics (the field has no sources "
        "there), continued smoothly beyond it and smoothed",
    }
    return {
        "PhaseEncodingDirection": plan.phase_encoding.direction,
        "TotalReadoutTime": plan.phase_encoding.total_readout_time,
        "EstimationMethod": method[plan.method],
    }


def _tensor_model(context: SidecarContext) -> dict:
    return {
        "Model": {
            "Description": "Diffusion tensor",
            "FitMethod": context.config.tensor_fit.upper(),
        }
    }


def _free_water_model(context: SidecarContext) -> dict:
    """The free-water model and both fits; the sink adds which one ran, with its prior values."""
    from ketamine_dti.workflows.boilerplate import REFERENCES

    fw = free_water
    return {
        "Model": {
            "Description": "Free-water elimination (free-water DTI): per voxel a tissue "
            "diffusion tensor D plus isotropic free water, S = S0 [(1 - f) exp(-b g'Dg) + "
            f"f exp(-b {fw.FREE_WATER_DIFFUSIVITY:g})], f the free-water signal fraction at "
            "b = 0, diffusivities in mm^2/s",
            "FreeWaterDiffusivity": fw.FREE_WATER_DIFFUSIVITY,
            "FitMethods": {
                "multi-shell": "two or more b > 0 shells: grid search over f with weighted "
                "log-linear tensor fits, then Levenberg-Marquardt least squares on the tensor, "
                "S0 and f (Hoy et al. 2014)",
                "single-shell": "one b > 0 shell, whose data cannot split the attenuation "
                "between tissue MD and free water (Pasternak et al. 2009): voxelwise penalised "
                "least squares with two Gaussian priors, weighted by the noise SD: on f, "
                "centred on the fraction implied by the voxel's b0 between a tissue and a CSF "
                "b0 reference estimated over the brain mask (SingleShellPrior; tissue: the "
                f"{fw.REFERENCE_GM_PERCENTILE:g}th percentile of the b0 of the voxels the T1w "
                "segmentation puts at >= "
                f"{fw.REFERENCE_MIN_GM_SHARE:g} GM and <= {fw.REFERENCE_MAX_CSF_SHARE:g} CSF, "
                "or without them the median b0 of the lowest-MD tenth of the voxels with DTI FA < "
                f"{fw.TISSUE_REFERENCE_MAX_FA:g}, B0ReferenceTissueVoxels says which; water: "
                f"DTI MD >= {fw.WATER_REFERENCE_MD:g} mm^2/s), after the "
                "receive coil's smooth shading (an N4 field of the mean b0 fitted on the voxels "
                f"with DTI MD < {fw.RECEIVE_FIELD_MAX_MD:g} mm^2/s, B-spline meshes of "
                + ", ".join(
                    f"{fw.RECEIVE_FIELD_SPLINE_MM / 2**level:g}"
                    for level in range(len(fw.RECEIVE_FIELD_ITERATIONS))
                )
                + " mm; "
                "B0ReceiveFieldRange: its 2nd and 98th percentiles) is divided out, SD "
                f"{fw.F_PRIOR_SD:g}; on tissue MD, mean {fw.TISSUE_MD_PRIOR_MEAN:g} and SD "
                f"{fw.TISSUE_MD_PRIOR_SD:g} mm^2/s (the b0 and MD initialisations compared by "
                "Golub et al. 2021); no spatial regularisation; f (prior centre and fit) "
                f"goes down to {fw.SINGLE_SHELL_MIN_F:g} below the tissue reference, a "
                "linear extrapolation, so that a bound at 0 does not bias ROI means (only "
                "with a b0 prior: FreeWaterFractionRange)",
            },
            "FreeWaterFractionRange": {
                "multi-shell": [0.0, 1.0],
                "single-shell": [fw.SINGLE_SHELL_MIN_F, 1.0],
                "single-shell without a b0 prior": [0.0, 1.0],
            },
            "FreeWaterRule": f"voxels whose DTI MD or fitted tissue MD is >= "
            f"{fw.PURE_WATER_MD:g} mm^2/s, or whose f > {fw.MAX_TISSUE_F:g}, are free water: "
            "f = 1 and no tissue MD (NaN)",
            "References": [
                REFERENCES[key]
                for key in ("free_water", "free_water_multishell", "free_water_init")
            ],
        }
    }


def _gray_matter_rule(context: SidecarContext) -> dict:
    rule = GrayMatterRule()
    config = context.config
    return {
        "GrayMatterRule": (
            "one set of subject-template points per ROI, read in every session at the DWI "
            "voxel each point falls in: atlas points whose DWI voxel (wherever the grid "
            f"falls) is expected to hold a GM fraction >= {rule.gm_prob_min} and a CSF "
            "fraction at most a cap, per ROI the strictest of "
            f"{rule.csf_caps_text()} under which the ROI keeps "
            "enough of its volume in every session (csf_fraction_max; the template's tissue "
            "labels: anatomy alone, never MD or FA), inside every session's DWI brain mask "
            "with a successful tensor fit in every session, so all sessions average the same "
            "tissue"
        ),
        "MissingROIRule": (
            f"an ROI that keeps less than {100 * config.roi_min_fraction:g}% of its atlas "
            f"volume (fraction_kept) or fewer than {config.roi_min_voxels} DWI voxels is "
            "missing: "
            "status 'missing', statistics n/a, the reason given"
        ),
    }


def _qc_columns(context: SidecarContext) -> dict:
    from ketamine_dti.interfaces.bids import QC_COLUMN_DESCRIPTIONS
    from ketamine_dti.qc import THRESHOLDS

    rules = [f"{rule.describe()} ({rule.what})" for rule in THRESHOLDS]
    return dict(QC_COLUMN_DESCRIPTIONS) | {"QCThresholds": rules}


def _tensor_map(param: str, description: str, units: str) -> OutputSpec:
    return OutputSpec(
        "dwimap",
        {"space": "dwi", "model": "tensor", "param": param},
        sources=("dwi_preproc", "dwi_mask"),
        metadata={"Units": units, "Description": description},
        extra=_tensor_model,
    )


def _free_water_map(param: str, description: str, units: str) -> OutputSpec:
    return OutputSpec(
        "dwimap",
        {"space": "dwi", "model": "fwdti", "param": param},
        sources=("dwi_preproc", "dwi_mask"),
        metadata={"Units": units, "Description": description},
        extra=_free_water_model,
        runtime_metadata="fw_metadata",
    )


def _probseg(label: str) -> OutputSpec:
    return OutputSpec(
        "probseg", {"label": label}, datatype="anat", level="participant",
        sources=("t1w_preproc", "t1w_mask"), storage="probability",
    )  # fmt: skip


def _composite_xfm(source: str, target: str) -> OutputSpec:
    return OutputSpec(
        "xfm", {"from": source, "to": target, "mode": "image"}, ".h5", "anat", "participant",
        sources=("t1w_preproc",),
        metadata={"Description": "ITK composite transform (affine + SyN warp, ANTs); apply "
                  "with antsApplyTransforms -t <file>."},
    )  # fmt: skip


_MNI_GRID = f"tpl-{MNI_SPACE}/tpl-{MNI_SPACE}_res-0{MNI_RESOLUTION}_desc-brain_T1w.nii.gz"

#: Every output of a session (keys are the session derivatives workflow's inputs).
SESSION_OUTPUTS: dict[str, OutputSpec] = {
    "dwi_preproc": OutputSpec(
        "dwi", {"space": "dwi", "desc": "preproc"}, sources=("raw:dwi",),
        reference="dwi_preproc", metadata={"SkullStripped": False}, extra=_preproc_dwi,
        companions=("bval_file", "bvec_file"), storage="noise",
    ),
    "dwi_mask": OutputSpec(
        "mask", {"space": "dwi", "desc": "brain"}, sources=("dwi_preproc",),
        reference="dwi_preproc",
        metadata={"Type": "Brain", "Description": "Brain mask of the b0 reference (median-Otsu)."},
    ),
    "b0_reference": OutputSpec(
        "dwiref", {"space": "dwi", "desc": "b0"}, sources=("raw:dwi",), reference="dwi_preproc",
        metadata={"Description": "Mean of the corrected b0 volumes (motion reference; "
                  "distortion-corrected when a fieldmap was used)."}, storage="range",
    ),
    "sdc_field": OutputSpec(
        "fieldmap", {"space": "dwi", "desc": "sdc"}, datatype="fmap",
        sources=("raw:dwi", "raw:fmap"), reference="dwi_preproc", extra=_sdc_metadata,
        metadata={"Units": "Hz", "SkullStripped": False,
                  "Description": "Off-resonance field (from reverse phase-encoded b0 images, "
                  "a GRE fieldmap or, fieldmap-less, the T1w: see EstimationMethod), at the "
                  "undistorted positions of the DWI grid."}, storage="range",
    ),
    "b0_uncorrected": OutputSpec(
        "magnitude", {"space": "dwi", "desc": "sdc"}, datatype="fmap", sources=("raw:dwi",),
        reference="dwi_preproc",
        metadata={"SkullStripped": False,
                  "Description": "The field's magnitude: mean of the motion-aligned b0 volumes "
                  "before susceptibility distortion correction (the image the field was "
                  "estimated for; the corrected one is desc-b0_dwiref)."}, storage="range",
    ),
    "sdc_displacement": OutputSpec(
        "dwimap", {"space": "dwi", "model": "sdc", "param": "displacement"},
        sources=("sdc_field",), reference="dwi_preproc", extra=_sdc_metadata,
        metadata={"Units": "mm", "Description": "Voxel displacement map in mm: how far the "
                  "DWI's signal at each undistorted point was displaced along the phase-encoding "
                  "axis (signed along the image's PE voxel axis: field x TotalReadoutTime x "
                  "voxel size, negated for a '-' direction), as corrected."}, storage="range",
    ),
    "md": _tensor_map("md", "Mean diffusivity", MD_UNITS),
    "fa": _tensor_map("fa", "Fractional anisotropy", "arbitrary"),
    "ad": _tensor_map("ad", "Axial diffusivity (largest eigenvalue)", MD_UNITS),
    "rd": _tensor_map("rd", "Radial diffusivity (mean of the two smaller eigenvalues)", MD_UNITS),
    "residual": OutputSpec(
        "dwimap", {"space": "dwi", "model": "tensor", "param": "residual"},
        sources=("dwi_preproc", "dwi_mask"),
        metadata={"Units": "arbitrary", "Description": "RMS tensor-fit residual relative to S0."},
    ),
    "fw_md": _free_water_map(
        "md", "Mean diffusivity of the tissue compartment (free-water corrected); NaN where "
        "the voxel is free water or the fit failed", MD_UNITS,
    ),
    "fw_fraction": _free_water_map(
        "fwf", "Free-water signal fraction at b = 0 (0..1); 1 where the voxel is free water, NaN "
        "where the fit failed", "arbitrary",
    ),
    "noise": OutputSpec(
        "dwimap", {"space": "dwi", "model": "mppca", "param": "sigma"}, sources=("raw:dwi",),
        metadata={"Units": "arbitrary",
                  "Description": "MP-PCA noise standard deviation (signal units)."},
        storage="range",
    ),
    "confounds": OutputSpec(
        "timeseries", {"desc": "confounds"}, ".tsv", sources=("raw:dwi",),
        metadata=CONFOUNDS_COLUMN_DESCRIPTIONS,
    ),
    "atlas_dseg": OutputSpec(
        "dseg", {"space": "dwi", "atlas": ATLAS}, sources=("dwi_preproc",),
        reference="dwi_preproc",
        metadata={"Description": "ROI atlas on the native DWI grid: the atlas's subject-template "
                  "points (MNI -> subject template) mapped into the DWI grid (subject template "
                  "-> T1w -> DWI); a voxel takes the label of at least half of its volume."},
    ),
    "atlas_gm": OutputSpec(
        "dseg", {"space": "dwi", "atlas": ATLAS, "desc": "graymatter"}, sources=("dwi_preproc",),
        reference="dwi_preproc",
        metadata={"Description": "DWI voxels averaged for each ROI (they hold ROI points kept "
                  "by the gray-matter rule and measured in every session), labelled by the "
                  "majority of those points."},
    ),
    "roi_table": OutputSpec(
        "md", {"desc": "roi"}, ".tsv", sources=("md",), metadata=ROI_COLUMN_DESCRIPTIONS,
        extra=_gray_matter_rule,
    ),
    "qc_table": OutputSpec(
        "metrics", {"desc": "qc"}, ".tsv", sources=("dwi_preproc",), extra=_qc_columns
    ),
    "xfm_dwi_t1w": OutputSpec(
        "xfm", {"from": "dwi", "to": "T1w", "mode": "image"}, ".mat",
        sources=("dwi_preproc", "t1w_preproc"),
        metadata={"Description": "ANTs rigid transform (ITK .mat): the b0 reference to the "
                  "session T1w (mutual information), chained with that T1w's rigid map to the "
                  "subject template (the participant's T1w space)."},
    ),
    "xfm_orig_t1w": OutputSpec(
        "xfm", {"from": "orig", "to": "T1w", "mode": "image"}, ".mat", "anat",
        sources=("raw:t1w", "t1w_preproc"),
        metadata={"Description": "ANTs rigid transform (ITK .mat): this session's T1w to the "
                  "subject template (halfway space of the sessions)."},
    ),
}  # fmt: skip

#: Every output of a participant's anatomy (keys are the anat derivatives workflow's inputs).
ANAT_OUTPUTS: dict[str, OutputSpec] = {
    "t1w_preproc": OutputSpec(
        "T1w", {"desc": "preproc"}, datatype="anat", level="participant",
        sources=("raw:t1w_all",),
        metadata={"SkullStripped": False,
                  "Description": "Subject template: the sessions' N4-corrected T1w averaged in "
                  "their rigid halfway space (a copy of the T1w for a single session)."},
        storage="noise",
    ),
    "t1w_mask": OutputSpec(
        "mask", {"desc": "brain"}, datatype="anat", level="participant",
        sources=("t1w_preproc",), reference="t1w_preproc",
        metadata={"Type": "Brain", "Description": "Brain mask of the subject template "
                  "(template-based extraction)."},
    ),
    "probseg_gm": _probseg("GM"),
    "probseg_wm": _probseg("WM"),
    "probseg_csf": _probseg("CSF"),
    "t1w_mni": OutputSpec(
        "T1w", {"space": MNI_SPACE, "res": str(MNI_RESOLUTION), "desc": "brain"},
        datatype="anat", level="participant", sources=("t1w_preproc",),
        metadata={"SkullStripped": True,
                  "Description": "The subject template's brain resampled into MNI space (SyN).",
                  "SpatialReference": f"{TEMPLATEFLOW_URL}/{_MNI_GRID}",
                  "Resolution": f"The grid of TemplateFlow's {MNI_SPACE} res-0{MNI_RESOLUTION} "
                  f"({MNI_RESOLUTION} mm isotropic)."},
    ),
    "xfm_t1w_mni": _composite_xfm("T1w", MNI_SPACE),
    "xfm_mni_t1w": _composite_xfm(MNI_SPACE, "T1w"),
}  # fmt: skip

OUTPUTS: dict[str, OutputSpec] = SESSION_OUTPUTS | ANAT_OUTPUTS


#: Session outputs that exist only when susceptibility distortion was corrected.
SDC_OUTPUTS = ("b0_uncorrected", "sdc_field", "sdc_displacement")


def storage_sources(key: str, context: SidecarContext) -> list[str]:
    """The raw images whose step bounds an output's ("noise" rule, ``storage.raw_step``): the
    DWI runs of the preprocessed series; none for the T1w template, whose N4 correction and
    averaging rescale its values. Read by the sink when it runs, not when the workflow is
    built."""
    if key != "dwi_preproc" or context.session is None:
        return []
    return [run[0] for run in context.session.dwi_runs]


def session_output_keys(denoise: str, sdc: bool = False) -> tuple[str, ...]:
    """The session outputs a run publishes (the noise map only when MP-PCA ran, the field
    and the uncorrected b0 only when distortion was corrected)."""
    return tuple(
        key for key in SESSION_OUTPUTS
        if (key != "noise" or denoise == "mppca") and (key not in SDC_OUTPUTS or sdc)
    )  # fmt: skip


def input_fields(keys: tuple[str, ...]) -> tuple[str, ...]:
    """What a derivatives workflow takes for `keys`: the keys, then their companions and
    run-time sidecar files (each once)."""
    extra = (
        field
        for key in keys
        for field in (*OUTPUTS[key].companions, OUTPUTS[key].runtime_metadata)
        if field is not None
    )
    return tuple(dict.fromkeys((*keys, *extra)))


def spec_entities(key: str, sub: str, ses: str | None = None, atlas: str = "") -> dict:
    """The entities of output `key` for one participant (and session)."""
    spec = OUTPUTS[key]
    entities = {"sub": sub}
    if spec.level == "session":
        entities["ses"] = ses
    for name, value in spec.entities.items():
        entities[name] = atlas if value == ATLAS else value
    return entities


def spec_path(
    output_dir: str | Path, key: str, sub: str, ses: str | None = None, atlas: str = ""
) -> Path:
    """Where output `key` of a participant (session) is written, e.g. ``roi_table``."""
    spec = OUTPUTS[key]
    if spec.level == "session" and not ses:
        raise ValueError(f"output {key!r} belongs to a session; give ses")
    if any(value == ATLAS for value in spec.entities.values()) and not atlas:
        raise ValueError(f"output {key!r} is named after the atlas; give atlas")
    entities = spec_entities(key, sub, ses, atlas)
    return bids.derivative_path(output_dir, spec.datatype, spec.suffix, spec.extension, **entities)


def find_outputs(output_dir: str | Path, key: str, atlas: str = "") -> dict[tuple[str, str], Path]:
    """(subject label, session label) -> file of every session that has output `key` (an
    output named after the atlas needs ``atlas``, as in ``spec_path``)."""
    spec = OUTPUTS[key]
    pattern = f"sub-*/ses-*/{spec.datatype}/sub-*_ses-*_*{spec.suffix}{spec.extension}"
    found = {}
    for path in sorted(Path(output_dir).glob(pattern)):
        subject = bids.strip_prefix(path.parts[-4], "sub-")
        session = bids.strip_prefix(path.parts[-3], "ses-")
        # only the exact name this session's output has (not another desc or a stray file)
        if path.name == spec_path(output_dir, key, subject, session, atlas).name:
            found[(subject, session)] = path
    return found


def _uri(context: SidecarContext, source: str) -> list[str]:
    raw = {
        "raw:dwi": lambda: [context.session.dwi],
        "raw:t1w": lambda: [context.session.t1w],
        "raw:t1w_all": lambda: list(context.raw_t1w),
        "raw:fmap": lambda: _fieldmap_files(context.session),
    }
    if source in raw:
        return [bids.raw_uri(context.config.bids_dir, path) for path in raw[source]()]
    session = context.session.session if context.session is not None else None
    atlas = context.config.atlas_label
    path = spec_path(context.output_dir, source, context.subject, session, atlas)
    return [bids.bids_uri(context.output_dir, path)]


def _fieldmap_files(session: bids.SessionInputs) -> list[str]:
    """The raw images the session's field came from (reverse-PE images, or a GRE fieldmap and
    its magnitudes)."""
    from ketamine_dti.fieldmaps import session_plan

    plan = session_plan(session)
    if plan.method == "fieldmap":
        return [plan.gre.path, *plan.gre.magnitudes]
    return [image.path for image in plan.reverse_pe]


def sidecar(key: str, context: SidecarContext) -> dict:
    """The JSON sidecar of output `key`: static content, Sources, SpatialReference, extras."""
    spec = OUTPUTS[key]
    metadata = dict(spec.metadata)
    if spec.sources:
        metadata["Sources"] = [uri for source in spec.sources for uri in _uri(context, source)]
    if spec.reference:
        metadata["SpatialReference"] = _uri(context, spec.reference)[0]
    if spec.extra is not None:
        metadata.update(spec.extra(context))
    if spec.storage is not None:
        metadata["Storage"] = storage.DESCRIPTIONS[spec.storage]
    return metadata
