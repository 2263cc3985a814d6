"""The group report in headless Chromium: it loads without console errors, every image decodes,
every internal link resolves, a screenshot can be taken, and dataset strings stay text.

The participant reports (which need a participant run) are opened the same way by
``test_participant_integration.py::test_every_report_opens_in_a_browser``.
"""

from __future__ import annotations

import base64
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from browser import Browser, chromium

from ketamine_dti.config import Config
from ketamine_dti.group import run_group_level

pytestmark = pytest.mark.skipif(
    chromium() is None, reason="Chromium is not installed (scripts/test.sh installs it as root)"
)

#: An arm label that would run script if the page did not escape dataset strings.
PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">ket'


def _rename_arm(participants_tsv: Path, old: str, new: str) -> None:
    lines = participants_tsv.read_text().splitlines()
    header = lines[0].split("\t")
    column = header.index("group")
    for i, line in enumerate(lines[1:], start=1):
        cells = line.split("\t")
        if cells[column] == old:
            cells[column] = new
        lines[i] = "\t".join(cells)
    participants_tsv.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def browser():
    with Browser(chromium()) as opened:
        yield opened


@pytest.fixture
def hostile_report(group_trial: Config) -> Path:
    """The group report of a trial whose treatment arm is labelled with markup and script."""
    _rename_arm(group_trial.bids_dir / "participants.tsv", "ketamine", PAYLOAD)
    config = replace(group_trial, contrast=((PAYLOAD, (PAYLOAD,)), ("saline", ("saline",))))
    return run_group_level(config) / "group_report.html"


def test_group_report_opens_cleanly_and_dataset_strings_stay_text(browser, hostile_report):
    html = hostile_report.read_text()
    assert PAYLOAD not in html and "&lt;script&gt;window.__pwned=1" in html
    check = browser.inspect_page(
        hostile_report, {"pwned": "window.__pwned === undefined ? null : window.__pwned"}
    )
    assert check.problems == []
    assert check.evaluated["pwned"] is None, "markup from participants.tsv ran as script"
    assert PAYLOAD in check.text  # shown to the reader as the label it is
    figures = list((hostile_report.parent / "figures").glob("*.png"))
    assert check.n_images == len(figures) > 0
    assert check.n_links >= 5  # the navigation bar
    for word in ("Summary", "Exclusions", "Figures", "Methods", "Software", "Benjamini"):
        assert word in check.text
    assert check.screenshot[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_check_fails_on_a_broken_copy(browser, group_trial: Config, tmp_path: Path):
    """The same check on a copy with a corrupted image, a dangling anchor, a link to a missing
    file and a script error finds each of them."""
    report = run_group_level(group_trial) / "group_report.html"
    html = report.read_text()
    first_png = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]{40})", html)
    broken = html.replace(first_png.group(1), base64.b64encode(b"not a png" * 4).decode()[:40])
    broken = broken.replace(
        "</main>",
        '<a href="#no-such-section">x</a><a href="../sub-none.html">y</a>'
        "<script>undefinedFunction()</script></main>",
    )
    copy = tmp_path / "broken.html"
    copy.write_text(broken)
    shutil.copytree(report.parent / "figures", tmp_path / "figures")
    check = browser.inspect_page(copy)
    assert len(check.broken_images) == 1
    assert check.broken_links == ["#no-such-section", "../sub-none.html"]
    assert any("undefinedFunction" in error for error in check.console_errors)
    # and the original passes the same check
    assert browser.inspect_page(report).problems == []
