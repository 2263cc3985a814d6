"""Diffusion tensor fitting (OLS, WLS, NLLS, RESTORE) over a 4-D DWI array.

Model: ``S_i = S0 * exp(-b_i g_i^T D g_i)`` with b in s/mm^2, so the tensor ``D`` and every
derived map (MD, AD, RD, eigenvalues) come out in mm^2/s.

- ``ols``: linear least squares on ``log S``.
- ``wls``: the two-pass weighted fit of Chung et al. (2006), the estimator DIPY calls ``WLS``:
  an OLS pass predicts the signal, whose square weights the log-linear fit.
- ``nlls``: nonlinear least squares on ``S`` itself (Levenberg-Marquardt), started from WLS.
- ``restore``: RESTORE (Chang et al. 2005), robust to artefactual samples (a dropped slice, a
  spike): WLS first; where a residual exceeds ``RESTORE_OUTLIER_SD`` noise SDs, a Geman-McClure
  M-estimate (iteratively reweighted, scale ``ROBUST_SD`` x the MAD of the residuals) finds the
  outliers, which are then left out of a final WLS fit. The noise SD is the MP-PCA map when
  given, else the voxel's own ``ROBUST_SD`` x median |WLS residual| (corrected for the
  degrees of freedom the fit used).

All three run voxel by voxel in one numba kernel, parallel over voxels: per voxel the 7x7
normal equations are accumulated in float64 from the 28 unique design products, solved by
Cholesky, and the 3x3 tensor is diagonalised in closed form (Jacobi rotations when two
eigenvalues nearly coincide). b-values are rescaled by the
largest b inside the kernel so the normal matrix is well conditioned.

Conventions follow DIPY so the maps agree with it: signals are floored at ``MIN_SIGNAL`` before
the log, and eigenvalues are floored at ``MIN_EIGENVALUE_B_PRODUCT / max(b)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ketamine_dti.dwi.layout import masked_rows, rows_to_volume
from ketamine_dti.threads import limit_threads

LOGGER = logging.getLogger(__name__)

#: Parameters of the log-linear tensor model: 6 tensor elements + log(S0).
N_TENSOR_PARAMS = 7
#: Signal floor (scanner units) applied before the log; the value DIPY uses, so fits agree.
MIN_SIGNAL = 1e-4
#: Eigenvalues below 1e-6 / max(b) are noise, not diffusion (negative ones are unphysical);
#: flooring them there keeps FA in [0, 1], as DIPY does.
MIN_EIGENVALUE_B_PRODUCT = 1e-6
#: NLLS stops when the relative drop of the residual sum of squares falls below this.
NLLS_TOLERANCE = 1e-10
#: NLLS iterations at most; Levenberg-Marquardt from the WLS start needs far fewer.
NLLS_MAX_ITER = 50
#: Voxels per work item of the parallel loop: large enough to amortise scratch allocation.
VOXELS_PER_CHUNK = 2048
#: Relative rank tolerance for the design matrix (singular values vs the largest).
DESIGN_RANK_TOLERANCE = 1e-8
#: Closed-form 3x3 eigenvectors (cross products) lose accuracy as eps * |eigenvalue| / gap;
#: below this eigenvalue gap (relative to the largest |eigenvalue|) the voxel falls back to
#: Jacobi rotations, so eigenvectors stay accurate to ~1e-13 while most voxels take the fast path.
CLOSED_FORM_MIN_GAP = 1e-2

#: RESTORE: a sample whose residual exceeds this many noise SDs is an outlier (Chang et al.
#: 2005; ~3e-3 of Gaussian samples lie beyond, a few per voxel of a 100-volume series at most).
RESTORE_OUTLIER_SD = 3.0
#: SD of a Gaussian per median absolute deviation (1 / Phi^-1(3/4)).
ROBUST_SD = 1.4826
#: Geman-McClure reweighting passes at most; the weights settle in a handful.
RESTORE_MAX_ITER = 20
#: ... and stop when no log-signal parameter moves by more than this.
RESTORE_TOLERANCE = 1e-4

_METHODS = {"ols": 0, "wls": 1, "nlls": 2, "restore": 3}
#: Let LLVM reorder sums so the per-voxel dot products vectorise (no NaN/inf assumptions).
_REDUCTION_MATH = {"reassoc", "contract"}


@dataclass(frozen=True)
class TensorFit:
    """Tensor maps on the input grid; NaN where a voxel was masked out or could not be fitted.

    ``md``, ``ad``, ``rd`` and ``evals`` (descending, shape (..., 3)) are in mm^2/s; ``fa`` is
    unitless; ``evecs[..., :, j]`` is the unit eigenvector of ``evals[..., j]`` in the b-vector
    frame; ``s0`` is the fitted non-weighted signal in the data's units; ``n_rejected``: samples
    RESTORE left out of each voxel's fit (0 for the other methods).
    """

    md: np.ndarray
    fa: np.ndarray
    ad: np.ndarray
    rd: np.ndarray
    evals: np.ndarray
    evecs: np.ndarray
    s0: np.ndarray
    n_rejected: np.ndarray


def design_matrix(bvals: np.ndarray, bvecs: np.ndarray, b_scale: float = 1.0) -> np.ndarray:
    """(N, 7) log-linear design: columns Dxx, Dxy, Dyy, Dxz, Dyz, Dzz (times -b/b_scale), 1."""
    b = np.asarray(bvals, dtype=float) / b_scale
    gx, gy, gz = np.asarray(bvecs, dtype=float).T
    return np.column_stack(
        [
            -b * gx * gx,
            -2.0 * b * gx * gy,
            -b * gy * gy,
            -2.0 * b * gx * gz,
            -2.0 * b * gy * gz,
            -b * gz * gz,
            np.ones_like(b),
        ]
    )


def check_inputs(data, bvals, bvecs, mask):
    """Validate shapes; return float data, b-values, unit b-vectors (N, 3) and a boolean mask."""
    data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"data must be 4-D (x, y, z, volumes), got shape {data.shape}")
    if data.dtype not in (np.float32, np.float64):
        if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
            raise ValueError(f"data must be real numbers, got dtype {data.dtype}")
        data = data.astype(np.float32)
    n_volumes = data.shape[-1]
    if n_volumes < N_TENSOR_PARAMS:
        raise ValueError(
            f"data has {n_volumes} volumes but a tensor fit needs at least {N_TENSOR_PARAMS} "
            "(b0 + 6 non-collinear directions)"
        )
    bvals = np.asarray(bvals, dtype=float).ravel()
    bvecs = np.asarray(bvecs, dtype=float)
    if bvecs.ndim == 2 and bvecs.shape[0] == 3 and bvecs.shape[1] != 3:
        bvecs = bvecs.T  # FSL files store one row per axis
    if bvals.shape != (n_volumes,) or bvecs.shape != (n_volumes, 3):
        raise ValueError(
            f"gradient table does not match the data: {n_volumes} volumes, "
            f"bvals shape {bvals.shape}, bvecs shape {bvecs.shape}; expected ({n_volumes},) "
            f"and ({n_volumes}, 3)"
        )
    if not (np.all(np.isfinite(bvals)) and np.all(np.isfinite(bvecs))) or np.any(bvals < 0):
        raise ValueError("bvals must be finite and >= 0 and bvecs finite")
    norms = np.linalg.norm(bvecs, axis=1)
    unit_bvecs = np.divide(
        bvecs, norms[:, None], out=np.zeros_like(bvecs), where=norms[:, None] > 0
    )
    if mask is None:
        mask = np.ones(data.shape[:3], dtype=bool)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != data.shape[:3]:
            raise ValueError(f"mask shape {mask.shape} does not match data {data.shape[:3]}")
    return data, bvals, unit_bvecs, mask


@njit(cache=True, nogil=True)
def cholesky_solve(matrix, rhs, solution):  # pragma: no cover - compiled
    """Solve the SPD system in place (lower triangle overwritten); False if not positive."""
    n = rhs.shape[0]
    for j in range(n):
        diag = matrix[j, j]
        for k in range(j):
            diag -= matrix[j, k] * matrix[j, k]
        if not diag > 0.0:
            return False
        diag = np.sqrt(diag)
        matrix[j, j] = diag
        for i in range(j + 1, n):
            value = matrix[i, j]
            for k in range(j):
                value -= matrix[i, k] * matrix[j, k]
            matrix[i, j] = value / diag
    for i in range(n):
        value = rhs[i]
        for k in range(i):
            value -= matrix[i, k] * solution[k]
        solution[i] = value / matrix[i, i]
    for i in range(n - 1, -1, -1):
        value = solution[i]
        for k in range(i + 1, n):
            value -= matrix[k, i] * solution[k]
        solution[i] = value / matrix[i, i]
    return True


@njit(cache=True, nogil=True, fastmath=_REDUCTION_MATH)
def _weighted_solve(
    design_t, pair_products, log_signal, weights, normal, rhs, beta
):  # pragma: no cover
    """beta = argmin sum_i weights_i (log_signal_i - design_i . beta)^2 via normal equations.

    ``pair_products[k]`` is the product of design columns (a, c), a >= c, in row-major lower
    triangular order, so the 28 unique entries of the normal matrix are 28 dot products.
    """
    n_params, n_vol = design_t.shape
    k = 0
    for a in range(n_params):
        for c in range(a + 1):
            total = 0.0
            for i in range(n_vol):
                total += pair_products[k, i] * weights[i]
            normal[a, c] = total
            k += 1
        total = 0.0
        for i in range(n_vol):
            total += design_t[a, i] * weights[i] * log_signal[i]
        rhs[a] = total
    return cholesky_solve(normal, rhs, beta)


@njit(cache=True, nogil=True)
def _nlls_cost(design, signal, params, prediction):  # pragma: no cover - compiled
    """Residual sum of squares of the exponential model; fills ``prediction``."""
    total = 0.0
    for i in range(design.shape[0]):
        value = 0.0
        for a in range(design.shape[1]):
            value += design[i, a] * params[a]
        prediction[i] = np.exp(value)
        total += (signal[i] - prediction[i]) ** 2
    return total


@njit(cache=True, nogil=True)
def _nlls_refine(
    design, signal, beta, prediction, normal, damped, grad, step, trial
):  # pragma: no cover
    """Levenberg-Marquardt on sum_i (S_i - exp(design_i . beta))^2, refining beta in place."""
    n_vol, n_params = design.shape
    cost = _nlls_cost(design, signal, beta, prediction)
    damping = 1e-3
    for _ in range(NLLS_MAX_ITER):
        for a in range(n_params):
            grad[a] = 0.0
            for c in range(a + 1):
                normal[a, c] = 0.0
        for i in range(n_vol):  # prediction holds the model at beta
            pred = prediction[i]
            resid = signal[i] - pred
            for a in range(n_params):
                ja = pred * design[i, a]
                grad[a] += ja * resid
                for c in range(a + 1):
                    normal[a, c] += ja * pred * design[i, c]
        improved = False
        while damping < 1e12:
            for a in range(n_params):
                for c in range(a + 1):
                    damped[a, c] = normal[a, c]
                damped[a, a] = normal[a, a] * (1.0 + damping)
            if cholesky_solve(damped, grad, step):
                for a in range(n_params):
                    trial[a] = beta[a] + step[a]
                new_cost = _nlls_cost(design, signal, trial, prediction)
                if new_cost <= cost:
                    improved = True
                    break
            damping *= 10.0
        if not improved:
            return
        relative_drop = (cost - new_cost) / max(cost, 1e-300)
        for a in range(n_params):
            beta[a] = trial[a]
        cost = new_cost
        damping = max(damping / 10.0, 1e-12)
        if relative_drop < NLLS_TOLERANCE:
            return


@njit(cache=True, nogil=True)
def _unit_null_vector(tensor, eigenvalue, evecs, column):  # pragma: no cover - compiled
    """Unit vector orthogonal to two rows of ``tensor - eigenvalue I`` (the largest cross product
    of the three row pairs), written to ``evecs[:, column]``."""
    r00 = tensor[0, 0] - eigenvalue
    r11 = tensor[1, 1] - eigenvalue
    r22 = tensor[2, 2] - eigenvalue
    r01 = tensor[0, 1]
    r02 = tensor[0, 2]
    r12 = tensor[1, 2]
    # rows: (r00, r01, r02), (r01, r11, r12), (r02, r12, r22)
    ax, ay, az = r01 * r12 - r02 * r11, r02 * r01 - r00 * r12, r00 * r11 - r01 * r01
    bx, by, bz = r01 * r22 - r02 * r12, r02 * r02 - r00 * r22, r00 * r12 - r01 * r02
    cx, cy, cz = r11 * r22 - r12 * r12, r12 * r02 - r01 * r22, r01 * r12 - r11 * r02
    na = ax * ax + ay * ay + az * az
    nb = bx * bx + by * by + bz * bz
    nc = cx * cx + cy * cy + cz * cz
    if nb > na and nb >= nc:
        ax, ay, az, na = bx, by, bz, nb
    elif nc > na:
        ax, ay, az, na = cx, cy, cz, nc
    norm = np.sqrt(na)
    evecs[0, column] = ax / norm
    evecs[1, column] = ay / norm
    evecs[2, column] = az / norm


@njit(cache=True, nogil=True)
def eigh3(tensor, evals, evecs):  # pragma: no cover - compiled
    """Eigen-decomposition of a symmetric 3x3, descending (``tensor`` may be overwritten).

    Eigenvalues in closed form (Smith 1961, trigonometric); eigenvectors of the outer two from
    cross products, the middle one completing a right-handed frame. When two eigenvalues are
    closer than ``CLOSED_FORM_MIN_GAP`` of the largest |eigenvalue|, Jacobi rotations instead.
    """
    mean = (tensor[0, 0] + tensor[1, 1] + tensor[2, 2]) / 3.0
    off = tensor[0, 1] ** 2 + tensor[0, 2] ** 2 + tensor[1, 2] ** 2
    d0 = tensor[0, 0] - mean
    d1 = tensor[1, 1] - mean
    d2 = tensor[2, 2] - mean
    scale = np.sqrt((d0 * d0 + d1 * d1 + d2 * d2 + 2.0 * off) / 6.0)
    if scale > 0.0:
        b01 = tensor[0, 1] / scale
        b02 = tensor[0, 2] / scale
        b12 = tensor[1, 2] / scale
        e0 = d0 / scale
        e1 = d1 / scale
        e2 = d2 / scale
        half_det = 0.5 * (
            e0 * (e1 * e2 - b12 * b12)
            - b01 * (b01 * e2 - b12 * b02)
            + b02 * (b01 * b12 - e1 * b02)
        )
        half_det = min(max(half_det, -1.0), 1.0)
        phi = np.arccos(half_det) / 3.0
        largest = mean + 2.0 * scale * np.cos(phi)
        smallest = mean + 2.0 * scale * np.cos(phi + 2.0 * np.pi / 3.0)
        middle = 3.0 * mean - largest - smallest
        magnitude = max(abs(largest), abs(smallest))
        if min(largest - middle, middle - smallest) >= CLOSED_FORM_MIN_GAP * magnitude:
            evals[0] = largest
            evals[1] = middle
            evals[2] = smallest
            _unit_null_vector(tensor, largest, evecs, 0)
            _unit_null_vector(tensor, smallest, evecs, 2)
            evecs[0, 1] = evecs[1, 2] * evecs[2, 0] - evecs[2, 2] * evecs[1, 0]
            evecs[1, 1] = evecs[2, 2] * evecs[0, 0] - evecs[0, 2] * evecs[2, 0]
            evecs[2, 1] = evecs[0, 2] * evecs[1, 0] - evecs[1, 2] * evecs[0, 0]
            return
    _eigh3_jacobi(tensor, evals, evecs)


@njit(cache=True, nogil=True)
def _rotate_columns(matrix, p, q, cos, sin):  # pragma: no cover - compiled
    """Columns ``p`` and ``q`` of a 3x3 ``matrix`` times the Jacobi rotation (in place)."""
    for k in range(3):
        mkp = matrix[k, p]
        mkq = matrix[k, q]
        matrix[k, p] = cos * mkp - sin * mkq
        matrix[k, q] = sin * mkp + cos * mkq


@njit(cache=True, nogil=True)
def _eigh3_jacobi(tensor, evals, evecs):  # pragma: no cover - compiled
    """Eigen-decomposition of a symmetric 3x3 (overwritten) by cyclic Jacobi, descending."""
    for r in range(3):
        for c in range(3):
            evecs[r, c] = 1.0 if r == c else 0.0
    scale = 0.0
    for r in range(3):
        for c in range(3):
            scale += tensor[r, c] * tensor[r, c]
    for _ in range(32):
        off = tensor[0, 1] ** 2 + tensor[0, 2] ** 2 + tensor[1, 2] ** 2
        if off <= 1e-32 * scale or off == 0.0:
            break
        for p, q in ((0, 1), (0, 2), (1, 2)):
            apq = tensor[p, q]
            if apq == 0.0:
                continue
            theta = (tensor[q, q] - tensor[p, p]) / (2.0 * apq)
            t = 1.0 / (abs(theta) + np.sqrt(theta * theta + 1.0))
            if theta < 0.0:
                t = -t
            cos = 1.0 / np.sqrt(t * t + 1.0)
            sin = t * cos
            _rotate_columns(tensor, p, q, cos, sin)
            for k in range(3):  # and rows: tensor <- R^T tensor R
                apk = tensor[p, k]
                aqk = tensor[q, k]
                tensor[p, k] = cos * apk - sin * aqk
                tensor[q, k] = sin * apk + cos * aqk
            _rotate_columns(evecs, p, q, cos, sin)
    for r in range(3):
        evals[r] = tensor[r, r]
    for i in range(2):  # selection sort, descending, columns follow
        best = i
        for j in range(i + 1, 3):
            if evals[j] > evals[best]:
                best = j
        if best != i:
            tmp = evals[i]
            evals[i] = evals[best]
            evals[best] = tmp
            for k in range(3):
                tmp = evecs[k, i]
                evecs[k, i] = evecs[k, best]
                evecs[k, best] = tmp


@njit(cache=True, nogil=True, fastmath=_REDUCTION_MATH)
def _load_voxel(signal, row, min_signal, measured, log_signal):  # pragma: no cover - compiled
    """Floored signal and its log for one voxel; False if a sample is not finite or none is
    above 0 (the voxel cannot be fitted)."""
    fittable = True
    any_positive = False
    for i in range(measured.shape[0]):
        value = np.float64(signal[row, i])
        if not np.isfinite(value):
            fittable = False
        if value > 0.0:
            any_positive = True
        measured[i] = max(value, min_signal)
        log_signal[i] = np.log(measured[i])
    return fittable and any_positive


@njit(cache=True, nogil=True, fastmath=_REDUCTION_MATH)
def _ols(ols_pinv, log_signal, beta):  # pragma: no cover - compiled
    """Ordinary least squares of the log signal: ``beta = pinv(design) @ log_signal``."""
    for a in range(beta.shape[0]):
        value = 0.0
        for i in range(log_signal.shape[0]):
            value += ols_pinv[a, i] * log_signal[i]
        beta[a] = value


@njit(cache=True, nogil=True, fastmath=_REDUCTION_MATH)
def _wls_weights(design_t, beta, weights):  # pragma: no cover - compiled
    """WLS weights: the squared signal predicted by ``beta``."""
    n_params, n_vol = design_t.shape
    for i in range(n_vol):
        weights[i] = 0.0
    for a in range(n_params):
        for i in range(n_vol):
            weights[i] += design_t[a, i] * beta[a]
    # float32 exp: ~7% faster; weights need only ~1e-7 relative precision, and its range
    # (1e-45 to 3e38) holds any squared signal above MIN_SIGNAL
    for i in range(n_vol):
        weights[i] = np.exp(np.float32(2.0 * weights[i]))


@njit(cache=True, nogil=True, fastmath=_REDUCTION_MATH)
def _predict(design_t, beta, prediction):  # pragma: no cover - compiled
    """Model signal exp(design . beta) of every volume."""
    n_params, n_vol = design_t.shape
    for i in range(n_vol):
        value = 0.0
        for a in range(n_params):
            value += design_t[a, i] * beta[a]
        prediction[i] = np.exp(value)


@njit(cache=True, nogil=True)
def _restore_refine(
    design_t,
    pair_products,
    measured,
    log_signal,
    noise,
    beta,
    prediction,
    residual,
    weights,
    normal,
    rhs,
    trial,
):  # pragma: no cover - compiled
    """RESTORE from the WLS estimate ``beta`` (refined in place); ``noise`` is the voxel's noise
    SD (<= 0 or NaN: estimated from the residuals). Returns the number of samples rejected."""
    n_params, n_vol = design_t.shape
    _predict(design_t, beta, prediction)
    for i in range(n_vol):
        residual[i] = abs(measured[i] - prediction[i])
    if not noise > 0.0:  # residuals of a 7-parameter fit are shrunk by sqrt((n - 7) / n)
        noise = ROBUST_SD * np.median(residual) * np.sqrt(n_vol / max(n_vol - n_params, 1))
        if not noise > 0.0:
            return 0
    limit = RESTORE_OUTLIER_SD * noise
    if np.max(residual) <= limit:
        return 0
    for _ in range(RESTORE_MAX_ITER):  # Geman-McClure M-estimate by reweighted WLS
        for i in range(n_vol):
            residual[i] = measured[i] - prediction[i]
        centre = np.median(residual)
        for i in range(n_vol):
            weights[i] = abs(residual[i] - centre)
        scale = ROBUST_SD * np.median(weights)
        if not scale > 0.0:
            break
        for i in range(n_vol):
            # psi(r)/r of rho = r^2 / (r^2 + C^2), times the squared signal of the log-linear fit
            spread = residual[i] * residual[i] + scale * scale
            weights[i] = prediction[i] * prediction[i] * scale * scale / (spread * spread)
        if not _weighted_solve(design_t, pair_products, log_signal, weights, normal, rhs, trial):
            break
        change = 0.0
        for a in range(n_params):
            change = max(change, abs(trial[a] - beta[a]))
            beta[a] = trial[a]
        _predict(design_t, beta, prediction)
        if change < RESTORE_TOLERANCE:
            break
    n_rejected = 0
    for i in range(n_vol):
        if abs(measured[i] - prediction[i]) > limit:
            weights[i] = 0.0
            n_rejected += 1
        else:
            weights[i] = prediction[i] * prediction[i]
    if _weighted_solve(design_t, pair_products, log_signal, weights, normal, rhs, trial):
        for a in range(n_params):  # else too few samples remain: keep the M-estimate
            beta[a] = trial[a]
    return n_rejected


@njit(cache=True, nogil=True, fastmath=_REDUCTION_MATH)
def _all_finite(values):  # pragma: no cover - compiled
    for a in range(values.shape[0]):
        if not np.isfinite(values[a]):
            return False
    return True


@njit(cache=True, nogil=True, fastmath=_REDUCTION_MATH)
def _store_nan(k, out_evals, out_evecs, out_s0):  # pragma: no cover - compiled
    for r in range(3):
        out_evals[k, r] = np.nan
        for c in range(3):
            out_evecs[k, r, c] = np.nan
    out_s0[k] = np.nan


@njit(cache=True, nogil=True, fastmath=_REDUCTION_MATH)
def _store_tensor(
    k, beta, min_eval, tensor, evals, evecs, out_evals, out_evecs, out_s0
):  # pragma: no cover - compiled
    """Eigen-decompose the fitted tensor of voxel ``k`` and store eigenvalues (floored at
    ``min_eval``), eigenvectors and S0."""
    tensor[0, 0] = beta[0]
    tensor[0, 1] = beta[1]
    tensor[1, 0] = beta[1]
    tensor[1, 1] = beta[2]
    tensor[0, 2] = beta[3]
    tensor[2, 0] = beta[3]
    tensor[1, 2] = beta[4]
    tensor[2, 1] = beta[4]
    tensor[2, 2] = beta[5]
    eigh3(tensor, evals, evecs)
    for r in range(3):
        out_evals[k, r] = max(evals[r], min_eval)
        for c in range(3):
            out_evecs[k, r, c] = evecs[r, c]
    out_s0[k] = np.exp(beta[6])


@njit(cache=True, parallel=True, fastmath=_REDUCTION_MATH)
def _fit_kernel(
    signal,
    design,
    design_t,
    pair_products,
    ols_pinv,
    method,
    noise,
    min_signal,
    min_eval,
    out_evals,
    out_evecs,
    out_s0,
    out_rejected,
):  # pragma: no cover - compiled
    """Fit every row (voxel) of the 2-D ``signal``; NaN when unfittable.
    ``noise[k]``: noise SD of voxel k (RESTORE only); ``out_rejected[k]``: samples RESTORE left
    out."""
    n_fit = signal.shape[0]
    n_vol, n_params = design.shape
    n_chunks = (n_fit + VOXELS_PER_CHUNK - 1) // VOXELS_PER_CHUNK
    for chunk in prange(n_chunks):
        measured = np.empty(n_vol)
        log_signal = np.empty(n_vol)
        weights = np.empty(n_vol)
        normal = np.empty((n_params, n_params))
        damped = np.empty((n_params, n_params))
        rhs = np.empty(n_params)
        step = np.empty(n_params)
        trial = np.empty(n_params)
        beta = np.empty(n_params)
        prediction = np.empty(n_vol)
        residual = np.empty(n_vol)
        tensor = np.empty((3, 3))
        evals = np.empty(3)
        evecs = np.empty((3, 3))
        stop = min(n_fit, (chunk + 1) * VOXELS_PER_CHUNK)
        for k in range(chunk * VOXELS_PER_CHUNK, stop):
            fittable = _load_voxel(signal, k, min_signal, measured, log_signal)
            out_rejected[k] = 0
            if fittable:
                _ols(ols_pinv, log_signal, beta)
                if method >= 1:  # WLS: weights = squared OLS-predicted signal
                    _wls_weights(design_t, beta, weights)
                    fittable = _weighted_solve(
                        design_t, pair_products, log_signal, weights, normal, rhs, beta
                    )
                if fittable and method == 2:
                    _nlls_refine(design, measured, beta, weights, normal, damped, rhs, step, trial)
                if fittable and method == 3:
                    out_rejected[k] = _restore_refine(
                        design_t, pair_products, measured, log_signal, noise[k], beta,
                        prediction, residual, weights, normal, rhs, trial,
                    )  # fmt: skip
                fittable = fittable and _all_finite(beta)
            if fittable:
                _store_tensor(
                    k, beta, min_eval, tensor, evals, evecs, out_evals, out_evecs, out_s0
                )
            else:
                _store_nan(k, out_evals, out_evecs, out_s0)


def fit_tensor(
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    mask: np.ndarray | None = None,
    method: str = "wls",
    n_threads: int | None = None,
    noise: float | np.ndarray | None = None,
) -> TensorFit:
    """Fit a diffusion tensor in every voxel of ``data`` (x, y, z, volumes).

    ``bvals`` in s/mm^2 (N,), ``bvecs`` (N, 3) or (3, N); ``mask`` limits the fit (outside: NaN);
    ``method`` is ``ols``, ``wls`` (default), ``nlls`` or ``restore``; ``noise``: the noise SD
    in the data's units (scalar or (x, y, z) map, e.g. MP-PCA's sigma; NaN or <= 0 where
    unknown) that RESTORE's outlier test uses; ``n_threads`` caps the cores used
    (None: all numba may use). Voxels with any non-finite sample, or no sample above 0, or an
    unsolvable fit, get NaN. Raises ValueError for fewer volumes than the 7 model parameters or a
    gradient table that cannot determine a tensor.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
    data, bvals, bvecs, mask = check_inputs(data, bvals, bvecs, mask)
    b_scale = float(bvals.max()) if bvals.max() > 0 else 1.0
    design = design_matrix(bvals, bvecs, b_scale)
    singular_values = np.linalg.svd(design, compute_uv=False)
    rank = int(np.sum(singular_values > DESIGN_RANK_TOLERANCE * singular_values[0]))
    if rank < N_TENSOR_PARAMS:
        raise ValueError(
            f"the gradient table determines only {rank} of the {N_TENSOR_PARAMS} tensor "
            "parameters; it needs a b0 and at least 6 non-collinear directions with b > 0"
        )
    ols_pinv = np.linalg.pinv(design)
    rows, cols = np.tril_indices(N_TENSOR_PARAMS)  # row-major lower triangle, as the kernel
    pair_products = np.ascontiguousarray((design[:, rows] * design[:, cols]).T)
    spatial_shape = data.shape[:3]
    signal, voxels = masked_rows(data, mask)
    n_fit = voxels.size
    out_evals = np.empty((n_fit, 3))
    out_evecs = np.empty((n_fit, 3, 3))
    out_s0 = np.empty(n_fit)
    out_rejected = np.zeros(n_fit, dtype=np.int64)
    noise_sd = np.full(n_fit, np.nan)
    if noise is not None:
        noise_sd = np.broadcast_to(np.asarray(noise, dtype=float), spatial_shape).ravel()[voxels]
    if n_fit:
        with limit_threads(n_threads, blas=False):  # the kernel calls no BLAS/LAPACK
            _fit_kernel(
                signal,
                design,
                np.ascontiguousarray(design.T),
                pair_products,
                ols_pinv,
                _METHODS[method],
                np.ascontiguousarray(noise_sd),
                MIN_SIGNAL,
                MIN_EIGENVALUE_B_PRODUCT,  # in the kernel's b/b_scale units
                out_evals,
                out_evecs,
                out_s0,
                out_rejected,
            )
    else:
        LOGGER.warning("fit_tensor: the mask excludes every voxel; all maps are NaN")
    out_evals /= b_scale
    n_failed = int(np.count_nonzero(np.isnan(out_s0)))
    if n_failed:
        LOGGER.debug("fit_tensor: %d of %d voxels could not be fitted (NaN)", n_failed, n_fit)
    return _assemble(out_evals, out_evecs, out_s0, out_rejected, voxels, spatial_shape, data.dtype)


def md_fa(evals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean diffusivity and fractional anisotropy of (n, 3) eigenvalues (NaN rows stay NaN;
    an all-zero tensor has FA 0)."""
    md = evals.mean(axis=1)
    deviation = evals - md[:, None]
    norm = np.sqrt(np.sum(evals * evals, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        fa = np.sqrt(1.5 * np.sum(deviation * deviation, axis=1)) / norm
    fa = np.where(norm > 0, fa, 0.0)
    fa[np.isnan(md)] = np.nan
    return md, fa


def _assemble(evals, evecs, s0, rejected, voxels, spatial_shape, dtype) -> TensorFit:
    """Scatter the fitted voxels into NaN-filled maps on the input grid and derive MD/FA/AD/RD."""

    def scatter(values: np.ndarray) -> np.ndarray:
        return rows_to_volume(values, voxels, spatial_shape, dtype=dtype)

    md, fa = md_fa(evals)
    return TensorFit(
        md=scatter(md),
        fa=scatter(fa),
        ad=scatter(evals[:, 0]),
        rd=scatter(evals[:, 1:].mean(axis=1)),
        evals=scatter(evals),
        evecs=scatter(evecs),
        s0=scatter(s0),
        n_rejected=scatter(rejected.astype(dtype)),
    )
