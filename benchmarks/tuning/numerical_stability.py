#!/usr/bin/env python
"""Analysis: how far do the App's ROI figures move when the input changes by far less than its
noise?

Why: on a new machine (AMD EPYC instead of Intel Xeon; the same code, the same real Prisma
pair, bit-identical reruns on each machine) the per-ROI PA vs AP disagreement of
``bench_realscan.py`` moved by up to 1.2 points (median 2.5% -> 3.1%). A pipeline whose result
hangs on rounding turns numerical noise into measurement error; its size is a floor under any
longitudinal precision the App claims.

Each run adds +-1 (one unit of the stored integers) to a random ``--fraction`` of the nonzero
samples of both DWI series (seeded; the T1w, b-values and metadata are untouched), i.e.
perturbations about 1/30 of the scan's thermal noise SD in 1 sample of 10. It then runs the
participant level exactly as ``bench_realscan.py`` does and compares each session's ROI table
with the unperturbed run's: the relative change of md_mean per ROI, the points averaged, and
the per-session steps' QC figures (mean FD, DWI -> T1w Dice). A perturbation this small moves a
well-conditioned estimate by ~0.01% of MD; anything much larger is the pipeline amplifying it.

Usage::

    python benchmarks/tuning/numerical_stability.py OUT --source DIR [--seeds 1 2 3]
        [--fraction 0.1] [--sdc auto] [--reference OUT_OF_bench_realscan]

Without ``--reference`` the unperturbed run is made first, in OUT/reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_participant import dwi_derivative  # noqa: E402
from bench_realscan import SESSIONS, SUBJECT, figures, run  # noqa: E402

QC_KEYS = ("mean_fd", "reg_dwi_t1w_dice", "brain_volume_ml", "sdc_max_roi_displacement_mm")


def perturbed_source(source: Path, target: Path, perturb) -> Path:
    """``source`` with each DWI series' stored integers replaced by ``perturb(raw, name)`` (an
    array of the same shape and dtype); every other file a symbolic link to the original."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        link = target / path.name
        if link.exists() or link.is_symlink():
            link.unlink()
        if not path.name.endswith("_dwi.nii.gz"):
            link.symlink_to(path)
            continue
        image = nib.load(path)
        raw = np.asanyarray(image.dataobj)
        if not np.issubdtype(raw.dtype, np.integer):
            raise ValueError(f"{path}: stored as {raw.dtype}; this analysis perturbs integers")
        nib.Nifti1Image(perturb(raw, path.name), image.affine, image.header).to_filename(link)
    return target


def plus_minus_one(seed: int, fraction: float):
    """The perturbation of this analysis: +-1 added to ``fraction`` of the nonzero samples."""
    rng = np.random.default_rng(seed)

    def perturb(raw: np.ndarray, name: str) -> np.ndarray:
        chosen = (rng.random(raw.shape) < fraction) & (raw > 0)
        steps = rng.choice(np.array([-1, 1], dtype=raw.dtype), size=int(chosen.sum()))
        changed = raw.copy()
        changed[chosen] += steps
        return changed

    return perturb


def session_tables(out: Path) -> dict[str, pd.DataFrame]:
    return {
        session: pd.read_csv(
            dwi_derivative(out, SUBJECT, session, "desc-roi_md.tsv"), sep="\t"
        ).set_index("roi")
        for session in SESSIONS
    }


def compare(reference: Path, perturbed: Path) -> dict:
    """Per session and ROI: 100 * (md_mean / reference md_mean - 1) and the change of points
    averaged; per session the QC figures of both runs."""
    ref_tables, new_tables = session_tables(reference), session_tables(perturbed)
    ref_fig, new_fig = figures(reference), figures(perturbed)
    result: dict = {"sessions": {}}
    for session in SESSIONS:
        ref, new = ref_tables[session], new_tables[session]
        result["sessions"][session] = {
            "md_mean_change_pct": (100 * (new["md_mean"] / ref["md_mean"] - 1)).to_dict(),
            "md_median_change_pct": (100 * (new["md_median"] / ref["md_median"] - 1)).to_dict(),
            "n_voxels_change": (new["n_voxels"] - ref["n_voxels"]).to_dict(),
            "fraction_kept_change": (new["fraction_kept"] - ref["fraction_kept"]).to_dict(),
            "qc": {
                key: [ref_fig["sessions"][session][key], new_fig["sessions"][session][key]]
                for key in QC_KEYS
            },
        }
    result["disagreement_pct"] = {
        roi: [
            100 * (ref_fig["rois"][roi]["disagreement"] or np.nan),
            100 * (new_fig["rois"][roi]["disagreement"] or np.nan),
        ]
        for roi in ref_fig["rois"]
    }
    result["median_disagreement_pct"] = [
        100 * ref_fig["median_disagreement"],
        100 * new_fig["median_disagreement"],
    ]
    return result


def markdown(results: dict[int, dict], fraction: float) -> str:
    lines = [
        "# Numerical stability: the real Prisma pair under +-1 perturbations of the DWI",
        "",
        f"Each run adds +-1 to {fraction:.0%} of the nonzero stored DWI samples (seeds "
        f"{sorted(results)}); the change is relative to the unperturbed run.",
        "",
    ]
    for session in SESSIONS:
        rois = list(next(iter(results.values()))["sessions"][session]["md_mean_change_pct"])
        lines += [
            f"## ses-{session} ({SESSIONS[session]}): md_mean change (%), per seed",
            "",
            "| ROI | " + " | ".join(f"seed {s}" for s in sorted(results)) + " | points change |",
            "|---|" + "---|" * (len(results) + 1),
        ]
        for roi in rois:
            changes = [
                results[s]["sessions"][session]["md_mean_change_pct"][roi] for s in sorted(results)
            ]
            points = [
                results[s]["sessions"][session]["n_voxels_change"][roi] for s in sorted(results)
            ]
            lines.append(
                f"| {roi} | "
                + " | ".join(f"{c:+.2f}" for c in changes)
                + " | "
                + ", ".join(f"{p:+d}" for p in points)
                + " |"
            )
        all_changes = np.array(
            [
                list(results[s]["sessions"][session]["md_mean_change_pct"].values())
                for s in sorted(results)
            ]
        )
        lines += [
            "",
            f"RMS over ROIs and seeds: {np.sqrt(np.nanmean(all_changes**2)):.2f}%; largest "
            f"{np.nanmax(np.abs(all_changes)):.2f}%.",
            "",
            "| QC figure | reference | " + " | ".join(f"seed {s}" for s in sorted(results)) + " |",
            "|---|---|" + "---|" * len(results),
        ]
        for key in QC_KEYS:
            values = [results[s]["sessions"][session]["qc"][key] for s in sorted(results)]
            lines.append(
                f"| {key} | {values[0][0]} | " + " | ".join(str(v[1]) for v in values) + " |"
            )
        lines.append("")
    lines += ["## PA vs AP disagreement of md_mean (%)", ""]
    lines.append("| ROI | reference | " + " | ".join(f"seed {s}" for s in sorted(results)) + " |")
    lines.append("|---|---|" + "---|" * len(results))
    first = next(iter(results.values()))
    for roi in first["disagreement_pct"]:
        values = [results[s]["disagreement_pct"][roi][1] for s in sorted(results)]
        lines.append(
            f"| {roi} | {first['disagreement_pct'][roi][0]:.1f} | "
            + " | ".join(f"{v:.1f}" for v in values)
            + " |"
        )
    medians = [results[s]["median_disagreement_pct"][1] for s in sorted(results)]
    lines.append(
        f"| median | {first['median_disagreement_pct'][0]:.1f} | "
        + " | ".join(f"{v:.1f}" for v in medians)
        + " |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--source", type=Path, required=True, help="the real-scan folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--reference", type=Path, default=None, help="bench_realscan OUT")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--sdc", default="auto", choices=["auto", "pepolar", "none"])
    args = parser.parse_args(argv)
    out_dir = args.out_dir.absolute()
    reference = args.reference
    if reference is None:
        reference = out_dir / "reference"
        if not (reference / "out").exists():
            run(reference, args.source.absolute(), args.nprocs, args.sdc, None)
    results = {}
    for seed in args.seeds:
        run_dir = out_dir / f"seed{seed}"
        if not (run_dir / "out").exists():
            source = perturbed_source(
                args.source.absolute(),
                out_dir / f"source_seed{seed}",
                plus_minus_one(seed, args.fraction),
            )
            status = run(run_dir, source, args.nprocs, args.sdc, None)
            if status["exit_code"] != 0:
                raise SystemExit(f"seed {seed}: the App exited {status['exit_code']}")
        results[seed] = compare(reference / "out", run_dir / "out")
    text = markdown(results, args.fraction)
    (out_dir / "numerical_stability.json").write_text(json.dumps(results, indent=2, default=str))
    (out_dir / "numerical_stability.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
