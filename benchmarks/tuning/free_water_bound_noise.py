#!/usr/bin/env python
"""Analysis: what the single-shell f >= 0 bound did to dMD, on a finished run.

Why: after f was let below 0 (``SINGLE_SHELL_MIN_F``) the held-out paper trial's
free-water-corrected dMD tracked the true dMD less well (r 0.876 -> 0.779) while its level and
its response to CSF improved. The suspicion: with the bound, a third of the voxels sat at f = 0,
where their tissue MD is close to plain MD and does not carry the b0 prior's noise. This refits
each session of a finished ``bench_participant.py`` run twice, with the App's own b0 references
(the sidecar's ``SingleShellPrior``) and f's floor at -0.5 (the App) and at 0 (the old bound),
and compares plain voxel means over the App's kept voxels (``desc-graymatter_dseg``) against
``roi_md.tsv``. It explains; nothing is chosen from it.

Usage::

    python benchmarks/tuning/free_water_bound_noise.py ROOT --scenario paper
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS))
sys.path.insert(0, str(BENCHMARKS / "tuning"))
from bench_participant import SESSIONS  # noqa: E402
from free_water_b0_change import one_file, published_fit_inputs  # noqa: E402

FLOORS = {"free": None, "bound_at_0": 0.0}


def session_means(dwi_dir: Path) -> dict:
    """Per ROI label, the plain voxel mean of tissue MD and f under each floor, and plain MD."""
    from ketamine_dti.dwi import free_water

    inputs = published_fit_inputs(dwi_dir)
    md, prior = inputs["md"], inputs["prior"]
    labels = np.asarray(nib.load(one_file(dwi_dir, "*desc-graymatter_dseg.nii.gz")).dataobj)
    fits = {
        name: free_water.fit_free_water(
            inputs["data"],
            inputs["bvals"],
            inputs["bvecs"],
            mask=inputs["mask"],
            s0_tissue=prior["B0ReferenceTissue"],
            s0_water=prior["B0ReferenceWater"],
            dti_md=md,
            dti_fa=inputs["fa"],
            voxel_mm=inputs["image"].header.get_zooms()[:3],
            min_f=free_water.SINGLE_SHELL_MIN_F if floor is None else floor,
        )
        for name, floor in FLOORS.items()
    }
    out = {}
    for label in np.unique(labels[labels > 0]):
        inside = labels == label
        row = {"plain": float(np.nanmean(md[inside]))}
        for name, fit in fits.items():
            row[name] = float(np.nanmean(fit.md[inside]))
            row[f"{name}_f"] = float(np.nanmean(fit.f_water[inside]))
            row[f"{name}_at_0"] = float(np.mean(np.abs(fit.f_water[inside]) < 1e-3))
        out[int(label)] = row
    return out


def main(argv=None) -> int:
    from ketamine_dti.rois import ROI_NAMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--scenario", default="paper")
    args = parser.parse_args(argv)
    bids = args.root / f"{args.scenario}_bids"
    out = args.root / f"{args.scenario}_longitudinal_out"
    truth = pd.read_csv(bids / "sourcedata/ground_truth/roi_md.tsv", sep="\t")
    rows = []
    for dwi_dir in sorted(out.glob("sub-*/ses-*/dwi")):
        subject, session = dwi_dir.parents[1].name, dwi_dir.parent.name
        for label, values in session_means(dwi_dir).items():
            rows.append({"participant_id": subject, "session_id": session,
                         "roi": ROI_NAMES[label - 1]} | values)  # fmt: skip
        print(subject, session, flush=True)
    table = pd.DataFrame(rows).merge(truth, on=["participant_id", "session_id", "roi"])
    summary = {}
    for name in ("plain", *FLOORS):
        wide = table.pivot_table(index=["participant_id", "roi"], columns="session_id",
                                 values=[name, "md_true"])  # fmt: skip
        first, second = f"ses-{SESSIONS[0]}", f"ses-{SESSIONS[1]}"
        measured = wide[(name, second)] / wide[(name, first)] - 1
        true = wide[("md_true", second)] / wide[("md_true", first)] - 1
        slope, _ = np.polyfit(true, measured, 1)
        entry = {
            "median_error_pct": round(100 * float((table[name] / table.md_true - 1).median()), 2),
            "r_dmd": round(float(np.corrcoef(measured, true)[0, 1]), 3),
            "slope_dmd": round(float(slope), 3),
            "sd_of_dmd_minus_true_pct": round(100 * float((measured - true).std(ddof=1)), 3),
        }
        if name != "plain":
            entry["mean_f"] = round(float(table[f"{name}_f"].mean()), 4)
            entry["kept_voxels_at_f0"] = round(float(table[f"{name}_at_0"].mean()), 3)
        summary[name] = entry
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
