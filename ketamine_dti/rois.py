"""The seven gray-matter regions of Kopelman et al. (2023), and regional MD statistics.

Statistics are computed in each session's native DWI grid on MD maps that were never
resampled: only the atlas labels and tissue fractions move (``ketamine_dti.anat.transfer``).
Inside each atlas ROI, voxels that are not gray matter are dropped by ``GrayMatterRule``
(documented below). The rule reads anatomy alone (the T1w tissue fractions of the subject
template moved onto the DWI grid), never the MD or FA being measured: a voxel whose MD rose at
24 h must not leave the 24 h average (issue 13). MD and FA only count voxels for QC
(``n_voxels_md_csf``, ``n_voxels_fa_wm``). An ROI that keeps too few of its atlas voxels
(``RetentionRule``) is reported missing, with the reason, instead of as a number. The
free-water maps (free-water-corrected MD, free-water fraction; ``dwi.free_water``), fitted on the
same grid, are averaged over the very voxels the MD mean uses.
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

#: Columns of the regional statistics table (MD in mm^2/s, FA and free-water fraction
#: unitless, counts in voxels).
STAT_COLUMNS: tuple[str, ...] = (
    "roi",
    "index",
    "md_mean",
    "md_median",
    "md_std",
    "n_voxels",
    "n_voxels_brain",
    "n_voxels_atlas",
    "fraction_kept",
    "fa_mean",
    "md_fwcorr_mean",
    "fw_fraction_mean",
    "n_voxels_fit_failed",
    "n_voxels_md_csf",
    "n_voxels_fa_wm",
    "n_voxels_fw_no_tissue",
    "sdc_displacement_mm",
    "sdc_severe_fraction",
    "status",
    "reason",
)
#: |Jacobian - 1| above which susceptibility distortion compressed or stretched a voxel's
#: signal by more than half: its corrected value rests on little (or smeared) signal.
SEVERE_JACOBIAN = 0.5
#: ``status`` of an ROI whose statistics are reported, and of one reported missing (n/a).
ROI_OK, ROI_MISSING = "ok", "missing"
#: Statistics columns that are n/a when an ROI is missing.
ROI_STATISTICS: tuple[str, ...] = (
    "md_mean",
    "md_median",
    "md_std",
    "fa_mean",
    "md_fwcorr_mean",
    "fw_fraction_mean",
    "n_voxels_md_csf",
    "n_voxels_fa_wm",
    "n_voxels_fw_no_tissue",
)

# --- QC counts (never selection) --------------------------------------------------------------
#: mm^2/s. Adult GM MD is ~0.7-0.9e-3 and free water (CSF) ~3.0e-3 at 37 C; a voxel above
#: 1.5e-3 holds roughly >= 30% CSF. Kept voxels above it are counted (``n_voxels_md_csf``).
MD_CSF_MAX: float = 1.5e-3
#: Unitless. GM FA is ~0.1-0.2 and WM ~0.4-0.8; kept voxels at FA >= 0.3 look like WM and are
#: counted (``n_voxels_fa_wm``): many of them mean the tissue maps and the DWI disagree.
FA_WM_MAX: float = 0.3

# --- Gray-matter / partial-volume rule (anatomy) -----------------------------------------------
#: GM fraction of a DWI voxel (share of its footprint the T1w segmentation labels GM) below which
#: the voxel is mostly WM or CSF: majority rule.
GM_PROB_MIN: float = 0.5
#: CSF fraction of a DWI voxel (share of its footprint labelled CSF) above which it is dropped. CSF
#: (D 3.0e-3, S0 ~2x GM) dominates the mixture: 5% CSF already raises apparent MD by ~10% at
#: b=1000. On a simulated participant, 0.05 cut the median ROI MD error from 4% (0.3) to ~1%.
CSF_PROB_MAX: float = 0.05
#: Smallest number of voxels with which a standard deviation is reported (ddof=1).
MIN_VOXELS_FOR_STD: int = 2

# --- Voxel retention: when an ROI is missing ---------------------------------------------------
#: Fraction of an ROI's atlas voxels (on the DWI grid) that must survive the brain mask and the
#: gray-matter rule. Well-registered simulated sessions keep 24-71% of each ROI at 4 mm (the
#: frontal pole least); the failed real registration kept 0-4% (0 of 23 to 13 of 333), so its
#: "means" sampled whatever tissue the atlas hit.
ROI_MIN_FRACTION: float = 0.3
#: Fewest kept voxels for a regional mean: below ~10 voxels (80 mm^3 at 2 mm) one misplaced or
#: partial-volume voxel moves the mean by several %, as large as the effect studied.
ROI_MIN_VOXELS: int = 10


@dataclass(frozen=True)
class GrayMatterRule:
    """Which voxels of an atlas ROI count as gray matter, from anatomy alone; ``None``
    switches a criterion off.

    A voxel is kept if ``gm_prob >= gm_prob_min`` and ``csf_prob <= csf_prob_max`` (T1w
    tissue fractions of the subject template, moved onto the DWI grid). A criterion whose map
    is not supplied is skipped.
    """

    gm_prob_min: float | None = GM_PROB_MIN
    csf_prob_max: float | None = CSF_PROB_MAX


@dataclass(frozen=True)
class RetentionRule:
    """When an ROI counts as missing: it kept < ``min_fraction`` of its atlas voxels or
    < ``min_voxels`` voxels (``Config.roi_min_fraction``/``roi_min_voxels``)."""

    min_fraction: float = ROI_MIN_FRACTION
    min_voxels: int = ROI_MIN_VOXELS

    def missing_reason(self, n_kept: int, n_atlas: int) -> str | None:
        """Why an ROI with `n_kept` of `n_atlas` atlas voxels is missing; None if it is not."""
        if n_atlas == 0:
            return "no atlas voxel on the DWI grid"
        fraction = n_kept / n_atlas
        kept = f"kept {n_kept} of {n_atlas} atlas voxels"
        if fraction < self.min_fraction:
            return f"{kept} ({100 * fraction:.1f}% < {100 * self.min_fraction:g}%)"
        if n_kept < max(self.min_voxels, 1):  # an empty ROI is missing whatever the rule
            return f"{kept} ({n_kept} < {max(self.min_voxels, 1)} voxels)"
        return None


def _check_shape(name: str, array: np.ndarray | None, shape: tuple[int, ...]) -> None:
    if array is not None and np.shape(array) != shape:
        raise ValueError(f"{name} has shape {np.shape(array)}, expected {shape} (the MD grid)")


def gray_matter_mask(
    gm_prob: np.ndarray | None,
    csf_prob: np.ndarray | None,
    rule: GrayMatterRule = GrayMatterRule(),
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Boolean mask of voxels kept by ``rule`` (probabilities unitless; ``shape`` when no map
    is given)."""
    if shape is None:
        shape = np.shape(gm_prob if gm_prob is not None else csf_prob)
    for name, array in (("gm_prob", gm_prob), ("csf_prob", csf_prob)):
        _check_shape(name, array, shape)
    keep = np.ones(shape, bool)
    if gm_prob is not None and rule.gm_prob_min is not None:
        keep &= np.nan_to_num(np.asarray(gm_prob, float), nan=0.0) >= rule.gm_prob_min
    if csf_prob is not None and rule.csf_prob_max is not None:
        keep &= np.nan_to_num(np.asarray(csf_prob, float), nan=1.0) <= rule.csf_prob_max
    return keep


def valid_fit(md: np.ndarray) -> np.ndarray:
    """Voxels whose tensor fit gave an MD (finite and positive): a failed fit has no value to
    average. Counted per ROI as ``n_voxels_fit_failed``."""
    md = np.asarray(md, dtype=float)
    return np.isfinite(md) & (md > 0)


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
    "n_voxels": {
        "Description": "Voxels averaged: atlas voxels in the DWI brain mask kept by the "
        "gray-matter rule (anatomy alone) whose tensor fit succeeded (native DWI grid)"
    },
    "n_voxels_brain": {"Description": "Atlas voxels inside the DWI brain mask, before the rule"},
    "n_voxels_atlas": {
        "Description": "Atlas voxels of the ROI on the DWI grid, before the brain mask and rule"
    },
    "fraction_kept": {"Description": "n_voxels / n_voxels_atlas"},
    "fa_mean": {"Description": "Mean FA over kept voxels"},
    "md_fwcorr_mean": {
        "Description": "Mean free-water-corrected MD (tissue compartment of the free-water "
        "model, model-fwdti_param-md) over the same kept voxels as md_mean, except those whose "
        "free-water fit left no tissue (n_voxels_fw_no_tissue)",
        "Units": "mm^2/s",
    },
    "fw_fraction_mean": {
        "Description": "Mean free-water signal fraction (model-fwdti_param-fwf, 0..1) over the "
        "same kept voxels as md_mean (free-water voxels count as 1; failed fits are left out)"
    },
    "n_voxels_fit_failed": {
        "Description": "Voxels kept by the rule whose MD is not finite and positive (failed "
        "fit): not averaged"
    },
    "n_voxels_md_csf": {
        "Description": f"Averaged voxels with MD >= {MD_CSF_MAX} mm^2/s (CSF-like; QC only, "
        "never used to select voxels)"
    },
    "n_voxels_fa_wm": {
        "Description": f"Averaged voxels with FA >= {FA_WM_MAX} (WM-like; QC only, never used "
        "to select voxels)"
    },
    "n_voxels_fw_no_tissue": {
        "Description": "Averaged voxels whose free-water fit found pure free water or failed: "
        "no free-water-corrected MD, so not in md_fwcorr_mean (QC only, never used to select "
        "voxels)"
    },
    "sdc_displacement_mm": {
        "Description": "Median |susceptibility displacement| along phase encoding over the "
        "ROI's atlas voxels, as corrected (n/a without distortion correction)",
        "Units": "mm",
    },
    "sdc_severe_fraction": {
        "Description": f"Fraction of the ROI's atlas voxels whose distortion Jacobian J has "
        f"|J - 1| > {SEVERE_JACOBIAN} (severe compression or stretch; n/a without distortion "
        "correction): a region distortion destroyed can be excluded"
    },
    "status": {
        "Description": "Whether the ROI's statistics are reported",
        "Levels": {
            ROI_OK: "enough atlas voxels kept",
            ROI_MISSING: "too few atlas voxels kept: statistics are n/a (see reason)",
        },
    },
    "reason": {"Description": "Why a missing ROI is missing (n/a when status is ok)"},
}


def regional_statistics(
    md: np.ndarray,
    labels: np.ndarray,
    *,
    fa: np.ndarray | None = None,
    fw_md: np.ndarray | None = None,
    fw_fraction: np.ndarray | None = None,
    gm_prob: np.ndarray | None = None,
    csf_prob: np.ndarray | None = None,
    brain_mask: np.ndarray | None = None,
    displacement_mm: np.ndarray | None = None,
    jacobian: np.ndarray | None = None,
    rule: GrayMatterRule = GrayMatterRule(),
    retention: RetentionRule = RetentionRule(),
    roi_names: Sequence[str] = ROI_NAMES,
) -> pd.DataFrame:
    """Per-ROI MD statistics on the native DWI grid, after the gray-matter rule.

    ``labels``: integer atlas indices (1..len(roi_names), 0 = background) on the MD grid.
    Returns one row per ROI (``roi_names`` order) with ``STAT_COLUMNS``: md_mean, md_median,
    md_std (ddof=1) in mm^2/s, ``n_voxels`` averaged, ``n_voxels_brain`` inside
    ``brain_mask`` before the rule, ``n_voxels_atlas`` on the grid, ``fraction_kept``,
    fa_mean, md_fwcorr_mean/fw_fraction_mean (of ``fw_md``/``fw_fraction``, the free-water
    maps on the same grid; n/a when not given), the QC counts, the susceptibility
    distortion over the atlas voxels (of ``displacement_mm``/``jacobian``, the corrected
    displacement and its Jacobian; n/a when not given) and ``status``/``reason``.
    Which voxels are averaged depends on the labels, the brain mask and the tissue maps only
    (plus a successful tensor fit), never on the MD, FA or free-water values; the free-water
    means use those same voxels, less any the free-water fit left without a value. An ROI that
    fails ``retention`` is missing: NaN statistics and a warning naming the reason; it never
    raises.
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
    keep = gray_matter_mask(gm_prob, csf_prob, rule, md.shape)
    _check_shape("fa", fa, md.shape)
    _check_shape("fw_md", fw_md, md.shape)
    _check_shape("fw_fraction", fw_fraction, md.shape)
    _check_shape("displacement_mm", displacement_mm, md.shape)
    _check_shape("jacobian", jacobian, md.shape)
    free_water = {
        name: None if array is None else np.asarray(array, dtype=float)
        for name, array in (("md_fwcorr_mean", fw_md), ("fw_fraction_mean", fw_fraction))
    }
    in_brain = np.ones(md.shape, bool) if brain_mask is None else np.asarray(brain_mask, bool)
    fa_array = None if fa is None else np.asarray(fa, dtype=float)
    fitted = valid_fit(md)
    rows = []
    for position, name in enumerate(roi_names):
        atlas_roi = labels == position + 1
        selected = atlas_roi & in_brain & keep
        row = _roi_row(md, fa_array, atlas_roi, selected & fitted, retention)
        if row["status"] == ROI_OK:
            row |= _free_water_means(free_water, selected & fitted)
        row["n_voxels_fit_failed"] = int((selected & ~fitted).sum())
        in_mask = int((atlas_roi & in_brain).sum())
        row |= {"roi": name, "index": position + 1, "n_voxels_brain": in_mask}
        row |= _distortion(displacement_mm, jacobian, atlas_roi)
        if row["status"] == ROI_MISSING:
            LOGGER.warning("ROI %s is missing: %s; its statistics are n/a", name, row["reason"])
        rows.append(row)
    return pd.DataFrame(rows, columns=list(STAT_COLUMNS))


def _distortion(displacement_mm, jacobian, atlas_roi: np.ndarray) -> dict:
    """How much susceptibility distortion the ROI's atlas voxels had (n/a if not corrected)."""
    row = {}
    if displacement_mm is not None and atlas_roi.any():
        row["sdc_displacement_mm"] = float(np.median(np.abs(displacement_mm[atlas_roi])))
    if jacobian is not None and atlas_roi.any():
        severe = np.abs(np.asarray(jacobian, dtype=float)[atlas_roi] - 1.0) > SEVERE_JACOBIAN
        row["sdc_severe_fraction"] = float(severe.mean())
    return row


def _free_water_means(maps: dict[str, np.ndarray | None], kept: np.ndarray) -> dict:
    """Means of the free-water maps over an ROI's kept voxels (the MD mean's), ignoring the
    voxels without a value, and how many kept voxels have no free-water-corrected MD."""
    row = {}
    for column, values in maps.items():
        if values is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN ROI: n/a
                row[column] = float(np.nanmean(values[kept]))
    if maps["md_fwcorr_mean"] is not None:
        row["n_voxels_fw_no_tissue"] = int((~valid_fit(maps["md_fwcorr_mean"][kept])).sum())
    return row


def _roi_row(
    md: np.ndarray,
    fa: np.ndarray | None,
    atlas_roi: np.ndarray,
    kept: np.ndarray,
    retention: RetentionRule,
) -> dict:
    """Statistics of one ROI's kept voxels, or n/a with the reason it is missing."""
    n_kept, n_atlas = int(kept.sum()), int(atlas_roi.sum())
    row = dict.fromkeys(ROI_STATISTICS, np.nan) | {
        "n_voxels": n_kept,
        "n_voxels_atlas": n_atlas,
        "fraction_kept": n_kept / n_atlas if n_atlas else np.nan,
        "status": ROI_OK,
        "reason": None,
    }
    reason = retention.missing_reason(n_kept, n_atlas)
    if reason is not None:
        return row | {"status": ROI_MISSING, "reason": reason}
    values = md[kept]
    row["n_voxels_md_csf"] = int((values >= MD_CSF_MAX).sum())
    if fa is not None:
        row["n_voxels_fa_wm"] = int((np.nan_to_num(fa[kept], nan=0.0) >= FA_WM_MAX).sum())
    row["md_mean"] = float(values.mean())
    row["md_median"] = float(np.median(values))
    if n_kept >= MIN_VOXELS_FOR_STD:
        row["md_std"] = float(values.std(ddof=1))
    if fa is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            row["fa_mean"] = float(np.nanmean(fa[kept]))
    return row
