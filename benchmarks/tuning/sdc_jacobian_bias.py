#!/usr/bin/env python
"""Analysis: where the App's MD departs from the truth inside its ROIs, by distortion Jacobian.

Reads a finished ``bench_sdc.py`` run (``--sdc auto`` derivatives and the simulator's truth):
for every voxel of the App's ROIs (``atlas-ketamine7_desc-graymatter_dseg`` on the DWI grid) the
App's MD over the true MD of the same voxel, binned by the Jacobian J = 1 + d(shift)/d(PE) of the
applied displacement (J < 1: the acquired image squeezed the span into fewer voxels). Then, per
ROI, what leaving the voxels with J below ``--drop-below`` out would do: the median over sessions
of |unweighted voxel mean / true region MD - 1| and the SD of the session-to-session change of
that ratio, with all voxels and without those. No pipeline is run.

Usage::

    python benchmarks/tuning/sdc_jacobian_bias.py RUN_DIR [--rois 1 2] [--out-name out_sdc_auto]
        [--drop-below 0.9]

Session 18's reading: ``benchmarks/results/sdc_session18.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ketamine_dti.simulate.clinical import SESSIONS

BINS = ((0.0, 0.85), (0.85, 0.95), (0.95, 1.05), (1.05, 1.15), (1.15, np.inf))


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).get_fdata())


def sessions(run: Path, out_name: str):
    """Per session with a displacement map: (subject, session, App MD, true MD, J, labels)."""
    out = run / out_name
    for subject in sorted(p.name for p in out.glob("sub-*") if p.is_dir()):
        for session in SESSIONS:
            dwi = out / subject / f"ses-{session}" / "dwi"
            stem = f"{subject}_ses-{session}_space-dwi_"
            truth_dir = run / "bids/sourcedata/ground_truth" / subject / f"ses-{session}"
            if not (dwi / f"{stem}model-sdc_param-displacement_dwimap.nii.gz").exists():
                continue
            image = nib.load(dwi / f"{stem}model-sdc_param-displacement_dwimap.nii.gz")
            pe_axis = 1  # the simulator's PE axis (j / j-), along which the displacement runs
            shift = image.get_fdata() / image.header.get_zooms()[pe_axis]
            yield (
                subject,
                session,
                _load(dwi / f"{stem}model-tensor_param-md_dwimap.nii.gz"),
                _load(truth_dir / f"{stem}desc-truth_md.nii.gz"),
                1.0 + np.gradient(shift, axis=pe_axis),
                np.rint(_load(dwi / f"{stem}atlas-ketamine7_desc-graymatter_dseg.nii.gz")),
            )


def ratios_and_jacobians(run: Path, out_name: str, labels: list[int]):
    """(MD / true MD - 1, J) over the ROI voxels of every session in the run."""
    ratios, jacobians = [], []
    for _, _, md, truth, jacobian, labels_map in sessions(run, out_name):
        inside = np.isin(labels_map, labels) & (truth > 0)
        ratios.append(md[inside] / truth[inside] - 1.0)
        jacobians.append(jacobian[inside])
    return np.concatenate(ratios), np.concatenate(jacobians)


def dropping(run: Path, out_name: str, threshold: float) -> pd.DataFrame:
    """Per ROI: median |voxel mean / md_true - 1| and SD of its change, all voxels and without
    those with J < threshold."""
    truth = pd.read_csv(run / "bids/sourcedata/ground_truth/roi_md.tsv", sep="\t")
    names = pd.read_csv(run / "bids/sourcedata/ground_truth/desc-truth_dseg.tsv", sep="\t")
    truth = truth.set_index(["participant_id", "session_id", "roi"])["md_true"]
    rows = []
    for subject, session, md, _, jacobian, labels_map in sessions(run, out_name):
        for label, name in zip(names["index"], names["name"], strict=True):
            inside = labels_map == label
            true = truth[(subject, f"ses-{session}", name)]
            rows.append({
                "subject": subject, "session": session, "roi": name,
                "all": md[inside].mean() / true - 1.0,
                "kept": md[inside & (jacobian >= threshold)].mean() / true - 1.0,
                "dropped_fraction": float((inside & (jacobian < threshold)).sum() / inside.sum()),
            })  # fmt: skip
    frame = pd.DataFrame(rows)
    wide = frame.pivot_table(index=["subject", "roi"], columns="session", values=["all", "kept"])
    change = {
        c: (1 + wide[(c, SESSIONS[1])]) / (1 + wide[(c, SESSIONS[0])]) - 1 for c in ("all", "kept")
    }
    by_roi = frame.groupby("roi")
    return pd.DataFrame({
        "error_all": by_roi["all"].apply(lambda x: x.abs().median()),
        "error_kept": by_roi["kept"].apply(lambda x: x.abs().median()),
        "dropped": by_roi["dropped_fraction"].median(),
        "retest_sd_all": change["all"].groupby(level="roi").std(ddof=1),
        "retest_sd_kept": change["kept"].groupby(level="roi").std(ddof=1),
    })  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rois", type=int, nargs="+", default=[1, 2], help="labels (BA10)")
    parser.add_argument("--out-name", default="out_sdc_auto")
    parser.add_argument("--drop-below", type=float, default=0.9)
    args = parser.parse_args(argv)
    ratio, jacobian = ratios_and_jacobians(args.run_dir, args.out_name, args.rois)
    print(f"{ratio.size} voxels, median MD / true MD - 1 = {100 * np.median(ratio):+.2f}%")
    print("| J | voxels | median MD / true MD - 1 |\n|---|---|---|")
    for low, high in BINS:
        chosen = (jacobian >= low) & (jacobian < high)
        value = f"{100 * np.median(ratio[chosen]):+.1f}%" if chosen.any() else "n/a"
        print(f"| {low:g}-{high:g} | {int(chosen.sum()):,} | {value} |")
    table = dropping(args.run_dir, args.out_name, args.drop_below)
    print(f"\nLeaving out J < {args.drop_below:g} (%):")
    print((100 * table).round(2).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
