"""Where the MD error left after susceptibility distortion correction comes from (issue 11).

Usage, after ``bench_sdc.py OUT --run auto`` (and, for the floor, ``--run undistorted``):

    python benchmarks/tuning/sdc_oracle_field.py OUT [--seed 11]

1. **Oracle field.** Every session's estimated field in OUT's work directory
   (``estimate_susceptibility/field_hz.nii.gz``) is replaced by the simulator's true field
   (``sourcedata/ground_truth/.../desc-truth_fieldmap``, on the same grid), and the ``auto`` run is
   repeated: Nipype reruns every step downstream of the field (the file's timestamp changed), so
   the correction runs exactly as the App runs it, with a perfect field. The estimated run's
   outputs and results are kept as ``out_sdc_auto_estimated`` and ``bench_sdc_estimated.json``.
2. **Decomposition** of each run's error against the true region, per ROI (medians over
   participants x sessions): the App's MD against the truth over its own voxels (the
   measurement's bias) and that truth against the truth over the true region (where the voxels
   lie). Runs: estimated field, true field, and the undistorted trial (the same seed without
   distortion: the floor).

Writes OUT/sdc_oracle_field.json and prints it. A diagnostic, not a report: it reads the
held-out trial's outputs and tunes nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS))
from bench_participant import own_voxel_truth, roi_tables  # noqa: E402

from ketamine_dti.workflows.base import RUN_WORKFLOW  # noqa: E402

KEYS = ["participant_id", "session_id", "roi"]


def plant_true_fields(out_dir: Path) -> list[dict]:
    """Overwrite each session's estimated field with the true one; returns what was replaced."""
    replaced = []
    pattern = f"{RUN_WORKFLOW}/sub_*_wf/ses_*_wf/dwi_preproc_wf/estimate_susceptibility"
    for node in sorted((out_dir / "work").glob(pattern)):
        subject = node.parts[-4][len("sub_") : -len("_wf")]
        session = node.parts[-3][len("ses_") : -len("_wf")]
        estimate_file = node / "field_hz.nii.gz"
        truth_file = (
            out_dir / "bids/sourcedata/ground_truth" / f"sub-{subject}/ses-{session}"
            / f"sub-{subject}_ses-{session}_space-dwi_desc-truth_fieldmap.nii.gz"
        )  # fmt: skip
        estimate, truth = nib.load(estimate_file), nib.load(truth_file)
        if estimate.shape != truth.shape or not np.allclose(
            estimate.affine, truth.affine, 0, 1e-4
        ):
            raise ValueError(f"{truth_file} is not on the grid of {estimate_file}")
        difference = np.abs(estimate.get_fdata() - truth.get_fdata())
        field = truth.get_fdata().astype(np.float32)
        nib.save(nib.Nifti1Image(field, estimate.affine, estimate.header), estimate_file)
        replaced.append({"subject": subject, "session": session,
                         "median_abs_difference_hz": float(np.median(difference))})  # fmt: skip
    if not replaced:
        raise SystemExit(f"no estimated field under {out_dir / 'work'}: run bench_sdc first")
    return replaced


def decomposition(bids_dir: Path, out: Path) -> dict:
    subjects = sorted(p.name[4:] for p in out.glob("sub-*") if p.is_dir())
    truth = pd.read_csv(bids_dir / "sourcedata/ground_truth/roi_md.tsv", sep="\t")
    merged = roi_tables(out, subjects).merge(truth, on=KEYS)
    merged = merged.merge(own_voxel_truth(bids_dir, out, subjects), on=KEYS)
    parts = pd.DataFrame({
        "roi": merged.roi,
        "error_vs_true_region": merged.md_mean / merged.md_true - 1,
        "measurement_vs_own_voxels": merged.md_mean / merged.md_true_own - 1,
        "own_voxels_vs_true_region": merged.md_true_own / merged.md_true - 1,
    })  # fmt: skip
    return {
        "median_abs": parts.drop(columns="roi").abs().median().to_dict(),
        "per_roi_median_signed": parts.groupby("roi").median().to_dict(orient="index"),
        "n_values": int(len(parts)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="bench_sdc.py's OUT_DIR")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--n-participants", type=int, default=4)
    args = parser.parse_args(argv)
    out_dir = args.out_dir.absolute()
    estimated_out = out_dir / "out_sdc_auto_estimated"
    if not estimated_out.exists():
        shutil.copy(out_dir / "bench_sdc.json", out_dir / "bench_sdc_estimated.json")
        (out_dir / "out_sdc_auto").rename(estimated_out)
        replaced = plant_true_fields(out_dir)
        subprocess.run(
            [sys.executable, str(BENCHMARKS / "bench_sdc.py"), str(out_dir), "--seed",
             str(args.seed), "--n-participants", str(args.n_participants), "--run", "auto",
             "--earlier", str(out_dir / "bench_sdc_estimated.json")],
            check=True,
        )  # fmt: skip
        (out_dir / "replaced_fields.json").write_text(json.dumps(replaced, indent=2))
    runs = {
        "estimated field": (out_dir / "bids", estimated_out),
        "true field": (out_dir / "bids", out_dir / "out_sdc_auto"),
        "undistorted trial": (out_dir / "bids_undistorted", out_dir / "out_undistorted"),
    }
    results = {
        name: decomposition(bids, out) for name, (bids, out) in runs.items() if out.exists()
    }
    (out_dir / "sdc_oracle_field.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
