"""Multiple-comparison correction, in one place: Benjamini-Hochberg FDR and permutation max-T,
both across ROIs.

The family is every ROI of one scale x model x term: the seven regional tests of one
hypothesis. ``treatment_score`` has one test per family, so its FDR p equals its p.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Columns that define one family of tests (the ROIs vary within it).
FDR_FAMILY = ("scale", "model", "term")


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (step-up, monotone, capped at 1); NaN stays NaN and is not counted."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return adjusted
    order = valid[np.argsort(p[valid], kind="stable")]
    ranked = p[order] * m / np.arange(1, m + 1)
    adjusted[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    return adjusted


def add_fdr(
    stats: pd.DataFrame, p_column: str = "p_value", fdr_column: str = "p_fdr"
) -> pd.DataFrame:
    """Return ``stats`` with ``fdr_column`` (BH over each family) right after ``p_column``."""
    p_fdr = np.full(len(stats), np.nan)
    for rows in stats.groupby(list(FDR_FAMILY), sort=False).indices.values():
        p_fdr[rows] = benjamini_hochberg(stats[p_column].to_numpy(float)[rows])
    out = stats.copy()
    out.insert(out.columns.get_loc(p_column) + 1, fdr_column, p_fdr)
    return out


def max_t_adjusted(observed: np.ndarray, null: np.ndarray, tolerance: float) -> np.ndarray:
    """FWER-adjusted permutation p-values of one family by max-T (Westfall & Young 1993;
    Winkler et al. 2014): each test against the permutation distribution of the family's
    largest statistic, so the chance of any false positive in the family is controlled.

    ``observed``: (m,) statistics, larger = more extreme (|t| for two-sided tests); ``null``:
    (B, m), the same for B permutations, applied jointly to the m tests. The observed data
    count as one permutation: p = (1 + #{max_b >= observed}) / (B + 1). ``tolerance``: relative
    slack for ties that differ only by rounding.
    """
    observed = np.asarray(observed, dtype=float)
    maxima = np.sort(np.asarray(null, dtype=float).max(axis=1))
    thresholds = observed * (1.0 - tolerance)
    exceed = maxima.size - np.searchsorted(maxima, thresholds, side="left")
    return (1.0 + exceed) / (maxima.size + 1.0)
