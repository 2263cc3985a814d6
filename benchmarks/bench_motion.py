"""Motion correction against the simulator's known motion, and on the real Prisma scan.

Simulated: ``standard`` (or ``--preset``) sessions from ``simulate_benchmark_session``
(training seeds by default, noisy data as written, no denoising). The simulator knows, for
every volume, which reference-position voxel each raw voxel shows
(``signal.volume_source_matrix``: rigid motion and the eddy-current affine along phase
encoding). For every brain voxel of the reference (the first b0's
position) we compare the raw-volume point the estimated affine maps it to with the true one:
the voxel displacement error (mm). Reported: its median and 95th percentile over all brain
voxels and volumes, the same split into b0 and diffusion-weighted volumes, the mean error of the
DW volumes' rigid translation (the b0-to-DW step), mean FD estimated and true, the outlier
volumes (FD above the App's cut) of both, the per-volume correlation of the two FDs, and the
CPU time of ``correct_series`` with one thread. The true FD is the simulator's
(``DwiSession.framewise_displacement_mm``: each volume's mean head position, jerks within a
volume included); ``true_mean_fd_without_jerks_mm`` is the figure results before session 43
called true, which left within-volume motion out.

Real (optional, ``--real BIDS_DIR``, arranged by scripts/arrange_realdata.py): mean FD and
outlier count of both sessions, the raw series through the same core function.

Realism (``--realism``, default ``ideal``, the simulator's own default and that of every
earlier motion result): at ``typical`` the simulator adds eddy currents with second-order
spatial terms, motion within a few volumes (each slice its own rigid position), slice dropouts
and k-space truncation (``ketamine_dti.simulate.realism``). The true raw point of a reference
voxel is then no longer an affine map of it: it is solved from the simulator's forward model
(:func:`true_raw_points`: raw point q of slice k shows reference index
``M_k (q - d(q) / voxel_mm e_j)``, d the eddy polynomial at the raw position). In a volume with
motion within it, interleaved slices jerk apart, so a reference point may be shown by two raw
slices or by none; there the truth is taken in the raw slice the estimate reads the point from.
Added at every realism: issue 17's figure, the median over DW volumes of each volume's median
error (mm and voxels, against :data:`TARGET_VOXELS`), with the b0s'. Added with realism items
(:func:`realism_figures`): the same without the volumes with motion within them; the
second-order field's own magnitude in the brain; the floor an affine cannot go below; the
estimate's distance from the best affine; and a check of the truth against the simulator's own
resampling (:func:`check_truth`).

Seeds: the method was tuned on ``--training-seeds`` (default 1); the other seeds are held out.
Both sets are written into the results.

Usage::

    python benchmarks/bench_motion.py --seeds 1 3 4 --label after
    python benchmarks/bench_motion.py --seeds 1 3 4 --real /tmp/real --label after
    python benchmarks/bench_motion.py --seeds 1 3 4 --realism typical --label typical
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ketamine_dti.simulate.presets import PRESETS

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The simulator encodes phase along voxel axis j (bids_writer: PhaseEncodingDirection j).
SIMULATED_PE_AXIS = 1
#: The simulator's slices lie along voxel axis k (realism.move_series: one rigid map per k).
SIMULATED_SLICE_AXIS = 2
#: Issue 12, eddy correction: median over DW volumes of the residual <= 0.3 voxel.
TARGET_VOXELS = 0.3
#: Solving the forward model for the raw point: at most this many iterations (the eddy fixed
#: point contracts by |dd/dy| ~ 0.03 per step), stopped below the tolerance (voxels).
SOLVER_ITERATIONS = 50
SOLVER_TOLERANCE_VOXELS = 1e-9
#: The simulator's eddy polynomial terms by name (their order is realism.EDDY_TERMS); x, y, z
#: in mm from the grid centre.
EDDY_TERM_VALUES = {
    "const": lambda x, y, z: np.ones_like(x),
    "x": lambda x, y, z: x,
    "y": lambda x, y, z: y,
    "z": lambda x, y, z: z,
    "xx": lambda x, y, z: x * x,
    "yy": lambda x, y, z: y * y,
    "zz": lambda x, y, z: z * z,
    "xy": lambda x, y, z: x * y,
    "xz": lambda x, y, z: x * z,
    "yz": lambda x, y, z: y * z,
}
#: The terms an affine correction cannot represent.
SECOND_ORDER_TERMS = ("xx", "yy", "zz", "xy", "xz", "yz")


def voxel_size_mm(session) -> float:
    return float(np.linalg.norm(session.affine[:3, 0]))


def raw_shape(session) -> tuple[int, int, int]:
    return session.data.shape[:3]


def true_map(session, volume: int) -> np.ndarray:
    """4x4 voxel map reference index -> raw index of one volume: rigid motion and the eddy
    affine (the whole truth at ``ideal`` realism)."""
    from ketamine_dti.simulate import signal

    return np.linalg.inv(signal.volume_source_matrix(
        raw_shape(session), voxel_size_mm(session), session.motion, volume,
        session.bvals[volume], session.bvecs[volume], SIMULATED_PE_AXIS,
    ))  # fmt: skip


def true_maps(session) -> np.ndarray:
    """(N, 4, 4) voxel maps reference index -> raw index, as the simulator drew them."""
    return np.stack([true_map(session, v) for v in range(len(session.bvals))])


def slice_motion_volumes(session) -> list[int]:
    """Volumes in which the head moved during the acquisition (realism ``slice_motion``)."""
    artefacts = session.artefacts
    if artefacts is None or artefacts.slice_motion is None:
        return []
    return sorted(artefacts.slice_motion.offsets)


def eddy_displacement(
    coefficients: np.ndarray, raw_points: np.ndarray, shape: tuple[int, ...], voxel_mm: float
) -> np.ndarray:
    """Eddy displacement (mm along phase encode) at raw voxel points (3, n); coefficients (10,)
    in realism.EDDY_TERMS order (one volume's, gradient and b applied)."""
    from ketamine_dti.simulate import realism

    centre = (np.asarray(shape[:3], dtype=float) - 1.0) / 2.0
    x, y, z = (raw_points - centre[:, None]) * voxel_mm
    terms = np.stack([EDDY_TERM_VALUES[name](x, y, z) for name in realism.EDDY_TERMS])
    return coefficients @ terms


def slice_matrices(session, volume: int, slice_motion: bool = True) -> np.ndarray:
    """(Z, 4, 4) raw index -> reference index: each raw slice's rigid head position, the
    volume's plus its within-volume offset (as realism.move_series builds them)."""
    from ketamine_dti.simulate import signal

    shape = raw_shape(session)
    offsets = np.zeros((shape[SIMULATED_SLICE_AXIS], 6))
    if slice_motion and volume in slice_motion_volumes(session):
        offsets = session.artefacts.slice_motion.offsets[volume]
    translation = session.motion.translations_mm[volume]
    angles = session.motion.rotations_deg[volume]
    return np.stack([
        signal.rigid_index_matrix(
            shape, voxel_size_mm(session), translation + o[:3], angles + o[3:])
        for o in offsets
    ])  # fmt: skip


def solve_raw_points(
    matrices: np.ndarray,
    coefficients: np.ndarray,
    reference_points: np.ndarray,
    shape: tuple[int, ...],
    voxel_mm: float,
    slices: np.ndarray | None = None,
) -> np.ndarray:
    """Raw voxel points (3, n) that show the reference voxel points (3, n).

    Inverts realism.resample_volume: raw point q of slice k shows reference index
    ``M_k (q - d(q) / voxel_mm e_j)``, d the eddy displacement at the raw position q. So
    ``u = M_k^-1 r``, q = u except along j, where q_j = u_j + d(q) / voxel_mm (fixed-point
    iteration). ``slices`` (n,): the raw slice k of each point, needed when the slices' head
    positions differ (a volume with motion within it).
    """
    homogeneous = np.vstack([reference_points, np.ones(reference_points.shape[1])])
    inverse = np.linalg.inv(matrices)[:, :3]
    if np.all(matrices == matrices[0]):
        undisplaced = inverse[0] @ homogeneous
    elif slices is None:
        raise ValueError("the slices have different head positions: give each point's slice")
    else:
        undisplaced = np.einsum("nab,bn->an", inverse[slices], homogeneous)
    raw = undisplaced.copy()
    for _ in range(SOLVER_ITERATIONS):
        shift = eddy_displacement(coefficients, raw, shape, voxel_mm) / voxel_mm
        step = undisplaced[SIMULATED_PE_AXIS] + shift - raw[SIMULATED_PE_AXIS]
        raw[SIMULATED_PE_AXIS] += step
        if np.abs(step).max() < SOLVER_TOLERANCE_VOXELS:
            break
    return raw


def volume_eddy(session, second_order: bool = True) -> np.ndarray:
    """(N, 10) eddy coefficients of every volume; without ``second_order`` those terms are 0."""
    from ketamine_dti.simulate import realism

    coefficients = session.artefacts.volume_eddy(session.bvals, session.bvecs)
    if not second_order:
        coefficients[:, [realism.EDDY_TERMS.index(t) for t in SECOND_ORDER_TERMS]] = 0.0
    return coefficients


def true_raw_points(
    session,
    volume: int,
    points: np.ndarray,
    slices: np.ndarray | None = None,
    slice_motion: bool = True,
    second_order: bool = True,
) -> np.ndarray:
    """Raw voxel points (3, n) where volume ``volume`` shows reference voxel points (3, n).

    ``ideal`` realism: the affine true map (the earlier results' truth). With realism items:
    the simulator's forward model (solve_raw_points), optionally without the within-volume
    motion (``slice_motion``) or the eddy field's second-order terms (``second_order``). In a
    volume with motion within it a reference point can be shown by two raw slices or by none
    (interleaved slices jerk apart), so the truth is taken in the raw slice ``slices`` (n,).
    """
    if session.artefacts is None:
        return (true_map(session, volume) @ np.vstack([points, np.ones(points.shape[1])]))[:3]
    return solve_raw_points(
        slice_matrices(session, volume, slice_motion),
        volume_eddy(session, second_order)[volume],
        points,
        raw_shape(session),
        voxel_size_mm(session),
        slices,
    )


def brain_points(session) -> np.ndarray:
    """(3, n) voxel indices of the reference brain mask."""
    return np.argwhere(session.brain_mask).T.astype(float)


def point_distances_mm(session, points_a: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    """(n,) distances (mm) between two sets of voxel points (3, n) of the session's grid."""
    return np.linalg.norm(session.affine[:3, :3] @ (points_a - points_b), axis=0)


def voxel_map(session, estimate: np.ndarray) -> np.ndarray:
    """An estimated RAS+ map (reference -> raw, mm) as a voxel-index map of the session."""
    return np.linalg.inv(session.affine) @ estimate @ session.affine


def estimated_raw_points(session, estimate: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Raw voxel points (3, n) an estimated RAS+ map (reference -> raw, mm) sends points to."""
    matrix = voxel_map(session, estimate)
    return matrix[:3, :3] @ points + matrix[:3, 3:]


def displacement_vectors(session, affines: np.ndarray, volumes=None):
    """Per volume (all, or the indices ``volumes``), (3, n_brain): estimated minus true raw
    point of every reference brain voxel, mm in world axes (one volume at a time, so that a
    long series is never held as vectors).

    In a volume with motion within it the truth is taken in the raw slice the estimate reads
    the voxel from (nearest to the estimated point): the error is then the misplacement of
    what the correction resamples there.
    """
    points = brain_points(session)
    last_slice = raw_shape(session)[SIMULATED_SLICE_AXIS] - 1
    for v in range(len(affines)) if volumes is None else volumes:
        estimate = affines[v]
        if session.artefacts is None:  # affine truth: as the earlier results, bit for bit
            difference = voxel_map(session, estimate) - true_map(session, v)
            delta = difference[:3, :3] @ points + difference[:3, 3:]
        else:
            estimated = estimated_raw_points(session, estimate, points)
            slices = np.rint(estimated[SIMULATED_SLICE_AXIS])
            slices = np.clip(slices, 0, last_slice).astype(int)
            delta = estimated - true_raw_points(session, v, points, slices)
        yield session.affine[:3, :3] @ delta


def displacement_errors(session, affines: np.ndarray) -> np.ndarray:
    """(N, n_brain) mm between estimated and true raw points of every reference brain voxel
    (the lengths of :func:`displacement_vectors`)."""
    return np.asarray(
        [np.linalg.norm(vector, axis=0) for vector in displacement_vectors(session, affines)]
    )


def best_affine(points: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """4x4 least-squares affine voxel map sending points (3, n) closest to raw (3, n)."""
    design = np.vstack([points, np.ones(points.shape[1])]).T
    solution, *_ = np.linalg.lstsq(design, raw.T, rcond=None)
    return np.vstack([solution.T, [0.0, 0.0, 0.0, 1.0]])


def per_volume_median(values: list[np.ndarray] | np.ndarray) -> np.ndarray:
    return np.array([float(np.median(v)) for v in values])


def volume_figures(errors: np.ndarray, b0: np.ndarray, voxel_mm: float) -> dict:
    """Issue 12's figure: the median over DW volumes of each volume's median error in the brain
    (mm and voxels, against TARGET_VOXELS), the 95th percentile and maximum of those volume
    medians, and the same median and pooled p95 for the b0s."""
    medians = per_volume_median(errors)
    dw = medians[~b0]
    return {
        "dw_volume_median_mm": float(np.median(dw)),
        "dw_volume_median_voxels": float(np.median(dw) / voxel_mm),
        "dw_volume_median_p95_mm": float(np.percentile(dw, 95)),
        "dw_volume_median_max_mm": float(dw.max()),
        "b0_volume_median_mm": float(np.median(medians[b0])),
        "b0_volume_median_voxels": float(np.median(medians[b0]) / voxel_mm),
        "error_b0_p95_mm": float(np.percentile(errors[b0], 95)),
        "target_voxels": TARGET_VOXELS,
        "meets_target": bool(np.median(dw) / voxel_mm <= TARGET_VOXELS),
    }


def realism_figures(session, affines: np.ndarray, errors: np.ndarray, b0: np.ndarray) -> dict:
    """What the realism items leave, in mm unless named voxels (medians are over DW volumes
    of each volume's median over the brain).

    At each DW volume's own head position (its within-volume motion left out): the
    second-order eddy field's own magnitude |d_2| at the true raw points; the affine floor, the
    distance of the true points from their least-squares affine fit (what no affine correction
    removes: the second-order field less its affine part). Over the DW volumes without motion
    within them: the error, the estimate's distance from that best affine, and the floor's
    share of the mean squared error (exact: the fit's residual is orthogonal to every affine
    map, so squared error = squared distance estimate-best + squared floor). The volumes with
    motion within them: each one's median error.
    """
    voxel_mm = voxel_size_mm(session)
    points = brain_points(session)
    jerked = slice_motion_volumes(session)
    second_order = volume_eddy(session) - volume_eddy(session, second_order=False)
    field, floor, from_best = [], [], []
    for v in np.flatnonzero(~b0):
        raw = true_raw_points(session, v, points, slice_motion=False)
        field.append(np.abs(eddy_displacement(second_order[v], raw, raw_shape(session), voxel_mm)))
        fit = best_affine(points, raw)
        fitted = fit[:3, :3] @ points + fit[:3, 3:]
        floor.append(point_distances_mm(session, fitted, raw))
        if v not in jerked:
            estimated = estimated_raw_points(session, affines[v], points)
            from_best.append(point_distances_mm(session, estimated, fitted))
    still = ~np.isin(np.flatnonzero(~b0), jerked)
    still_errors = errors[~b0][still]
    still_medians = per_volume_median(still_errors)
    field_medians = per_volume_median(field)
    floor_medians = per_volume_median(floor)
    floor_squared = float(np.mean(np.square(np.asarray(floor)[still])))
    return {
        "slice_motion_volumes": jerked,
        "dw_volume_median_mm_without_slice_motion": float(np.median(still_medians)),
        "dw_volume_median_voxels_without_slice_motion": float(np.median(still_medians) / voxel_mm),
        "dw_volume_medians_slice_motion_mm": {
            str(v): round(float(np.median(errors[v])), 4) for v in jerked if not b0[v]
        },
        "second_order_field_dw_median_mm": float(np.median(field_medians)),
        "second_order_field_dw_median_voxels": float(np.median(field_medians) / voxel_mm),
        "second_order_field_p95_mm": float(np.percentile(np.concatenate(field), 95)),
        "affine_floor_dw_median_mm": float(np.median(floor_medians)),
        "affine_floor_dw_median_voxels": float(np.median(floor_medians) / voxel_mm),
        "affine_floor_p95_mm": float(np.percentile(np.concatenate(floor), 95)),
        "estimate_to_best_affine_dw_median_mm": float(np.median(per_volume_median(from_best))),
        "affine_floor_share_of_squared_error": floor_squared / float(np.mean(still_errors**2)),
        "truth_check": check_truth(session, points),
    }


def check_truth(session, points: np.ndarray) -> dict:
    """The truth against the simulator's own code (max over volumes).

    ``linear_vs_volume_source_matrix_mm``: without the second-order terms and the within-volume
    motion, the solved points of the brain voxels against signal.volume_source_matrix's affine
    truth. ``max_error_voxels``: images of the reference voxel coordinates (and of ones, to
    keep only samples whose eight corners are in the grid) resampled by
    realism.resample_volume tell which reference point each raw voxel shows (trilinear is exact
    on a linear function; float32); solving from that point in the voxel's own slice must give
    the raw voxel back (raw voxels that show the brain).
    """
    from ketamine_dti.simulate import realism

    shape = raw_shape(session)
    voxel_mm = voxel_size_mm(session)
    centre = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    grid = np.indices(shape, dtype=np.float32)
    images = [grid[axis] - np.float32(centre[axis]) for axis in range(3)]
    images.append(np.ones(shape, dtype=np.float32))
    coefficients = volume_eddy(session)
    linear_gap = max_error = 0.0
    for v in range(len(session.bvals)):
        raw = true_raw_points(session, v, points, slice_motion=False, second_order=False)
        affine_truth = true_map(session, v) @ np.vstack([points, np.ones(points.shape[1])])
        linear_gap = max(linear_gap, point_distances_mm(session, raw, affine_truth[:3]).max())
        matrices = slice_matrices(session, v)
        *shown, weight = [
            realism.resample_volume(image, matrices, coefficients[v], voxel_mm, jacobian=False)
            for image in images
        ]
        shown = np.stack(shown).astype(float) + centre[:, None, None, None]
        nearest = np.clip(np.rint(shown), 0, np.array(shape)[:, None, None, None] - 1)
        select = (np.abs(weight - 1.0) < 1e-5) & session.brain_mask[tuple(nearest.astype(int))]
        target = np.argwhere(select).T
        solved = solve_raw_points(
            matrices, coefficients[v], shown[:, select], shape, voxel_mm,
            target[SIMULATED_SLICE_AXIS],
        )  # fmt: skip
        max_error = max(max_error, float(np.abs(solved - target).max()))
    return {"linear_vs_volume_source_matrix_mm": float(linear_gap), "max_error_voxels": max_error}


def simulated_case(seed: int, realism: str = "ideal", preset: str = "standard") -> dict:
    from ketamine_dti.dwi import gradients, motion
    from ketamine_dti.simulate.session import simulate_benchmark_session
    from ketamine_dti.threads import limit_threads

    session = simulate_benchmark_session(preset, seed=seed, realism=realism)
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
    if session.artefacts is None:
        truth_maps = true_maps(session)
    else:  # the affine closest to the truth at the volume's own head position
        points = brain_points(session)
        truth_maps = np.stack([
            best_affine(points, true_raw_points(session, v, points, slice_motion=False))
            for v in range(len(session.bvals))
        ])  # fmt: skip
    truth_params = motion.motion_parameters(
        np.stack([session.affine @ m @ np.linalg.inv(session.affine) for m in truth_maps]),
        motion.grid_center(session.data.shape, session.affine),
    )
    step = (result.parameters[~b0, :3] - truth_params[~b0, :3]).mean(axis=0)
    true_fd = session.framewise_displacement_mm()
    row = {
        "seed": seed,
        "cpu_s": round(cpu_s, 1),
        "error_median_mm": float(np.median(errors)),
        "error_p95_mm": float(np.percentile(errors, 95)),
        "error_b0_median_mm": float(np.median(errors[b0])),
        "error_dw_median_mm": float(np.median(errors[~b0])),
        "error_dw_p95_mm": float(np.percentile(errors[~b0], 95)),
        "dw_translation_bias_mm": [round(float(v), 3) for v in step],
        "mean_fd_mm": float(result.framewise_displacement[1:].mean()),
        "true_mean_fd_mm": float(true_fd[1:].mean()),
        "true_mean_fd_without_jerks_mm": float(
            session.motion.framewise_displacement_mm()[1:].mean()
        ),
        "fd_r": float(np.corrcoef(result.framewise_displacement[1:], true_fd[1:])[0, 1]),
        "n_outlier_volumes": int(result.outliers.sum()),
        "true_n_outlier_volumes": int((true_fd > motion.FD_OUTLIER_MM).sum()),
        **volume_figures(errors, b0, voxel_size_mm(session)),
    }
    if session.artefacts is not None:
        row.update(realism_figures(session, result.affines, errors, b0))
    return row


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
        "--realism",
        choices=("ideal", "typical"),
        default="ideal",
        help="the simulator's realism level (realism.REALISM_LEVELS); ideal as before",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="standard",
        help="the simulator's acquisition preset (slab: the real Prisma pair's protocol)",
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
        "realism": args.realism,
        "preset": args.preset,
        "training_seeds": sorted(set(args.seeds) & set(args.training_seeds)),
        "held_out_seeds": sorted(set(args.seeds) - set(args.training_seeds)),
        "simulated": [],
        "real": [],
    }
    for seed in args.seeds:
        results["simulated"].append(simulated_case(seed, args.realism, args.preset))
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
