#!/usr/bin/env python
"""Analysis: what single-shell free water must get right between sessions, per ROI.

Why: on held-out trials the free-water-corrected MD of BA10 varies between sessions 3x more
than plain MD (retest SD 1.6-1.8% against 0.6%), and the other ROIs' as much as plain MD;
issue 13's ``csf_shift`` target (each ROI's mean |dMD_fwcorr/MD| <= 0.3%) rests on that
noise. Single-shell free water reads the free-water fraction from the b0 intensity, so every
intensity change that is not CSF, above all the coil's shading moving with the head, must be
removed first; plain MD, a ratio of signals, never sees it. This reads a finished
``bench_participant.py`` trial's published outputs and reports, per ROI, the SD over
participants of the change between sessions (24 h - baseline) of:

- ``b0``: the log of the ROI's mean b0 (``desc-b0_dwiref``, not shading-corrected) over the
  median b0 of all ROI voxels of the session (%): the shading change the App must remove;
- ``fw_fraction``: the ROI's mean free-water fraction (percentage points);
- ``md_fwcorr`` and ``md``: the log of the ROI's mean free-water-corrected and plain MD (%);
- ``sdc_log_jacobian``: the mean log Jacobian of the App's susceptibility displacement (%).

The App's kept voxels (``desc-graymatter_dseg``) are the ROI, plain voxel means. Writes
``OUT/free_water_noise_sources.json`` and prints Markdown. A diagnostic: run it on training
seeds; it changes nothing.

Usage::

    python benchmarks/tuning/free_water_noise_sources.py OUT [--label paper_longitudinal]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_participant import SESSIONS, finished_trial, load_array, trial_parser  # noqa: E402
from bench_slice_outliers import SIMULATED_PE_AXIS  # noqa: E402

QUANTITIES = ("b0", "fw_fraction", "md_fwcorr", "md", "sdc_log_jacobian")


def session_rows(out: Path, subject: str, session: str) -> list[dict]:
    from ketamine_dti.derivatives import spec_path
    from ketamine_dti.resources import ATLAS
    from ketamine_dti.rois import ROI_NAMES

    def read(key: str, **entities) -> np.ndarray:
        return load_array(spec_path(out, key, subject, session, **entities))

    labels = read("atlas_gm", atlas=ATLAS).astype(int)
    b0, fw_fraction = read("b0_reference"), read("fw_fraction")
    md_fwcorr, md = read("fw_md"), read("md")
    displacement_path = spec_path(out, "sdc_displacement", subject, session)
    log_jacobian = np.zeros(labels.shape)
    if displacement_path.exists():
        image = nib.load(displacement_path)
        voxel_mm = float(image.header.get_zooms()[SIMULATED_PE_AXIS])
        jacobian = 1 + np.gradient(
            load_array(displacement_path) / voxel_mm, axis=SIMULATED_PE_AXIS
        )
        log_jacobian = np.log(np.clip(jacobian, 0.05, None))
    reference = np.median(b0[labels > 0])
    rows = []
    for index, roi in enumerate(ROI_NAMES, start=1):
        inside = labels == index
        if not inside.any():
            continue
        rows.append({
            "participant_id": f"sub-{subject}", "session_id": session, "roi": roi,
            "b0": 100 * np.log(b0[inside].mean() / reference),
            "fw_fraction": 100 * np.nanmean(fw_fraction[inside]),
            "md_fwcorr": 100 * np.log(np.nanmean(md_fwcorr[inside])),
            "md": 100 * np.log(md[inside].mean()),
            "sdc_log_jacobian": 100 * log_jacobian[inside].mean(),
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    args = trial_parser(__doc__.splitlines()[0]).parse_args(argv)
    _, out, _, subjects = finished_trial(args.out_dir, args.label)
    rows = [row for s in subjects for session in SESSIONS for row in session_rows(out, s, session)]
    wide = pd.DataFrame(rows).pivot_table(
        index=["participant_id", "roi"], columns="session_id", values=list(QUANTITIES)
    )
    change = pd.DataFrame(
        {q: wide[q][SESSIONS[1]] - wide[q][SESSIONS[0]] for q in QUANTITIES}
    ).dropna()
    spread = change.groupby(level="roi").std()
    result = {
        "subjects": subjects,
        "label": args.label,
        "sd_of_change": spread.to_dict(orient="index"),
        "change": {f"{p} {r}": v for (p, r), v in change.to_dict(orient="index").items()},
    }
    (args.out_dir / "free_water_noise_sources.json").write_text(json.dumps(result, indent=2))
    print("| ROI | " + " | ".join(QUANTITIES) + " |")
    print("|---" * (len(QUANTITIES) + 1) + "|")
    for roi, values in spread.iterrows():
        print(f"| {roi} | " + " | ".join(f"{values[q]:.2f}" for q in QUANTITIES) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
