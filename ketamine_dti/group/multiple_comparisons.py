"""Multiple-comparison correction, in one place: Benjamini-Hochberg FDR across ROIs.

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


def add_fdr(stats: pd.DataFrame) -> pd.DataFrame:
    """Return ``stats`` with a ``p_fdr`` column right after ``p_value``."""
    p_fdr = np.full(len(stats), np.nan)
    for rows in stats.groupby(list(FDR_FAMILY), sort=False).indices.values():
        p_fdr[rows] = benjamini_hochberg(stats["p_value"].to_numpy()[rows])
    out = stats.copy()
    out.insert(out.columns.get_loc("p_value") + 1, "p_fdr", p_fdr)
    return out
