#!/usr/bin/env python
"""Analysis: where the App's MD departs from the truth inside its ROIs, by distortion Jacobian.

Reads a finished ``bench_sdc.py`` run (``--sdc auto`` derivatives and the simulator's truth):
for every voxel of the App's ROIs (``atlas-ketamine7_desc-graymatter_dseg`` on the DWI grid) the
App's MD over the true MD of the same voxel, binned by the Jacobian J = 1 + d(shift)/d(PE) of the
applied displacement (J < 1: the acquired image squeezed the span into fewer voxels). No
pipeline is run.

Usage::

    python benchmarks/tuning/sdc_jacobian_bias.py RUN_DIR [--rois 1 2] [--out-name out_sdc_auto]

Session 18's reading: ``benchmarks/results/sdc_session18.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

SESSIONS = ("baseline", "24h")
BINS = ((0.0, 0.85), (0.85, 0.95), (0.95, 1.05), (1.05, 1.15), (1.15, np.inf))


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).get_fdata())


def ratios_and_jacobians(run: Path, out_name: str, labels: list[int]):
    """(MD / true MD - 1, J) over the ROI voxels of every session in the run."""
    out = run / out_name
    ratios, jacobians = [], []
    for subject in sorted(p.name for p in out.glob("sub-*") if p.is_dir()):
        for session in SESSIONS:
            dwi = out / subject / f"ses-{session}" / "dwi"
            stem = f"{subject}_ses-{session}_space-dwi_"
            truth_dir = run / "bids/sourcedata/ground_truth" / subject / f"ses-{session}"
            if not (dwi / f"{stem}model-sdc_param-displacement_dwimap.nii.gz").exists():
                continue
            md = _load(dwi / f"{stem}model-tensor_param-md_dwimap.nii.gz")
            truth = _load(truth_dir / f"{stem}desc-truth_md.nii.gz")
            image = nib.load(dwi / f"{stem}model-sdc_param-displacement_dwimap.nii.gz")
            pe_axis = 1  # the simulator's PE axis (j / j-), along which the displacement runs
            shift = image.get_fdata() / image.header.get_zooms()[pe_axis]
            jacobian = 1.0 + np.gradient(shift, axis=pe_axis)
            labels_map = np.rint(_load(dwi / f"{stem}atlas-ketamine7_desc-graymatter_dseg.nii.gz"))
            inside = np.isin(labels_map, labels) & (truth > 0)
            ratios.append(md[inside] / truth[inside] - 1.0)
            jacobians.append(jacobian[inside])
    return np.concatenate(ratios), np.concatenate(jacobians)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rois", type=int, nargs="+", default=[1, 2], help="labels (BA10)")
    parser.add_argument("--out-name", default="out_sdc_auto")
    args = parser.parse_args(argv)
    ratio, jacobian = ratios_and_jacobians(args.run_dir, args.out_name, args.rois)
    print(f"{ratio.size} voxels, median MD / true MD - 1 = {100 * np.median(ratio):+.2f}%")
    print("| J | voxels | median MD / true MD - 1 |\n|---|---|---|")
    for low, high in BINS:
        chosen = (jacobian >= low) & (jacobian < high)
        value = f"{100 * np.median(ratio[chosen]):+.1f}%" if chosen.any() else "n/a"
        print(f"| {low:g}-{high:g} | {int(chosen.sum()):,} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
