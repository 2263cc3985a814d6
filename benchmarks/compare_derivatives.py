#!/usr/bin/env python
"""Two runs' derivatives of one participant, file by file: identical or not, sizes, and for
images that differ the stored type and the largest difference of the values read back.

Shows that a storage or speed change moved no value beyond its rounding (issue 16).

Usage::

    python benchmarks/compare_derivatives.py OLD/sub-001 NEW/sub-001 [--markdown OUT.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np


def compare(old: Path, new: Path) -> dict:
    """Per-file rows for the files of both folders, and the totals (MB)."""
    files = sorted({p.relative_to(old) for p in old.rglob("*") if p.is_file()}
                   | {p.relative_to(new) for p in new.rglob("*") if p.is_file()})  # fmt: skip
    rows, identical = [], 0
    for name in files:
        a, b = old / name, new / name
        if not (a.exists() and b.exists()):
            rows.append({"file": str(name), "status": "only old" if a.exists() else "only new"})
            continue
        if a.read_bytes() == b.read_bytes():
            identical += 1
            continue
        row = {"file": str(name), "status": "differs",
               "old_mb": a.stat().st_size / 1e6, "new_mb": b.stat().st_size / 1e6}  # fmt: skip
        if str(name).endswith((".nii", ".nii.gz")):
            before, after = nib.load(a), nib.load(b)
            x, y = before.get_fdata(), after.get_fdata()
            finite = np.isfinite(x) & np.isfinite(y)
            row |= {
                "old_type": str(before.get_data_dtype()),
                "new_type": str(after.get_data_dtype()),
                "max_abs_difference": float(np.abs(x - y)[finite].max(initial=0.0)),
                "peak": float(np.abs(x[finite]).max(initial=0.0)),
            }
        rows.append(row)
    return {
        "rows": rows,
        "identical": identical,
        "old_mb": sum(p.stat().st_size for p in old.rglob("*") if p.is_file()) / 1e6,
        "new_mb": sum(p.stat().st_size for p in new.rglob("*") if p.is_file()) / 1e6,
    }


def markdown(result: dict) -> str:
    lines = [
        f"Files identical: {result['identical']}; total {result['old_mb']:.1f} MB -> "
        f"{result['new_mb']:.1f} MB.",
        "",
        "| file | type | MB | largest difference (of peak) |",
        "|---|---|---|---|",
    ]
    for row in result["rows"]:
        if row["status"] != "differs" or "old_type" not in row:
            lines.append(f"| {row['file']} | {row['status']} | | |")
            continue
        lines.append(
            f"| {row['file']} | {row['old_type']} -> {row['new_type']} | "
            f"{row['old_mb']:.1f} -> {row['new_mb']:.1f} | "
            f"{row['max_abs_difference']:.3g} (of {row['peak']:.3g}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    text = markdown(compare(args.old, args.new))
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
