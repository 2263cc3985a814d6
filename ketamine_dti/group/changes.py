"""Change scores: dScore and dMD per participant, the analysis table and the model frames.

dScore = score(follow-up) - score(baseline), in points; negative means improvement.
dMD = MD(follow-up) - MD(baseline). MD is read in mm^2/s; for readable estimates the models see
absolute dMD in units of :data:`MD_REPORT_UNIT` mm^2/s, or percent of baseline MD with
``--delta-md percent``. Baseline MD enters the models in :data:`MD_REPORT_UNIT` as well.

Covariates of the adjusted models (:func:`covariate_columns`): the participants.tsv columns of
``--covariates``, the QC changes of ``--qc-covariates`` and, for a contrast side of several
arms, one indicator per arm after the side's first, centred within the side (1 - share for its
arm, -share for the side's other arms, 0 on the other side). Centred, they sum to zero within
each side, so they model differences between the arms of a side while ``group`` and
``group:delta_md`` stay the contrast of the sides (their arms weighted by size).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ketamine_dti.config import Config
from ketamine_dti.group.inputs import GroupInputs, qc_covariate_names

LOGGER = logging.getLogger(__name__)

#: mm^2/s. Gray-matter MD is ~0.8e-3, a 2% change is 1.6e-5: in this unit it reads as 1.6.
MD_REPORT_UNIT = 1e-5
DELTA_MD_MODES = ("absolute", "percent")
#: Numeric coding of the arm in the models: treatment 1, control 0, so that positive
#: ``group:delta_md`` means a steeper dScore-dMD slope in the treatment arm.
TREATMENT_CODE = 1.0
CONTROL_CODE = 0.0


def delta_md_unit(mode: str) -> str:
    """How dMD is expressed, for sidecars and figure labels."""
    if mode == "percent":
        return "percent of baseline MD"
    return f"{MD_REPORT_UNIT:g} mm^2/s"


def delta_md(baseline: np.ndarray, followup: np.ndarray, mode: str) -> np.ndarray:
    """dMD from MD in mm^2/s: absolute in MD_REPORT_UNIT, or percent of baseline."""
    if mode not in DELTA_MD_MODES:
        raise ValueError(f"delta_md mode {mode!r}; use one of {', '.join(DELTA_MD_MODES)}")
    if mode == "percent":
        return 100.0 * (followup - baseline) / baseline
    return (followup - baseline) / MD_REPORT_UNIT


def session_columns(config: Config) -> dict[str, str]:
    """'baseline'/'followup' -> the session label used in column names (e.g. '24h')."""
    return {"baseline": config.baseline_session, "followup": config.followup_session}


def arm_terms(config: Config, side: str | None = None) -> tuple[str, ...]:
    """Columns of the centred within-side arm indicators (all sides, or one side's)."""
    return tuple(
        f"arm[{label}]"
        for name, labels in config.contrast
        if side in (None, name)
        for label in labels[1:]
    )


def covariate_columns(config: Config, side: str | None = None) -> tuple[str, ...]:
    """The adjusted models' covariates: --covariates, --qc-covariates, arm indicators (those of
    one side for that side's own model)."""
    return (*config.covariates, *qc_covariate_names(config), *arm_terms(config, side))


def arm_indicators(arms: pd.Series, config: Config) -> pd.DataFrame:
    """The centred within-side arm indicators (:func:`arm_terms`) of each participant."""
    columns = {}
    for _side, labels in config.contrast:
        in_side = arms.isin(labels).to_numpy()
        for label in labels[1:]:
            is_arm = (arms == label).to_numpy()
            share = is_arm[in_side].mean()
            columns[f"arm[{label}]"] = np.where(in_side, is_arm - share, 0.0)
    return pd.DataFrame(columns, index=arms.index)


def build_analysis_table(inputs: GroupInputs, config: Config) -> pd.DataFrame:
    """One row per participant: contrast side, arm, covariates, MD per ROI and session, dMD,
    scores, dScore.

    MD columns are in mm^2/s as read; ``delta_md_<roi>`` is in the analysis unit
    (:func:`delta_md_unit`). Missing values stay NaN.
    """
    labels = session_columns(config)
    table = pd.DataFrame(index=inputs.participants.index)
    table["group"] = inputs.participants["group"]
    table["arm"] = inputs.participants["arm"]
    for name in (*config.covariates, *qc_covariate_names(config)):
        table[name] = inputs.participants[name]
    table = table.join(arm_indicators(inputs.participants["arm"], config))
    columns: dict[str, pd.Series | np.ndarray] = {}
    for roi in inputs.rois:
        baseline = inputs.md[(roi, "baseline")].to_numpy()
        followup = inputs.md[(roi, "followup")].to_numpy()
        columns[f"md_{roi}_{labels['baseline']}"] = baseline
        columns[f"md_{roi}_{labels['followup']}"] = followup
        columns[f"delta_md_{roi}"] = delta_md(baseline, followup, config.delta_md)
    for scale, scores in inputs.scores.items():
        columns[f"{scale}_{labels['baseline']}"] = scores["baseline"].to_numpy()
        columns[f"{scale}_{labels['followup']}"] = scores["followup"].to_numpy()
        columns[f"delta_{scale}"] = (scores["followup"] - scores["baseline"]).to_numpy()
    table = pd.concat([table, pd.DataFrame(columns, index=table.index)], axis=1)
    table.index.name = "participant_id"
    return table.reset_index()


def arm_codes(arms: pd.Series, config: Config) -> np.ndarray:
    """Treatment -> 1.0, control -> 0.0."""
    return np.where(arms.to_numpy() == config.treatment_arm, TREATMENT_CODE, CONTROL_CODE)


def stacked_roi_frame(
    table: pd.DataFrame, config: Config, rois: tuple[str, ...], scale: str | None
) -> pd.DataFrame:
    """Long frame, one row per participant x ROI, with the model variables.

    Columns: participant_id, roi, group_label (contrast side), group (1/0), covariates,
    delta_md, baseline_md (in MD_REPORT_UNIT) and, if a scale is given, delta_score and
    baseline_score. Rows with missing values are kept; each model drops what it needs.
    """
    labels = session_columns(config)
    base = table[["participant_id", *covariate_columns(config)]].copy()
    base.insert(1, "group_label", table["group"].to_numpy())
    base.insert(2, "group", arm_codes(table["group"], config))
    if scale is not None:
        base["delta_score"] = table[f"delta_{scale}"].to_numpy()
        base["baseline_score"] = table[f"{scale}_{labels['baseline']}"].to_numpy()
    parts = []
    for roi in rois:
        part = base.copy()
        part.insert(1, "roi", roi)
        part["delta_md"] = table[f"delta_md_{roi}"].to_numpy()
        part["baseline_md"] = table[f"md_{roi}_{labels['baseline']}"].to_numpy() / MD_REPORT_UNIT
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def long_session_frame(table: pd.DataFrame, config: Config, roi: str, scale: str) -> pd.DataFrame:
    """Long frame for the mixed model: one row per participant x session.

    ``session`` is 0 at baseline and 1 at follow-up; ``md`` is MD in MD_REPORT_UNIT. Rows
    with missing values are kept; :func:`within_between` splits ``md`` once the model's rows
    are known.
    """
    labels = session_columns(config)
    rows = []
    for code, key in ((0.0, "baseline"), (1.0, "followup")):
        part = table[["participant_id", *covariate_columns(config)]].copy()
        part["group"] = arm_codes(table["group"], config)
        part["session"] = code
        part["score"] = table[f"{scale}_{labels[key]}"].to_numpy()
        part["md"] = table[f"md_{roi}_{labels[key]}"].to_numpy() / MD_REPORT_UNIT
        rows.append(part)
    return pd.concat(rows, ignore_index=True)


def within_between(long: pd.DataFrame) -> pd.DataFrame:
    """Person-mean centring of ``md`` over the rows given (the rows a model uses).

    ``md_between`` is the participant's mean MD, centred on the mean of the participants'
    means (each participant counted once): the between-participant part. ``md_within`` is MD
    minus the participant's own mean: the within-participant part, which with two sessions is
    -dMD/2 at baseline and +dMD/2 at follow-up. Both in MD_REPORT_UNIT.
    """
    out = long.copy()
    person_mean = out.groupby("participant_id", sort=False)["md"].transform("mean")
    means = out.groupby("participant_id", sort=False)["md"].mean()
    out["md_within"] = out["md"] - person_mean
    out["md_between"] = person_mean - means.mean()
    return out
