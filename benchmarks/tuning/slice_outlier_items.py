#!/usr/bin/env python
"""Analysis: which realism item makes the slice-outlier detector flag clean slices.

Why: on the sub-voxel simulator (session 36) held-out seed 11's dropout-free session raised
false alarms above issue 12's 0.5% of slices, in runs of neighbouring slices of three volumes.
This simulates one standard session (``bench_slice_outliers.py``'s: no dropouts, no
within-volume motion) with one realism item changed at a time, runs the App's steps up to the
detector (``bench_slice_outliers.preprocess``, ``replace_slice_outliers``) and reports the
flags per volume and, for the volumes flagged with every item on, the z-score of each slice.
Variants: every item on; ``eddy`` off (no second-order terms, no Jacobian); the second-order
terms zeroed with the Jacobian kept; ``gibbs`` off; ``local_anatomy`` off. Nothing is tuned.

Usage::

    python benchmarks/tuning/slice_outlier_items.py OUT_STEM --seed 11
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_slice_outliers as bench  # noqa: E402

VARIANTS = {
    "every item on": ((), False),
    "eddy off": (("eddy",), False),
    "second-order eddy zeroed, Jacobian on": ((), True),
    "gibbs off": (("gibbs",), False),
    "local_anatomy off": (("local_anatomy",), False),
}


def flags(seed: int, off: tuple[str, ...], zero_second_order: bool):
    """(outliers, tested, zscores) of the dropout-free, still-slice session of ``seed``."""
    from ketamine_dti.dwi.slice_outliers import replace_slice_outliers
    from ketamine_dti.simulate import realism
    from ketamine_dti.simulate.session import simulate_benchmark_session
    from ketamine_dti.threads import limit_threads

    draw = realism.random_eddy_quadratic
    if zero_second_order:
        realism.random_eddy_quadratic = lambda rng: draw(rng) * 0.0  # same stream, zero terms
    try:
        with limit_threads(1):
            session = simulate_benchmark_session(
                "standard", seed=seed, realism="typical",
                realism_off=("dropouts", "slice_motion", *off),
            )  # fmt: skip
            data, gtab, mask = bench.preprocess(session)
            found = replace_slice_outliers(
                data, gtab.bvals, gtab.bvecs, mask, bench.SIMULATED_SLICE_AXIS
            )
    finally:
        realism.random_eddy_quadratic = draw
    return found.outliers, found.tested, found.zscores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_stem", type=Path)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    rows, watched = {}, None
    lines = [
        f"# Which realism item makes the slice detector flag clean slices, seed {args.seed}",
        "",
        f"Command: `python benchmarks/tuning/slice_outlier_items.py OUT_STEM --seed {args.seed}`. "
        "One standard session, no dropouts, no within-volume motion; nothing tuned.",
        "",
        "| variant | flagged / tested slices | rate | flags per volume |",
        "|---|---|---|---|",
    ]
    for name, (off, zero) in VARIANTS.items():
        outliers, tested, z = flags(args.seed, off, zero)
        per_volume = sorted(Counter(int(v) for v, _ in np.argwhere(outliers)).items())
        if watched is None:
            watched = [v for v, _ in per_volume]
        n_flag, n_test = int(outliers.sum()), int(tested.sum())
        rows[name] = {
            "flagged": n_flag, "tested": n_test, "per_volume": per_volume,
            "zscores": {v: np.round(z[v], 2).tolist() for v in watched},
        }  # fmt: skip
        lines.append(
            f"| {name} | {n_flag} / {n_test} | {100 * n_flag / n_test:.3f}% | {per_volume} |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "Slice z-scores (slices in order; nan: untested) of the volumes flagged, all items on:",
        "",
    ]
    for name, row in rows.items():
        for v, z in row["zscores"].items():
            shown = ", ".join("nan" if np.isnan(x) else f"{x:.1f}" for x in z)
            lines.append(f"- {name}, volume {v}: {shown}")
    args.out_stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out_stem.with_suffix(".json").write_text(
        json.dumps({"seed": args.seed, "variants": rows}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
