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

Skewed symptom change (``symptom_change="lognormal"``, off by default): ``shared`` is drawn as
a standardized log-normal instead (mean 0, SD 1, shape :data:`LOGNORMAL_SHAPE`), negated so that
its long tail is large improvement, as in trials with a few strong responders. ``split`` stays
normal, so the latent correlations above are unchanged (clipping the long tail at the scale
floor lowers the observed MADRS-QIDS-SR correlation of the changes within an arm from 0.49 to
0.38). The score changes within an arm have skewness -0.75 to -1.2 (MADRS, QIDS-SR; clipping
and the baseline term dilute the latent's), against 0 by default. The choice is stored in the
truth (``symptom_change``).

MD is in mm^2/s throughout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from ketamine_dti.rois import ROI_NAMES

LOGGER = logging.getLogger(__name__)

#: The model study's two sessions: before the infusion and 24 h after (Kopelman et al. 2023).
SESSIONS: tuple[str, str] = ("baseline", "24h")
#: ``paper``: the planted effects; ``null``: no coupling, no treatment effect on MD (24 h MD
#: still fluctuates by MD_CHANGE_SD); ``retest``: as null, but the true MD does not change
#: at all between sessions (a test-retest scan: any measured dMD is the pipeline's error);
#: ``csf_shift``: as retest (the same draws), but the CSF fraction of every ROI changes between
#: the sessions (CSF_SHIFT_RANGE): plain MD moves, the tissue's (free-water corrected) must not.
SCENARIOS: tuple[str, ...] = ("paper", "null", "retest", "csf_shift")
#: Scenarios whose true tissue MD is the same in both sessions.
NO_MD_CHANGE: tuple[str, ...] = ("retest", "csf_shift")
#: ``csf_shift``: |24 h - baseline CSF volume fraction| of each ROI, uniform in this range, with
#: a random sign, per participant and ROI. 1% CSF moves GM MD by ~2.4% at b = 1000 (as much as
#: the effects studied), while 1-2% of an ROI's volume is within day-to-day changes of brain
#: water and CSF volume (hydration, time of day).
CSF_SHIFT_RANGE: tuple[float, float] = (0.01, 0.02)
TREATMENT_ARM = "ketamine"
CONTROL_ARM = "saline"
#: Treatment:control allocation ratio of the trial (Kopelman et al. 2023: 2:1).
ALLOCATION: tuple[int, int] = (2, 1)
#: A permuted block holds one or two allocation cycles (3 or 6 participants at 2:1).
BLOCK_CYCLES: tuple[int, ...] = (1, 2)
#: Permuted-block sizes of the trial's 2:1 allocation.
BLOCK_SIZES: tuple[int, ...] = tuple(cycles * sum(ALLOCATION) for cycles in BLOCK_CYCLES)
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
#: Distributions of the ``shared`` symptom-change latent (``symptom_change``); the first is the
#: default.
SYMPTOM_CHANGES: tuple[str, ...] = ("normal", "lognormal")
#: Shape (SD of the log) of the ``lognormal`` latent: its skewness (e^s2 + 2) sqrt(e^s2 - 1) is
#: 3.26; the score changes keep -0.75 to -1.2 of it within an arm after clipping (a stress test of
#: the OLS p-values, not an estimate from a trial).
LOGNORMAL_SHAPE = 0.75

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
    gm_md: participant_id, session_id, roi, md_true (true GM MD in mm^2/s per ROI and session),
    csf_fraction_change (the ROI's CSF volume fraction in this session minus at baseline: 0
    except in ``csf_shift``).
    planted: JSON-serialisable planted coefficients, scenario, units and equations in words.
    """

    participants: pd.DataFrame
    scores: pd.DataFrame
    gm_md: pd.DataFrame
    planted: dict


def allocate_arms(
    n_participants: int, rng: np.random.Generator, allocation: tuple[int, int] = ALLOCATION
) -> np.ndarray:
    """Arms for ``n_participants`` in enrolment order, by permuted blocks of one or two cycles of
    ``allocation`` (treatment:control; 2:1 gives blocks of 3 or 6).

    Blocks are chosen among the sizes that still fit, so a multiple of the cycle is allocated
    exactly (a 12-participant 2:1 trial has 8 and 4); otherwise only the last block is cut short.
    """
    n_treated_per_cycle, n_control_per_cycle = allocation
    cycle = n_treated_per_cycle + n_control_per_cycle
    block_sizes = [cycles * cycle for cycles in BLOCK_CYCLES]
    arms: list[str] = []
    while len(arms) < n_participants:
        remaining = n_participants - len(arms)
        fitting = [size for size in block_sizes if size <= remaining] or [min(block_sizes)]
        size = int(rng.choice(fitting))
        n_treated = n_treated_per_cycle * size // cycle
        block = np.array([TREATMENT_ARM] * n_treated + [CONTROL_ARM] * (size - n_treated))
        arms.extend(rng.permutation(block).tolist())
    return np.array(arms[:n_participants])


def treated_counts(
    n_participants: int,
    n_trials: int,
    rng: np.random.Generator,
    allocation: tuple[int, int] = ALLOCATION,
) -> np.ndarray:
    """Treated participants of ``n_trials`` trials allocated by :func:`allocate_arms`, drawn at
    once (for Monte Carlo, where only the arms' sizes matter).

    Every block of :func:`allocate_arms` holds whole allocation cycles except the last, which
    is cut short only when fewer than one cycle remain: it keeps the first n mod cycle places of
    a permuted cycle, so its treated count is hypergeometric.
    """
    n_treated_per_cycle, n_control_per_cycle = allocation
    whole_cycles, rest = divmod(n_participants, n_treated_per_cycle + n_control_per_cycle)
    last = (
        rng.hypergeometric(n_treated_per_cycle, n_control_per_cycle, rest, n_trials) if rest else 0
    )
    return n_treated_per_cycle * whole_cycles + np.zeros(n_trials, dtype=int) + last


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


def coupling_loadings(
    scenario: str, strength: float = COUPLING_STRENGTH
) -> dict[str, dict[str, list[float]]]:
    """Loading of each ROI's standardized MD change on (shared, split), per arm.

    Positive along a scale's direction: MD decrease goes with improvement (negative dScore).
    ``strength`` (|strength| <= 1) scales the ``paper`` pattern; the other scenarios plant none.
    """
    _, _, madrs_only = _symptom_directions()
    both_scales = np.array([1.0, 0.0])
    zero = np.zeros(2)
    loadings = {arm: {roi: zero for roi in ROI_NAMES} for arm in (TREATMENT_ARM, CONTROL_ARM)}
    if scenario == "paper":
        for roi in ("ba10_left", "amygdala_left", "ba10_right"):
            loadings[TREATMENT_ARM][roi] = strength * both_scales
        loadings[CONTROL_ARM]["ba10_right"] = strength * both_scales
        for roi in ("hippocampus_left", "hippocampus_right"):
            loadings[TREATMENT_ARM][roi] = -strength * madrs_only
    return {
        arm: {roi: v.tolist() for roi, v in per_roi.items()} for arm, per_roi in loadings.items()
    }


def _md_shift(scenario: str, arm: str, roi: str) -> float:
    """Mean true fractional MD change of an arm in an ROI."""
    if scenario == "paper" and arm == TREATMENT_ARM:
        return KETAMINE_MD_SHIFT.get(roi, 0.0)
    return 0.0


def coupling_correlations(
    scenario: str, strength: float = COUPLING_STRENGTH
) -> dict[str, dict[str, dict[str, float]]]:
    """arm -> scale -> ROI: correlation of the true dMD with the standardized score change."""
    directions = _scale_directions()
    return {
        arm: {
            scale: {roi: float(np.dot(v, direction)) for roi, v in per_roi.items()}
            for scale, direction in directions.items()
        }
        for arm, per_roi in coupling_loadings(scenario, strength).items()
    }


def slope_per_percent_md(scale: str, correlation: float) -> float:
    """Score points per 1% true MD change that a correlation of dMD with dScore means."""
    return SCORE_CHANGE_SD[scale] * correlation / (100.0 * MD_CHANGE_SD)


def planted_interactions(scenario: str = "paper") -> dict[tuple[str, str], tuple[float, float]]:
    """(scale, ROI) -> (treatment, control) correlation of the true dMD with the score change at
    coupling strength 1, for every group x dMD interaction ``scenario`` plants (arms differ)."""
    correlation = coupling_correlations(scenario, strength=1.0)
    treated, control = correlation[TREATMENT_ARM], correlation[CONTROL_ARM]
    return {
        (scale, roi): (treated[scale][roi], control[scale][roi])
        for scale in SCALES
        for roi in ROI_NAMES
        if abs(treated[scale][roi] - control[scale][roi]) > 1e-12
    }


def treated_fraction(allocation: tuple[int, int] = ALLOCATION) -> float:
    """Share of participants in the treatment arm."""
    return allocation[0] / sum(allocation)


def interaction_partial_r(
    correlations: tuple[float, float],
    allocation: tuple[int, int] = ALLOCATION,
    reliability: float = 1.0,
) -> float:
    """Population partial r of ``group:delta_md`` in ``delta_score ~ group * delta_md +
    baseline_score``, for an ROI whose true dMD correlates ``correlations`` = (rho_t, rho_c) with
    the standardized score change in the treatment and control arm.

    Why a formula: the clinical model plants within-arm correlations (coupling loadings), not a
    partial r. Given the baseline score, the score change (in SDs) is linear in the arm-centred,
    unit-variance dMD with slope rho_a and residual variance 1 - rho_a^2 in arm a, so the model's
    arm intercepts and slopes are right and the interaction coefficient is d = rho_t - rho_c.
    Left after the other terms, the interaction regressor is (group - p) x dMD with variance
    p(1 - p), p the treated share, and the score change keeps d^2 p(1 - p) + 1 - p rho_t^2 -
    (1 - p) rho_c^2. Hence partial r^2 = d^2 p(1 - p) / (d^2 p(1 - p) + 1 - p rho_t^2 - (1 - p)
    rho_c^2). A dMD measured with retest reliability R correlates sqrt(R) rho with the score
    change, so every rho is scaled by sqrt(R). Rounding of scores to points and clipping at the
    scale ends are left out (under 1% of the score-change variance).
    """
    p = treated_fraction(allocation)
    rho_t, rho_c = (np.sqrt(reliability) * rho for rho in correlations)
    signal = (rho_t - rho_c) ** 2 * p * (1.0 - p)
    residual = 1.0 - p * rho_t**2 - (1.0 - p) * rho_c**2
    return float(np.sign(rho_t - rho_c) * np.sqrt(signal / (signal + residual)))


def strongest_interaction(scenario: str = "paper", scale: str | None = None) -> tuple[str, str]:
    """(scale, ROI) of the largest planted interaction at unit coupling (on ``scale`` if given)."""
    planted = {
        key: rhos
        for key, rhos in planted_interactions(scenario).items()
        if scale is None or key[0] == scale
    }
    if not planted:
        raise ValueError(f"scenario {scenario!r} plants no group x dMD interaction")
    return max(planted, key=lambda key: abs(interaction_partial_r(planted[key])))


def coupling_for_partial_r(
    partial_r: float, allocation: tuple[int, int] = ALLOCATION, scenario: str = "paper"
) -> float:
    """Coupling strength at which the strongest planted interaction of ``scenario`` has
    population partial r ``partial_r`` with error-free dMD (inverse of
    :func:`interaction_partial_r`: its r^2 is linear-fractional in strength^2)."""
    rho_t, rho_c = planted_interactions(scenario)[strongest_interaction(scenario)]
    p = treated_fraction(allocation)
    signal = (rho_t - rho_c) ** 2 * p * (1.0 - p)
    spread = p * rho_t**2 + (1.0 - p) * rho_c**2
    r2 = partial_r**2
    strength = float(np.sign(partial_r) * np.sqrt(r2 / (signal * (1.0 - r2) + r2 * spread)))
    if not abs(strength) <= 1.0:
        largest = abs(interaction_partial_r((rho_t, rho_c), allocation))
        raise ValueError(
            f"partial r {partial_r:g} cannot be planted in the clinical model at "
            f"{allocation[0]}:{allocation[1]} allocation; the largest is {largest:.3f} "
            "(the treatment arm's dMD fully coupled to symptom change)"
        )
    return strength


def coupling_for_slope(slope: float, scale: str = "madrs", scenario: str = "paper") -> float:
    """Coupling strength at which the strongest planted interaction on ``scale`` has an
    interaction slope of ``slope`` points per 1% true MD change (inverse of
    :func:`slope_per_percent_md`)."""
    rho_t, rho_c = planted_interactions(scenario)[strongest_interaction(scenario, scale)]
    strength = slope / slope_per_percent_md(scale, rho_t - rho_c)
    if not abs(strength) <= 1.0:
        largest = abs(slope_per_percent_md(scale, rho_t - rho_c))
        raise ValueError(
            f"slope {slope:g} points per 1% MD on {scale} cannot be planted in the clinical "
            f"model; the largest is {largest:.2f} (dMD fully coupled to symptom change)"
        )
    return strength


def _planted(
    scenario: str,
    n_participants: int,
    sessions: tuple[str, str],
    strength: float = COUPLING_STRENGTH,
) -> dict:
    """Planted coefficients and the generative equations, JSON-serialisable."""
    loadings = coupling_loadings(scenario, strength)
    correlation = coupling_correlations(scenario, strength)
    slope = {
        arm: {
            scale: {roi: slope_per_percent_md(scale, c) for roi, c in per_roi.items()}
            for scale, per_roi in per_scale.items()
        }
        for arm, per_scale in correlation.items()
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
        "md_change_sd": 0.0 if scenario in NO_MD_CHANGE else MD_CHANGE_SD,
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
        "coupling_strength": strength if scenario == "paper" else 0.0,
        "coupling_loadings_shared_split": loadings,
        "coupling_correlation": correlation,
        "coupling_slope_points_per_percent_md": slope,
        "csf_fraction_change_abs_range": list(
            CSF_SHIFT_RANGE if scenario == "csf_shift" else (0, 0)
        ),
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
            "csf_fraction_change[i,r] = sign * uniform(csf_fraction_change_abs_range), sign = +-1"
            " with probability 1/2 (csf_shift; drawn after everything else; 0 otherwise)",
        ],
    }


def _check_trial(
    n_participants: int,
    scenario: str,
    sessions: tuple[str, str],
    strength: float = COUPLING_STRENGTH,
) -> None:
    """ValueError naming the valid choices if the trial cannot be drawn."""
    if not abs(strength) <= 1.0:  # a loading is a correlation; NaN fails too
        raise ValueError(f"coupling_strength={strength}; use a value in [-1, 1]")
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
    sessions: tuple[str, str] = SESSIONS,
    coupling_strength: float = COUPLING_STRENGTH,
    symptom_change: str = SYMPTOM_CHANGES[0],
) -> ClinicalTrial:
    """Draw one trial's participants, scores and true ROI MD (mm^2/s) for two sessions.

    The random draws come in a fixed order (arms, age, sex, baseline scores, symptom latents,
    MD), so a seed always gives the same trial. ``coupling_strength`` scales the ``paper``
    couplings (see :func:`coupling_loadings`).
    """
    _check_trial(n_participants, scenario, sessions, coupling_strength)
    rng = np.random.default_rng(seed)
    n = n_participants
    ids = np.array([f"sub-{i + 1:03d}" for i in range(n)])
    arms = allocate_arms(n, rng)
    participants = _draw_participants(ids, arms, rng)
    baseline, followup, md = draw_outcomes(
        participants["age"].to_numpy(),
        arms == TREATMENT_ARM,
        rng,
        scenario,
        coupling_strength,
        symptom_change,
    )

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
    csf_change = draw_csf_change(scenario, n, rng)
    rows = [
        pd.DataFrame(
            {
                "participant_id": ids,
                "session_id": session_id,
                "roi": roi,
                "md_true": v,
                "csf_fraction_change": csf_change[roi] if session_id == followup_id else 0.0,
            }
        )
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
        planted=_planted(scenario, n, sessions, coupling_strength)
        | _planted_symptom_change(symptom_change),
    )


def shared_latent(normal: np.ndarray, symptom_change: str) -> np.ndarray:
    """The ``shared`` symptom-change latent from standard-normal draws: unchanged for
    ``normal``; for ``lognormal``, -(exp(s z) - m) / sd with s = LOGNORMAL_SHAPE and m, sd the
    log-normal's mean and SD: mean 0, SD 1, long tail towards improvement. The same draws
    either way, so a seed gives the same trial apart from this transform."""
    if symptom_change == "normal":
        return normal
    if symptom_change != "lognormal":
        raise ValueError(
            f"symptom_change={symptom_change!r}; use one of {', '.join(SYMPTOM_CHANGES)}"
        )
    variance = LOGNORMAL_SHAPE**2
    mean = np.exp(variance / 2.0)
    sd = np.sqrt((np.exp(variance) - 1.0) * np.exp(variance))
    return -(np.exp(LOGNORMAL_SHAPE * normal) - mean) / sd


def _planted_symptom_change(symptom_change: str) -> dict:
    """The truth's record of the symptom-change distribution."""
    equation = (
        "shared[i] ~ N(0,1)"
        if symptom_change == "normal"
        else f"shared[i] = -(exp({LOGNORMAL_SHAPE}*z) - m)/sd, z ~ N(0,1); m, sd: mean and SD "
        f"of exp({LOGNORMAL_SHAPE}*z) (standardized log-normal, long tail = improvement)"
    )
    return {
        "symptom_change": {
            "distribution": symptom_change,
            "lognormal_shape": LOGNORMAL_SHAPE if symptom_change == "lognormal" else None,
            "shared_latent": equation,
        }
    }


class Outcomes(NamedTuple):
    """Scores (points) per scale and true MD (mm^2/s) per ROI; arrays shaped like ``age``."""

    baseline: dict[str, np.ndarray]
    followup: dict[str, np.ndarray]
    md: dict[str, tuple[np.ndarray, np.ndarray]]  # ROI -> (baseline, follow-up)


def draw_outcomes(
    age: np.ndarray,
    is_treated: np.ndarray,
    rng: np.random.Generator,
    scenario: str = "paper",
    coupling_strength: float = COUPLING_STRENGTH,
    symptom_change: str = SYMPTOM_CHANGES[0],
) -> Outcomes:
    """Everything drawn after arm and age: baseline scores, symptom-change latents, follow-up
    scores and true MD per ROI, in that order (``symptom_change``: :func:`shared_latent`).

    Arrays may have any shape with participants last (e.g. Monte-Carlo replicates x
    participants, as the power planner draws them); ``is_treated`` broadcasts against ``age``.
    Participants are independent given their arm and age.
    """
    baseline = _draw_baseline_scores(age.shape, rng)
    latents = rng.standard_normal((*age.shape, 2))  # symptom-change latents (shared, split)
    latents[..., 0] = shared_latent(latents[..., 0], symptom_change)
    followup = _followup_scores(baseline, latents, is_treated)
    md = _draw_gm_md(scenario, age, is_treated, latents, rng, coupling_strength)
    return Outcomes(baseline, followup, md)


def _draw_participants(
    ids: np.ndarray, arms: np.ndarray, rng: np.random.Generator
) -> pd.DataFrame:
    """participants.tsv rows: id, arm, age (years, int) and sex."""
    n = len(ids)
    age = draw_age(n, rng)
    sex = np.where(rng.random(n) < FEMALE_FRACTION, "F", "M")
    return pd.DataFrame({"participant_id": ids, "group": arms, "age": age, "sex": sex})


def draw_age(shape: int | tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Age in whole years, clipped to the trial's inclusion range."""
    age_mean, age_sd, age_min, age_max = AGE_DISTRIBUTION
    return np.clip(np.rint(rng.normal(age_mean, age_sd, shape)), age_min, age_max).astype(int)


def _draw_baseline_scores(
    shape: int | tuple[int, ...], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Baseline score per scale (points): correlated, treatment-resistant, MADRS included."""
    z_madrs0 = rng.standard_normal(shape)
    z_qids0 = BASELINE_SCORE_CORRELATION * z_madrs0 + np.sqrt(
        1.0 - BASELINE_SCORE_CORRELATION**2
    ) * rng.standard_normal(shape)
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
    strength: float = COUPLING_STRENGTH,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """True GM MD (mm^2/s) per ROI: (baseline, follow-up) arrays shaped like ``age``."""
    shape = age.shape
    loadings = coupling_loadings(scenario, strength)
    subject_offset = SUBJECT_MD_SD * rng.standard_normal(shape)
    age_offset = MD_AGE_SLOPE * (age - AGE_REFERENCE)
    md = {}
    for roi in ROI_NAMES:
        md_baseline = ROI_BASELINE_MD[roi] * (
            1.0 + subject_offset + ROI_MD_SD * rng.standard_normal(shape) + age_offset
        )
        loading = np.where(
            np.asarray(is_treated)[..., None],
            np.array(loadings[TREATMENT_ARM][roi]),
            np.array(loadings[CONTROL_ARM][roi]),
        )
        unique_sd = np.sqrt(1.0 - np.sum(loading**2, axis=-1))
        shift = np.where(
            is_treated,
            _md_shift(scenario, TREATMENT_ARM, roi),
            _md_shift(scenario, CONTROL_ARM, roi),
        )
        change = shift + MD_CHANGE_SD * (
            np.sum(loading * latents, axis=-1) + unique_sd * rng.standard_normal(shape)
        )
        if scenario in NO_MD_CHANGE:  # drawn above all the same, so other draws do not move
            change = np.zeros(shape)
        md[roi] = (md_baseline, md_baseline * (1.0 + change))
    return md


def draw_csf_change(
    scenario: str, n_participants: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Per ROI, each participant's 24 h - baseline CSF volume fraction of the ROI.

    Only ``csf_shift`` draws (from ``rng``, after every other draw, so its trial is ``retest``'s
    otherwise); every other scenario gets zeros and leaves ``rng`` untouched.
    """
    if scenario != "csf_shift":
        return {roi: np.zeros(n_participants) for roi in ROI_NAMES}
    sizes = {roi: rng.uniform(*CSF_SHIFT_RANGE, n_participants) for roi in ROI_NAMES}
    return {roi: rng.choice([-1.0, 1.0], n_participants) * size for roi, size in sizes.items()}


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
