"""The group models, stated as statsmodels formulas, fitted into one tidy table.

| model             | formula                                                    | fitted per  |
|-------------------|------------------------------------------------------------|-------------|
| interaction       | delta_score ~ group * delta_md + baseline_score [+ covs]   | scale x ROI |
| pooled            | delta_score ~ delta_md + group + baseline_score [+ covs]   | scale x ROI |
| arm_<side>        | delta_score ~ delta_md + baseline_score [+ covs], one side | scale x ROI |
| treatment_md      | delta_md ~ group + baseline_md                             | ROI         |
| treatment_score   | delta_score ~ group + baseline_score                       | scale       |
| mixed (optional)  | score ~ session * group + group * md_within                | scale x ROI |
|                   |   + group * md_between [+ covs], random intercept          |             |

``group`` is 1 for the treatment side of the contrast and 0 for the control side (each side one
or more arms; covs include the arm indicators, ``changes.covariate_columns``). OLS by default,
HC3 standard errors with ``robust_se``; t tests and t-based 95% confidence intervals in both
cases. The mixed model splits MD by person-mean centring (``changes.within_between``):
``md_within`` (a session's deviation from the participant's own mean; with two sessions it
carries dMD, so ``group:md_within`` is the counterpart of the OLS ``group:delta_md``) and
``md_between`` (the participant's mean; people with higher MD vs lower MD), whose effects are
otherwise blended in one time-varying ``md``.

Speed without a second implementation: statsmodels' formula machinery builds each model's
design once, over the frame stacked by scale x ROI, and each fit takes its rows of that
design. Nothing in these formulas depends on other rows (the arm indicators are centred once
per participant, in the analysis table), so this is the same fit as one formula call per
scale x ROI; a test checks it.
"""

from __future__ import annotations

import itertools
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf

from ketamine_dti.config import Config
from ketamine_dti.errors import InputError
from ketamine_dti.group.changes import (
    covariate_columns,
    long_session_frame,
    stacked_roi_frame,
    within_between,
)

LOGGER = logging.getLogger(__name__)

#: Two-sided significance level of the tests and 1 - coverage of the confidence intervals.
ALPHA = 0.05
INTERCEPT = "Intercept"
#: Columns of a tidy fit, in order (``scale``, ``roi``, ``model`` are added around them).
FIT_COLUMNS = (
    "term",
    "estimate",
    "std_error",
    "statistic",
    "p_value",
    "ci_low",
    "ci_high",
    "n",
)
#: Model names in reporting order (per-side models are named ``arm_<side>``).
INTERACTION, POOLED, ARM, TREATMENT_MD, TREATMENT_SCORE, MIXED = (
    "interaction",
    "pooled",
    "arm",
    "treatment_md",
    "treatment_score",
    "mixed",
)
_QUOTED = re.compile(r'Q\("([^"]+)"\)')


@dataclass(frozen=True)
class ModelSpec:
    """One model: its name, formula, the variables it needs, and what it is fitted within.

    ``by`` lists the columns whose levels each get their own fit (e.g. scale and ROI);
    ``side``, if set, restricts the fits to the participants of that contrast side.
    """

    name: str
    formula: str
    variables: tuple[str, ...]
    by: tuple[str, ...]
    side: str | None = None


def covariate_formula(covariates: tuple[str, ...]) -> str:
    """' + Q("age") + Q("sex")': quoted so any column name works in a formula."""
    return "".join(f' + Q("{name}")' for name in covariates)


def term_name(exog_name: str) -> str:
    """statsmodels' column name -> our term name ('Q("sex")[T.M]' -> 'sex[T.M]')."""
    return _QUOTED.sub(r"\1", exog_name)


def model_specs(config: Config) -> tuple[ModelSpec, ...]:
    """The models of the analysis, in reporting order, for this run's covariates."""
    covs = covariate_columns(config)
    base = ("delta_score", "delta_md", "group", "baseline_score")
    per_side = []
    for side in (config.treatment_arm, config.control_arm):
        side_covs = covariate_columns(config, side)
        per_side.append(
            ModelSpec(
                f"{ARM}_{side}",
                f"delta_score ~ delta_md + baseline_score{covariate_formula(side_covs)}",
                (*base, *side_covs),
                ("scale", "roi"),
                side,
            )
        )
    return (
        ModelSpec(
            INTERACTION,
            f"delta_score ~ group * delta_md + baseline_score{covariate_formula(covs)}",
            (*base, *covs),
            ("scale", "roi"),
        ),
        ModelSpec(
            POOLED,
            f"delta_score ~ delta_md + group + baseline_score{covariate_formula(covs)}",
            (*base, *covs),
            ("scale", "roi"),
        ),
        *per_side,
        ModelSpec(
            TREATMENT_MD,
            "delta_md ~ group + baseline_md",
            ("delta_md", "group", "baseline_md"),
            ("roi",),
        ),
        ModelSpec(
            TREATMENT_SCORE,
            "delta_score ~ group + baseline_score",
            ("delta_score", "group", "baseline_score"),
            ("scale",),
        ),
    )


def mixed_formula(config: Config) -> str:
    """The mixed model: MD split into its within- and between-participant parts."""
    covs = covariate_formula(covariate_columns(config))
    return f"score ~ session * group + group * md_within + group * md_between{covs}"


def _tidy_arrays(result, keep: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """A statsmodels result -> per-term arrays for the kept terms (intercept dropped)."""
    ci = np.asarray(result.conf_int(alpha=ALPHA))
    return {
        "estimate": np.asarray(result.params)[keep],
        "std_error": np.asarray(result.bse)[keep],
        "statistic": np.asarray(result.tvalues)[keep],
        "p_value": np.asarray(result.pvalues)[keep],
        "ci_low": ci[keep, 0],
        "ci_high": ci[keep, 1],
        "n": np.full(int(keep.sum()), n),
    }


def _tidy_frame(
    names: list[str], parts: list[dict[str, np.ndarray]], levels: list[tuple], by: tuple[str, ...]
) -> pd.DataFrame:
    """Stack per-fit arrays into one tidy frame (one row per level x kept term)."""
    terms = [term_name(name) for name in names if name != INTERCEPT]
    frame = pd.DataFrame(
        {column: np.concatenate([part[column] for part in parts]) for column in parts[0]}
    )
    frame.insert(0, "term", terms * len(parts))
    for k, column in reversed(list(enumerate(by))):
        frame.insert(0, column, np.repeat([level[k] for level in levels], len(terms)))
    return frame


def inestimable_reason(exog: np.ndarray) -> str | None:
    """Why OLS cannot fit this design (too few participants for a residual degree of freedom,
    or a rank-deficient design), or None if it can."""
    n, p = exog.shape
    if n < p + 1:
        return (
            f"{n} participants with complete data, but its {p} coefficients need at least {p + 1}"
        )
    if np.linalg.matrix_rank(exog) < p:
        return (
            f"the design is singular for the {n} participants with complete data (a covariate "
            "constant or collinear, or an arm without data)"
        )
    return None


def _missing_arrays(keep: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """The per-term arrays of a fit that could not be made: n/a everywhere but ``n``."""
    size = int(keep.sum())
    columns = ("estimate", "std_error", "statistic", "p_value", "ci_low", "ci_high")
    return {column: np.full(size, np.nan) for column in columns} | {"n": np.full(size, n)}


def _level_rows(data: pd.DataFrame, by: tuple[str, ...]) -> dict[tuple, np.ndarray]:
    """Level of the ``by`` columns (a tuple) -> its row positions in ``data``."""
    if not by:
        return {(): np.arange(len(data))}
    groups = data.groupby(list(by), sort=False).indices
    return {(key if isinstance(key, tuple) else (key,)): rows for key, rows in groups.items()}


def _formula_design(formula: str, data: pd.DataFrame, describe: Callable[[dict], str]):
    """statsmodels' design of ``formula`` over the complete frame ``data``, built once."""
    if data.empty:
        raise InputError(f"{describe({})}: no participant has complete data; check the inputs")
    design = smf.ols(formula, data=data)
    if design.exog.shape[0] != len(data):
        raise RuntimeError(f"{describe({})}: formula dropped rows; the frame must be complete")
    return design


def fit_ols(
    formula: str,
    data: pd.DataFrame,
    robust_se: bool,
    by: tuple[str, ...] = (),
    describe: Callable[[dict[str, str]], str] = str,
) -> pd.DataFrame:
    """Fit ``formula`` by OLS separately within each level of the ``by`` columns.

    ``data`` must be complete for the formula's variables. Returns tidy rows with the ``by``
    columns first. A level the data cannot fit (``inestimable_reason``; e.g. one ROI missing
    in enough participants of one arm) keeps its rows, n/a but for ``n``, with a warning, so
    the other ROIs are still reported; if no level can be fitted the model as asked is not
    estimable and an InputError says why. ``describe(level)`` names a fit in messages.
    """
    design = _formula_design(formula, data, describe)
    names = list(design.exog_names)
    keep = np.array([name != INTERCEPT for name in names])
    groups = _level_rows(data, by)
    fit_kwargs = {"cov_type": "HC3", "use_t": True} if robust_se else {}
    parts, reasons = [], []
    for level, rows in groups.items():
        exog = design.exog[rows]
        reason = inestimable_reason(exog)
        if reason is None:
            result = sm.OLS(design.endog[rows], exog).fit(**fit_kwargs)
            parts.append(_tidy_arrays(result, keep, len(rows)))
            continue
        where = describe(dict(zip(by, level, strict=True)))
        LOGGER.warning("%s: not estimable, %s; its stats.tsv rows are n/a", where, reason)
        reasons.append(f"{where}: {reason}")
        parts.append(_missing_arrays(keep, len(rows)))
    if len(reasons) == len(groups):
        raise InputError(
            f"{reasons[0]}"
            + (f" (and {len(reasons) - 1} more fits of this model)" if len(reasons) > 1 else "")
            + "; add participants or drop covariates (--covariates)"
        )
    return _tidy_frame(names, parts, list(groups), by)


def _complete(data: pd.DataFrame, variables: tuple[str, ...]) -> pd.DataFrame:
    return data.dropna(subset=list(variables))


def fit_mixed(formula: str, data: pd.DataFrame, where: str) -> pd.DataFrame:
    """MixedLM with a participant random intercept (REML); z tests. Empty on failure."""
    n = data["participant_id"].nunique()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = smf.mixedlm(formula, data, groups=data["participant_id"]).fit(reml=True)
        except (np.linalg.LinAlgError, ValueError) as err:
            LOGGER.warning("%s: mixed model failed (%s); no rows written", where, err)
            return pd.DataFrame(columns=list(FIT_COLUMNS))
    for warning in caught:
        LOGGER.warning("%s: %s", where, warning.message)
    names = list(result.model.exog_names)
    k = len(names)
    ci = np.asarray(result.conf_int(alpha=ALPHA))[:k]
    frame = pd.DataFrame(
        {
            "term": [term_name(name) for name in names],
            "estimate": np.asarray(result.fe_params),
            "std_error": np.asarray(result.bse_fe),
            "statistic": np.asarray(result.tvalues)[:k],
            "p_value": np.asarray(result.pvalues)[:k],
            "ci_low": ci[:, 0],
            "ci_high": ci[:, 1],
            "n": n,
        }
    )
    return frame[frame.term != INTERCEPT]


@dataclass(frozen=True)
class OlsDesign:
    """The numbers of one OLS fit of stats.tsv, for inference done outside statsmodels
    (permutation tests): the same rows and design columns that :func:`fit_ols` fits."""

    scale: str  # "" for treatment_md
    roi: str  # "" for treatment_score
    model: str
    terms: tuple[str, ...]  # term name of each column of ``x`` (Intercept included)
    participant_ids: np.ndarray  # participant of each row
    y: np.ndarray
    x: np.ndarray


def _model_data(
    table: pd.DataFrame, config: Config, rois: tuple[str, ...]
) -> list[tuple[ModelSpec, pd.DataFrame, Callable[[dict[str, str]], str]]]:
    """Each OLS model with its complete frame (stacked over its ``by`` levels) and a function
    naming one of its fits in error messages."""
    scored = pd.concat(
        [
            stacked_roi_frame(table, config, rois, scale).assign(scale=scale)
            for scale in config.scales
        ],
        ignore_index=True,
    )
    frames = {
        ("scale", "roi"): scored,
        ("scale",): scored[scored["roi"] == rois[0]],  # one row per participant and scale
        ("roi",): stacked_roi_frame(table, config, rois, None),
    }
    out = []
    for spec in model_specs(config):

        def describe(level: dict[str, str], spec: ModelSpec = spec) -> str:
            where = ", ".join(f"{key} {value}" for key, value in level.items())
            return f"{spec.name} model ({spec.formula})" + (f", {where}" if where else "")

        frame = frames[spec.by]
        if spec.side is not None:
            frame = frame[frame["group_label"] == spec.side]
        out.append((spec, _complete(frame, spec.variables), describe))
    return out


def ols_designs(table: pd.DataFrame, config: Config, rois: tuple[str, ...]) -> list[OlsDesign]:
    """Every OLS fit of :func:`fit_group_models` as arrays, in the same order of levels; the
    fits it leaves n/a are left out."""
    designs = []
    for spec, data, describe in _model_data(table, config, rois):
        design = _formula_design(spec.formula, data, describe)
        terms = tuple(term_name(name) for name in design.exog_names)
        participant_ids = data["participant_id"].to_numpy()
        for level, rows in _level_rows(data, spec.by).items():
            if inestimable_reason(design.exog[rows]) is not None:
                continue  # n/a in stats.tsv (fit_ols)
            named = dict(zip(spec.by, level, strict=True))
            designs.append(
                OlsDesign(
                    scale=str(named.get("scale", "")),
                    roi=str(named.get("roi", "")),
                    model=spec.name,
                    terms=terms,
                    participant_ids=participant_ids[rows],
                    y=np.asarray(design.endog[rows], dtype=float),
                    x=np.asarray(design.exog[rows], dtype=float),
                )
            )
    return designs


def fit_group_models(table: pd.DataFrame, config: Config, rois: tuple[str, ...]) -> pd.DataFrame:
    """All models of the analysis -> tidy stats (no FDR yet): scale, roi, model, term, ..."""
    expected_levels = {"scale": config.scales, "roi": rois}
    parts = []
    for spec, data, describe in _model_data(table, config, rois):
        fitted = fit_ols(spec.formula, data, config.robust_se, spec.by, describe)
        found = set(fitted[list(spec.by)].itertuples(index=False, name=None))
        absent = [
            level
            for level in itertools.product(*(expected_levels[column] for column in spec.by))
            if level not in found
        ]
        if absent:
            fitted = pd.concat([fitted, _absent_rows(fitted, spec.by, absent, describe)])
            fitted["n"] = fitted["n"].astype(int)
        fitted.insert(0, "model", spec.name)
        for column in ("scale", "roi"):
            if column not in fitted:
                fitted.insert(0, column, "")
        parts.append(fitted)
    if config.mixed_model:
        for scale in config.scales:
            parts.extend(_fit_mixed_models(table, config, rois, scale))
    stats = pd.concat(parts, ignore_index=True)
    return order_stats(stats[["scale", "roi", "model", *FIT_COLUMNS]], config, rois)


def _absent_rows(
    fitted: pd.DataFrame, by: tuple[str, ...], levels: list[tuple], describe: Callable
) -> pd.DataFrame:
    """n/a rows (n = 0), with a warning, for the levels where no participant has complete
    data (every participant lost that ROI), so each scale x ROI keeps its rows."""
    terms = list(dict.fromkeys(fitted["term"]))
    rows = []
    for level in levels:
        LOGGER.warning(
            "%s: no participant has complete data; its stats.tsv rows are n/a",
            describe(dict(zip(by, level, strict=True))),
        )
        rows += [dict(zip(by, level, strict=True)) | {"term": term, "n": 0} for term in terms]
    return pd.DataFrame(rows, columns=fitted.columns)


def _fit_mixed_models(
    table: pd.DataFrame, config: Config, rois: tuple[str, ...], scale: str
) -> list[pd.DataFrame]:
    formula = mixed_formula(config)
    parts = []
    for roi in rois:
        long = _complete(
            long_session_frame(table, config, roi, scale),
            ("score", "md", "group", "session", *covariate_columns(config)),
        )
        fitted = fit_mixed(
            formula, within_between(long), f"mixed model ({formula}), scale {scale}, {roi}"
        )
        fitted.insert(0, "scale", scale)
        fitted.insert(1, "roi", roi)
        fitted.insert(2, "model", MIXED)
        parts.append(fitted)
    return parts


def model_order(config: Config) -> list[str]:
    """Model names in reporting order."""
    return [spec.name for spec in model_specs(config)] + [MIXED]


def order_stats(stats: pd.DataFrame, config: Config, rois: tuple[str, ...]) -> pd.DataFrame:
    """Sort rows: scale (treatment_md last), ROI in atlas order, model, term as fitted."""
    scale_rank = {scale: i for i, scale in enumerate(config.scales)} | {"": len(config.scales)}
    roi_rank = {"": -1} | {roi: i for i, roi in enumerate(rois)}
    model_rank = {name: i for i, name in enumerate(model_order(config))}
    keys = pd.DataFrame(
        {
            "scale": stats["scale"].map(scale_rank),
            "roi": stats["roi"].map(roi_rank),
            "model": stats["model"].map(model_rank),
            "position": np.arange(len(stats)),
        }
    )
    order = keys.sort_values(["scale", "roi", "model", "position"]).index
    return stats.loc[order].reset_index(drop=True)
