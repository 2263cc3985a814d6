#!/usr/bin/env python
"""Analysis: why an ROI's measured dMD/MD is attenuated against the truth over its own voxels.

Why: the vACC's slope of measured on true dMD/MD (the truth averaged over the App's own ROI
voxels) is 0.60-0.75 on `paper` and `null` trials while the other ROIs sit near 1 (sessions
37-38). Its level is right (error ~0.5%), so something spreads its change rather than biasing
it. Candidates, each measured here on a finished ``bench_participant.py`` trial (operations
on the noiseless truth, so the slopes carry no measurement noise):

- **Blur:** the truth map (``desc-truth_md``) smoothed with a Gaussian of SD sigma voxels, then
  averaged over the App's voxels. If a blur of the size the App's one interpolation and the
  imaging of a moved head make reproduces the vACC's slope, its voxel set is too thin for its
  change to survive any blur, and no pipeline change short of sharper resampling fixes it.
- **Geometry:** per ROI, the App's voxel count, the share of them inside the true region
  (``desc-region_dseg``), and the share with a face neighbour outside the set (how thin it is).
- **Distortion correction:** the App's displacement (``model-sdc_param-displacement``, mm)
  against the simulator's (``desc-truth_displacement``, voxels): their difference over each
  ROI's voxels, mean and SD (voxels), and the truth map moved by that residual along the phase
  encoding axis, averaged over the App's voxels (what the residual alone would do); and the
  truth imaged through the true displacement and corrected with it exactly
  (``distorted_and_corrected``: the resolution a compressed region loses; a proxy, since it
  moves MD as if it were signal).
- **Weighting:** md_mean weights each voxel by its subject-template points; with the run's
  work folder, md_mean's own points also average the truth (``measured_points vs
  truth_points``).

Usage::

    python benchmarks/tuning/roi_attenuation.py OUT [--label paper_longitudinal]

OUT is ``bench_participant.py``'s output folder (``{scenario}_bids`` and ``{label}_out``).
Writes ``OUT/roi_attenuation.json`` and prints a Markdown table. A diagnostic: it changes
nothing in the App and tunes nothing; run it on training seeds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_participant import (  # noqa: E402
    SESSIONS,
    app_points,
    delta,
    finished_trial,
    load_array,
    point_means,
    slopes,
    trial_parser,
    voxel_means,
)
from bench_slice_outliers import SIMULATED_PE_AXIS  # noqa: E402

SIGMAS = (0.4, 0.6, 0.8, 1.0)


def _thin_share(inside: np.ndarray) -> float:
    """Share of the set's voxels with at least one face neighbour outside it."""
    eroded = ndimage.binary_erosion(inside, ndimage.generate_binary_structure(3, 1))
    return float(1 - eroded.sum() / max(inside.sum(), 1))


def _moved(values: np.ndarray, shift: np.ndarray, axis: int) -> np.ndarray:
    """values sampled at x + shift along ``axis`` (voxels), linear interpolation."""
    grid = np.indices(values.shape, dtype=float)
    grid[axis] += shift
    return ndimage.map_coordinates(values, grid, order=1, mode="nearest")


def distorted_and_corrected(values: np.ndarray, shift: np.ndarray, axis: int, factor: int = 8):
    """``values`` imaged through the displacement ``shift`` (voxels along ``axis``: the signal
    of true position p appears at p + shift(p)) and corrected with that same, exact shift.

    Each voxel is cut into ``factor`` sub-voxels along ``axis``; each lands in the acquired
    voxel nearest its displaced position, and an acquired voxel is the mean of what landed in
    it (a pile-up mixes several true voxels into one). The correction samples the acquired
    image at x + shift(x), linearly. What is left is the resolution that single-direction
    phase encoding loses where the field compresses the image: no correction recovers it.
    """
    v, d = np.moveaxis(values, axis, -1), np.moveaxis(shift, axis, -1)
    n = v.shape[-1]
    lines = v.reshape(-1, n)
    shifts = d.reshape(-1, n)
    position = (np.arange(n * factor) + 0.5) / factor - 0.5
    nearest = np.clip(np.round(position).astype(int), 0, n - 1)
    low = np.clip(np.floor(position).astype(int), 0, n - 2)
    weight = np.clip(position - low, 0, 1)
    moved = shifts[:, low] * (1 - weight) + shifts[:, low + 1] * weight
    target = np.round(position[None, :] + moved).astype(int)
    valid = (target >= 0) & (target < n)
    flat = (np.arange(len(lines))[:, None] * n + target)[valid]
    total = np.bincount(flat, weights=lines[:, nearest][valid], minlength=lines.size)
    count = np.bincount(flat, minlength=lines.size)
    acquired = np.where(count > 0, total / np.maximum(count, 1), 0.0).reshape(v.shape)
    grid = np.indices(values.shape, dtype=float)
    grid[axis] += shift
    return ndimage.map_coordinates(np.moveaxis(acquired, -1, axis), grid, order=1, mode="nearest")


def session_rows(bids_dir: Path, out: Path, subject: str, session: str, points=None) -> list[dict]:
    from ketamine_dti.derivatives import spec_path
    from ketamine_dti.resources import ATLAS
    from ketamine_dti.rois import ROI_NAMES

    stem = f"sub-{subject}/ses-{session}/sub-{subject}_ses-{session}"
    truth_dir = bids_dir / "sourcedata/ground_truth"
    labels = load_array(spec_path(out, "atlas_gm", subject, session, atlas=ATLAS)).astype(int)
    truth = load_array(truth_dir / f"{stem}_space-dwi_desc-truth_md.nii.gz")
    region = load_array(truth_dir / f"{stem}_space-dwi_desc-region_dseg.nii.gz").astype(int)
    md = load_array(spec_path(out, "md", subject, session))
    columns = {"truth": voxel_means(truth, labels, ROI_NAMES)}
    columns["measured"] = voxel_means(md, labels, ROI_NAMES)
    if points is not None:
        columns["truth_points"] = point_means(truth, points, ROI_NAMES)
        columns["measured_points"] = point_means(md, points, ROI_NAMES)
    for sigma in SIGMAS:
        columns[f"blur_{sigma}"] = voxel_means(
            ndimage.gaussian_filter(truth, sigma), labels, ROI_NAMES
        )
    true_shift = truth_dir / f"{stem}_space-dwi_desc-truth_displacement.nii.gz"
    app_shift = spec_path(out, "sdc_displacement", subject, session)
    residual = None
    if true_shift.exists() and app_shift.exists():
        image = nib.load(app_shift)
        axis = SIMULATED_PE_AXIS
        voxel_mm = float(image.header.get_zooms()[axis])
        residual = load_array(app_shift) / voxel_mm - load_array(true_shift)
        columns["pileup_true_field"] = voxel_means(
            distorted_and_corrected(truth, load_array(true_shift), axis), labels, ROI_NAMES
        )
        for sign in (1, -1):
            columns[f"sdc_residual_{'+' if sign > 0 else '-'}"] = voxel_means(
                _moved(truth, sign * residual, axis), labels, ROI_NAMES
            )
    rows = []
    for index, roi in enumerate(ROI_NAMES, start=1):
        inside = labels == index
        row = {"participant_id": f"sub-{subject}", "session_id": f"ses-{session}", "roi": roi}
        row |= {name: values[roi] for name, values in columns.items()}
        row |= {
            "n_voxels": int(inside.sum()),
            "share_in_true_region": float((region[inside] == index).mean()) if inside.any() else 0,
            "share_on_edge": _thin_share(inside),
        }
        if residual is not None and inside.any():
            row |= {
                "residual_mean_vox": float(residual[inside].mean()),
                "residual_sd_vox": float(residual[inside].std()),
            }
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = trial_parser(__doc__.splitlines()[0]).parse_args(argv)
    bids_dir, out, work, subjects = finished_trial(args.out_dir, args.label)
    rows = []
    for subject in subjects:
        points = app_points(work, subject) if work.exists() else {}
        for session in SESSIONS:
            rows += session_rows(bids_dir, out, subject, session, points.get(session))
    table = pd.DataFrame(rows)
    true_change = delta(table, "truth")["relative_delta"]
    variants = [
        c for c in table.columns if c == "measured" or c.startswith(("blur", "sdc", "pileup"))
    ]
    result = {"subjects": subjects, "slopes": {}}
    for variant in variants:
        result["slopes"][variant] = slopes(delta(table, variant)["relative_delta"], true_change)
    if "truth_points" in table:  # md_mean against the truth averaged as md_mean averages
        result["slopes"]["measured_points vs truth_points"] = slopes(
            delta(table, "measured_points")["relative_delta"],
            delta(table, "truth_points")["relative_delta"],
        )
    geometry = ["n_voxels", "share_in_true_region", "share_on_edge"]
    geometry += [c for c in ("residual_mean_vox", "residual_sd_vox") if c in table]
    result["geometry"] = table.groupby("roi")[geometry].median().to_dict(orient="index")
    (args.out_dir / "roi_attenuation.json").write_text(json.dumps(result, indent=2))
    rois = sorted(result["geometry"])
    print("| variant | pooled | " + " | ".join(rois) + " |")
    print("|---" * (len(rois) + 2) + "|")
    for variant, figures in result["slopes"].items():
        per_roi = figures["per_roi_slope_dmd"]
        cells = [f"{per_roi[roi]:.2f}" for roi in rois]
        print(f"| {variant} | {figures['slope_dmd']:.3f} | " + " | ".join(cells) + " |")
    print()
    print("| ROI | " + " | ".join(geometry) + " |")
    print("|---" * (len(geometry) + 1) + "|")
    for roi in rois:
        cells = " | ".join(f"{result['geometry'][roi][g]:.2f}" for g in geometry)
        print(f"| {roi} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
