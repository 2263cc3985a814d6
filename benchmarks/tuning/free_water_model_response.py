#!/usr/bin/env python
"""Analysis: the single-shell free-water model's own response to a CSF change, no pipeline.

Why: on ``csf_shift`` (tissue MD constant, only the ROIs' CSF moves) the App's
``md_fwcorr_mean`` still follows 0.11 of the planted change when the simulator's own receive
field is divided out (``free_water_csf_response_session34.md``), and the b0 change follows the
true change with a slope (0.34) below a two-compartment estimate by hand (~0.5). This separates
the model from the pipeline. It re-runs the simulator on a trial (same arguments, so the same
anatomy, regions and planted changes as the App's run) and, for every DWI session, takes the
simulator's tissue mixture at the reference position (``signal.tissue_signal`` on the session's
own fractions and MDs) without coil shading, motion, artefacts or noise, and fits it with
``fit_free_water``, the priors weighted by the noise SD of the real sessions (``--noise-sd``;
the noiseless data's own estimate is ~0). Nothing of the pipeline runs: no registration, no
resampling, no receive field; the voxels are the true regions (``region_dseg``).

References (``s0_tissue``, ``s0_water``) in two variants:

- ``exact``: the simulator's pure gray matter and CSF (``S0_RELATIVE`` x ``S0_WM``);
- ``estimated``: as ``estimate_b0_references`` does in the App, from the session's gray matter
  by its true fractions (GM >= ``REFERENCE_MIN_GM_SHARE``, CSF <= ``REFERENCE_MAX_CSF_SHARE``)
  and the water voxels' plain MD.

Per participant and ROI: dMD/MD (%) between sessions of the ROI mean of the fitted tissue MD,
of its plain (apparent) MD and the change of the ROI's mean b0, fitted f and true CSF signal
fraction, regressed on plain MD's dMD/MD (all of it CSF here). A perfect model has tissue-MD
slope 0. Training seeds only.

With ``--app ROOT`` (a finished ``bench_participant.py --tuning`` run of the same trial, its
DWI checked byte-identical to the re-simulation): the App's published b0 (mean, and each b0
volume on its own), mean diffusion-weighted signal, f and tissue MD at its own ROI voxels,
the simulator's receive field divided out, against the noiseless model at the same voxels:
the slope of each App change on the model's, the App's intensity errors and their relation
to the true susceptibility distortion there.

Usage::

    python benchmarks/tuning/free_water_model_response.py OUT_STEM --seed 7 --n-participants 4 \
        [--app ROOT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ketamine_dti.simulate.clinical import SESSIONS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resimulation import SCENARIO, rerun_simulator  # noqa: E402

#: The App's noise SD on standard simulated sessions (mean white-matter b0 1000 / SNR 25).
DEFAULT_NOISE_SD = 40.0


def model_sessions(
    seed: int, n_participants: int, realism: str, bids: Path | None = None
) -> list[dict]:
    """Re-run the simulator and keep, per DWI session, the noiseless mixture and its truth
    (and the receive field it drew); with ``bids`` (the App run's trial) check that the
    re-simulated DWI files are byte-identical to it."""
    from ketamine_dti.simulate import anatomy, session, signal

    kept: list[dict] = []
    simulate_dwi, tissue_signal = session.simulate_dwi, signal.tissue_signal
    factor = session.SUBVOXELS

    def wrapped(*args, **kwargs):
        captured = {}

        def capture(
            gm_by_label, wm, csf, fibre_tensor, wm_depth, gm_md, bvals, gradients, field, outside
        ):
            captured.update(
                gm_by_label=gm_by_label, wm=wm, csf=csf, fibre_tensor=fibre_tensor,
                wm_depth=wm_depth, gm_md=gm_md, field=field,
            )  # fmt: skip
            return tissue_signal(
                gm_by_label, wm, csf, fibre_tensor, wm_depth, gm_md, bvals, gradients, field,
                outside,
            )  # fmt: skip

        signal.tissue_signal = capture
        try:
            dwi = simulate_dwi(*args, **kwargs)
        finally:
            signal.tissue_signal = tissue_signal
        # The mixture on the sub-voxel grid under a flat field, then as the DWI voxels see it.
        flat = np.full(captured["wm"].shape, signal.S0_WM, dtype=np.float32)
        fine = tissue_signal(
            captured["gm_by_label"], captured["wm"], captured["csf"], captured["fibre_tensor"],
            captured["wm_depth"], captured["gm_md"], dwi.bvals, dwi.bvecs, flat,
        )  # fmt: skip
        mixture = anatomy.block_mean_series(fine, factor)
        del fine
        captured = {
            name: anatomy.block_mean(np.asarray(captured[name]), factor)
            for name in ("gm_by_label", "wm", "csf", "field")
        }
        gm = captured["gm_by_label"].sum(axis=0)
        kept.append(
            {
                "field": np.asarray(captured["field"]),
                "mixture": mixture,
                "bvals": dwi.bvals,
                "bvecs": dwi.bvecs,
                "brain": dwi.brain_mask,
                "region": dwi.region_dseg,
                "gm": gm,
                "wm": captured["wm"],
                "csf": captured["csf"],
                "added": np.asarray(kwargs.get("free_water"), dtype=float),
                "motion": dwi.motion,
            }
        )
        return dwi

    rerun_simulator(seed, n_participants, realism, {(session, "simulate_dwi"): wrapped}, bids)
    if len(kept) != n_participants * len(SESSIONS):
        raise RuntimeError(f"{len(kept)} DWI sessions simulated, expected {n_participants * 2}")
    return kept


def fit_session(item: dict, variant: str, noise_sd: float) -> dict[str, np.ndarray]:
    """The free-water fit of one noiseless session over its brain; maps on its grid."""
    from ketamine_dti.dwi import free_water as fw
    from ketamine_dti.dwi.tensor import fit_tensor
    from ketamine_dti.simulate import signal

    data, bvals, bvecs, brain = item["mixture"], item["bvals"], item["bvecs"], item["brain"]
    brain = brain & (data[..., 0] > 0)
    b0 = data[..., bvals <= fw.B0_THRESHOLD].mean(axis=-1)
    plain = fit_tensor(data, bvals, bvecs, mask=brain, method="wls")
    if variant == "exact":
        tissue = signal.S0_RELATIVE["gm"] * signal.S0_WM
        water = signal.S0_RELATIVE["csf"] * signal.S0_WM
    else:
        gray = (item["gm"] >= fw.REFERENCE_MIN_GM_SHARE) & (
            item["csf"] <= fw.REFERENCE_MAX_CSF_SHARE
        )
        tissue, water, _ = fw.estimate_b0_references(
            b0[brain], plain.md[brain], plain.fa[brain], gray[brain]
        )
    fit = fw.fit_free_water(
        data, bvals, bvecs, mask=brain, s0_tissue=tissue, s0_water=water, noise_sd=noise_sd
    )
    total = signal.S0_RELATIVE["gm"] * item["gm"] + signal.S0_RELATIVE["wm"] * item["wm"]
    total = total + signal.S0_RELATIVE["csf"] * item["csf"]
    with np.errstate(divide="ignore", invalid="ignore"):
        true_f = signal.S0_RELATIVE["csf"] * item["csf"] / total
    return {
        "md_fw": fit.md,
        "f": fit.f_water,
        "md_plain": plain.md,
        "b0": b0,
        "true_f": true_f,
        "wm": item["wm"],
        "references": np.array([tissue, water]),
    }


def roi_table(kept: list[dict], fits: list[dict]) -> pd.DataFrame:
    """Per participant, session and true region: the means of one variant's ``fits``."""
    from ketamine_dti.rois import ROI_NAMES

    rows = []
    for index, (item, maps) in enumerate(zip(kept, fits, strict=True)):
        participant, position = divmod(index, len(SESSIONS))
        for k, roi in enumerate(ROI_NAMES, start=1):
            voxels = item["region"] == k
            row = {"participant": participant, "session": SESSIONS[position], "roi": roi}
            row["n_voxels"] = int(voxels.sum())
            row["added_csf"] = float(item["added"][k - 1]) if item["added"].size else 0.0
            for name in ("md_fw", "f", "md_plain", "b0", "true_f", "wm"):
                row[name] = float(np.nanmean(maps[name][voxels]))
            row["s0_tissue"], row["s0_water"] = maps["references"]
            rows.append(row)
    return pd.DataFrame(rows)


def changes(table: pd.DataFrame) -> pd.DataFrame:
    """Per participant and ROI: the 24 h minus baseline change of each column."""
    wide = table.pivot_table(index=["participant", "roi"], columns="session")
    out = pd.DataFrame(index=wide.index)
    for name in ("md_fw", "md_plain", "b0"):
        out[f"d_{name}_pct"] = 100 * (wide[(name, "24h")] / wide[(name, "baseline")] - 1)
    for name in ("f", "true_f", "added_csf"):
        out[f"d_{name}_points"] = 100 * (wide[(name, "24h")] - wide[(name, "baseline")])
    out["wm_share"] = wide[("wm", "baseline")]
    return out.reset_index()


def slope(x: np.ndarray, y: np.ndarray) -> dict:
    design = np.column_stack([np.ones_like(x), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    se = np.sqrt(resid @ resid / max(len(x) - 2, 1) / np.sum((x - x.mean()) ** 2))
    return {
        "slope": float(coef[1]),
        "se": float(se),
        "r": float(np.corrcoef(x, y)[0, 1]),
        "residual_sd": float(resid.std(ddof=2)),
    }


def app_table(kept: list[dict], exact: list[dict], out: Path, truth: Path) -> pd.DataFrame:
    """Per participant, session and ROI (the App's voxels, ``desc-graymatter_dseg``): the App's
    published b0 and mean diffusion-weighted signal with the simulator's own receive field
    divided out, its free-water fraction and tissue MD, against the noiseless model's (its
    ``exact`` fits: flat field, exact references) at the same voxels; and, where the trial
    was distorted, the true susceptibility displacement's log Jacobian (``truth``: the trial's
    ground truth) and the App's displacement error there. Same grid: the App publishes on the
    acquisition's grid at the first volume's position, the simulator's reference position."""
    import nibabel as nib

    from ketamine_dti.dwi.gradients import B0_THRESHOLD
    from ketamine_dti.rois import ROI_NAMES
    from ketamine_dti.simulate import signal
    from ketamine_dti.simulate.signal import resample_affine, volume_source_matrix

    subjects = sorted(path.name for path in out.glob("sub-*") if path.is_dir())
    if len(subjects) * len(SESSIONS) != len(kept):
        raise RuntimeError(f"{len(subjects)} App participants for {len(kept)} sessions")
    rows = []
    for index, item in enumerate(kept):
        participant, position = divmod(index, len(SESSIONS))
        folder = out / subjects[participant] / f"ses-{SESSIONS[position]}" / "dwi"

        def load(pattern, folder=folder):
            matches = sorted(folder.glob(pattern))
            if len(matches) != 1:
                raise FileNotFoundError(f"{folder}: {len(matches)} files {pattern}")
            return np.asarray(nib.load(matches[0]).dataobj, dtype=np.float32)

        data = load("*desc-preproc_dwi.nii.gz")
        zooms = nib.load(next(folder.glob("*desc-preproc_dwi.nii.gz"))).header.get_zooms()[:3]
        voxel_mm = float(zooms[0])  # the simulator's grids are isotropic
        bvals = np.loadtxt(next(folder.glob("*desc-preproc_dwi.bval")))
        if data.shape[:3] != item["mixture"].shape[:3]:
            raise RuntimeError(f"{folder}: grid {data.shape[:3]} is not the simulator's")
        field = item["field"] / signal.S0_WM
        b0_volumes = np.flatnonzero(bvals <= B0_THRESHOLD)
        with np.errstate(divide="ignore", invalid="ignore"):
            app = {
                "b0": data[..., b0_volumes].mean(axis=-1) / field,
                "dw": data[..., bvals > B0_THRESHOLD].mean(axis=-1) / field,
            }
            # each b0 on its own: the first is the reference frame (not resampled), the
            # others went through motion correction's interpolation
            for position_in_series, volume in enumerate(b0_volumes):
                app[f"b0_{position_in_series}"] = data[..., volume] / field
        del data
        app["f"] = load("*model-fwdti_param-fwf_dwimap.nii.gz")
        app["md_fw"] = load("*model-fwdti_param-md_dwimap.nii.gz")
        app["md_plain"] = load("*model-tensor_param-md_dwimap.nii.gz")
        model = dict(exact[index])  # extended below, per session
        mixture, model_bvals = item["mixture"], item["bvals"]
        model["dw"] = mixture[..., model_bvals > B0_THRESHOLD].mean(axis=-1)
        # the model's b0 moved like each b0 volume by trilinear resampling of the DWI grid (as
        # the simulator moved a volume before session 36) and brought back the same way (as
        # the App's default does): what two interpolations alone do to such a b0
        for position_in_series, volume in enumerate(b0_volumes):
            source = volume_source_matrix(
                model["b0"].shape, voxel_mm, item["motion"], int(volume), 0.0, np.zeros(3)
            )
            moved = resample_affine(model["b0"].astype(np.float32), source)
            model[f"b0_{position_in_series}"] = resample_affine(moved, np.linalg.inv(source))
        labels = load("*desc-graymatter_dseg.nii.gz").astype(int)
        distortion = sorted(
            (truth / subjects[participant] / f"ses-{SESSIONS[position]}").glob(
                "*desc-truth_displacement.nii.gz"
            )
        )
        log_jacobian = displacement_error = None
        if distortion:  # truth in voxels along j; the App's map in mm along its PE axis
            true_shift = np.asarray(nib.load(distortion[0]).dataobj, dtype=float)
            log_jacobian = np.log(np.clip(1 + np.gradient(true_shift, axis=1), 0.05, None))
            app_shift = load("*model-sdc_param-displacement_dwimap.nii.gz") / zooms[1]
            displacement_error = app_shift - true_shift
        for k, roi in enumerate(ROI_NAMES, start=1):
            voxels = labels == k
            row = {"participant": participant, "session": SESSIONS[position], "roi": roi}
            for name in ("b0", "dw", "f", "md_fw", "md_plain"):
                row[f"app_{name}"] = float(np.nanmean(app[name][voxels]))
                row[f"model_{name}"] = float(np.nanmean(model[name][voxels]))
            for name in ("b0", "dw"):
                row[f"{name}_error_pct"] = 100 * (row[f"app_{name}"] / row[f"model_{name}"] - 1)
            for position_in_series in range(len(b0_volumes)):
                name = f"b0_{position_in_series}"
                row[f"app_{name}"] = float(np.nanmean(app[name][voxels]))
                row[f"{name}_error_pct"] = 100 * (row[f"app_{name}"] / row["model_b0"] - 1)
                row[f"interpolated_{name}"] = float(np.nanmean(model[name][voxels]))
            if log_jacobian is not None:
                row["true_log_jacobian_pct"] = 100 * float(log_jacobian[voxels].mean())
                row["displacement_error_voxels"] = float(displacement_error[voxels].mean())
            rows.append(row)
    return pd.DataFrame(rows)


def app_summary(table: pd.DataFrame) -> dict:
    """Slopes of the App's changes on the noiseless model's at the same voxels."""
    wide = table.pivot_table(index=["participant", "roi"], columns="session")
    summary = {}
    for name in ("b0", "dw", "md_plain", "md_fw", "f"):
        changes_of = {}
        for side in ("app", "model"):
            after, before = wide[(f"{side}_{name}", "24h")], wide[(f"{side}_{name}", "baseline")]
            changes_of[side] = (
                100 * (after - before) if name == "f" else 100 * (after / before - 1)
            ).to_numpy()
        summary[name] = slope(changes_of["model"], changes_of["app"])
        if name == "b0":
            changes_b0 = changes_of["model"]
        summary[name]["mean_app_change"] = float(np.mean(changes_of["app"]))
        summary[name]["mean_model_change"] = float(np.mean(changes_of["model"]))
    # each b0 volume of the series on its own against the model's b0 change
    model_b0 = 100 * (wide[("model_b0", "24h")] / wide[("model_b0", "baseline")] - 1)
    singles = sorted(
        (column for column in table if column.startswith("app_b0_")),
        key=lambda column: int(column.rsplit("_", 1)[1]),
    )
    summary["b0_by_position"] = {}
    for column in singles:
        change = 100 * (wide[(column, "24h")] / wide[(column, "baseline")] - 1)
        position = column.removeprefix("app_")
        summary["b0_by_position"][position] = slope(model_b0.to_numpy(), change.to_numpy())
        summary["b0_by_position"][position]["per_roi_mean_error_pct"] = (
            table.groupby("roi")[f"{position}_error_pct"].mean().to_dict()
        )
        twice = (
            wide[(f"interpolated_{position}", "24h")]
            / wide[(f"interpolated_{position}", "baseline")]
        )
        summary["b0_by_position"][position]["model_interpolated_twice"] = slope(
            model_b0.to_numpy(), (100 * (twice - 1)).to_numpy()
        )
        summary["b0_by_position"][position]["model_interpolated_twice"]["mean_level_pct"] = float(
            100 * (table[f"interpolated_{position}"] / table["model_b0"] - 1).mean()
        )
    truth = 100 * (wide[("model_md_plain", "24h")] / wide[("model_md_plain", "baseline")] - 1)
    app_fw = 100 * (wide[("app_md_fw", "24h")] / wide[("app_md_fw", "baseline")] - 1)
    summary["app_md_fw_on_plain_truth"] = slope(truth.to_numpy(), app_fw.to_numpy())
    # the App's intensity errors (against the model, true field divided out): per ROI and
    # session, and their change between sessions, which is what a dMD sees
    error = {}
    for name in ("b0_error_pct", "dw_error_pct", "true_log_jacobian_pct"):
        if name in table:
            error[name] = (wide[(name, "24h")] - wide[(name, "baseline")]).to_numpy()
    summary["errors"] = {
        "per_roi_mean_b0_error_pct": table.groupby("roi")["b0_error_pct"].mean().to_dict(),
        "per_roi_mean_dw_error_pct": table.groupby("roi")["dw_error_pct"].mean().to_dict(),
        "sd_of_change_b0_error_pct": float(np.std(error["b0_error_pct"], ddof=1)),
        "sd_of_change_dw_error_pct": float(np.std(error["dw_error_pct"], ddof=1)),
        "r_change_b0_error_dw_error": float(
            np.corrcoef(error["b0_error_pct"], error["dw_error_pct"])[0, 1]
        ),
        "r_change_b0_error_model_b0_change": float(
            np.corrcoef(error["b0_error_pct"], changes_b0)[0, 1]
        ),
    }
    if "true_log_jacobian_pct" in error:
        summary["errors"]["r_change_b0_error_true_log_jacobian_change"] = float(
            np.corrcoef(error["b0_error_pct"], error["true_log_jacobian_pct"])[0, 1]
        )
        summary["errors"]["r_b0_error_true_log_jacobian"] = float(
            np.corrcoef(table["b0_error_pct"], table["true_log_jacobian_pct"])[0, 1]
        )
        summary["errors"]["per_roi_mean_abs_displacement_error_voxels"] = (
            table.displacement_error_voxels.abs().groupby(table.roi).mean().to_dict()
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_stem", type=Path, help="writes OUT_STEM.json and OUT_STEM.tsv")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--n-participants", type=int, default=4)
    parser.add_argument("--realism", default="typical", choices=["ideal", "typical"])
    parser.add_argument("--noise-sd", type=float, default=DEFAULT_NOISE_SD)
    parser.add_argument("--training-seeds", type=int, nargs="*", default=[7])
    parser.add_argument(
        "--app",
        type=Path,
        default=None,
        help="a finished bench_participant.py --tuning csf_shift run of the same trial: also "
        "compare the App's published b0, signal, f and tissue MD with the model's",
    )
    args = parser.parse_args(argv)
    if args.seed not in args.training_seeds:
        parser.error(f"--seed {args.seed} is held out: this analysis runs on training seeds")
    bids = None if args.app is None else args.app / f"{SCENARIO}_bids"
    kept = model_sessions(args.seed, args.n_participants, args.realism, bids)
    result = {
        "seeds": {"training": args.training_seeds, "held_out": [11, 12], "used": [args.seed]},
        "noise_sd": args.noise_sd,
        "realism": args.realism,
        "variants": {},
    }
    tables, fits = [], {}
    for variant in ("exact", "estimated"):
        fits[variant] = [fit_session(item, variant, args.noise_sd) for item in kept]
        table = roi_table(kept, fits[variant])
        delta = changes(table)
        delta.insert(0, "variant", variant)
        tables.append(delta)
        x = delta["d_md_plain_pct"].to_numpy()
        summary = {
            name: slope(x, delta[name].to_numpy())
            for name in ("d_md_fw_pct", "d_b0_pct", "d_f_points", "d_true_f_points")
        }
        summary["mean_abs_d_md_fw_pct"] = float(delta["d_md_fw_pct"].abs().mean())
        summary["per_roi_mean_d_md_fw_pct"] = delta.groupby("roi")["d_md_fw_pct"].mean().to_dict()
        summary["per_roi_mean_d_md_plain_pct"] = (
            delta.groupby("roi")["d_md_plain_pct"].mean().to_dict()
        )
        summary["references"] = (
            table.groupby("session")[["s0_tissue", "s0_water"]].mean().to_dict()
        )
        result["variants"][variant] = summary
        print(variant, json.dumps(summary, indent=1, default=float))
    if args.app is not None:
        table = app_table(
            kept, fits["exact"], args.app / f"{SCENARIO}_longitudinal_out",
            bids / "sourcedata/ground_truth",
        )  # fmt: skip
        result["app"] = app_summary(table)
        print("app", json.dumps(result["app"], indent=1, default=float))
        table.to_csv(
            args.out_stem.with_name(args.out_stem.name + "_app.tsv"), sep="\t", index=False,
            float_format="%.6g",
        )  # fmt: skip
    out = pd.concat(tables)
    args.out_stem.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out_stem.with_suffix(".tsv"), sep="\t", index=False, float_format="%.5g")
    args.out_stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
