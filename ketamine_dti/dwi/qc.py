"""Quality measures of a preprocessed DWI session: temporal SNR, tensor-fit residual and the
neighbouring-DWI correlation."""

from __future__ import annotations

import numpy as np

from ketamine_dti.dwi.gradients import B0_THRESHOLD
from ketamine_dti.dwi.layout import masked_rows

#: Brain voxels whose residual is computed at a time. The prediction's float64 temporaries
#: (projections, their squares, exponent, difference) grow with voxels x volumes: with a
#: standard session's whole brain at once the tensor step's peak RSS was 1.33 GB, in chunks
#: 0.66 GB.
RESIDUAL_CHUNK = 16384


def b0_tsnr(data: np.ndarray, b0_mask: np.ndarray, brain: np.ndarray) -> float:
    """Median over brain voxels of mean/SD across the b0 volumes (NaN with fewer than 2 b0s)."""
    b0 = np.asarray(data, dtype=np.float64)[..., np.asarray(b0_mask, dtype=bool)]
    if b0.shape[-1] < 2:
        return float("nan")
    voxels = b0[np.asarray(brain, dtype=bool)]
    sd = voxels.std(axis=1, ddof=1)
    keep = sd > 0
    if not keep.any():
        return float("nan")
    return float(np.median(voxels[keep].mean(axis=1) / sd[keep]))


def predict_signal(
    evals: np.ndarray, evecs: np.ndarray, s0: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray
) -> np.ndarray:
    """Tensor-model signal S0 exp(-b g^T D g) for every voxel (evals in mm^2/s, b in s/mm^2).

    evecs[..., :, j] is the eigenvector of evals[..., j]; bvecs (N, 3) in the same frame.
    """
    projections = np.einsum("nk,...kj->...nj", np.asarray(bvecs, float), evecs)  # g . e_j
    adc = np.einsum("...nj,...j->...n", projections**2, evals)
    return s0[..., None] * np.exp(-np.asarray(bvals, float) * adc)


def tensor_residual(
    data: np.ndarray,
    evals: np.ndarray,
    evecs: np.ndarray,
    s0: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    brain: np.ndarray,
) -> tuple[np.ndarray, float]:
    """Root-mean-square fit residual relative to S0, per voxel, and its median in the brain.

    A few percent is noise; motion, artefacts or a wrong b-vector table make it grow.
    """
    brain = np.asarray(brain, dtype=bool) & np.isfinite(s0) & (s0 > 0)
    residual_map = np.full(brain.shape, np.nan, dtype=np.float32)
    if not brain.any():
        return residual_map, float("nan")
    rows = masked_rows(data, brain)[0]
    evals, evecs, s0 = evals[brain], evecs[brain], s0[brain]
    rms = np.empty(rows.shape[0])
    for start in range(0, rows.shape[0], RESIDUAL_CHUNK):
        chunk = slice(start, start + RESIDUAL_CHUNK)
        predicted = predict_signal(evals[chunk], evecs[chunk], s0[chunk], bvals, bvecs)
        rms[chunk] = np.sqrt(np.mean((rows[chunk] - predicted) ** 2, axis=1)) / s0[chunk]
    residual_map[brain] = rms
    return residual_map, float(np.nanmedian(rms))


def neighbor_correlation(
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    brain: np.ndarray,
    b0_threshold: float = B0_THRESHOLD,
) -> np.ndarray:
    """(N,) correlation in the brain of each diffusion-weighted volume with its nearest
    neighbour in q-space (NaN for b0s), as QSIPrep reports it (Yeh et al. 2019).

    Neighbours share nearly the same contrast, so a low correlation means an artefact (dropout,
    motion, misregistration) in one of them; the session's mean is the NDC. q = sqrt(b / b_max)
    g, and g and -g are the same measurement.
    """
    bvals = np.asarray(bvals, dtype=float)
    weighted = np.flatnonzero(bvals > b0_threshold)
    correlation = np.full(bvals.size, np.nan)
    if weighted.size < 2:
        return correlation
    q = np.asarray(bvecs, float)[weighted] * np.sqrt(bvals[weighted] / bvals.max())[:, None]
    distance = np.minimum(
        np.linalg.norm(q[:, None] - q[None], axis=-1),
        np.linalg.norm(q[:, None] + q[None], axis=-1),
    )
    np.fill_diagonal(distance, np.inf)
    samples = np.asarray(data)[np.asarray(brain, dtype=bool)][:, weighted].astype(np.float64)
    samples -= samples.mean(axis=0)
    norms = np.linalg.norm(samples, axis=0)
    for row, neighbour in enumerate(np.argmin(distance, axis=1)):
        denominator = norms[row] * norms[neighbour]
        if denominator > 0:
            correlation[weighted[row]] = samples[:, row] @ samples[:, neighbour] / denominator
    return correlation
