"""What the participant and group reports share: one Jinja environment (every string from a
dataset escaped), the verdict words, the methods text as HTML, and the software versions.

Both pages extend ``templates/base.html`` (navigation bar, summary with the verdict, errors,
methods, software), as fMRIPrep's and QSIPrep's reports put the verdict first and the
boilerplate last.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata

import jinja2
from markupsafe import Markup, escape

from ketamine_dti import __version__

#: The verdict of a page, worst first; the CSS class of each is ``verdict-<word>``.
PASSED, WARNINGS, FAILED = "passed", "warnings", "failed"
#: A session's qc_verdict (qc.PASS/WARN/FAIL) as the verdict of a page.
FROM_QC_VERDICT = {"pass": PASSED, "warn": WARNINGS, "fail": FAILED}

#: Distributions whose versions a reviewer needs to reproduce the numbers (import names differ).
SOFTWARE = (
    "nipype",
    "dipy",
    "antspyx",
    "nibabel",
    "numpy",
    "scipy",
    "numba",
    "pybids",
    "templateflow",
    "pandas",
    "statsmodels",
    "matplotlib",
)


@dataclass
class Section:
    """One entry of the navigation bar: the anchor of a ``<section>`` and its title."""

    anchor: str
    title: str


@dataclass
class Verdict:
    """A page's verdict and the reasons behind it (plain text, escaped when rendered)."""

    word: str
    reasons: list[str] = field(default_factory=list)


def worst(words) -> str:
    """The worst of several verdict words (PASSED when there are none)."""
    order = (PASSED, WARNINGS, FAILED)
    return max(words, key=order.index, default=PASSED)


def anchor(text: str) -> str:
    """An HTML id from any text (labels, ROI names): lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "section"


@cache
def environment() -> jinja2.Environment:
    """The reports' templates, autoescaped: labels, metadata and file names from a dataset
    appear as text, never as markup. Pre-rendered HTML (tables) is passed as ``Markup``."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ketamine_dti.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["anchor"] = anchor
    return env


def render(template: str, **context) -> str:
    """One page, with the software versions every page lists."""
    return environment().get_template(template).render(software=software_versions(), **context)


def table_html(frame, **to_html) -> Markup:
    """A DataFrame as an HTML table; pandas escapes the cells, so the result is safe markup."""
    return Markup(frame.to_html(escape=True, border=0, na_rep="n/a", **to_html))


@cache
def software_versions() -> tuple[tuple[str, str], ...]:
    """(name, version) of ketamine-dti, Python and the scientific stack that ran."""
    found = [("ketamine-dti", __version__), ("Python", platform.python_version())]
    for name in SOFTWARE:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            found.append((name, "not installed"))
    return tuple(found)


def methods_html(markdown: str) -> Markup:
    """The methods boilerplate (``methods_text``'s Markdown: headings, paragraphs and a
    bulleted reference list) as HTML; its text is escaped."""
    blocks = []
    for block in re.split(r"\n\s*\n", markdown.strip()):
        lines = block.splitlines()
        heading = re.match(r"(#+)\s+(.*)", lines[0])
        if heading:
            level = min(len(heading.group(1)) + 2, 6)
            blocks.append(f"<h{level}>{escape(heading.group(2))}</h{level}>")
            lines = lines[1:]
        items = [line[2:] for line in lines if line.startswith("- ")]
        if items and len(items) == len(lines):
            blocks.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>")
        elif lines:
            blocks.append(f"<p>{escape(' '.join(lines))}</p>")
    return Markup("\n".join(blocks))
