#!/usr/bin/env python
"""Tuning: the slice-outlier detector's angular model (``SH_DEGREE``, ``ANGULAR_SMOOTHING``), on
training seeds only.

Why: the in-sample RESTORE tensor prediction the detector used until session 38 raised false
alarms in runs of clean slices on the sub-voxel simulator (``slice_outlier_items_session37``).
Its replacement predicts each volume from the shell's other volumes with regularised even
spherical harmonics; this chooses the degree and the Laplace-Beltrami penalty.

Each training seed simulates one standard session at ``typical`` realism without
within-volume motion (its moved slices are legitimate flags, counted apart by the benchmark),
with and without the simulator's dropouts, and runs the App's steps up to the detector
(``bench_slice_outliers.preprocess``). For each (degree, penalty) it reports:

- the left-out prediction error of single voxels (median |observed - leave-one-out
  prediction| over 40,000 brain voxels and the shell's volumes, signal units): how well the
  model predicts a volume it did not see;
- the detector run with those constants: false alarms on the dropout-free session (flagged /
  tested slices), recall of the planted dropouts, and flags that are neither planted nor next
  to a planted slice (motion correction's interpolation spreads a dropout into its neighbours).

Usage::

    python benchmarks/tuning/slice_predictor.py OUT_STEM --training-seeds 3 7
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_slice_outliers as bench  # noqa: E402

#: (degree, ANGULAR_SMOOTHING) pairs tried; degree 2 needs no penalty.
GRID = ((2, 0.0), (4, 0.0), (4, 1.5e-5), (4, 1.5e-4), (6, 1.5e-5), (6, 1.5e-4), (8, 1.5e-4))
VOXEL_SAMPLE = 40_000


def sessions(seed: int):
    """{variant: (data, gtab, mask, planted pairs)} for the dropout-free and dropout sessions."""
    from ketamine_dti.simulate.session import simulate_benchmark_session
    from ketamine_dti.threads import limit_threads

    out = {}
    with limit_threads(1):
        for variant, off in (("dropout_free", ("dropouts",)), ("dropouts", ())):
            session = simulate_benchmark_session(
                "standard", seed=seed, realism="typical", realism_off=(*off, "slice_motion")
            )
            data, gtab, mask = bench.preprocess(session)
            dropouts = session.artefacts.dropouts
            planted = (
                set() if dropouts is None else {(int(v), int(k)) for v, k, _ in dropouts.slices}
            )
            out[variant] = (data, gtab, mask, planted)
    return out


def evaluate(seed_sessions, degree: int, smoothing: float) -> dict:
    """The left-out voxel error and the detector's flags with the given constants."""
    from ketamine_dti.dwi import slice_outliers
    from ketamine_dti.dwi.gradients import cluster_shells

    saved = slice_outliers.SH_DEGREE, slice_outliers.ANGULAR_SMOOTHING
    slice_outliers.SH_DEGREE, slice_outliers.ANGULAR_SMOOTHING = degree, smoothing
    try:
        row = {"degree": degree, "smoothing": smoothing}
        data, gtab, mask, _ = seed_sessions["dropout_free"]
        shells = cluster_shells(gtab.bvals)
        volumes = np.flatnonzero(shells == np.unique(shells[shells > 0])[0])
        model = slice_outliers.AngularModel.for_directions(gtab.bvecs[volumes])
        voxels = data[mask][:, volumes].astype(float)
        sample = np.random.default_rng(0).choice(len(voxels), VOXEL_SAMPLE, replace=False)
        weights = model.weights(np.ones(volumes.size, dtype=bool))
        errors = voxels[sample] - voxels[sample] @ weights.T
        row["voxel_loo_median_abs"] = float(np.median(np.abs(errors)))
        for variant, (series, table, brain, planted) in seed_sessions.items():
            found = slice_outliers.replace_slice_outliers(
                series, table.bvals, table.bvecs, brain, bench.SIMULATED_SLICE_AXIS, replace=False
            )
            flagged = {tuple(map(int, pair)) for pair in np.argwhere(found.outliers)}
            near = {(v, k + step) for v, k in planted for step in (-1, 0, 1)}
            tested = {(v, k) for v, k in planted if found.tested[v, k]}
            row[variant] = {
                "flagged": len(flagged),
                "tested": int(found.tested.sum()),
                "recall": len(tested & flagged) / len(tested) if tested else None,
                "flags_not_near_planted": len(flagged - near),
            }
        return row
    finally:
        slice_outliers.SH_DEGREE, slice_outliers.ANGULAR_SMOOTHING = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_stem", type=Path)
    parser.add_argument("--training-seeds", type=int, nargs="+", default=[3, 7])
    args = parser.parse_args(argv)
    lines = [
        "# The slice detector's angular model, training seeds only",
        "",
        "Command: `python benchmarks/tuning/slice_predictor.py OUT_STEM --training-seeds "
        f"{' '.join(map(str, args.training_seeds))}`. Training seeds: "
        f"{args.training_seeds}; held-out seeds (11, 12) are not touched here.",
        "",
        "| seed | degree | smoothing | voxel leave-one-out median abs error | false alarms "
        "(dropout-free) | recall | flags not at or next to a planted slice (dropouts) |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = []
    for seed in args.training_seeds:
        seed_sessions = sessions(seed)
        for degree, smoothing in GRID:
            row = {"seed": seed, **evaluate(seed_sessions, degree, smoothing)}
            rows.append(row)
            free, drop = row["dropout_free"], row["dropouts"]
            lines.append(
                f"| {seed} | {degree} | {smoothing:g} | {row['voxel_loo_median_abs']:.2f} "
                f"| {free['flagged']} / {free['tested']} "
                f"({100 * free['flagged'] / free['tested']:.3f}%) "
                f"| {drop['recall']:.3f} | {drop['flags_not_near_planted']} |"
            )
            print(lines[-1], flush=True)
    args.out_stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out_stem.with_suffix(".json").write_text(
        json.dumps(
            {"training_seeds": args.training_seeds, "held_out_seeds": [11, 12], "rows": rows},
            indent=1,
        )  # fmt: skip
    )
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
