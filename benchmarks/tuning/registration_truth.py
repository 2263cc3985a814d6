#!/usr/bin/env python
"""Analysis: where the App put its atlas in each DWI session, against where a perfect
registration puts it.

Why: the ROI Dice that ``bench_participant.py`` publishes (the App's ROI against the true
region) is dominated by the two atlases' disagreement (``bench_atlas_agreement.py``), so a
registration error of a few millimetres barely shows in it. Here the reference is the App's own
atlas, ``ketamine7``, carried into each DWI grid by the simulator's own maps (the participant's
warp and the session's head pose; the ``label`` rule of ``bench_atlas_agreement.py``): what a
pipeline with perfect registration would have labelled. Compared per session and ROI with the
App's published ``space-dwi_atlas-ketamine7_dseg``: the Dice and the distance between the two
centroids. Every step of the App's chain (T1w -> MNI, session -> template, b0 -> T1w) is in
it; two App runs on the same trial that differ in one step differ only by that step's error.

The trial is re-simulated in this process (``resimulation.rerun_simulator``, which checks that
the DWI files come out byte-identical to the benchmark's).

Usage::

    python benchmarks/tuning/registration_truth.py ROOT [ROOT ...] --seed S --n-participants N
        [--preset slab] [--realism typical] [--label paper_longitudinal]

Each ROOT is a ``bench_participant.py`` output folder of the same trial (its ``paper_bids``
may be a link to the first's).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_participant import SESSIONS, dwi_derivative  # noqa: E402
from resimulation import app_atlas, each_dwi_session, tissue_on_grid  # noqa: E402

from ketamine_dti.rois import ROI_NAMES  # noqa: E402


def perfect_labels(seed: int, n_participants: int, realism: str, preset: str, bids: Path):
    """{(participant index, session): ketamine7 on the session's DWI grid, perfectly placed}
    and the grids' affines."""
    from ketamine_dti.simulate import session

    ketamine7 = app_atlas()
    labels, affines = {}, {}

    def visit(key, dwi, maps):
        tissue = tissue_on_grid(maps, dwi.affine, ketamine7)
        labels[key], affines[key] = session.region_masks(tissue.region), dwi.affine

    each_dwi_session(seed, n_participants, realism, visit, bids, "paper", preset)
    return labels, affines


def compare(root: Path, label: str, perfect: dict, affines: dict) -> pd.DataFrame:
    """Per session and ROI: Dice and centroid distance (mm) of the App's ketamine7 and the
    perfectly placed one."""
    out = root / f"{label}_out"
    subjects = sorted(p.name[4:] for p in out.glob("sub-*") if p.is_dir())
    rows = []
    for (who, position), reference in perfect.items():
        subject, session = subjects[who], SESSIONS[position]
        path = dwi_derivative(out, subject, session, "space-dwi_atlas-ketamine7_dseg.nii.gz")
        app = np.asarray(nib.load(path).dataobj)
        affine = affines[(who, position)]
        for k, roi in enumerate(ROI_NAMES, start=1):
            a, b = app == k, reference == k
            if not (a.any() and b.any()):
                continue
            centres = [affine[:3, :3] @ np.argwhere(m).mean(axis=0) for m in (a, b)]
            rows.append(
                {
                    "subject": subject, "session": session, "roi": roi,
                    "dice": 2 * np.sum(a & b) / (a.sum() + b.sum()),
                    "centroid_mm": float(np.linalg.norm(centres[0] - centres[1])),
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", type=Path, nargs="+")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--n-participants", type=int, required=True)
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--realism", default="typical")
    parser.add_argument("--label", default="paper_longitudinal")
    args = parser.parse_args(argv)
    bids = (args.roots[0] / "paper_bids").resolve()
    perfect, affines = perfect_labels(
        args.seed, args.n_participants, args.realism, args.preset, bids
    )
    lines = [
        "# The App's ketamine7 in each DWI session against a perfectly placed one",
        "",
        f"Trial: `{args.preset}` paper, seed {args.seed}, {args.n_participants} participants, "
        f"realism {args.realism}. Median over sessions (Dice; centroid distance in mm).",
        "",
        "| run | " + " | ".join(ROI_NAMES) + " | all ROIs: median Dice / centroid mm |",
        "|---|" + "---|" * (len(ROI_NAMES) + 1),
    ]
    results = {}
    for root in args.roots:
        table = compare(root, args.label, perfect, affines)
        per_roi = table.groupby("roi")[["dice", "centroid_mm"]].median()
        results[str(root)] = {
            "per_roi": per_roi.to_dict(orient="index"),
            "per_session": table.to_dict(orient="records"),
        }
        cells = [
            f"{per_roi.loc[r, 'dice']:.2f}; {per_roi.loc[r, 'centroid_mm']:.1f}"
            if r in per_roi.index
            else "n/a"
            for r in ROI_NAMES
        ]
        overall = f"{table['dice'].median():.2f} / {table['centroid_mm'].median():.1f}"
        lines.append(f"| {root.name} | " + " | ".join(cells) + f" | {overall} |")
    text = "\n".join(lines) + "\n"
    stem = args.roots[0] / "registration_truth"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
