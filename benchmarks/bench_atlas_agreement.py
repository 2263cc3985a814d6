"""How far the pipeline's atlas and the simulator's true regions agree before any pipeline runs.

Usage:

    python benchmarks/bench_atlas_agreement.py OUT_STEM [--participant-json FILE]

Issue 13 made the simulator's truth independent of the analysis atlas: the App measures each ROI
with ``ketamine7`` (Harvard-Oxford / Talairach on MNI152NLin6Asym), while the simulator plants the
regional MD in AAL / Brodmann regions drawn on Colin27 (then moved per participant). The ROI Dice
that ``bench_participant.py`` publishes (the App's ROI in DWI space vs the true region) therefore
mixes two things: the atlases' disagreement, which no pipeline can remove, and the pipeline's own
error. This script measures the first on the template grid, with no registration at all:

- the Dice of each ``ketamine7`` label with the bundled true region (1 mm, nearest neighbour);
- the share of the label's voxels (and of its gray-matter voxels: GM probability >= the App's
  majority rule ``rois.GM_PROB_MIN``) that lie inside the true region: the slope of measured on
  true dMD that a perfect pipeline would get, if the planted change stops at the region's border;
- the distance between the two centroids;

and, with ``--participant-json`` (a ``bench_participant.py`` result), the pipeline's median Dice
beside it. Writes OUT_STEM.md and OUT_STEM.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

from ketamine_dti.resources import get_atlas, get_tissue_priors
from ketamine_dti.rois import GM_PROB_MIN, ROI_NAMES
from ketamine_dti.simulate.regions import load_regions


def _centroid_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ np.argwhere(mask).mean(axis=0) + affine[:3, 3]


def agreement() -> dict[str, dict[str, float]]:
    """Per ROI: Dice, shares of the atlas label inside the true region, centroid distance."""
    atlas = nib.load(get_atlas(resolution=1)[0])
    labels = np.asarray(atlas.dataobj)
    voxel_ml = float(np.prod(atlas.header.get_zooms()[:3])) / 1000
    truth = np.asarray(resample_from_to(nib.Nifti1Image(*load_regions()), atlas, order=0).dataobj)
    _, gm_prior, _ = get_tissue_priors(resolution=2)  # CSF, GM, WM
    gm = np.asarray(resample_from_to(nib.load(gm_prior), atlas, order=1).dataobj)
    rows = {}
    for index, name in enumerate(ROI_NAMES, start=1):
        mine, true = labels == index, truth == index
        mine_gm = mine & (gm >= GM_PROB_MIN)
        both = mine & true
        rows[name] = {
            "atlas_ml": mine.sum() * voxel_ml,
            "true_ml": true.sum() * voxel_ml,
            "dice": 2 * both.sum() / (mine.sum() + true.sum()),
            "atlas_in_true": both.sum() / mine.sum(),
            "atlas_gm_in_true": (mine_gm & true).sum() / max(mine_gm.sum(), 1),
            "centroid_distance_mm": float(
                np.linalg.norm(_centroid_mm(mine, atlas.affine) - _centroid_mm(true, atlas.affine))
            ),
        }
    return rows


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_stem", type=Path)
    parser.add_argument("--participant-json", type=Path, default=None)
    args = parser.parse_args()
    rows = agreement()
    pipeline: dict[str, dict[str, float]] = {}
    if args.participant_json:
        result = json.loads(args.participant_json.read_text())
        runs = [
            value["roi_vs_true_region"]
            for value in result.values()
            if isinstance(value, dict) and "roi_vs_true_region" in value
        ]
        if runs:
            pipeline = {
                "dice": runs[0]["per_roi_median_dice"],
                "kept_in_true": runs[0]["per_roi_median_kept_in_region"],
            }
    command = "python benchmarks/bench_atlas_agreement.py OUT_STEM" + (
        f" --participant-json {args.participant_json}" if args.participant_json else ""
    )
    lines = [
        "# The pipeline's atlas against the simulator's true regions, on the template grid",
        "",
        f"Command: `{command}`. Deterministic: no seed, no registration, no pipeline.",
        "",
        "| ROI | ketamine7 (ml) | true region (ml) | Dice on the template "
        "| share of the label in the true region | same, GM voxels | centroid distance (mm) "
        "| pipeline's median Dice (DWI space) "
        "| pipeline: share of its voxels in the true region |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        dice, kept = (pipeline.get(key, {}).get(name) for key in ("dice", "kept_in_true"))
        lines.append(
            f"| {name} | {row['atlas_ml']:.1f} | {row['true_ml']:.1f} | {row['dice']:.2f} | "
            f"{row['atlas_in_true']:.2f} | {row['atlas_gm_in_true']:.2f} | "
            f"{row['centroid_distance_mm']:.1f} | {_fmt(dice)} | {_fmt(kept)} |"
        )
    args.out_stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out_stem.with_suffix(".json").write_text(
        json.dumps({"rois": rows, "pipeline_median": pipeline}, indent=2) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
