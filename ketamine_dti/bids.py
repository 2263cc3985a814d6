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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from ketamine_dti import __version__
from ketamine_dti.dwi.gradients import (
    B0_THRESHOLD,
    GradientTable,
    check_gradient_table,
    read_bvals,
    read_bvecs,
    require_tensor_fit,
)
from ketamine_dti.errors import InputError

if TYPE_CHECKING:
    from ketamine_dti.fieldmaps import FieldmapInputs

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
#: Hidden folder of OUTPUT_DIR where a participant's derivatives are written while it runs;
#: they move into place only when the whole participant succeeded.
STAGING_FOLDER = ".ketamine-dti-staging"


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
    STAGING_FOLDER,
)


# ------------------------------------------------------------------------------------ inputs
#: What to do with several DWI runs in one session (``--dwi-runs``).
DWI_RUN_MODES = ("combine", "first", "error")


@dataclass(frozen=True)
class SessionInputs:
    """Raw files of one session, already checked.

    ``dwi``/``bval``/``bvec`` are the first (or only) run; ``extra_runs`` holds the further
    runs' (dwi, bval, bvec) when runs are combined. ``t1w`` may be another session's image
    when this session has none. ``fieldmaps``: one per run, in run order, found by
    ``fieldmaps.attach_fieldmaps`` (None: not looked for).
    """

    subject: str
    session: str
    dwi: str
    bval: str
    bvec: str
    t1w: str
    dwi_metadata: dict = field(default_factory=dict)
    extra_runs: tuple[tuple[str, str, str], ...] = ()
    fieldmaps: tuple[FieldmapInputs, ...] | None = None

    @property
    def dwi_runs(self) -> tuple[tuple[str, str, str], ...]:
        """Every run to preprocess, (dwi, bval, bvec), in run order."""
        return ((self.dwi, self.bval, self.bvec), *self.extra_runs)


@dataclass(frozen=True)
class ParticipantInputs:
    """A participant's sessions, baseline first; a single session is flagged downstream."""

    subject: str
    sessions: tuple[SessionInputs, ...]

    @property
    def single_session(self) -> bool:
        return len(self.sessions) == 1


def get_layout(bids_dir: str | Path):
    """An in-memory pybids layout of file names only (nothing is written into BIDS_DIR).

    JSON sidecars are not indexed by pybids (one unparseable sidecar would make it raise for
    every participant); :func:`read_sidecar` reads the ones a participant needs.
    """
    from bids import BIDSLayout, BIDSLayoutIndexer

    try:
        return BIDSLayout(
            str(bids_dir),
            validate=False,
            derivatives=False,
            indexer=BIDSLayoutIndexer(validate=False, index_metadata=False),
        )
    except Exception as exc:  # pybids raises many types on broken datasets
        raise InputError(
            f"{bids_dir}: cannot index the dataset ({type(exc).__name__}: {exc}); "
            "check dataset_description.json"
        ) from exc


def strip_prefix(label: str, prefix: str) -> str:
    """'sub-01' -> '01' (labels may be given either way)."""
    return label[len(prefix) :] if label.startswith(prefix) else label


def participant_folders(bids_dir: str | Path) -> list[str]:
    """Labels of the ``sub-*`` folders that hold any file, sorted (empty folders are not
    participants: selecting one by label is 'not found', exit code 18)."""
    return sorted(
        p.name[len("sub-") :]
        for p in Path(bids_dir).glob("sub-*")
        if p.is_dir() and any(child.is_file() for child in p.rglob("*"))
    )


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


def select_sessions(
    available: Sequence[str],
    baseline_session: str,
    followup_session: str,
    session_labels: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """The analysed pair (baseline first) among ``available``, and the sessions ignored.

    ``session_labels`` (``--session-label``) may narrow the pair to one session.
    """
    pair = [baseline_session, followup_session]
    if session_labels:
        wanted = {strip_prefix(label, "ses-") for label in session_labels}
        pair = [ses for ses in pair if ses in wanted]
    selected = [ses for ses in pair if ses in available]
    return selected, sorted(ses for ses in available if ses not in selected)


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


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """Load a NIfTI fully (so truncated gzip streams show), or InputError naming the file."""
    if Path(path).stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes); re-export the image")
    try:
        image = nib.load(str(path))
        image.get_fdata(dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(
            f"{path}: unreadable or truncated NIfTI ({type(exc).__name__}: {exc}); "
            "re-export the image"
        ) from exc
    return image


def _entities(name: str) -> set[str]:
    """The key-value entities of a BIDS file name, e.g. {'sub-01', 'ses-24h'}."""
    return {part for part in name.split(".")[0].split("_")[:-1] if "-" in part}


def read_sidecar(path: str | Path, root: str | Path) -> dict:
    """The JSON metadata of a data file, by the BIDS inheritance principle, read here.

    Sidecars from the dataset root down to the file's folder whose entities are a subset of
    the file's and whose suffix is the same are merged, nearest last. An unparseable sidecar
    raises InputError naming it.
    """
    path, root = Path(path), Path(root)
    stem = path.name.split(".")[0]
    suffix, entities = stem.split("_")[-1], _entities(path.name)
    metadata: dict = {}
    folders = [root, *reversed([p for p in path.parents if root in p.parents])]
    for folder in folders:
        for candidate in sorted(folder.glob(f"*{suffix}.json")):
            if candidate.name.split(".")[0].split("_")[-1] != suffix:
                continue
            if not _entities(candidate.name) <= entities:
                continue
            try:
                content = json.loads(candidate.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(f"{candidate}: unreadable JSON sidecar ({exc}); fix it") from exc
            if not isinstance(content, dict):
                raise InputError(f"{candidate}: a JSON sidecar must hold an object")
            metadata.update(content)
    return metadata


def check_dwi(
    dwi: str, bval: str, bvec: str, b0_threshold: float = B0_THRESHOLD, notes: list | None = None
) -> GradientTable:
    """Check a DWI series and its gradient table; return the table of the usable volumes.

    NaN/Inf voxels (zeroed later) and all-zero volumes (excluded later) are noted, not errors;
    the volumes left must still hold a b0 and determine a tensor.
    """
    from ketamine_dti.dwi.conditioning import zero_volumes

    image = load_nifti(dwi)
    if image.ndim != 4:
        raise InputError(
            f"{dwi}: DWI is {image.ndim}-D; a 4-D series (one volume per gradient) is needed"
        )
    data = image.get_fdata(dtype=np.float32)  # cached by load_nifti: not decompressed twice
    gtab = check_gradient_table(
        read_bvals(bval), read_bvecs(bvec), image.shape[3], bval_file=bval, bvec_file=bvec,
        b0_threshold=b0_threshold,
    )  # fmt: skip
    notes = notes if notes is not None else []
    n_bad = int(np.count_nonzero(~np.isfinite(data).all(axis=3)))
    if n_bad:
        notes.append(f"{dwi}: {n_bad} voxels hold NaN/Inf; they are zeroed and masked")
    empty = zero_volumes(data)
    if empty.any():
        notes.append(f"{dwi}: volumes {np.flatnonzero(empty).tolist()} are all zero; excluded")
        gtab = check_gradient_table(
            gtab.bvals[~empty], gtab.bvecs[~empty], int((~empty).sum()), bval_file=bval,
            bvec_file=bvec, b0_threshold=b0_threshold,
        )  # fmt: skip
    require_tensor_fit(gtab, bvec)
    return gtab


def check_t1w(path: str, notes: list | None = None) -> None:
    """A T1w must be 3-D, or 4-D with one volume (squeezed later)."""
    image = load_nifti(path)
    if image.ndim == 4 and image.shape[3] == 1:
        if notes is not None:
            notes.append(f"{path}: 4-D with a single volume; squeezed to 3-D")
    elif image.ndim != 3:
        raise InputError(f"{path}: T1w is {image.ndim}-D {image.shape}; a 3-D image is needed")


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


def _select_runs(dwis: list[str], where: str, dwi_runs: str, notes: list) -> list[str]:
    """The DWI runs of a session that ``--dwi-runs`` keeps."""
    if len(dwis) > 1 and dwi_runs == "error":
        raise InputError(
            f"{where}/dwi: {len(dwis)} DWI series ({', '.join(Path(d).name for d in dwis)}); "
            "pass --dwi-runs combine or first, or select one with --bids-filter-file"
        )
    if len(dwis) > 1 and dwi_runs == "first":
        notes.append(f"{where}/dwi: {len(dwis)} DWI series; using {Path(dwis[0]).name}")
        return dwis[:1]
    return dwis


def _check_same_grid(runs: list[str]) -> None:
    """Runs are combined volume by volume, so they must share the voxel grid."""
    reference = nib.load(runs[0])
    for run in runs[1:]:
        image = nib.load(run)
        same = image.shape[:3] == reference.shape[:3] and np.allclose(
            image.affine, reference.affine, atol=1e-3
        )
        if not same:
            raise InputError(
                f"{run}: grid {image.shape[:3]} differs from {Path(runs[0]).name} "
                f"{reference.shape[:3]}; runs can only be combined on one grid "
                "(pass --dwi-runs first)"
            )


def collect_session(
    layout,
    subject: str,
    session: str,
    bids_filters: dict | None = None,
    dwi_runs: str = "combine",
    b0_threshold: float = B0_THRESHOLD,
    notes: list | None = None,
) -> SessionInputs:
    """Find and check one session's DWI run(s) (+ bval/bvec/json) and T1w.

    A session without a T1w gets ``t1w=""`` (the participant fills in another session's).
    """
    filters = bids_filters or {}
    notes = notes if notes is not None else []
    where = f"{layout.root}/sub-{subject}/ses-{session}"
    dwis = _query(layout, subject, session, "dwi", "dwi", filters)
    if not dwis:
        raise InputError(f"{where}/dwi: no DWI series found; add one or drop this session")
    dwis = _select_runs(dwis, where, dwi_runs, notes)
    runs = []
    for dwi in dwis:
        bval, bvec = _sidecar(layout, dwi, ".bval"), _sidecar(layout, dwi, ".bvec")
        check_dwi(dwi, bval, bvec, b0_threshold, notes)
        runs.append((dwi, bval, bvec))
    _check_same_grid(dwis)
    metadata = read_sidecar(dwis[0], layout.root)
    if "PhaseEncodingDirection" not in metadata:
        notes.append(
            f"{dwis[0]}: no PhaseEncodingDirection in the JSON sidecar; eddy-current "
            "correction cannot single out the phase-encode axis"
        )
    t1ws = _query(layout, subject, session, "anat", "T1w", filters)
    if len(t1ws) > 1:
        notes.append(f"{where}/anat: {len(t1ws)} T1w images; using {Path(t1ws[0]).name}")
    if t1ws:
        check_t1w(t1ws[0], notes)
    dwi, bval, bvec = runs[0]
    return SessionInputs(
        subject=subject, session=session, dwi=dwi, bval=bval, bvec=bvec,
        t1w=t1ws[0] if t1ws else "", dwi_metadata=metadata, extra_runs=tuple(runs[1:]),
    )  # fmt: skip


def collect_participant(
    layout,
    subject: str,
    session_labels: tuple[str, ...] = (),
    baseline_session: str = "baseline",
    followup_session: str = "24h",
    bids_filters: dict | None = None,
    dwi_runs: str = "combine",
    b0_threshold: float = B0_THRESHOLD,
    notes: list | None = None,
) -> ParticipantInputs:
    """The analysed sessions of a participant, checked, baseline first.

    Sessions other than the baseline/follow-up pair are ignored (noted). Every session's
    problems are gathered into one InputError; a session without a T1w uses the other's.
    """
    notes = notes if notes is not None else []
    root = f"{layout.root}/sub-{subject}"
    available = layout.get_sessions(subject=subject)
    selected, ignored = select_sessions(
        available, baseline_session, followup_session, session_labels
    )
    if not selected:
        found = ", ".join(f"ses-{ses}" for ses in sorted(available)) or "no ses-* folder"
        raise InputError(
            f"{root}: found {found}; the analysed pair is ses-{baseline_session} and "
            f"ses-{followup_session}; name yours with --sessions BASELINE FOLLOWUP"
        )
    if ignored:
        notes.append(f"{root}: sessions {', '.join(ignored)} ignored (not the analysed pair)")
    collected, errors = [], []
    for ses in selected:
        try:
            collected.append(collect_session(
                layout, subject, ses, bids_filters, dwi_runs, b0_threshold, notes
            ))  # fmt: skip
        except InputError as exc:
            errors.append(str(exc))
    if errors:
        raise InputError("; ".join(errors))
    collected = _share_t1w(collected, root, notes)
    if len(collected) == 1:
        notes.append(f"{root}: only ses-{collected[0].session}; flagged for the group stage")
    return ParticipantInputs(subject=subject, sessions=tuple(collected))


def _share_t1w(sessions: list[SessionInputs], root: str, notes: list) -> list[SessionInputs]:
    """A session without a T1w uses the first session's that has one; none at all: error."""
    available = [s.t1w for s in sessions if s.t1w]
    if not available:
        raise InputError(
            f"{root}: no T1w image in any analysed session; add an anat/*_T1w.nii.gz "
            "(the ROIs are placed through it)"
        )
    shared = []
    for session in sessions:
        if not session.t1w:
            notes.append(f"{root}/ses-{session.session}: no T1w; using {Path(available[0]).name}")
            session = replace(session, t1w=available[0])
        shared.append(session)
    return shared


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


def staging_root(output_dir: str | Path) -> Path:
    """Where the sinks write: OUTPUT_DIR/.ketamine-dti-staging (same file system)."""
    return Path(output_dir) / STAGING_FOLDER


def atomic_write_bytes(path: str | Path, content: bytes) -> Path:
    """Write under a temporary name in the same folder, then rename: readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def discard_staged(output_dir: str | Path, subject: str) -> None:
    """Remove what an earlier, interrupted run of this participant left in staging."""
    import shutil

    shutil.rmtree(staging_root(output_dir) / f"sub-{subject}", ignore_errors=True)


def promote_staged(output_dir: str | Path, subject: str, keep: tuple[str, ...] = ("log",)) -> Path:
    """Move a finished participant's staged derivatives into OUTPUT_DIR/sub-<label>.

    Folder renames only: at any instant sub-<label> holds either the previous complete
    outputs, nothing but ``keep`` (crash files and the log), or the new complete outputs.
    """
    import shutil

    staged = staging_root(output_dir) / f"sub-{subject}"
    final = Path(output_dir) / f"sub-{subject}"
    for name in keep:  # the run's log and crash files go with the new outputs
        if (final / name).exists() and not (staged / name).exists():
            os.replace(final / name, staged / name)
    previous = staging_root(output_dir) / f"sub-{subject}.previous"
    shutil.rmtree(previous, ignore_errors=True)
    if final.exists():
        os.replace(final, previous)
    os.replace(staged, final)
    shutil.rmtree(previous, ignore_errors=True)
    if staging_root(output_dir).exists() and not any(staging_root(output_dir).iterdir()):
        staging_root(output_dir).rmdir()
    return final


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
    return atomic_write_text(
        Path(output_dir) / "dataset_description.json", json.dumps(description, indent=2) + "\n"
    )


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
    return atomic_write_text(
        Path(output_dir) / "README",
        f"Derivatives of {Path(bids_dir).resolve().as_uri()} written by {APP_NAME} "
        f"{__version__}.\n\n"
        "Per session: preprocessed DWI, tensor maps (BEP016 names), the gray-matter ROI table "
        "(desc-roi_md.tsv) and QC; per participant: the subject template, tissue maps, "
        "transforms and an HTML report (sub-<label>.html); group/: the ketamine-versus-saline "
        "analysis. Methods and references: logs/CITATION.md.\n",
    )


def init_derivatives(output_dir: str | Path, bids_dir: str | Path) -> None:
    """The dataset-level files of OUTPUT_DIR: description, README, .bidsignore."""
    write_dataset_description(output_dir, bids_dir, container=container_info())
    write_readme(output_dir, bids_dir)
    write_bidsignore(output_dir)


def write_bidsignore(output_dir: str | Path) -> Path:
    """.bidsignore listing what the BIDS schema does not cover yet."""
    return atomic_write_text(
        Path(output_dir) / ".bidsignore", "\n".join(BIDSIGNORE_PATTERNS) + "\n"
    )
