"""BIDS in and out: layout queries with input checks, and the derivative names (the one place).

Inputs are found with pybids per participant and session; every check raises
`InputError("<file>: <what is wrong>; <what to do>")` so the App can report it and carry on
with the other participants. Output names follow BIDS-Derivatives and BEP016 (diffusion
derivatives), e.g. ``sub-01_ses-24h_space-dwi_model-tensor_param-md_dwimap.nii.gz``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ketamine_dti import __version__
from ketamine_dti.dwi.gradients import GradientTable, check_gradient_table, read_bvals, read_bvecs
from ketamine_dti.errors import InputError

LOGGER = logging.getLogger(__name__)

APP_NAME = "ketamine-dti"
BIDS_VERSION = "1.10.0"
NIFTI_EXTENSIONS = [".nii.gz", ".nii"]
#: Entity order of BIDS file names (a subset of the spec's entity table, in its order).
ENTITY_ORDER = (
    "sub",
    "ses",
    "acq",
    "rec",
    "run",
    "from",
    "to",
    "mode",
    "space",
    "atlas",
    "res",
    "label",
    "model",
    "param",
    "desc",
)
#: Files the BIDS schema (validator 3.x) does not cover yet: BEP016 maps, transforms, our TSVs
#: and logs. The validator is told to ignore them.
BIDSIGNORE_PATTERNS = (
    "*_dwimap.nii.gz",
    "*_dwimap.json",
    "*_xfm.*",
    "*_desc-preproc_dwi.bval",
    "*_desc-preproc_dwi.bvec",
    "*_desc-roi_md.tsv",
    "*_desc-roi_md.json",
    "*_desc-qc_metrics.tsv",
    "*_desc-qc_metrics.json",
    "*_desc-confounds_timeseries.tsv",
    "*_desc-confounds_timeseries.json",
    "*_dseg.nii.gz",
    "*_dseg.json",
    "*_probseg.nii.gz",
    "*_probseg.json",
    "*_dwiref.nii.gz",
    "*_dwiref.json",
    "sub-*/log",  # the validator matches the folder itself, not "log/"
    "sub-*.html",
    "logs",
    "figures",
)


# ------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class SessionInputs:
    """Raw files of one session, already checked."""

    subject: str
    session: str
    dwi: str
    bval: str
    bvec: str
    t1w: str
    dwi_metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ParticipantInputs:
    """A participant's sessions, baseline first; a single session is flagged downstream."""

    subject: str
    sessions: tuple[SessionInputs, ...]

    @property
    def single_session(self) -> bool:
        return len(self.sessions) == 1


def get_layout(bids_dir: str | Path):
    """An in-memory pybids layout (nothing is written into BIDS_DIR)."""
    from bids import BIDSLayout

    return BIDSLayout(str(bids_dir), validate=False, derivatives=False)


def strip_prefix(label: str, prefix: str) -> str:
    """'sub-01' -> '01' (labels may be given either way)."""
    return label[len(prefix) :] if label.startswith(prefix) else label


def participant_folders(bids_dir: str | Path) -> list[str]:
    """Labels of the ``sub-*`` folders of a BIDS dataset, sorted."""
    return sorted(p.name[len("sub-") :] for p in Path(bids_dir).glob("sub-*") if p.is_dir())


def select_participants(
    available: Iterable[str], labels: Sequence[str] = (), where: str | Path = "BIDS_DIR"
) -> list[str]:
    """The one participant selection (CLI, participant level, group level).

    ``available``: the labels that exist (``sub-`` optional), e.g. :func:`participant_folders`;
    ``labels``: those asked for (empty: all). Returns bare labels, sorted when all are taken,
    else in the order asked. No participant at all, or an unknown label, raises InputError
    naming ``where`` and listing what exists.
    """
    existing = sorted({strip_prefix(label, "sub-") for label in available})
    if not existing:
        raise InputError(
            f"{where}: no participant found (no sub-<label>); is it the right folder?"
        )
    if not labels:
        return existing
    wanted = list(dict.fromkeys(strip_prefix(label, "sub-") for label in labels))
    unknown = [label for label in wanted if label not in existing]
    if unknown:
        shown = ", ".join(existing[:20]) + (" ..." if len(existing) > 20 else "")
        raise InputError(
            f"{where}: participant label(s) {', '.join(unknown)} not found; available: {shown}"
        )
    return wanted


def order_sessions(sessions: list[str], baseline_session: str, followup_session: str) -> list[str]:
    """Baseline first, follow-up second, any other session after them (sorted)."""
    priority = {baseline_session: 0, followup_session: 1}
    return sorted(sessions, key=lambda ses: (priority.get(ses, 2), ses))


def _query(layout, subject: str, session: str, datatype: str, suffix: str, filters: dict):
    query = {
        "subject": subject,
        "session": session,
        "datatype": datatype,
        "suffix": suffix,
        "extension": NIFTI_EXTENSIONS,
        "return_type": "filename",
    }
    query.update(filters.get(suffix.lower(), {}))
    return sorted(layout.get(**query))


def load_nifti(path: str | Path, ndim: int | None = None) -> nib.Nifti1Image:
    """Load a NIfTI fully, turning unreadable/truncated files and NaN/Inf into InputError."""
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(
            f"{path}: unreadable or truncated NIfTI ({type(exc).__name__}: {exc}); "
            "re-export the image"
        ) from exc
    if ndim is not None and data.ndim != ndim:
        raise InputError(f"{path}: image is {data.ndim}-D, expected {ndim}-D; check the file")
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        raise InputError(f"{path}: {n_bad} NaN/Inf voxels; fix or re-export the image")
    return image


def check_dwi(dwi: str, bval: str, bvec: str) -> GradientTable:
    """Check a DWI series and its gradient table; return the table."""
    image = load_nifti(dwi)
    if image.ndim != 4:
        raise InputError(
            f"{dwi}: DWI is {image.ndim}-D; a 4-D series (one volume per gradient) is needed"
        )
    return check_gradient_table(
        read_bvals(bval), read_bvecs(bvec), image.shape[3], bval_file=bval, bvec_file=bvec
    )


def _sidecar(layout, path: str, extension: str) -> str:
    """The .bval/.bvec that belongs to a DWI (inheritance allowed), or InputError."""
    try:
        found = layout.get_nearest(path, extension=extension, suffix="dwi", all_=False)
    except Exception:  # pybids raises on some missing-sidecar layouts
        found = None
    if not found:
        expected = path.replace(".nii.gz", extension).replace(".nii", extension)
        raise InputError(
            f"{path}: no {extension} file found (expected {expected}); "
            f"add the gradient table exported with the DWI"
        )
    return str(found)


def collect_session(
    layout, subject: str, session: str, bids_filters: dict | None = None
) -> SessionInputs:
    """Find and check one session's DWI (+ bval/bvec/json) and T1w."""
    filters = bids_filters or {}
    where = f"{layout.root}/sub-{subject}/ses-{session}"
    dwis = _query(layout, subject, session, "dwi", "dwi", filters)
    if not dwis:
        raise InputError(f"{where}/dwi: no DWI series found; add one or drop this session")
    if len(dwis) > 1:
        raise InputError(
            f"{where}/dwi: {len(dwis)} DWI series ({', '.join(Path(d).name for d in dwis)}); "
            "select one with --bids-filter-file"
        )
    t1ws = _query(layout, subject, session, "anat", "T1w", filters)
    if not t1ws:
        raise InputError(f"{where}/anat: no T1w image found; a T1w per session is required")
    if len(t1ws) > 1:
        LOGGER.warning("%s/anat: %d T1w images; using %s", where, len(t1ws), Path(t1ws[0]).name)
    dwi = dwis[0]
    bval = _sidecar(layout, dwi, ".bval")
    bvec = _sidecar(layout, dwi, ".bvec")
    check_dwi(dwi, bval, bvec)
    load_nifti(t1ws[0], ndim=3)
    return SessionInputs(
        subject=subject,
        session=session,
        dwi=dwi,
        bval=bval,
        bvec=bvec,
        t1w=t1ws[0],
        dwi_metadata=dict(layout.get_metadata(dwi)),
    )


def collect_participant(
    layout,
    subject: str,
    session_labels: tuple[str, ...] = (),
    baseline_session: str = "baseline",
    followup_session: str = "24h",
    bids_filters: dict | None = None,
) -> ParticipantInputs:
    """All selected sessions of a participant, checked, baseline first."""
    sessions = sorted(layout.get_sessions(subject=subject))
    if not sessions:
        raise InputError(
            f"{layout.root}/sub-{subject}: no ses-* folder; this App expects "
            f"ses-{baseline_session} and ses-{followup_session}"
        )
    if session_labels:
        wanted = [strip_prefix(label, "ses-") for label in session_labels]
        sessions = [ses for ses in sessions if ses in wanted]
        if not sessions:
            raise InputError(
                f"{layout.root}/sub-{subject}: none of the sessions {', '.join(wanted)} exist"
            )
    ordered = order_sessions(sessions, baseline_session, followup_session)
    collected = tuple(collect_session(layout, subject, ses, bids_filters) for ses in ordered)
    if len(collected) == 1:
        LOGGER.warning(
            "sub-%s: only session %s; processed, and flagged for the group stage",
            subject,
            collected[0].session,
        )
    return ParticipantInputs(subject=subject, sessions=collected)


# ----------------------------------------------------------------------------------- outputs
def derivative_name(suffix: str, extension: str, **entities: str | None) -> str:
    """A BIDS file name from entities (in spec order), a suffix and an extension.

    Use `from_`/`to` for transforms (``from`` is a Python keyword).
    """
    entities = {key.rstrip("_"): value for key, value in entities.items() if value}
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}")
    parts = [f"{key}-{entities[key]}" for key in ENTITY_ORDER if key in entities]
    if not extension.startswith("."):
        extension = "." + extension
    return "_".join(parts + [suffix]) + extension


def derivative_path(
    output_dir: str | Path, datatype: str | None, suffix: str, extension: str, **entities
) -> Path:
    """Absolute path of a derivative: OUTPUT_DIR/sub-X[/ses-Y][/datatype]/name."""
    folder = Path(output_dir) / f"sub-{entities['sub']}"
    if entities.get("ses"):
        folder = folder / f"ses-{entities['ses']}"
    if datatype:
        folder = folder / datatype
    return folder / derivative_name(suffix, extension, **entities)


def bids_uri(output_dir: str | Path, path: str | Path) -> str:
    """A BIDS URI ('bids::<relative path>') for a file inside this derivative dataset."""
    return "bids::" + Path(path).relative_to(Path(output_dir)).as_posix()


def raw_uri(bids_dir: str | Path, path: str | Path) -> str:
    """A BIDS URI ('bids:raw:<relative path>') for a file of the input dataset."""
    return "bids:raw:" + Path(path).relative_to(Path(bids_dir)).as_posix()


def write_dataset_description(
    output_dir: str | Path, bids_dir: str | Path, container: dict | None = None
) -> Path:
    """dataset_description.json of the derivative dataset (DatasetType, GeneratedBy, links)."""
    generated_by = {
        "Name": APP_NAME,
        "Version": __version__,
        "Description": "DWI preprocessing, tensor fit and gray-matter ROI mean diffusivity",
        "CodeURL": "https://github.com/ketamine-dti/ketamine-dti",
    }
    if container:
        generated_by["Container"] = container
    description = {
        "Name": "ketamine-dti: regional gray-matter mean diffusivity",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [{"URL": Path(bids_dir).resolve().as_uri()}],
        "DatasetLinks": {"raw": Path(bids_dir).resolve().as_uri()},
        "HowToAcknowledge": "Cite the tools listed in logs/CITATION.md.",
    }
    path = Path(output_dir) / "dataset_description.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(description, indent=2) + "\n")
    return path


#: Set by the Dockerfile to the image's tag; kept when Apptainer/Singularity convert the image.
IMAGE_TAG_VARIABLE = "KETAMINE_DTI_IMAGE"


def container_info(environ: dict | None = None) -> dict | None:
    """``GeneratedBy.Container`` of the image we run in, or None outside one.

    The Dockerfile sets ``KETAMINE_DTI_IMAGE``; Apptainer and Singularity announce themselves
    with ``APPTAINER_CONTAINER`` / ``SINGULARITY_CONTAINER`` (the .sif path).
    """
    environ = os.environ if environ is None else environ
    tag = environ.get(IMAGE_TAG_VARIABLE)
    for variable, kind in (
        ("APPTAINER_CONTAINER", "apptainer"),
        ("SINGULARITY_CONTAINER", "singularity"),
    ):
        if environ.get(variable):
            info = {"Type": kind, "URI": Path(environ[variable]).resolve().as_uri()}
            return info | ({"Tag": tag} if tag else {})
    return {"Type": "docker", "Tag": tag} if tag else None


def write_readme(output_dir: str | Path, bids_dir: str | Path) -> Path:
    """README of the derivative dataset: what it is and where the rest is documented."""
    path = Path(output_dir) / "README"
    path.write_text(
        f"Derivatives of {Path(bids_dir).resolve().as_uri()} written by {APP_NAME} "
        f"{__version__}.\n\n"
        "Per session: preprocessed DWI, tensor maps (BEP016 names), the gray-matter ROI table "
        "(desc-roi_md.tsv) and QC; per participant: the subject template, tissue maps, "
        "transforms and an HTML report (sub-<label>.html); group/: the ketamine-versus-saline "
        "analysis. Methods and references: logs/CITATION.md.\n"
    )
    return path


def init_derivatives(output_dir: str | Path, bids_dir: str | Path) -> None:
    """The dataset-level files of OUTPUT_DIR: description, README, .bidsignore."""
    write_dataset_description(output_dir, bids_dir, container=container_info())
    write_readme(output_dir, bids_dir)
    write_bidsignore(output_dir)


def write_bidsignore(output_dir: str | Path) -> Path:
    """.bidsignore listing what the BIDS schema does not cover yet."""
    path = Path(output_dir) / ".bidsignore"
    path.write_text("\n".join(BIDSIGNORE_PATTERNS) + "\n")
    return path
