#!/usr/bin/env python
"""Analysis: which b0 should single-shell free water call "tissue"?

Why: the single-shell fit centres its free-water prior on where a voxel's b0 lies between a
tissue and a water reference (``dwi.free_water``). The App takes the tissue reference from the
DWI itself: the median b0 of the lowest-MD tenth of the low-FA voxels. Those voxels are the
least watery, but also the least gray: white matter (darker at b0) enters the reference, every
gray-matter voxel then looks brighter than "tissue", its free water is over-estimated and its
tissue MD under-estimated (session 30: ``md_fwcorr_mean`` 13.5% low on the held-out paper trial).
This reads a finished ``bench_participant.py`` run (any scenario) and refits each session's free
water with the tissue reference taken from anatomy instead: the median b0 (after the same receive
field) over DWI voxels that the App's own T1w segmentation calls gray matter with little CSF
(``label-GM_probseg`` >= --gm-min and ``label-CSF_probseg`` <= --csf-max, moved to the DWI grid
by the App's ``from-dwi_to-T1w`` transform). The water reference is the App's. Per ROI it reports
both fits' mean tissue MD over the App's kept voxels (``desc-graymatter_dseg``, plain voxel
means) against ``roi_md.tsv``'s tissue MD, and, on ``csf_shift``, their dMD/MD (truth: 0).
No pipeline is run; use a training-seed run (``--tuning``).

Usage::

    python benchmarks/tuning/free_water_tissue_reference.py ROOT --scenario csf_shift
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
from bench_participant import SESSIONS, slopes  # noqa: E402
from free_water_b0_change import one_file, published_fit_inputs  # noqa: E402


def anatomical_gray_matter(out: Path, subject: str, dwi_dir: Path, reference: nib.Nifti1Image,
                           gm_min: float, csf_max: float) -> np.ndarray:  # fmt: skip
    """DWI voxels the App's T1w segmentation calls gray matter with little CSF."""
    import ants

    fixed = ants.from_nibabel_nifti(reference)
    transform = str(one_file(dwi_dir, "*from-dwi_to-T1w_mode-image_xfm.mat"))
    maps = {}
    for label in ("GM", "CSF"):
        moving = ants.image_read(
            str(one_file(out / subject / "anat", f"*label-{label}_probseg.nii.gz"))
        )
        maps[label] = ants.apply_transforms(
            fixed, moving, [transform], interpolator="linear", whichtoinvert=[True]
        ).numpy()
    return (maps["GM"] >= gm_min) & (maps["CSF"] <= csf_max)


def session_fits(
    out: Path, subject: str, session: str, gm_min: float, csf_max: float,
    percentile: float = 50.0, work: Path | None = None,
) -> dict:  # fmt: skip
    """The App's tissue-MD map and the refit with the anatomical tissue reference (the
    ``percentile`` of the gray matter's b0; its voxels from the posteriors, or with ``work``
    the App's own GrayMatterReference masks of that run)."""
    from ketamine_dti.dwi.free_water import b0_receive_field, fit_free_water
    from ketamine_dti.dwi.gradients import B0_THRESHOLD

    dwi_dir = out / subject / f"ses-{session}" / "dwi"
    inputs = published_fit_inputs(dwi_dir)
    image, data, bvals, bvecs = (inputs[k] for k in ("image", "data", "bvals", "bvecs"))
    mask, md, fa, prior = (inputs[k] for k in ("mask", "md", "fa", "prior"))
    app_md = nib.load(one_file(dwi_dir, "*model-fwdti_param-md_dwimap.nii.gz")).get_fdata()
    voxel_mm = image.header.get_zooms()[:3]
    b0 = data[..., bvals <= B0_THRESHOLD].mean(axis=-1).astype(float)
    field = b0_receive_field(b0, mask, voxel_mm, md)
    reference_grid = nib.Nifti1Image(b0.astype(np.float32), image.affine)
    if work is None:
        gray = anatomical_gray_matter(out, subject, dwi_dir, reference_grid, gm_min, csf_max)
    else:  # the App's own reference voxels (GrayMatterReference) of this run
        node = work / "ketamine_dti_wf" / f"{subject.replace('-', '_')}_wf" / f"ses_{session}_wf"
        gray = np.asarray(nib.load(node / "gray_matter_reference/gray_matter_reference.nii.gz")
                          .dataobj) > 0  # fmt: skip
    gray &= mask & (md < 2.7e-3) & np.isfinite(md)
    s0_tissue = float(np.percentile((b0 / field)[gray], percentile))
    refit = fit_free_water(
        data, bvals, bvecs, mask=mask, s0_tissue=s0_tissue, s0_water=prior["B0ReferenceWater"],
        dti_md=md, dti_fa=fa, voxel_mm=voxel_mm,
    )  # fmt: skip
    labels = np.asarray(nib.load(one_file(dwi_dir, "*desc-graymatter_dseg.nii.gz")).dataobj)
    return {
        "labels": labels,
        "app": app_md,
        "anatomical": refit.md,
        "app_f": nib.load(one_file(dwi_dir, "*model-fwdti_param-fwf_dwimap.nii.gz")).get_fdata(),
        "anatomical_f": refit.f_water,
        "references": {
            "app_tissue": prior["B0ReferenceTissue"],
            "anatomical_tissue": s0_tissue,
            "water": prior["B0ReferenceWater"],
            "anatomical_voxels": int(gray.sum()),
        },
    }


def main(argv=None) -> int:
    from ketamine_dti.dwi.free_water import SINGLE_SHELL_MIN_F
    from ketamine_dti.rois import ROI_NAMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--scenario", default="csf_shift")
    parser.add_argument("--gm-min", type=float, default=0.9)
    parser.add_argument("--csf-max", type=float, default=0.02)
    parser.add_argument(
        "--percentile",
        type=float,
        default=50.0,
        help="percentile of the gray matter's b0 taken as the reference",
    )
    parser.add_argument(
        "--app-voxels",
        action="store_true",
        help="the App's own gray-matter reference voxels (from the work folder)",
    )
    args = parser.parse_args(argv)
    work = args.root / f"{args.scenario}_longitudinal_work" if args.app_voxels else None
    bids = args.root / f"{args.scenario}_bids"
    out = args.root / f"{args.scenario}_longitudinal_out"
    truth = pd.read_csv(bids / "sourcedata/ground_truth/roi_md.tsv", sep="\t")
    rows, references = [], []
    shares = {
        name: {"at_f0": [], "below_f0": [], "at_floor": []} for name in ("app", "anatomical")
    }
    for subject_dir in sorted(out.glob("sub-*/")):
        subject = subject_dir.name
        for session in SESSIONS:
            fits = session_fits(out, subject, session, args.gm_min, args.csf_max,
                                args.percentile, work)  # fmt: skip
            references.append({"participant_id": subject, "session_id": f"ses-{session}"}
                              | fits["references"])  # fmt: skip
            for name in ("app", "anatomical"):  # kept voxels at f = 0, below it, at the floor
                kept_f = fits[f"{name}_f"][fits["labels"] > 0]
                shares[name]["at_f0"].append(np.mean(np.abs(kept_f) < 1e-3))
                shares[name]["below_f0"].append(np.mean(kept_f <= -1e-3))
                shares[name]["at_floor"].append(np.mean(kept_f <= SINGLE_SHELL_MIN_F + 1e-3))
            for index, roi in enumerate(ROI_NAMES, start=1):
                inside = fits["labels"] == index
                row = {"participant_id": subject, "session_id": f"ses-{session}", "roi": roi}
                for name in ("app", "anatomical"):
                    row[name] = float(np.nanmean(fits[name][inside]))
                    row[f"{name}_f"] = float(np.nanmean(fits[f"{name}_f"][inside]))
                rows.append(row)
            print(subject, session, fits["references"], flush=True)
    table = pd.DataFrame(rows).merge(truth, on=["participant_id", "session_id", "roi"])
    summary = {"seeds": "training run (see the run's own file)", "gm_min": args.gm_min,
               "csf_max": args.csf_max, "percentile": args.percentile,
               "app_voxels": args.app_voxels, "references": references}  # fmt: skip
    for name in ("app", "anatomical"):
        error = table[name] / table.md_true - 1
        entry = {
            "median_error_pct": round(100 * float(error.median()), 2),
            "per_roi_median_error_pct": (100 * error.groupby(table.roi).median())
            .round(2)
            .to_dict(),
            "mean_f": round(float(table[f"{name}_f"].mean()), 4),
        }
        wide = table.pivot_table(index=["participant_id", "roi"], columns="session_id",
                                 values=name)  # fmt: skip
        change = 100 * (wide[f"ses-{SESSIONS[1]}"] / wide[f"ses-{SESSIONS[0]}"] - 1)
        per_roi = change.groupby(level="roi")
        entry |= {
            "per_roi_mean_dmd_pct": per_roi.mean().round(3).to_dict(),
            "per_roi_se_dmd_pct": (per_roi.std(ddof=1) / np.sqrt(per_roi.count()))
            .round(3)
            .to_dict(),
            "mean_abs_dmd_pct": round(float(change.abs().mean()), 3),
            "sd_dmd_pct": round(float(change.std(ddof=1)), 3),
        }
        csf = table.pivot_table(index=["participant_id", "roi"], columns="session_id",
                                values="csf_fraction_change")  # fmt: skip
        planted = 100 * (csf[f"ses-{SESSIONS[1]}"] - csf[f"ses-{SESSIONS[0]}"])
        response = slopes(change, planted)
        entry["per_unit_csf_change"] = round(response["slope_dmd"], 3)
        entry["per_unit_csf_change_se"] = round(response["slope_dmd_se"], 3)
        for share, values in shares[name].items():
            entry[f"kept_voxels_{share}"] = round(float(np.mean(values)), 3)
        summary[name] = entry
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
