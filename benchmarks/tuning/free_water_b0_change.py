#!/usr/bin/env python
"""Analysis: how well each ROI's between-session b0 change reads the true change, the signal
single-shell free water rests on.

Why: the single-shell fit's free-water fraction follows its b0 prior (``dwi.free_water``), so a
session-to-session change of an ROI's b0 that is not CSF becomes a change of ``md_fwcorr_mean``
(on the standard ``csf_shift`` trial about 1.4 x the fraction change, in points, per percent of
MD). This reads a finished ``bench_participant.py ROOT --scenarios csf_shift`` run and, per
participant and ROI, the change of the ROI's mean b0 (App's kept voxels, ``atlas-ketamine7
_desc-graymatter_dseg``) after three corrections of the receive coil's shading:

- ``per_session_n4``: each session divided by its own field (``free_water.b0_receive_field``,
  what the App does today), relative to the brain's median change;
- ``ratio_smoothed_S``: both sessions' b0 in the subject template (2 mm), the log ratio minus
  its robust Gaussian-weighted local mean (sigma S mm): a field fitted to the pair, not to
  each session's anatomy;
- ``n4_then_ratio_S``: the per-session N4 first, then the same smoothing of what is left.

Each is regressed on the true change: ``dMD/MD`` of the simulator's truth averaged over the same
voxels (``desc-truth_md``; tissue MD is constant in ``csf_shift``, so all of it is CSF). Also the
error of the App's susceptibility Jacobian change per ROI (intensity it would leave in the b0).
No pipeline is run; use a training-seed run (``--tuning``).

Usage::

    python benchmarks/tuning/free_water_b0_change.py ROOT [--sigmas 8 15 25]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS))
from bench_participant import SESSIONS, own_voxel_truth  # noqa: E402

SCENARIO = "csf_shift"
GRID_MM = 2.0
ROBUST_PASSES = 3
ROBUST_MADS = 3.0


def one_file(folder: Path, pattern: str) -> Path:
    matches = sorted(folder.glob(pattern))
    if len(matches) != 1:
        raise FileNotFoundError(f"{folder}: expected one {pattern}, found {len(matches)}")
    return matches[0]


def robust_local_mean(values: np.ndarray, mask: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Gaussian-weighted mean of ``values`` over ``mask`` (normalised convolution), re-run
    without the voxels more than ROBUST_MADS robust SDs from it (CSF edges that moved)."""
    from scipy import ndimage

    sigma = sigma_mm / GRID_MM
    weight = mask.astype(float)
    for _ in range(ROBUST_PASSES):
        numerator = ndimage.gaussian_filter(values * weight, sigma)
        denominator = ndimage.gaussian_filter(weight, sigma)
        local = np.where(denominator > 1e-3, numerator / np.maximum(denominator, 1e-12), 0.0)
        residual = (values - local)[mask]
        spread = 1.4826 * np.median(np.abs(residual - np.median(residual)))
        weight = (mask & (np.abs(values - local) < ROBUST_MADS * spread)).astype(float)
    return local


def preprocessed_b0(dwi_dir: Path):
    """(mean b0, brain mask, DWI image) of one session's preprocessed series."""
    from ketamine_dti.dwi.gradients import B0_THRESHOLD

    image = nib.load(one_file(dwi_dir, "*desc-preproc_dwi.nii.gz"))
    bvals = np.loadtxt(one_file(dwi_dir, "*desc-preproc_dwi.bval"))
    mask = np.asarray(nib.load(one_file(dwi_dir, "*desc-brain_mask.nii.gz")).dataobj) > 0
    b0 = np.asarray(image.dataobj, dtype=float)[..., bvals <= B0_THRESHOLD].mean(axis=-1)
    return b0, mask, image


def published_fit_inputs(dwi_dir: Path) -> dict:
    """What a refit of one published session's free water reads: the preprocessed DWI
    (``image`` and float32 ``data``), ``bvals``/``bvecs``, the brain ``mask``, the tensor's
    ``md``/``fa`` maps and the App's single-shell ``prior`` record (sidecar)."""
    image = nib.load(one_file(dwi_dir, "*desc-preproc_dwi.nii.gz"))
    sidecar = json.loads(one_file(dwi_dir, "*model-fwdti_param-md_dwimap.json").read_text())
    return {
        "image": image,
        "data": np.asarray(image.dataobj, dtype=np.float32),
        "bvals": np.loadtxt(one_file(dwi_dir, "*desc-preproc_dwi.bval")),
        "bvecs": np.loadtxt(one_file(dwi_dir, "*desc-preproc_dwi.bvec")),
        "mask": np.asarray(nib.load(one_file(dwi_dir, "*desc-brain_mask.nii.gz")).dataobj) > 0,
        "md": nib.load(one_file(dwi_dir, "*model-tensor_param-md_dwimap.nii.gz")).get_fdata(),
        "fa": nib.load(one_file(dwi_dir, "*model-tensor_param-fa_dwimap.nii.gz")).get_fdata(),
        "prior": sidecar["Model"]["SingleShellPrior"],
    }


def jacobian_log(displacement_voxels: np.ndarray, pe_axis: int) -> np.ndarray:
    """log J of a displacement along ``pe_axis`` (voxels), J = 1 + d(shift)/d(PE)."""
    return np.log(np.clip(1.0 + np.gradient(displacement_voxels, axis=pe_axis), 0.05, None))


def participant_changes(out: Path, bids: Path, subject: str, sigmas: list[float]) -> list[dict]:
    """Per ROI of one participant: each correction's b0 change (%) and the Jacobian error."""
    import ants

    from ketamine_dti.dwi.free_water import b0_receive_field
    from ketamine_dti.rois import ROI_NAMES

    template = ants.image_read(str(one_file(out / subject / "anat", "*desc-preproc_T1w.nii.gz")))
    grid = ants.resample_image(template, (GRID_MM,) * 3, use_voxels=False, interp_type=0)
    moved, jacobian = {}, {}
    for session in SESSIONS:
        dwi_dir = out / subject / f"ses-{session}" / "dwi"
        b0, mask, image = preprocessed_b0(dwi_dir)
        field = b0_receive_field(b0, mask, image.header.get_zooms()[:3])
        transform = str(one_file(dwi_dir, "*from-dwi_to-T1w_mode-image_xfm.mat"))

        def to_grid(array, interpolator="linear", affine=image.affine, xfm=transform):
            moving = ants.from_nibabel_nifti(nib.Nifti1Image(array.astype(np.float32), affine))
            return ants.apply_transforms(grid, moving, [xfm], interpolator=interpolator).numpy()

        labels = np.asarray(nib.load(one_file(dwi_dir, "*desc-graymatter_dseg.nii.gz")).dataobj)
        moved[session] = {
            "b0": to_grid(b0),
            "field": to_grid(field),
            "mask": to_grid(mask.astype(np.float32), "nearestNeighbor") > 0,
        }
        if session == SESSIONS[0]:
            rois = np.rint(to_grid(labels.astype(np.float32), "nearestNeighbor")).astype(int)
        truth_dir = bids / "sourcedata/ground_truth" / subject / f"ses-{session}"
        truth_path = one_file(truth_dir, "*desc-truth_displacement.nii.gz")
        voxel_mm = json.loads(truth_path.with_name(truth_path.name.replace(".nii.gz", ".json"))
                              .read_text())["VoxelSizeAlongPhaseEncodingMm"]  # fmt: skip
        app = nib.load(
            one_file(dwi_dir, "*model-sdc_param-displacement_dwimap.nii.gz")
        ).get_fdata()
        true = nib.load(truth_path).get_fdata()
        pe_axis = 1  # the simulator acquires along j (its sidecars' PhaseEncodingDirection)
        error = jacobian_log(app / voxel_mm, pe_axis) - jacobian_log(true, pe_axis)
        jacobian[session] = {
            roi: float(error[labels == index].mean()) for index, roi in enumerate(ROI_NAMES, 1)
        }
    first, second = (moved[s] for s in SESSIONS)
    both = first["mask"] & second["mask"] & (first["b0"] > 0) & (second["b0"] > 0)
    ratio = np.zeros(both.shape)
    ratio[both] = np.log(second["b0"][both] / first["b0"][both])
    after_n4 = np.zeros(both.shape)
    after_n4[both] = ratio[both] - np.log(second["field"][both] / first["field"][both])
    corrected = {"per_session_n4": after_n4 - np.median(after_n4[both])}
    for sigma in sigmas:
        corrected[f"ratio_smoothed_{sigma:g}"] = ratio - robust_local_mean(ratio, both, sigma)
        corrected[f"n4_then_ratio_{sigma:g}"] = after_n4 - robust_local_mean(after_n4, both, sigma)
    rows = []
    for index, roi in enumerate(ROI_NAMES, start=1):
        inside = (rois == index) & both
        row = {"participant_id": subject, "roi": roi}
        row |= {name: 100 * float(values[inside].mean()) for name, values in corrected.items()}
        first_error, second_error = (jacobian[s][roi] for s in SESSIONS)
        row["jacobian_error_change"] = 100 * (second_error - first_error)
        rows.append(row)
    return rows


def true_change(out: Path, bids: Path, subjects: list[str]) -> pd.Series:
    """100 x log change of the truth over the App's kept voxels, per participant and ROI."""
    truth = own_voxel_truth(bids, out, [s.removeprefix("sub-") for s in subjects])
    wide = truth.pivot_table(
        index=["participant_id", "roi"], columns="session_id", values="md_true_own"
    )
    first, second = (f"ses-{s}" for s in SESSIONS)
    return 100 * np.log(wide[second] / wide[first])


def fits(table: pd.DataFrame, truth: pd.Series) -> pd.DataFrame:
    """Per correction: slope (+- SE) of the b0 change on the true change, residual SD, r."""
    import statsmodels.api as sm

    rows = []
    for column in [c for c in table.columns if c != "jacobian_error_change"]:
        joined = pd.concat({"b0": table[column], "truth": truth}, axis=1).dropna()
        model = sm.OLS(joined.b0, sm.add_constant(joined.truth)).fit()
        rows.append({
            "correction": column, "slope": model.params["truth"], "slope_se": model.bse["truth"],
            "residual_sd_pct": float(np.sqrt(model.mse_resid)),
            "r": float(np.corrcoef(joined.b0, joined.truth)[0, 1]), "pairs": len(joined),
        })  # fmt: skip
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="bench_participant's output folder")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[8.0, 15.0, 25.0])
    args = parser.parse_args(argv)
    out = args.root / f"{SCENARIO}_longitudinal_out"
    bids = args.root / f"{SCENARIO}_bids"
    subjects = sorted(p.name for p in out.glob("sub-*") if p.is_dir())
    rows = [row for s in subjects for row in participant_changes(out, bids, s, args.sigmas)]
    table = pd.DataFrame(rows).set_index(["participant_id", "roi"])
    truth = true_change(out, bids, subjects)
    pd.set_option("display.width", 200)
    print(fits(table, truth).round(3).to_markdown(index=False))
    jac = table["jacobian_error_change"]
    print(f"\nJacobian error change per ROI (%): SD {jac.std():.2f}, max {jac.abs().max():.2f}")
    # does the susceptibility correction's intensity error follow the CSF change?
    joined = pd.concat({"jacobian": jac, "truth": truth}, axis=1).dropna()
    slope = np.polyfit(joined.truth, joined.jacobian, 1)[0]
    per_roi = jac.groupby(level="roi").mean()
    print(
        f"its slope on the true change: {slope:.3f} (r {joined.corr().iloc[0, 1]:.2f}); per ROI, "
        "mean: " + ", ".join(f"{roi} {value:+.2f}" for roi, value in per_roi.items())
    )
    print(f"SD of the true change (%): {truth.std():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
