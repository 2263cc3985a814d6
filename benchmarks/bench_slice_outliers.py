"""Slice dropouts on simulated standard sessions (issue 12): detection, false alarms, the ROI MD
error with and without replacement, and the detector's cost.

Each seed simulates one standard session at ``typical`` realism twice: as drawn (dropouts in
~10% of the diffusion volumes, the simulator's ``realism.random_dropouts``) and with the
``dropouts`` item off (every other draw is the same: each realism item has its own random
stream). Both go through the App's own steps, in its order: MP-PCA (noise map), motion and
eddy correction, the brain mask of the mean b0, slice-outlier detection
(``replace_slice_outliers``), WLS tensor. Reported per seed:

- recall and precision of the detector against the planted (volume, slice) pairs it tested;
- false alarms on the dropout-free session: flagged / tested slices (target <= 0.5%);
- ROI MD error: median over the 7 true regions of |mean MD / mean truth MD - 1| over the
  region's voxels inside the App's mask (truth: the simulator's noiseless apparent MD at the
  reference position), for dropout-free data, dropouts with replacement, dropouts without
  (target: replacement within 0.5 percentage points of the dropout-free error);
- CPU seconds of the detector (one thread).

Seeds: ``--training-seeds`` (default 3 and 7: the detector's angular model was chosen on them,
``benchmarks/tuning/slice_predictor.py``) and held-out ``--seeds``; both are written into the
results.

Usage::

    python benchmarks/bench_slice_outliers.py --seeds 11 12 --label session10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The simulator encodes phase along voxel axis j and stacks slices along k.
SIMULATED_PE_AXIS = 1
SIMULATED_SLICE_AXIS = 2


def preprocess(session):
    """The App's steps before the tensor fit: (aligned data, rotated gtab, mask)."""
    from ketamine_dti.dwi import gradients, motion
    from ketamine_dti.dwi.denoise import mppca
    from ketamine_dti.dwi.mask import brain_mask

    zooms = tuple(np.linalg.norm(session.affine[:3, :3], axis=0))
    gtab = gradients.GradientTable(bvals=session.bvals, bvecs=session.bvecs)
    denoised, _ = mppca(session.data, n_threads=1)
    result = motion.correct_series(denoised, gtab, session.affine, zooms, SIMULATED_PE_AXIS)
    rotated = gradients.GradientTable(bvals=gtab.bvals, bvecs=result.bvecs)
    mask = brain_mask(result.corrected[..., gtab.b0_mask].mean(axis=-1), zooms)
    return result.corrected, rotated, mask


def roi_md_error(md: np.ndarray, session, mask: np.ndarray) -> float:
    """Median over the true regions of |mean MD / mean truth MD - 1| inside ``mask``."""
    errors = []
    for label in np.unique(session.region_dseg[session.region_dseg > 0]):
        voxels = (session.region_dseg == label) & mask & np.isfinite(md)
        if voxels.sum() >= 10:
            errors.append(abs(md[voxels].mean() / session.truth_md[voxels].mean() - 1.0))
    return float(np.median(errors))


def run_seed(seed: int, also_off: tuple[str, ...] = ()) -> dict:
    from ketamine_dti.dwi.slice_outliers import replace_slice_outliers
    from ketamine_dti.dwi.tensor import fit_tensor
    from ketamine_dti.simulate.session import simulate_benchmark_session
    from ketamine_dti.threads import limit_threads

    row: dict = {"seed": seed}
    with limit_threads(1):
        for variant, off in (("dropouts", ()), ("dropout_free", ("dropouts",))):
            session = simulate_benchmark_session(
                "standard", seed=seed, realism="typical", realism_off=(*off, *also_off)
            )
            data, gtab, mask = preprocess(session)
            start = time.process_time()
            found = replace_slice_outliers(
                data, gtab.bvals, gtab.bvecs, mask, SIMULATED_SLICE_AXIS
            )
            cpu_s = time.process_time() - start
            n_tested = int(found.tested.sum())
            n_found = int(found.outliers.sum())
            entry = {"cpu_s": round(cpu_s, 1), "tested_slices": n_tested, "flagged": n_found}
            for label, series in (("replaced", found.data), ("none", data)):
                fit = fit_tensor(series, gtab.bvals, gtab.bvecs, mask=mask, n_threads=1)
                entry[f"roi_md_error_{label}"] = roi_md_error(fit.md, session, mask)
            if variant == "dropouts":
                planted = {(v, k) for v, k, _ in session.artefacts.dropouts.slices}
                planted_tested = {(v, k) for v, k in planted if found.tested[v, k]}
                flagged = {tuple(map(int, p)) for p in np.argwhere(found.outliers)}
                hits = len(planted_tested & flagged)
                entry |= {
                    "planted": len(planted),
                    "planted_tested": len(planted_tested),
                    "recall": hits / max(len(planted_tested), 1),
                    "precision": hits / max(len(flagged), 1),
                    "dropout_volumes": len({v for v, _ in planted}),
                    "dw_volumes": int((session.bvals > 0).sum()),
                }
            else:
                entry["false_alarm_rate"] = n_found / max(n_tested, 1)
            moved = session.artefacts.slice_motion
            moved_volumes = set() if moved is None else set(moved.offsets)
            flagged_pairs = [tuple(map(int, p)) for p in np.argwhere(found.outliers)]
            entry["flagged_pairs"] = flagged_pairs
            entry["slice_motion_volumes"] = sorted(moved_volumes)
            entry["flagged_in_slice_motion_volumes"] = sum(
                v in moved_volumes for v, _ in flagged_pairs
            )
            # a volume with slice motion has every slice at its own position: flags there
            # mark moved slices (eddy's --repol flags them too), not clean ones
            unmoved = np.ones(found.tested.shape[0], dtype=bool)
            unmoved[sorted(moved_volumes)] = False
            entry["tested_outside_slice_motion"] = int(found.tested[unmoved].sum())
            entry["flagged_outside_slice_motion"] = int(found.outliers[unmoved].sum())
            entry["false_alarm_rate_outside_slice_motion"] = entry[
                "flagged_outside_slice_motion"
            ] / max(entry["tested_outside_slice_motion"], 1)
            row[variant] = entry
    drop, baseline = row["dropouts"], row["dropout_free"]["roi_md_error_none"]
    row["replacement_vs_free_pt"] = 100 * (drop["roi_md_error_replaced"] - baseline)
    row["none_vs_free_pt"] = 100 * (drop["roi_md_error_none"] - baseline)
    return row


def markdown(result: dict) -> str:
    lines = [
        "# Slice dropouts on simulated standard sessions (typical realism)",
        "",
        f"Realism items also off: {', '.join(result.get('realism_off', [])) or 'none'}.",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Seeds: held-out {result['seeds']['held_out']}; training {result['seeds']['training']}.",
        "",
        "| seed | role | dropout volumes / DW | planted (tested) | recall | precision "
        "| false alarms (dropout-free) | ROI MD error: dropout-free / replaced / not replaced "
        "| replaced - free (pt) | not replaced - free (pt) | detector CPU s "
        "| false alarms in slice-motion volumes | false alarms outside slice-motion volumes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        drop, free = row["dropouts"], row["dropout_free"]
        role = "held out" if row["seed"] in result["seeds"]["held_out"] else "training"
        lines.append(
            f"| {row['seed']} | {role} | {drop['dropout_volumes']} / {drop['dw_volumes']} "
            f"| {drop['planted']} ({drop['planted_tested']}) | {drop['recall']:.3f} "
            f"| {drop['precision']:.3f} | {free['false_alarm_rate']:.3%} "
            f"({free['flagged']} of {free['tested_slices']}) "
            f"| {free['roi_md_error_none']:.2%} / {drop['roi_md_error_replaced']:.2%} / "
            f"{drop['roi_md_error_none']:.2%} | {row['replacement_vs_free_pt']:+.2f} "
            f"| {row['none_vs_free_pt']:+.2f} | {drop['cpu_s']} "
            f"| {free.get('flagged_in_slice_motion_volumes', 'n/a')} of {free['flagged']} "
            f"| {_outside_slice_motion(free)} |"
        )
    lines += [
        "",
        "Targets (issue 12): false alarms <= 0.5% of slices; with replacement, the ROI MD error "
        "within 0.5 percentage points of the dropout-free error.",
        "",
        "The dropout-free session still has the other realism items, among them motion within a "
        "volume: in ~8% of the volumes every slice sits at its own rigid position. A flag there "
        "marks a moved slice, which eddy's --repol also replaces; the last column counts flags "
        "among the slices of the other volumes, which no planted artefact touches.",
    ]
    return "\n".join(lines) + "\n"


def _outside_slice_motion(entry: dict) -> str:
    if "false_alarm_rate_outside_slice_motion" not in entry:
        return "n/a"
    return (
        f"{entry['false_alarm_rate_outside_slice_motion']:.3%} "
        f"({entry['flagged_outside_slice_motion']} of {entry['tested_outside_slice_motion']})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[11, 12])
    parser.add_argument("--training-seeds", type=int, nargs="*", default=[3, 7])
    parser.add_argument("--label", default="latest")
    parser.add_argument(
        "--realism-off", nargs="*", default=[], help="further realism items off in both variants"
    )
    args = parser.parse_args(argv)
    also_off = tuple(args.realism_off)
    rows = [run_seed(seed, also_off) for seed in [*args.training_seeds, *args.seeds]]
    result = {
        "command": "python benchmarks/bench_slice_outliers.py " + " ".join(argv or sys.argv[1:]),
        "seeds": {"held_out": args.seeds, "training": args.training_seeds},
        "realism_off": list(also_off),
        "rows": rows,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    stem = RESULTS_DIR / f"slice_outliers_{args.label}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
