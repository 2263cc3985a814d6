"""The simulated trial's clinical and gray-matter MD model (pure numpy/pandas, no I/O).

This is the ground truth that the DWI simulator renders into images and that the group-level
validation analyses directly. One participant is drawn as:

- an arm, 2:1 ketamine:saline by permuted blocks of 3 or 6;
- age and sex;
- baseline MADRS and QIDS-SR (correlated, a treatment-resistant population);
- two latent standard-normal symptom-change factors, ``shared`` and ``split``. The MADRS and
  QIDS-SR changes load on them at an angle such that the two scale changes correlate by
  :data:`SCORE_CHANGE_CORRELATION`;
- a baseline gray-matter MD per ROI, and a 24 h fractional MD change per ROI that loads on the
  symptom latents with the planted couplings, plus an ROI-specific part that is independent
  across ROIs, participants and everything else.

Coupling geometry. With theta = arccos(SCORE_CHANGE_CORRELATION) / 2 the standardized changes
are ``madrs = cos(theta) shared + sin(theta) split`` and
``qids = cos(theta) shared - sin(theta) split``. An ROI coupled "on both scales" loads on
``shared``; one coupled "on MADRS only" loads on ``sin(theta) shared + cos(theta) split``, which
is orthogonal to the QIDS-SR change, so its correlation with the QIDS-SR change is exactly zero.
ROI changes are therefore independent of each other given the symptom change, and an uncoupled
ROI (e.g. vACC) is independent of every score and every other ROI: its tests stay at the
nominal false-positive rate.

MD is in mm^2/s throughout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ketamine_dti.rois import ROI_NAMES

LOGGER = logging.getLogger(__name__)

#: ``paper``: the planted effects; ``null``: no coupling, no treatment effect on MD (24 h MD
#: still fluctuates by MD_CHANGE_SD); ``retest``: as null, but the true MD does not change
#: at all between sessions (a test-retest scan: any measured dMD is the pipeline's error).
SCENARIOS: tuple[str, ...] = ("paper", "null", "retest")
TREATMENT_ARM = "ketamine"
CONTROL_ARM = "saline"
#: Permuted-block sizes; each block holds ketamine:saline at 2:1.
BLOCK_SIZES: tuple[int, ...] = (3, 6)
#: Fewer than two participants cannot make a trial.
MIN_PARTICIPANTS = 2

#: The trial's rating scales (phenotype/<scale>.tsv, column <scale>_total), in this order.
SCALES: tuple[str, ...] = ("madrs", "qids_sr")
#: Valid score ranges (inclusive), from the scales' definitions.
SCORE_RANGES: dict[str, tuple[int, int]] = {"madrs": (0, 60), "qids_sr": (0, 27)}
#: Treatment-resistant baseline severity (mean, SD), typical of ketamine TRD trials.
BASELINE_SCORE: dict[str, tuple[float, float]] = {"madrs": (32.0, 5.0), "qids_sr": (16.0, 3.0)}
#: Trial inclusion threshold on baseline MADRS (moderate depression or worse).
MADRS_INCLUSION_MIN = 20
#: Correlation of baseline MADRS with baseline QIDS-SR (clinician vs self-report).
BASELINE_SCORE_CORRELATION = 0.6
#: Mean 24 h score change per arm (points; negative = improvement). Saline has a placebo response.
MEAN_SCORE_CHANGE: dict[str, dict[str, float]] = {
    "madrs": {TREATMENT_ARM: -12.0, CONTROL_ARM: -4.0},
    "qids_sr": {TREATMENT_ARM: -5.0, CONTROL_ARM: -2.0},
}
#: SD of the 24 h score change around its arm mean (points), equal in both arms.
SCORE_CHANGE_SD: dict[str, float] = {"madrs": 8.0, "qids_sr": 3.5}
#: Regression to the mean: change per point of baseline above the population mean.
BASELINE_REGRESSION = -0.3
#: Correlation of the MADRS change with the QIDS-SR change, typical of trials.
SCORE_CHANGE_CORRELATION = 0.5

#: Population-mean baseline gray-matter MD per ROI (mm^2/s); limbic GM a bit higher than cortex.
ROI_BASELINE_MD: dict[str, float] = {
    "ba10_left": 0.78e-3,
    "ba10_right": 0.78e-3,
    "amygdala_left": 0.85e-3,
    "amygdala_right": 0.85e-3,
    "hippocampus_left": 0.88e-3,
    "hippocampus_right": 0.88e-3,
    "vacc": 0.80e-3,
}
#: Between-subject SD of baseline MD shared by all ROIs (fraction of MD).
SUBJECT_MD_SD = 0.03
#: Between-subject SD of baseline MD specific to each ROI (fraction of MD).
ROI_MD_SD = 0.025
#: Age effect on baseline GM MD (fraction per year from AGE_REFERENCE); MD rises with age.
MD_AGE_SLOPE = 0.001
AGE_REFERENCE = 40.0
#: Age distribution (mean, SD, min, max in years) of an adult TRD trial.
AGE_DISTRIBUTION = (42.0, 11.0, 18, 65)
#: Share of women, typical of depression trials.
FEMALE_FRACTION = 0.6

#: SD of the true 24 h fractional MD change (2.5% of MD) around its arm mean.
MD_CHANGE_SD = 0.025
#: Loading of a coupled ROI's MD change on its symptom direction (correlation with the
#: standardized symptom change before measurement noise). Strong enough that the planted
#: group x dMD interactions have power > 0.9 at n = 98 (2:1) with 0.5-1% MD measurement noise.
COUPLING_STRENGTH = 0.92
#: Mean true fractional MD change in the ketamine arm of the paper scenario, per ROI.
KETAMINE_MD_SHIFT: dict[str, float] = {
    "ba10_left": -0.01,
    "amygdala_left": -0.01,
    "ba10_right": -0.01,
}


@dataclass(frozen=True)
class ClinicalTrial:
    """One simulated trial's clinical data and true gray-matter MD.

    participants: participant_id ("sub-001"...), group ("ketamine"/"saline"), age (int), sex.
    scores: participant_id, session_id, madrs_total (int 0-60), qids_sr_total (int 0-27).
    gm_md: participant_id, session_id, roi, md_true (true GM MD in mm^2/s per ROI and session).
    planted: JSON-serialisable planted coefficients, scenario, units and equations in words.
    """

    participants: pd.DataFrame
    scores: pd.DataFrame
    gm_md: pd.DataFrame
    planted: dict


def allocate_arms(n_participants: int, rng: np.random.Generator) -> np.ndarray:
    """Arms for ``n_participants`` in enrolment order, 2:1 by permuted blocks of 3 or 6.

    Blocks are chosen among the sizes that still fit, so a multiple of 3 is allocated exactly
    2:1 (a 12-participant trial has 8 and 4); otherwise only the last block is cut short.
    """
    arms: list[str] = []
    while len(arms) < n_participants:
        remaining = n_participants - len(arms)
        fitting = [size for size in BLOCK_SIZES if size <= remaining] or [min(BLOCK_SIZES)]
        size = int(rng.choice(fitting))
        n_treated = 2 * size // 3
        block = np.array([TREATMENT_ARM] * n_treated + [CONTROL_ARM] * (size - n_treated))
        arms.extend(rng.permutation(block).tolist())
    return np.array(arms[:n_participants])


def _symptom_directions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors in (shared, split) latent space: MADRS change, QIDS-SR change, MADRS-only."""
    theta = np.arccos(SCORE_CHANGE_CORRELATION) / 2.0
    madrs = np.array([np.cos(theta), np.sin(theta)])
    qids = np.array([np.cos(theta), -np.sin(theta)])
    madrs_only = np.array([np.sin(theta), np.cos(theta)])  # orthogonal to the QIDS-SR change
    return madrs, qids, madrs_only


def _scale_directions() -> dict[str, np.ndarray]:
    """Each scale's change direction in (shared, split) latent space."""
    return dict(zip(SCALES, _symptom_directions()[:2], strict=True))


def coupling_loadings(scenario: str) -> dict[str, dict[str, list[float]]]:
    """Loading of each ROI's standardized MD change on (shared, split), per arm.

    Positive along a scale's direction: MD decrease goes with improvement (negative dScore).
    """
    _, _, madrs_only = _symptom_directions()
    both_scales = np.array([1.0, 0.0])
    zero = np.zeros(2)
    loadings = {arm: {roi: zero for roi in ROI_NAMES} for arm in (TREATMENT_ARM, CONTROL_ARM)}
    if scenario == "paper":
        for roi in ("ba10_left", "amygdala_left", "ba10_right"):
            loadings[TREATMENT_ARM][roi] = COUPLING_STRENGTH * both_scales
        loadings[CONTROL_ARM]["ba10_right"] = COUPLING_STRENGTH * both_scales
        for roi in ("hippocampus_left", "hippocampus_right"):
            loadings[TREATMENT_ARM][roi] = -COUPLING_STRENGTH * madrs_only
    return {
        arm: {roi: v.tolist() for roi, v in per_roi.items()} for arm, per_roi in loadings.items()
    }


def _md_shift(scenario: str, arm: str, roi: str) -> float:
    """Mean true fractional MD change of an arm in an ROI."""
    if scenario == "paper" and arm == TREATMENT_ARM:
        return KETAMINE_MD_SHIFT.get(roi, 0.0)
    return 0.0


def _planted(scenario: str, n_participants: int, sessions: tuple[str, str]) -> dict:
    """Planted coefficients and the generative equations, JSON-serialisable."""
    loadings = coupling_loadings(scenario)
    directions = _scale_directions()
    correlation: dict = {}
    slope: dict = {}
    for arm, per_roi in loadings.items():
        correlation[arm] = {}
        slope[arm] = {}
        for scale, direction in directions.items():
            corr = {roi: float(np.dot(v, direction)) for roi, v in per_roi.items()}
            correlation[arm][scale] = corr
            slope[arm][scale] = {
                roi: SCORE_CHANGE_SD[scale] * c / (100.0 * MD_CHANGE_SD) for roi, c in corr.items()
            }
    return {
        "scenario": scenario,
        "n_participants": n_participants,
        "sessions": list(sessions),
        "arms": {"treatment": TREATMENT_ARM, "control": CONTROL_ARM, "ratio": "2:1"},
        "allocation": f"permuted blocks of size {list(BLOCK_SIZES)} (random), 2:1 within block",
        "units": {
            "md": "mm^2/s",
            "md_change": "fraction of baseline MD",
            "score": "points",
            "slope": "score points per 1% MD change",
        },
        "roi_baseline_md": ROI_BASELINE_MD,
        "subject_md_sd": SUBJECT_MD_SD,
        "roi_md_sd": ROI_MD_SD,
        "md_age_slope_per_year": MD_AGE_SLOPE,
        "md_change_sd": 0.0 if scenario == "retest" else MD_CHANGE_SD,
        "md_change_mean": {
            arm: {roi: _md_shift(scenario, arm, roi) for roi in ROI_NAMES} for arm in loadings
        },
        "baseline_score": {k: list(v) for k, v in BASELINE_SCORE.items()},
        "baseline_score_correlation": BASELINE_SCORE_CORRELATION,
        "madrs_inclusion_min": MADRS_INCLUSION_MIN,
        "mean_score_change": MEAN_SCORE_CHANGE,
        "score_change_sd": SCORE_CHANGE_SD,
        "score_change_correlation": SCORE_CHANGE_CORRELATION,
        "baseline_regression": BASELINE_REGRESSION,
        "coupling_strength": COUPLING_STRENGTH if scenario == "paper" else 0.0,
        "coupling_loadings_shared_split": loadings,
        "coupling_correlation": correlation,
        "coupling_slope_points_per_percent_md": slope,
        "equations": [
            "arm: 2:1 ketamine:saline by permuted blocks of 3 or 6",
            "md_baseline[i,r] = roi_baseline_md[r] * (1 + subject_md_sd*g[i] + roi_md_sd*u[i,r]"
            " + md_age_slope_per_year*(age[i] - 40)), g,u ~ N(0,1)",
            "shared[i], split[i] ~ N(0,1); theta = arccos(score_change_correlation)/2",
            "z_madrs = cos(theta)*shared + sin(theta)*split;"
            " z_qids_sr = cos(theta)*shared - sin(theta)*split",
            "d_score[i,s] = mean_score_change[s][arm] + baseline_regression*(baseline[i,s] -"
            " mean baseline[s]) + score_change_sd[s]*z_s[i]",
            "score(followup) = clip(round(baseline + d_score), scale range)",
            "md_change[i,r] = md_change_mean[arm][r] + md_change_sd * (loading[arm][r] . "
            "(shared, split) + sqrt(1 - |loading|^2) * e[i,r]), e ~ N(0,1) independent",
            "md_followup[i,r] = md_baseline[i,r] * (1 + md_change[i,r])",
            "coupling_correlation = loading . direction of z_s"
            " (true MD, before measurement noise)",
        ],
    }


def _check_trial(n_participants: int, scenario: str, sessions: tuple[str, str]) -> None:
    """ValueError naming the valid choices if the trial cannot be drawn."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; use one of {', '.join(SCENARIOS)}")
    if n_participants < MIN_PARTICIPANTS:
        raise ValueError(
            f"n_participants={n_participants}; a trial needs at least {MIN_PARTICIPANTS}"
        )
    if len(sessions) != 2 or sessions[0] == sessions[1]:
        raise ValueError(f"sessions={sessions!r}; give two different labels (baseline, follow-up)")


def simulate_clinical(
    n_participants: int,
    scenario: str = "paper",
    seed: int | np.random.Generator = 0,
    sessions: tuple[str, str] = ("baseline", "24h"),
) -> ClinicalTrial:
    """Draw one trial's participants, scores and true ROI MD (mm^2/s) for two sessions.

    The random draws come in a fixed order (arms, age, sex, baseline scores, symptom latents,
    MD), so a seed always gives the same trial.
    """
    _check_trial(n_participants, scenario, sessions)
    rng = np.random.default_rng(seed)
    n = n_participants
    ids = np.array([f"sub-{i + 1:03d}" for i in range(n)])
    arms = allocate_arms(n, rng)
    is_treated = arms == TREATMENT_ARM
    participants = _draw_participants(ids, arms, rng)
    baseline = _draw_baseline_scores(n, rng)
    latents = rng.standard_normal((n, 2))  # symptom-change latents (shared, split)
    followup = _followup_scores(baseline, latents, is_treated)
    age = participants["age"].to_numpy()
    md = _draw_gm_md(scenario, age, is_treated, latents, rng)

    baseline_id, followup_id = (f"ses-{label}" for label in sessions)
    scores = pd.DataFrame(
        {
            "participant_id": np.concatenate([ids, ids]),
            "session_id": np.repeat([baseline_id, followup_id], n),
            **{
                f"{scale}_total": np.concatenate([baseline[scale], followup[scale]]).astype(int)
                for scale in SCALES
            },
        }
    )
    rows = [
        pd.DataFrame({"participant_id": ids, "session_id": session_id, "roi": roi, "md_true": v})
        for roi, per_session in md.items()
        for session_id, v in zip((baseline_id, followup_id), per_session, strict=True)
    ]
    order = _session_roi_order(sessions)
    gm_md = (
        pd.concat(rows, ignore_index=True)
        .sort_values(["participant_id", "session_id", "roi"], key=order)
        .reset_index(drop=True)
    )
    scores = scores.sort_values(["participant_id", "session_id"], key=order).reset_index(drop=True)
    LOGGER.debug("simulated %d participants, scenario %s", n, scenario)
    return ClinicalTrial(
        participants=participants,
        scores=scores,
        gm_md=gm_md,
        planted=_planted(scenario, n, sessions),
    )


def _draw_participants(
    ids: np.ndarray, arms: np.ndarray, rng: np.random.Generator
) -> pd.DataFrame:
    """participants.tsv rows: id, arm, age (years, int) and sex."""
    n = len(ids)
    age_mean, age_sd, age_min, age_max = AGE_DISTRIBUTION
    age = np.clip(np.rint(rng.normal(age_mean, age_sd, n)), age_min, age_max).astype(int)
    sex = np.where(rng.random(n) < FEMALE_FRACTION, "F", "M")
    return pd.DataFrame({"participant_id": ids, "group": arms, "age": age, "sex": sex})


def _draw_baseline_scores(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Baseline score per scale (points): correlated, treatment-resistant, MADRS included."""
    z_madrs0 = rng.standard_normal(n)
    z_qids0 = BASELINE_SCORE_CORRELATION * z_madrs0 + np.sqrt(
        1.0 - BASELINE_SCORE_CORRELATION**2
    ) * rng.standard_normal(n)
    baseline = {}
    for scale, z in zip(SCALES, (z_madrs0, z_qids0), strict=True):
        mean, sd = BASELINE_SCORE[scale]
        low, high = SCORE_RANGES[scale]
        if scale == "madrs":
            low = MADRS_INCLUSION_MIN
        baseline[scale] = np.clip(np.rint(mean + sd * z), low, high)
    return baseline


def _followup_scores(
    baseline: dict[str, np.ndarray], latents: np.ndarray, is_treated: np.ndarray
) -> dict[str, np.ndarray]:
    """Follow-up score per scale: arm mean change, regression to the mean, symptom latents."""
    followup = {}
    for scale, direction in _scale_directions().items():
        mean_change = np.where(
            is_treated,
            MEAN_SCORE_CHANGE[scale][TREATMENT_ARM],
            MEAN_SCORE_CHANGE[scale][CONTROL_ARM],
        )
        change = (
            mean_change
            + BASELINE_REGRESSION * (baseline[scale] - BASELINE_SCORE[scale][0])
            + SCORE_CHANGE_SD[scale] * latents @ direction
        )
        low, high = SCORE_RANGES[scale]
        followup[scale] = np.clip(np.rint(baseline[scale] + change), low, high)
    return followup


def _draw_gm_md(
    scenario: str,
    age: np.ndarray,
    is_treated: np.ndarray,
    latents: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """True GM MD (mm^2/s) per ROI: (baseline, follow-up) arrays over participants."""
    n = len(age)
    loadings = coupling_loadings(scenario)
    subject_offset = SUBJECT_MD_SD * rng.standard_normal(n)
    age_offset = MD_AGE_SLOPE * (age - AGE_REFERENCE)
    md = {}
    for roi in ROI_NAMES:
        md_baseline = ROI_BASELINE_MD[roi] * (
            1.0 + subject_offset + ROI_MD_SD * rng.standard_normal(n) + age_offset
        )
        loading = np.where(
            is_treated[:, None],
            np.array(loadings[TREATMENT_ARM][roi]),
            np.array(loadings[CONTROL_ARM][roi]),
        )
        unique_sd = np.sqrt(1.0 - np.sum(loading**2, axis=1))
        shift = np.where(
            is_treated,
            _md_shift(scenario, TREATMENT_ARM, roi),
            _md_shift(scenario, CONTROL_ARM, roi),
        )
        change = shift + MD_CHANGE_SD * (
            np.sum(loading * latents, axis=1) + unique_sd * rng.standard_normal(n)
        )
        if scenario == "retest":  # drawn above all the same, so the other draws do not move
            change = np.zeros(n)
        md[roi] = (md_baseline, md_baseline * (1.0 + change))
    return md


def _session_roi_order(sessions: tuple[str, str]):
    """Sort key: sessions in trial order and ROIs in atlas order, not alphabetically."""
    session_rank = {f"ses-{label}": i for i, label in enumerate(sessions)}
    roi_rank = {roi: i for i, roi in enumerate(ROI_NAMES)}

    def key(column: pd.Series) -> pd.Series:
        if column.name == "session_id":
            return column.map(session_rank)
        if column.name == "roi":
            return column.map(roi_rank)
        return column

    return key
