"""Checks before any processing: every selected participant, one summary of every problem.

Everything that headers, JSON sidecars and gradient tables can tell is checked here, for all
participants, before the first node runs: a bad file costs seconds, not a half-finished run.
One participant's bad file never stops another; dataset-level oddities are warnings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ketamine_dti import bids, fieldmaps
from ketamine_dti.config import Config
from ketamine_dti.errors import InputError

LOGGER = logging.getLogger(__name__)


@dataclass
class Preflight:
    """What the checks found: the participants that may run, and every problem."""

    ready: dict[str, bids.ParticipantInputs] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # label -> every problem, joined
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable lines: one per failed participant, then the warnings."""
        lines = [f"input checks: {len(self.ready)} participant(s) ready, {len(self.errors)} not"]
        lines += [f"  sub-{label}: {problem}" for label, problem in sorted(self.errors.items())]
        lines += [f"  warning: {note}" for note in self.warnings]
        return "\n".join(lines)


def check_participants_tsv(bids_dir: Path) -> list[str]:
    """participants.tsv problems that would stop the group stage later (warnings here)."""
    path = Path(bids_dir) / "participants.tsv"
    if not path.exists():
        return [f"{path}: missing; the group stage needs participant_id and the arm column"]
    try:
        header = path.read_text().splitlines()[0] if path.stat().st_size else ""
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{path}: unreadable ({exc})"]
    if "\t" not in header and "," in header:
        return [f"{path}: comma-separated, not tab-separated; BIDS TSV files use tabs"]
    if "participant_id" not in header.split("\t"):
        return [f"{path}: no participant_id column in the header"]
    return []


def check_participant(config: Config, layout, subject: str, notes: list[str]):
    """One participant's inputs, checked, with the fieldmaps ``--sdc`` would use found and
    checked too (InputError lists its problems)."""
    participant = bids.collect_participant(
        layout,
        subject,
        session_labels=config.session_labels,
        baseline_session=config.baseline_session,
        followup_session=config.followup_session,
        bids_filters=config.bids_filters,
        dwi_runs=config.dwi_runs,
        b0_threshold=config.b0_threshold,
        notes=notes,
    )
    return fieldmaps.attach_fieldmaps(
        layout, participant, sdc=config.sdc, use_syn_sdc=config.use_syn_sdc,
        bids_filters=config.bids_filters, b0_threshold=config.b0_threshold, notes=notes,
    )  # fmt: skip


def log_sdc_plan(participant: bids.ParticipantInputs, sdc: str) -> None:
    """Which distortion correction each DWI series of each session would get, in the log."""
    for session in participant.sessions:
        for plan in session.fieldmaps or ():
            found = " (no fieldmap found)" if plan.method == "none" and sdc != "none" else ""
            pending = "; applied" if fieldmaps.corrects(plan) else ""
            LOGGER.info(
                "sub-%s ses-%s: distortion correction (--sdc %s): %s%s%s",
                participant.subject, session.session, sdc, plan.describe(), found, pending,
            )  # fmt: skip


def run_preflight(config: Config, subjects: list[str], layout=None) -> Preflight:
    """Check every selected participant; never raises for one participant's files."""
    result = Preflight(warnings=check_participants_tsv(config.bids_dir))
    layout = layout if layout is not None else bids.get_layout(config.bids_dir)
    for subject in subjects:
        notes: list[str] = []
        try:
            result.ready[subject] = check_participant(config, layout, subject, notes)
            log_sdc_plan(result.ready[subject], config.sdc)
        except InputError as exc:
            result.errors[subject] = str(exc)
        except Exception as exc:  # an unforeseen file problem is still this participant's
            result.errors[subject] = f"{type(exc).__name__}: {exc}"
        result.warnings += notes
    for line in result.summary().splitlines():
        if line.startswith("  sub-"):
            LOGGER.error(line.strip())
        elif line.startswith("  warning: "):
            LOGGER.warning(line.strip()[len("warning: ") :])
        else:
            LOGGER.info(line)
    return result
