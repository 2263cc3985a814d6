"""The seven gray-matter regions of Kopelman et al. (2023), and regional MD statistics.

Statistics are computed in each session's native DWI grid on MD maps that were never
resampled: only the atlas labels and tissue probabilities move (``ketamine_dti.anat.transfer``).
Inside each atlas ROI, voxels that are not gray matter are dropped by ``GrayMatterRule``
(documented below), and the number of voxels kept is reported.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

LOGGER = logging.getLogger(__name__)

#: ROI names, in atlas index order (index = position + 1). The group stage relies on them.
ROI_NAMES: tuple[str, ...] = (
    "ba10_left",
    "ba10_right",
    "amygdala_left",
    "amygdala_right",
    "hippocampus_left",
    "hippocampus_right",
    "vacc",
)

#: Columns of the regional statistics table (MD in mm^2/s, FA unitless, counts in voxels).
STAT_COLUMNS: tuple[str, ...] = (
    "roi",
    "index",
    "md_mean",
    "md_median",
    "md_std",
    "n_voxels",
    "n_voxels_atlas",
    "fa_mean",
)

# --- Gray-matter / partial-volume rule -------------------------------------------------------
#: mm^2/s. Adult GM MD is ~0.7-0.9e-3 and free water (CSF) ~3.0e-3 at 37 C; a voxel above
#: 1.5e-3 holds roughly >= 30% CSF, so its MD says more about CSF than about tissue.
MD_CSF_MAX: float = 1.5e-3
#: Unitless. GM FA is ~0.1-0.2 and WM ~0.4-0.8; FA >= 0.3 marks a voxel dominated by WM.
FA_WM_MAX: float = 0.3
#: T1w GM probability (warped to DWI) below which a voxel is mostly WM or CSF: majority rule.
GM_PROB_MIN: float = 0.5
#: T1w CSF fraction (footprint-averaged, warped to DWI) above which a voxel is dropped. CSF
#: (D 3.0e-3, S0 ~2x GM) dominates the mixture: 5% CSF already raises apparent MD by ~10% at
#: b=1000. On a simulated participant, 0.05 cut the median ROI MD error from 4% (0.3) to ~1%.
CSF_PROB_MAX: float = 0.05
#: Smallest number of voxels with which a standard deviation is reported (ddof=1).
MIN_VOXELS_FOR_STD: int = 2


@dataclass(frozen=True)
class GrayMatterRule:
    """Which voxels of an atlas ROI count as gray matter; ``None`` switches a criterion off.

    A voxel is kept if all active criteria hold: ``md < md_max`` (no CSF partial volume),
    ``fa < fa_max`` (not white matter), ``gm_prob >= gm_prob_min`` and
    ``csf_prob <= csf_prob_max`` (T1w tissue probabilities warped to the DWI grid). A
    criterion whose map is not supplied is skipped. Voxels with non-finite or non-positive MD
    (failed fits, outside the brain) are always dropped.
    """

    md_max: float | None = MD_CSF_MAX
    fa_max: float | None = FA_WM_MAX
    gm_prob_min: float | None = GM_PROB_MIN
    csf_prob_max: float | None = CSF_PROB_MAX


def _check_shape(name: str, array: np.ndarray | None, shape: tuple[int, ...]) -> None:
    if array is not None and np.shape(array) != shape:
        raise ValueError(f"{name} has shape {np.shape(array)}, expected {shape} (the MD grid)")


def gray_matter_mask(
    md: np.ndarray,
    fa: np.ndarray | None = None,
    gm_prob: np.ndarray | None = None,
    csf_prob: np.ndarray | None = None,
    rule: GrayMatterRule = GrayMatterRule(),
) -> np.ndarray:
    """Boolean mask of voxels kept by ``rule`` (MD in mm^2/s, FA and probabilities unitless)."""
    md = np.asarray(md, dtype=float)
    for name, array in (("fa", fa), ("gm_prob", gm_prob), ("csf_prob", csf_prob)):
        _check_shape(name, array, md.shape)
    keep = np.isfinite(md) & (md > 0)
    if rule.md_max is not None:
        keep &= md < rule.md_max
    if fa is not None and rule.fa_max is not None:
        keep &= np.nan_to_num(np.asarray(fa, float), nan=np.inf) < rule.fa_max
    if gm_prob is not None and rule.gm_prob_min is not None:
        keep &= np.nan_to_num(np.asarray(gm_prob, float), nan=0.0) >= rule.gm_prob_min
    if csf_prob is not None and rule.csf_prob_max is not None:
        keep &= np.nan_to_num(np.asarray(csf_prob, float), nan=1.0) <= rule.csf_prob_max
    return keep


#: Sidecar description of every column ``regional_statistics`` writes (MD in mm^2/s).
ROI_COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "roi": {"Description": "ROI name (atlas index order)"},
    "index": {"Description": "Atlas index"},
    "md_mean": {"Description": "Mean MD over kept gray-matter voxels", "Units": "mm^2/s"},
    "md_median": {"Description": "Median MD over kept voxels", "Units": "mm^2/s"},
    "md_std": {
        "Description": "Standard deviation (ddof=1) of MD over kept voxels",
        "Units": "mm^2/s",
    },
    "n_voxels": {"Description": "Voxels kept after the gray-matter rule (native DWI grid)"},
    "n_voxels_atlas": {"Description": "Atlas voxels in the brain mask before the rule"},
    "fa_mean": {"Description": "Mean FA over kept voxels"},
}


def regional_statistics(
    md: np.ndarray,
    labels: np.ndarray,
    *,
    fa: np.ndarray | None = None,
    gm_prob: np.ndarray | None = None,
    csf_prob: np.ndarray | None = None,
    brain_mask: np.ndarray | None = None,
    rule: GrayMatterRule = GrayMatterRule(),
    roi_names: Sequence[str] = ROI_NAMES,
) -> pd.DataFrame:
    """Per-ROI MD statistics on the native DWI grid, after the gray-matter rule.

    ``labels``: integer atlas indices (1..len(roi_names), 0 = background) on the MD grid.
    Returns one row per ROI (``roi_names`` order) with ``STAT_COLUMNS``: md_mean, md_median,
    md_std (ddof=1) in mm^2/s, ``n_voxels`` kept, ``n_voxels_atlas`` before exclusion (inside
    ``brain_mask`` if given), fa_mean. An ROI left empty gets NaN statistics, ``n_voxels`` 0
    and a warning; it never raises.
    """
    md = np.asarray(md, dtype=float)
    labels = np.asarray(labels)
    _check_shape("labels", labels, md.shape)
    _check_shape("brain_mask", brain_mask, md.shape)
    if not np.issubdtype(labels.dtype, np.integer):
        rounded = np.rint(labels)
        if not np.allclose(labels[np.isfinite(labels)], rounded[np.isfinite(labels)]):
            raise ValueError("labels must be integer atlas indices")
        labels = np.nan_to_num(rounded, nan=0).astype(np.int64)
    keep = gray_matter_mask(md, fa, gm_prob, csf_prob, rule)
    in_brain = np.ones(md.shape, bool) if brain_mask is None else np.asarray(brain_mask, bool)
    fa_array = None if fa is None else np.asarray(fa, dtype=float)

    rows = []
    for position, name in enumerate(roi_names):
        index = position + 1
        atlas_roi = (labels == index) & in_brain
        kept = atlas_roi & keep
        values = md[kept]
        n_kept = int(values.size)
        row = {
            "roi": name,
            "index": index,
            "md_mean": np.nan,
            "md_median": np.nan,
            "md_std": np.nan,
            "n_voxels": n_kept,
            "n_voxels_atlas": int(atlas_roi.sum()),
            "fa_mean": np.nan,
        }
        if n_kept == 0:
            LOGGER.warning(
                "ROI %s: no voxel left (%d in the atlas ROI before the gray-matter rule); "
                "its statistics are NaN",
                name,
                row["n_voxels_atlas"],
            )
        else:
            row["md_mean"] = float(values.mean())
            row["md_median"] = float(np.median(values))
            if n_kept >= MIN_VOXELS_FOR_STD:
                row["md_std"] = float(values.std(ddof=1))
            if fa_array is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    row["fa_mean"] = float(np.nanmean(fa_array[kept]))
        rows.append(row)
    return pd.DataFrame(rows, columns=list(STAT_COLUMNS))
