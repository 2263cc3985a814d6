"""Slice dropouts: diffusion-weighted slices whose signal falls far below what the other
volumes predict, found and replaced by the prediction before the final fits (FSL eddy's
``--repol``, Andersson et al. 2016).

Cardiac pulsation and bulk motion during the diffusion gradients dephase a whole slice of one
volume; a tensor fit reads the lost signal as fast diffusion and biases MD up where it strikes
(inferior slices: temporal lobe, subcallosal cortex).

Per shell, every volume is predicted from the shell's *other* volumes by an angular model:
even spherical harmonics (``AngularModel``) fitted with a Laplace-Beltrami penalty towards
smooth profiles (Descoteaux et al. 2007), a linear smoother over directions like eddy's
Gaussian process. Leave-one-out, because an in-sample fit is pulled towards each sample, and a
robust one (RESTORE, used here until session 38) towards the samples it keeps but not those it
rejects: a volume misfitting a little in some slices was then judged against a stricter
prediction than its neighbours, and runs of clean slices of two or three volumes fell 4-6 SDs
low (0.54-0.66% false alarms on the sub-voxel simulator).

Detection models the signal itself: a dropout then drags the other predictions of its slice by
at most the signal it lost (its log would drag them without bound), and, the model being
linear and the same for every voxel of a slice, the mean prediction over a slice is the
prediction of the slice's mean signal, so detection works on (volumes, slices) means alone.
Each slice's observed minus predicted mean (the prediction scaled by the volume's median ratio
over slices) is standardised across the shell's volumes by a robust scale
(``robust_zscores``); slices more than ``OUTLIER_SD`` below are outliers. Detection is repeated
with each slice's outliers left out of its predictions, for ``N_ROUNDS`` rounds or until the
outliers no longer change. Replacement models the log signal, voxel by voxel, from the slice's
unflagged volumes: a tensor's log signal is exactly of degree 2 (degree 4 adds what one tensor
misses), where the signal itself left a strongly anisotropic b = 2000 slice of the tests'
phantom half its value.

Slices are those of the acquisition: the data must still be on the raw grid (ResampleDWI keeps
it), and ``slice_axis`` is the voxel axis of ``SliceEncodingDirection``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from ketamine_dti.dwi.gradients import B0_THRESHOLD, cluster_shells
from ketamine_dti.dwi.harmonics import even_spherical_harmonics
from ketamine_dti.dwi.motion import PE_AXES
from ketamine_dti.dwi.tensor import DESIGN_RANK_TOLERANCE, ROBUST_SD

LOGGER = logging.getLogger(__name__)

#: A slice is an outlier when its mean signal lies this many robust SDs below the prediction
#: (eddy's default ``--ol_nstd``).
OUTLIER_SD = 4.0
#: Slices with fewer brain voxels are not tested: their mean is too noisy to judge.
MIN_SLICE_VOXELS = 20
#: Shells with fewer diffusion-weighted volumes are not tested: a median and MAD across fewer
#: volumes cannot tell one dropout from the spread (a 6-direction test series flagged a clean
#: slice).
MIN_SHELL_VOLUMES = 10
#: Highest spherical-harmonic degree of the angular model, lowered (to 2 at least) until the
#: shell has twice as many volumes as coefficients (64 directions: 4, 15 coefficients; 20: 2).
#: Chosen on training seeds 3 and 7 (``benchmarks/tuning/slice_predictor.py``): degree 4
#: predicted a left-out voxel best (median |error| 7.09 / 6.68 against 7.94 / 7.50 for degree
#: 2 and 7.63 / 7.12 for 6), with 1 / 0 false alarms in 4224 slices.
SH_DEGREE = 4
#: Laplace-Beltrami penalty per volume fitted: the coefficient of degree l is penalised by
#: n * ANGULAR_SMOOTHING * (l (l + 1))^2 (orthonormal harmonics). Chosen with SH_DEGREE: 10x
#: more raised the left-out error to 7.97 / 7.51, none left it at 7.15 / 6.75.
ANGULAR_SMOOTHING = 1.5e-5
#: Replacement floors the log signal at this fraction of the shell's median brain signal.
LOG_FLOOR = 0.01
#: Rounds of detection at most, each leaving the last round's outliers out of the fits (eddy
#: iterates its outlier replacement likewise).
N_ROUNDS = 4
#: The slice axis when the sidecar does not say (BIDS: the third voxel axis).
DEFAULT_SLICE_AXIS = 2
#: Columns SliceOutliers.confounds adds to the confounds table.
CONFOUND_COLUMNS = ("outlier_slices", "replaced_slices", "tested_slices")


@dataclass(frozen=True)
class SliceOutliers:
    """``data``: the series with outlier slices replaced (the input, ``replace=False``);
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


@dataclass(frozen=True)
class AngularModel:
    """The signal of one shell as a smooth function of direction: even spherical harmonics
    ``basis`` (volumes, coefficients) with a Laplace-Beltrami ``penalty`` per coefficient."""

    basis: np.ndarray
    penalty: np.ndarray

    @classmethod
    def for_directions(cls, bvecs: np.ndarray) -> AngularModel | None:
        """The model of the highest degree <= SH_DEGREE the shell's directions support: twice
        as many volumes as coefficients (degree 2 at least), and full rank without any one
        volume. None when even degree 2 is not determined (e.g. directions along 3 axes)."""
        bvecs = np.asarray(bvecs, dtype=float)
        for degree in range(SH_DEGREE, 0, -2):
            basis, degrees = even_spherical_harmonics(bvecs, degree)
            if degree > 2 and 2 * basis.shape[1] > len(bvecs):
                continue
            if _full_rank_without_any(basis):
                penalty = ANGULAR_SMOOTHING * (degrees * (degrees + 1.0)) ** 2
                return cls(basis=basis, penalty=penalty)
        return None

    def weights(self, kept: np.ndarray) -> np.ndarray:
        """(volumes, kept volumes) linear map from the ``kept`` volumes' signals to every
        volume's prediction: a volume left out is predicted by the fit to the kept ones, a kept
        volume by the fit to the others kept (leave-one-out)."""
        kept = np.asarray(kept, dtype=bool)
        design = self.basis[kept]
        normal = design.T @ design + np.diag(kept.sum() * self.penalty)
        hat = self.basis @ np.linalg.solve(normal, design.T)  # fit to all kept, all volumes
        rows = np.flatnonzero(kept)
        own = hat[rows, np.arange(rows.size)].copy()
        hat[rows, np.arange(rows.size)] = 0.0
        hat[rows] /= (1.0 - own)[:, None]  # r / (1 - h): the residual of the fit without it
        return hat

    def predict(self, values: np.ndarray, left_out: np.ndarray) -> np.ndarray:
        """(volumes, columns) prediction of ``values`` (volumes, columns): in each column, every
        volume from that column's volumes not ``left_out`` (volumes, columns), each of those
        from the others (leave-one-out)."""
        predicted = np.empty(values.shape, dtype=float)
        patterns, which = np.unique(left_out.T, axis=0, return_inverse=True)
        for index, pattern in enumerate(patterns):
            columns = np.flatnonzero(which.ravel() == index)
            kept = ~pattern
            predicted[:, columns] = self.weights(kept) @ values[np.ix_(kept, columns)]
        return predicted


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


def detect(observed: np.ndarray, counts: np.ndarray, model: AngularModel):
    """(outliers, tested, zscores), each (volumes, slices), of one shell from its slice means
    ``observed`` (volumes, slices; NaN for a slice without brain) and brain voxels per slice
    ``counts``. Each round predicts every slice without that slice's outliers of the round
    before, so a slice flagged only because a dropout elsewhere misled the prediction is
    cleared again."""
    usable = (np.asarray(counts) >= MIN_SLICE_VOXELS)[None, :] & np.isfinite(observed)
    values = np.where(usable, observed, 0.0)  # columns are independent: untested ones unused
    left_out = np.zeros(observed.shape, dtype=bool)
    for _ in range(N_ROUNDS):
        expected = model.predict(values, left_out)
        tested = usable & np.isfinite(expected)
        z = robust_zscores(slice_deviations(observed, expected, tested), tested, counts)
        found = np.nan_to_num(z, nan=0.0) < -OUTLIER_SD
        if np.array_equal(found, left_out):
            break
        left_out = found
    return found, tested, z


def replace_slice_outliers(
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    mask: np.ndarray,
    slice_axis: int = DEFAULT_SLICE_AXIS,
    replace: bool = True,
    b0_threshold: float = B0_THRESHOLD,
) -> SliceOutliers:
    """Find the dropped slices of every diffusion-weighted volume of ``data`` (x, y, z, N) and,
    with ``replace``, put the prediction from the slice's other volumes in their brain voxels
    (``mask``). ``bvals`` s/mm^2 (N,), ``bvecs`` (N, 3) in the data's frame (rotated with
    motion correction); b0 volumes are never tested."""
    data = np.asarray(data, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    bvals = np.asarray(bvals, dtype=float)
    bvecs = np.asarray(bvecs, dtype=float)
    n_volumes, n_slices = data.shape[-1], data.shape[slice_axis]
    outliers = np.zeros((n_volumes, n_slices), dtype=bool)
    tested = np.zeros_like(outliers)
    zscores = np.full(outliers.shape, np.nan)
    series = data.copy() if replace else data
    slices = np.moveaxis(series, slice_axis, 0)  # a view: replacements land in ``series``
    brain = np.moveaxis(mask, slice_axis, 0)
    counts = brain.reshape(n_slices, -1).sum(axis=1)
    shells = cluster_shells(bvals, b0_threshold)
    for shell in np.unique(shells[shells > 0]):
        volumes = np.flatnonzero(shells == shell)
        if volumes.size < MIN_SHELL_VOLUMES or not mask.any():
            continue
        model = AngularModel.for_directions(bvecs[volumes])
        if model is None:
            LOGGER.warning("slice outliers: shell b=%g has too few distinct directions to "
                           "predict a volume from the others; not tested", shell)  # fmt: skip
            continue
        blocks = [slices[index][brain[index]][:, volumes] for index in range(n_slices)]
        observed = np.full((volumes.size, n_slices), np.nan)
        for index in np.flatnonzero(counts):
            observed[:, index] = blocks[index].mean(axis=0, dtype=np.float64)
        found, shell_tested, z = detect(observed, counts, model)
        outliers[volumes], tested[volumes], zscores[volumes] = found, shell_tested, z
        if replace:
            _replace(slices, brain, volumes, blocks, model, found)
    return SliceOutliers(data=series, outliers=outliers, tested=tested, zscores=zscores)


def _replace(slices, brain, volumes, blocks, model: AngularModel, flags: np.ndarray) -> None:
    """Put in every flagged (shell volume, slice) of ``flags`` the brain voxels' prediction of
    the log signal from the slice's unflagged volumes of the shell (``blocks``: the shell's
    brain voxels per slice, as detected), the log floored at LOG_FLOOR x the shell's median
    brain signal (denoised voxels can be <= 0)."""
    flagged_slices = np.flatnonzero(flags.any(axis=0))
    if not flagged_slices.size:
        return
    median = float(np.median(np.concatenate([block.ravel() for block in blocks])))
    floor = LOG_FLOOR * max(median, float(np.finfo(np.float32).tiny))
    for index in flagged_slices:
        flagged = flags[:, index]
        logs = np.log(np.maximum(blocks[index][:, ~flagged], floor), dtype=np.float64)
        rows, columns = np.nonzero(brain[index])
        slices[index][rows[:, None], columns[:, None], volumes[flagged]] = np.exp(
            logs @ model.weights(~flagged)[flagged].T
        )


def _full_rank_without_any(basis: np.ndarray) -> bool:
    """Whether the design less any one volume still determines every coefficient (each
    volume is predicted from the others)."""
    for left_out in range(basis.shape[0]):
        singular = np.linalg.svd(np.delete(basis, left_out, axis=0), compute_uv=False)
        if np.sum(singular > DESIGN_RANK_TOLERANCE * singular[0]) < basis.shape[1]:
            return False
    return True
