"""Write the simulated trial as a raw BIDS dataset, with its ground truth under sourcedata/.

Layout (``<s>`` = session label, default ``baseline`` and ``24h``)::

    dataset_description.json  README  CHANGES  participants.tsv/.json  sessions.json
    phenotype/madrs.tsv/.json  phenotype/qids_sr.tsv/.json
    sub-<l>/sub-<l>_sessions.tsv
    sub-<l>/ses-<s>/anat/sub-<l>_ses-<s>_T1w.nii.gz/.json
    sub-<l>/ses-<s>/dwi/sub-<l>_ses-<s>_dwi.nii.gz/.bval/.bvec/.json
    sub-<l>/ses-<s>/fmap/sub-<l>_ses-<s>_dir-PA_epi.nii.gz/.json   (with --distortion only)
    sourcedata/ground_truth/roi_md.tsv, planted_effects.json, desc-truth_dseg.tsv,
        sub-<l>/ses-<s>/sub-<l>_ses-<s>_space-dwi_desc-truth_dseg.nii.gz
        sub-<l>/ses-<s>/sub-<l>_ses-<s>_space-dwi_desc-region_dseg.nii.gz
        sub-<l>/ses-<s>/sub-<l>_ses-<s>_space-dwi_desc-truth_md.nii.gz/.json
        sub-<l>/ses-<s>/sub-<l>_ses-<s>_space-T1w_desc-brain_mask.nii.gz
        sub-<l>/ses-<s>/sub-<l>_ses-<s>_space-dwi_desc-truth_fieldmap.nii.gz/.json  (--distortion)
        sub-<l>/ses-<s>/sub-<l>_ses-<s>_space-dwi_desc-truth_displacement.nii.gz/.json  (idem)

The App never reads ``sourcedata/``. Participants are simulated independently from
``(seed, participant index)`` random streams, so the output does not depend on ``n_procs``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ketamine_dti import __version__
from ketamine_dti.rois import ROI_NAMES
from ketamine_dti.simulate import anatomy, head, realism, regions, session, signal, susceptibility
from ketamine_dti.simulate.clinical import (
    MIN_PARTICIPANTS,
    ROI_BASELINE_MD,
    SCALES,
    SCENARIOS,
    SCORE_RANGES,
    SESSIONS,
    ClinicalTrial,
    simulate_clinical,
)
from ketamine_dti.simulate.presets import (
    EFFECTIVE_ECHO_SPACING_S,
    PARALLEL_REDUCTION_FACTOR,
    PHASE_ENCODING_DIRECTION,
    PRESETS,
    Preset,
    get_preset,
)

LOGGER = logging.getLogger(__name__)

BIDS_VERSION = "1.10.0"
GENERATOR = "ketamine-dti-simulate"
#: MD (mm^2/s) of gray matter outside the ROIs for a participant at the population mean; each
#: participant's value follows their own mean baseline ROI MD relative to the population's.
OTHER_GM_MD = 0.80e-3
#: Sessions are acquired this many hours apart (for sessions.tsv).
SESSION_INTERVAL_HOURS = 24
#: The first scan date (BIDS-anonymised: year 1900 means "shifted").
FIRST_SCAN = pd.Timestamp("1900-01-01T09:00:00")
#: Days between consecutive participants' enrolment.
ENROLMENT_INTERVAL_DAYS = 7
#: Files and folders this writer owns: ``--overwrite`` removes only these.
OWNED_ENTRIES = (
    "dataset_description.json",
    "README",
    "README.md",
    "CHANGES",
    "participants.tsv",
    "participants.json",
    "sessions.json",
    ".bidsignore",
    "phenotype",
    "sourcedata/ground_truth",
)
#: DWI/T1w sidecar basics of the simulated 3 T scanner.
SCANNER = {
    "Manufacturer": "Simulated",
    "ManufacturersModelName": GENERATOR,
    "DeviceSerialNumber": "0",
    "StationName": "SIMULATOR",
    "SoftwareVersions": f"{GENERATOR} {__version__}",
    "MagneticFieldStrength": 3,
    "InstitutionName": "ketamine-dti simulated trial",
    "InstitutionAddress": "none (simulated data)",
    "InstitutionalDepartmentName": "none (simulated data)",
    "ReceiveCoilName": "simulated 32-channel head coil",
    "ReceiveCoilActiveElements": "all",
    "CoilCombinationMethod": "adaptive combine (magnitude with Rician noise)",
    "NonlinearGradientCorrection": False,
}
T1W_TIMING = {
    "ScanningSequence": "GR_IR",
    "SequenceVariant": "SK_SP_MP",
    "SequenceName": "tfl3d1",
    "PulseSequenceDetails": "simulated MPRAGE",
    "MatrixCoilMode": "GRAPPA",
    "DwellTime": 7.8e-06,
    "RepetitionTime": 2.3,
    "EchoTime": 0.00296,
    "InversionTime": 0.9,
    "FlipAngle": 9,
    "MRAcquisitionType": "3D",
    "PulseSequenceType": "MPRAGE",
}
#: Readout dwell time (s) of the EPI, typical bandwidth ~1.5 kHz/pixel at 96 matrix.
DWI_DWELL_TIME_S = 2.6e-06
#: bids-validator-deno 3.0.2 (BIDS schema 1.11.1) indexes phenotype files by participant_id
#: alone, so our long-format phenotype (one row per participant and session, the App's input
#: contract) would fail its uniqueness check: the validator is told to skip the folder.
BIDSIGNORE = "phenotype/\n"
#: ``--head``: "full" (face, eyes, neck, fat and muscle; per-participant T1w scaling) or
#: "brain" (the brain in a thin synthetic shell, int16 T1w: the simulator before issue 10).
HEAD_MODES = ("full", "brain")
#: Random stream (third seed word) of the head shape and T1w scaling, apart from the anatomy,
#: pose and noise streams, so both head modes give the same brain at the same place.
HEAD_STREAM = 1
#: Random stream (third seed word; the fourth is the session's position) of the fieldmaps'
#: noise, so that a distorted trial has the same anatomy, motion and DWI noise as without.
FIELDMAP_STREAM = 2
#: The fieldmap's ``dir-<label>``: the DWI's reversed phase encoding, j (+j anterior) = PA.
FIELDMAP_DIR_LABEL = "PA"


@dataclass(frozen=True)
class TrialOptions:
    """Validated options of one simulated trial."""

    out_dir: Path
    n_participants: int
    seed: int
    preset: Preset
    scenario: str
    sessions: tuple[str, str]
    snr: float | None  # None: noiseless (no noise, no motion, no eddy distortion)
    n_procs: int = 1
    head: str = "full"
    distortion: str = "none"  # susceptibility.DISTORTION_CHOICES
    realism_level: str = "ideal"  # realism.REALISM_LEVELS
    realism: frozenset[str] = frozenset()  # the realism items switched on


def make_options(
    out_dir: Path | str,
    n_participants: int | None = None,
    seed: int = 0,
    preset: str = "tiny",
    scenario: str = "paper",
    sessions: tuple[str, ...] = SESSIONS,
    snr: float | None = None,
    noiseless: bool = False,
    n_procs: int = 1,
    head: str = "full",
    distortion: str | None = None,
    realism_level: str | None = None,
    realism_off: tuple[str, ...] = (),
) -> TrialOptions:
    """Check every option; ValueError carries a one-line message that says what to do.

    ``distortion=None`` takes the preset's default; ``realism_level=None`` the preset's
    (``ideal`` with ``noiseless``), less the items in ``realism_off``.
    """
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r} is unknown; use one of {', '.join(PRESETS)}")
    chosen = get_preset(preset)
    n = chosen.default_n_participants if n_participants is None else int(n_participants)
    if n < max(MIN_PARTICIPANTS, 3):
        raise ValueError(
            f"--n-participants {n} cannot make a 2:1 trial; give at least 3 (one block)"
        )
    if scenario not in SCENARIOS:
        raise ValueError(f"--scenario {scenario!r} is unknown; use one of {', '.join(SCENARIOS)}")
    sessions = tuple(sessions)
    if len(sessions) != 2 or sessions[0] == sessions[1]:
        raise ValueError(
            f"--sessions {' '.join(sessions)}: give two different labels (baseline, follow-up)"
        )
    for label in sessions:
        if not label.isalnum() or not label.isascii():
            raise ValueError(f"--sessions {label!r}: a BIDS label has only letters and digits")
    if noiseless and snr is not None:
        raise ValueError("--noiseless and --snr contradict each other; give one of them")
    if snr is not None and not (np.isfinite(snr) and snr > 0):
        raise ValueError(f"--snr {snr}: give a positive number (mean WM b0 / noise SD)")
    if seed < 0:
        raise ValueError(f"--seed {seed}: give a non-negative integer")
    if n_procs < 1:
        raise ValueError(f"--n-procs {n_procs}: give at least 1")
    if head not in HEAD_MODES:
        raise ValueError(f"--head {head!r} is unknown; use one of {', '.join(HEAD_MODES)}")
    if distortion is None:  # the preset's default needs the whole head's air and bone
        distortion = chosen.default_distortion if head == "full" else "none"
    if susceptibility.get_level(distortion) is not None and head != "full":
        raise ValueError(
            f"--distortion {distortion} needs --head full (the head's air and bone make the "
            "field); use --distortion none with --head brain"
        )
    if realism_level is None:
        realism_level = "ideal" if noiseless else chosen.default_realism
    elif noiseless and realism_level != "ideal":
        raise ValueError(
            f"--noiseless and --realism {realism_level} contradict each other; give one of them"
        )
    items = realism.resolve_realism(realism_level, tuple(realism_off))
    return TrialOptions(
        out_dir=Path(out_dir),
        n_participants=n,
        seed=int(seed),
        preset=chosen,
        scenario=scenario,
        sessions=sessions,
        snr=None if noiseless else float(chosen.default_snr if snr is None else snr),
        n_procs=int(n_procs),
        head=head,
        distortion=distortion,
        realism_level=realism_level,
        realism=items,
    )


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty folder (unless overwrite) or a path that is a file."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: exists and is not a folder; choose another OUT_DIR")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out_dir}: folder exists and is not empty; choose an empty OUT_DIR or add "
            "--overwrite"
        )


def clear_owned(out_dir: Path) -> None:
    """Remove what a previous simulation wrote (sub-*, top-level files, ground truth) only."""
    for entry in [*OWNED_ENTRIES, *(p.name for p in out_dir.glob("sub-*"))]:
        path = out_dir / entry
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, sort_keys=False) + "\n")


def write_tsv(path: Path, frame: pd.DataFrame) -> None:
    """A BIDS TSV: tab separated, "n/a" for missing values, no index, LF line ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a", lineterminator="\n")


def _save_nifti(
    data: np.ndarray,
    affine: np.ndarray,
    path: Path,
    zooms_time: float | None = None,
    dtype: type | None = None,
) -> None:
    """Save with sform/qform = scanner, units mm (and s), like a DICOM converter.

    ``dtype``: the on-disk type when it differs from the data's (float data stored as int16
    gets the scl_slope/scl_inter that nibabel picks to fit the range).
    """
    image = nib.Nifti1Image(data, affine, dtype=dtype)
    image.header.set_xyzt_units("mm", "sec")
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    if zooms_time is not None:
        image.header.set_zooms(image.header.get_zooms()[:3] + (zooms_time,))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)


def _to_int16(data: np.ndarray) -> np.ndarray:
    """Round magnitudes to int16 as scanners store them (headroom is checked)."""
    top = np.iinfo(np.int16).max
    if data.max() > top:
        LOGGER.warning("signal above int16 range clipped (max %.0f)", data.max())
    rounded = np.rint(data)
    np.clip(rounded, 0, top, out=rounded)
    return rounded.astype(np.int16, order="K")


def slice_timing(n_slices: int, repetition_time: float) -> list[float]:
    """Interleaved ascending slice order (odd then even), times in s within one TR."""
    order = realism.interleaved_order(n_slices)
    step = repetition_time / n_slices
    times = np.empty(n_slices)
    for position, slice_index in enumerate(order):
        times[slice_index] = position * step
    return [round(float(t), 4) for t in times]


def dwi_sidecar(preset: Preset, level: susceptibility.DistortionLevel | None = None) -> dict:
    """Scanner-like JSON sidecar of the DWI (times in s); a distortion level sets the readout."""
    n_slices = preset.dwi_shape[2]
    readout = {
        "TotalReadoutTime": round(preset.total_readout_time_s, 6),
        "EffectiveEchoSpacing": EFFECTIVE_ECHO_SPACING_S,
        "ParallelReductionFactorInPlane": PARALLEL_REDUCTION_FACTOR,
    }
    if level is not None:
        readout = {
            "TotalReadoutTime": round(level.total_readout_time_s(preset), 6),
            "EffectiveEchoSpacing": level.effective_echo_spacing_s(),
            "ParallelReductionFactorInPlane": level.acceleration,
        }
    return {
        **SCANNER,
        "MRAcquisitionType": "2D",
        "PulseSequenceType": "SE-EPI diffusion",
        "ScanningSequence": "EP",
        "SequenceVariant": "SK_SP",
        "SequenceName": f"ep_b{preset.bval:g}",
        "PulseSequenceDetails": "simulated single-shot twice-refocused SE-EPI",
        "MatrixCoilMode": "GRAPPA",
        "DwellTime": DWI_DWELL_TIME_S,
        "EchoTime": preset.dwi_echo_time_s,
        "RepetitionTime": preset.dwi_repetition_time_s,
        "FlipAngle": 90,
        "PhaseEncodingDirection": PHASE_ENCODING_DIRECTION,
        **readout,
        "SliceEncodingDirection": "k",
        "SliceThickness": preset.dwi_voxel_mm,
        "SliceTiming": slice_timing(n_slices, preset.dwi_repetition_time_s),
    }


def fieldmap_sidecar(
    preset: Preset, level: susceptibility.DistortionLevel, intended_for: str
) -> dict:
    """Sidecar of the reverse phase-encoded b=0 EPI fieldmap (BIDS ``fmap/*_epi``)."""
    return {
        **dwi_sidecar(preset, level),
        "PulseSequenceType": "SE-EPI",
        "SequenceName": "ep_b0",
        "PulseSequenceDetails": "simulated single-shot SE-EPI b=0, reversed phase encoding",
        "PhaseEncodingDirection": susceptibility.reverse_direction(PHASE_ENCODING_DIRECTION),
        "IntendedFor": [intended_for],
    }


def t1w_sidecar() -> dict:
    return {**SCANNER, **T1W_TIMING}


def format_bval(bvals: np.ndarray) -> str:
    return " ".join(f"{b:g}" for b in bvals) + "\n"


def format_bvec(bvecs: np.ndarray) -> str:
    """FSL layout: three rows (x, y, z), one column per volume, voxel frame."""
    return "".join(" ".join(f"{v:.6f}" for v in row) + "\n" for row in bvecs.T)


def _truth_rows(trial: ClinicalTrial, participant_id: str, session_id: str) -> pd.DataFrame:
    """The clinical model's true ROI values of one participant and session, indexed by ROI."""
    rows = trial.gm_md[
        (trial.gm_md.participant_id == participant_id) & (trial.gm_md.session_id == session_id)
    ]
    return rows.set_index("roi").loc[list(ROI_NAMES)]


def other_gm_md(trial: ClinicalTrial, participant_id: str, baseline_id: str) -> float:
    """Participant-level MD of GM outside the ROIs (mm^2/s), constant across sessions."""
    rows = _truth_rows(trial, participant_id, baseline_id)
    relative = np.mean([rows.loc[roi, "md_true"] / ROI_BASELINE_MD[roi] for roi in ROI_NAMES])
    return float(OTHER_GM_MD * relative)


def session_label_md(
    trial: ClinicalTrial, participant_id: str, session_id: str, other_md: float
) -> np.ndarray:
    """GM MD per ROI label for one session: [outside ROIs, ROI 1..7] (mm^2/s)."""
    rows = _truth_rows(trial, participant_id, session_id)
    return np.array([other_md, *rows["md_true"].to_numpy(dtype=float)])


def session_free_water(
    trial: ClinicalTrial, participant_id: str, sessions: tuple[str, str], position: int
) -> np.ndarray:
    """CSF added to each ROI in one session (fraction of its brain volume), from the planted
    24 h - baseline change: the follow-up carries a rise, the baseline a fall, so no session has
    to lose CSF that the anatomy may not have (zeros outside ``csf_shift``)."""
    change = _truth_rows(trial, participant_id, f"ses-{sessions[1]}")["csf_fraction_change"]
    sign = 1.0 if position == 1 else -1.0
    return np.maximum(sign * change.to_numpy(dtype=float), 0.0)


@dataclass(frozen=True)
class ParticipantResult:
    participant_id: str
    sigma: dict  # session_id -> noise SD
    mean_fd_mm: dict  # session_id -> mean framewise displacement
    truth_rule: dict  # session_id -> {roi: "pure"/"fallback"/"absent"}
    truth_voxels: dict  # session_id -> {roi: n voxels}
    boundaries: dict  # the participant's true-region boundary displacement (regions.py)
    region_voxels: dict  # session_id -> {roi: n voxels of the true region on the DWI grid}
    free_water: dict  # session_id -> {roi: CSF added, fraction of the ROI's brain volume}
    t1w_scaling: dict | None = None  # scale, offset, storage (full head only)
    head_shape: dict | None = None  # the head's per-participant parameters (full head only)
    field: dict | None = None  # session_id -> field figures (with --distortion only)
    realism: dict | None = None  # what the realism items did (with any item on)


def simulate_participant(
    options: TrialOptions, trial: ClinicalTrial, index: int
) -> ParticipantResult:
    """Simulate and write one participant's sessions (DWI, T1w, truth masks)."""
    participant_id = trial.participants.participant_id.iloc[index]
    rng = np.random.default_rng([options.seed, index + 1])
    template = anatomy.load_template_anatomy()
    boundary_rng = np.random.default_rng([options.seed, index + 1, regions.BOUNDARY_STREAM])
    atlas, boundaries = regions.participant_regions(boundary_rng, ROI_NAMES)
    participant = anatomy.random_participant(rng, template)
    head_shape, scaling = participant_head(options, index)
    items = realism.Realism(options.realism, (options.seed, index + 1))
    template, contrast, realism_record = participant_realism(items, template)
    level = susceptibility.get_level(options.distortion)
    if level is not None:  # the field needs the ear canals; without it the head is as before
        head_shape = dataclasses.replace(head_shape, ear_canals=True)
    motion_level = float(np.exp(rng.normal(0.0, session.MOTION_LEVEL_LOG_SD)))
    baseline_id = f"ses-{options.sessions[0]}"
    other_md = other_gm_md(trial, participant_id, baseline_id)
    root = options.out_dir
    truth_root = root / "sourcedata" / "ground_truth"
    sigma, mean_fd, rules, voxels, fields = {}, {}, {}, {}, {}
    region_voxels, free_water = {}, {}
    for position, label in enumerate(options.sessions):
        session_id = f"ses-{label}"
        stem = f"{participant_id}_{session_id}"
        pose = anatomy.random_head_pose(rng, template.centre_mm)
        label_md = session_label_md(trial, participant_id, session_id, other_md)
        added = session_free_water(trial, participant_id, options.sessions, position)
        dwi = session.simulate_dwi(
            template,
            participant,
            pose,
            options.preset,
            rng,
            label_md,
            atlas,
            options.snr,
            motion_level=motion_level,
            head_shape=head_shape,
            distortion=options.distortion,
            fieldmap_rng=np.random.default_rng(
                [options.seed, index + 1, FIELDMAP_STREAM, position]
            ),
            free_water=added,
            realism=items.for_session(position),
        )
        dwi_dir = root / participant_id / session_id / "dwi"
        _save_nifti(
            _to_int16(dwi.data),
            dwi.affine,
            dwi_dir / f"{stem}_dwi.nii.gz",
            zooms_time=options.preset.dwi_repetition_time_s,
        )
        (dwi_dir / f"{stem}_dwi.bval").write_text(format_bval(dwi.bvals))
        (dwi_dir / f"{stem}_dwi.bvec").write_text(format_bvec(dwi.bvecs))
        _write_json(dwi_dir / f"{stem}_dwi.json", dwi_sidecar(options.preset, level))
        if dwi.field is not None:
            fields[session_id] = write_distortion(dwi, options, root, truth_root, stem)
        truth_dir = truth_root / participant_id / session_id
        if items.enabled:
            realism_record["sessions"][session_id] = write_realism_truth(dwi, truth_dir, stem)
        _save_nifti(
            dwi.truth_dseg, dwi.affine, truth_dir / f"{stem}_space-dwi_desc-truth_dseg.nii.gz"
        )
        _save_nifti(
            dwi.region_dseg, dwi.affine, truth_dir / f"{stem}_space-dwi_desc-region_dseg.nii.gz"
        )
        _save_nifti(dwi.truth_md, dwi.affine, truth_dir / f"{stem}_space-dwi_desc-truth_md.nii.gz")
        _write_json(truth_dir / f"{stem}_space-dwi_desc-truth_md.json", TRUTH_MD_JSON)
        t1w = session.simulate_t1w(
            template,
            participant,
            pose,
            options.preset,
            rng,
            head_shape,
            scaling,
            contrast=contrast,
            realism=items.for_session(position),
        )
        write_t1w(t1w, root / participant_id / session_id / "anat", truth_root, stem)
        del t1w
        sigma[session_id] = dwi.sigma
        mean_fd[session_id] = float(dwi.framewise_displacement_mm()[1:].mean())
        rules[session_id] = {ROI_NAMES[k - 1]: r for k, r in dwi.truth_rule.items()}
        voxels[session_id] = {
            roi: int((dwi.truth_dseg == k).sum()) for k, roi in enumerate(ROI_NAMES, 1)
        }
        region_voxels[session_id] = {
            roi: int((dwi.region_dseg == k).sum()) for k, roi in enumerate(ROI_NAMES, 1)
        }
        free_water[session_id] = {roi: float(v) for roi, v in zip(ROI_NAMES, added, strict=True)}
        del dwi
    write_tsv(
        root / participant_id / f"{participant_id}_sessions.tsv", sessions_table(options, index)
    )
    LOGGER.info(
        "%s: %s written (mean FD %s mm)",
        participant_id,
        ", ".join(f"ses-{s}" for s in options.sessions),
        ", ".join(f"{v:.2f}" for v in mean_fd.values()),
    )
    return ParticipantResult(
        participant_id,
        sigma,
        mean_fd,
        rules,
        voxels,
        boundaries,
        region_voxels,
        free_water,
        t1w_scaling=None if scaling is None else dataclasses.asdict(scaling),
        head_shape=None if head_shape is None else head.shape_summary(head_shape),
        field=fields or None,
        realism=realism_record if items.enabled else None,
    )


def participant_realism(
    items: realism.Realism, template: anatomy.TemplateAnatomy
) -> tuple[anatomy.TemplateAnatomy, realism.T1wContrast | None, dict]:
    """The participant's own anatomy and T1w contrast (realism items); the truth record."""
    record: dict = {"sessions": {}}
    if "local_anatomy" in items:
        template, record["local_anatomy"] = realism.local_anatomy(
            template, items.rng("local_anatomy")
        )
    contrast = None
    if "t1w_contrast" in items:
        contrast = realism.random_t1w_contrast(
            items.rng("t1w_contrast"), session.T1W_RELATIVE["gm"], session.T1W_RELATIVE["csf"]
        )
        record["t1w_contrast"] = dataclasses.asdict(contrast)
    return template, contrast, record


def write_realism_truth(dwi: session.DwiSession, truth_dir: Path, stem: str) -> dict:
    """The session's per-volume motion and eddy coefficients, dropped slices and jerked
    slices (TSV) and what the DWI realism items did (JSON); returns a short summary."""
    prefix = truth_dir / f"{stem}_desc-truth"
    motion = dwi.motion
    table = pd.DataFrame({"volume": np.arange(len(dwi.bvals)), "bval": dwi.bvals})
    for axis, name in enumerate("xyz"):
        table[f"trans_{name}_mm"] = motion.translations_mm[:, axis].round(5)
    for axis, name in enumerate("xyz"):
        table[f"rot_{name}_deg"] = motion.rotations_deg[:, axis].round(5)
    artefacts = dwi.artefacts
    summary: dict = {}
    content: dict = {"realism_items": []}
    if artefacts is not None:
        coefficients = artefacts.volume_eddy(dwi.bvals, dwi.bvecs)
        for term, column in zip(realism.EDDY_TERMS, coefficients.T, strict=True):
            table[f"eddy_{term}"] = column
        content["eddy"] = {
            "terms": list(realism.EDDY_TERMS),
            "units": "mm of displacement along the image's j axis; position in mm from the "
            "grid centre (image axes, voxel size x (index - (n - 1) / 2))",
            "coefficients_per_gradient_axis": artefacts.eddy.tolist(),
            "reference_bval": signal.EDDY_REFERENCE_BVAL,
            "second_order": bool(artefacts.eddy_jacobian),
            "jacobian_intensity": bool(artefacts.eddy_jacobian),
            "per_volume": "eddy_* columns of desc-truth_motion.tsv",
        }
        if artefacts.dropouts is not None:
            dropped = pd.DataFrame(
                artefacts.dropouts.slices, columns=["volume", "slice", "signal_factor"]
            )
            write_tsv(Path(f"{prefix}_dropouts.tsv"), dropped)
            content["dropouts"] = {
                "file": f"{stem}_desc-truth_dropouts.tsv",
                "volumes": sorted(set(dropped.volume.tolist())),
                "n_slices": len(dropped),
            }
            summary["dropout_volumes"] = content["dropouts"]["volumes"]
        if artefacts.slice_motion is not None:
            n_slices = dwi.data.shape[2]
            jerked = pd.DataFrame(artefacts.slice_motion.table(n_slices))
            write_tsv(Path(f"{prefix}_slicemotion.tsv"), jerked)
            content["slice_motion"] = {
                "file": f"{stem}_desc-truth_slicemotion.tsv",
                "volumes": sorted(artefacts.slice_motion.offsets),
            }
            summary["slice_motion_volumes"] = content["slice_motion"]["volumes"]
        if artefacts.phases is not None:
            content["gibbs"] = {
                "partial_fourier": realism.PARTIAL_FOURIER,
                "omitted_k_space_lines": "highest ky" if artefacts.omit_high else "lowest ky",
                "phase_per_volume": {
                    "columns": ["k_shift_x_lines", "k_shift_y_lines", "quadratic_rad"],
                    "values": artefacts.phases.round(5).tolist(),
                },
            }
        content["realism_items"] = sorted(
            name
            for name, present in {
                "eddy": artefacts.eddy_jacobian,
                "slice_motion": artefacts.slice_motion is not None,
                "dropouts": artefacts.dropouts is not None,
                "gibbs": artefacts.phases is not None,
            }.items()
            if present
        )
    write_tsv(Path(f"{prefix}_motion.tsv"), table)
    _write_json(Path(f"{prefix}_artefacts.json"), content)
    return summary


def write_distortion(
    dwi: session.DwiSession, options: TrialOptions, root: Path, truth_root: Path, stem: str
) -> dict:
    """The session's reverse-PE fieldmap, its true field and displacement; the field's figures."""
    participant_id, session_id = stem.split("_")[:2]
    preset, field = options.preset, dwi.field
    dwi_path = f"{participant_id}/{session_id}/dwi/{stem}_dwi.nii.gz"
    fmap_stem = (
        root / participant_id / session_id / "fmap" / f"{stem}_dir-{FIELDMAP_DIR_LABEL}_epi"
    )
    _save_nifti(
        _to_int16(dwi.reverse_pe),
        dwi.affine,
        Path(f"{fmap_stem}.nii.gz"),
        zooms_time=preset.dwi_repetition_time_s,
    )
    _write_json(
        Path(f"{fmap_stem}.json"),
        fieldmap_sidecar(preset, field.level, f"bids::{dwi_path}"),
    )
    truth_stem = truth_root / participant_id / session_id / f"{stem}_space-dwi_desc-truth"
    _save_nifti(field.field_hz, dwi.affine, Path(f"{truth_stem}_fieldmap.nii.gz"))
    _write_json(Path(f"{truth_stem}_fieldmap.json"), truth_field_json(field, dwi_path))
    displacement = field.displacement_voxels(PHASE_ENCODING_DIRECTION)
    _save_nifti(displacement, dwi.affine, Path(f"{truth_stem}_displacement.nii.gz"))
    _write_json(
        Path(f"{truth_stem}_displacement.json"),
        truth_displacement_json(field, dwi_path, preset.dwi_voxel_mm),
    )
    return susceptibility.field_summary(
        field, dwi.brain_mask, preset.dwi_voxel_mm, PHASE_ENCODING_DIRECTION
    )


def truth_field_json(field: susceptibility.SessionField, dwi_path: str) -> dict:
    """Sidecar of a true field map (ground truth)."""
    return {
        "Units": "Hz",
        "Description": "True off-resonance of the head's susceptibility after the scanner's "
        "shim, on the DWI grid at the head position of its first volume (undistorted, like "
        "the truth masks); later volumes see it moved with the head (shim fixed)",
        "IntendedFor": f"bids::{dwi_path}",
        "DistortionLevel": field.level.name,
        "ShimOrder": field.level.shim_order,
        "MagneticFieldStrength": susceptibility.FIELD_STRENGTH_T,
        "TotalReadoutTime": round(field.readout_time_s, 6),
    }


def truth_displacement_json(
    field: susceptibility.SessionField, dwi_path: str, voxel_mm: float
) -> dict:
    """Sidecar of a true voxel displacement map (ground truth)."""
    reverse = susceptibility.reverse_direction(PHASE_ENCODING_DIRECTION)
    return {
        "Units": "voxel",
        "Description": "Displacement of the DWI's signal along the image's +j axis, in voxels: "
        "the signal of true voxel (i, j, k) appears at j + value; = field (Hz) x "
        f"TotalReadoutTime x (-1 for PhaseEncodingDirection {PHASE_ENCODING_DIRECTION}). The "
        f"fieldmap (PhaseEncodingDirection {reverse}) is displaced by minus this",
        "IntendedFor": f"bids::{dwi_path}",
        "PhaseEncodingDirection": PHASE_ENCODING_DIRECTION,
        "TotalReadoutTime": round(field.readout_time_s, 6),
        "VoxelSizeAlongPhaseEncodingMm": voxel_mm,
    }


def participant_head(
    options: TrialOptions, index: int
) -> tuple[head.HeadShape | None, session.T1wScaling | None]:
    """The participant's head and T1w scaling (their own random stream); None, None for brain."""
    if options.head != "full":
        return None, None
    head_rng = np.random.default_rng([options.seed, index + 1, HEAD_STREAM])
    return head.random_head_shape(head_rng), session.random_t1w_scaling(head_rng)


def write_t1w(t1w: session.T1wSession, anat_dir: Path, truth_root: Path, stem: str) -> None:
    """The T1w (in its storage type), its sidecar and its true brain mask (ground truth)."""
    on_disk = np.int16 if t1w.storage == "int16_scaled" else None
    _save_nifti(t1w.data, t1w.affine, anat_dir / f"{stem}_T1w.nii.gz", dtype=on_disk)
    _write_json(anat_dir / f"{stem}_T1w.json", t1w_sidecar())
    participant_id, session_id = stem.split("_")[:2]
    _save_nifti(
        t1w.brain_mask.astype(np.uint8),
        t1w.affine,
        truth_root / participant_id / session_id / f"{stem}_space-T1w_desc-brain_mask.nii.gz",
    )


def sessions_table(options: TrialOptions, index: int) -> pd.DataFrame:
    """sessions.tsv of one participant: session_id, acq_time (shifted dates), hours apart."""
    start = FIRST_SCAN + pd.Timedelta(days=ENROLMENT_INTERVAL_DAYS * index)
    rows = []
    for position, label in enumerate(options.sessions):
        when = start + pd.Timedelta(hours=SESSION_INTERVAL_HOURS * position)
        rows.append(
            {
                "session_id": f"ses-{label}",
                "acq_time": when.strftime("%Y-%m-%dT%H:%M:%S"),
                "hours_from_baseline": SESSION_INTERVAL_HOURS * position,
            }
        )
    return pd.DataFrame(rows)


def _worker(args: tuple[TrialOptions, ClinicalTrial, int]) -> ParticipantResult:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    options, trial, index = args
    return simulate_participant(options, trial, index)


def write_top_level(options: TrialOptions, trial: ClinicalTrial) -> None:
    """dataset_description, README, CHANGES, participants, sessions.json, phenotype."""
    root = options.out_dir
    _write_json(
        root / "dataset_description.json",
        {
            "Name": "Simulated 2:1 ketamine vs saline trial: 24 h gray-matter MD (ketamine-dti)",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["ketamine-dti simulator"],
            "HowToAcknowledge": "Cite ketamine-dti; the anatomy is the ICBM152 2009a template.",
            "ReferencesAndLinks": [
                "Fonov et al. (2011) NeuroImage 54:313-327 (ICBM152 2009a)",
            ],
            "GeneratedBy": [
                {
                    "Name": GENERATOR,
                    "Version": __version__,
                    "Description": (
                        f"preset={options.preset.name} scenario={options.scenario} "
                        f"seed={options.seed} n={options.n_participants} "
                        f"snr={'noiseless' if options.snr is None else options.snr} "
                        f"head={options.head}"
                        + (
                            ""
                            if options.distortion == "none"
                            else f" distortion={options.distortion}"
                        )
                        + realism_description(options)
                    ),
                }
            ],
        },
    )
    (root / "README").write_text(readme_text(options))
    (root / ".bidsignore").write_text(BIDSIGNORE)
    (root / "CHANGES").write_text(
        f"1.0.0 {FIRST_SCAN.strftime('%Y-%m-%d')}\n"
        f"  - Simulated by {GENERATOR} {__version__} (seed {options.seed}).\n"
    )
    write_tsv(root / "participants.tsv", trial.participants)
    _write_json(root / "participants.json", PARTICIPANTS_JSON)
    _write_json(root / "sessions.json", sessions_json(options.sessions))
    write_phenotype(root, trial.scores)
    for scale in SCALES:
        _write_json(root / "phenotype" / f"{scale}.json", PHENOTYPE_JSON[scale])


def write_phenotype(root: Path, scores: pd.DataFrame) -> None:
    """phenotype/<scale>.tsv (participant_id, session_id, <scale>_total) for every scale."""
    for scale in SCALES:
        write_tsv(
            root / "phenotype" / f"{scale}.tsv",
            scores[["participant_id", "session_id", f"{scale}_total"]],
        )


def write_ground_truth(
    options: TrialOptions, trial: ClinicalTrial, results: list[ParticipantResult]
) -> None:
    """roi_md.tsv, planted_effects.json and the label table of the truth masks."""
    truth = options.out_dir / "sourcedata" / "ground_truth"
    write_tsv(truth / "roi_md.tsv", trial.gm_md[list(ROI_MD_JSON)])
    _write_json(truth / "roi_md.json", ROI_MD_JSON)
    labels = pd.DataFrame({"index": range(1, len(ROI_NAMES) + 1), "name": ROI_NAMES})
    write_tsv(truth / "desc-truth_dseg.tsv", labels)
    other = {
        r.participant_id: other_gm_md(trial, r.participant_id, f"ses-{options.sessions[0]}")
        for r in results
    }
    planted = {
        **trial.planted,
        "imaging": {
            "preset": options.preset.name,
            "dwi_voxel_mm": options.preset.dwi_voxel_mm,
            "dwi_shape": list(options.preset.dwi_shape),
            "n_directions": options.preset.n_directions,
            "n_b0": options.preset.n_b0,
            "bval_s_per_mm2": options.preset.bval,
            "t1w_voxel_mm": options.preset.t1w_voxel_mm,
            "noiseless": options.snr is None,
            "snr": options.snr,
            "snr_definition": "mean b0 signal in voxels with WM fraction >= "
            f"{signal.WM_SNR_FRACTION} (clean first b0) / sigma",
            "sigma": {r.participant_id: r.sigma for r in results},
            "noise": "Rician: magnitude of signal + complex Gaussian noise, SD sigma per channel",
            "tissue_md_mm2_per_s": {
                "gm_outside_rois": other,
                "gm_outside_rois_rule": f"{OTHER_GM_MD} x mean(baseline md_true / population "
                "baseline MD of each ROI), constant across sessions",
                "wm": signal.WM_MD,
                "wm_anisotropy_deep_superficial": [
                    signal.WM_ANISOTROPY_DEEP,
                    signal.WM_ANISOTROPY_SUPERFICIAL,
                ],
                "csf": signal.CSF_DIFFUSIVITY,
                "gm_anisotropy": signal.GM_ANISOTROPY,
            },
            "s0_relative_to_wm": signal.b0_contrast(options.preset.b0_repetition_time_s),
            "regional_md_spread_mm": anatomy.REGIONAL_MD_SPREAD_MM,
            "anatomy": "nilearn ICBM152 2009a sym GM/WM (CSF = rest of brain), sharpened with "
            f"exponent {anatomy.SHARPEN_EXPONENT}; per-participant scale (mean "
            f"{anatomy.SCALE_MEAN}, SD {anatomy.SCALE_SD}, per axis {anatomy.SCALE_AXIS_SD}, "
            f"limits {anatomy.SCALE_LIMITS}) and smooth warp (RMS {anatomy.WARP_RMS_MM} mm); "
            "per-session rigid head pose",
            "atlas_space_note": "Colin27 (the true regions), MNI152NLin6Asym (the pipeline's "
            "atlas) and ICBM152 2009a (the anatomy) world coordinates are treated as the same "
            "mm space",
            "motion": "noiseless: none"
            if options.snr is None
            else "random-walk rigid motion "
            "relative to the first volume, eddy-like affine displacement along phase encode (j)",
            "mean_fd_mm": {r.participant_id: r.mean_fd_mm for r in results},
            "mean_fd_note": "Power et al. FD (rotations on a 50 mm sphere) between each volume's "
            "mean head position, jerks within a volume (realism slice_motion) included",
            "truth_mask_rule": (
                f"GM fraction of the ROI >= {session.TRUTH_MIN_ROI_GM} and CSF fraction <= "
                f"{session.TRUTH_MAX_CSF} on the DWI grid at the first volume's head position; "
                "fallback (no such voxel): the voxels where the ROI holds >= "
                f"{session.TRUTH_FALLBACK_MIN_ROI_GM} with the smallest partial-volume bias "
                f"bound {session.BIAS_PER_FRACTION['csf']} f_csf + "
                f"{session.BIAS_PER_FRACTION['wm']} f_wm + sum_l f_l |md_l/md_roi - 1| (within "
                f"{session.TRUTH_FALLBACK_MARGIN} of the best)"
            ),
            "truth_mask_rule_used": {r.participant_id: r.truth_rule for r in results},
            "truth_mask_voxels": {r.participant_id: r.truth_voxels for r in results},
            "region_mask_rule": "space-dwi_desc-region_dseg: ROI k where at least "
            f"{session.REGION_MIN_FRACTION} of the DWI voxel is brain (GM + WM + CSF) inside the "
            "participant's true region k, at the first volume's head position",
            "region_mask_voxels": {r.participant_id: r.region_voxels for r in results},
            "bvec_convention": "FSL: unit vectors in the voxel frame of the LAS-stored image",
        },
        "head": head_truth(options, results),
        "true_regions": true_regions_truth(results),
        "csf_shift": csf_shift_truth(trial, results),
    }
    readme = GROUND_TRUTH_README
    if options.distortion != "none":
        planted["distortion"] = distortion_truth(options, results)
        readme += GROUND_TRUTH_DISTORTION_README
    if options.realism:
        planted["realism"] = realism_truth(options, results)
        readme += GROUND_TRUTH_REALISM_README
    _write_json(truth / "planted_effects.json", planted)
    (truth / "README").write_text(readme)


def realism_truth(options: TrialOptions, results: list[ParticipantResult]) -> dict:
    """The realism items switched on, their models and what they did per participant."""
    return {
        "level": options.realism_level,
        "items": [name for name in realism.REALISM_ITEMS if name in options.realism],
        "off": [name for name in realism.REALISM_ITEMS if name not in options.realism],
        "models": {
            name: text for name, text in realism.MODEL_SUMMARY.items() if name in options.realism
        },
        "per_participant": {r.participant_id: r.realism for r in results},
    }


def true_regions_truth(results: list[ParticipantResult]) -> dict:
    """Where the ROIs' MD was planted: the independent parcellations and each participant's
    boundary displacement (regions.py)."""
    return {
        "source": "ketamine_dti/data/simulator/truth_regions_res-01_dseg.nii.gz: AAL amygdala "
        "and hippocampus, MRIcron Brodmann BA10 (split at x = 0) and BA25 + pregenual BA24/32 "
        "(vacc), all drawn on Colin27; never the pipeline's ketamine7 atlas (see "
        "ketamine_dti/data/README.md)",
        "planting": "GM inside true region k has md_true of ROI k; GM outside every region "
        "shares nearby regions' MD by their reach (regional_md_spread_mm)",
        "boundary_displacement": {
            "model": "new_label(p) = bundled_label(p + u(p)), nearest neighbour, in template mm "
            "before the participant's anatomical warp; u: white noise every grid_spacing_mm, "
            "Gaussian-smoothed (sigma smoothing_mm), scaled to rms_mm_per_component; drawn from "
            "the participant's own random stream (seed, participant, random_stream)",
            "rms_mm_per_component": regions.BOUNDARY_RMS_MM,
            "smoothing_mm": regions.BOUNDARY_SMOOTHING_MM,
            "grid_spacing_mm": regions.BOUNDARY_SPACING_MM,
            "per_participant": {r.participant_id: r.boundaries for r in results},
        },
    }


def csf_shift_truth(trial: ClinicalTrial, results: list[ParticipantResult]) -> dict:
    """How the planted CSF fraction changes (``csf_shift``) were imaged, per session."""
    return {
        "abs_range": trial.planted["csf_fraction_change_abs_range"],
        "mechanism": "in one session part of each true region's GM is replaced by CSF, evenly "
        "(CSF added in a voxel = s x the region's GM there), totalling |csf_fraction_change| "
        "of the region's brain volume on the DWI grid; the follow-up carries a rise, the "
        "baseline a fall. The tissue MD (md_true) is unchanged; truth masks use the anatomy "
        "without it; the T1w does not show it",
        "added_fraction_of_region_volume": {r.participant_id: r.free_water for r in results},
    }


def distortion_truth(options: TrialOptions, results: list[ParticipantResult]) -> dict:
    """The susceptibility model, the acquisition it distorts and each session's field figures."""
    level = susceptibility.get_level(options.distortion)
    preset = options.preset
    return {
        "level": level.name,
        "description": level.description,
        "model": susceptibility.MODEL_SUMMARY,
        "susceptibility_ppm_relative_to_soft_tissue": susceptibility.SUSCEPTIBILITY_PPM,
        "ear_canals": "painted in the head (T1w, DWI and field) when distortion is simulated: "
        f"capsules of radius {head.EAR_CANAL_RADIUS_MM} mm from {head.EAR_CANAL_INNER_MM} to "
        f"{head.EAR_CANAL_OUTER_MM} template mm (x mirrored)",
        "magnetic_field_strength_t": susceptibility.FIELD_STRENGTH_T,
        "hz_per_ppm": round(susceptibility.HZ_PER_PPM, 3),
        "shim_order": level.shim_order,
        "parallel_reduction_factor": level.acceleration,
        "effective_echo_spacing_s": level.effective_echo_spacing_s(),
        "total_readout_time_s": round(level.total_readout_time_s(preset), 6),
        "phase_encoding_direction": PHASE_ENCODING_DIRECTION,
        "displacement_rule": "the signal of true position j appears at j + s x field_hz x "
        "TotalReadoutTime voxels along the image's j axis, s = +1 for PhaseEncodingDirection j, "
        "-1 for j-; mass-conserving (Jacobian intensity change, pile-up and folding included)",
        "motion": "the head's field moves rigidly with each volume (first order: its change "
        "with the small within-series rotations is neglected), the shim stays in the scanner; "
        "recomputed for every session's head pose. Each volume is displaced along PE after its "
        "motion and eddy resampling",
        "fieldmap": {
            "file": f"fmap/sub-<l>_ses-<s>_dir-{FIELDMAP_DIR_LABEL}_epi.nii.gz",
            "phase_encoding_direction": susceptibility.reverse_direction(PHASE_ENCODING_DIRECTION),
            "volumes": susceptibility.FIELDMAP_VOLUMES,
            "content": "b=0 at the head position of the DWI's first volume (no motion between "
            "them), the same noise level as the DWI, independent noise per volume",
        },
        "field_summary": {r.participant_id: r.field for r in results},
    }


def head_truth(options: TrialOptions, results: list[ParticipantResult]) -> dict:
    """The head model, the T1w field of view and scaling, and the true brain mask's rule."""
    from ketamine_dti.simulate.presets import (
        T1W_FOV_MM,
        T1W_HEAD_CENTRE_OFFSET_MM,
        T1W_HEAD_FOV_MM,
    )

    full = options.head == "full"
    return {
        "mode": options.head,
        "model": head.MODEL_SUMMARY
        if full
        else "brain only: CSF 0-2 mm, skull 3-7 mm, scalp "
        "8-11 mm from a smooth brain hull (T1w only), int16 T1w",
        "t1w_fov_mm": list(T1W_HEAD_FOV_MM if full else T1W_FOV_MM),
        "t1w_fov_centre_from_brain_centre_mm": list(T1W_HEAD_CENTRE_OFFSET_MM) if full else 0,
        "tissues_t1w_s0_md": {k: list(v) for k, v in head.TISSUES.items()} if full else None,
        "t1w_scaling_rule": "stored = scale x magnitude + offset in `storage` (int16_scaled: "
        "float values stored as int16 with nibabel's scl_slope/scl_inter)"
        if full
        else "none",
        "t1w_scaling": {r.participant_id: r.t1w_scaling for r in results},
        "head_shape": {r.participant_id: r.head_shape for r in results},
        "brain_mask_rule": f"space-T1w_desc-brain_mask: voxels of the T1w grid whose brain "
        f"tissue + CSF fraction (GM + WM + CSF of the template brain mask, mapped like the DWI) "
        f">= {session.BRAIN_MASK_FRACTION}",
    }


def simulate_trial(options: TrialOptions, overwrite: bool = False) -> list[ParticipantResult]:
    """Write the whole dataset; OUT_DIR must be empty or absent (or ``overwrite``)."""
    check_out_dir(options.out_dir, overwrite)
    trial = simulate_clinical(
        options.n_participants,
        scenario=options.scenario,
        seed=options.seed,
        sessions=options.sessions,
    )
    options.out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        clear_owned(options.out_dir)
    write_top_level(options, trial)
    indices = range(options.n_participants)
    if options.n_procs == 1:
        results = [simulate_participant(options, trial, i) for i in indices]
    else:
        with ProcessPoolExecutor(max_workers=options.n_procs) as pool:
            results = list(pool.map(_worker, [(options, trial, i) for i in indices]))
    write_ground_truth(options, trial, results)
    return results


def readme_text(options: TrialOptions) -> str:
    """The dataset README (what it is, how it was made, what the validator says)."""
    return f"""# Simulated ketamine trial (ketamine-dti)

Synthetic data: no human participant was scanned. A 2:1 ketamine:saline trial of
{options.n_participants} participants with two sessions each ({", ".join(options.sessions)}),
written by `{GENERATOR}` (preset `{options.preset.name}`, scenario `{options.scenario}`,
seed {options.seed}).

- `sub-*/ses-*/dwi`: single-shell DWI, b = {options.preset.bval:g} s/mm^2,
  {options.preset.n_directions} directions + {options.preset.n_b0} b0,
  {options.preset.dwi_voxel_mm:g} mm isotropic, FSL bval/bvec (bvecs in the voxel frame).
  {
        "Noiseless, no motion."
        if options.snr is None
        else f"Rician noise at SNR {options.snr:g}"
        " (mean white-matter b0 / noise SD), head motion and eddy-like distortion."
    }
- `sub-*/ses-*/anat`: T1w at {options.preset.t1w_voxel_mm:g} mm with a bias field and noise{
        "; the whole head (face, eyes, neck, fat, muscle) down to ~8 cm below the brain, "
        "scaled and stored differently per participant"
        if options.head == "full"
        else "; the brain in a thin synthetic skull and scalp shell"
    }.
{fieldmap_readme(options)}{
        realism_readme(options)
    }- `phenotype/`: MADRS and QIDS-SR totals per session.
- `sourcedata/ground_truth/`: the true gray-matter MD per ROI and session, the planted effects
  and per-session ROI masks on the DWI grid. Pipelines must not read it. The ROIs are true
  regions drawn from parcellations other than the App's atlas (AAL, Brodmann on Colin27) and
  moved locally per participant.

Anatomy: the ICBM152 2009a template (Fonov et al. 2011, via nilearn), warped and scaled per
participant and positioned per session; outside the brain a modelled head (see
`sourcedata/ground_truth/planted_effects.json`, "head").

Validation: `bids-validator-deno` 3.0.2 (BIDS schema 1.11.1) reports no errors. `.bidsignore`
lists `phenotype/`: its files hold one row per participant and session (long format, with a
`session_id` column), which this schema's phenotype rule (one row per participant) rejects.
Remaining warnings: JSON_KEY_RECOMMENDED (HEDVersion, SourceDatasets in
dataset_description.json: no HED annotations, raw data) and TOO_FEW_AUTHORS (the authors are
the software, not people).
"""


def realism_description(options: TrialOptions) -> str:
    """The realism part of GeneratedBy's description (empty for ideal)."""
    if not options.realism:
        return ""
    off = [name for name in realism.REALISM_ITEMS if name not in options.realism]
    return f" realism={options.realism_level}" + (f" realism_off={','.join(off)}" if off else "")


def realism_readme(options: TrialOptions) -> str:
    """The README's line on the realism items (none for ideal)."""
    if not options.realism:
        return ""
    items = ", ".join(name for name in realism.REALISM_ITEMS if name in options.realism)
    return (
        f"- Realism (`{options.realism_level}`): {items}; what each did is in\n"
        '  `sourcedata/ground_truth` (planted_effects.json "realism", desc-truth_* files).\n'
    )


def fieldmap_readme(options: TrialOptions) -> str:
    """The README's lines on susceptibility distortion (none without it)."""
    if options.distortion == "none":
        return ""
    reverse = susceptibility.reverse_direction(PHASE_ENCODING_DIRECTION)
    return (
        f"- Susceptibility distortion (`{options.distortion}`): every DWI volume is displaced "
        "along\n  its phase-encoding axis by the field of the head's air and bone (3 T), "
        "with the\n  Jacobian intensity change. `sub-*/ses-*/fmap`: "
        f"{susceptibility.FIELDMAP_VOLUMES} b=0 volumes with the\n"
        f"  opposite phase encoding ({reverse}, `dir-{FIELDMAP_DIR_LABEL}`), `IntendedFor` the "
        "session's DWI.\n"
    )


GROUND_TRUTH_README = """Ground truth of the simulated trial (never read by ketamine-dti).

roi_md.tsv: true gray-matter MD (mm^2/s) of each ROI's true region, participant and session,
and the change of its CSF fraction from baseline (csf_shift).
planted_effects.json: the clinical model's planted couplings and all imaging parameters;
"true_regions": where the ROIs are (parcellations independent of the App's atlas, moved per
participant); "csf_shift": the CSF added per session.
sub-*/ses-*/*_space-dwi_desc-region_dseg.nii.gz: the true regions on the session's DWI grid at
the head position of the first volume (ROI indices as in desc-truth_dseg.tsv; region_mask_rule),
to compare with the App's ROIs on the DWI grid (Dice).
sub-*/ses-*/*_space-dwi_desc-truth_dseg.nii.gz: ROI indices (desc-truth_dseg.tsv) of the voxels
that are essentially pure gray matter of that true region, on the same grid (see
truth_mask_rule in planted_effects.json).
sub-*/ses-*/*_space-dwi_desc-truth_md.nii.gz: the apparent MD (mm^2/s) of every voxel on the
same grid, from the noiseless signal before motion and distortion: what a perfect pipeline would
measure there (partial volume and free water included; its .json says how it is computed).
Averaged over the voxels a pipeline kept, it is the truth of the tissue that pipeline averaged,
apart from how well its voxels match the true region.
sub-*/ses-*/*_space-T1w_desc-brain_mask.nii.gz: the true brain (tissue + CSF >= 50% of the
voxel) on the grid of that session's T1w, for brain-extraction Dice (planted_effects.json "head"
says how the head around it was made and how each participant's T1w is scaled and stored).
"""

TRUTH_MD_JSON = {
    "Units": "mm^2/s",
    "Description": "True apparent mean diffusivity of each voxel of the session's DWI grid at "
    "the head position of its first volume: the mean over the diffusion-weighted volumes of "
    "ln(S0 / S_v) / b_v of the simulator's noiseless signal before motion, eddy and "
    "susceptibility resampling (S0: mean of the b=0 volumes). What a perfect DTI pipeline "
    "would measure in that voxel: the tissue mixture as imaged (partial volume with WM, CSF "
    "and other GM, any free water added in this session), not the tissue MD of roi_md.tsv. "
    "0 where the voxel has no signal.",
    "ComputedFrom": "ketamine_dti.simulate.signal.apparent_md (the simulator's own signal "
    "model; no pipeline code)",
}
ROI_MD_JSON = {
    "participant_id": {"Description": "Participant label"},
    "session_id": {"Description": "Session label"},
    "roi": {
        "Description": "ROI name (the participant's true region, index order in "
        "desc-truth_dseg.tsv; planted_effects.json 'true_regions')"
    },
    "md_true": {
        "Description": "True mean diffusivity of the gray matter of the ROI's true region in "
        "this session (the tissue's, without free water)",
        "Units": "mm^2/s",
    },
    "csf_fraction_change": {
        "Description": "CSF volume fraction of the true region in this session minus at "
        "baseline (csf_shift scenario; 0 otherwise)",
        "Units": "fraction of the region's brain volume",
    },
}
PARTICIPANTS_JSON = {
    "participant_id": {"Description": "Participant label (sub-<label>)"},
    "group": {
        "Description": "Randomised arm (2:1 ketamine:saline by permuted blocks of 3 or 6)",
        "Levels": {
            "ketamine": "single 0.5 mg/kg IV ketamine infusion",
            "saline": "saline placebo infusion",
        },
    },
    "age": {"Description": "Age at baseline", "Units": "year"},
    "sex": {"Description": "Sex", "Levels": {"F": "female", "M": "male"}},
}


def sessions_json(sessions: tuple[str, str]) -> dict:
    """Data dictionary of the sessions.tsv files."""
    return {
        "session_id": {
            "Description": "Session label",
            "Levels": {
                f"ses-{sessions[0]}": "baseline, before the infusion",
                f"ses-{sessions[1]}": f"follow-up, {SESSION_INTERVAL_HOURS} hours later",
            },
        },
        "acq_time": {"Description": "Acquisition time (dates shifted to 1900 for anonymity)"},
        "hours_from_baseline": {
            "Description": "Time since the baseline session",
            "Units": "hour",
        },
    }


def _scale_json(scale: str, tool: str, term_url: str, total: str) -> dict:
    """Data dictionary of phenotype/<scale>.tsv; the score range is the clinical model's."""
    low, high = SCORE_RANGES[scale]
    return {
        "MeasurementToolMetadata": {"Description": tool, "TermURL": term_url},
        "participant_id": {"Description": "Participant label"},
        "session_id": {"Description": "Session of the rating (ses-baseline, ses-24h)"},
        f"{scale}_total": {
            "Description": f"{total} total score (higher = more depressed)",
            "Units": "points",
            "MinValue": low,
            "MaxValue": high,
        },
    }


PHENOTYPE_JSON = {
    "madrs": _scale_json(
        "madrs",
        "Montgomery-Asberg Depression Rating Scale (clinician rated, 10 items)",
        "https://www.ncbi.nlm.nih.gov/pubmed/444788",
        "MADRS",
    ),
    "qids_sr": _scale_json(
        "qids_sr",
        "Quick Inventory of Depressive Symptomatology, self report (16 items)",
        "https://www.ncbi.nlm.nih.gov/pubmed/12946886",
        "QIDS-SR",
    ),
}

GROUND_TRUTH_REALISM_README = """
Realism (planted_effects.json "realism": the items on, their models and per-participant draws):
sub-*/ses-*/*_desc-truth_motion.tsv: each DWI volume's rigid position (relative to the first)
and, with DWI items, its eddy displacement coefficients (terms in *_desc-truth_artefacts.json);
*_desc-truth_dropouts.tsv: volume, slice and signal factor of each dropped slice;
*_desc-truth_slicemotion.tsv: the per-slice offsets of the volumes with motion within them;
*_desc-truth_artefacts.json: the session's eddy coefficients per gradient axis, k-space model
and the lists of hit volumes.
"""

GROUND_TRUTH_DISTORTION_README = """
Susceptibility distortion (planted_effects.json "distortion"):
sub-*/ses-*/*_space-dwi_desc-truth_fieldmap.nii.gz: the true off-resonance (Hz) after the
scanner's shim, on the DWI grid at the head position of the first volume (undistorted);
sub-*/ses-*/*_space-dwi_desc-truth_displacement.nii.gz: the displacement (voxels along the
image's +j axis) of the DWI's signal at each true position, field x TotalReadoutTime x (-1 for
PhaseEncodingDirection j-). The reverse phase-encoded fieldmap (fmap/) is displaced by minus
that. Each DWI volume sees the field moved with the head (the shim stays in the scanner).
"""
