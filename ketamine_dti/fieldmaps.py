"""Fieldmaps for susceptibility distortion correction (SDC): found the BIDS way, checked early.

For each DWI series, :func:`find_fieldmaps` decides how its susceptibility field can be
estimated and returns a :class:`FieldmapInputs` (the estimation and its application live
elsewhere). The sources, as BIDS defines them:

- ``pepolar``: EPI images phase-encoded (PE) in the opposite direction: ``fmap/*_epi`` images,
  or a second DWI series of the same session whose b=0 volumes serve as the reverse-PE image;
- ``fieldmap``: a GRE fieldmap, ``phasediff`` (+ ``magnitude1``/``magnitude2``, with
  ``EchoTime1``/``EchoTime2``) or ``fieldmap`` (+ ``magnitude``, with ``Units``);
- ``syn``: no fieldmap, a fieldmap-less estimate (SyN-SDC), only with ``--use-syn-sdc``;
- ``none``.

A fieldmap belongs to a DWI series when its ``IntendedFor`` names the series (a path relative
to the subject folder, or a ``bids::`` URI from the dataset root), or when the series'
``B0FieldSource`` equals its ``B0FieldIdentifier`` (which may also sit on another DWI series).
A second DWI series with the opposite PE direction needs no link.

Priority under ``--sdc auto``, decided once here: (1) linked EPI images, (2) a second DWI
series with the opposite PE direction, (3) a linked GRE fieldmap, (4) SyN-SDC if asked for,
(5) none. A reverse-PE pair comes first because it images the field through the DWI's own EPI
readout, so it needs no registration across contrasts; a GRE fieldmap does. A series linked to
both an EPI and a GRE fieldmap therefore uses the EPI (a note says so; ``--sdc fieldmap`` picks
the GRE). What no priority can settle is an error: two GRE fieldmaps for one series, one
``B0FieldIdentifier`` over EPI and GRE images, EPI images along different axes.

Only what would be used is checked (``--sdc none``: nothing). Every problem raises
``InputError("<file>: <what is wrong>; <what to do>")`` for that participant only.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib

from ketamine_dti import bids
from ketamine_dti.dwi.gradients import B0_THRESHOLD
from ketamine_dti.errors import InputError

LOGGER = logging.getLogger(__name__)

#: ``--sdc`` choices.
SDC_METHODS = ("auto", "pepolar", "fieldmap", "none")
#: Methods this version applies to the DWI (every method but "none"; "syn" also needs the
#: session's T1w brain, which the session workflow passes to the DWI workflow).
CORRECTED_METHODS = ("pepolar", "fieldmap", "syn")
#: BIDS PhaseEncodingDirection: the voxel axis (i, j, k), with '-' for the reversed direction.
PE_AXES = {"i": 0, "j": 1, "k": 2}
PE_DIRECTIONS = ("i", "i-", "j", "j-", "k", "k-")
#: s; no EPI readout lasts this long (they take 10-150 ms), nor any echo time: a larger
#: TotalReadoutTime, EffectiveEchoSpacing or EchoTime was written in milliseconds.
MAX_TIME_S = 1.0
#: Units a BIDS ``fieldmap`` image may hold (converted to Hz by the estimator).
FIELDMAP_UNITS = ("Hz", "rad/s", "T")
#: The echo times (s) of a phasediff's two phase images.
ECHO_TIME_KEYS = ("EchoTime1", "EchoTime2")
#: GRE fieldmap suffix -> its magnitude images (the first is required).
GRE_MAGNITUDES = {"phasediff": ("magnitude1", "magnitude2"), "fieldmap": ("magnitude",)}
EPI_SUFFIXES = ("epi", "dwi")  # a DWI series images the field through its b=0 volumes
#: What ``--sdc pepolar`` / ``--sdc fieldmap`` require of every DWI series.
REQUIRED = {
    "pepolar": "reverse phase-encoding image (fmap/*_epi, or a DWI series with the opposite "
    "PhaseEncodingDirection)",
    "fieldmap": "GRE fieldmap (phasediff or fieldmap)",
}
#: ``--sdc`` -> the fmap/ suffixes it may use.
FMAP_SUFFIXES = {
    "auto": ("epi", *GRE_MAGNITUDES),
    "pepolar": ("epi",),
    "fieldmap": tuple(GRE_MAGNITUDES),
}


# ----------------------------------------------------------------------------- values
@dataclass(frozen=True)
class PhaseEncoding:
    """How an EPI image was read out: with the field (Hz) it gives the displacement.

    ``direction`` is BIDS ``PhaseEncodingDirection`` (i, j or k, '-' when reversed);
    ``total_readout_time`` (s) is BIDS ``TotalReadoutTime``: a field of 1 Hz displaces a voxel
    by ``total_readout_time`` voxels along the PE axis.
    """

    direction: str
    total_readout_time: float

    @property
    def axis(self) -> int:
        """The voxel axis (0, 1, 2) of the phase encoding."""
        return PE_AXES[self.direction[0]]

    @property
    def sign(self) -> int:
        """+1 along the axis, -1 when reversed ('j-')."""
        return -1 if self.direction.endswith("-") else 1

    def opposes(self, other: PhaseEncoding) -> bool:
        """Same axis, opposite direction: the pair a blip-up/blip-down estimate needs."""
        return self.axis == other.axis and self.sign != other.sign


@dataclass(frozen=True)
class EpiImage:
    """An EPI image of the field: a ``fmap/*_epi`` image, or a DWI series (``bval`` set: its
    b=0 volumes, b <= the b0 threshold, are the image)."""

    path: str
    phase_encoding: PhaseEncoding
    bval: str = ""


@dataclass(frozen=True)
class GreFieldmap:
    """A GRE fieldmap: ``phasediff`` (rad, with ``echo_times`` = (EchoTime1, EchoTime2) in s)
    or ``fieldmap`` (in ``units``: Hz, rad/s or T), with its magnitude image(s)."""

    kind: str
    path: str
    magnitudes: tuple[str, ...]
    echo_times: tuple[float, float] | None = None
    units: str = ""


@dataclass(frozen=True)
class FieldmapInputs:
    """How the susceptibility field of one DWI series will be estimated.

    ``method``: "pepolar" (``epi`` holds every EPI image of the field, at least one
    phase-encoded opposite to the DWI), "fieldmap" (``gre``), "syn" (fieldmap-less) or "none".
    ``phase_encoding`` is the DWI's (None with "none").
    """

    dwi: str
    method: str
    phase_encoding: PhaseEncoding | None = None
    epi: tuple[EpiImage, ...] = ()
    gre: GreFieldmap | None = None

    @property
    def reverse_pe(self) -> tuple[EpiImage, ...]:
        """The EPI images phase-encoded opposite to the DWI."""
        pe = self.phase_encoding
        return tuple(e for e in self.epi if pe is not None and e.phase_encoding.opposes(pe))

    def describe(self) -> str:
        """One line for the log: the method and the files it uses."""
        name = Path(self.dwi).name
        if self.phase_encoding is not None:
            name += f" ({_readout(self.phase_encoding)})"
        if self.method == "pepolar":
            images = ", ".join(
                f"{Path(e.path).name} ({_readout(e.phase_encoding)}"
                f"{', its b=0 volumes' if e.bval else ''})"
                for e in self.epi
            )
            return f"{name}: pepolar with {images}"
        if self.method == "fieldmap" and self.gre is not None:
            return f"{name}: fieldmap from {self.gre.kind} {Path(self.gre.path).name}"
        if self.method == "syn":
            return f"{name}: syn (fieldmap-less, --use-syn-sdc)"
        return f"{name}: none"


def _readout(pe: PhaseEncoding) -> str:
    return f"PE {pe.direction}, readout {pe.total_readout_time * 1000:.1f} ms"


# -------------------------------------------------------------------------- metadata
def _seconds(path: str, metadata: dict, key: str) -> float:
    """A positive time in seconds from a sidecar (InputError naming the file and the key)."""
    value = metadata[key]
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is None or not math.isfinite(number) or number <= 0:
        raise InputError(
            f"{path}: {key} {value!r} in the JSON sidecar is not a positive number of seconds; "
            "fix the sidecar"
        )
    if number >= MAX_TIME_S:
        raise InputError(
            f"{path}: {key} {value!r} in the JSON sidecar is over {MAX_TIME_S:g} s, likely "
            "milliseconds; BIDS times are in seconds"
        )
    return float(number)


def total_readout_time(path: str, metadata: dict, axis: int) -> float:
    """BIDS ``TotalReadoutTime`` (s), else ``EffectiveEchoSpacing`` x (N - 1), N the
    reconstructed matrix size along the PE ``axis`` (from the NIfTI header), as BIDS defines it.
    """
    if "TotalReadoutTime" in metadata:
        return _seconds(path, metadata, "TotalReadoutTime")
    if "EffectiveEchoSpacing" in metadata:
        spacing = _seconds(path, metadata, "EffectiveEchoSpacing")
        return spacing * (nib.load(path).shape[axis] - 1)
    raise InputError(
        f"{path}: neither TotalReadoutTime nor EffectiveEchoSpacing in the JSON sidecar; "
        "distortion correction needs one: add TotalReadoutTime (s; dcm2niix writes it), "
        "or pass --sdc none"
    )


def read_phase_encoding(path: str, metadata: dict) -> PhaseEncoding:
    """The PE direction and total readout time of an EPI image (InputError if missing)."""
    direction = metadata.get("PhaseEncodingDirection")
    if direction is None:
        raise InputError(
            f"{path}: no PhaseEncodingDirection in the JSON sidecar; distortion correction "
            "needs it (i, j or k, '-' when reversed; dcm2niix writes it), or pass --sdc none"
        )
    if direction not in PE_DIRECTIONS:
        raise InputError(
            f"{path}: PhaseEncodingDirection {direction!r} in the JSON sidecar is not one of "
            f"{', '.join(PE_DIRECTIONS)}; fix the sidecar"
        )
    return PhaseEncoding(direction, total_readout_time(path, metadata, PE_AXES[direction[0]]))


def _identifiers(value) -> set[str]:
    """B0FieldIdentifier / B0FieldSource: a string or a list of strings."""
    if value is None:
        return set()
    return {value} if isinstance(value, str) else {str(v) for v in value}


# --------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class _Source:
    """A file of the session that may image the field, with its sidecar and links."""

    path: str
    suffix: str  # epi, phasediff, fieldmap or dwi
    metadata: dict
    intended_for: tuple[str, ...]  # resolved, normalised paths

    @property
    def identifiers(self) -> set[str]:
        return _identifiers(self.metadata.get("B0FieldIdentifier"))

    @property
    def kind(self) -> str:
        return "pepolar" if self.suffix in EPI_SUFFIXES else "fieldmap"


def _normal(path: str | Path) -> str:
    return os.path.realpath(path)


def _resolve_intended_for(path: str, metadata: dict, root: Path, subject: str, notes: list):
    """IntendedFor entries as absolute paths; a missing DWI target is an error, a missing
    other target (e.g. a bold run left out of a shared dataset) only a note."""
    value = metadata.get("IntendedFor", [])
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise InputError(f"{path}: IntendedFor in the JSON sidecar must be a path or a list")
    resolved = []
    for entry in entries:
        if entry.startswith("bids::"):
            target = root / entry[len("bids::") :]
        elif entry.startswith("bids:"):
            notes.append(f"{path}: IntendedFor {entry!r} names another dataset; ignored")
            continue
        else:
            target = root / f"sub-{subject}" / entry
        if not target.exists():
            if target.name.split(".")[0].endswith("_dwi"):
                raise InputError(
                    f"{path}: IntendedFor {entry!r} in the JSON sidecar names {target}, which "
                    f"does not exist; fix the path (relative to sub-{subject}/, or a bids:: URI "
                    "from the dataset root)"
                )
            notes.append(f"{path}: IntendedFor {entry!r} does not exist; ignored")
            continue
        resolved.append(_normal(target))
    return tuple(resolved)


def _session_sources(layout, session, sdc: str, filters: dict, notes: list) -> list[_Source]:
    """The session's fmap/ images of the kinds ``sdc`` may use, and its DWI series.

    Sidecars of fmap images ``sdc`` would not use are read only for their links, leniently.
    """
    root = Path(layout.root)
    fmaps = layout.get(
        subject=session.subject, session=session.session, datatype="fmap",
        suffix=list(FMAP_SUFFIXES["auto"]), extension=bids.NIFTI_EXTENSIONS,
        return_type="filename", **filters.get("fmap", {}),
    )  # fmt: skip
    dwis = bids._query(layout, session.subject, session.session, "dwi", "dwi", filters)
    sources = []
    for path in sorted(fmaps) + dwis:
        suffix = Path(path).name.split(".")[0].split("_")[-1]
        used = suffix == "dwi" or suffix in FMAP_SUFFIXES[sdc]
        try:
            metadata = bids.read_sidecar(path, root)
            links = () if suffix == "dwi" else _resolve_intended_for(
                path, metadata, root, session.subject, notes
            )  # fmt: skip
        except InputError:
            if used:
                raise
            continue
        sources.append(_Source(path, suffix, metadata, links))
    return sources


def _linked(dwi: str, metadata: dict, sources: list[_Source]) -> list[_Source]:
    """The sources linked to a DWI series by IntendedFor or B0FieldSource/B0FieldIdentifier."""
    wanted = _identifiers(metadata.get("B0FieldSource"))
    unknown = sorted(wanted - set().union(*(s.identifiers for s in sources)))
    if unknown:
        raise InputError(
            f"{dwi}: B0FieldSource {unknown[0]!r} in the JSON sidecar matches no "
            "B0FieldIdentifier of this session's fmap/ or dwi/ files; fix the identifier, or "
            "pass --sdc none"
        )
    for identifier in sorted(wanted):
        kinds = {s.kind for s in sources if identifier in s.identifiers}
        if len(kinds) > 1:
            raise InputError(
                f"{dwi}: B0FieldIdentifier {identifier!r} groups EPI and GRE fieldmaps; one "
                "identifier names one field estimate: give them different identifiers"
            )
    target = _normal(dwi)
    return [
        s for s in sources
        if _normal(s.path) != target and (target in s.intended_for or s.identifiers & wanted)
    ]  # fmt: skip


# ---------------------------------------------------------------------------- checks
def _epi_images(
    dwi: str, dwi_pe: PhaseEncoding, linked: list[_Source], session, layout, b0_threshold: float
) -> tuple[EpiImage, ...]:
    """Checked EPI images of a pepolar estimate: same axis as the DWI, one at least reversed."""
    runs = {_normal(run) for run, _, _ in session.dwi_runs}
    images = []
    for source in linked:
        bval = ""
        if source.suffix == "dwi":
            bval = bids._sidecar(layout, source.path, ".bval")
            if _normal(source.path) not in runs:  # not checked yet (--dwi-runs first)
                bvec = bids._sidecar(layout, source.path, ".bvec")
                bids.check_dwi(source.path, bval, bvec, b0_threshold)
        else:
            bids.load_nifti(source.path)
        pe = read_phase_encoding(source.path, source.metadata)
        if pe.axis != dwi_pe.axis:
            raise InputError(
                f"{source.path}: PhaseEncodingDirection {pe.direction} is along another axis than "
                f"the DWI's {dwi_pe.direction} ({Path(dwi).name}); a reverse-PE fieldmap must be "
                "encoded along the same axis, in the opposite direction"
            )
        images.append(EpiImage(source.path, pe, bval))
    if not any(image.phase_encoding.opposes(dwi_pe) for image in images):
        same = images[0]
        raise InputError(
            f"{same.path}: PhaseEncodingDirection {same.phase_encoding.direction} is the same "
            f"phase-encoding direction as the DWI ({Path(dwi).name}); it is distorted like the "
            "DWI and cannot estimate a field: a reverse-PE fieldmap needs "
            f"{_reversed(dwi_pe.direction)}; fix its sidecar if that is wrong, else unlink it "
            "(IntendedFor, B0FieldIdentifier) or pass --sdc none"
        )
    return tuple(images)


def _reversed(direction: str) -> str:
    return direction[:-1] if direction.endswith("-") else direction + "-"


def _gre_fieldmap(dwi: str, linked: list[_Source]) -> GreFieldmap:
    """The one GRE fieldmap linked to a series, checked (magnitude, echo times or units)."""
    if len(linked) > 1:
        names = ", ".join(Path(s.path).name for s in linked)
        raise InputError(
            f"{dwi}: {len(linked)} GRE fieldmaps are linked to it ({names}); which to use is "
            "ambiguous: link one (IntendedFor or B0FieldIdentifier)"
        )
    source = linked[0]
    bids.load_nifti(source.path)
    stem = source.path[: source.path.rindex(f"_{source.suffix}.")]
    magnitudes = []
    for position, suffix in enumerate(GRE_MAGNITUDES[source.suffix]):
        found = [f"{stem}_{suffix}{ext}" for ext in bids.NIFTI_EXTENSIONS]
        found = [path for path in found if Path(path).exists()]
        if not found and position == 0:
            raise InputError(
                f"{source.path}: no {Path(stem).name}_{suffix}.nii[.gz] beside it; a "
                f"{source.suffix} fieldmap needs its {suffix} image"
            )
        for path in found[:1]:
            bids.load_nifti(path)
            magnitudes.append(path)
    if source.suffix == "fieldmap":
        units = source.metadata.get("Units")
        if units not in FIELDMAP_UNITS:
            raise InputError(
                f"{source.path}: Units {units!r} in the JSON sidecar is not one of "
                f"{', '.join(FIELDMAP_UNITS)}; a fieldmap image needs its units"
            )
        return GreFieldmap("fieldmap", source.path, tuple(magnitudes), units=units)
    for key in ECHO_TIME_KEYS:
        if key not in source.metadata:
            raise InputError(
                f"{source.path}: no {key} in the JSON sidecar; a phasediff needs EchoTime1 and "
                "EchoTime2 (s) to give the field in Hz"
            )
    echo_times = tuple(_seconds(source.path, source.metadata, k) for k in ECHO_TIME_KEYS)
    if echo_times[0] == echo_times[1]:
        raise InputError(
            f"{source.path}: EchoTime1 equals EchoTime2 ({echo_times[0]} s) in the JSON sidecar; "
            "a phase difference needs two echo times"
        )
    return GreFieldmap("phasediff", source.path, tuple(magnitudes), echo_times=echo_times)


def _plan_series(
    dwi: str,
    session,
    layout,
    sources: list[_Source],
    sdc: str,
    use_syn_sdc: bool,
    b0_threshold: float,
    notes: list,
) -> FieldmapInputs:
    """The method for one DWI series and its checked inputs (the priority of the docstring)."""
    metadata = next(s.metadata for s in sources if _normal(s.path) == _normal(dwi))
    linked = _linked(dwi, metadata, sources)
    epi = [s for s in linked if s.kind == "pepolar"]
    gre = [s for s in linked if s.kind == "fieldmap"]
    if sdc in ("auto", "pepolar") and not epi:
        epi = _reverse_dwi_series(dwi, metadata, sources)
    if sdc in ("auto", "pepolar") and epi:
        if gre:
            notes.append(
                f"{dwi}: linked to EPI and GRE fieldmaps; using the EPI (pepolar comes first; "
                "--sdc fieldmap uses the GRE)"
            )
        pe = read_phase_encoding(dwi, metadata)
        images = _epi_images(dwi, pe, epi, session, layout, b0_threshold)
        return FieldmapInputs(dwi, "pepolar", pe, images)
    if sdc in ("auto", "fieldmap") and gre:
        fieldmap = _gre_fieldmap(dwi, gre)
        return FieldmapInputs(dwi, "fieldmap", read_phase_encoding(dwi, metadata), gre=fieldmap)
    if sdc != "auto":
        raise InputError(
            f"{dwi}: --sdc {sdc} but no {REQUIRED[sdc]} is found for it (fmap/ images are "
            "linked by IntendedFor or B0FieldSource); add one, or pass --sdc auto or none"
        )
    if use_syn_sdc:
        return FieldmapInputs(dwi, "syn", read_phase_encoding(dwi, metadata))
    return FieldmapInputs(dwi, "none")


def _reverse_dwi_series(dwi: str, metadata: dict, sources: list[_Source]) -> list[_Source]:
    """Other DWI series of the session phase-encoded opposite to this one (no link needed)."""
    direction = metadata.get("PhaseEncodingDirection")
    if direction not in PE_DIRECTIONS:
        return []
    return [
        s for s in sources
        if s.suffix == "dwi" and _normal(s.path) != _normal(dwi)
        and s.metadata.get("PhaseEncodingDirection") == _reversed(direction)
    ]  # fmt: skip


# ------------------------------------------------------------------------------ entry
def _each(items, check) -> list:
    """``check(item)`` for every item; the InputErrors of all of them gathered into one."""
    results, errors = [], []
    for item in items:
        try:
            results.append(check(item))
        except InputError as exc:
            errors.append(str(exc))
    if errors:
        raise InputError("; ".join(errors))
    return results


def find_fieldmaps(
    layout,
    session: bids.SessionInputs,
    sdc: str = "auto",
    use_syn_sdc: bool = False,
    bids_filters: dict | None = None,
    b0_threshold: float = B0_THRESHOLD,
    notes: list | None = None,
) -> tuple[FieldmapInputs, ...]:
    """One checked :class:`FieldmapInputs` per DWI run of a checked session, in run order.

    ``sdc``: one of :data:`SDC_METHODS`; ``use_syn_sdc``: the fieldmap-less fallback of
    ``auto``. The problems of every run are gathered into one InputError.
    """
    if sdc not in SDC_METHODS:
        raise ValueError(f"sdc must be one of {SDC_METHODS}, not {sdc!r}")
    runs = [dwi for dwi, _, _ in session.dwi_runs]
    if sdc == "none":
        return tuple(FieldmapInputs(dwi, "none") for dwi in runs)
    notes = notes if notes is not None else []
    sources = _session_sources(layout, session, sdc, bids_filters or {}, notes)
    return tuple(_each(runs, lambda dwi: _plan_series(
        dwi, session, layout, sources, sdc, use_syn_sdc, b0_threshold, notes
    )))  # fmt: skip


def attach_fieldmaps(layout, participant: bids.ParticipantInputs, **options):
    """The participant with every session's ``fieldmaps`` found and checked
    (:func:`find_fieldmaps`, given ``options``); all sessions' problems in one InputError."""
    sessions = _each(participant.sessions, lambda session: replace(
        session, fieldmaps=find_fieldmaps(layout, session, **options)
    ))  # fmt: skip
    return replace(participant, sessions=tuple(sessions))


def session_plan(session: bids.SessionInputs) -> FieldmapInputs | None:
    """The distortion correction of a session's (combined) series: its run's plan, or the
    common plan of runs read out alike (None: not looked for). Runs of different phase
    encoding or plans are combined uncorrected (one field and one readout per series), with a
    warning."""
    plans = session.fieldmaps or ()
    if not plans:
        return None
    first = plans[0]
    if any(p.method != first.method or p.phase_encoding != first.phase_encoding for p in plans):
        LOGGER.warning(
            "sub-%s ses-%s: the combined DWI runs differ in phase encoding or fieldmap; "
            "susceptibility distortion is not corrected (use --dwi-runs first, or one run)",
            session.subject, session.session,
        )  # fmt: skip
        return None
    return first


def corrects(plan: FieldmapInputs | None) -> bool:
    """Whether the App corrects the DWI with this plan (``CORRECTED_METHODS``)."""
    return plan is not None and plan.method in CORRECTED_METHODS
