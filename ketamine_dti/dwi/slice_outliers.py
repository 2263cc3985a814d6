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
from ketamine_dti.dwi.layout import masked_rows
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
#: Brain voxels predicted at a time (the prediction's temporaries are ~50 float64 per volume).
PREDICTION_CHUNK = 16384
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

    The fits are voxelwise, so a round refits only the slices whose data the last round's
    replacement changed, and a replacement fits only the voxels it replaces: one full RESTORE
    fit per shell, whatever the number of rounds and outliers.
    """
    data = np.asarray(data, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    bvals = np.asarray(bvals, dtype=float)
    bvecs = np.asarray(bvecs, dtype=float)
    n_volumes, n_slices = data.shape[-1], data.shape[slice_axis]
    outliers = np.zeros((n_volumes, n_slices), dtype=bool)
    tested = np.zeros_like(outliers)
    zscores = np.full(outliers.shape, np.nan)
    brain = _BrainRows(data, mask, slice_axis, noise)
    shells = cluster_shells(bvals, b0_threshold)
    b0s = np.flatnonzero(shells == 0)
    for shell in np.unique(shells[shells > 0]):
        volumes = np.flatnonzero(shells == shell)
        if volumes.size < MIN_SHELL_VOLUMES or not mask.any():
            continue
        if not b0s.size or not _determines_tensor_without_any(bvals[volumes], bvecs[volumes]):
            LOGGER.warning("slice outliers: shell b=%g cannot be predicted without one of its "
                           "volumes (no b0 or too few directions); not tested", shell)  # fmt: skip
            continue
        shell_model = _ShellModel(brain, bvals, bvecs, b0s, volumes, n_threads)
        observed = brain.slice_means(brain.original[:, volumes])
        predicted = np.full((brain.n_rows, volumes.size), np.nan, dtype=np.float32)
        expected = np.full_like(observed, np.nan)
        refit = np.ones(n_slices, dtype=bool)
        shell_tested = np.broadcast_to(brain.counts >= MIN_SLICE_VOXELS, observed.shape)
        for _ in range(N_ROUNDS):
            rows = brain.rows_in(refit)
            predicted[rows] = shell_model.predict(rows, volumes)
            expected[:, refit] = brain.slice_means(predicted, refit)
            found_tested = shell_tested & np.isfinite(expected) & np.isfinite(observed)
            deviations = slice_deviations(observed, expected, found_tested)
            z = robust_zscores(deviations, found_tested, brain.counts)
            found = np.nan_to_num(z, nan=0.0) < -OUTLIER_SD
            changed = found != outliers[volumes]
            outliers[volumes], tested[volumes], zscores[volumes] = found, found_tested, z
            if not changed.any():
                break
            # Slices that change state revert to the original, then every flag is refilled
            # in order (a fill reads the fills before it): refit where any flag changed.
            refit = changed.any(axis=0)
            rows = brain.rows_in(refit)
            brain.values[np.ix_(rows, volumes)] = brain.original[np.ix_(rows, volumes)]
            shell_model.fill(rows, found[:, refit], np.flatnonzero(refit))
    if not replace:
        return SliceOutliers(data=data.copy(), outliers=outliers, tested=tested, zscores=zscores)
    replaced = data.copy()
    replaced[mask] = brain.values[np.argsort(brain.order)]
    return SliceOutliers(data=replaced, outliers=outliers, tested=tested, zscores=zscores)


class _BrainRows:
    """The brain voxels of a series as rows (voxels, volumes), with the slice of each row:
    fits and slice means on the brain alone, without copying the whole 4-D array per fit."""

    def __init__(self, data, mask, slice_axis, noise):
        slice_of = np.nonzero(mask)[slice_axis]
        self.order = np.argsort(slice_of, kind="stable")  # rows sorted by slice
        self.slice_of = slice_of[self.order]
        self.original = masked_rows(data, mask)[0][self.order]  # (rows, volumes), a copy
        self.values = self.original.copy()  # what the fits read; replacements go here
        self.n_rows = self.slice_of.size
        self.counts = np.bincount(self.slice_of, minlength=data.shape[slice_axis])
        self.starts = np.r_[0, np.cumsum(self.counts)[:-1]]
        self.noise = None
        if noise is not None:
            noise = np.broadcast_to(np.asarray(noise, dtype=float), mask.shape)
            self.noise = noise[mask][self.order]

    def rows_in(self, slices: np.ndarray) -> np.ndarray:
        """Row indices of the brain voxels in the flagged ``slices`` (a boolean per slice)."""
        return np.flatnonzero(slices[self.slice_of])

    def slice_means(self, values: np.ndarray, slices: np.ndarray | None = None) -> np.ndarray:
        """(columns, slices) mean over each slice's rows of ``values`` (rows, columns), for all
        slices or the flagged ``slices`` only; NaN for a slice without brain."""
        chosen = np.ones(self.counts.size, bool) if slices is None else np.asarray(slices)
        means = np.full((values.shape[1], self.counts.size), np.nan)
        for index in np.flatnonzero(chosen & (self.counts > 0)):
            block = values[self.starts[index] : self.starts[index] + self.counts[index]]
            means[:, index] = block.mean(axis=0, dtype=np.float64)
        return means[:, chosen]

    def fit(self, rows: np.ndarray, columns: np.ndarray, bvals, bvecs, n_threads):
        """RESTORE fit to ``columns`` of the given rows; (evals, evecs, s0) per row."""
        signal = np.ascontiguousarray(self.values[np.ix_(rows, columns)])[:, None, None, :]
        noise = None if self.noise is None else self.noise[rows][:, None, None]
        fit = fit_tensor(
            signal, bvals[columns], bvecs[columns], method="restore", n_threads=n_threads,
            noise=noise,
        )  # fmt: skip
        return fit.evals[:, 0, 0], fit.evecs[:, 0, 0], fit.s0[:, 0, 0]


@dataclass
class _ShellModel:
    """The tensor predictions of one shell from its b0s and diffusion-weighted volumes."""

    brain: _BrainRows
    bvals: np.ndarray
    bvecs: np.ndarray
    b0s: np.ndarray
    volumes: np.ndarray
    n_threads: int | None

    @property
    def used(self) -> np.ndarray:
        return np.r_[self.b0s, self.volumes]

    def predict(self, rows: np.ndarray, targets: np.ndarray, used=None) -> np.ndarray:
        """(rows, targets) prediction of the ``targets`` volumes from a fit to ``used``
        (default: the b0s and the whole shell); NaN where the fit failed."""
        used = self.used if used is None else used
        predicted = np.full((rows.size, targets.size), np.nan, dtype=np.float32)
        if not rows.size:
            return predicted
        evals, evecs, s0 = self.brain.fit(rows, used, self.bvals, self.bvecs, self.n_threads)
        for start in range(0, rows.size, PREDICTION_CHUNK):  # bounds the float64 temporaries
            chunk = slice(start, start + PREDICTION_CHUNK)
            with np.errstate(invalid="ignore", over="ignore"):  # failed fits: not finite
                predicted[chunk] = predict_signal(
                    evals[chunk], evecs[chunk], s0[chunk], self.bvals[targets],
                    self.bvecs[targets],
                )  # fmt: skip
        return predicted

    def fill(self, rows: np.ndarray, flags: np.ndarray, slices: np.ndarray) -> None:
        """Replace the values of every flagged (volume, slice) among ``rows`` (the brain rows of
        ``slices``; ``flags``: (shell volumes, len(slices))) by the prediction of a fit to the
        shell without that volume (in-sample, the replaced values would pull the next fit
        towards themselves and a dropout would linger)."""
        row_slices = self.brain.slice_of[rows]
        for index in np.flatnonzero(flags.any(axis=1)):
            volume = self.volumes[index]
            region = rows[np.isin(row_slices, slices[flags[index]])]
            used = self.used
            values = self.predict(region, np.array([volume]), used[used != volume])[:, 0]
            current = self.brain.values[region, volume]
            self.brain.values[region, volume] = np.where(np.isfinite(values), values, current)


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
