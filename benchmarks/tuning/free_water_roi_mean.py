#!/usr/bin/env python
"""Analysis: how an ROI's free-water-corrected MD is averaged over its points, on ``csf_shift``.

Why: ``md_fwcorr_mean`` averages the tissue MD of the ROI's kept points, leaving out, in each
session on its own, the points the free-water fit found to be pure water (no tissue, NaN). So a
point whose CSF rose enough at 24 h leaves only the 24 h mean: the voxel set then depends on the
data, which issue 13 forbids, and the points at the edge of pure water are the ones whose tissue
MD is least determined. This reads a finished ``bench_participant.py ROOT --scenarios csf_shift``
run (its ``roi_samples.npz``, the very samples ``RegionalStatistics`` averaged) and compares ways
to average them, each against the truth of ``csf_shift`` (tissue MD unchanged: dMD_fwcorr = 0):

- ``per_session``: the App today (NaN points left out per session);
- ``common``: only points with tissue MD in every session (one set for both sessions);
- ``tissue_weighted``: each point weighted by its tissue signal fraction ``1 - f`` (a pure-water
  point weighs 0, so nothing is left out and nothing jumps), per session;
- ``common_tissue_weighted``: the weights ``1 - f`` averaged over the sessions, on ``common``;
- ``median``: ``md_fwcorr_median``, per session.

No pipeline is run; use a training-seed run (``--tuning``).

Usage::

    python benchmarks/tuning/free_water_roi_mean.py ROOT
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS))
from bench_participant import SESSIONS, slopes  # noqa: E402

from ketamine_dti.rois import ROI_NAMES, gray_matter_mask, valid_fit  # noqa: E402

SCENARIO = "csf_shift"
VARIANTS = ("per_session", "common", "tissue_weighted", "common_tissue_weighted", "median")


def statistics_nodes(work: Path) -> list[Path]:
    """The RegionalStatistics node folders of a benchmark work tree."""
    return sorted(p.parent for p in work.rglob("result_roi_statistics.pklz"))


def session_samples(node: Path) -> tuple[str, list[dict]]:
    """(participant label, the samples of each session in the node's order)."""
    with open(node / "_inputs.pklz", "rb") as handle:
        import gzip

        inputs = pickle.loads(gzip.decompress(handle.read()))
    files = inputs["samples_files"]
    subject = next(part for part in Path(files[0]).parts if part.startswith("sub_"))
    samples = []
    for path in files:
        with np.load(path) as data:
            samples.append({key: data[key] for key in data.files})
    return subject.split("_")[1], samples


def roi_means(samples: list[dict]) -> dict[tuple[str, str], list[float]]:
    """{(roi, variant): per-session mean} over the App's averaged points."""
    labels = samples[0]["label"]
    in_brain = np.logical_and.reduce([s["in_brain"] for s in samples])
    fitted = np.logical_and.reduce([valid_fit(s["md"]) for s in samples])
    usable = np.logical_and.reduce([np.isfinite(s["fw_fraction"]) for s in samples])
    tissue_everywhere = np.logical_and.reduce([valid_fit(s["fw_md"]) for s in samples])
    averaged = gray_matter_mask(samples[0]["gm"], samples[0]["csf"]) & in_brain & fitted & usable
    mean_tissue = np.mean([1.0 - s["fw_fraction"] for s in samples], axis=0)
    out = {}
    for index, roi in enumerate(ROI_NAMES, start=1):
        points = averaged & (labels == index)
        common = points & tissue_everywhere
        for variant in VARIANTS:
            values = []
            for s in samples:
                md, tissue = s["fw_md"], 1.0 - s["fw_fraction"]
                if variant == "per_session":
                    value = np.nanmean(md[points])
                elif variant == "common":
                    value = md[common].mean()
                elif variant == "tissue_weighted":
                    weight = np.where(valid_fit(md), tissue, 0.0)[points]
                    value = np.sum(weight * np.nan_to_num(md[points])) / weight.sum()
                elif variant == "common_tissue_weighted":
                    weight = mean_tissue[common]
                    value = np.sum(weight * md[common]) / weight.sum()
                else:
                    value = np.nanmedian(md[points])
                values.append(float(value))
            out[(roi, variant)] = values
        out[(roi, "n_points_left_out_in_one_session")] = [
            float(np.count_nonzero(points & ~valid_fit(s["fw_md"]))) for s in samples
        ]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    args = parser.parse_args(argv)
    bids = args.root / f"{SCENARIO}_bids"
    work = args.root / f"{SCENARIO}_longitudinal_work"
    truth = pd.read_csv(bids / "sourcedata/ground_truth/roi_md.tsv", sep="\t")
    rows = []
    for node in statistics_nodes(work):
        subject, samples = session_samples(node)
        if len(samples) != 2:
            continue
        for (roi, variant), values in roi_means(samples).items():
            rows.append({"participant": subject, "roi": roi, "variant": variant,
                         "baseline": values[0], "followup": values[1]})  # fmt: skip
    table = pd.DataFrame(rows)
    csf = truth.pivot_table(index=["participant_id", "roi"], columns="session_id",
                            values="csf_fraction_change")  # fmt: skip
    csf_change = (csf[f"ses-{SESSIONS[1]}"] - csf[f"ses-{SESSIONS[0]}"]).rename("csf")
    csf_change.index = csf_change.index.set_levels(
        csf_change.index.levels[0].str.replace("sub-", ""), level=0
    )
    results = {}
    for variant in VARIANTS:
        part = table[table.variant == variant].set_index(["participant", "roi"])
        relative = 100 * (part.followup / part.baseline - 1)
        joined = pd.concat({"d": relative, "csf": 100 * csf_change}, axis=1, join="inner")
        per_roi = joined.d.groupby(level="roi")
        response = slopes(joined.d, joined.csf)
        results[variant] = {
            "per_roi_mean_pct": per_roi.mean().round(3).to_dict(),
            "per_roi_se_pct": (per_roi.std(ddof=1) / np.sqrt(per_roi.count())).round(3).to_dict(),
            "per_roi_sd_pct": per_roi.std(ddof=1).round(3).to_dict(),
            "mean_abs_pct": round(float(joined.d.abs().mean()), 3),
            "sd_pct": round(float(joined.d.std(ddof=1)), 3),
            "per_unit_csf": round(response["slope_dmd"], 3),
            "per_unit_csf_se": round(response["slope_dmd_se"], 3),
            "rois_within_0p3": int((per_roi.mean().abs() <= 0.3).sum()),
            "n_pairs": int(len(joined)),
        }
    left_out = table[table.variant == "n_points_left_out_in_one_session"]
    results["points_without_tissue_per_session"] = {
        "median": float(np.median(left_out[["baseline", "followup"]].to_numpy())),
        "max": float(left_out[["baseline", "followup"]].to_numpy().max()),
    }
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
