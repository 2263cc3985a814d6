"""Monte-Carlo validation of the group statistics on many simulated trials (ROI tables only).

It lives beside the simulator, not in ``group/``: the App's group level never imports the
simulator; this harness drives the App. A trial is drawn from the clinical and true-MD model
(:func:`ketamine_dti.simulate.clinical.simulate_clinical`); each session's regional MD is
"measured" with independent noise (:data:`MEASUREMENT_NOISE`) and written as the participant
level would write it, together with participants.tsv and the phenotype TSVs. The trial is then
analysed by :func:`run_group_level`, from the TSV files on, exactly as the CLI does. Hundreds of
trials run in minutes because no image is simulated. :func:`lstsq_ols` is the one
independent reference OLS the tests and the benchmark compare the App's models with.

Effect settings (:data:`EFFECT_SETTINGS`, :func:`effect_setting`): ``null`` and ``paper`` are the
clinical model's scenarios with :data:`MEASUREMENT_NOISE`; ``realistic`` is the ``paper``
pattern at the effect size the paper reports (partial r :data:`REALISTIC_PARTIAL_R`) measured
with the dMD reliability of our own pipeline (:data:`REALISTIC_RELIABILITY`), the setting of the
power table (``benchmarks/bench_power.py``, ``ketamine-dti-power``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ketamine_dti.config import Config
from ketamine_dti.derivatives import spec_path
from ketamine_dti.group.changes import MD_REPORT_UNIT
from ketamine_dti.group.run import run_group_level
from ketamine_dti.simulate.bids_writer import write_phenotype, write_tsv
from ketamine_dti.simulate.clinical import (
    ALLOCATION,
    COUPLING_STRENGTH,
    MD_CHANGE_SD,
    SCALES,
    SESSIONS,
    SYMPTOM_CHANGES,
    TREATMENT_ARM,
    ClinicalTrial,
    coupling_for_partial_r,
    planted_interactions,
    simulate_clinical,
)

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

#: Partial r of group x dMD that the paper's p = 0.016-0.082 at n = 98 imply (about 0.18-0.25).
REALISTIC_PARTIAL_R = 0.2
#: SD of the pipeline's dMD/MD error on test-retest scans (no true change), longitudinal mode,
#: 21 ROI pairs: benchmarks/results/participant_retest.md (sd_relative_dmd_error).
RETEST_DMD_ERROR_SD = 0.00478
#: SD of the true dMD/MD of the participants measured in benchmarks/results/participant_null.md
#: (4 standard participants x 7 ROIs, sd_relative_dmd_true; the model's SD is MD_CHANGE_SD).
NULL_BENCHMARK_TRUE_DMD_SD = 0.02323


def dmd_reliability(true_sd: float, error_sd: float) -> float:
    """Retest reliability of dMD: var(true dMD) / (var(true dMD) + var(error))."""
    return true_sd**2 / (true_sd**2 + error_sd**2)


#: The realistic setting's dMD reliability (0.959): the true dMD variance of the null
#: benchmark's participants over that plus the retest benchmark's error variance.
REALISTIC_RELIABILITY = dmd_reliability(NULL_BENCHMARK_TRUE_DMD_SD, RETEST_DMD_ERROR_SD)


def session_noise_for_reliability(reliability: float) -> float:
    """Per-session ROI MD noise (fraction of MD, SD) that gives dMD this retest reliability.

    dMD's error is the difference of two sessions' independent errors, variance 2 noise^2 (to
    first order in these small fractions), against the model's true variance MD_CHANGE_SD^2.
    """
    if not 0.0 < reliability <= 1.0:
        raise ValueError(f"reliability {reliability:g}; use a value in (0, 1]")
    return MD_CHANGE_SD * float(np.sqrt((1.0 - reliability) / (2.0 * reliability)))


def reliability_for_session_noise(noise: float) -> float:
    """dMD retest reliability of a per-session noise (inverse of the above)."""
    return dmd_reliability(MD_CHANGE_SD, np.sqrt(2.0) * noise)


@dataclass(frozen=True)
class EffectSetting:
    """What the validation plants: a clinical-model scenario, its coupling strength, and the
    per-session ROI MD measurement noise (fraction of MD, SD)."""

    scenario: str
    coupling_strength: float
    noise: float


EFFECT_SETTINGS: tuple[str, ...] = ("null", "paper", "realistic")


def effect_setting(name: str, allocation: tuple[int, int] = ALLOCATION) -> EffectSetting:
    """The effect setting ``name`` of :data:`EFFECT_SETTINGS`."""
    if name == "realistic":
        return EffectSetting(
            "paper",
            coupling_for_partial_r(REALISTIC_PARTIAL_R, allocation),
            session_noise_for_reliability(REALISTIC_RELIABILITY),
        )
    if name not in EFFECT_SETTINGS:
        raise ValueError(f"unknown effect setting {name!r}; use one of {EFFECT_SETTINGS}")
    return EffectSetting(name, COUPLING_STRENGTH, MEASUREMENT_NOISE)


def measure_md(md_true: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """ROI MD as measured: the true MD times (1 + noise x standard normal), independently."""
    return md_true * (1.0 + noise * rng.standard_normal(np.shape(md_true)))


def observe_roi_md(
    trial: ClinicalTrial, rng: np.random.Generator, noise: float = MEASUREMENT_NOISE
) -> pd.DataFrame:
    """Measured ROI tables (long): participant_id, session_id, roi, md_mean, md_median, ..."""
    md = trial.gm_md
    measured = measure_md(md["md_true"].to_numpy(), noise, rng)
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
    write_tsv(bids_dir / "participants.tsv", trial.participants)
    write_phenotype(bids_dir, trial.scores)
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
        path = spec_path(output_dir, "roi_table", subject, session)
        folder = str(path.parent)
        os.makedirs(folder, exist_ok=True)
        with open(path, "w") as handle:
            handle.write("\n".join(table_lines) + "\n")
        mean_fd = float(rng.gamma(*MEAN_FD_GAMMA))
        with open(spec_path(output_dir, "qc_table", subject, session), "w") as handle:
            handle.write(f"{qc_header}\n{mean_fd!r}\t{3.0 * mean_fd!r}\t0\t20.0\n")


def repr_cell(value) -> str:
    """A TSV cell: exact float repr, plain str otherwise."""
    return repr(value) if isinstance(value, float) else str(value)


def simulate_observed_trial(
    folder: Path,
    n_participants: int,
    scenario: str,
    rng: np.random.Generator,
    noise: float = MEASUREMENT_NOISE,
    coupling_strength: float = COUPLING_STRENGTH,
    symptom_change: str = SYMPTOM_CHANGES[0],
) -> tuple[Config, ClinicalTrial, pd.DataFrame]:
    """Simulate one trial into folder/bids and folder/out (``coupling_strength`` and
    ``symptom_change``, e.g. ``lognormal`` for skewed symptom changes, go to the clinical model).

    Returns a group-level Config, the trial and the measured ROI tables it was written from.
    """
    trial = simulate_clinical(
        n_participants,
        scenario,
        seed=rng,
        coupling_strength=coupling_strength,
        symptom_change=symptom_change,
    )
    roi_md = observe_roi_md(trial, rng, noise)
    bids_dir, output_dir = folder / "bids", folder / "out"
    write_trial(trial, roi_md, bids_dir, output_dir, rng)
    config = Config(bids_dir=bids_dir, output_dir=output_dir, analysis_level="group")
    return config, trial, roi_md


def simulate_trial_files(
    folder: Path,
    n_participants: int,
    scenario: str,
    rng: np.random.Generator,
    noise: float = MEASUREMENT_NOISE,
    coupling_strength: float = COUPLING_STRENGTH,
    symptom_change: str = SYMPTOM_CHANGES[0],
) -> tuple[Config, ClinicalTrial]:
    """:func:`simulate_observed_trial` without the measured tables."""
    config, trial, _ = simulate_observed_trial(
        folder, n_participants, scenario, rng, noise, coupling_strength, symptom_change
    )
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
    noise: float | None = None,
    configure: Callable[[Config], Config] | None = None,
    workdir: Path | None = None,
    symptom_change: str = SYMPTOM_CHANGES[0],
) -> pd.DataFrame:
    """Simulate, write and analyse ``n_trials`` trials; return all stats rows with a trial column.

    ``scenario`` names an effect setting (:data:`EFFECT_SETTINGS`); ``noise`` overrides its
    measurement noise. Figures are off (the only difference from the CLI path); each trial is
    read back from its TSV files. ``configure`` may change the Config (e.g. robust SEs).
    ``workdir`` defaults to :func:`fast_temp_root`; ``symptom_change`` goes to the clinical
    model (:func:`~ketamine_dti.simulate.clinical.shared_latent`).
    """
    setting = effect_setting(scenario)
    noise = setting.noise if noise is None else noise
    rng = np.random.default_rng(seed)
    workdir = workdir or fast_temp_root()
    parts = []
    with tempfile.TemporaryDirectory(prefix="group-validation-", dir=workdir) as tmp:
        for trial_index in range(n_trials):
            folder = Path(tmp) / f"trial-{trial_index:04d}"
            config, _ = simulate_trial_files(
                folder,
                n_participants,
                setting.scenario,
                rng,
                noise,
                setting.coupling_strength,
                symptom_change,
            )
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
    """Per scale x ROI: share of trials with p <= alpha, overall and by sign of the estimate."""
    rows = stats[(stats["model"] == model) & (stats["term"] == term)].copy()
    rows["p"] = pd.to_numeric(rows[column])
    rows["estimate"] = pd.to_numeric(rows["estimate"])
    rows["hit"] = rows["p"] <= alpha  # reject at p <= alpha: a permutation test is then exact
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


def planted_rejection_rates(
    stats: pd.DataFrame, setting: EffectSetting, alpha: float = 0.05, column: str = "p_value"
) -> pd.DataFrame:
    """Per interaction the setting plants (scale x ROI): share of trials whose
    ``group:delta_md`` has ``column`` < alpha and the planted sign (any sign at zero coupling)."""
    rates = rejection_rates(stats, "interaction", "group:delta_md", alpha, column)
    rates = rates.set_index(["scale", "roi"])
    rows = []
    for (scale, roi), (rho_t, rho_c) in planted_interactions(setting.scenario).items():
        sign = np.sign(setting.coupling_strength * (rho_t - rho_c))
        row = rates.loc[(scale, roi)]
        rate = {1.0: row["rate_positive"], -1.0: row["rate_negative"]}.get(sign, row["rate"])
        rows.append({"scale": scale, "roi": roi, "n_trials": row["n_trials"], "power": rate})
    return pd.DataFrame(rows)


def with_options(**changes) -> Callable[[Config], Config]:
    """A ``configure`` callback that sets Config fields."""
    return lambda config: replace(config, **changes)


def lstsq_ols(y: np.ndarray, x: np.ndarray, robust: bool = False) -> dict[str, np.ndarray]:
    """A second implementation of OLS inference, independent of statsmodels.

    numpy lstsq; classical or HC3 covariance; t tests and 95% CIs with n - p df. Entries are
    per column of ``x`` (the intercept first).
    """
    from scipy import stats as scipy_stats

    n, p = x.shape
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ beta
    xtx_inv = np.linalg.inv(x.T @ x)
    if robust:
        leverage = np.einsum("ij,jk,ik->i", x, xtx_inv, x)
        meat = x.T @ (x * (residual / (1 - leverage))[:, None] ** 2)
        cov = xtx_inv @ meat @ xtx_inv
    else:
        cov = xtx_inv * (residual @ residual) / (n - p)
    se = np.sqrt(np.diag(cov))
    t = beta / se
    half = scipy_stats.t.ppf(0.975, n - p) * se
    return {
        "estimate": beta,
        "std_error": se,
        "statistic": t,
        "p_value": 2 * scipy_stats.t.sf(np.abs(t), n - p),
        "ci_low": beta - half,
        "ci_high": beta + half,
    }


#: The terms of the interaction model (delta_score ~ group * delta_md + baseline_score).
INTERACTION_TERMS = ["group", "delta_md", "group:delta_md", "baseline_score"]


def reference_frame(
    trial: ClinicalTrial,
    roi_md: pd.DataFrame,
    scale: str,
    roi: str,
    percent: bool = False,
    sessions: tuple[str, str] = SESSIONS,
) -> pd.DataFrame:
    """Per participant: arm (1 = treatment), dMD, baseline score, dScore and age.

    Computed from the simulated frames, independently of the App's reading and change scores;
    dMD in MD_REPORT_UNIT, or percent of baseline MD.
    """
    baseline_id, followup_id = (f"ses-{label}" for label in sessions)
    md = roi_md[roi_md.roi == roi].pivot(
        index="participant_id", columns="session_id", values="md_mean"
    )
    if percent:
        delta = 100 * (md[followup_id] - md[baseline_id]) / md[baseline_id]
    else:
        delta = (md[followup_id] - md[baseline_id]) / MD_REPORT_UNIT
    scores = trial.scores.pivot(
        index="participant_id", columns="session_id", values=f"{scale}_total"
    )
    participants = trial.participants.set_index("participant_id")
    return pd.DataFrame(
        {
            "group": (participants.group == TREATMENT_ARM).astype(float),
            "delta_md": delta,
            "baseline_score": scores[baseline_id].astype(float),
            "delta_score": (scores[followup_id] - scores[baseline_id]).astype(float),
            "age": participants.age.astype(float),
        }
    )


def interaction_design(frame) -> np.ndarray:
    """Design matrix of the interaction model: intercept, then :data:`INTERACTION_TERMS`.

    ``frame``: a DataFrame, or a mapping of arrays with participants on the last axis (any
    leading shape, e.g. Monte-Carlo replicates; they broadcast). Columns go last.
    """
    group, delta_md, baseline_score = np.broadcast_arrays(
        *(np.asarray(frame[name], dtype=float) for name in ("group", "delta_md", "baseline_score"))
    )
    return np.stack(
        [np.ones_like(delta_md), group, delta_md, group * delta_md, baseline_score], axis=-1
    )


def crosscheck_interaction(
    trial: ClinicalTrial, roi_md: pd.DataFrame, stats: pd.DataFrame, sessions=SESSIONS
) -> dict[str, float]:
    """Largest relative difference between stats.tsv and :func:`lstsq_ols` for every
    interaction model (scale x ROI), computed from the simulated frames, not the App's tables.
    """
    worst = {"estimate": 0.0, "std_error": 0.0, "statistic": 0.0, "p_value": 0.0}
    for scale in SCALES:
        for roi in roi_md["roi"].unique():
            frame = reference_frame(trial, roi_md, scale, roi, sessions=sessions)
            reference = lstsq_ols(frame.delta_score.to_numpy(), interaction_design(frame))
            rows = (
                stats[
                    (stats["scale"] == scale)
                    & (stats["roi"] == roi)
                    & (stats["model"] == "interaction")
                ]
                .set_index("term")
                .loc[INTERACTION_TERMS]
            )
            for column in worst:
                app = pd.to_numeric(rows[column]).to_numpy()
                ref = reference[column][1:]
                difference = np.max(np.abs(app - ref) / np.maximum(np.abs(ref), 1e-300))
                worst[column] = max(worst[column], float(difference))
    return worst
