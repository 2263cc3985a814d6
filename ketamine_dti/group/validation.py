"""Validation of the group statistics on many simulated trials, at the level of ROI tables.

A trial is drawn from the simulator's clinical and true-MD model
(:func:`ketamine_dti.simulate.clinical.simulate_clinical`); each session's regional MD is
"measured" with independent noise (:data:`MEASUREMENT_NOISE`) and written as the participant
level would write it, together with participants.tsv and the phenotype TSVs. The trial is then
analysed by :func:`run_group_level`, from the TSV files on, exactly as the CLI does. Hundreds of
trials run in minutes because no image is simulated.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ketamine_dti.bids import derivative_name
from ketamine_dti.config import Config
from ketamine_dti.group.changes import MD_REPORT_UNIT
from ketamine_dti.group.inputs import roi_table_path
from ketamine_dti.group.run import run_group_level
from ketamine_dti.simulate.clinical import ClinicalTrial, simulate_clinical

LOGGER = logging.getLogger(__name__)

#: Per-session measurement noise of ROI-mean gray-matter MD (fraction of MD, SD): scan-rescan
#: coefficients of variation of regional GM MD at 3 T are about 0.5-1%.
MEASUREMENT_NOISE = 0.0075
#: Plausible other columns of the ROI table (they are not analysed).
MEDIAN_OFFSET_SD = 0.002  # median vs mean of an ROI's MD, fraction
WITHIN_ROI_SD = 0.12  # voxel-wise SD of GM MD within an ROI, fraction of MD
N_VOXELS = {"ba10": 900, "amygdala": 220, "hippocampus": 480, "vacc": 350}  # 2 mm voxels
#: Head motion of a cooperative adult (mm): mean FD ~ gamma with this shape and scale.
MEAN_FD_GAMMA = (4.0, 0.05)


def observe_roi_md(
    trial: ClinicalTrial, rng: np.random.Generator, noise: float = MEASUREMENT_NOISE
) -> pd.DataFrame:
    """Measured ROI tables (long): participant_id, session_id, roi, md_mean, md_median, ..."""
    md = trial.gm_md
    measured = md["md_true"].to_numpy() * (1.0 + noise * rng.standard_normal(len(md)))
    n_voxels = md["roi"].map(lambda roi: N_VOXELS[roi.split("_")[0]]).to_numpy()
    return pd.DataFrame(
        {
            "participant_id": md["participant_id"],
            "session_id": md["session_id"],
            "roi": md["roi"],
            "md_mean": measured,
            "md_median": measured * (1.0 + MEDIAN_OFFSET_SD * rng.standard_normal(len(md))),
            "md_std": WITHIN_ROI_SD * measured,
            "n_voxels": n_voxels,
        }
    )


def _tsv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a", lineterminator="\n")


def write_trial(
    trial: ClinicalTrial,
    roi_md: pd.DataFrame,
    bids_dir: Path,
    output_dir: Path,
    rng: np.random.Generator | None = None,
) -> None:
    """Write participants.tsv, phenotype/<scale>.tsv and the per-session ROI (+QC) tables.

    The many small per-session tables are formatted directly (pandas' writer costs
    milliseconds per file); floats are written with repr, so they read back exactly.
    """
    bids_dir.mkdir(parents=True, exist_ok=True)
    _tsv(trial.participants, bids_dir / "participants.tsv")
    for scale in ("madrs", "qids_sr"):
        column = f"{scale}_total"
        _tsv(
            trial.scores[["participant_id", "session_id", column]],
            bids_dir / "phenotype" / f"{scale}.tsv",
        )
    rng = rng or np.random.default_rng(0)
    columns = ("roi", "md_mean", "md_median", "md_std", "n_voxels")
    keys = list(zip(roi_md["participant_id"], roi_md["session_id"], strict=True))
    cells = [roi_md[column].tolist() for column in columns]
    lines: dict[tuple[str, str], list[str]] = {}
    for key, *values in zip(keys, *cells, strict=True):
        lines.setdefault(key, ["\t".join(columns)]).append("\t".join(map(repr_cell, values)))
    qc_header = "mean_fd\tmax_fd\tn_outlier_volumes\ttsnr"
    for (pid, session_id), table_lines in lines.items():
        subject, session = pid[len("sub-") :], session_id[len("ses-") :]
        path = roi_table_path(output_dir, subject, session)
        folder = str(path.parent)
        os.makedirs(folder, exist_ok=True)
        with open(path, "w") as handle:
            handle.write("\n".join(table_lines) + "\n")
        mean_fd = float(rng.gamma(*MEAN_FD_GAMMA))
        qc_name = derivative_name("metrics", ".tsv", sub=subject, ses=session, desc="qc")
        with open(os.path.join(folder, qc_name), "w") as handle:
            handle.write(f"{qc_header}\n{mean_fd!r}\t{3.0 * mean_fd!r}\t0\t20.0\n")


def repr_cell(value) -> str:
    """A TSV cell: exact float repr, plain str otherwise."""
    return repr(value) if isinstance(value, float) else str(value)


def simulate_trial_files(
    folder: Path,
    n_participants: int,
    scenario: str,
    rng: np.random.Generator,
    noise: float = MEASUREMENT_NOISE,
) -> tuple[Config, ClinicalTrial]:
    """Simulate one trial into folder/bids and folder/out; return a group-level Config."""
    trial = simulate_clinical(n_participants, scenario, seed=rng)
    bids_dir, output_dir = folder / "bids", folder / "out"
    write_trial(trial, observe_roi_md(trial, rng, noise), bids_dir, output_dir, rng)
    config = Config(bids_dir=bids_dir, output_dir=output_dir, analysis_level="group")
    return config, trial


def fast_temp_root() -> Path | None:
    """A RAM-backed temp folder (/dev/shm) if writable: trials write ~400 small files each."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def run_trials(
    n_trials: int,
    scenario: str,
    seed: int,
    n_participants: int = 98,
    noise: float = MEASUREMENT_NOISE,
    configure: Callable[[Config], Config] | None = None,
    workdir: Path | None = None,
) -> pd.DataFrame:
    """Simulate, write and analyse ``n_trials`` trials; return all stats rows with a trial column.

    Figures are off (the only difference from the CLI path); each trial is read back from its
    TSV files. ``configure`` may change the Config (e.g. robust SEs). ``workdir`` defaults to
    :func:`fast_temp_root`.
    """
    rng = np.random.default_rng(seed)
    workdir = workdir or fast_temp_root()
    parts = []
    with tempfile.TemporaryDirectory(prefix="group-validation-", dir=workdir) as tmp:
        for trial_index in range(n_trials):
            folder = Path(tmp) / f"trial-{trial_index:04d}"
            config, _ = simulate_trial_files(folder, n_participants, scenario, rng, noise)
            if configure is not None:
                config = configure(config)
            group_dir = run_group_level(config, make_figures=False)
            stats = pd.read_csv(group_dir / "stats.tsv", sep="\t", keep_default_na=False)
            stats.insert(0, "trial", trial_index)
            parts.append(stats)
            shutil.rmtree(folder, ignore_errors=True)
    return pd.concat(parts, ignore_index=True)


def rejection_rates(
    stats: pd.DataFrame, model: str, term: str, alpha: float = 0.05, column: str = "p_value"
) -> pd.DataFrame:
    """Per scale x ROI: share of trials with p < alpha, overall and by sign of the estimate."""
    rows = stats[(stats["model"] == model) & (stats["term"] == term)].copy()
    rows["p"] = pd.to_numeric(rows[column])
    rows["estimate"] = pd.to_numeric(rows["estimate"])
    rows["hit"] = rows["p"] < alpha
    rows["hit_positive"] = rows["hit"] & (rows["estimate"] > 0)
    rows["hit_negative"] = rows["hit"] & (rows["estimate"] < 0)
    grouped = rows.groupby(["scale", "roi"], sort=False)
    return pd.DataFrame(
        {
            "n_trials": grouped.size(),
            "rate": grouped["hit"].mean(),
            "rate_positive": grouped["hit_positive"].mean(),
            "rate_negative": grouped["hit_negative"].mean(),
        }
    ).reset_index()


def with_options(**changes) -> Callable[[Config], Config]:
    """A ``configure`` callback that sets Config fields."""
    return lambda config: replace(config, **changes)


def lstsq_ols(y: np.ndarray, x: np.ndarray) -> dict[str, np.ndarray]:
    """A second implementation of OLS inference: numpy lstsq, classical SE, t with n - p df."""
    from scipy import stats as scipy_stats

    n, p = x.shape
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ beta
    cov = np.linalg.inv(x.T @ x) * (residual @ residual) / (n - p)
    se = np.sqrt(np.diag(cov))
    t = beta / se
    return {
        "estimate": beta,
        "std_error": se,
        "statistic": t,
        "p_value": 2 * scipy_stats.t.sf(np.abs(t), n - p),
    }


def crosscheck_interaction(
    trial: ClinicalTrial, roi_md: pd.DataFrame, stats: pd.DataFrame, sessions=("baseline", "24h")
) -> dict[str, float]:
    """Largest relative difference between stats.tsv and :func:`lstsq_ols` for every
    interaction model (scale x ROI), computed from the simulated frames, not the App's tables.
    """
    baseline_id, followup_id = (f"ses-{label}" for label in sessions)
    participants = trial.participants.set_index("participant_id")
    group = (participants["group"] == "ketamine").astype(float)
    worst = {"estimate": 0.0, "std_error": 0.0, "statistic": 0.0, "p_value": 0.0}
    terms = ["group", "delta_md", "group:delta_md", "baseline_score"]
    for scale in ("madrs", "qids_sr"):
        scores = trial.scores.pivot(
            index="participant_id", columns="session_id", values=f"{scale}_total"
        )
        for roi in roi_md["roi"].unique():
            md = roi_md[roi_md["roi"] == roi].pivot(
                index="participant_id", columns="session_id", values="md_mean"
            )
            delta = ((md[followup_id] - md[baseline_id]) / MD_REPORT_UNIT).reindex(group.index)
            baseline = scores[baseline_id].reindex(group.index).astype(float)
            y = (scores[followup_id].reindex(group.index) - baseline).to_numpy(float)
            x = np.column_stack(
                [np.ones(len(group)), group, delta, group * delta, baseline]
            ).astype(float)
            reference = lstsq_ols(y, x)
            rows = (
                stats[
                    (stats["scale"] == scale)
                    & (stats["roi"] == roi)
                    & (stats["model"] == "interaction")
                ]
                .set_index("term")
                .loc[terms]
            )
            for column in worst:
                app = pd.to_numeric(rows[column]).to_numpy()
                ref = reference[column][1:]
                difference = np.max(np.abs(app - ref) / np.maximum(np.abs(ref), 1e-300))
                worst[column] = max(worst[column], float(difference))
    return worst
