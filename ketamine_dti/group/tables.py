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
from ketamine_dti.group.changes import MD_REPORT_UNIT, delta_md_unit
from ketamine_dti.group.models import (
    ALPHA,
    INTERACTION,
    MIXED,
    POOLED,
    TREATMENT_MD,
    TREATMENT_SCORE,
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
#: p-values below this print as "<0.001".
P_FLOOR = 0.001


def stats_columns(config: Config) -> tuple[str, ...]:
    """The columns of this run's stats.tsv: STATS_COLUMNS, then the permutation p-values
    asked for (none with ``--permutations 0``: no column rather than a column of n/a)."""
    if config.permutations == 0:
        return STATS_COLUMNS
    added = PERMUTATION_COLUMNS if config.fwer == "maxt" else PERMUTATION_COLUMNS[:2]
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
                f"arm_{config.treatment_arm}": "delta_score ~ delta_md + baseline_score "
                f"[+ covariates], {config.treatment_arm} arm only",
                f"arm_{config.control_arm}": "delta_score ~ delta_md + baseline_score "
                f"[+ covariates], {config.control_arm} arm only",
                TREATMENT_MD: "delta_md ~ group + baseline_md",
                TREATMENT_SCORE: "delta_score ~ group + baseline_score",
                MIXED: "score ~ session * group * md [+ covariates] + (1 | participant); "
                "session 0 = baseline, 1 = follow-up; md centred on the ROI mean",
            },
        },
        "term": {
            "Description": "Model term. group: treatment arm "
            f"({config.treatment_arm}) = 1 vs control ({config.control_arm}) = 0, so a positive "
            "group:delta_md means a steeper dScore-dMD slope in the treatment arm; covariates "
            "by name, categorical ones as name[T.level] against the first level",
        },
        "estimate": {
            "Description": "Coefficient. dScore in points (follow-up - baseline, negative = "
            f"improvement); delta_md in {unit}; baseline_md and md in {MD_REPORT_UNIT:g} "
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
    return {column: sidecar[column] for column in stats_columns(config)}


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


def analysis_table_sidecar(table: pd.DataFrame, config: Config, rois: tuple[str, ...]) -> dict:
    """Column descriptions of analysis_table.tsv."""
    unit = delta_md_unit(config.delta_md)
    sidecar: dict = {
        "participant_id": {"Description": "Participant"},
        "group": {
            "Description": f"Arm, from participants.tsv column {config.group_column!r}",
            "Levels": {config.treatment_arm: "treatment arm", config.control_arm: "control arm"},
        },
    }
    for name in config.covariates:
        sidecar[name] = {"Description": f"Covariate {name}, from participants.tsv"}
    sessions = (config.baseline_session, config.followup_session)
    for roi in rois:
        for session in sessions:
            sidecar[f"md_{roi}_{session}"] = {
                "Description": f"Mean MD (md_mean) of {roi} at ses-{session}",
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
    return f"{row.estimate:.3g} [{row.ci_low:.3g}, {row.ci_high:.3g}]"


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
                slope = rows.get((scale, roi, model, "delta_md"))
                cells.append(
                    "n/a" if slope is None else f"{slope.estimate:.3g} ({format_p(slope.p_value)})"
                )
            cells.append(str(inter.n))
            table.rows.append(cells)
        if config.mixed_model:
            table.notes.append(_mixed_note(rows, scale, rois))
        tables.append(table)
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
    return tables


def _mixed_note(rows: dict, scale: str, rois: tuple[str, ...]) -> str:
    parts = []
    for roi in rois:
        row = rows.get((scale, roi, MIXED, "session:group:md"))
        if row is not None:
            parts.append(f"{roi} {row.estimate:.3g} (p {format_p(row.p_value)})")
    return "Mixed-model session x group x MD: " + ("; ".join(parts) or "not estimable")


def models_line(config: Config) -> str:
    """One line on the models used."""
    covs = ", ".join(config.covariates) or "none"
    return (
        f"Models: {_models_description(config)}. dScore = follow-up - baseline (points, negative "
        f"= improvement); dMD in {delta_md_unit(config.delta_md)}; covariates: {covs}; "
        f"group = {config.treatment_arm} (1) vs {config.control_arm} (0); Benjamini-Hochberg FDR "
        "across ROIs within each scale x model x term." + _permutation_line(config)
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
