#!/usr/bin/env python
"""Analysis: does the App's eddy Jacobian make `ideal` data look worse than `typical`?

Why: session 37 measured the participant benchmark on ``ideal`` realism worse than on
``typical`` (paper ROI MD error 2.92% against 2.69%, retest SD 0.612% against 0.432%). The
``ideal`` simulator keeps its linear eddy-current distortion but, as the old simulator did,
without the intensity change a stretch causes; the App always multiplies each corrected volume
by its motion/eddy map's Jacobian. On ``ideal`` data that factor corrects an intensity change
that was never planted. Here one standard session per seed, at ``ideal`` and at ``typical``
realism, goes through the App's steps (``bench_slice_outliers.preprocess``, its slice-outlier
replacement, WLS) twice: as the App runs, and with the affine Jacobian factor set to 1
(``resampling.affine_jacobian``). Reported: the median over the true regions of |ROI MD / truth
- 1| (``bench_slice_outliers.roi_md_error``) and the median |difference| between the two runs'
ROI MD. Nothing is tuned, and the App is not changed by this.

Usage::

    python benchmarks/tuning/ideal_jacobian.py OUT_STEM --seeds 7 3 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_slice_outliers as bench  # noqa: E402


def roi_mds(md, session, mask) -> np.ndarray:
    """Mean MD over each true region's voxels inside ``mask``."""
    labels = np.unique(session.region_dseg[session.region_dseg > 0])
    return np.array([md[(session.region_dseg == label) & mask].mean() for label in labels])


def run(seed: int, realism: str) -> dict:
    from ketamine_dti.dwi import resampling
    from ketamine_dti.dwi.slice_outliers import replace_slice_outliers
    from ketamine_dti.dwi.tensor import fit_tensor
    from ketamine_dti.simulate.session import simulate_benchmark_session
    from ketamine_dti.threads import limit_threads

    row, mds = {"seed": seed, "realism": realism}, {}
    original = resampling.affine_jacobian
    with limit_threads(1):
        session = simulate_benchmark_session("standard", seed=seed, realism=realism)
        for variant in ("app", "no_affine_jacobian"):
            if variant == "no_affine_jacobian":
                resampling.affine_jacobian = lambda world_map: 1.0
            try:
                data, gtab, mask = bench.preprocess(session)
            finally:
                resampling.affine_jacobian = original
            data = replace_slice_outliers(
                data, gtab.bvals, gtab.bvecs, mask, bench.SIMULATED_SLICE_AXIS
            ).data
            md = fit_tensor(data, gtab.bvals, gtab.bvecs, mask=mask, n_threads=1).md
            row[f"roi_md_error_{variant}"] = bench.roi_md_error(md, session, mask)
            mds[variant] = roi_mds(md, session, mask)
    row["median_abs_difference"] = float(
        np.median(np.abs(mds["app"] / mds["no_affine_jacobian"] - 1))
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_stem", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 3, 1])
    args = parser.parse_args(argv)
    lines = [
        "# The App's eddy Jacobian on `ideal` and `typical` data",
        "",
        "Command: `python benchmarks/tuning/ideal_jacobian.py OUT_STEM --seeds "
        f"{' '.join(map(str, args.seeds))}`. Training seeds only ({args.seeds}); nothing tuned.",
        "",
        "| seed | realism | ROI MD error, App | ROI MD error, affine Jacobian set to 1 "
        "| median abs ROI MD difference |",
        "|---|---|---|---|---|",
    ]
    rows = []
    for seed in args.seeds:
        for realism in ("ideal", "typical"):
            row = run(seed, realism)
            rows.append(row)
            lines.append(
                f"| {seed} | {realism} | {100 * row['roi_md_error_app']:.2f}% "
                f"| {100 * row['roi_md_error_no_affine_jacobian']:.2f}% "
                f"| {100 * row['median_abs_difference']:.2f}% |"
            )
            print(lines[-1], flush=True)
    args.out_stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out_stem.with_suffix(".json").write_text(
        json.dumps({"training_seeds": args.seeds, "rows": rows}, indent=1)
    )
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
