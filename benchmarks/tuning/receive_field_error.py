#!/usr/bin/env python
"""Analysis: how far the b0 receive-field estimate is from the simulator's own field at the
App's ROIs, per setting, and how much that error changes between a participant's sessions.

Why: single-shell free water reads its prior from the b0 after dividing out this field
(``dwi.free_water.b0_receive_field``), so the field's error at an ROI, where it differs between
sessions, reads as a change of free water there. The ground truth does not store the field, so
this re-simulates the trial with the same command (checking the DWI files are byte-identical)
and keeps every field ``simulate.signal.bias_field`` draws on the DWI grid, in draw order (one
per session, participants and sessions in order). Then, for each setting, N4 of each session's
preprocessed mean b0 (``anat.bias_field.estimate_log_field``) on the given mask, with the log
error normalised to median 0 in the brain mask.

Usage (ROOT from ``bench_participant.py ROOT --scenarios csf_shift --seed 7 --tuning``)::

    python benchmarks/tuning/receive_field_error.py ROOT --seed 7 --n-participants 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCHMARKS), str(BENCHMARKS / "tuning")]
from bench_participant import SESSIONS  # noqa: E402
from free_water_b0_change import one_file, preprocessed_b0  # noqa: E402
from resimulation import SCENARIO, add_trial_arguments, rerun_simulator  # noqa: E402

#: name: (fitting mask, N4 iterations per level, first mesh mm); each level halves the mesh.
SETTINGS = {
    "brain_60_30 (session 30)": ("brain", (50, 50), 60.0),
    "brain_90_45": ("brain", (50, 50), 90.0),
    "brain_100_50": ("brain", (50, 50), 100.0),
    "brain_120_60": ("brain", (50, 50), 120.0),
    "tissue_60_30": ("tissue", (50, 50), 60.0),
    "tissue_100_50 (session 31)": ("tissue", (50, 50), 100.0),
    "tissue_120_60": ("tissue", (50, 50), 120.0),
    "tissue_180_90": ("tissue", (50, 50), 180.0),
}


def simulated_fields(bids: Path, seed: int, n_participants: int, realism: str) -> list:
    """The DWI receive fields the simulator draws for this trial, in draw order, on the DWI
    grid (the block mean of the field it draws on the sub-voxel grid)."""
    from ketamine_dti.simulate import anatomy, signal
    from ketamine_dti.simulate.session import SUBVOXELS

    fields, draw = [], signal.bias_field

    def keep(rng, shape, voxel_mm, *coil_means):
        field = draw(rng, shape, voxel_mm, *coil_means)
        fields.append(field)
        return field

    shape = rerun_simulator(seed, n_participants, realism, {(signal, "bias_field"): keep}, bids)
    fine = tuple(s * SUBVOXELS for s in shape)
    return [anatomy.block_mean(field, SUBVOXELS) for field in fields if field.shape == fine]


def field_errors(out: Path, fields: list) -> pd.DataFrame:
    """Per setting, participant, session and ROI: the mean log error (%) of the estimate."""
    from ketamine_dti.anat.bias_field import estimate_log_field, working_shrink
    from ketamine_dti.dwi.free_water import (
        RECEIVE_FIELD_GRID_MM,
        RECEIVE_FIELD_TOLERANCE,
        receive_field_voxels,
    )
    from ketamine_dti.rois import ROI_NAMES

    rows, sessions = [], []
    for subject in sorted(p.name for p in out.glob("sub-*") if p.is_dir()):
        sessions += [(subject, session) for session in SESSIONS]
    if len(sessions) != len(fields):
        raise RuntimeError(f"{len(fields)} simulated fields for {len(sessions)} sessions")
    for (subject, session), true_field in zip(sessions, fields, strict=True):
        folder = out / subject / f"ses-{session}" / "dwi"
        b0, brain, image = preprocessed_b0(folder)
        voxel_mm = image.header.get_zooms()[:3]
        brain &= b0 > 0
        md = nib.load(one_file(folder, "*model-tensor_param-md_dwimap.nii.gz")).get_fdata()
        masks = {"brain": brain, "tissue": receive_field_voxels(brain, md)}
        labels = np.asarray(nib.load(one_file(folder, "*desc-graymatter_dseg.nii.gz")).dataobj)
        true_log = np.log(true_field)
        for name, (mask, iterations, mesh_mm) in SETTINGS.items():
            log_field = estimate_log_field(
                b0, masks[mask], voxel_mm, shrink=working_shrink(voxel_mm, RECEIVE_FIELD_GRID_MM),
                iterations=iterations, spline_distance_mm=mesh_mm,
                tolerance=RECEIVE_FIELD_TOLERANCE,
            )  # fmt: skip
            error = log_field - true_log
            error -= np.median(error[brain])
            rows += [
                {"setting": name, "participant_id": subject, "session": session, "roi": roi,
                 "error_pct": 100 * float(error[labels == index].mean())}
                for index, roi in enumerate(ROI_NAMES, start=1)
            ]  # fmt: skip
    return pd.DataFrame(rows)


def summary(errors: pd.DataFrame) -> pd.DataFrame:
    """Per setting: SD of the ROI error in a session, SD and mean |.| of its change."""
    wide = errors.pivot_table(
        index=["setting", "participant_id", "roi"], columns="session", values="error_pct"
    )
    change = (wide[SESSIONS[1]] - wide[SESSIONS[0]]).groupby(level="setting")
    return pd.DataFrame({
        "sd_in_a_session_pct": errors.groupby("setting").error_pct.std(),
        "sd_of_change_pct": change.std(),
        "mean_abs_change_pct": change.apply(lambda values: values.abs().mean()),
    }).sort_values("sd_of_change_pct")  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_trial_arguments(parser)
    args = parser.parse_args(argv)
    bids = args.root / f"{SCENARIO}_bids"
    fields = simulated_fields(bids, args.seed, args.n_participants, args.realism)
    errors = field_errors(args.root / f"{SCENARIO}_longitudinal_out", fields)
    print(summary(errors).round(2).to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
