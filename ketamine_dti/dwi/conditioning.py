"""Input conditioning: one clean DWI series from what scanners and converters really write.

Arrays in, arrays out. Several runs of a session are concatenated volume by volume (each
volume is then motion corrected to the common b0 reference), NaN/Inf voxels are zeroed so
no step propagates them, all-zero volumes (dropped slices of a failed acquisition) are left
out, and the gradient table is normalised (see ``gradients.check_gradient_table``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ketamine_dti.dwi.gradients import B0_THRESHOLD, check_gradient_table


@dataclass(frozen=True)
class ConditionedDWI:
    """The series to preprocess and what was done to it (counted in the QC table)."""

    data: np.ndarray  # (X, Y, Z, N) float32
    bvals: np.ndarray  # (N,) s/mm^2, b0 volumes set to 0
    bvecs: np.ndarray  # (N, 3) unit, FSL convention, zero for b0 volumes
    nonfinite_mask: np.ndarray  # (X, Y, Z) voxels that held NaN/Inf in any volume
    n_zero_volumes: int


def zero_volumes(data: np.ndarray) -> np.ndarray:
    """True for each volume of a 4-D series that is zero everywhere (no signal at all)."""
    data = np.asanyarray(data)
    return np.array([not data[..., k].any() for k in range(data.shape[-1])], dtype=bool)


def condition_dwi(
    runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], b0_threshold: float = B0_THRESHOLD
) -> ConditionedDWI:
    """Concatenate runs (data (X,Y,Z,N_i), bvals, bvecs) and clean the result.

    NaN/Inf voxels are zeroed in every volume (a partial time series would bias the fit);
    all-zero volumes are excluded; b-values at or below ``b0_threshold`` become 0 so every
    later step agrees on which volumes are b0s.
    """
    arrays = [np.asarray(d, dtype=np.float32) for d, _, _ in runs]
    # one run (the usual case) is used as it is: each copy of a standard series is 175 MB
    data = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=3)
    bvals = np.concatenate([np.asarray(b, dtype=float).ravel() for _, b, _ in runs])
    bvecs = np.concatenate([np.asarray(v, dtype=float) for _, _, v in runs], axis=0)
    nonfinite = ~np.isfinite(data).all(axis=3)
    if nonfinite.any():  # a copy, so a caller's array is never changed
        data = np.where(nonfinite[..., None], np.float32(0.0), data)
    keep = ~zero_volumes(data)
    gtab = check_gradient_table(
        bvals[keep], bvecs[keep], int(keep.sum()), b0_threshold=b0_threshold
    )
    clean_bvals = np.where(gtab.b0_mask, 0.0, gtab.bvals)
    return ConditionedDWI(
        data=data if keep.all() else data[..., keep],
        bvals=clean_bvals,
        bvecs=gtab.bvecs,
        nonfinite_mask=nonfinite,
        n_zero_volumes=int((~keep).sum()),
    )


def squeeze_singleton(data: np.ndarray) -> np.ndarray:
    """A 3-D image from a 4-D one with a single volume (converters write some T1ws so)."""
    data = np.asanyarray(data)
    if data.ndim == 4 and data.shape[3] == 1:
        return data[..., 0]
    return data


def exclude_voxels(mask: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """The mask without the excluded voxels (e.g. those that held NaN/Inf and were zeroed)."""
    return np.asarray(mask, dtype=bool) & ~np.asarray(excluded, dtype=bool)
