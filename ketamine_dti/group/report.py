"""group_report.html: one page (figures embedded as base64) with the verdict, the exclusions,
the results tables, the figures, the methods with references and the software versions."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pandas as pd

from ketamine_dti import __version__
from ketamine_dti.config import Config
from ketamine_dti.group.models import ALPHA, INTERACTION
from ketamine_dti.group.tables import (
    INESTIMABLE_TITLE,
    SummaryTable,
    format_p,
    inestimable_fits,
)
from ketamine_dti.reports.render import (
    PASSED,
    WARNINGS,
    Section,
    Verdict,
    anchor,
    render,
)

LOGGER = logging.getLogger(__name__)

TEMPLATE = "group_report.html"

#: The group methods' references, each cited only when its method ran (``references``).
REFERENCES = {
    "statsmodels": "Seabold S., Perktold J. (2010) statsmodels: econometric and statistical "
    "modeling with Python. Proceedings of the 9th Python in Science Conference.",
    "fdr": "Benjamini Y., Hochberg Y. (1995) Controlling the false discovery rate: a practical "
    "and powerful approach to multiple testing. J R Stat Soc B 57:289-300.",
    "hc3": "MacKinnon J.G., White H. (1985) Some heteroskedasticity-consistent covariance "
    "matrix estimators with improved finite sample properties. J Econometrics 29:305-25.",
    "permutation": "Freedman D., Lane D. (1983) A nonstochastic interpretation of reported "
    "significance levels. J Bus Econ Stat 1:292-8.",
    "design": "Kopelman et al. (2023), Translational Psychiatry: the randomized ketamine versus "
    "saline trial whose analysis (group x dMD interactions per ROI) this follows.",
}


def references(config: Config) -> list[str]:
    """The references of the methods this run used."""
    used = ["statsmodels", "fdr", "design"]
    used += ["hc3"] if config.robust_se else []
    used += ["permutation"] if config.permutations else []
    return [text for key, text in REFERENCES.items() if key in used]


def interaction_findings(stats: pd.DataFrame) -> tuple[list[str], int]:
    """The group x dMD interactions significant after FDR, as text, and how many were tested."""
    rows = stats[(stats.model == INTERACTION) & (stats.term == "group:delta_md")]
    rows = rows[rows.p_value.notna()]  # fits left n/a were not tests
    found = rows[rows.p_fdr < ALPHA].sort_values("p_fdr")
    return [
        f"{r.roi}, {r.scale}: {r.estimate:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}], "
        f"FDR p = {format_p(r.p_fdr)}"
        for r in found.itertuples()
    ], len(rows)


def group_verdict(exclusions: pd.DataFrame, stats: pd.DataFrame) -> Verdict:
    """Passed when every participant entered every model and every fit could be made;
    warnings (with counts per reason) when some participants were left out or some fits are
    n/a. A group run that cannot fit a model at all stops with an error and writes no report."""
    reasons = []
    whole = exclusions[exclusions["roi"].fillna("").eq("") & exclusions["scale"].fillna("").eq("")]
    if not whole.empty:
        reasons.append(
            f"{whole['participant_id'].nunique()} participant(s) left out of every model "
            "(see Exclusions)"
        )
    partial = exclusions.drop(whole.index)
    if not partial.empty:
        reasons.append(
            f"{len(partial)} exclusion(s) from single ROIs or scales in "
            f"{partial['participant_id'].nunique()} participant(s) (see Exclusions)"
        )
    missing = inestimable_fits(stats)
    if not missing.empty:
        reasons.append(f"{len(missing)} fit(s) not estimable (see {INESTIMABLE_TITLE})")
    return Verdict(WARNINGS, reasons) if reasons else Verdict(PASSED)


def _exclusion_rows(exclusions: pd.DataFrame, output_dir: Path) -> list[dict]:
    """The exclusions as rows, each linked to its participant's report when one exists."""
    rows = []
    for row in exclusions.fillna("").itertuples(index=False):
        report = output_dir / f"{row.participant_id}.html"
        rows.append(
            {
                "participant": row.participant_id,
                "href": f"../{report.name}" if report.exists() else None,
                "where": " ".join(str(v) for v in (row.session_id, row.scale, row.roi) if v),
                "models": row.models,
                "reason": row.reason,
            }
        )
    return rows


def write_report(
    path: Path,
    tables: list[SummaryTable],
    stats: pd.DataFrame,
    intro: str,
    models_line: str,
    exclusions: pd.DataFrame,
    figures: list[tuple[Path, str]],
    config: Config,
) -> Path:
    """Render the report into ``path`` (a file of ``OUTPUT_DIR/group``); each PNG is read and
    embedded, so the page stands alone but for its links to participants' reports."""
    embedded = [
        {"data": base64.b64encode(png.read_bytes()).decode("ascii"), "caption": caption}
        for png, caption in figures
    ]
    sections = [Section("summary", "Summary"), Section("errors", "Exclusions")]
    sections += [Section(f"table-{anchor(t.title)}", t.title.split(" (")[0]) for t in tables]
    sections += [Section("figures", "Figures")] if embedded else []
    sections += [Section("methods", "Methods"), Section("software", "Software")]
    findings, n_tests = interaction_findings(stats)
    html = render(
        TEMPLATE,
        findings=findings,
        n_tests=n_tests,
        alpha=ALPHA,
        verdict=group_verdict(exclusions, stats),
        sections=sections,
        tables=tables,
        intro=intro,
        models_line=models_line,
        exclusions=_exclusion_rows(exclusions, Path(config.output_dir)),
        figures=embedded,
        references=references(config),
        version=__version__,
    )
    path.write_text(html, encoding="utf-8")
    return path
