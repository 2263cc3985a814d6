"""Nipype's crash files (``sub-<label>/log/crash-*.txt``): which step failed, and why.

Read by the run (a participant's failure reason) and by its report (the errors section).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CrashFile:
    path: Path
    mtime: float
    node: str  # the step that failed
    error: str  # its last exception line, or "" when the file has none


def read_crash_files(log_dir: Path, since: float = 0.0) -> list[CrashFile]:
    """The crash files of ``log_dir`` written at or after ``since``, newest first."""
    found = []
    for path in Path(log_dir).glob("crash-*"):
        mtime = path.stat().st_mtime
        if mtime < since:
            continue
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
        errors = [line for line in lines if "Error:" in line or "Exception:" in line]
        # crash-<date>-<time>-<user>-<node>-<uuid with 4 dashes>.txt
        node = "-".join(path.name.split("-")[4:-5]) or path.name
        found.append(CrashFile(path, mtime, node, errors[-1] if errors else ""))
    return sorted(found, key=lambda crash: crash.mtime, reverse=True)
