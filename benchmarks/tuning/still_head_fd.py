#!/usr/bin/env python
"""Analysis: the framewise displacement (FD) the App reports for a head that does not move.

Why: the slow slab test (session 44) found the App reading a mean FD of 0.72 / 0.64 mm on a
participant whose true FD is 0.39 / 0.42 mm, while on ``bench_motion``'s slab seeds, which move
0.63-0.83 mm, it agrees within 0.09 mm. This measures the floor: each seed's head and pose
imaged still (``simulate_benchmark_session(still=True)``: no motion, no eddy currents, no
realism items), first noiseless, then with Rician noise at the preset's SNR (defined as for
every simulated session: mean white-matter b0 / sigma), through the App's motion correction
(one thread). Whatever FD it reports is the estimate's own.

Usage::

    python benchmarks/tuning/still_head_fd.py OUT.json [--presets slab standard] \
        [--seeds 1 2 11 12] [--training-seeds 1 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_motion import SIMULATED_PE_AXIS  # noqa: E402

from ketamine_dti.dwi import gradients, motion  # noqa: E402
from ketamine_dti.dwi.motion import FD_OUTLIER_MM  # noqa: E402
from ketamine_dti.simulate import signal  # noqa: E402
from ketamine_dti.simulate.presets import PRESETS  # noqa: E402
from ketamine_dti.simulate.session import simulate_benchmark_session  # noqa: E402
from ketamine_dti.threads import limit_threads  # noqa: E402


def still_fd(preset: str, seed: int) -> dict:
    """The App's FD on one still head, noiseless and at the preset's SNR."""
    still = simulate_benchmark_session(preset, seed=seed, still=True)
    # the preset's SNR, defined as a session's is (mean white-matter b0 / sigma)
    sigma = signal.snr_sigma(
        still.clean[..., 0], still.fractions["wm"], PRESETS[preset].default_snr
    )
    gtab = gradients.GradientTable(bvals=still.bvals, bvecs=still.bvecs)
    zooms = tuple(np.linalg.norm(still.affine[:3, :3], axis=0))
    noisy = signal.add_rician_noise(still.data, sigma, np.random.default_rng([seed, 44]))
    series = {"noiseless": still.data, "noisy": noisy}
    row = {"preset": preset, "seed": seed, "sigma": float(sigma)}
    for name, data in series.items():
        with limit_threads(1):
            result = motion.correct_series(
                data, gtab, still.affine, zooms, pe_axis=SIMULATED_PE_AXIS
            )
        fd = result.framewise_displacement[1:]
        row[f"{name}_mean_fd_mm"] = float(fd.mean())
        row[f"{name}_max_fd_mm"] = float(fd.max())
        row[f"{name}_n_outliers"] = int((fd > FD_OUTLIER_MM).sum())
    row["n_volumes"] = int(len(still.bvals))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--presets", nargs="+", default=["slab", "standard"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 11, 12])
    parser.add_argument("--training-seeds", type=int, nargs="*", default=[1, 2])
    args = parser.parse_args(argv)
    rows = []
    for preset in args.presets:
        for seed in args.seeds:
            rows.append(still_fd(preset, seed))
            print(json.dumps(rows[-1]), flush=True)
    held_out = [s for s in args.seeds if s not in args.training_seeds]
    result = {"training_seeds": args.training_seeds, "held_out_seeds": held_out, "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
