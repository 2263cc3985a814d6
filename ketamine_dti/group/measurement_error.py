"""Measurement error in dMD: attenuation-corrected slopes, a sensitivity analysis (--reliability).

The measured dMD is ``W = X + U``: the true 24 h change X plus an error U that is independent
of X, of the scores and of the other covariates (classical, non-differential error), with
variance ``sigma_u^2``. Fitted on W, every slope on dMD shrinks towards 0: in
``dScore ~ dMD + Z`` OLS estimates ``lambda_c * beta``, where

    lambda_c = (s2_w|z - sigma_u^2) / s2_w|z

is the reliability of dMD *conditional on the other covariates* Z, and ``s2_w|z`` the residual
variance of W after regressing it on Z (Carroll et al. 2006, Measurement Error in Nonlinear
Models, 2nd ed., chapter 3). ``lambda_c`` is below the marginal reliability whenever the
covariates explain part of dMD (the group does, when treatment shifts MD), because they explain
only true variance, never error.

Input. ``--reliability`` gives the marginal reliability ``lambda = var(true dMD) / var(measured
dMD)`` per ROI. Its error variance is ``sigma_u^2 = (1 - lambda) * var(dMD)``, the variance
over every analysed participant with that ROI's dMD (the sample the reliability describes).
The error is a property of the measurement, the same in both arms, so this one error variance
serves every model of the ROI and both scales. Without ``--reliability`` nothing is corrected:
the participant outputs hold no usable precision estimate of dMD (the ROI table's ``md_std``
and ``n_voxels`` describe how MD varies over an ROI's voxels, mostly anatomy that cancels in
dMD, not how a rescan would differ), so the reliability has to come from a retest study.

Correction. Regression calibration in a linear model is the method-of-moments corrected least
squares (Fuller 1987, Measurement Error Models, chapter 2; Carroll et al. 2006, chapters 3-4):
``E[W'W] = X'X + Sigma_uu``, so with the design matrix D (n x p, intercept included)

    beta_rc = (D'D - Sigma_uu)^-1 D'y = K beta_obs,   K = (D'D - Sigma_uu)^-1 D'D,
    Sigma_uu = sigma_u^2 A'A,

where row i of A says how each design column carries participant i's error: 1 in
``delta_md``, the group code in ``group:delta_md`` (its error is group x U), 0 in the
error-free columns. With one error-prone column (the pooled and per-arm models) this is
exactly ``beta_obs / lambda_c`` with ``lambda_c = 1 - n sigma_u^2 / r'r``, ``r`` the residual of
dMD on the other columns (Frisch-Waugh-Lovell); in the interaction model it corrects
``delta_md`` and ``group:delta_md`` jointly. Only the dMD terms are reported. When
``D'D - Sigma_uu`` is not positive definite the stated error variance exceeds what the fit's
dMD varies by, and the correction is undefined: n/a, with a warning.

Standard error: the delta method for the estimating equations of beta_rc (the M-estimator
sandwich, as Carroll et al. 2006 derive it for estimating equations). beta_rc solves
``sum_i psi_i = 0`` with ``psi_i = d_i (y_i - d_i'beta) + sigma_u^2 a_i a_i'beta``, so

    Cov(beta_rc) = n / (n - p) M^-1 (sum_i psi_i psi_i') M^-1,   M = D'D - Sigma_uu,

heteroscedasticity-consistent (HC1), whether or not ``--robust-se``. Why not the simpler
``K Cov(beta_obs) K'`` (exact given the design): it ignores that the correction factor is itself
estimated from the sample: in a development check on 400 simulated 98-participant trials (the
clinical model's paper scenario, dMD reliability 0.85) its 95% intervals of the interaction
covered the planted slope 91% of the time against the sandwich's 93% (per-arm slope: 95% both;
at reliability 0.58, 92.5% against a conservative 98%).
Why not the bootstrap: the sandwich is closed-form and deterministic (no seed, no refits). Both
treat the reliability as known: the uncertainty of a reliability estimated in a small retest
study is not propagated, so ``se_rc`` is then too small. The p-values stay those of the
observed slopes: the correction rescales a slope, it adds no evidence.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ketamine_dti.config import Config
from ketamine_dti.group.models import OlsDesign, ols_designs
from ketamine_dti.group.permutation import KEYS

LOGGER = logging.getLogger(__name__)

#: The error-prone variable of the models: every term with it as a factor is corrected.
ERROR_PRONE = "delta_md"
#: Columns this module adds to stats.tsv (only with --reliability).
RELIABILITY, ESTIMATE_RC, SE_RC = "reliability", "estimate_rc", "se_rc"
RC_COLUMNS = (RELIABILITY, ESTIMATE_RC, SE_RC)


def error_loadings(design: OlsDesign) -> np.ndarray:
    """A (n x p): how each design column carries a participant's dMD error. A term with dMD as
    a factor carries U times the product of its other factors (``group:delta_md``: group x U);
    the other columns carry none."""
    n, p = design.x.shape
    loadings = np.zeros((n, p))
    column_of = {term: j for j, term in enumerate(design.terms)}
    for j, term in enumerate(design.terms):
        factors = term.split(":")
        if ERROR_PRONE in factors:
            loadings[:, j] = 1.0
            for factor in factors:
                if factor != ERROR_PRONE:
                    loadings[:, j] *= design.x[:, column_of[factor]]
    return loadings


def corrected_coefficients(
    design: OlsDesign, error_variance: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """(beta_rc, sandwich SE of beta_rc) of every design column, or None if the correction is
    undefined (``D'D - Sigma_uu`` not positive definite). ``error_variance``: sigma_u^2 of dMD
    in the model's unit."""
    x, y = design.x, design.y
    n, p = x.shape
    loadings = error_loadings(design)
    corrected = x.T @ x - error_variance * (loadings.T @ loadings)
    try:
        np.linalg.cholesky(corrected)
    except np.linalg.LinAlgError:
        return None
    beta = np.linalg.solve(corrected, x.T @ y)
    scores = x * (y - x @ beta)[:, None] + error_variance * loadings * (loadings @ beta)[:, None]
    bread = np.linalg.inv(corrected)
    covariance = bread @ (scores.T @ scores) @ bread * n / (n - p)
    return beta, np.sqrt(np.diag(covariance))


def error_variances(
    table: pd.DataFrame, rois: tuple[str, ...], reliability: pd.Series
) -> dict[str, float]:
    """ROI -> sigma_u^2 = (1 - reliability) * var(dMD) over the analysed participants with that
    ROI's dMD (the analysis table's ``delta_md_<roi>``, in the models' unit)."""
    return {
        roi: (1.0 - float(reliability[roi])) * float(table[f"delta_md_{roi}"].var(ddof=1))
        for roi in rois
    }


def corrected_slopes(
    designs: list[OlsDesign], variances: dict[str, float], reliability: pd.Series
) -> pd.DataFrame:
    """One row per dMD term of every fit that has one: keys, reliability, estimate_rc, se_rc."""
    rows = []
    for design in designs:
        columns = [j for j, t in enumerate(design.terms) if ERROR_PRONE in t.split(":")]
        if not columns or not design.roi:
            continue  # no dMD among the regressors (treatment_md has it as the outcome)
        found = corrected_coefficients(design, variances[design.roi])
        if found is None:
            LOGGER.warning(
                "%s model, scale %s, %s: the error variance implied by reliability %g exceeds "
                "the variation of dMD left after the other covariates; no corrected slope",
                design.model, design.scale, design.roi, reliability[design.roi],
            )  # fmt: skip
        for j in columns:
            rows.append(
                {
                    "scale": design.scale,
                    "roi": design.roi,
                    "model": design.model,
                    "term": design.terms[j],
                    RELIABILITY: float(reliability[design.roi]),
                    ESTIMATE_RC: np.nan if found is None else found[0][j],
                    SE_RC: np.nan if found is None else found[1][j],
                }
            )
    return pd.DataFrame(rows, columns=[*KEYS, *RC_COLUMNS])


def add_corrected_slopes(
    stats: pd.DataFrame,
    table: pd.DataFrame,
    config: Config,
    rois: tuple[str, ...],
    reliability: pd.Series | None,
) -> pd.DataFrame:
    """``stats`` with reliability, estimate_rc and se_rc on the OLS rows of the dMD terms (n/a
    elsewhere); unchanged without ``--reliability`` (``reliability`` None)."""
    if reliability is None:
        return stats
    variances = error_variances(table, rois, reliability)
    slopes = corrected_slopes(ols_designs(table, config, rois), variances, reliability)
    LOGGER.info(
        "measurement error (sensitivity analysis): %d dMD slopes corrected by regression "
        "calibration, reliability %s",
        int(slopes[ESTIMATE_RC].notna().sum()),
        ", ".join(f"{roi} {value:g}" for roi, value in reliability.items()),
    )
    return stats.merge(slopes, on=KEYS, how="left", validate="one_to_one")
