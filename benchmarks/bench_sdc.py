"""Susceptibility distortion correction on simulated trials (issue 11's "what must be shown").

Usage:

    python benchmarks/bench_sdc.py OUT_DIR [--n-participants 4] [--seed 11] [--distortion typical]
        [--run auto none undistorted] [--earlier RESULTS.json] [--analyse-only]

Simulates a ``retest`` trial of the standard preset (no true MD change between sessions) with
planted EPI susceptibility distortion (the simulator's dipole model, which shares no code with
the App's estimator) and runs the participant level twice on one work directory: with the
default ``--sdc auto`` (reverse-PE b0 fieldmaps) and with ``--sdc none``. The second run reuses
the cached anatomy and motion estimation. Reports, each with and without SDC:

- per ROI, the median |md_mean / md_true - 1| over participants x sessions (target with SDC
  <= 3%, and no ROI worse with SDC than without);
- the SD of dMD/MD over participants x ROIs (target with SDC <= 0.6%);
- the field's recovery: median |estimated - true| (Hz) inside the DWI brain mask and inside each
  true ROI, relative to the true field's 99th percentile of |field| in the brain (target
  <= 10%), and the estimation time per session.

With ``--run undistorted`` it also simulates the same trial without distortion (same seed: the
simulator draws the field from its own random stream, so anatomy, motion and noise are the same)
and runs the App on it: the error any correction could reach at best, per ROI, beside the two
runs on the distorted trial. ``--earlier`` reads the distorted runs from an earlier results file
when their outputs are gone.

Results go to OUT_DIR/bench_sdc.json and .md, with the held-out and training seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from bench_participant import (  # noqa: E402
    ALTERNATIVE,
    MEASURED,
    SESSIONS,
    TreeMemorySampler,
    delta,
    own_voxel_truth,
    roi_tables,
)

from ketamine_dti.workflows.base import RUN_WORKFLOW  # noqa: E402

TARGET_MEDIAN_REL_ERROR = 0.03
TARGET_RETEST_SD = 0.006
TARGET_FIELD_ERROR = 0.10
TARGET_ESTIMATION_S = 60.0
MODES = ("auto", "none")
#: The same trial simulated without distortion, run with --sdc none (the floor of the error).
UNDISTORTED = "undistorted"


def simulate(
    out: Path, n_participants: int, seed: int, distortion: str, realism_off: list[str], nprocs: int
) -> Path:
    if not (out / "dataset_description.json").exists():
        off = ["--realism-off", *realism_off] if realism_off else []
        subprocess.run(
            [sys.executable, "-m", "ketamine_dti.simulate.cli", str(out), "--preset", "standard",
             "--scenario", "retest", "--n-participants", str(n_participants), "--seed",
             str(seed), "--distortion", distortion, "--n-procs", str(nprocs), *off],
            check=True,
        )  # fmt: skip
    return out


def run(bids_dir: Path, out: Path, work: Path, sdc: str, nprocs: int) -> list[dict]:
    from ketamine_dti import bids
    from ketamine_dti.config import Config
    from ketamine_dti.workflows.base import run_participant

    config = Config(
        bids_dir=bids_dir, output_dir=out, analysis_level="participant", work_dir=work,
        nprocs=nprocs, omp_nthreads=1, mem_gb=4.0, sdc=sdc,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    bids.init_derivatives(out, bids_dir)
    layout = bids.get_layout(bids_dir)
    rows = []
    for subject in bids.select_participants(bids.participant_folders(bids_dir), where=bids_dir):
        started = time.time()
        with TreeMemorySampler() as sampler:
            try:
                run_participant(config, layout, subject)
                status = "ok"
            except Exception as exc:  # report and go on
                status = f"failed: {exc}"
        rows.append({"subject": subject, "sdc": sdc, "wall_s": time.time() - started,
                     "peak_gb": sampler.peak_gb, "status": status})  # fmt: skip
        logging.info("sub-%s --sdc %s: %s in %.0f s", subject, sdc, status, rows[-1]["wall_s"])
        (out.parent / f"{out.name}_partial.json").write_text(json.dumps(rows, indent=2))
    return rows


def accuracy(bids_dir: Path, out: Path, subjects: list[str], column: str = MEASURED) -> dict:
    """ROI MD error against the true region, and the retest SD of dMD/MD split in two: the
    truth averaged over the App's own voxels in each session (what the sampling alone moves)
    and the measurement's error against that truth."""
    truth = pd.read_csv(bids_dir / "sourcedata/ground_truth/roi_md.tsv", sep="\t")
    keys = ["participant_id", "session_id", "roi"]
    merged = roi_tables(out, subjects).merge(truth, on=keys)
    error = (merged[column] / merged.md_true - 1).abs()
    relative = delta(merged, column)["relative_delta"]
    planted = delta(merged, "md_true")["relative_delta"]
    own = merged.merge(own_voxel_truth(bids_dir, out, subjects), on=keys)
    own_change = delta(own, "md_true_own")["relative_delta"]
    own_error = (delta(own, column)["relative_delta"] - own_change).dropna()
    return {
        "column": column,
        "sd_relative_dmd_truth_over_app_voxels": float(own_change.std(ddof=1)),
        "sd_relative_dmd_error_vs_app_voxels": float(own_error.std(ddof=1)),
        "per_roi_sd_relative_dmd_error_vs_app_voxels": own_error.groupby(level="roi")
        .std(ddof=1)
        .to_dict(),
        "median_abs_rel_error": float(error.median()),
        "per_roi_median_abs_rel_error": error.groupby(merged.roi).median().to_dict(),
        "n_measured": int(error.notna().sum()),
        "sd_relative_dmd": float(relative.std(ddof=1)),
        "sd_relative_dmd_true": float(planted.std(ddof=1)),
        "per_roi_sd_relative_dmd": relative.groupby(level="roi").std(ddof=1).to_dict(),
        "n_pairs": int(len(relative)),
    }


def field_recovery(bids_dir: Path, work: Path, subjects: list[str]) -> dict:
    """Estimated vs true field per session (the estimate from the work directory)."""
    rows = []
    names = None
    for subject in subjects:
        for session in SESSIONS:
            truth_dir = bids_dir / f"sourcedata/ground_truth/sub-{subject}/ses-{session}"
            stem = truth_dir / f"sub-{subject}_ses-{session}_space-dwi_desc-truth_"
            wf = work / RUN_WORKFLOW / f"sub_{subject}_wf/ses_{session}_wf/dwi_preproc_wf"
            estimate_file = wf / "estimate_susceptibility/field_hz.nii.gz"
            if not estimate_file.exists():
                continue
            truth = nib.load(f"{stem}fieldmap.nii.gz").get_fdata()
            dseg = np.rint(nib.load(f"{stem}dseg.nii.gz").get_fdata()).astype(int)
            mask = nib.load(wf / "brain_mask/brain_mask.nii.gz").get_fdata() > 0
            error = np.abs(nib.load(estimate_file).get_fdata() - truth)
            scale = float(np.percentile(np.abs(truth[mask]), 99))
            if names is None:
                table = pd.read_csv(bids_dir / "sourcedata/ground_truth/desc-truth_dseg.tsv",
                                    sep="\t")  # fmt: skip
                names = dict(zip(table["index"], table["name"], strict=True))
            row = {"subject": subject, "session": session, "p99_hz": scale,
                   "brain_median_error_hz": float(np.median(error[mask])),
                   "brain_relative": float(np.median(error[mask]) / scale)}  # fmt: skip
            for label, name in names.items():
                inside = dseg == label
                if inside.any():
                    row[f"roi_{name}"] = float(np.median(error[inside]) / scale)
            row["estimation_s"] = _node_seconds(wf / "estimate_susceptibility")
            rows.append(row)
    frame = pd.DataFrame(rows)
    roi_columns = [c for c in frame.columns if c.startswith("roi_")]
    return {
        "per_session": rows,
        "median_brain_relative": float(frame["brain_relative"].median()),
        "max_brain_relative": float(frame["brain_relative"].max()),
        "per_roi_median_relative": {c[4:]: float(frame[c].median()) for c in roi_columns},
        "per_roi_max_relative": {c[4:]: float(frame[c].max()) for c in roi_columns},
    }


def _node_seconds(node_dir: Path) -> float:
    """A node's run time from its Nipype report (readable whatever the interface's module)."""
    report = node_dir / "_report/report.rst"
    for line in report.read_text().splitlines() if report.exists() else []:
        if line.startswith("* duration :"):
            return float(line.split(":", 1)[1])
    return float("nan")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def markdown(results: dict) -> str:
    runs = {f"--sdc {mode}": results[f"sdc_{mode}"] for mode in MODES if f"sdc_{mode}" in results}
    if UNDISTORTED in results:
        runs["undistorted trial"] = results[UNDISTORTED]
    lines = [
        "# Susceptibility distortion correction on simulated trials",
        "",
        f"Command: `{results['command']}`",
        "",
        f"- Trial: standard preset, `retest` scenario (no true MD change), "
        f"{results['n_participants']} participants, distortion `{results['distortion']}`, "
        f"realism `typical` with {results.get('realism_off') or 'no item'} switched off.",
        f"- Held-out seed {results['seeds']['held_out']}; training seeds "
        f"{results['seeds']['training']} (the estimator's schedule was tuned on the "
        "susceptibility benchmark's training seeds and the real Prisma pair).",
        "",
        "## ROI MD and test-retest",
        "",
        "| | " + " | ".join(runs) + " |",
        "|---|" + "---|" * len(runs),
    ]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(r) for r in runs.values()) + " |")

    column = next(iter(runs.values())).get("column", "md_mean")
    row(
        f"median \\|{column}/md_true - 1\\| (target with SDC <= 3%)",
        lambda r: f"{100 * r['median_abs_rel_error']:.2f}%",
    )
    row(
        f"SD of dMD/MD, {column} (target with SDC <= 0.6%)",
        lambda r: f"{100 * r['sd_relative_dmd']:.2f}%",
    )
    if all(ALTERNATIVE in r for r in runs.values()):
        row(f"the same two with {ALTERNATIVE}", lambda r: (
            f"{100 * r[ALTERNATIVE]['median_abs_rel_error']:.2f}%, "
            f"{100 * r[ALTERNATIVE]['sd_relative_dmd']:.2f}%"))  # fmt: skip
    row(
        "SD of dMD/MD of the truth over the App's voxels (sampling alone)",
        lambda r: _percent(r.get("sd_relative_dmd_truth_over_app_voxels")),
    )
    row(
        "SD of the measured minus that truth (the measurement's own error)",
        lambda r: _percent(r.get("sd_relative_dmd_error_vs_app_voxels")),
    )
    row("ROI-session values measured", lambda r: str(r["n_measured"]))
    row(
        "median wall per participant (min)",
        lambda r: f"{np.median([p['wall_s'] for p in r['participants']]) / 60:.1f}",
    )
    lines += ["", f"Per ROI (median \\|{column}/md_true - 1\\|; SD of dMD/MD):", "",
              "| ROI | " + " | ".join(f"error, {m}" for m in runs)
              + " | " + " | ".join(f"retest SD, {m}" for m in runs) + " |",
              "|---|" + "---|" * (2 * len(runs))]  # fmt: skip
    first = next(iter(runs.values()))
    for roi in first["per_roi_median_abs_rel_error"]:
        errors = [f"{100 * r['per_roi_median_abs_rel_error'].get(roi, float('nan')):.2f}%"
                  for r in runs.values()]  # fmt: skip
        sds = [f"{100 * r['per_roi_sd_relative_dmd'].get(roi, float('nan')):.2f}%"
               for r in runs.values()]  # fmt: skip
        lines.append(f"| {roi} | " + " | ".join(errors + sds) + " |")
    if "worse_with_sdc" in results:
        lines += ["", f"ROIs whose error is worse with SDC: {results['worse_with_sdc'] or 'none'}"]
    if UNDISTORTED in results:
        lines += ["", "The undistorted trial is the same seed simulated with `--distortion none` "
                  "(same anatomy, motion and noise; no fieldmap, so the App ran without SDC): "
                  "the error no distortion correction can go below."]  # fmt: skip
    field = results.get("field")
    if field:
        lines += [
            "", "## Field recovery (median \\|estimated - true\\| / p99 of \\|true\\| in the "
            "brain; target <= 10%)", "",
            f"- Brain: median over sessions {100 * field['median_brain_relative']:.1f}%, worst "
            f"session {100 * field['max_brain_relative']:.1f}%.",
            "- Per ROI (median over sessions / worst session): " + ", ".join(
                f"{roi} {100 * field['per_roi_median_relative'][roi]:.1f}% / "
                f"{100 * field['per_roi_max_relative'][roi]:.1f}%"
                for roi in field["per_roi_median_relative"]
            ) + ".",
            f"- Estimation time per session (node wall time, s): median "
            f"{field['estimation_s_median']:.1f}, max {field['estimation_s_max']:.1f} "
            f"(target <= {TARGET_ESTIMATION_S:g}).",
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


def run_or_read(bids_dir: Path, out: Path, work: Path, sdc: str, nprocs: int, rerun: bool):
    """Run the App (``rerun``) or read back an earlier run's rows; returns the rows, the ok
    subjects and the accuracy summary (the default column and the other one beside it)."""
    partial = out.parent / f"{out.name}_partial.json"
    rows = run(bids_dir, out, work, sdc, nprocs) if rerun else json.loads(partial.read_text())
    subjects = [row["subject"] for row in rows if row["status"] == "ok"]
    result = {"participants": rows}
    if subjects:
        result |= accuracy(bids_dir, out, subjects)
        result[ALTERNATIVE] = accuracy(bids_dir, out, subjects, ALTERNATIVE)
    return subjects, result


def undistorted_run(args: argparse.Namespace, out_dir: Path) -> dict:
    """The same seed simulated with ``--distortion none`` and run through the App (its own
    work directory: nothing is shared with the distorted runs)."""
    bids_dir = simulate(
        out_dir / f"bids_{UNDISTORTED}", args.n_participants, args.seed, "none",
        args.realism_off, args.nprocs,
    )  # fmt: skip
    rerun = UNDISTORTED in args.run and not args.analyse_only
    return run_or_read(
        bids_dir, out_dir / f"out_{UNDISTORTED}", out_dir / f"work_{UNDISTORTED}", "none",
        args.nprocs, rerun,
    )[1]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-participants", type=int, default=4)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--training-seeds", type=int, nargs="*", default=[1, 2, 7])
    parser.add_argument("--distortion", default="typical", choices=["typical", "strong"])
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument(
        "--realism-off",
        nargs="+",
        default=[],
        metavar="ITEM",
        help="simulator realism items to switch off (simulate.cli --realism-off), e.g. gibbs: "
        "each item has its own random stream, so the rest of the trial is the same",
    )
    parser.add_argument("--analyse-only", action="store_true")
    parser.add_argument(
        "--run", nargs="+", choices=[*MODES, UNDISTORTED], default=list(MODES), metavar="MODE",
        help="the --sdc modes to run; the others are read back from an earlier run in OUT_DIR "
        "(e.g. --run auto after a change that --sdc none does not reach); 'undistorted' adds "
        "the same trial simulated without distortion",
    )  # fmt: skip
    parser.add_argument(
        "--earlier", type=Path, metavar="RESULTS_JSON",
        help="take the --sdc modes not run from this results file (e.g. a committed "
        "bench_sdc.json) instead of their outputs in OUT_DIR",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.seed in args.training_seeds:
        parser.error(f"--seed {args.seed} is a training seed; report on a held-out seed")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    out_dir = args.out_dir.absolute()
    bids_dir = out_dir / "bids"
    if not args.earlier or set(MODES) & set(args.run):
        simulate(bids_dir, args.n_participants, args.seed, args.distortion, args.realism_off,
                 args.nprocs)  # fmt: skip
    work = out_dir / "work"
    results = {
        "command": "python benchmarks/bench_sdc.py "
        + " ".join(arg for arg in (argv or sys.argv[1:]) if arg != "--analyse-only"),
        "n_participants": args.n_participants,
        "distortion": args.distortion,
        "realism_off": list(args.realism_off),
        "seeds": {"held_out": [args.seed], "training": list(args.training_seeds)},
    }
    earlier = json.loads(args.earlier.read_text()) if args.earlier else None
    if earlier:
        results["earlier"] = {"file": str(args.earlier), "command": earlier["command"]}
    for mode in MODES:
        if earlier and mode not in args.run:
            results[f"sdc_{mode}"] = earlier[f"sdc_{mode}"]
            if mode == "auto" and "field" in earlier:
                results["field"] = earlier["field"]
            continue
        rerun = mode in args.run and not args.analyse_only
        subjects, results[f"sdc_{mode}"] = run_or_read(
            bids_dir, out_dir / f"out_sdc_{mode}", work, mode, args.nprocs, rerun
        )
        if mode == "auto" and subjects:
            field = field_recovery(bids_dir, work, subjects)
            seconds = [r["estimation_s"] for r in field["per_session"]]
            field["estimation_s_median"] = float(np.median(seconds))
            field["estimation_s_max"] = float(np.max(seconds))
            results["field"] = field
        (out_dir / "bench_sdc.json").write_text(json.dumps(results, indent=2))
    if UNDISTORTED in args.run or (out_dir / f"out_{UNDISTORTED}_partial.json").exists():
        results[UNDISTORTED] = undistorted_run(args, out_dir)
    with_sdc = results["sdc_auto"].get("per_roi_median_abs_rel_error", {})
    without = results["sdc_none"].get("per_roi_median_abs_rel_error", {})
    results["worse_with_sdc"] = [roi for roi in with_sdc if with_sdc[roi] > without.get(roi, 1)]
    (out_dir / "bench_sdc.json").write_text(json.dumps(results, indent=2))
    (out_dir / "bench_sdc.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
