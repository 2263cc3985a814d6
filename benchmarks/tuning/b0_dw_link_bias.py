#!/usr/bin/env python
"""Analysis: the fixed offset of the one b0 <- DW shell-mean registration in motion correction.

Why: motion correction brings every diffusion-weighted (DW) volume to the b0 reference through
ONE mutual-information registration of the shell mean (``dwi.motion.estimate_affines``), so any
error of that link is shared by every DW volume. On the ``slab`` preset the DW volumes sat
0.4-0.8 mm off as a group (session 43), which a per-volume figure cannot tell from scatter.

Two figures per session, both against the simulator's truth:

- ``still``: the benchmark session's head and pose imaged still and noiseless
  (``simulate_benchmark_session(still=True)``: no motion, no eddy currents, no realism items).
  The shift (mm, at the brain's centroid) of the App's link,
  ``motion.register_mutual_information(b0, DW mean)``, whose truth is the identity; and where
  our own Mattes MI (``dwi.mutual_information``, all voxels of the same mask) peaks along each
  axis (``mi_peak_mm``, a 0.1 mm scan of +-1 mm): where the metric's optimum lies, whatever
  the optimiser.
- ``typical``: the benchmark session (``simulate_benchmark_session``, ``typical`` realism) through
  ``motion.correct_series``; per DW volume the mean (over the brain) of the estimated minus true
  raw point (mm, world axes; ``bench_motion``'s truth), and its mean over the DW volumes: the
  common shift. Also the DW volume-median error with and without that common shift.

Usage::

    python benchmarks/tuning/b0_dw_link_bias.py OUT.json --preset slab --seeds 1 2 11 12 \
        --training-seeds 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_motion  # noqa: E402

from ketamine_dti.dwi import gradients, motion  # noqa: E402
from ketamine_dti.dwi import mutual_information as mi  # noqa: E402
from ketamine_dti.dwi.mask import brain_mask  # noqa: E402
from ketamine_dti.threads import limit_threads  # noqa: E402

#: mm: the metric scan along each axis (world), and its step.
SCAN_MM, SCAN_STEP_MM = 1.0, 0.1


def still_figures(preset: str, seed: int) -> dict:
    from ketamine_dti.simulate.session import simulate_benchmark_session

    session = simulate_benchmark_session(preset, seed=seed, still=True)
    b0 = session.data[..., session.bvals < gradients.B0_THRESHOLD].mean(axis=-1)
    dw = session.data[..., session.bvals >= gradients.B0_THRESHOLD].mean(axis=-1)
    zooms = tuple(np.linalg.norm(session.affine[:3, :3], axis=0))
    mask = ndimage.binary_dilation(brain_mask(b0, zooms), iterations=motion.MASK_DILATION_VOXELS)
    centre = session.affine @ np.append(np.argwhere(mask).mean(axis=0), 1.0)
    with limit_threads(1):
        link = motion.register_mutual_information(b0, dw, session.affine, fixed_mask=mask)
    target = mi.prepare(b0, session.affine, mask, 1.0)
    steps = np.arange(-SCAN_MM, SCAN_MM + SCAN_STEP_MM / 2, SCAN_STEP_MM)
    peaks = []
    for axis in range(3):
        values = []
        for step in steps:
            shift = np.eye(4)
            shift[axis, 3] = step
            values.append(mi.mutual_information(target, dw, shift))
        peaks.append(round(float(steps[int(np.argmax(values))]), 2))
    return {
        "link_shift_mm": np.round((link @ centre)[:3] - centre[:3], 3).tolist(),
        "mi_peak_mm": peaks,
    }


def typical_figures(preset: str, seed: int) -> dict:
    from ketamine_dti.simulate.session import simulate_benchmark_session

    session = simulate_benchmark_session(preset, seed=seed, realism="typical")
    gtab = gradients.GradientTable(bvals=session.bvals, bvecs=session.bvecs)
    zooms = tuple(np.linalg.norm(session.affine[:3, :3], axis=0))
    with limit_threads(1):
        result = motion.correct_series(
            session.data, gtab, session.affine, zooms,
            pe_axis=bench_motion.SIMULATED_PE_AXIS, resample_volumes=False,
        )  # fmt: skip
    weighted = np.flatnonzero(~gtab.b0_mask)
    vectors = np.asarray(  # (DW volume, 3, brain points), mm in world axes
        list(bench_motion.displacement_vectors(session, result.affines, weighted))
    )
    common = vectors.mean(axis=(0, 2))
    voxel_mm = bench_motion.voxel_size_mm(session)

    def volume_median(errors: np.ndarray) -> float:
        return float(np.median(np.median(np.linalg.norm(errors, axis=1), axis=1)))

    return {
        "common_shift_mm": np.round(common, 3).tolist(),
        "common_shift_norm_mm": round(float(np.linalg.norm(common)), 3),
        "dw_volume_median_mm": round(volume_median(vectors), 3),
        "dw_volume_median_voxels": round(volume_median(vectors) / voxel_mm, 3),
        "without_common_shift_voxels": round(
            volume_median(vectors - common[None, :, None]) / voxel_mm, 3
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", default="slab")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--training-seeds", type=int, nargs="*", default=[1, 2])
    args = parser.parse_args(argv)
    rows = []
    for seed in args.seeds:
        row = {
            "seed": seed,
            "still": still_figures(args.preset, seed),
            "typical": typical_figures(args.preset, seed),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    args.out.write_text(
        json.dumps(
            {
                "preset": args.preset,
                "training_seeds": sorted(set(args.seeds) & set(args.training_seeds)),
                "held_out_seeds": sorted(set(args.seeds) - set(args.training_seeds)),
                "world_axes": "RAS+ mm; the simulator's phase encoding is voxel axis j (A-P)",
                "sessions": rows,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
