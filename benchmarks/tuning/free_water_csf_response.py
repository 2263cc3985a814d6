#!/usr/bin/env python
"""Analysis: where the single-shell free-water-corrected MD still follows a CSF change.

Why: on ``csf_shift`` (tissue MD constant, only the ROIs' CSF moves) ``md_fwcorr_mean`` still
moves 0.10-0.27 per unit of the planted change where plain MD moves ~1 (session 33), and some
ROIs (BA10, vACC on training seed 7) keep more than half of plain MD's change. This refits each
session of a finished ``--tuning`` run from its published DWI, with the App's gray-matter
reference voxels (work folder) and b0 references estimated as the App does, under variants
that each remove one suspect:

- ``app``: the App's fit (its own N4 receive field): should reproduce ``md_fwcorr_mean``;
- ``true_field``: the simulator's own receive field divided out instead (captured by
  re-simulating, as ``receive_field_error.py``): what a perfect coil-shading estimate leaves;
- ``no_field``: no shading correction at all;
- ``field_without_rois``: the App's N4 field, fitted without the App's ROI voxels dilated by
  ROI_MARGIN_VOXELS (so an ROI's own b0 change cannot bend the field), evaluated everywhere.

Also, under ``app``, the change of each ROI's share of voxels fitted as free water (NaN tissue
MD, left out of the mean): a share that follows the CSF change would make the average follow
it too.

Per variant: the slope of dMD/MD (ROI voxel means) on the truth's dMD/MD over the same voxels
(``desc-truth_md``; all of it is CSF here), pooled and per ROI, and the mean dMD/MD per ROI.
Training seeds only; nothing in the App is chosen by a held-out seed.

Usage::

    python benchmarks/tuning/free_water_csf_response.py ROOT --seed 7 --n-participants 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCHMARKS), str(BENCHMARKS / "tuning")]
from bench_participant import SESSIONS  # noqa: E402
from free_water_b0_change import one_file, published_fit_inputs  # noqa: E402
from receive_field_error import SCENARIO, simulated_fields  # noqa: E402
from resimulation import add_trial_arguments  # noqa: E402

VARIANTS = ("app", "true_field", "no_field", "field_without_rois")
#: Voxels (2 mm) the ROIs are grown by before they leave the receive-field fit.
ROI_MARGIN_VOXELS = 2


def gray_matter_reference(work: Path, subject: str, session: str) -> np.ndarray:
    """The App's gray-matter reference voxels of one session (DWI grid), from the work folder."""
    label = subject.removeprefix("sub-")
    matches = [
        path
        for path in work.rglob("gray_matter_reference/gray_matter_reference.nii*")
        if f"_{label}_" in str(path) and f"ses_{session}" in str(path)
    ]
    if len(matches) != 1:
        raise RuntimeError(f"{subject} ses-{session}: {len(matches)} gray-matter references")
    return np.asarray(nib.load(matches[0]).dataobj) > 0


def field_without(b0, mask, md, rois, voxel_mm) -> np.ndarray:
    """The App's receive field fitted on its tissue voxels outside ``rois`` grown by
    ROI_MARGIN_VOXELS, evaluated over the whole mask (median 1 there)."""
    from scipy import ndimage

    from ketamine_dti.dwi.free_water import b0_receive_field

    grown = ndimage.binary_dilation(rois, iterations=ROI_MARGIN_VOXELS)
    return b0_receive_field(b0, mask, voxel_mm, md, exclude=grown)


def session_fits(dwi_dir: Path, gray: np.ndarray, true_field: np.ndarray, rois) -> dict:
    """Tissue MD maps of one session under each fitted variant."""
    from ketamine_dti.dwi.free_water import fit_free_water
    from ketamine_dti.dwi.gradients import B0_THRESHOLD

    inputs = published_fit_inputs(dwi_dir)
    voxel_mm = inputs["image"].header.get_zooms()[:3]
    field = true_field / np.median(true_field[inputs["mask"]])
    b0 = inputs["data"][..., inputs["bvals"] <= B0_THRESHOLD].mean(axis=-1)
    own = field_without(b0, inputs["mask"] & (b0 > 0), inputs["md"], rois, voxel_mm)
    common = {
        "bvals": inputs["bvals"], "bvecs": inputs["bvecs"], "mask": inputs["mask"],
        "dti_md": inputs["md"], "dti_fa": inputs["fa"], "gray_matter": gray,
    }  # fmt: skip
    data = inputs["data"]
    return {
        "app": fit_free_water(data, voxel_mm=voxel_mm, **common).md,
        "true_field": fit_free_water(data / field[..., None], **common).md,
        "no_field": fit_free_water(data, **common).md,
        "field_without_rois": fit_free_water(data / own[..., None], **common).md,
    }


def roi_means(maps: dict, labels: np.ndarray, truth: np.ndarray) -> list[dict]:
    """Per ROI label: each variant's mean over its tissue voxels, the truth's over the same
    voxels, and the share of the ROI's voxels the App's fit calls free water."""
    rows = []
    for label in np.unique(labels[labels > 0]):
        inside = labels == label
        row = {"label": int(label), "water_share": float(np.isnan(maps["app"][inside]).mean())}
        for name, md in maps.items():
            voxels = inside & np.isfinite(md)
            row[name] = float(md[voxels].mean())
            row[f"truth_{name}"] = float(truth[voxels].mean())
        rows.append(row)
    return rows


def main(argv=None) -> int:
    from ketamine_dti.rois import ROI_NAMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_trial_arguments(parser)
    args = parser.parse_args(argv)
    bids = args.root / f"{SCENARIO}_bids"
    out = args.root / f"{SCENARIO}_longitudinal_out"
    work = args.root / f"{SCENARIO}_longitudinal_work"
    fields = iter(simulated_fields(bids, args.seed, args.n_participants, args.realism))
    rows = []
    for subject in sorted(p.name for p in out.glob("sub-*") if p.is_dir()):
        maps, labels, truths = {}, {}, {}
        for session in SESSIONS:  # the simulator draws the fields in this order
            dwi_dir = out / subject / f"ses-{session}" / "dwi"
            gray = gray_matter_reference(work, subject, session)
            labels[session] = np.asarray(
                nib.load(one_file(dwi_dir, "*desc-graymatter_dseg.nii.gz")).dataobj
            )
            maps[session] = session_fits(dwi_dir, gray, next(fields), labels[session] > 0)
            stem = f"{subject}/ses-{session}/{subject}_ses-{session}"
            truths[session] = nib.load(
                bids / f"sourcedata/ground_truth/{stem}_space-dwi_desc-truth_md.nii.gz"
            ).get_fdata()
            print(subject, session, flush=True)
        for session in SESSIONS:
            dwi_dir = out / subject / f"ses-{session}" / "dwi"
            published = pd.read_csv(one_file(dwi_dir, "*desc-roi_md.tsv"), sep="\t")
            published = published.set_index("roi").md_fwcorr_mean
            for row in roi_means(maps[session], labels[session], truths[session]):
                roi = ROI_NAMES[row.pop("label") - 1]
                rows.append(
                    {"participant_id": subject, "session_id": session, "roi": roi,
                     "published": published[roi]} | row
                )  # fmt: skip
    table = pd.DataFrame(rows)
    print("refit 'app' against the published md_fwcorr_mean: median |ratio - 1| "
          f"{100 * (table.app / table.published - 1).abs().median():.2f}%")  # fmt: skip
    wide = table.pivot_table(index=["participant_id", "roi"], columns="session_id")
    first, second = SESSIONS
    summary, per_roi = {}, {}
    for name in VARIANTS:
        measured = 100 * (wide[(name, second)] / wide[(name, first)] - 1)
        true = 100 * (wide[(f"truth_{name}", second)] / wide[(f"truth_{name}", first)] - 1)
        slope, _ = np.polyfit(true, measured, 1)
        summary[name] = {
            "slope_on_true_csf_dmd": round(float(slope), 3),
            "mean_abs_dmd_pct": round(float(measured.abs().mean()), 3),
            "sd_of_residual_pct": round(float((measured - slope * true).std(ddof=1)), 3),
        }
        per_roi[name] = measured.groupby(level="roi").mean().round(2)
    print(pd.DataFrame(summary).T.to_markdown())
    print()
    print("mean dMD/MD per ROI (%), truth over the App's voxels:")
    true_app = 100 * (wide[("truth_app", second)] / wide[("truth_app", first)] - 1)
    per_roi["truth (plain MD's change)"] = true_app.groupby(level="roi").mean().round(2)
    print(pd.DataFrame(per_roi).to_markdown())
    water = 100 * (wide[("water_share", second)] - wide[("water_share", first)])
    if not water.abs().max() > 0:
        print("\nno ROI voxel changed between free water and tissue across the sessions")
        return 0
    print(
        f"\nwater share of the ROI voxels: mean {100 * table.water_share.mean():.2f}%; its "
        f"change (points) against the true dMD/MD: r {np.corrcoef(water, true_app)[0, 1]:.2f}, "
        f"slope {np.polyfit(true_app, water, 1)[0]:.3f} points per %"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
