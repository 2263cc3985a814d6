"""group_report.html: one self-contained page (figures embedded as base64) with the summary."""

from __future__ import annotations

import base64
import logging
from functools import cache
from pathlib import Path

import jinja2

from ketamine_dti import __version__
from ketamine_dti.group.tables import SummaryTable

LOGGER = logging.getLogger(__name__)

TEMPLATE = "group_report.html"


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("ketamine_dti.reports", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def write_report(
    path: Path,
    tables: list[SummaryTable],
    intro: str,
    models_line: str,
    n_exclusions: int,
    figures: list[tuple[Path, str]],
) -> Path:
    """Render the report; each PNG is read and embedded, so the page stands alone."""
    embedded = [
        {
            "data": base64.b64encode(path.read_bytes()).decode("ascii"),
            "caption": caption,
        }
        for path, caption in figures
    ]
    html = (
        _environment()
        .get_template(TEMPLATE)
        .render(
            tables=tables,
            intro=intro,
            models_line=models_line,
            n_exclusions=n_exclusions,
            figures=embedded,
            version=__version__,
        )
    )
    path.write_text(html, encoding="utf-8")
    return path
