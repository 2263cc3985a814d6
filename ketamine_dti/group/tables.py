"""The group level's tables: stats.tsv, analysis_table.tsv, exclusions.tsv (each with a JSON
sidecar describing its columns) and the paper-style results tables of summary.md.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ketamine_dti.config import Config
from ketamine_dti.group.changes import MD_REPORT_UNIT, arm_terms, delta_md_unit
from ketamine_dti.group.inputs import QC_COVARIATE_PREFIX
from ketamine_dti.group.measurement_error import ESTIMATE_RC, RC_COLUMNS, RELIABILITY, SE_RC
from ketamine_dti.group.models import (
    ALPHA,
    INTERACTION,
    MIXED,
    POOLED,
    TREATMENT_MD,
    TREATMENT_SCORE,
    mixed_formula,
)
from ketamine_dti.group.multiple_comparisons import FDR_FAMILY
from ketamine_dti.group.permutation import P_PERM, P_PERM_FDR, P_PERM_FWER

LOGGER = logging.getLogger(__name__)

#: stats.tsv columns, exactly (issue 4).
STATS_COLUMNS = (
    "scale",
    "roi",
    "model",
    "term",
    "estimate",
    "std_error",
    "statistic",
    "p_value",
    "p_fdr",
    "ci_low",
    "ci_high",
    "n",
)
#: Appended with --permutations > 0 (p_perm_fwer only with --fwer maxt); at the end, so the
#: columns above keep their positions.
PERMUTATION_COLUMNS = (P_PERM, P_PERM_FDR, P_PERM_FWER)
EXCLUSION_COLUMNS = ("participant_id", "session_id", "scale", "roi", "models", "reason")
#: What each --md-measure analyses and how --roi-statistic summarises it, for the sidecar and
#: the summary.
MD_MEASURE_DESCRIPTIONS = {
    "md": "tensor MD",
    "md_fwcorr": "free-water-corrected MD (tissue compartment of a two-compartment fit)",
}


def md_measure_description(config: Config) -> str:
    """``md_median: tensor MD, median over the ROI's kept gray-matter voxels`` and the like."""
    how = "averaged over" if config.roi_statistic == "mean" else "median over"
    measure = MD_MEASURE_DESCRIPTIONS[config.md_measure]
    return f"{config.md_column}: {measure}, {how} the ROI's kept gray-matter voxels"


#: The mixed model's MD terms, for the sidecar (changes.within_between computes them).
WITHIN_BETWEEN = (
    "MD split by person-mean centring over the rows a model uses: md_within = a session's MD "
    "minus the participant's mean MD (within-participant; with two sessions -dMD/2 at "
    "baseline, +dMD/2 at follow-up, so md_within is the within-participant slope of score on "
    "MD and group:md_within the treatment - control difference of that slope, the counterpart "
    "of group:delta_md); md_between = the participant's mean MD minus the mean of the "
    "participants' means (between-participant: do people with higher MD score differently; "
    "group:md_between its treatment - control difference). Both in "
    f"{MD_REPORT_UNIT:g} mm^2/s"
)
#: p-values below this print as "<0.001".
P_FLOOR = 0.001


def stats_columns(config: Config) -> tuple[str, ...]:
    """The columns of this run's stats.tsv: STATS_COLUMNS, then the permutation p-values
    asked for (none with ``--permutations 0``: no column rather than a column of n/a), then
    the attenuation-corrected slopes with ``--reliability`` (likewise absent without it)."""
    added: tuple[str, ...] = ()
    if config.permutations:
        added = PERMUTATION_COLUMNS if config.fwer == "maxt" else PERMUTATION_COLUMNS[:2]
    if config.reliability is not None:
        added += RC_COLUMNS
    return STATS_COLUMNS + added


def write_tsv(frame: pd.DataFrame, path: Path, sidecar: dict) -> Path:
    """Write a BIDS-style TSV (n/a for missing, full float precision) and its JSON sidecar."""
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a", lineterminator="\n")
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return path


def _models_description(config: Config) -> str:
    se = "HC3 heteroscedasticity-consistent" if config.robust_se else "ordinary (OLS)"
    return (
        "OLS with statsmodels formulas, " + se + " standard errors, t tests and t-based "
        f"{100 * (1 - ALPHA):g}% confidence intervals; mixed = statsmodels MixedLM (REML, "
        "participant random intercept, z tests)"
    )


def stats_sidecar(config: Config) -> dict:
    """Column descriptions of stats.tsv, with units and the dMD scaling; the permutation
    columns carry their method, number of permutations and seed."""
    unit = delta_md_unit(config.delta_md)
    side_models = {
        f"arm_{side}": "delta_score ~ delta_md + baseline_score [+ covariates, this side's arm "
        f"indicators], {side} side only ({', '.join(labels)})"
        for side, labels in config.contrast
    }
    sidecar = {
        "scale": {
            "Description": "Symptom scale of dScore; empty for treatment_md (no score involved)"
        },
        "roi": {"Description": "Region; empty for treatment_score (no MD involved)"},
        "model": {
            "Description": "Model: " + _models_description(config),
            "Levels": {
                INTERACTION: "delta_score ~ group * delta_md + baseline_score [+ covariates]",
                POOLED: "delta_score ~ delta_md + group + baseline_score [+ covariates]",
                **side_models,
                TREATMENT_MD: "delta_md ~ group + baseline_md",
                TREATMENT_SCORE: "delta_score ~ group + baseline_score",
                MIXED: f"{mixed_formula(config)} + (1 | participant); session 0 = baseline, "
                "1 = follow-up",
            },
            "MDMeasure": md_measure_description(config),
            "MixedModelMD": WITHIN_BETWEEN,
            "Contrast": _contrast_description(config),
            "Covariates": _covariates_description(config),
        },
        "term": {
            "Description": "Model term. group: treatment side "
            f"({config.treatment_arm}) = 1 vs control side ({config.control_arm}) = 0, so a "
            "positive group:delta_md means a steeper dScore-dMD slope on the treatment side; "
            "covariates by name, categorical ones as name[T.level] against the first level; "
            f"{QC_COVARIATE_PREFIX}<column>: change of a QC column (follow-up - baseline); "
            "arm[<label>]: that arm's indicator centred within its side (see Contrast)",
        },
        "estimate": {
            "Description": "Coefficient. dScore in points (follow-up - baseline, negative = "
            f"improvement); delta_md in {unit}; baseline_md, md_within and md_between in "
            f"{MD_REPORT_UNIT:g} "
            f"mm^2/s; so a delta_md slope is points per {unit}",
        },
        "std_error": {"Description": "Standard error of the estimate"},
        "statistic": {"Description": "t statistic (z for the mixed model)"},
        "p_value": {"Description": "Two-sided p-value"},
        "p_fdr": {
            "Description": "Benjamini-Hochberg FDR-adjusted p-value across ROIs within each "
            + " x ".join(FDR_FAMILY)
        },
        "ci_low": {"Description": f"Lower bound of the {100 * (1 - ALPHA):g}% CI"},
        "ci_high": {"Description": f"Upper bound of the {100 * (1 - ALPHA):g}% CI"},
        "n": {"Description": "Participants with complete data in this model"},
    } | _permutation_sidecar(config)
    sidecar |= _reliability_sidecar(config, unit)
    return {column: sidecar[column] for column in stats_columns(config)}


def _contrast_description(config: Config) -> str:
    """How participants.tsv's arms map to the group contrast."""
    sides = "; ".join(f"{side} = {', '.join(labels)}" for side, labels in config.contrast)
    text = f"participants.tsv column {config.arm_column!r}: {sides}."
    terms = arm_terms(config)
    if terms:
        text += (
            f" Arm indicators {', '.join(terms)} enter the adjusted models: 1 - share for that "
            "arm, -share for its side's other arms, 0 on the other side (share = the arm's "
            "fraction of its side), so they model arm differences within a side while group "
            "and group:delta_md stay the contrast of the sides"
        )
    return text


def _covariates_description(config: Config) -> str:
    """The covariates of the adjusted models (interaction, pooled, arm_<side>, mixed)."""
    parts = [f"participants.tsv: {', '.join(config.covariates)}"] if config.covariates else []
    if config.qc_covariates:
        parts.append(
            "QC change (follow-up - baseline, from each session's *_desc-qc_metrics.tsv): "
            + ", ".join(f"{QC_COVARIATE_PREFIX}{c}" for c in config.qc_covariates)
        )
    return "; ".join(parts) or "none"


def _permutation_sidecar(config: Config) -> dict:
    """Descriptions of p_perm, p_perm_fdr and p_perm_fwer, with what reproduces them."""
    blocks = config.exchangeability_column
    method = {
        "Method": "Freedman-Lane (Freedman & Lane 1983; Winkler et al. 2014): residuals of the "
        "model without the term permuted; two-sided, on the t of the statistic column "
        "(OLS, or HC3 with --robust-se); p = (1 + #{|t*| >= |t|}) / (permutations + 1)",
        "Permutations": config.permutations,
        "Seed": config.permutation_seed,
        "ExchangeabilityBlocks": (
            f"participants.tsv column {blocks!r}: permutations within each block"
            if blocks
            else "none: all participants exchangeable"
        ),
    }
    family = " x ".join(FDR_FAMILY)
    return {
        P_PERM: {
            "Description": "Permutation p-value of the term (OLS models; n/a for the mixed "
            "model). All fits share each permutation of the participants (restricted to those "
            "a fit uses)",
            **method,
        },
        P_PERM_FDR: {
            "Description": "Benjamini-Hochberg FDR-adjusted p_perm across ROIs within each "
            + family
        },
        P_PERM_FWER: {
            "Description": "Family-wise error adjusted p_perm by max-T across ROIs within each "
            f"{family}: |t| against the permutation distribution of the family's largest |t|"
        },
    }


#: What the corrected slopes are, for the sidecar, summary.md and the report.
SENSITIVITY_NOTE = (
    "Sensitivity analysis, not the primary result: dMD slopes corrected for the attenuation "
    "by dMD measurement error, by regression calibration (Carroll et al. 2006, Measurement "
    "Error in Nonlinear Models; Fuller 1987), from the stated retest reliability of dMD. "
    "Assumes classical error, independent of true dMD, of the scores and of the covariates, "
    "and equal in both arms. The p-values stay those of the observed slopes"
)


def _reliability_sidecar(config: Config, unit: str) -> dict:
    """Descriptions of reliability, estimate_rc and se_rc (issue 14, measurement error)."""
    source = f"--reliability {config.reliability}"
    return {
        RELIABILITY: {
            "Description": "Retest reliability of this ROI's dMD (var(true dMD) / var(measured "
            f"dMD)), from {source}; on the OLS rows of the dMD terms (delta_md, "
            "group:delta_md), n/a elsewhere. " + SENSITIVITY_NOTE,
        },
        ESTIMATE_RC: {
            "Description": "Attenuation-corrected estimate of the dMD term (sensitivity "
            "analysis), in the unit of estimate (points per " + unit + "): method-of-moments "
            "corrected least squares, (D'D - Sigma_uu)^-1 D'y, with the error variance "
            "(1 - reliability) x var(dMD over all analysed participants). With one dMD column "
            "(pooled, arm_<side>) this is estimate / lambda_c, lambda_c the reliability of "
            "dMD conditional on the model's other covariates; in the interaction model "
            "delta_md and group:delta_md are corrected jointly. n/a if the stated error "
            "variance exceeds the variation of dMD left after the covariates",
            "Method": "regression calibration, ketamine_dti/group/measurement_error.py",
        },
        SE_RC: {
            "Description": "Standard error of estimate_rc by the delta method for its "
            "estimating equations (M-estimator sandwich, heteroscedasticity-consistent HC1, "
            "with or without --robust-se), so the correction's own sampling error is included. "
            "Treats the reliability as known: too small when the reliability is itself "
            "uncertain",
        },
    }


def analysis_table_sidecar(table: pd.DataFrame, config: Config, rois: tuple[str, ...]) -> dict:
    """Column descriptions of analysis_table.tsv."""
    unit = delta_md_unit(config.delta_md)
    sidecar: dict = {
        "participant_id": {"Description": "Participant"},
        "group": {
            "Description": "Side of the contrast (--contrast) of the participant's arm",
            "Levels": {
                side: f"{role} side: arms {', '.join(labels)}"
                for (side, labels), role in zip(
                    config.contrast, ("treatment", "control"), strict=True
                )
            },
        },
        "arm": {"Description": f"Arm, from participants.tsv column {config.arm_column!r}"},
    }
    for name in config.covariates:
        sidecar[name] = {"Description": f"Covariate {name}, from participants.tsv"}
    for column in config.qc_covariates:
        sidecar[f"{QC_COVARIATE_PREFIX}{column}"] = {
            "Description": f"QC covariate: {column} at ses-{config.followup_session} - at "
            f"ses-{config.baseline_session}, from the sessions' QC tables"
        }
    for term in arm_terms(config):
        sidecar[term] = {"Description": "Arm indicator centred within its side (stats.json)"}
    sessions = (config.baseline_session, config.followup_session)
    for roi in rois:
        for session in sessions:
            sidecar[f"md_{roi}_{session}"] = {
                "Description": f"Regional MD ({config.md_column}) of {roi} at ses-{session}",
                "Units": "mm^2/s",
            }
        sidecar[f"delta_md_{roi}"] = {
            "Description": f"dMD of {roi}: ses-{sessions[1]} - ses-{sessions[0]}, as analysed",
            "Units": unit,
        }
    for scale in config.scales:
        for session in sessions:
            sidecar[f"{scale}_{session}"] = {
                "Description": f"{scale}_total at ses-{session}",
                "Units": "points",
            }
        sidecar[f"delta_{scale}"] = {
            "Description": f"dScore: {scale} at ses-{sessions[1]} - ses-{sessions[0]}; "
            "negative = improvement",
            "Units": "points",
        }
    return {column: sidecar[column] for column in table.columns}


EXCLUSIONS_SIDECAR = {
    "participant_id": {"Description": "Participant"},
    "session_id": {"Description": "Session concerned, or 'all'"},
    "scale": {"Description": "Scale whose models the participant leaves, or 'all'"},
    "roi": {"Description": "ROI whose models the participant leaves, or 'all'"},
    "models": {
        "Description": "Models the participant leaves: 'all' (those using the named scale/ROI "
        "/session), or 'covariate-adjusted' (interaction, pooled and arm models)"
    },
    "reason": {"Description": "Why"},
}


def exclusions_frame(exclusions: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(exclusions, columns=list(EXCLUSION_COLUMNS))
    return frame.sort_values("participant_id", kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------ summary tables
@dataclass
class SummaryTable:
    """A results table shared by summary.md and the HTML report."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def format_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return f"<{P_FLOOR:g}" if p < P_FLOOR else f"{p:.3f}"


def format_estimate(row: pd.Series) -> str:
    if math.isnan(row.estimate):
        return "n/a"
    return f"{row.estimate:.3g} [{row.ci_low:.3g}, {row.ci_high:.3g}]"


def _slope_cell(row) -> str:
    if row is None or math.isnan(row.estimate):
        return "n/a"
    return f"{row.estimate:.3g} ({format_p(row.p_value)})"


def inestimable_fits(stats: pd.DataFrame) -> pd.DataFrame:
    """The OLS fits left n/a (too few participants with complete data, a singular design, or
    no data at all): one row each, with its scale, ROI, model and n."""
    rows = stats[stats["estimate"].isna() & (stats["model"] != MIXED)]
    fits = rows.drop_duplicates(["scale", "roi", "model"])
    return fits[["model", "scale", "roi", "n"]].reset_index(drop=True)


#: Title of the table listing the fits left n/a (summary.md, the report's verdict).
INESTIMABLE_TITLE = "Fits not estimable (n/a in stats.tsv)"


def _lookup(stats: pd.DataFrame) -> dict[tuple, pd.Series]:
    return {
        (row.scale, row.roi, row.model, row.term): row for row in stats.itertuples(index=False)
    }


def summary_tables(
    stats: pd.DataFrame, config: Config, rois: tuple[str, ...]
) -> list[SummaryTable]:
    """The paper-style results: clinical effect, ROI x scale coupling, MD change by arm."""
    rows = _lookup(stats)
    treatment, control = config.treatment_arm, config.control_arm
    unit = delta_md_unit(config.delta_md)
    tables = []
    clinical = SummaryTable(
        "Clinical effect at follow-up (treatment_score: dScore ~ group + baseline score)",
        ["scale", f"{treatment} - {control} dScore [95% CI]", "p", "n"],
        [],
    )
    for scale in config.scales:
        row = rows.get((scale, "", TREATMENT_SCORE, "group"))
        if row is not None:
            clinical.rows.append([scale, format_estimate(row), format_p(row.p_value), str(row.n)])
    tables.append(clinical)
    for scale in config.scales:
        table = SummaryTable(
            f"{scale}: dScore vs dMD (points per {unit})",
            [
                "ROI",
                "group x dMD [95% CI]",
                "p",
                "FDR p",
                f"slope {treatment} (p)",
                f"slope {control} (p)",
                "pooled slope (p)",
                "n",
            ],
            [],
        )
        for roi in rois:
            inter = rows.get((scale, roi, INTERACTION, "group:delta_md"))
            if inter is None:
                continue
            cells = [roi, format_estimate(inter), format_p(inter.p_value), format_p(inter.p_fdr)]
            for model in (f"arm_{treatment}", f"arm_{control}", POOLED):
                cells.append(_slope_cell(rows.get((scale, roi, model, "delta_md"))))
            cells.append(str(inter.n))
            table.rows.append(cells)
        if config.mixed_model:
            table.notes.append(_mixed_note(rows, scale, rois))
        tables.append(table)
    if config.reliability is not None:
        tables += [_corrected_table(rows, config, rois, scale) for scale in config.scales]
    md_table = SummaryTable(
        f"MD change by arm (treatment_md: dMD ~ group + baseline MD; dMD in {unit})",
        ["ROI", f"{treatment} - {control} dMD [95% CI]", "p", "FDR p", "n"],
        [],
    )
    for roi in rois:
        row = rows.get(("", roi, TREATMENT_MD, "group"))
        if row is not None:
            md_table.rows.append(
                [roi, format_estimate(row), format_p(row.p_value), format_p(row.p_fdr), str(row.n)]
            )
    tables.append(md_table)
    missing = inestimable_fits(stats)
    if not missing.empty:
        tables.append(
            SummaryTable(
                INESTIMABLE_TITLE,
                ["model", "scale", "ROI", "n"],
                [[r.model, r.scale, r.roi, str(r.n)] for r in missing.itertuples()],
                [
                    "Too few participants with complete data for the model's coefficients, or a "
                    "singular design, in this scale x ROI only; the other fits stand (the log "
                    "says why for each). Their FDR and max-T families hold the remaining ROIs."
                ],
            )
        )
    return tables


def _corrected_table(
    rows: dict, config: Config, rois: tuple[str, ...], scale: str
) -> SummaryTable:
    """Observed -> attenuation-corrected dMD slopes of one scale (--reliability)."""
    treatment, control = config.treatment_arm, config.control_arm
    cells_of = {
        "group x dMD": (INTERACTION, "group:delta_md"),
        f"slope {treatment}": (f"arm_{treatment}", "delta_md"),
        f"slope {control}": (f"arm_{control}", "delta_md"),
        "pooled slope": (POOLED, "delta_md"),
    }
    table = SummaryTable(
        f"{scale}: attenuation-corrected dMD slopes (sensitivity analysis; observed -> "
        f"corrected (SE), points per {delta_md_unit(config.delta_md)})",
        ["ROI", "dMD reliability", *cells_of],
        [],
        [f"{SENSITIVITY_NOTE} (--reliability {Path(config.reliability).name})."],
    )
    for roi in rois:
        found = [rows.get((scale, roi, model, term)) for model, term in cells_of.values()]
        if found[0] is None:
            continue
        table.rows.append(
            [roi, f"{getattr(found[0], RELIABILITY):.3g}"]
            + ["n/a" if row is None else _corrected_cell(row) for row in found]
        )
    return table


def _corrected_cell(row) -> str:
    if math.isnan(row.estimate):
        return "n/a"
    corrected = getattr(row, ESTIMATE_RC)
    if corrected is None or math.isnan(corrected):
        return f"{row.estimate:.3g} -> n/a"
    return f"{row.estimate:.3g} -> {corrected:.3g} ({getattr(row, SE_RC):.3g})"


def _mixed_note(rows: dict, scale: str, rois: tuple[str, ...]) -> str:
    parts = []
    for roi in rois:
        row = rows.get((scale, roi, MIXED, "group:md_within"))
        if row is not None:
            parts.append(f"{roi} {row.estimate:.3g} (p {format_p(row.p_value)})")
    return "Mixed-model group x within-participant MD (group:md_within): " + (
        "; ".join(parts) or "not estimable"
    )


def models_line(config: Config) -> str:
    """One line on the models used."""
    contrast = " vs ".join(
        f"{side} ({', '.join(labels)}) = {code}"
        for (side, labels), code in zip(config.contrast, (1, 0), strict=True)
    )
    return (
        f"Models: {_models_description(config)}. MD measure: "
        f"{md_measure_description(config)}. dScore = follow-up - baseline (points, "
        f"negative = improvement); dMD in {delta_md_unit(config.delta_md)}; covariates: "
        f"{_covariates_description(config)}; group = {contrast}"
        + (f", with arm indicators {', '.join(arm_terms(config))}" if arm_terms(config) else "")
        + "; Benjamini-Hochberg FDR across ROIs within each scale x model x term."
        + (
            " Mixed model: MD split into md_within and md_between by person-mean centring."
            if config.mixed_model
            else ""
        )
        + _permutation_line(config)
        + (
            " Attenuation-corrected dMD slopes (estimate_rc, se_rc; regression calibration "
            "from --reliability): a sensitivity analysis."
            if config.reliability is not None
            else ""
        )
    )


def _permutation_line(config: Config) -> str:
    if config.permutations == 0:
        return ""
    blocks = config.exchangeability_column
    return (
        f" Permutation p-values (p_perm in stats.tsv): Freedman-Lane, {config.permutations} "
        f"permutations, seed {config.permutation_seed}"
        + (f", within {blocks} blocks" if blocks else "")
        + ("; max-T FWER across ROIs" if config.fwer == "maxt" else "")
        + "."
    )


def _markdown_table(table: SummaryTable) -> list[str]:
    lines = [f"## {table.title}", ""]
    lines.append("| " + " | ".join(table.headers) + " |")
    lines.append("|" + "---|" * len(table.headers))
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    lines += [""] + [f"{note}" for note in table.notes] + ([""] if table.notes else [])
    return lines


def free_water_table(comparison: pd.DataFrame, config: Config) -> SummaryTable:
    """``group.free_water_check.compare_spreads`` as a results table, with how to read it."""
    table = SummaryTable(
        f"Free-water correction: spread of dMD/MD, {config.md_column} vs "
        f"md_{config.roi_statistic}",
        ["ROI", "SD corrected (%)", "SD plain (%)", "corrected / plain", "r", "n"],
        [],
    )
    for row in comparison.itertuples():
        values = (row.sd_corrected_pct, row.sd_plain_pct, row.sd_ratio, row.r)
        cells = [f"{value:.2f}" if not math.isnan(value) else "n/a" for value in values]
        table.rows.append([row.roi, *cells, str(row.n)])
    table.notes.append(
        "SD over participants of 100 x (follow-up / baseline - 1) under the free-water-corrected "
        "MD analysed and under plain tensor MD, the same participants and ROI tables; r between "
        "the two. Where CSF moved between sessions the correction removes spread (ratio below "
        "1); above 1 it added its own noise (single-shell fits read free water from the b0, "
        "whose coil shading moves with the head; see the participants' model-fwdti sidecars, "
        "FitMethod). Descriptive: nothing is excluded by it."
    )
    return table


def summary_markdown(
    tables: list[SummaryTable], config: Config, n_participants: int, n_exclusions: int
) -> str:
    """summary.md: the results tables plus one line on the models."""
    lines = [
        "# Group results: 24 h gray-matter MD change and symptom change",
        "",
        f"{n_participants} participants ({config.treatment_arm} vs {config.control_arm}); "
        f"{n_exclusions} exclusion(s) listed in exclusions.tsv. Per-model n in stats.tsv.",
        "",
        models_line(config),
        "",
    ]
    for table in tables:
        lines += _markdown_table(table)
    return "\n".join(lines).rstrip() + "\n"
