"""Free-water elimination: a tissue tensor plus isotropic free water, per voxel.

Model (signal fraction ``f`` of free water at b=0, b in s/mm^2, diffusivities in mm^2/s)::

    S_i = S0 * [(1 - f) * exp(-b_i g_i^T D g_i) + f * exp(-b_i * D_water)]

with ``D_water`` = :data:`FREE_WATER_DIFFUSIVITY`. The tissue tensor ``D`` gives the maps
(``md``, ``fa``, eigenvalues) with the free water removed.

**Multi-shell** (>= 2 non-zero shells): the two-compartment fit of Hoy et al. 2014 (NeuroImage
103:323-33), the estimator of DIPY's ``FreeWaterTensorModel`` (NLS): a grid search over ``f``
with a weighted log-linear tensor fit of the water-corrected signal at every grid point (the
tensor weights are the measured signal squared, so one Cholesky factor serves every ``f``), then
Levenberg-Marquardt on the 8 parameters (6 tensor elements, log S0, f) minimising the unweighted
sum of squared signal residuals, ``f`` kept in [0, 1] by projection. Shells at different b make
``f`` identifiable from the data alone.

**Single shell** (one b>0 shell plus b0s): the data fix the angular profile and the mean
attenuation, but not how that attenuation splits between tissue MD and free water (an isotropic
tissue tensor with more free water fits exactly as well as one with a higher MD and less water;
Pasternak et al. 2009, MRM 62:717-30, sec. "Initialization"). The split must come from outside the
diffusion weighting. We use a voxelwise penalised least-squares (maximum a posteriori) fit, with
the same 8 parameters and the sum of squares of the multi-shell fit plus two Gaussian priors:

- on ``f``, centred on the value implied by the b0 intensity: free water has a much longer T2 than
  tissue, so a voxel's b0 lies between a tissue and a water reference (``s0_tissue``,
  ``s0_water``). The tissue reference is the b0 of gray matter by anatomy when the caller
  gives it (the App: the T1w segmentation's, :data:`REFERENCE_MIN_GM_SHARE`), since the ROIs
  are gray matter and white matter is darker at b0. The receive coil's smooth shading of the
  b0, fitted on tissue without visible free water, is divided out first
  (:func:`b0_receive_field`, when the voxel size is given): on standard simulated sessions 1%
  of shading reads as ~1.7 points of free water and ~2.5% of tissue MD, and the shading
  changes with the head's place in the coil between sessions. This is the b0-based
  initialisation of Pasternak et al. 2009 as compared by Golub et al. 2021 (MRM 85:2173-84,
  "S0 initialisation"); here from linear mixing of the two compartments' b0 signals, which gives
  the signal fraction the model uses:
  ``f_b0 = s0_water (S0 - s0_tissue) / (S0 (s0_water - s0_tissue))``, SD :data:`F_PRIOR_SD`.
  Below the tissue reference ``f_b0`` and the fitted ``f`` are negative, down to
  :data:`SINGLE_SHELL_MIN_F`: gray matter's own b0 spreads (T2, proton density) about the
  reference, so its f scatters around a level; a bound at 0 would push the mean f (and
  tissue MD) of a region with little water and stop a loss of CSF from showing;
- on tissue MD, a weak prior at :data:`TISSUE_MD_PRIOR_MEAN` (SD :data:`TISSUE_MD_PRIOR_SD`),
  Golub et al.'s "MD initialisation": it decides the split only where the b0 prior is missing
  (no reference could be found) and keeps the fit off implausible tissue MD otherwise.

The priors are weighted against the data by the noise SD (from the repeated b0s, or the tensor
residuals), so with good data the data win wherever they carry information (the anisotropic
part) and the priors act only along the direction the data cannot see. Pasternak's spatial
(Beltrami) regularisation is not used: it smooths the tissue tensor across the GM ROI borders we
measure, and its answer still depends on the initialisation (Golub et al. 2021). A voxelwise
scheme keeps each voxel's MD its own and the assumptions visible in two numbers.

Voxels whose plain DTI MD is at least :data:`PURE_WATER_MD` are free water (``f`` = 1, tissue maps
NaN), as Hoy et al. and DIPY do; so are voxels whose fitted tissue MD reaches it (CSF at the
noise floor of a high shell, where the "tissue" compartment only absorbs more water; DIPY keeps
those as tissue). Voxels that cannot be fitted are NaN and ``failed``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ketamine_dti.anat.bias_field import estimate_log_field, working_shrink
from ketamine_dti.dwi.gradients import B0_THRESHOLD, cluster_shells, tensor_determinable
from ketamine_dti.dwi.layout import masked_rows, rows_to_volume
from ketamine_dti.dwi.tensor import (
    MIN_EIGENVALUE_B_PRODUCT,
    MIN_SIGNAL,
    check_inputs,
    cholesky_solve,
    design_matrix,
    eigh3,
    fit_tensor,
    md_fa,
)
from ketamine_dti.threads import limit_threads

LOGGER = logging.getLogger(__name__)

#: mm^2/s: self-diffusion of water at 37 C (Pasternak 2009; Hoy 2014; DIPY's default).
FREE_WATER_DIFFUSIVITY = 3.0e-3
#: mm^2/s: a voxel whose plain DTI MD is >= 90% of free water is taken as free water (f = 1):
#: its tissue compartment is too small to fit (Hoy et al. 2014; DIPY's ``mdreg``).
PURE_WATER_MD = 2.7e-3
#: mm^2/s: centre of the tissue-MD prior: free-water-corrected cortical GM / WM MD of adults
#: (~0.7-0.8e-3 at 37 C); only the single-shell fit uses it.
TISSUE_MD_PRIOR_MEAN = 0.75e-3
#: mm^2/s: its SD: GM to WM (0.6-0.9e-3) lies well within one SD, so the prior is weak and
#: mainly keeps the fit off implausible tissue MD.
TISSUE_MD_PRIOR_SD = 0.3e-3
#: SD of the b0-implied free-water fraction: ~ its per-voxel noise with 6 b0s at SNR 25 (0.027
#: for references 1:2.5); chosen on the training seeds of benchmarks/bench_free_water.py.
F_PRIOR_SD = 0.03
#: Lowest single-shell f (prior centre and fit). Below the tissue reference's b0 the b0-implied
#: fraction is negative: a linear extrapolation, so an ROI's mean f follows its b0 wherever the
#: reference sits and a loss of CSF shows in a voxel darker than the reference. Held at f = 0
#: (DIPY's bound, kept for multi-shell data, where the shells fix f), 36-47% of the training
#: seed's ROI voxels sat at the bound and ``md_fwcorr_mean`` followed 0.45-0.55 of a planted CSF
#: change (``free_water_tissue_reference_session32.md``); free, 0.27-0.28, with no kept voxel
#: at this floor (``free_water_negative_f_session33.md``). -0.5 is a b0 21-23% below the
#: reference at a water to gray matter b0 contrast of 2.1-2.5 (simulated sessions: ~2.15; the
#: tests' phantoms: 2.5): darker is not gray matter.
#: Without a b0 prior (no references) f stays >= 0: with nothing to read a negative f from, the
#: real PA series (session 33) put 20% of its voxels at this floor and its median f at -0.19.
SINGLE_SHELL_MIN_F = -0.5
#: Fewest voxels a b0 reference (tissue or water) may be estimated from; below it no b0 prior.
MIN_REFERENCE_VOXELS = 20
#: Gray matter by anatomy, the tissue b0 reference when given: DWI voxels whose footprint the
#: T1w segmentation calls at least this share gray matter and at most REFERENCE_MAX_CSF_SHARE
#: CSF (template shares, ``anat.transfer.containing_voxel_fraction``). The ROIs are gray
#: matter, so its b0 is what "no free water" means there; the DTI rule below (lowest MD, low
#: FA) lets white matter in, darker at b0.
REFERENCE_MIN_GM_SHARE = 0.9
REFERENCE_MAX_CSF_SHARE = 0.02
#: The reference is this percentile of that gray matter's b0. With f free below 0
#: (SINGLE_SHELL_MIN_F) the percentile moves only the level of f and tissue MD, not the response
#: to a CSF change. Chosen on training seed 7 (``csf_shift``; refits of the App's sessions,
#: ``free_water_negative_f_session33.md``): the 10th / 25th / 50th percentile left the median
#: ROI tissue MD -2.6% / +0.5% / +3.6% from the truth, with the same noise (mean |dMD/MD| 0.89 /
#: 0.88 / 0.87%) and response to the planted CSF change (0.27 / 0.27 / 0.28 per unit). Held at
#: f = 0 (session 32) the 25th was already the choice, for a different reason (the bound).
REFERENCE_GM_PERCENTILE = 25.0
#: Without anatomy, the tissue b0 reference is the median b0 of the voxels whose DTI MD is in
#: this lowest percentile of the non-water gray-matter-like voxels: the least free water.
TISSUE_REFERENCE_PERCENTILE = 10.0
#: Gray-matter-like: DTI FA below this. White matter (FA >= 0.2) has a shorter T2 than gray
#: matter, so a white-matter b0 reference read pure simulated gray matter (1.4x brighter at
#: b0) as 0.3-0.5 free water, and the ROIs this App measures are gray matter.
TISSUE_REFERENCE_MAX_FA = 0.2
#: How the tissue b0 reference was chosen (SingleShellPrior.tissue_reference).
TISSUE_FROM_GRAY_MATTER = "gray matter (T1w segmentation)"
TISSUE_FROM_LOWEST_MD = "lowest DTI MD, low FA"
TISSUE_GIVEN = "given"
#: The water b0 reference needs voxels with DTI MD at least this (mm^2/s): nearly pure CSF.
WATER_REFERENCE_MD = PURE_WATER_MD
#: Hoy et al.'s grid search: first pass f = 0, 0.1, ..., 0.9, then two refinements, each
#: sampling +-1 step of the previous pass at a tenth of its spacing.
GRID_FIRST_STEP = 0.1
GRID_REFINEMENTS = 2
#: Levenberg-Marquardt: iterations at most, and the relative drop of the cost that stops it.
LM_MAX_ITER = 100
LM_TOLERANCE = 1e-10
#: Largest fitted f: above it the tissue compartment is not measurable and the voxel is water.
MAX_TISSUE_F = 0.99
#: Voxels per work item of the parallel loop (as in tensor.py).
VOXELS_PER_CHUNK = 1024
#: Voxels whose tensor residuals estimate the noise SD when there are fewer than 2 b0s.
NOISE_SAMPLE_VOXELS = 5000

N_PARAMS = 8  # 6 tensor elements, log S0, f
#: The b0's receive field (single shell): N4 (``anat.bias_field``) of the mean b0, fitted on
#: the brain mask's tissue (DTI MD below RECEIVE_FIELD_MAX_MD), on a ~4 mm working grid with
#: B-spline meshes of 100 then 50 mm (100 mm: MRtrix3's ``dwibiascorrect ants`` default):
#: coil shading varies over several centimetres, while the CSF the prior must keep differs
#: from region to region on the scale of the ROIs (1-4 cm). On the training seed's csf_shift
#: sessions (benchmarks/results/receive_field_error_session31.md) the field's error at the
#: ROIs changed between sessions by 0.89% (SD) with 60/30 mm meshes on the whole mask, 0.43%
#: with these settings.
RECEIVE_FIELD_GRID_MM = 4.0
RECEIVE_FIELD_SPLINE_MM = 100.0
RECEIVE_FIELD_ITERATIONS = (50, 50)
RECEIVE_FIELD_TOLERANCE = 1e-7
#: mm^2/s: the field is fitted on voxels whose DTI MD is below this (gray and white matter
#: without visible free water, 0.6-0.9e-3): CSF and its partial volume are bright at b0 for a
#: reason that is not the coil, and N4 bent the field towards them.
RECEIVE_FIELD_MAX_MD = 1.0e-3
#: Fewest of the mask's voxels (share) that must pass RECEIVE_FIELD_MAX_MD; else the field is
#: fitted on the whole mask, with a warning.
RECEIVE_FIELD_MIN_TISSUE_SHARE = 0.1
_FIT_OK, _FIT_FAILED, _FIT_WATER = 0, 1, 2


@dataclass(frozen=True)
class FreeWaterFit:
    """Maps on the input grid; NaN outside the mask, where ``failed``, and (tissue maps) where the
    voxel is pure free water (``f_water`` = 1).

    ``md``, ``tissue_evals`` (descending, (..., 3)) in mm^2/s, of the tissue compartment;
    ``fa`` unitless; ``f_water`` the free-water signal fraction (0..1; single shell from
    :data:`SINGLE_SHELL_MIN_F`); ``s0`` the fitted
    non-weighted signal; ``failed`` True where a voxel in the mask could not be fitted;
    ``single_shell`` whether the regularised single-shell fit was used, and ``prior`` the
    priors it used (None for a multi-shell fit).
    """

    md: np.ndarray
    fa: np.ndarray
    f_water: np.ndarray
    tissue_evals: np.ndarray
    tissue_evecs: np.ndarray
    s0: np.ndarray
    failed: np.ndarray
    single_shell: bool
    prior: SingleShellPrior | None = None


@dataclass(frozen=True)
class SingleShellPrior:
    """Priors of the single-shell fit, in the data's units (see the module docstring).

    ``s0_tissue``/``s0_water``: b0 references (NaN: no b0 prior), ``tissue_reference`` how the
    tissue one was chosen (``TISSUE_*``); ``noise_sd``: signal noise SD;
    ``receive_field_range``: 2nd and 98th percentiles in the mask of the receive field divided
    out of the data first (None: not corrected).
    """

    s0_tissue: float
    s0_water: float
    noise_sd: float
    receive_field_range: tuple[float, float] | None = None
    tissue_reference: str = TISSUE_GIVEN
    md_mean: float = TISSUE_MD_PRIOR_MEAN
    md_sd: float = TISSUE_MD_PRIOR_SD
    f_sd: float = F_PRIOR_SD


def b0_free_water_fraction(s0: np.ndarray, s0_tissue: float, s0_water: float) -> np.ndarray:
    """Free-water signal fraction implied by b0 intensity, clipped to [SINGLE_SHELL_MIN_F, 1]:
    the single-shell prior's centre.

    A voxel of water volume fraction v has ``S0 = (1 - v) s0_tissue + v s0_water``; the signal
    fraction of the water is ``v s0_water / S0`` (negative below ``s0_tissue``).
    """
    s0 = np.asarray(s0, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = s0_water * (s0 - s0_tissue) / (s0 * (s0_water - s0_tissue))
    return np.clip(np.nan_to_num(f, nan=0.0), SINGLE_SHELL_MIN_F, 1.0)


def estimate_b0_references(
    s0: np.ndarray,
    dti_md: np.ndarray,
    dti_fa: np.ndarray | None = None,
    gray_matter: np.ndarray | None = None,
) -> tuple[float, float, str]:
    """(s0_tissue, s0_water, how the tissue reference was chosen): b0 of gray matter without
    free water and median b0 of pure-CSF voxels.

    Tissue: the :data:`REFERENCE_GM_PERCENTILE` of the b0 of the non-water voxels of
    ``gray_matter`` (gray matter by anatomy, see :data:`REFERENCE_MIN_GM_SHARE`) when given
    and at least :data:`MIN_REFERENCE_VOXELS`; otherwise (with a warning if it was given) the
    median b0 of the voxels, with DTI FA below :data:`TISSUE_REFERENCE_MAX_FA` when ``dti_fa``
    is given, whose DTI MD is in the lowest :data:`TISSUE_REFERENCE_PERCENTILE` of the
    non-water voxels. Water: the median b0 of the voxels with DTI MD >=
    :data:`WATER_REFERENCE_MD`. NaN for a reference with fewer than
    :data:`MIN_REFERENCE_VOXELS` voxels, or when water is not brighter than tissue.
    """
    s0 = np.asarray(s0, dtype=float).ravel()
    dti_md = np.asarray(dti_md, dtype=float).ravel()
    good = np.isfinite(s0) & np.isfinite(dti_md) & (s0 > 0)
    water = good & (dti_md >= WATER_REFERENCE_MD)
    tissue_candidates = good & ~water & (dti_md > 0)
    s0_water = float(np.median(s0[water])) if water.sum() >= MIN_REFERENCE_VOXELS else np.nan
    s0_tissue, source = np.nan, TISSUE_FROM_LOWEST_MD
    if gray_matter is not None:
        gray = tissue_candidates & np.asarray(gray_matter, dtype=bool).ravel()
        if gray.sum() >= MIN_REFERENCE_VOXELS:
            s0_tissue = float(np.percentile(s0[gray], REFERENCE_GM_PERCENTILE))
            source = TISSUE_FROM_GRAY_MATTER
        else:
            LOGGER.warning(
                "fit_free_water: %d gray-matter voxels for the tissue b0 reference (fewer than "
                "%d); using the lowest-MD low-FA voxels instead", gray.sum(), MIN_REFERENCE_VOXELS,
            )  # fmt: skip
    if np.isnan(s0_tissue):
        if dti_fa is not None:
            tissue_candidates &= np.asarray(dti_fa, dtype=float).ravel() < TISSUE_REFERENCE_MAX_FA
        if tissue_candidates.sum() >= MIN_REFERENCE_VOXELS:
            cut = np.percentile(dti_md[tissue_candidates], TISSUE_REFERENCE_PERCENTILE)
            tissue = tissue_candidates & (dti_md <= cut)
            if tissue.sum() >= MIN_REFERENCE_VOXELS:
                s0_tissue = float(np.median(s0[tissue]))
    if not s0_water > s0_tissue:
        return np.nan, np.nan, source
    return s0_tissue, s0_water, source


def receive_field_voxels(mask: np.ndarray, dti_md: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` the receive field is fitted on: DTI MD (mm^2/s) below
    RECEIVE_FIELD_MAX_MD, or the whole mask (with a warning) when under
    RECEIVE_FIELD_MIN_TISSUE_SHARE of it pass."""
    with np.errstate(invalid="ignore"):
        tissue = mask & (np.asarray(dti_md) < RECEIVE_FIELD_MAX_MD)
    if tissue.sum() >= RECEIVE_FIELD_MIN_TISSUE_SHARE * mask.sum():
        return tissue
    LOGGER.warning(
        "b0_receive_field: only %d of %d mask voxels have DTI MD < %g mm^2/s; the field is "
        "fitted on the whole mask, CSF included",
        tissue.sum(), mask.sum(), RECEIVE_FIELD_MAX_MD,
    )  # fmt: skip
    return mask


def b0_receive_field(
    b0: np.ndarray,
    mask: np.ndarray,
    voxel_mm: Sequence[float],
    dti_md: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """The smooth receive-coil shading of the mean ``b0`` inside ``mask`` (float32, median 1 in
    the mask; 1 outside it): an N4 field (RECEIVE_FIELD_* settings), fitted on the voxels
    whose ``dti_md`` (mm^2/s, same grid) is below RECEIVE_FIELD_MAX_MD when given, less the
    ``exclude`` voxels (an analysis leaving regions out of the fit), evaluated over the mask.

    Why: the single-shell prior reads free water from b0 intensity against whole-brain
    references, so shading that moves with the head between sessions would read as a change in
    free water. Dividing every volume by it leaves the diffusion attenuation as it was.
    """
    b0 = np.asarray(b0, dtype=float)
    mask = np.asarray(mask, dtype=bool) & np.isfinite(b0) & (b0 > 0)
    if not mask.any():
        return np.ones(b0.shape, dtype=np.float32)
    fitted = mask if dti_md is None else receive_field_voxels(mask, dti_md)
    if exclude is not None:
        fitted = fitted & ~np.asarray(exclude, dtype=bool)
    log_field = estimate_log_field(
        b0, fitted, voxel_mm,
        shrink=working_shrink(voxel_mm, RECEIVE_FIELD_GRID_MM),
        iterations=RECEIVE_FIELD_ITERATIONS, spline_distance_mm=RECEIVE_FIELD_SPLINE_MM,
        tolerance=RECEIVE_FIELD_TOLERANCE,
    )  # fmt: skip
    log_field -= np.median(log_field[mask])
    return np.where(mask, np.exp(log_field), 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- numba kernel


@njit(cache=True, nogil=True)
def _cholesky_resolve(factor, rhs, solution):  # pragma: no cover - compiled
    """Solve with a lower-triangular Cholesky factor left by ``cholesky_solve``."""
    n = rhs.shape[0]
    for i in range(n):
        value = rhs[i]
        for k in range(i):
            value -= factor[i, k] * solution[k]
        solution[i] = value / factor[i, i]
    for i in range(n - 1, -1, -1):
        value = solution[i]
        for k in range(i + 1, n):
            value -= factor[k, i] * solution[k]
        solution[i] = value / factor[i, i]


@njit(cache=True, nogil=True)
def _corrected_fit(design, measured, weights, s0, water, f, factor, rhs, beta, work):
    """Log-linear WLS tensor of the signal with free water fraction ``f`` removed; returns the
    sum of squared residuals of the two-compartment prediction (``factor`` holds the Cholesky
    factor of the weighted normal matrix)."""  # pragma: no cover - compiled
    n_vol = design.shape[0]
    for a in range(7):
        rhs[a] = 0.0
    for i in range(n_vol):
        tissue = max(measured[i] - f * s0 * water[i], MIN_SIGNAL) / (1.0 - f)
        work[i] = np.log(tissue)
        for a in range(7):
            rhs[a] += design[i, a] * weights[i] * work[i]
    _cholesky_resolve(factor, rhs, beta)
    sse = 0.0
    for i in range(n_vol):
        value = 0.0
        for a in range(7):
            value += design[i, a] * beta[a]
        predicted = (1.0 - f) * np.exp(value) + f * s0 * water[i]
        sse += (measured[i] - predicted) ** 2
    return sse


@njit(cache=True, nogil=True)
def _cost(design, measured, water, params, prior, prediction):  # pragma: no cover - compiled
    """Penalised sum of squares; fills ``prediction`` with the tissue exponentials E_i.

    ``prior`` = (md_mean, md_weight, f_mean, f_weight) in the kernel's scaled units; weights are
    noise SD / prior SD (0: no prior)."""
    n_vol = design.shape[0]
    s0 = np.exp(params[6])
    f = params[7]
    total = 0.0
    for i in range(n_vol):
        value = 0.0
        for a in range(6):
            value += design[i, a] * params[a]
        prediction[i] = np.exp(value)
        model = s0 * ((1.0 - f) * prediction[i] + f * water[i])
        total += (measured[i] - model) ** 2
    md = (params[0] + params[2] + params[5]) / 3.0
    total += (prior[1] * (md - prior[0])) ** 2 + (prior[3] * (f - prior[2])) ** 2
    return total


@njit(cache=True, nogil=True)
def _levenberg_marquardt(
    design, measured, water, params, prior, prediction, normal, damped, grad, step, trial
):  # pragma: no cover - compiled
    """Minimise :func:`_cost` over the 8 parameters in place, f projected onto [prior[4], 1]."""
    n_vol = design.shape[0]
    cost = _cost(design, measured, water, params, prior, prediction)
    damping = 1e-3
    for _ in range(LM_MAX_ITER):
        s0 = np.exp(params[6])
        f = params[7]
        for a in range(N_PARAMS):
            grad[a] = 0.0
            for c in range(N_PARAMS):
                normal[a, c] = 0.0
        for i in range(n_vol):
            tissue = s0 * (1.0 - f) * prediction[i]
            model = tissue + s0 * f * water[i]
            resid = measured[i] - model
            for a in range(6):
                trial[a] = tissue * design[i, a]  # trial holds the Jacobian row here
            trial[6] = model
            trial[7] = s0 * (water[i] - prediction[i])
            for a in range(N_PARAMS):
                grad[a] += trial[a] * resid
                for c in range(a + 1):
                    normal[a, c] += trial[a] * trial[c]
        # prior rows: md = (d0 + d2 + d5) / 3 and f
        md_row = prior[1] / 3.0
        md_resid = -prior[1] * ((params[0] + params[2] + params[5]) / 3.0 - prior[0])
        for a in (0, 2, 5):
            grad[a] += md_row * md_resid
            for c in (0, 2, 5):
                if c <= a:
                    normal[a, c] += md_row * md_row
        grad[7] += prior[3] * (-prior[3] * (f - prior[2]))
        normal[7, 7] += prior[3] * prior[3]
        largest = 0.0
        for a in range(N_PARAMS):
            largest = max(largest, normal[a, a])
        floor = 1e-12 * largest + 1e-300
        improved = False
        new_cost = cost
        while damping < 1e12:
            for a in range(N_PARAMS):
                for c in range(a + 1):
                    damped[a, c] = normal[a, c]
                damped[a, a] = normal[a, a] + damping * max(normal[a, a], floor)
            if cholesky_solve(damped, grad, step):
                for a in range(N_PARAMS):
                    trial[a] = params[a] + step[a]
                trial[7] = min(max(trial[7], prior[4]), 1.0)
                new_cost = _cost(design, measured, water, trial, prior, prediction)
                if new_cost <= cost:
                    improved = True
                    break
            damping *= 10.0
        if not improved:
            _cost(design, measured, water, params, prior, prediction)
            return
        relative_drop = (cost - new_cost) / max(cost, 1e-300)
        for a in range(N_PARAMS):
            params[a] = trial[a]
        cost = new_cost
        damping = max(damping / 10.0, 1e-12)
        if relative_drop < LM_TOLERANCE:
            return


@njit(cache=True, parallel=True)
def _free_water_kernel(
    signal,
    design,
    b0_volumes,
    weighted,
    water,
    multi_shell,
    prior_settings,
    min_eval,
    pure_water_md,
    out_evals,
    out_evecs,
    out_s0,
    out_f,
    out_status,
):  # pragma: no cover - compiled
    """Fit every row (voxel) of the 2-D ``signal``.

    ``prior_settings`` = (md_mean, md_weight, s0_tissue, s0_water, f_weight, f_min) in scaled
    units; f_weight 0 or NaN references switch the b0 prior off; f_min is f's lower bound
    (below 0 only with the b0 prior).
    ``out_status``: 0 fitted, 1 failed, 2 pure water.
    """
    n_fit = signal.shape[0]
    n_vol = design.shape[0]
    n_b0 = b0_volumes.shape[0]
    n_chunks = (n_fit + VOXELS_PER_CHUNK - 1) // VOXELS_PER_CHUNK
    for chunk in prange(n_chunks):
        measured = np.empty(n_vol)
        weights = np.empty(n_vol)
        work = np.empty(n_vol)
        factor = np.empty((7, 7))
        rhs = np.empty(7)
        beta = np.empty(7)
        best = np.empty(7)
        params = np.empty(N_PARAMS)
        prior = np.zeros(5)
        normal = np.empty((N_PARAMS, N_PARAMS))
        damped = np.empty((N_PARAMS, N_PARAMS))
        grad = np.empty(N_PARAMS)
        step = np.empty(N_PARAMS)
        trial = np.empty(N_PARAMS)
        tensor = np.empty((3, 3))
        evals = np.empty(3)
        evecs = np.empty((3, 3))
        stop = min(n_fit, (chunk + 1) * VOXELS_PER_CHUNK)
        for k in range(chunk * VOXELS_PER_CHUNK, stop):
            status = _FIT_OK
            s0 = 0.0
            for i in range(n_vol):
                value = np.float64(signal[k, i])
                if not np.isfinite(value):
                    status = _FIT_FAILED
                measured[i] = max(value, MIN_SIGNAL)
                weights[i] = measured[i] * measured[i]
                work[i] = np.log(measured[i])
            for j in range(n_b0):
                s0 += measured[b0_volumes[j]]
            s0 /= n_b0
            if status == _FIT_OK and not s0 > MIN_SIGNAL:
                status = _FIT_FAILED
            if status == _FIT_OK:  # plain WLS tensor (weights: measured signal squared)
                for a in range(7):
                    rhs[a] = 0.0
                    for c in range(a + 1):
                        total = 0.0
                        for i in range(n_vol):
                            total += design[i, a] * design[i, c] * weights[i]
                        factor[a, c] = total
                    for i in range(n_vol):
                        rhs[a] += design[i, a] * weights[i] * work[i]
                if not cholesky_solve(factor, rhs, beta):
                    status = _FIT_FAILED
            if status == _FIT_OK:
                dti_md = (beta[0] + beta[2] + beta[5]) / 3.0
                if dti_md >= pure_water_md:
                    status = _FIT_WATER
            if status == _FIT_OK:
                prior[0] = prior_settings[0]
                prior[1] = prior_settings[1]
                prior[2] = 0.0
                prior[3] = 0.0
                prior[4] = prior_settings[5]
                if multi_shell:  # Hoy et al.: grid over f, then refine
                    best_f = 0.0
                    best_sse = np.inf
                    spacing = GRID_FIRST_STEP
                    low = 0.0
                    n_grid = int(round(1.0 / GRID_FIRST_STEP))
                    for _level in range(GRID_REFINEMENTS + 1):
                        for g in range(n_grid):
                            f = low + g * spacing
                            if f < 0.0 or f > 1.0 - 0.1 * spacing:
                                continue
                            sse = _corrected_fit(
                                design, measured, weights, s0, water, f, factor, rhs, beta,
                                work,
                            )  # fmt: skip
                            if sse < best_sse:
                                best_sse = sse
                                best_f = f
                                for a in range(7):
                                    best[a] = beta[a]
                        low = best_f - spacing
                        spacing /= 10.0
                        n_grid = 21
                    f_start = best_f
                else:  # single shell: start where the priors say, on the data's attenuation
                    s0_tissue = prior_settings[2]
                    s0_water = prior_settings[3]
                    f_weight = prior_settings[4]
                    if f_weight > 0.0 and np.isfinite(s0_tissue) and np.isfinite(s0_water):
                        f_b0 = s0_water * (s0 - s0_tissue) / (s0 * (s0_water - s0_tissue))
                        f_b0 = min(max(f_b0, prior[4]), 1.0)
                        prior[2] = f_b0
                        prior[3] = f_weight
                        f_start = f_b0
                    else:  # tissue MD at the prior mean explains the mean attenuation
                        mean_water = 0.0
                        mean_tissue = 0.0
                        mean_measured = 0.0
                        n_dw = 0
                        for i in range(n_vol):
                            if weighted[i]:
                                mean_water += water[i]
                                mean_measured += measured[i] / s0
                                row = 0.0
                                for a in (0, 2, 5):
                                    row += design[i, a]
                                mean_tissue += np.exp(row * prior_settings[0])
                                n_dw += 1
                        mean_water /= n_dw
                        mean_tissue /= n_dw
                        mean_measured /= n_dw
                        f_start = (mean_tissue - mean_measured) / (mean_tissue - mean_water)
                    f_start = min(max(f_start, prior[4]), 0.9)
                    _corrected_fit(
                        design, measured, weights, s0, water, f_start, factor, rhs, best, work
                    )
                for a in range(6):
                    params[a] = best[a]
                params[6] = np.log(s0)
                params[7] = f_start
                _levenberg_marquardt(
                    design, measured, water, params, prior, work, normal, damped, grad, step,
                    trial,
                )  # fmt: skip
                for a in range(N_PARAMS):
                    if not np.isfinite(params[a]):
                        status = _FIT_FAILED
                tissue_md = (params[0] + params[2] + params[5]) / 3.0
                if status == _FIT_OK and (params[7] > MAX_TISSUE_F or tissue_md >= pure_water_md):
                    status = _FIT_WATER  # no tissue left, or the "tissue" is free water too
            out_status[k] = status
            if status == _FIT_OK:
                tensor[0, 0] = params[0]
                tensor[0, 1] = params[1]
                tensor[1, 0] = params[1]
                tensor[1, 1] = params[2]
                tensor[0, 2] = params[3]
                tensor[2, 0] = params[3]
                tensor[1, 2] = params[4]
                tensor[2, 1] = params[4]
                tensor[2, 2] = params[5]
                eigh3(tensor, evals, evecs)
                for r in range(3):
                    out_evals[k, r] = max(evals[r], min_eval)
                    for c in range(3):
                        out_evecs[k, r, c] = evecs[r, c]
                out_s0[k] = np.exp(params[6])
                out_f[k] = params[7]
            else:
                for r in range(3):
                    out_evals[k, r] = np.nan
                    for c in range(3):
                        out_evecs[k, r, c] = np.nan
                out_s0[k] = s0 if status == _FIT_WATER else np.nan
                out_f[k] = 1.0 if status == _FIT_WATER else np.nan


# ----------------------------------------------------------------------------- public API


def count_shells(bvals: np.ndarray, b0_threshold: float = B0_THRESHOLD) -> int:
    """Number of distinct non-zero shells (see :func:`cluster_shells`)."""
    centres = cluster_shells(bvals, b0_threshold)
    return int(np.unique(centres[centres > 0]).size)


def estimate_noise_sd(rows: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, b0_volumes) -> float:
    """Signal noise SD of ``rows`` (voxels, volumes): pooled SD of the repeated b0s, or of the
    tensor residuals with one b0.

    Used only to weigh the single-shell priors against the data.
    """
    if len(b0_volumes) >= 2:
        return float(np.sqrt(np.mean(np.var(rows[:, b0_volumes], axis=1, ddof=1))))
    rng = np.random.default_rng(0)
    pick = rng.choice(rows.shape[0], min(rows.shape[0], NOISE_SAMPLE_VOXELS), replace=False)
    sample = rows[np.sort(pick)].astype(float)
    fit = fit_tensor(sample[:, None, None, :], bvals, bvecs, method="wls", n_threads=1)
    evals = fit.evals[:, 0, 0]
    tensors = np.einsum("nij,nj,nkj->nik", fit.evecs[:, 0, 0], evals, fit.evecs[:, 0, 0])
    adc = np.einsum("gi,nij,gj->ng", bvecs, tensors, bvecs)
    predicted = fit.s0[:, 0, 0, None] * np.exp(-bvals[None, :] * adc)
    rss = np.nansum((sample - predicted) ** 2, axis=1)
    return float(np.sqrt(np.nanmedian(rss) / max(len(bvals) - 7, 1)))


def fit_free_water(
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    mask: np.ndarray | None = None,
    n_threads: int | None = None,
    *,
    s0_tissue: float | None = None,
    s0_water: float | None = None,
    dti_md: np.ndarray | None = None,
    dti_fa: np.ndarray | None = None,
    gray_matter: np.ndarray | None = None,
    voxel_mm: Sequence[float] | None = None,
    b0_threshold: float = B0_THRESHOLD,
    min_f: float = SINGLE_SHELL_MIN_F,
    noise_sd: float | None = None,
) -> FreeWaterFit:
    """Fit the free-water + tissue-tensor model in every voxel of ``data`` (x, y, z, volumes).

    ``bvals`` s/mm^2 (N,), ``bvecs`` (N, 3) or (3, N). Two or more non-zero shells: the Hoy et al.
    2014 fit; one shell: the regularised fit of the module docstring, with b0 references
    ``s0_tissue``/``s0_water`` (data units) or, when None, :func:`estimate_b0_references` over the
    mask, from ``gray_matter`` (a mask of gray matter by anatomy, same grid) and
    ``dti_md``/``dti_fa`` (maps of a tensor fit of the same data, mm^2/s) if given, else from a
    WLS tensor fit made here; with ``voxel_mm`` (the grid's voxel size) a single-shell
    fit first divides the data by the b0's receive field (:func:`b0_receive_field`, fitted on
    the tissue those MD maps, or that fit, show), so given references must then be in those
    units. ``min_f`` (<= 0) is the single-shell floor of f where there is a b0 prior (an
    analysis may set 0 to refit with DIPY's bound). ``noise_sd`` (data units) weighs the
    single-shell priors against the data; None estimates it from the data (noiseless data,
    as an analysis of the model alone uses, must give it: their estimate is ~0, and priors
    weighted by it would vanish). ``n_threads`` caps the cores. Raises
    ValueError for mismatched shapes, no b0 volume, directions that cannot determine a tensor,
    or ``min_f`` outside [SINGLE_SHELL_MIN_F, 0].
    """
    data, bvals, bvecs, mask = check_inputs(data, bvals, bvecs, mask)
    b0_mask = bvals <= b0_threshold
    if not b0_mask.any():
        raise ValueError(
            f"no b0 volume (b <= {b0_threshold:g} s/mm^2): free-water fitting needs the "
            "non-weighted signal S0"
        )
    if not tensor_determinable(bvecs[~b0_mask]):
        raise ValueError(
            "the diffusion-weighted directions do not span 6 non-collinear directions; "
            "a tissue tensor cannot be fitted"
        )
    if not SINGLE_SHELL_MIN_F <= min_f <= 0:
        raise ValueError(f"min_f must be in [{SINGLE_SHELL_MIN_F:g}, 0], not {min_f:g}")
    if (s0_tissue is None) != (s0_water is None):
        raise ValueError("give both s0_tissue and s0_water, or neither")
    if s0_tissue is not None and not (0 < s0_tissue < s0_water):
        raise ValueError(
            f"need 0 < s0_tissue < s0_water (free water is brighter at b0); got "
            f"s0_tissue={s0_tissue}, s0_water={s0_water}"
        )
    n_shells = count_shells(bvals, b0_threshold)
    single_shell = n_shells == 1
    b_scale = float(bvals.max())
    design = design_matrix(bvals, bvecs, b_scale)
    water = np.exp(-bvals * FREE_WATER_DIFFUSIVITY)
    b0_volumes = np.flatnonzero(b0_mask).astype(np.int64)
    spatial_shape = data.shape[:3]
    signal, voxels = masked_rows(data, mask)
    n_fit = voxels.size

    prior = SingleShellPrior(np.nan, np.nan, 0.0)
    if single_shell and n_fit:
        b0_rows = signal[:, b0_volumes].mean(axis=1)
        row_md = row_fa = None  # the tensor fit's maps at the fitted voxels
        if dti_md is not None:
            row_md = np.asarray(dti_md).ravel()[voxels]
            row_fa = None if dti_fa is None else np.asarray(dti_fa).ravel()[voxels]
        elif s0_tissue is None or voxel_mm is not None:  # the references or the field need it
            tensor = fit_tensor(signal[:, None, None, :], bvals, bvecs, method="wls")
            row_md, row_fa = tensor.md[:, 0, 0], tensor.fa[:, 0, 0]
        receive_range = None
        if voxel_mm is not None:  # MD is a ratio of volumes: the same before and after
            field = b0_receive_field(
                rows_to_volume(b0_rows, voxels, spatial_shape, fill=0.0), mask, voxel_mm,
                rows_to_volume(row_md, voxels, spatial_shape),
            ).ravel()[voxels]  # fmt: skip
            signal = signal / field[:, None]
            b0_rows = b0_rows / field
            low, high = np.percentile(field, [2, 98])
            receive_range = (float(low), float(high))
        row_gray = None if gray_matter is None else np.asarray(gray_matter).ravel()[voxels]
        prior = single_shell_prior(
            signal, bvals, bvecs, b0_volumes, b0_rows, s0_tissue, s0_water, dti_md=row_md,
            dti_fa=row_fa, gray_matter=row_gray, noise_sd=noise_sd,
        )  # fmt: skip
        prior = dataclasses.replace(prior, receive_field_range=receive_range)
        LOGGER.info(
            "fit_free_water: single shell; b0 references tissue %.4g (%s), water %.4g; noise "
            "SD %.4g; receive field (p2, p98) %s",
            prior.s0_tissue, prior.tissue_reference, prior.s0_water, prior.noise_sd,
            receive_range,
        )  # fmt: skip
    noise = prior.noise_sd
    with np.errstate(divide="ignore", invalid="ignore"):
        settings = np.array(
            [
                prior.md_mean * b_scale,
                noise / (prior.md_sd * b_scale) if single_shell else 0.0,
                prior.s0_tissue,
                prior.s0_water,
                noise / prior.f_sd if single_shell else 0.0,
                0.0,
            ]
        )
    # f < 0 is read from the b0 prior: only where there is one (the kernel's own test)
    if settings[4] > 0 and np.isfinite(settings[2]) and np.isfinite(settings[3]):
        settings[5] = min_f
    out_evals = np.empty((n_fit, 3))
    out_evecs = np.empty((n_fit, 3, 3))
    out_s0 = np.empty(n_fit)
    out_f = np.empty(n_fit)
    out_status = np.empty(n_fit, dtype=np.int8)
    if n_fit:
        with limit_threads(n_threads, blas=False):
            _free_water_kernel(
                signal,
                design,
                b0_volumes,
                ~b0_mask,
                water,
                not single_shell,
                settings,
                MIN_EIGENVALUE_B_PRODUCT,
                PURE_WATER_MD * b_scale,
                out_evals,
                out_evecs,
                out_s0,
                out_f,
                out_status,
            )
    else:
        LOGGER.warning("fit_free_water: the mask excludes every voxel; all maps are NaN")
    out_evals /= b_scale
    n_failed = int(np.count_nonzero(out_status == _FIT_FAILED))
    if n_failed:
        LOGGER.debug("fit_free_water: %d of %d voxels could not be fitted", n_failed, n_fit)
    return _assemble(
        out_evals, out_evecs, out_s0, out_f, out_status, voxels, spatial_shape, single_shell,
        prior if single_shell and n_fit else None,
    )  # fmt: skip


def single_shell_prior(
    rows: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    b0_volumes: np.ndarray,
    b0_mean: np.ndarray,
    s0_tissue: float | None = None,
    s0_water: float | None = None,
    *,
    dti_md: np.ndarray | None = None,
    dti_fa: np.ndarray | None = None,
    gray_matter: np.ndarray | None = None,
    noise_sd: float | None = None,
) -> SingleShellPrior:
    """The single-shell priors for the brain's ``rows`` (voxels, volumes) and their mean b0
    ``b0_mean``: b0 references (given, or estimated from the rows' anatomy and tensor MD and
    FA, ``gray_matter``/``dti_md``/``dti_fa`` per row) and the noise SD that weighs the priors
    against the data (``noise_sd``, or estimated from the rows when None)."""
    source = TISSUE_GIVEN
    if s0_tissue is None:
        if dti_md is None:
            raise ValueError("b0 references are estimated from the rows' tensor MD: give dti_md")
        s0_tissue, s0_water, source = estimate_b0_references(b0_mean, dti_md, dti_fa, gray_matter)
        if np.isnan(s0_tissue):
            LOGGER.warning(
                "fit_free_water: no tissue/CSF b0 references in the mask; single-shell free "
                "water rests on the tissue-MD prior alone"
            )
    if noise_sd is None:
        noise_sd = estimate_noise_sd(rows, bvals, bvecs, b0_volumes)
    elif not noise_sd > 0:
        raise ValueError(f"noise_sd must be positive, not {noise_sd}")
    return SingleShellPrior(
        float(s0_tissue), float(s0_water), float(noise_sd), tissue_reference=source
    )


def _assemble(
    evals, evecs, s0, f, status, voxels, spatial_shape, single_shell, prior
) -> FreeWaterFit:
    """Scatter the fitted voxels into NaN-filled maps and derive MD and FA of the tissue."""

    def scatter(values: np.ndarray, fill=np.nan, dtype=float) -> np.ndarray:
        return rows_to_volume(values, voxels, spatial_shape, fill, dtype)

    md, fa = md_fa(evals)
    return FreeWaterFit(
        md=scatter(md),
        fa=scatter(fa),
        f_water=scatter(f),
        tissue_evals=scatter(evals),
        tissue_evecs=scatter(evecs),
        s0=scatter(s0),
        failed=scatter(status == _FIT_FAILED, fill=False, dtype=bool),
        single_shell=single_shell,
        prior=prior,
    )
