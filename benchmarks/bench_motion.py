"""Motion correction against the simulator's known motion, and on the real Prisma scan.

Simulated: ``standard`` sessions from ``simulate_benchmark_session`` (training seeds by default,
noisy data as written, no denoising). The simulator knows, for every volume, which reference-
position voxel each raw voxel shows (``signal.volume_source_matrix``: rigid motion and the
eddy-current affine along phase encoding). For every brain voxel of the reference (the first b0's
position) we compare the raw-volume point the estimated affine maps it to with the true one:
the voxel displacement error (mm). Reported: its median and 95th percentile over all brain
voxels and volumes, the same split into b0 and diffusion-weighted volumes, the mean error of the
DW volumes' rigid translation (the b0-to-DW step), mean FD estimated and true, and the CPU time
of ``correct_series`` with one thread.

Real (optional, ``--real BIDS_DIR``, arranged by scripts/arrange_realdata.py): mean FD and
outlier count of both sessions, the raw series through the same core function.

Seeds: the method was tuned on ``--training-seeds`` (default 1); the other seeds are held out.
Both sets are written into the results.

Usage::

    python benchmarks/bench_motion.py --seeds 1 3 4 --label after
    python benchmarks/bench_motion.py --seeds 1 3 4 --real /tmp/real --label after
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The simulator encodes phase along voxel axis j (bids_writer: PhaseEncodingDirection j).
SIMULATED_PE_AXIS = 1


def true_maps(session) -> np.ndarray:
    """(N, 4, 4) voxel maps reference index -> raw index, as the simulator drew them."""
    from ketamine_dti.simulate import signal

    shape = session.data.shape[:3]
    voxel_mm = float(np.linalg.norm(session.affine[:3, 0]))
    return np.stack([
        np.linalg.inv(signal.volume_source_matrix(
            shape, voxel_mm, session.motion, v, session.bvals[v], session.bvecs[v],
            SIMULATED_PE_AXIS))
        for v in range(len(session.bvals))
    ])  # fmt: skip


def displacement_errors(session, affines: np.ndarray) -> np.ndarray:
    """(N, n_brain) mm between estimated and true raw points of every reference brain voxel."""
    affine = session.affine
    points = np.c_[np.argwhere(session.brain_mask), np.ones(int(session.brain_mask.sum()))]
    errors = []
    for estimate, truth in zip(affines, true_maps(session), strict=True):
        estimated_voxel = np.linalg.inv(affine) @ estimate @ affine
        delta = (estimated_voxel - truth) @ points.T
        errors.append(np.linalg.norm(affine[:3, :3] @ delta[:3], axis=0))
    return np.asarray(errors)


def simulated_case(seed: int) -> dict:
    from ketamine_dti.dwi import gradients, motion
    from ketamine_dti.simulate.session import simulate_benchmark_session
    from ketamine_dti.threads import limit_threads

    session = simulate_benchmark_session("standard", seed=seed)
    gtab = gradients.GradientTable(bvals=session.bvals, bvecs=session.bvecs)
    zooms = tuple(np.linalg.norm(session.affine[:3, :3], axis=0))
    start = time.process_time()
    with limit_threads(1):
        result = motion.correct_series(
            session.data, gtab, session.affine, zooms, pe_axis=SIMULATED_PE_AXIS
        )
    cpu_s = time.process_time() - start
    errors = displacement_errors(session, result.affines)
    b0 = gtab.b0_mask
    truth_params = motion.motion_parameters(
        np.stack([session.affine @ m @ np.linalg.inv(session.affine) for m in true_maps(session)]),
        motion.grid_center(session.data.shape, session.affine),
    )
    step = (result.parameters[~b0, :3] - truth_params[~b0, :3]).mean(axis=0)
    return {
        "seed": seed,
        "cpu_s": round(cpu_s, 1),
        "error_median_mm": float(np.median(errors)),
        "error_p95_mm": float(np.percentile(errors, 95)),
        "error_b0_median_mm": float(np.median(errors[b0])),
        "error_dw_median_mm": float(np.median(errors[~b0])),
        "error_dw_p95_mm": float(np.percentile(errors[~b0], 95)),
        "dw_translation_bias_mm": [round(float(v), 3) for v in step],
        "mean_fd_mm": float(result.framewise_displacement[1:].mean()),
        "true_mean_fd_mm": float(session.motion.framewise_displacement_mm()[1:].mean()),
        "n_outlier_volumes": int(result.outliers.sum()),
    }


def real_case(bids_dir: Path) -> list[dict]:
    import nibabel as nib

    from ketamine_dti.dwi import gradients, motion
    from ketamine_dti.threads import limit_threads

    rows = []
    for series in sorted(bids_dir.glob("sub-*/ses-*/dwi/*_dwi.nii.gz")):
        stem = str(series)[: -len(".nii.gz")]
        image = nib.load(series)
        gtab = gradients.GradientTable(
            bvals=gradients.read_bvals(stem + ".bval"), bvecs=gradients.read_bvecs(stem + ".bvec")
        )
        pe_axis = motion.pe_axis_from_metadata(json.loads(Path(stem + ".json").read_text()))
        start = time.process_time()
        with limit_threads(1):
            result = motion.correct_series(
                image.get_fdata(dtype=np.float32), gtab, image.affine,
                image.header.get_zooms()[:3], pe_axis=pe_axis,
            )  # fmt: skip
        rows.append({
            "series": series.name,
            "cpu_s": round(time.process_time() - start, 1),
            **motion.motion_summary(result),
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--real", type=Path, default=None)
    parser.add_argument("--label", default="after")
    parser.add_argument(
        "--training-seeds",
        type=int,
        nargs="*",
        default=[1],
        help="seeds the method was tuned on (the others are held out)",
    )
    parser.add_argument(
        "--final-mi-sampling",
        type=float,
        default=None,
        help="override motion.FINAL_MI_SAMPLING (the refinement's sampled share of voxels)",
    )
    args = parser.parse_args(argv)
    from ketamine_dti.dwi import motion

    if args.final_mi_sampling is not None:
        motion.FINAL_MI_SAMPLING = args.final_mi_sampling
    results = {
        "label": args.label,
        "final_mi_sampling": motion.FINAL_MI_SAMPLING,
        "training_seeds": sorted(set(args.seeds) & set(args.training_seeds)),
        "held_out_seeds": sorted(set(args.seeds) - set(args.training_seeds)),
        "simulated": [],
        "real": [],
    }
    for seed in args.seeds:
        results["simulated"].append(simulated_case(seed))
        print(json.dumps(results["simulated"][-1]), flush=True)
    if args.real is not None:
        results["real"] = real_case(args.real)
        for row in results["real"]:
            print(json.dumps(row), flush=True)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"motion_{args.label}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
