"""Slice dropouts: diffusion-weighted slices whose signal falls far below what the other
volumes predict, found and replaced by the prediction before the final fits (FSL eddy's
``--repol``, Andersson et al. 2016).

Cardiac pulsation and bulk motion during the diffusion gradients dephase a whole slice of one
volume; a tensor fit reads the lost signal as fast diffusion and biases MD up where it strikes
(inferior slices: temporal lobe, subcallosal cortex). Per shell, a RESTORE tensor fitted to the
b0s and that shell predicts every volume (robust, so a dropout does not drag the prediction of
the other volumes of its voxels); each slice's mean observed minus mean predicted signal in the
brain (the prediction scaled by the volume's median ratio over slices) is standardised across
the shell's volumes by a robust scale (``robust_zscores``); slices more than ``OUTLIER_SD``
below are outliers. Their brain voxels take the prediction of a fit to the other volumes, and
detection is repeated on the original slices against the new prediction, for ``N_ROUNDS``
rounds or until the set of outliers no longer changes.

Slices are those of the acquisition: the data must still be on the raw grid (ResampleDWI keeps
it), and ``slice_axis`` is the voxel axis of ``SliceEncodingDirection``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from ketamine_dti.dwi.gradients import B0_THRESHOLD, cluster_shells
from ketamine_dti.dwi.motion import PE_AXES
from ketamine_dti.dwi.qc import predict_signal
from ketamine_dti.dwi.tensor import (
    DESIGN_RANK_TOLERANCE,
    N_TENSOR_PARAMS,
    ROBUST_SD,
    design_matrix,
    fit_tensor,
)

LOGGER = logging.getLogger(__name__)

#: A slice is an outlier when its mean signal lies this many robust SDs below the prediction
#: (eddy's default ``--ol_nstd``).
OUTLIER_SD = 4.0
#: Slices with fewer brain voxels are not tested: their mean is too noisy to judge.
MIN_SLICE_VOXELS = 20
#: Shells with fewer diffusion-weighted volumes are not tested: a median and MAD across fewer
#: volumes cannot tell one dropout from the spread (a 6-direction test series flagged a clean
#: slice), and a fit leaving one volume out needs 6 directions.
MIN_SHELL_VOLUMES = 10
#: Detect-replace-refit rounds at most (eddy iterates its outlier replacement likewise).
N_ROUNDS = 4
#: The slice axis when the sidecar does not say (BIDS: the third voxel axis).
DEFAULT_SLICE_AXIS = 2
#: Columns SliceOutliers.confounds adds to the confounds table.
CONFOUND_COLUMNS = ("outlier_slices", "replaced_slices", "tested_slices")


@dataclass(frozen=True)
class SliceOutliers:
    """``data``: the series with outlier slices replaced (or unchanged, ``replace=False``);
    ``outliers``/``tested``: (volumes, slices) flags; ``zscores``: (volumes, slices), NaN
    where not tested."""

    data: np.ndarray
    outliers: np.ndarray
    tested: np.ndarray
    zscores: np.ndarray

    def confounds(self, replaced: bool) -> dict[str, np.ndarray]:
        """Per-volume columns of the confounds table (CONFOUND_COLUMNS): outlier slices found,
        replaced (0 when ``replaced`` is False) and tested."""
        found = self.outliers.sum(axis=1)
        return {
            "outlier_slices": found,
            "replaced_slices": found if replaced else np.zeros_like(found),
            "tested_slices": self.tested.sum(axis=1),
        }


def slice_axis_from_metadata(metadata: dict) -> int:
    """Voxel axis of the BIDS SliceEncodingDirection ('k-' -> 2), the third when absent."""
    direction = str(metadata.get("SliceEncodingDirection", ""))[:1]
    return PE_AXES.get(direction, DEFAULT_SLICE_AXIS)  # the same letters as phase encoding


def slice_means(data: np.ndarray, mask: np.ndarray, slice_axis: int) -> tuple[np.ndarray, ...]:
    """(volumes, slices) mean of ``data`` over each slice's brain voxels, and (slices,) counts
    of those voxels."""
    moved = np.moveaxis(np.asarray(data), slice_axis, 2)
    inside = np.moveaxis(np.asarray(mask, dtype=bool), slice_axis, 2)
    counts = inside.sum(axis=(0, 1))
    means = np.full((moved.shape[-1], moved.shape[2]), np.nan)
    for index in np.flatnonzero(counts):
        means[:, index] = moved[:, :, index][inside[:, :, index]].mean(axis=0, dtype=np.float64)
    return means, counts


def slice_deviations(observed: np.ndarray, expected: np.ndarray, tested: np.ndarray):
    """(volumes, slices) deviation of each slice's mean signal from its prediction, in signal
    units, after scaling the prediction by the volume's median observed/predicted ratio: a whole
    volume brighter or darker than the model (drift, a b-value error) is not a slice outlier.
    Signal units, not ratios, because noise is additive: a ratio of a strongly attenuated
    direction near the noise floor would swing far more than that of the others."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # volumes with no tested slice
        ratio = np.nanmedian(np.where(tested, observed / expected, np.nan), axis=1)
        return np.where(tested, observed - expected * ratio[:, None], np.nan)


def robust_zscores(differences: np.ndarray, tested: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each slice's differences (volumes, slices) standardised across the volumes tested in it:
    (d - median) / scale, NaN where not tested or the scale is 0.

    The scale is the larger of the slice's own robust SD (ROBUST_SD x MAD over its volumes)
    and the shell's, all slices pooled after scaling by sqrt(``counts``) (the noise of a mean
    of n voxels). The own SD alone, from a few dozen volumes, is often underestimated, which
    thickens the tail (0.4-0.8% of clean slices beyond 4 SD in the tests' phantom); the pooled
    one alone would miss a slice whose misfit is larger than noise.
    """
    values = np.where(tested, differences, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # untested slices are all-NaN columns
        centre = np.nanmedian(values, axis=0)
        spread = np.abs(values - centre)
        own = ROBUST_SD * np.nanmedian(spread, axis=0)
        root_counts = np.sqrt(np.asarray(counts, dtype=float))
        pooled = ROBUST_SD * np.nanmedian(spread * root_counts) / root_counts
        z = (values - centre) / np.fmax(own, pooled)
    z[~np.isfinite(z)] = np.nan
    return z


def replace_slice_outliers(
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    mask: np.ndarray,
    slice_axis: int = DEFAULT_SLICE_AXIS,
    replace: bool = True,
    b0_threshold: float = B0_THRESHOLD,
    noise: float | np.ndarray | None = None,
    n_threads: int | None = None,
) -> SliceOutliers:
    """Find the dropped slices of every diffusion-weighted volume of ``data`` (x, y, z, N) and,
    with ``replace``, put the tensor prediction in their brain voxels (``mask``).

    ``bvals`` s/mm^2 (N,), ``bvecs`` (N, 3); b0 volumes are never tested (they are the
    reference of every shell). ``noise``: the noise SD (e.g. the MP-PCA map) for the RESTORE
    fits that predict. Each round compares the original slices with the prediction from the
    data whose outliers (as the last round found them) hold the prediction, so a slice flagged
    only because a dropout elsewhere in its voxels misled the first fit is cleared again.
    """
    original = np.asarray(data, dtype=np.float32)
    data = original.copy()
    mask = np.asarray(mask, dtype=bool)
    bvals = np.asarray(bvals, dtype=float)
    bvecs = np.asarray(bvecs, dtype=float)
    n_volumes, n_slices = data.shape[-1], data.shape[slice_axis]
    outliers = np.zeros((n_volumes, n_slices), dtype=bool)
    tested = np.zeros_like(outliers)
    zscores = np.full(outliers.shape, np.nan)
    shells = cluster_shells(bvals, b0_threshold)
    b0s = np.flatnonzero(shells == 0)
    for shell in np.unique(shells[shells > 0]):
        volumes = np.flatnonzero(shells == shell)
        if volumes.size < MIN_SHELL_VOLUMES or not mask.any():
            continue
        used = np.r_[b0s, volumes]
        if not b0s.size or not _determines_tensor_without_any(bvals[volumes], bvecs[volumes]):
            LOGGER.warning("slice outliers: shell b=%g cannot be predicted without one of its "
                           "volumes (no b0 or too few directions); not tested", shell)  # fmt: skip
            continue
        observed, counts = slice_means(original[..., volumes], mask, slice_axis)
        for _ in range(N_ROUNDS):
            predicted = _predict_shell(data, bvals, bvecs, mask, used, volumes, noise, n_threads)
            expected, _ = slice_means(predicted, mask, slice_axis)
            shell_tested = np.broadcast_to(counts >= MIN_SLICE_VOXELS, observed.shape)
            shell_tested = shell_tested & np.isfinite(expected) & np.isfinite(observed)
            deviations = slice_deviations(observed, expected, shell_tested)
            z = robust_zscores(deviations, shell_tested, counts)
            found = np.nan_to_num(z, nan=0.0) < -OUTLIER_SD
            settled = np.array_equal(found, outliers[volumes])
            outliers[volumes], tested[volumes], zscores[volumes] = found, shell_tested, z
            data[..., volumes] = original[..., volumes]
            _fill(data, bvals, bvecs, mask, used, volumes, found, slice_axis, noise, n_threads)
            if settled:
                break
    return SliceOutliers(
        data=data if replace else original.copy(),
        outliers=outliers,
        tested=tested,
        zscores=zscores,
    )


def _determines_tensor_without_any(bvals: np.ndarray, bvecs: np.ndarray) -> bool:
    """Whether a b0 plus the shell's volumes, less any one of them, determine the 7 log-linear
    tensor parameters (the fits that replace a volume's slices leave that volume out)."""
    for left_out in range(len(bvals)):
        keep = np.arange(len(bvals)) != left_out
        design = design_matrix(np.r_[0.0, bvals[keep]], np.vstack([np.zeros(3), bvecs[keep]]))
        singular_values = np.linalg.svd(design, compute_uv=False)
        if np.sum(singular_values > DESIGN_RANK_TOLERANCE * singular_values[0]) < N_TENSOR_PARAMS:
            return False
    return True


def _predict_shell(data, bvals, bvecs, mask, used, volumes, noise, n_threads) -> np.ndarray:
    """(x, y, z, len(volumes)) RESTORE-tensor prediction of ``volumes`` from the fit to ``used``;
    NaN outside the mask and where the fit failed."""
    fit = fit_tensor(
        data[..., used],
        bvals[used],
        bvecs[used],
        mask=mask,
        method="restore",
        n_threads=n_threads,
        noise=noise,
    )
    predicted = np.full(data.shape[:3] + (volumes.size,), np.nan, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # failed fits: not finite, not used
        predicted[mask] = predict_signal(
            fit.evals[mask], fit.evecs[mask], fit.s0[mask], bvals[volumes], bvecs[volumes]
        )
    return predicted


def _fill(data, bvals, bvecs, mask, used, volumes, flags, slice_axis, noise, n_threads) -> None:
    """Write into the brain voxels of every flagged (volume, slice) the prediction of a fit to
    the shell without that volume (in-sample, the replaced values would pull the next fit
    towards themselves and a dropout would linger)."""
    for row in np.flatnonzero(flags.any(axis=1)):
        volume = volumes[row]
        in_slices = np.zeros(data.shape[:3], dtype=bool)
        where = [slice(None)] * 3
        where[slice_axis] = np.flatnonzero(flags[row])
        in_slices[tuple(where)] = True
        region = mask & in_slices
        others = used[used != volume]
        fit = fit_tensor(
            data[..., others], bvals[others], bvecs[others], mask=region, method="restore",
            n_threads=n_threads, noise=noise,
        )  # fmt: skip
        values = predict_signal(
            fit.evals[region], fit.evecs[region], fit.s0[region], bvals[[volume]],
            bvecs[[volume]],
        )[:, 0]  # fmt: skip
        target = data[..., volume]  # a view
        target[region] = np.where(np.isfinite(values), values, target[region])
