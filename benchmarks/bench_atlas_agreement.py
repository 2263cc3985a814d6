"""How far the pipeline's atlas and the simulator's true regions agree before any pipeline runs.

Usage:

    python benchmarks/bench_atlas_agreement.py OUT_STEM [--participant-json FILE] \
        [--perfect-pipeline SEED --n-participants N]

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
beside it.

With ``--perfect-pipeline SEED``: what a perfect pipeline measuring ``ketamine7`` would report on
the standard ``paper`` trial of that seed (``bench_participant.py``'s trial, re-simulated in this
process). Per DWI session the simulator's own warp carries the ``ketamine7`` labels into the DWI
grid (perfect registration, true tissue fractions), and the noiseless truth MD (``truth_md``: a
DTI fit of the still, artefact-free, noiseless series) is averaged over three voxel rules:
the label (half a voxel's brain in it); its gray matter (true GM >= the App's
``rois.GM_PROB_MIN``); the App's whole partial-volume rule of sessions 8-45 on the true fractions
(also CSF <= ``rois.CSF_PROB_MAX``; since session 46 the App tries the stricter caps
``rois.CSF_PROB_STRICTER`` per ROI first, which this does not); and the simulator's own pure-GM
rule (``session.truth_masks``). Its dMD/MD
is scored against the planted one, as ``bench_participant.py`` scores the App: this is the
ceiling of r(dMD) and of the slope for any pipeline that measures this atlas. The same rules on
the true regions are the check (they must give r ~ 1). Writes OUT_STEM.md and OUT_STEM.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.processing import resample_from_to

from ketamine_dti.resources import get_atlas, get_tissue_priors
from ketamine_dti.rois import CSF_PROB_MAX, GM_PROB_MIN, ROI_NAMES
from ketamine_dti.simulate.clinical import SESSIONS
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


def _rule_masks(tissue) -> dict[str, np.ndarray]:
    """ROI index per voxel (int16) under each voxel rule, from a VoxelTissue's true fractions."""
    from ketamine_dti.simulate import session

    label = session.region_masks(tissue.region)
    label_gm = np.where(tissue.gm >= GM_PROB_MIN, label, 0).astype(np.int16)
    app_rule = np.where(tissue.csf <= CSF_PROB_MAX, label_gm, 0).astype(np.int16)
    pure, _ = session.truth_masks(tissue.gm_by_label, tissue.wm, tissue.csf)
    return {"label": label, "label_gm": label_gm, "app_rule": app_rule, "pure_gm": pure}


def perfect_pipeline(seed: int, n_participants: int, realism: str) -> pd.DataFrame:
    """Per participant, session, ROI, atlas and rule: the noiseless truth MD over the voxels and
    the planted GM MD (``md_true``), from the ``paper`` trial re-simulated with a capture."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "tuning"))
    from resimulation import app_atlas, each_dwi_session, tissue_on_grid

    ketamine7 = app_atlas()
    rows: list[dict] = []

    def visit(key, dwi, maps):
        who, position = key
        for name, regions in (("ketamine7", ketamine7), ("true_region", maps.true_atlas)):
            tissue = tissue_on_grid(maps, dwi.affine, regions)
            for rule, dseg in _rule_masks(tissue).items():
                for k, roi in enumerate(ROI_NAMES, start=1):
                    voxels = dseg == k
                    rows.append(
                        {
                            "participant": who, "session": SESSIONS[position], "roi": roi,
                            "atlas": name, "rule": rule, "n_voxels": int(voxels.sum()),
                            "md": float(dwi.truth_md[voxels].mean()) if voxels.any() else np.nan,
                            "md_true": float(maps.label_md[k]),
                        }
                    )  # fmt: skip

    each_dwi_session(seed, n_participants, realism, visit, scenario="paper")
    return pd.DataFrame(rows)


def score(table: pd.DataFrame) -> pd.DataFrame:
    """Per atlas and rule: median |md / md_true - 1|, and the slope and r of measured on planted
    dMD/MD (pooled over participants and ROIs), as bench_participant.py scores the App."""
    out = []
    for (name, rule), part in table.groupby(["atlas", "rule"], sort=False):
        wide = part.pivot_table(
            index=["participant", "roi"], columns="session", values=["md", "md_true"]
        )
        measured = 100 * (wide[("md", "24h")] / wide[("md", "baseline")] - 1)
        planted = 100 * (wide[("md_true", "24h")] / wide[("md_true", "baseline")] - 1)
        keep = np.isfinite(measured.to_numpy())
        x, y = planted.to_numpy()[keep], measured.to_numpy()[keep]
        out.append(
            {
                "atlas": name, "rule": rule, "pairs": int(keep.sum()),
                "median_voxels": float(part["n_voxels"].median()),
                "median_abs_error_pct": float(
                    100 * np.nanmedian(np.abs(part["md"] / part["md_true"] - 1))
                ),
                "slope": float(np.polyfit(x, y, 1)[0]),
                "r": float(np.corrcoef(x, y)[0, 1]),
            }
        )  # fmt: skip
    return pd.DataFrame(out)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_stem", type=Path)
    parser.add_argument("--participant-json", type=Path, default=None)
    parser.add_argument("--perfect-pipeline", type=int, default=None, metavar="SEED")
    parser.add_argument("--n-participants", type=int, default=4)
    parser.add_argument("--realism", default="typical")
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
    result = {"rois": rows, "pipeline_median": pipeline}
    if args.perfect_pipeline is not None:
        table = perfect_pipeline(args.perfect_pipeline, args.n_participants, args.realism)
        scores = score(table)
        command += (
            f" --perfect-pipeline {args.perfect_pipeline} --n-participants {args.n_participants}"
            f" --realism {args.realism}"
        )
        lines[2] = f"Command: `{command}`."
        lines += [
            "",
            f"## A perfect pipeline on the standard `paper` trial, seed {args.perfect_pipeline}, "
            f"{args.n_participants} participants, `{args.realism}` realism",
            "",
            "The simulator's own warp carries each atlas into every DWI session (perfect "
            "registration, true tissue fractions); the noiseless truth MD is averaged over the "
            "voxels and its dMD/MD scored against the planted one (pooled over participants and "
            "ROIs). The true regions' rows are the check.",
            "",
            "| atlas | voxel rule | pairs | median voxels | median abs MD error | slope | r |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in scores.itertuples():
            lines.append(
                f"| {row.atlas} | {row.rule} | {row.pairs} | {row.median_voxels:.0f} | "
                f"{row.median_abs_error_pct:.2f}% | {row.slope:.3f} | {row.r:.3f} |"
            )
        result["perfect_pipeline"] = {
            "seed": args.perfect_pipeline,
            "n_participants": args.n_participants,
            "realism": args.realism,
            "scores": scores.to_dict(orient="records"),
            "table": table.to_dict(orient="records"),
        }
    args.out_stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out_stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
