"""Read and check the group level's inputs: participants, phenotype scores, ROI MD tables, QC.

The group level reads, from BIDS_DIR, ``participants.tsv`` and ``phenotype/<scale>.tsv``; from
OUTPUT_DIR, only each session's ROI table (its ``md_mean``, or ``md_fwcorr_mean`` with
``--md-measure md_fwcorr``) and QC table (its ``qc_verdict``, ``mean_fd`` when ``--max-mean-fd``
is set, and the columns ``--qc-covariates`` names), found through the derivatives
specification (``roi_table``, ``qc_table``). A participant with a failed session is excluded
(``--include-failed-qc`` keeps it), and an ROI the participant level reported missing is
excluded with its reason.
Participants are selected by ``bids.select_participants`` among those listed or with outputs;
every participant with outputs that is not analysed gets an exclusion row saying why. Bad
input raises :class:`InputError` naming file, line and column.
Missing values (``n/a``) are not errors: the participant leaves the affected models and the
reason is recorded as an exclusion.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ketamine_dti.bids import select_participants, strip_prefix
from ketamine_dti.config import DEFAULT_QC_COVARIATES, Config
from ketamine_dti.derivatives import find_outputs, spec_path
from ketamine_dti.errors import ArmTooSmallError, InputError
from ketamine_dti.qc import FAIL, VERDICTS, free_water_implausible
from ketamine_dti.rois import ROI_MISSING, ROI_NAMES

LOGGER = logging.getLogger(__name__)

#: BIDS spells a missing value "n/a"; an empty cell is read the same way.
MISSING_VALUES = frozenset({"n/a", ""})
#: Valid totals of the scales we know (inclusive); other scales take Minimum/Maximum from the
#: phenotype JSON data dictionary, else are only checked to be numbers.
KNOWN_SCORE_RANGES: dict[str, tuple[float, float]] = {"madrs": (0, 60), "qids_sr": (0, 27)}
#: Names the models use for their own variables; a covariate may not take them.
RESERVED_NAMES = frozenset(
    {"group", "delta_md", "delta_score", "baseline_score", "baseline_md", "md", "score"}
    | {"md_within", "md_between", "arm", "group_label"}
    | {"session", "participant_id", "roi", "Intercept"}
)
#: Fewest participants an arm may have: below 3 an arm's mean and spread (and its share of a
#: contrast side) rest on one or two people, which is almost always a mislabelled arm column.
MIN_ARM_SIZE = 3
#: Prefix of a QC covariate: ``delta_mean_fd`` is mean_fd at follow-up minus at baseline.
QC_COVARIATE_PREFIX = "delta_"
#: Exclusion reason of a participant with outputs but no row in participants.tsv.
NOT_LISTED = "has participant outputs but no row in participants.tsv"
#: Exclusion reason of a participant with outputs left out by --participant-label.
NOT_SELECTED = "has participant outputs but is not among the selected (--participant-label)"
#: Exclusion fields meaning "applies to all sessions / scales / ROIs / models".
ALL = "all"


@dataclass(frozen=True)
class Table:
    """A TSV read as strings: header and rows, plus the file it came from (for messages)."""

    path: Path
    header: list[str]
    rows: list[list[str]]

    def column(self, name: str) -> list[str]:
        index = self.header.index(name)
        return [row[index] for row in self.rows]

    def require(self, columns: Iterable[str], hint: str) -> None:
        for column in columns:
            if column not in self.header:
                raise InputError(
                    f"{self.path}: column {column!r} missing (columns: "
                    f"{', '.join(self.header)}); {hint}"
                )

    @staticmethod
    def line(row_index: int) -> int:
        """File line of a data row (the header is line 1)."""
        return row_index + 2


def read_tsv(path: Path) -> Table:
    """Read a small TSV as strings, checking that every row has as many cells as the header."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: unreadable ({err}); rewrite it as UTF-8 text") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InputError(f"{path}: empty file; a header row with column names is needed")
    header = [cell.strip() for cell in lines[0].split("\t")]
    rows = []
    for index, line in enumerate(lines[1:]):
        cells = [cell.strip() for cell in line.split("\t")]
        if len(cells) != len(header):
            raise InputError(
                f"{path}: line {Table.line(index)} has {len(cells)} cells, the header "
                f"{len(header)}; separate columns with one tab"
            )
        rows.append(cells)
    return Table(path, header, rows)


def parse_number(table: Table, row_index: int, column: str, value: str) -> float:
    """A cell as float; ``n/a`` gives NaN; anything else non-numeric is an InputError."""
    if value in MISSING_VALUES:
        return math.nan
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise InputError(
            f"{table.path}: line {table.line(row_index)}, column {column}: {value!r} is not a "
            "number; write a number or n/a"
        )
    return number


def _duplicates_error(table: Table, keys: list[tuple], what: str) -> None:
    """Raise on the first repeated key, naming both lines."""
    first_line: dict[tuple, int] = {}
    for index, key in enumerate(keys):
        if key in first_line:
            raise InputError(
                f"{table.path}: line {table.line(index)}, column {what}: duplicate row for "
                f"{' '.join(key)} (also line {first_line[key]}); keep one row"
            )
        first_line[key] = table.line(index)


@dataclass
class GroupInputs:
    """Everything the models need, checked; MD in mm^2/s, scores in points."""

    #: index participant_id; columns "arm" (participants.tsv label), "group" (the contrast side
    #: it belongs to), the covariates and the QC covariates (``delta_<column>``).
    participants: pd.DataFrame
    #: covariate name -> "numeric" or "categorical".
    covariate_kinds: dict[str, str]
    #: scale -> DataFrame indexed by participant_id with columns "baseline" and "followup".
    scores: dict[str, pd.DataFrame]
    #: index participant_id; columns MultiIndex (roi, "baseline"/"followup"); NaN = missing.
    md: pd.DataFrame
    rois: tuple[str, ...]
    #: dicts with participant_id, session_id, scale, roi, models, reason.
    exclusions: list[dict] = field(default_factory=list)
    #: exchangeability block per participant_id (``--exchangeability-column``), else None.
    blocks: pd.Series | None = None
    #: retest reliability of dMD per ROI (``--reliability``), else None.
    reliability: pd.Series | None = None


def exclusion(
    participant_id: str,
    reason: str,
    session_id: str = ALL,
    scale: str = ALL,
    roi: str = ALL,
    models: str = ALL,
) -> dict:
    """One row of exclusions.tsv."""
    return {
        "participant_id": participant_id,
        "session_id": session_id,
        "scale": scale,
        "roi": roi,
        "models": models,
        "reason": reason,
    }


def load_participants(
    config: Config, with_outputs: Iterable[str] = ()
) -> tuple[pd.DataFrame, dict[str, str], list[dict]]:
    """participants.tsv -> arm and covariates per selected participant, with exclusions.

    ``with_outputs``: participant_ids that have participant-level outputs; those not analysed
    (not selected, or not listed) get an exclusion row.
    """
    path = Path(config.bids_dir) / "participants.tsv"
    arm_column = config.arm_column
    if not path.is_file():
        raise InputError(
            f"{path}: not found; the group level needs participants.tsv with participant_id "
            f"and the arm column {arm_column!r} (--arm-column)"
        )
    table = read_tsv(path)
    table.require(["participant_id"], "add one row per participant")
    table.require([arm_column], "add the arm column or name it with --arm-column")
    for name in config.covariates:
        if name in RESERVED_NAMES or name in qc_covariate_names(config):
            raise InputError(
                f"--covariates {name}: the models use this name; rename the column in {path}"
            )
        table.require([name], "add the covariate column or drop it from --covariates")
    ids = table.column("participant_id")
    for index, pid in enumerate(ids):
        if not pid.startswith("sub-") or len(pid) <= len("sub-"):
            raise InputError(
                f"{path}: line {table.line(index)}, column participant_id: {pid!r} is not a "
                "BIDS participant_id; write sub-<label>"
            )
    _duplicates_error(table, [(pid,) for pid in ids], "participant_id")

    chosen, exclusions = _select(config, ids, with_outputs, path)
    selected = [i for i, pid in enumerate(ids) if pid in chosen]
    if not selected:
        raise InputError(
            f"{path}: none of the participant labels {', '.join(sorted(chosen))} is listed; "
            "check --participant-label"
        )
    arms = table.column(arm_column)
    sides = config.arm_sides
    bad = [i for i in selected if arms[i] not in sides and arms[i] not in MISSING_VALUES]
    if bad:
        found = sorted({arms[i] for i in selected if arms[i] not in MISSING_VALUES})
        raise InputError(
            f"{path}: line {table.line(bad[0])}, column {arm_column}: arm {arms[bad[0]]!r} is "
            f"not in the contrast ({_contrast_text(config)}); labels found: {', '.join(found)}; "
            "fix the value or map every label with --contrast"
        )
    exclusions += [
        exclusion(ids[i], f"no arm ({arm_column} is n/a) in participants.tsv")
        for i in selected
        if arms[i] in MISSING_VALUES
    ]
    selected = [i for i in selected if arms[i] not in MISSING_VALUES]
    present = sorted({sides[arms[i]] for i in selected})
    if len(present) < len(config.contrast):
        raise InputError(
            f"{path}: column {arm_column}: only {', '.join(present) or 'no'} arm present among "
            f"the selected participants; the analysis compares {config.treatment_arm!r} with "
            f"{config.control_arm!r}"
        )
    _check_arm_sizes(config, [arms[i] for i in selected], path)
    frame = pd.DataFrame(
        {"arm": [arms[i] for i in selected], "group": [sides[arms[i]] for i in selected]},
        index=pd.Index([ids[i] for i in selected]),
    )
    frame.index.name = "participant_id"
    kinds = _add_covariates(frame, table, selected, config.covariates, exclusions)
    return frame, kinds, exclusions


def _contrast_text(config: Config) -> str:
    """The contrast as --contrast spells it, for messages."""
    return " ".join(f"{side}={','.join(labels)}" for side, labels in config.contrast)


def _check_arm_sizes(config: Config, arms: list[str], path: Path) -> None:
    """Every arm of the contrast needs MIN_ARM_SIZE selected participants (ArmTooSmallError)."""
    counts = pd.Series(arms).value_counts()
    small = {label: int(counts.get(label, 0)) for label in config.arm_sides}
    small = {label: n for label, n in small.items() if n < MIN_ARM_SIZE}
    if small:
        listed = ", ".join(f"{label} ({n})" for label, n in small.items())
        raise ArmTooSmallError(
            f"{path}: column {config.arm_column}: arm(s) with fewer than {MIN_ARM_SIZE} selected "
            f"participants: {listed}; add participants, fix the labels, or leave the arm out "
            "of --contrast"
        )


def load_blocks(config: Config, participants: pd.DataFrame) -> pd.Series | None:
    """Exchangeability block of each analysed participant, from the participants.tsv column
    ``--exchangeability-column`` (permutations stay within a block); None without it.

    The column must exist, have a value for every analysed participant, and hold at least two
    blocks: a single block is the same as no blocks and means the wrong column was named.
    """
    name = config.exchangeability_column
    if name is None:
        return None
    path = Path(config.bids_dir) / "participants.tsv"
    table = read_tsv(path)
    table.require([name], "add the block column or correct --exchangeability-column")
    row_of = {pid: i for i, pid in enumerate(table.column("participant_id"))}
    values = table.column(name)
    blocks = pd.Series(
        [values[row_of[pid]] for pid in participants.index], index=participants.index, name=name
    )
    missing = blocks[blocks.isin(MISSING_VALUES)]
    if not missing.empty:
        raise InputError(
            f"{path}: line {table.line(row_of[missing.index[0]])}, column {name}: n/a, but "
            "--exchangeability-column needs a block for every analysed participant; fill it in"
        )
    if blocks.nunique() < 2:
        raise InputError(
            f"{path}: column {name}: one value ({blocks.iloc[0]!r}) for every analysed "
            "participant, so it defines no exchangeability blocks; name a column that varies "
            "(e.g. site) or drop --exchangeability-column"
        )
    return blocks


def _add_covariates(
    frame: pd.DataFrame, table: Table, rows: list[int], names: Iterable[str], exclusions: list
) -> dict[str, str]:
    """Add each covariate column (of table rows `rows`) to `frame`; return name -> kind.

    A column is numeric if every cell is a number or n/a, else categorical; n/a excludes the
    participant from the covariate-adjusted models (appended to `exclusions`).
    """
    kinds: dict[str, str] = {}
    for name in names:
        raw = table.column(name)
        values = [raw[i] for i in rows]
        try:
            numeric = [math.nan if v in MISSING_VALUES else float(v) for v in values]
            kinds[name] = "numeric"
            frame[name] = numeric
        except ValueError:
            kinds[name] = "categorical"
            frame[name] = [None if v in MISSING_VALUES else v for v in values]
        check_varies(frame[name], f"{table.path}: column {name}", "--covariates")
        for pid in frame.index[frame[name].isna()]:
            exclusions.append(
                exclusion(pid, f"covariate {name} is n/a", models="covariate-adjusted")
            )
    return kinds


def check_varies(values: pd.Series, where: str, option: str) -> None:
    """A covariate must take two values among the analysed participants: a constant one has no
    estimable coefficient (and usually means the wrong column was named)."""
    present = values.dropna()
    if present.nunique() < 2:
        first = present.iloc[0] if len(present) else "n/a"
        value = f"{first:g}" if isinstance(first, float) else repr(first)
        raise InputError(
            f"{where}: one value ({value}) for every analysed participant, so the covariate is "
            f"constant; drop it from {option}"
        )


def _select(
    config: Config, listed: list[str], with_outputs: Iterable[str], path: Path
) -> tuple[set[str], list[dict]]:
    """The selected participant_ids, and an exclusion for each one with outputs left out."""
    with_outputs = set(with_outputs)
    chosen = {
        f"sub-{label}"
        for label in select_participants([*listed, *with_outputs], config.participant_labels, path)
    }
    exclusions = [exclusion(pid, NOT_LISTED) for pid in sorted(chosen - set(listed))]
    exclusions += [exclusion(pid, NOT_SELECTED) for pid in sorted(with_outputs - chosen)]
    return chosen, exclusions


def score_range(scale: str, phenotype_dir: Path) -> tuple[float, float] | None:
    """Valid range of ``<scale>_total``: known scales, else the data dictionary's Min/Max."""
    if scale in KNOWN_SCORE_RANGES:
        return KNOWN_SCORE_RANGES[scale]
    sidecar = phenotype_dir / f"{scale}.json"
    if sidecar.is_file():
        try:
            column = json.loads(sidecar.read_text()).get(f"{scale}_total", {})
        except json.JSONDecodeError as err:
            raise InputError(f"{sidecar}: invalid JSON ({err}); fix the data dictionary") from None
        if isinstance(column, dict) and "Minimum" in column and "Maximum" in column:
            return float(column["Minimum"]), float(column["Maximum"])
    LOGGER.warning("%s: range of %s_total unknown; values are not range-checked", scale, scale)
    return None


def load_scores(
    config: Config, scale: str, participants: pd.DataFrame
) -> tuple[pd.DataFrame, list[dict]]:
    """phenotype/<scale>.tsv -> baseline and follow-up totals per participant (NaN = missing)."""
    phenotype_dir = Path(config.bids_dir) / "phenotype"
    path = phenotype_dir / f"{scale}.tsv"
    if not path.is_file():
        raise InputError(
            f"{path}: not found; --scales asks for {scale!r}: add the file (participant_id, "
            f"session_id, {scale}_total) or drop the scale from --scales"
        )
    table = read_tsv(path)
    column = f"{scale}_total"
    table.require(["participant_id", "session_id", column], "see the BIDS phenotype layout")
    ids = table.column("participant_id")
    sessions = [f"ses-{strip_prefix(s, 'ses-')}" for s in table.column("session_id")]
    _duplicates_error(table, list(zip(ids, sessions, strict=True)), "participant_id/session_id")
    valid_range = score_range(scale, phenotype_dir)
    wanted_sessions = {
        f"ses-{config.baseline_session}": "baseline",
        f"ses-{config.followup_session}": "followup",
    }
    row_of = {pid: i for i, pid in enumerate(participants.index)}
    column_of = {"baseline": 0, "followup": 1}
    values = np.full((len(row_of), 2), np.nan)
    for index, (pid, session, raw) in enumerate(
        zip(ids, sessions, table.column(column), strict=True)
    ):
        value = parse_number(table, index, column, raw)
        if valid_range is not None and not math.isnan(value):
            low, high = valid_range
            if not low <= value <= high:
                raise InputError(
                    f"{path}: line {table.line(index)}, column {column}: {raw} is outside the "
                    f"{scale} range {low:g}-{high:g}; correct the score or write n/a"
                )
        if pid in row_of and session in wanted_sessions:
            values[row_of[pid], column_of[wanted_sessions[session]]] = value
    scores = pd.DataFrame(values, index=participants.index, columns=list(column_of))
    exclusions = []
    session_labels = {"baseline": config.baseline_session, "followup": config.followup_session}
    for pid in scores.index[scores.isna().any(axis=1)]:
        for key, session in session_labels.items():
            if math.isnan(scores.at[pid, key]):
                exclusions.append(
                    exclusion(
                        pid,
                        f"no {scale} score at ses-{session} in {path.name}",
                        session_id=f"ses-{session}",
                        scale=scale,
                    )
                )
    return scores, exclusions


def roi_table_path(output_dir: Path, subject: str, session: str) -> Path:
    """Where the participant level writes a session's regional MD table."""
    return spec_path(output_dir, "roi_table", subject, session)


def find_roi_tables(output_dir: Path) -> dict[tuple[str, str], Path]:
    """(participant_id, session label) -> ROI table of every session written."""
    found = find_outputs(output_dir, "roi_table")
    return {(f"sub-{subject}", session): path for (subject, session), path in found.items()}


def read_roi_table(path: Path, column: str = "md_mean") -> tuple[dict[str, float], dict[str, str]]:
    """roi -> MD (``column``, mm^2/s, NaN if n/a) of one session, and roi -> why, for the ROIs
    the participant level reported missing (``status`` column; tables without it have none)
    and, for a free-water-corrected ``column``, those whose ``fw_fraction_mean`` the QC's
    free-water rules call implausible (``qc.free_water_implausible``)."""
    table = read_tsv(path)
    hint = "rerun the participant level"
    if column not in ("md_mean", "md_median"):
        hint += " with a version that writes it, or use --md-measure md"
    table.require(["roi", column], hint)
    rois = table.column("roi")
    _duplicates_error(table, [(roi,) for roi in rois], "roi")
    missing = {}
    if "status" in table.header:
        reasons = table.column("reason") if "reason" in table.header else [""] * len(rois)
        missing = {
            roi: reason
            for roi, status, reason in zip(rois, table.column("status"), reasons, strict=True)
            if status == ROI_MISSING
        }
    if column.startswith("md_fwcorr") and "fw_fraction_mean" in table.header:
        # a free-water fraction the ROI's anatomy cannot hold: its corrected MD is not usable
        for index, (roi, raw) in enumerate(
            zip(rois, table.column("fw_fraction_mean"), strict=True)
        ):
            why = free_water_implausible(parse_number(table, index, "fw_fraction_mean", raw))
            if why is not None and roi not in missing:
                missing[roi] = why
    values = {}
    for index, (roi, raw) in enumerate(zip(rois, table.column(column), strict=True)):
        md = parse_number(table, index, column, raw)
        if md <= 0:
            raise InputError(
                f"{path}: line {table.line(index)}, column {column}: {raw} is not a positive "
                "MD (mm^2/s); rerun the participant level"
            )
        values[roi] = math.nan if roi in missing else md
    return values, missing


def _qc_row(path: Path) -> Table:
    """A session's one-row QC table."""
    table = read_tsv(path)
    if len(table.rows) != 1:
        raise InputError(f"{path}: {len(table.rows)} data rows, expected 1; rerun the session")
    return table


def read_mean_fd(path: Path) -> float:
    """Mean framewise displacement (mm) of one session; NaN if n/a."""
    if not path.is_file():
        raise InputError(
            f"{path}: not found, but --max-mean-fd needs it; rerun the participant level or "
            "drop --max-mean-fd"
        )
    table = _qc_row(path)
    table.require(["mean_fd"], "rerun the participant level or drop --max-mean-fd")
    return parse_number(table, 0, "mean_fd", table.rows[0][table.header.index("mean_fd")])


def qc_covariate_names(config: Config) -> tuple[str, ...]:
    """Model names of the QC covariates: ``delta_<QC column>`` for each ``--qc-covariates``."""
    return tuple(f"{QC_COVARIATE_PREFIX}{column}" for column in config.qc_covariates)


def load_qc_covariates(
    config: Config, participants: pd.DataFrame, tables: dict[tuple[str, str], Path]
) -> tuple[pd.DataFrame, list[dict]]:
    """The change (follow-up - baseline) of each ``--qc-covariates`` column of the sessions' QC
    tables, per participant with both ROI tables; NaN, with an exclusion row saying why, when a
    QC table, its column or a value is missing. A non-numeric value, a column no QC table has,
    or a constant change is an InputError."""
    names = qc_covariate_names(config)
    frame = pd.DataFrame(np.nan, index=participants.index, columns=list(names))
    exclusions: list[dict] = []
    sessions = (config.baseline_session, config.followup_session)
    seen_columns: set[str] = set()
    for pid in participants.index:
        if not all((pid, session) in tables for session in sessions):
            continue  # no MD change either: already excluded
        values: dict[str, list[float]] = {column: [] for column in config.qc_covariates}
        for session in sessions:
            path = spec_path(config.output_dir, "qc_table", pid[len("sub-") :], session)
            table = _qc_row(path) if path.is_file() else None
            for column in config.qc_covariates:
                if table is None or column not in table.header:
                    why = "no QC table" if table is None else f"no {column} column in {path.name}"
                    value = math.nan
                else:
                    seen_columns.add(column)
                    raw = table.rows[0][table.header.index(column)]
                    value = parse_number(table, 0, column, raw)
                    why = f"{column} is n/a in {path.name}"
                if math.isnan(value):
                    exclusions.append(
                        exclusion(
                            pid,
                            f"QC covariate {QC_COVARIATE_PREFIX}{column}: {why} at ses-{session}",
                            session_id=f"ses-{session}",
                            models="covariate-adjusted",
                        )
                    )
                values[column].append(value)
        for column, (baseline, followup) in values.items():
            frame.at[pid, f"{QC_COVARIATE_PREFIX}{column}"] = followup - baseline
    for column in config.qc_covariates:
        if column not in seen_columns:
            raise InputError(
                f"{Path(config.output_dir)}: no QC table (*_desc-qc_metrics.tsv) has a column "
                f"{column!r}; check --qc-covariates (e.g. {', '.join(DEFAULT_QC_COVARIATES)})"
            )
        name = f"{QC_COVARIATE_PREFIX}{column}"
        check_varies(frame[name], f"--qc-covariates {column}: {name}", "--qc-covariates")
    return frame, exclusions


def read_qc_verdict(path: Path) -> tuple[str, str] | None:
    """(qc_verdict, qc_reasons) of one session; None when the QC table or its verdict is absent
    (outputs of a version before QC verdicts), which the caller reports."""
    if not path.is_file():
        return None
    table = _qc_row(path)
    if "qc_verdict" not in table.header:
        return None
    verdict = table.column("qc_verdict")[0]
    if verdict not in VERDICTS:
        raise InputError(
            f"{path}: line 2, column qc_verdict: {verdict!r} is not one of "
            f"{', '.join(VERDICTS)}; rerun the participant level"
        )
    reasons = table.column("qc_reasons")[0] if "qc_reasons" in table.header else ""
    return verdict, reasons


def qc_exclusions(
    config: Config, pid: str, sessions: Iterable[str], unscreened: list[str]
) -> list[dict]:
    """One exclusion per failed session of `pid` (none with ``--include-failed-qc``); sessions
    without a verdict are appended to `unscreened`."""
    exclusions = []
    for session in sessions:
        path = spec_path(config.output_dir, "qc_table", pid[len("sub-") :], session)
        found = read_qc_verdict(path)
        if found is None:
            unscreened.append(f"{pid} ses-{session}")
        elif found[0] == FAIL and config.include_failed_qc:
            LOGGER.warning("%s ses-%s: QC failed (%s); kept (--include-failed-qc)", pid,
                           session, found[1])  # fmt: skip
        elif found[0] == FAIL:
            reason = f"QC failed at ses-{session}: {found[1]}"
            exclusions.append(exclusion(pid, reason, session_id=f"ses-{session}"))
    return exclusions


def _read_sessions(
    config: Config, pid: str, tables: dict[tuple[str, str], Path], exclusions: list[dict]
) -> dict[str, tuple[dict[str, float], dict[str, str]]]:
    """session key -> (roi -> md_mean, roi -> why missing) of the sessions `pid` may use;
    the sessions it may not use get exclusion rows (appended to `exclusions`)."""
    sessions = {"baseline": config.baseline_session, "followup": config.followup_session}
    found = {}
    for key, session in sessions.items():
        path = tables.get((pid, session))
        if path is None:
            exclusions.append(
                exclusion(
                    pid,
                    f"no ROI MD table for ses-{session} (participant level missing or failed)",
                    session_id=f"ses-{session}",
                )
            )
            continue
        if config.max_mean_fd is not None:
            qc_file = spec_path(config.output_dir, "qc_table", pid[len("sub-") :], session)
            mean_fd = read_mean_fd(qc_file)
            if not mean_fd <= config.max_mean_fd:  # NaN fails too: QC unknown
                exclusions.append(
                    exclusion(
                        pid,
                        f"mean FD {mean_fd:.3g} mm above --max-mean-fd {config.max_mean_fd:g}"
                        if not math.isnan(mean_fd)
                        else "mean FD is n/a; cannot apply --max-mean-fd",
                        session_id=f"ses-{session}",
                    )
                )
                continue
        found[key] = read_roi_table(path, config.md_column)
    return found


def load_md(
    config: Config, participants: pd.DataFrame, tables: dict[tuple[str, str], Path]
) -> tuple[pd.DataFrame, tuple[str, ...], list[dict]]:
    """Regional MD (``config.md_column``, mm^2/s) per participant, ROI and session, after the
    QC rules.

    ``tables``: :func:`find_roi_tables` of OUTPUT_DIR.
    """
    output_dir = Path(config.output_dir)
    sessions = {"baseline": config.baseline_session, "followup": config.followup_session}
    exclusions: list[dict] = []
    values: dict[tuple[str, str], dict[str, float]] = {}
    missing: dict[tuple[str, str], dict[str, str]] = {}
    unscreened: list[str] = []
    for pid in participants.index:
        written = [session for session in sessions.values() if (pid, session) in tables]
        failed = qc_exclusions(config, pid, written, unscreened)
        exclusions += failed
        if not failed:
            for key, read in _read_sessions(config, pid, tables, exclusions).items():
                values[(pid, key)], missing[(pid, key)] = read
    if unscreened:
        LOGGER.warning(
            "%d session(s) have no qc_verdict in their QC table (outputs of an earlier "
            "version?) and are not screened by QC: %s",
            len(unscreened),
            ", ".join(unscreened),
        )
    if not values:
        hint = (
            "every one failed QC (see exclusions in the log, their reports, or use "
            "--include-failed-qc)"
            if any(row["reason"].startswith("QC failed") for row in exclusions)
            else "run the participant level first"
        )
        raise InputError(
            f"{output_dir}: no usable participant outputs for the selected participants of "
            f"{Path(config.bids_dir) / 'participants.tsv'}; {hint}"
        )
    found_rois = {roi for per_session in values.values() for roi in per_session}
    rois = tuple(r for r in ROI_NAMES if r in found_rois) + tuple(
        sorted(found_rois - set(ROI_NAMES))
    )
    keys = ("baseline", "followup")
    columns = pd.MultiIndex.from_product([rois, keys], names=["roi", "session"])
    row_of = {pid: i for i, pid in enumerate(participants.index)}
    array = np.full((len(row_of), len(columns)), np.nan)
    for (pid, key), per_roi in values.items():
        for roi_index, roi in enumerate(rois):
            value = per_roi.get(roi, math.nan)
            array[row_of[pid], 2 * roi_index + keys.index(key)] = value
            if math.isnan(value):
                session = f"ses-{sessions[key]}"
                why = missing[(pid, key)].get(roi)
                reason = (
                    f"{roi} missing at {session}: {why}"
                    if why is not None
                    else f"no {config.md_column} for {roi} at {session}"
                )
                exclusions.append(exclusion(pid, reason, session_id=session, roi=roi))
    md = pd.DataFrame(array, index=participants.index, columns=columns)
    return md, rois, exclusions


def load_inputs(config: Config) -> GroupInputs:
    """Read and check every input of the group level."""
    output_dir = Path(config.output_dir)
    tables = find_roi_tables(output_dir)
    if not tables:
        example = roi_table_path(Path("sub-<label>"), "<label>", "<session>").name
        raise InputError(
            f"{output_dir}: no participant outputs (sub-*/ses-*/dwi/{example}); run the "
            "participant level first"
        )
    participants, kinds, exclusions = load_participants(config, {pid for pid, _ in tables})
    md, rois, md_exclusions = load_md(config, participants, tables)
    scores = {}
    for scale in config.scales:
        scores[scale], score_exclusions = load_scores(config, scale, participants)
        exclusions += score_exclusions
    exclusions += md_exclusions
    if config.qc_covariates:
        qc_covariates, qc_rows = load_qc_covariates(config, participants, tables)
        participants = participants.join(qc_covariates)
        kinds |= dict.fromkeys(qc_covariates.columns, "numeric")
        exclusions += qc_rows
    blocks = load_blocks(config, participants)
    reliability = load_reliability(config.reliability, rois) if config.reliability else None
    return GroupInputs(participants, kinds, scores, md, rois, exclusions, blocks, reliability)


def load_reliability(path: Path, rois: tuple[str, ...]) -> pd.Series:
    """``--reliability``: the retest reliability of dMD per ROI, a Series roi -> (0, 1].

    A TSV with columns ``roi`` and ``reliability`` (var(true dMD) / var(measured dMD)), one row
    per analysed ROI; it serves every scale, the error being in dMD, not in the scores. Other
    columns, and rows of ROIs not analysed (logged), are ignored. A missing row, a repeated
    ROI, or a value that is not a number in (0, 1] is an InputError naming file and line.
    """
    table = read_tsv(path)
    table.require(["roi", "reliability"], "write one row per ROI: roi<TAB>reliability")
    listed = table.column("roi")
    _duplicates_error(table, [(roi,) for roi in listed], "roi")
    values = {}
    for index, (roi, raw) in enumerate(zip(listed, table.column("reliability"), strict=True)):
        try:
            value = float(raw)
        except ValueError:
            raise InputError(
                f"{path}: line {table.line(index)}, column reliability: {raw!r} is not a number; "
                "write the retest reliability of dMD, above 0 and at most 1"
            ) from None
        if not 0.0 < value <= 1.0:  # NaN fails too
            raise InputError(
                f"{path}: line {table.line(index)}, column reliability: {raw} is outside (0, 1]; "
                "a reliability is var(true dMD) / var(measured dMD), above 0 and at most 1"
            )
        values[roi] = value
    missing = [roi for roi in rois if roi not in values]
    if missing:
        raise InputError(
            f"{path}: no row for ROI(s) {', '.join(missing)}; give a reliability for every "
            f"analysed ROI ({', '.join(rois)})"
        )
    unused = sorted(set(values) - set(rois))
    if unused:
        LOGGER.info("%s: rows of ROIs not analysed ignored: %s", path, ", ".join(unused))
    return pd.Series({roi: values[roi] for roi in rois}, name="reliability", dtype=float)
