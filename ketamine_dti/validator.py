"""The official BIDS validator (bids-validator-deno), run offline, read as structured results.

Used by the CLI on BIDS_DIR and by tests on the simulator's data and on our derivatives.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

LOGGER = logging.getLogger(__name__)

EXECUTABLE = "bids-validator-deno"


@dataclass(frozen=True)
class ValidationIssue:
    code: str
    severity: str  # "error" or "warning"
    location: str
    message: str = ""


@dataclass(frozen=True)
class ValidationResult:
    issues: tuple[ValidationIssue, ...]

    @property
    def errors(self) -> list[ValidationIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[ValidationIssue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self, severity: str = "error", limit: int = 5) -> str:
        """One line per issue code, most frequent first, with an example location."""
        chosen = [i for i in self.issues if i.severity == severity]
        counts = Counter(i.code for i in chosen)
        lines = []
        for code, n in counts.most_common(limit):
            example = next(i for i in chosen if i.code == code)
            lines.append(f"{code} x{n} (e.g. {example.location})")
        return "; ".join(lines)


def find_validator() -> str | None:
    """Path of the validator: next to this Python first (a venv), then on PATH."""
    beside = Path(sys.executable).parent / EXECUTABLE
    if beside.exists():
        return str(beside)
    return shutil.which(EXECUTABLE)


def validate(dataset: Path, dataset_types: tuple[str, ...] = ()) -> ValidationResult:
    """Run the validator on ``dataset``; raise RuntimeError if it cannot run at all."""
    exe = find_validator()
    if exe is None:
        raise RuntimeError(
            f"{EXECUTABLE} not found; install it with 'pip install bids-validator-deno' "
            "or pass --skip-bids-validation"
        )
    cmd = [exe, "--format", "json", "--no-color"]
    for dtype in dataset_types:
        cmd += ["--datasetTypes", dtype]
    cmd.append(str(dataset))
    LOGGER.debug("Running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as err:
        raise RuntimeError(
            f"{EXECUTABLE} gave no JSON report (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[:300]}"
        ) from err
    issues = tuple(
        ValidationIssue(
            code=item.get("code", "?"),
            severity=item.get("severity", "error"),
            location=item.get("location", ""),
            message=(item.get("issueMessage") or item.get("subCode") or "").strip(),
        )
        for item in report.get("issues", {}).get("issues", [])
    )
    return ValidationResult(issues)
