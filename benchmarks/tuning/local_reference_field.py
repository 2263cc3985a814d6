#!/usr/bin/env python
"""Analysis: does a local gray-matter reference remove the coil shading the b0's N4 field
leaves at the ROIs, and how much of the ROIs' own CSF change does it absorb?

Why: single-shell free water reads its prior from each voxel's b0 against one gray-matter
reference for the whole brain, after N4 divides out the receive coil's shading
(``dwi.free_water.b0_receive_field``). N4's 100/50 mm meshes leave an error at the ROIs that
changes between sessions (0.43% SD, ``receive_field_error_session31.md``), while the per-ROI
``csf_shift`` target needs the b0 to ~0.15% (``free_water_noise_sources_session39``). Pure
gray matter by anatomy (the App's ``gray_matter_reference`` voxels) should have the same b0
everywhere but for the coil, so a smooth fit of its b0 near each ROI is a second, local
estimate of the shading, on the tissue the ROIs are made of. The ROIs themselves (the App's
``desc-graymatter_dseg`` grown by a margin) are left out of that fit, so the CSF change it
should read cannot enter it.

Per setting, the error of the estimated log field against the simulator's own (re-simulated,
as ``receive_field_error.py``), median 0 in the brain, averaged over each ROI, per session;
its between-session change (SD, mean |.|), and that change regressed on the truth's dMD/MD
over the same voxels (all CSF in csf_shift): a slope above 0 is CSF read as shading.

Usage (ROOT from ``bench_participant.py ROOT --scenarios csf_shift --seed 7 --tuning``)::

    python benchmarks/tuning/local_reference_field.py ROOT --seed 7 --n-participants 4
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
from free_water_b0_change import one_file, preprocessed_b0, published_fit_inputs  # noqa: E402
from free_water_csf_response import gray_matter_reference, roi_means  # noqa: E402
from receive_field_error import SCENARIO, simulated_fields  # noqa: E402
from resimulation import add_trial_arguments  # noqa: E402

#: name: (N4 first?, local sigma mm or None, ROI margin in voxels)
SETTINGS = {
    "n4 (the App)": (True, None, 0),
    "n4 + local GM 10 mm, ROIs + 2 vox out": (True, 10.0, 2),
    "n4 + local GM 15 mm, ROIs + 2 vox out": (True, 15.0, 2),
    "n4 + local GM 20 mm, ROIs + 2 vox out": (True, 20.0, 2),
    "n4 + local GM 15 mm, ROIs + 4 vox out": (True, 15.0, 4),
    "n4 + local GM 15 mm, ROIs kept": (True, 15.0, -1),
    "local GM 15 mm only, ROIs + 2 vox out": (False, 15.0, 2),
    "local GM 25 mm only, ROIs + 2 vox out": (False, 25.0, 2),
}


#: The local fit: robust refits, the outlier cut (robust SDs), the ridge on the local gradient
#: (relative to the weight; coordinates in sigma), the pseudo-weight of the median level where
#: there is no gray matter, and the fewest reference voxels.
PASSES, MADS, RIDGE, FLOOR, MIN_VOXELS = 3, 3.0, 0.1, 1e-3, 20


def local_reference_log_field(b0, reference, mask, voxel_mm, sigma_mm) -> np.ndarray:
    """Log of the local level of the ``reference`` voxels' ``b0`` at every voxel of ``mask``
    (median 0 over the reference voxels; 0 outside the mask): a Gaussian-weighted (SD
    ``sigma_mm``) local-linear fit of log b0 (normalised convolution of order 1, so a shading
    gradient across a hole without reference voxels is followed, not averaged into a step),
    refitted PASSES times without the voxels more than MADS robust SDs from it."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    keep = np.asarray(reference, dtype=bool) & mask & (np.asarray(b0) > 0)
    out = np.zeros(mask.shape)
    if keep.sum() < MIN_VOXELS:
        return out
    sigma = np.asarray(sigma_mm, float) / np.asarray(voxel_mm, float)
    grid = np.indices(mask.shape, dtype=float)
    centre = [np.mean(axis[mask]) for axis in grid]
    coords = [(grid[a] - centre[a]) / sigma[a] for a in range(3)]  # in units of sigma
    log_b0 = np.log(np.where(keep, b0, 1.0))
    inside = np.nonzero(mask)
    x0 = np.stack([c[inside] for c in coords], axis=1)
    weight = keep.astype(float)
    global_level = float(np.median(log_b0[keep]))
    for _ in range(PASSES):

        def smooth(values, weight=weight):
            return ndimage.gaussian_filter(values * weight, sigma, mode="constant")[inside]

        s_w = smooth(1.0) + FLOOR  # the floor pulls regions without gray matter to the median
        s_v = smooth(log_b0) + FLOOR * global_level
        s_x = np.stack([smooth(c) for c in coords], axis=1)
        s_vx = np.stack([smooth(log_b0 * c) for c in coords], axis=1)
        s_xx = np.empty((x0.shape[0], 3, 3))
        for i in range(3):
            for j in range(i, 3):
                s_xx[:, i, j] = s_xx[:, j, i] = smooth(coords[i] * coords[j])
        # the same moments about each voxel x0, so the fit's intercept is the level there
        m1 = s_x - x0 * s_w[:, None]
        m2 = (
            s_xx
            - x0[:, :, None] * s_x[:, None, :]
            - s_x[:, :, None] * x0[:, None, :]
            + x0[:, :, None] * x0[:, None, :] * s_w[:, None, None]
        )
        system = np.zeros((x0.shape[0], 4, 4))
        system[:, 0, 0] = s_w
        system[:, 0, 1:] = system[:, 1:, 0] = m1
        system[:, 1:, 1:] = m2 + RIDGE * s_w[:, None, None] * np.eye(3)
        rhs = np.concatenate([s_v[:, None], s_vx - x0 * s_v[:, None]], axis=1)
        level = np.linalg.solve(system, rhs[..., None])[:, 0, 0]
        residual = np.zeros(mask.shape)
        residual[inside] = log_b0[inside] - level
        spread = 1.4826 * np.median(np.abs(residual[keep] - np.median(residual[keep])))
        weight = (keep & (np.abs(residual) <= MADS * spread)).astype(float)
    out[inside] = level
    out[mask] -= np.median(out[keep])
    return out


def session_fields(folder: Path, gray: np.ndarray, labels: np.ndarray) -> dict:
    """(each setting's log field of one session's mean b0, median 0 in the brain; the brain)."""
    from scipy import ndimage

    from ketamine_dti.dwi.free_water import b0_receive_field

    b0, brain, image = preprocessed_b0(folder)
    voxel_mm = image.header.get_zooms()[:3]
    brain &= b0 > 0
    md = nib.load(one_file(folder, "*model-tensor_param-md_dwimap.nii.gz")).get_fdata()
    log_n4 = np.log(b0_receive_field(b0, brain, voxel_mm, md))
    rois = labels > 0
    out = {}
    for name, (n4_first, sigma, margin) in SETTINGS.items():
        log_field = log_n4.copy() if n4_first else np.zeros(b0.shape)
        if sigma is not None:
            keep = gray & brain
            if margin >= 0:
                keep &= ~ndimage.binary_dilation(rois, iterations=margin) if margin else ~rois
            corrected = np.where(brain, b0 / np.exp(log_field), 0.0)
            log_field += local_reference_log_field(corrected, keep, brain, voxel_mm, sigma)
        out[name] = log_field - np.median(log_field[brain])
    return out, brain


#: refit name: (local sigma mm or None, ROI margin in voxels, b0 from the first b0 only)
REFITS = {
    "app": (None, 0, False),
    "local 15 mm, ROIs + 4 vox out": (15.0, 4, False),
    "local 20 mm, ROIs + 4 vox out": (20.0, 4, False),
    "app, first b0 only": (None, 0, True),
}


def refit_sessions(out: Path, work: Path, bids: Path) -> pd.DataFrame:
    """Per participant, session and ROI: each refit's tissue MD over the App's ROI voxels and
    the truth's over the same voxels (``free_water_csf_response.roi_means``)."""
    from scipy import ndimage

    from ketamine_dti.dwi.free_water import b0_receive_field, fit_free_water
    from ketamine_dti.dwi.gradients import B0_THRESHOLD
    from ketamine_dti.rois import ROI_NAMES

    rows = []
    for subject in sorted(p.name for p in out.glob("sub-*") if p.is_dir()):
        for session in SESSIONS:
            folder = out / subject / f"ses-{session}" / "dwi"
            inputs = published_fit_inputs(folder)
            labels = np.asarray(nib.load(one_file(folder, "*desc-graymatter_dseg.nii.gz")).dataobj)
            gray = gray_matter_reference(work, subject, session)
            voxel_mm = inputs["image"].header.get_zooms()[:3]
            mask, data = inputs["mask"], inputs["data"]
            common = {"dti_md": inputs["md"], "dti_fa": inputs["fa"]}
            b0 = data[..., inputs["bvals"] <= B0_THRESHOLD].mean(axis=-1)
            n4 = b0_receive_field(b0, mask & (b0 > 0), voxel_mm, inputs["md"])
            b0_volumes = np.flatnonzero(inputs["bvals"] <= B0_THRESHOLD)
            first_only = data.copy()  # every b0 slot holds the frame's own (first) b0
            first_only[..., b0_volumes] = data[..., b0_volumes[:1]]
            noise_sd = float(inputs["prior"]["NoiseSD"])  # the App's, from the repeated b0s
            maps = {}
            for name, (sigma, margin, first) in REFITS.items():
                if sigma is None:  # the App's own path: N4 inside the fit
                    maps[name] = fit_free_water(
                        first_only if first else data, inputs["bvals"], inputs["bvecs"], mask,
                        gray_matter=gray, voxel_mm=voxel_mm, noise_sd=noise_sd, **common,
                    ).md  # fmt: skip
                    continue
                keep = gray & ~ndimage.binary_dilation(labels > 0, iterations=margin)
                field = n4 * np.exp(local_reference_log_field(
                    np.where(mask, b0 / n4, 0.0), keep, mask & (b0 > 0), voxel_mm, sigma,
                ))  # fmt: skip
                maps[name] = fit_free_water(
                    data / field[..., None], inputs["bvals"], inputs["bvecs"], mask,
                    gray_matter=keep, **common,
                ).md  # fmt: skip
            stem = f"{subject}/ses-{session}/{subject}_ses-{session}"
            truth = nib.load(
                bids / f"sourcedata/ground_truth/{stem}_space-dwi_desc-truth_md.nii.gz"
            ).get_fdata()
            for row in roi_means(maps, labels, truth):
                roi = ROI_NAMES[row.pop("label") - 1]
                rows.append({"participant_id": subject, "session_id": session, "roi": roi} | row)
            print(subject, session, flush=True)
    return pd.DataFrame(rows)


def refit_summary(table: pd.DataFrame) -> None:
    """Print each refit's response to the planted CSF change and its per-ROI mean change."""
    wide = table.pivot_table(index=["participant_id", "roi"], columns="session_id")
    first, second = SESSIONS
    summary, per_roi = {}, {}
    for name in REFITS:
        measured = 100 * (wide[(name, second)] / wide[(name, first)] - 1)
        true = 100 * (wide[(f"truth_{name}", second)] / wide[(f"truth_{name}", first)] - 1)
        (slope, _), cov = np.polyfit(true, measured, 1, cov=True)
        summary[name] = {
            "slope_on_true_csf_dmd": f"{slope:.3f} +- {np.sqrt(cov[0, 0]):.3f}",
            "mean_abs_dmd_pct": round(float(measured.abs().mean()), 3),
            "sd_of_residual_pct": round(float((measured - slope * true).std(ddof=1)), 3),
        }
        per_roi[name] = measured.groupby(level="roi").mean().round(2)
    print(pd.DataFrame(summary).T.to_markdown())
    print("\nmean dMD/MD per ROI (%):")
    print(pd.DataFrame(per_roi).to_markdown())


def main(argv=None) -> int:
    from ketamine_dti.rois import ROI_NAMES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_trial_arguments(parser)
    parser.add_argument("--refit", action="store_true", help="refit free water instead")
    args = parser.parse_args(argv)
    bids = args.root / f"{SCENARIO}_bids"
    out = args.root / f"{SCENARIO}_longitudinal_out"
    work = args.root / f"{SCENARIO}_longitudinal_work"
    if args.refit:
        refit_summary(refit_sessions(out, work, bids))
        return 0
    fields = iter(simulated_fields(bids, args.seed, args.n_participants, args.realism))
    rows = []
    for subject in sorted(p.name for p in out.glob("sub-*") if p.is_dir()):
        for session in SESSIONS:  # the simulator draws the fields in this order
            folder = out / subject / f"ses-{session}" / "dwi"
            labels = np.asarray(nib.load(one_file(folder, "*desc-graymatter_dseg.nii.gz")).dataobj)
            gray = gray_matter_reference(work, subject, session)
            estimates, brain = session_fields(folder, gray, labels)
            true_log = np.log(next(fields))
            stem = f"{subject}/ses-{session}/{subject}_ses-{session}"
            truth = nib.load(
                bids / f"sourcedata/ground_truth/{stem}_space-dwi_desc-truth_md.nii.gz"
            ).get_fdata()
            for name, log_field in estimates.items():
                error = log_field - true_log
                error -= np.median(error[brain])
                rows += [
                    {"setting": name, "participant_id": subject, "session": session, "roi": roi,
                     "error_pct": 100 * float(error[labels == index].mean()),
                     "truth_md": float(truth[labels == index].mean())}
                    for index, roi in enumerate(ROI_NAMES, start=1)
                ]  # fmt: skip
            print(subject, session, flush=True)
    table = pd.DataFrame(rows)
    wide = table.pivot_table(index=["setting", "participant_id", "roi"], columns="session")
    first, second = SESSIONS
    change = wide[("error_pct", second)] - wide[("error_pct", first)]
    true = 100 * (wide[("truth_md", second)] / wide[("truth_md", first)] - 1)
    summary = {}
    for name in SETTINGS:
        slope = np.polyfit(true.loc[name], change.loc[name], 1)[0]
        summary[name] = {
            "sd_in_a_session_pct": table[table.setting == name].error_pct.std(),
            "sd_of_change_pct": change.loc[name].std(),
            "mean_abs_change_pct": change.loc[name].abs().mean(),
            "slope_on_true_csf_dmd": slope,
        }
    print(pd.DataFrame(summary).T.round(3).to_markdown())
    per_roi = change.groupby(level=["setting", "roi"]).std().unstack("roi").round(2)
    print("\nSD of the change per ROI (%):")
    print(per_roi.to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
