#!/usr/bin/env python
"""Analysis: how strict the anatomical gray-matter rule should be, from a finished trial.

Why: on held-out ``paper`` seed 12 (session 44) a perfect pipeline measuring ``ketamine7`` with
the App's voxel rule on the *true* tissue fractions reaches r(dMD/MD) 0.960 against the true
region (``bench_atlas_agreement.py --perfect-pipeline``), while the noiseless truth over the
voxels the App keeps reaches 0.911 and the App 0.867. The App's rule reads the CSF share of each
DWI voxel from the T1w segmentation's hard labels (``anat.transfer.containing_voxel_fraction``),
which miss the CSF that partial-volume voxels labelled GM hold; CSF-contaminated voxels dilute
and scatter dMD/MD. This re-applies ``rois.longitudinal_statistics`` to the App's own ROI
samples (the ``sample_rois`` outputs in the work folder: each subject-template point's GM / CSF
share, DWI voxel, MD) under stricter rules, and scores each against the truth:

- the App's md_mean (plain MD, the rule's points) against the true region (roi_md.tsv);
- the noiseless truth over the same points (``desc-truth_md``): the ceiling of that rule;
- points kept per ROI and session, and ROIs the retention rule would report missing;
- per ROI, where r is lost: the SD over participants of the measurement's miss (the App
  against the truth over its points) beside the voxel choice's (that truth against the region).

A rule may also leave out the points whose DWI voxel the susceptibility correction stretched
or compressed by more than a factor exp(t) in either session (|ln J| > t, the sampled Jacobian
intensity factor; session 45): a compressed voxel holds signal from a larger, mixed piece of
tissue, and the head's position, hence the compression, changes between sessions. The point
set stays one for both sessions and never depends on MD.

Nothing is re-run: the maps are the App's. Training seeds only choose a rule. On a ``null``
trial the rule's slope against the truth over its points is issue 13's null slope; on a
``csf_shift`` trial each rule also gets ``bench_participant.csf_shift_effect``'s figures (plain
and free-water-corrected MD's mean dMD/MD per ROI, when only the CSF moved).

A rule must also hold on real scans, where there is no truth. With ``--retest`` the work folder
is that of the App run on a same-brain pair (``scripts/arrange_realdata.py``: the PA series as
one session, the AP series as the other; its true MD change is zero), and each rule is scored by
the two sessions' disagreement per ROI, |MD(AP) - MD(PA)| / their mean, and by the ROIs it
loses.

Usage::

    python benchmarks/tuning/gray_matter_rule.py ROOT [--label paper_longitudinal] [--out FILE]
    python benchmarks/tuning/gray_matter_rule.py --retest WORK [--out FILE]

ROOT is a ``bench_participant.py`` output folder (``<scenario>_bids``, ``<label>_work``); WORK
is a participant-level run's ``-w`` folder.
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
from bench_participant import (  # noqa: E402
    FREE_WATER,
    csf_shift_effect,
    delta,
    miss_parts,
    roi_tables,
    slopes,
)

from ketamine_dti.anat.transfer import containing_voxel_fraction  # noqa: E402
from ketamine_dti.rois import (  # noqa: E402
    CSF_PROB_MAX,
    CSF_PROB_STRICTER,
    GM_PROB_MIN,
    ROI_NAMES,
    GrayMatterRule,
    RetentionRule,
    longitudinal_statistics,
)
from ketamine_dti.simulate.clinical import SESSIONS  # noqa: E402

#: (shares, gm_prob_min, CSF cap(s), max |ln J| or None): the App's rule first (its CSF
#: ladder, session 46: a tuple of caps, strictest first; each ROI takes the strictest under
#: which the retention rule keeps it in every session, ``rois.longitudinal_statistics``), then
#: single caps (the App's rule before session 46 first), stricter GM, the rule of sessions
#: 8-45 without the most distorted points, and another ladder.
#: ``hard``: the App's shares (the segmentation's hard labels averaged over the DWI voxel's
#: footprint); ``soft``: the same average of Atropos' posterior probabilities, which keep some
#: of the CSF that a voxel labelled GM holds.
APP_CAPS: tuple[float, ...] = (*CSF_PROB_STRICTER, CSF_PROB_MAX)
VARIANTS: tuple[tuple[str, float, float | tuple[float, ...], float | None], ...] = (
    ("hard", GM_PROB_MIN, APP_CAPS, None),
    ("hard", GM_PROB_MIN, 0.05, None),
    ("hard", GM_PROB_MIN, 0.02, None),
    ("hard", GM_PROB_MIN, 0.01, None),
    ("hard", GM_PROB_MIN, 0.0, None),
    ("hard", 0.6, 0.05, None),
    ("hard", 0.7, 0.05, None),
    ("hard", 0.7, 0.01, None),
    ("soft", GM_PROB_MIN, 0.05, None),
    ("soft", GM_PROB_MIN, 0.1, None),
    ("soft", 0.6, 0.05, None),
    ("hard", GM_PROB_MIN, 0.05, 0.2),
    ("hard", GM_PROB_MIN, 0.05, 0.1),
    ("hard", GM_PROB_MIN, 0.05, 0.05),
    ("hard", GM_PROB_MIN, (0.0, 0.05), None),
)


def rule_of(gm_min: float, caps: float | tuple[float, ...]) -> GrayMatterRule:
    """The App's rule with these CSF caps (strictest first; one cap: no ladder)."""
    caps = tuple(float(cap) for cap in np.atleast_1d(caps))
    return GrayMatterRule(gm_min, caps[-1], caps[:-1])


def variant_name(variant: tuple[str, float, float | tuple[float, ...], float | None]) -> str:
    """How results files name a rule (session 44's names for the rules without ``max |ln J|``;
    a ladder's caps joined by ``|``)."""
    shares, gm_min, csf_max, max_log_jacobian = variant
    caps = "|".join(f"{cap:g}" for cap in np.atleast_1d(csf_max))
    name = f"{shares}: gm>={gm_min:g}, csf<={caps}"
    return name if max_log_jacobian is None else f"{name}, |ln J|<={max_log_jacobian:g}"


def without_distorted(
    sessions: list[dict[str, np.ndarray]], max_log_jacobian: float | None
) -> list[dict[str, np.ndarray]]:
    """The samples with the points whose voxel's |ln J| exceeds ``max_log_jacobian`` (or has no
    Jacobian) taken out of ``in_brain`` in every session; unchanged for None, and for a run
    without susceptibility correction (no ``jacobian`` sampled: nothing was stretched)."""
    if max_log_jacobian is None or any("jacobian" not in session for session in sessions):
        return sessions
    distorted = np.zeros(sessions[0]["label"].shape, bool)
    for session in sessions:
        with np.errstate(divide="ignore", invalid="ignore"):
            log_jacobian = np.abs(np.log(session["jacobian"]))
        distorted |= ~(log_jacobian <= max_log_jacobian)  # NaN counts as distorted
    return [{**session, "in_brain": session["in_brain"] & ~distorted} for session in sessions]


def load_samples(work: Path, subject: str) -> list[dict[str, np.ndarray]]:
    """Both sessions' ``sample_rois`` outputs of one participant (work folder)."""
    folder = work / "ketamine_dti_wf" / f"sub_{subject}_wf"
    sessions = []
    for session in SESSIONS:
        with np.load(folder / f"ses_{session}_wf" / "sample_rois" / "roi_samples.npz") as data:
            sessions.append({key: data[key] for key in data.files})
    return sessions


def with_soft_shares(
    work: Path, subject: str, sessions: list[dict[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """The same samples with their GM and CSF shares recomputed from the segmentation's
    posteriors (the App's footprint average, ``containing_voxel_fraction``)."""
    folder = work / "ketamine_dti_wf" / f"sub_{subject}_wf"
    atlas = nib.load(folder / "template_rois" / "atlas_template.nii.gz")
    at = tuple(np.argwhere(np.rint(np.asanyarray(atlas.dataobj)) > 0).T)
    dwi_voxel = np.linalg.norm(sessions[0]["dwi_affine"][:3, :3], axis=0)
    shares = {}
    for name in ("gm", "csf"):
        posterior = nib.load(folder / "anat_wf" / "segment_tissues" / f"tissue_{name}_probseg.nii")
        if not np.allclose(posterior.affine, atlas.affine, atol=1e-3):
            raise ValueError("the posteriors are not on the subject template's grid")
        share = containing_voxel_fraction(
            np.asanyarray(posterior.dataobj, np.float32),
            posterior.header.get_zooms()[:3],
            dwi_voxel,
        )
        shares[name] = share[at].astype(np.float32)
    return [{**session, **shares} for session in sessions]


def truth_at_points(bids: Path, subject: str, session: str, voxel: np.ndarray) -> np.ndarray:
    """desc-truth_md at each sample's DWI voxel (NaN outside the grid)."""
    folder = bids / "sourcedata/ground_truth" / f"sub-{subject}" / f"ses-{session}"
    flat = np.asarray(
        nib.load(next(folder.glob("*_space-dwi_desc-truth_md.nii.gz"))).dataobj, np.float32
    ).ravel()
    return np.where(voxel >= 0, flat[np.where(voxel >= 0, voxel, 0)], np.nan)


def measure(bids: Path | None, work: Path) -> dict[tuple, pd.DataFrame]:
    """Per variant, one row per participant, session and ROI: the App's md_mean under that
    rule, the truth over the same points (NaN without a simulated ``bids``), the points kept and
    the ROI's status. Each participant's samples and truth are read once for all variants."""
    rows: dict[tuple, list[dict]] = {variant: [] for variant in VARIANTS}
    subjects = sorted(p.name[4:-3] for p in (work / "ketamine_dti_wf").glob("sub_*_wf"))
    for subject in subjects:
        hard = load_samples(work, subject)
        samples = {"hard": hard, "soft": with_soft_shares(work, subject, hard)}
        truths = [
            truth_at_points(bids, subject, session, sample["voxel"])
            if bids is not None
            else np.full(sample["voxel"].shape, np.nan)
            for session, sample in zip(SESSIONS, samples["hard"], strict=True)
        ]
        for variant in VARIANTS:
            shares, gm_min, csf_max, max_log_jacobian = variant
            chosen = without_distorted(samples[shares], max_log_jacobian)
            tables, kept = longitudinal_statistics(
                chosen, RetentionRule(), ROI_NAMES, rule=rule_of(gm_min, csf_max)
            )
            labels = chosen[0]["label"]
            for session, table, truth, used in zip(SESSIONS, tables, truths, kept, strict=True):
                for _, row in table.iterrows():
                    points = used & (labels == ROI_NAMES.index(row["roi"]) + 1)
                    known = points & ~np.isnan(truth)
                    mean = float(truth[known].mean()) if known.any() else float("nan")
                    rows[variant].append(
                        {
                            "participant_id": f"sub-{subject}",
                            "session_id": f"ses-{session}",
                            "roi": row["roi"],
                            "status": row["status"],
                            "md_mean": row["md_mean"],
                            FREE_WATER: row.get(FREE_WATER, np.nan),
                            "truth_points": mean,
                            "n_points": int(points.sum()),
                            "csf_cap": row["csf_fraction_max"],
                        }
                    )
    return {variant: pd.DataFrame(frame) for variant, frame in rows.items()}


def score(frame: pd.DataFrame, truth: pd.DataFrame) -> dict:
    merged = frame.merge(truth, on=["participant_id", "session_id", "roi"])
    measured = merged[merged.status == "ok"]
    error = (measured.md_mean / measured.md_true - 1).abs()
    changes = pd.concat(
        {
            name: delta(measured, column)["relative_delta"]
            for name, column in (
                ("app", "md_mean"),
                ("points", "truth_points"),
                ("region", "md_true"),
            )
        },
        axis=1,
    ).dropna()

    def r(a: str, b: str) -> float:
        return float(np.corrcoef(changes[a], changes[b])[0, 1])

    on_points = slopes(changes.app, changes.points)
    # where r is lost, per ROI: SD over participants of each part of the miss and of the true
    # region's change itself
    spread = (
        miss_parts(changes.app, changes.points, changes.region)
        .assign(region=changes.region)
        .groupby(level="roi")
        .std()
    )
    return {
        "pairs": int(len(changes)),
        "missing_roi_sessions": int((merged.status != "ok").sum()),
        "median_points": float(measured.n_points.median()),
        "median_abs_error_vs_region": float(error.median()),
        "r_app_vs_region": r("app", "region"),
        "slope_app_vs_region": slopes(changes.app, changes.region)["slope_dmd"],
        "r_points_truth_vs_region": r("points", "region"),
        "r_app_vs_points_truth": r("app", "points"),
        # issue 13's null slopes: the App against the truth over its own points
        "slope_app_vs_points_truth": on_points["slope_dmd"],
        "slope_app_vs_points_truth_se": on_points["slope_dmd_se"],
        "per_roi_slope_app_vs_points_truth": on_points["per_roi_slope_dmd"],
        "per_roi_slope_app_vs_points_truth_se": on_points["per_roi_slope_dmd_se"],
        "per_roi_median_points": measured.groupby("roi").n_points.median().to_dict(),
        "per_roi_sd_measurement_miss": spread.measurement.to_dict(),
        "per_roi_sd_voxel_choice_miss": spread.voxel_choice.to_dict(),
        "per_roi_sd_region_change": spread.region.to_dict(),
    }


def score_retest(frame: pd.DataFrame) -> dict:
    """A same-brain pair's figures for one rule: per ROI the sessions' disagreement
    |MD(2) - MD(1)| / their mean (None where either session lost the ROI), its median and
    maximum over the ROIs measured in both, the ROI-sessions lost and the median points."""
    measured = frame[frame.status == "ok"]
    means = measured.pivot_table(index="roi", columns="session_id", values="md_mean").reindex(
        index=list(ROI_NAMES), columns=[f"ses-{session}" for session in SESSIONS]
    )
    first, second = (means[column] for column in means.columns)
    disagreement = (second - first).abs() / ((second + first) / 2)
    both = disagreement.dropna()
    return {
        "missing_roi_sessions": int((frame.status != "ok").sum()),
        "median_points": float(measured.n_points.median()) if len(measured) else 0.0,
        "median_disagreement": float(both.median()) if len(both) else None,
        "max_disagreement": float(both.max()) if len(both) else None,
        "per_roi_disagreement": {
            roi: None if pd.isna(value) else float(value) for roi, value in disagreement.items()
        },
        "per_roi_points": measured.groupby(["roi", "session_id"]).n_points.first().unstack()
        .to_dict(orient="index"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, nargs="?")
    parser.add_argument("--label", default="paper_longitudinal")
    parser.add_argument("--retest", type=Path, default=None, metavar="WORK")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if (args.root is None) == (args.retest is None):
        parser.error("give either ROOT (a simulated trial) or --retest WORK (a same-brain pair)")
    if args.retest is not None:
        results = {}
        for variant, frame in measure(None, args.retest).items():
            results[variant_name(variant)] = score_retest(frame)
            print(json.dumps({variant_name(variant): results[variant_name(variant)]}), flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    scenario = args.label.rsplit("_", 1)[0]  # <scenario>_<design>; csf_shift has a "_"
    bids, work = args.root / f"{scenario}_bids", args.root / f"{args.label}_work"
    truth = pd.read_csv(bids / "sourcedata/ground_truth/roi_md.tsv", sep="\t")
    results = {}
    frames = measure(bids, work)
    subjects = sorted({row.removeprefix("sub-") for row in frames[VARIANTS[0]].participant_id})
    published = roi_tables(args.root / f"{args.label}_out", subjects)
    for variant, frame in frames.items():
        name = variant_name(variant)
        results[name] = score(frame, truth)
        # ~0 for the rule the App ran with (the ladder from session 46; 0.05 before)
        both = frame.merge(published, on=["participant_id", "session_id", "roi"])
        both = both[both.status_x == "ok"]
        gap = float((both.md_mean_x / both.md_mean_y - 1).abs().max())
        results[name]["max_rel_diff_from_published_md_mean"] = gap
        if scenario == "csf_shift":  # only the CSF moved: what each rule's MD makes of it
            results[name]["csf_shift"] = csf_shift_effect(bids, frame[frame.status == "ok"])
        print(json.dumps({name: results[name]}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
