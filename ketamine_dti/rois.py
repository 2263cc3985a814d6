"""The seven gray-matter regions of Kopelman et al. (2023), and regional MD statistics.

Each ROI is one set of subject-template points, chosen once per participant from anatomy alone
(the atlas in the subject template and the template's tissue fractions, ``GrayMatterRule``,
documented below), and read in each session's native DWI grid at the voxel each point falls in
(``ketamine_dti.anat.transfer``): MD maps are never resampled, and a voxel whose MD rose at
24 h cannot leave the 24 h average (issue 13). A point is averaged in every session or in none
(``longitudinal_statistics``): one lost in one session (brain mask, field of view, failed fit)
leaves them all, so dMD compares the same tissue. MD and FA only count voxels for QC
(``n_voxels_md_csf``, ``n_voxels_fa_wm``). An ROI that keeps too little of its atlas volume
(``RetentionRule``) is reported missing, with the reason, instead of as a number. The
free-water maps (free-water-corrected MD, free-water fraction; ``dwi.free_water``), fitted on
the same grid, are averaged over the very points the MD mean uses.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
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
    "csf_fraction_max",
    "fa_mean",
    "md_fwcorr_mean",
    "md_fwcorr_median",
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
    "md_fwcorr_median",
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
#: The loosest cap: an ROI takes the strictest of ``CSF_PROB_STRICTER`` that keeps it.
CSF_PROB_MAX: float = 0.05
#: Stricter CSF caps each ROI tries first, strictest first (``GrayMatterRule.csf_caps``): the
#: CSF a voxel holds changes with the brain's position in the DWI grid, so a point near CSF
#: scatters dMD. Session 46 (``benchmarks/results/gray_matter_rule_session46.md``; training
#: seeds 1, 3, 6): per ROI the strictest of 0, 0.01 and 0.05 that the retention rule keeps moved
#: r(dMD/MD) against the true region by +0.110, -0.019, +0.031 over a single 0.05 (a single
#: 0.01: +0.051, +0.010, +0.016); on the real Prisma PA/AP pair it loses no ROI and the median
#: ROI disagreement falls from 2.32% to 1.48%. 0: no CSF label in the voxel's footprint.
#: Session 47 scored all six training seeds (``gray_matter_rule_session47.md``): the ladder
#: gains +0.017 but measures its own points worse (-0.002), failing the decision rule, which a
#: single cap of 0.01 passes (+0.016, 5 of 6 trials); the App is to switch to it (issue 13).
CSF_PROB_STRICTER: tuple[float, ...] = (0.0, 0.01)
#: Smallest number of voxels with which a standard deviation is reported (ddof=1).
MIN_VOXELS_FOR_STD: int = 2

# --- Voxel retention: when an ROI is missing ---------------------------------------------------
#: Share of an ROI's atlas volume (its subject-template points) that must survive the
#: gray-matter rule and every session's brain mask. The rule reads the tissue of the DWI voxel
#: that holds each point wherever the grid falls (stricter than the voxel centred on it, the
#: rule before session 8), so thin cortex keeps less: on the real Prisma scan (3 mm) BA10 and
#: the vACC keep 21-29% and the other ROIs 54-64%; simulated standard sessions (2 mm) keep
#: 38-80%, tiny ones (4 mm) 26-69%. The failed real registration of round 1 kept 0-4% (0 of
#: 23 to 13 of 333), its "means" sampling whatever tissue the atlas hit. 15% lies between.
ROI_MIN_FRACTION: float = 0.15
#: Fewest kept voxels for a regional mean: below ~10 voxels (80 mm^3 at 2 mm) one misplaced or
#: partial-volume voxel moves the mean by several %, as large as the effect studied.
ROI_MIN_VOXELS: int = 10


@dataclass(frozen=True)
class GrayMatterRule:
    """Which voxels of an atlas ROI count as gray matter, from anatomy alone; ``None``
    switches a criterion off.

    A sample is kept if ``gm_prob >= gm_prob_min`` and ``csf_prob <= csf_prob_max``: the T1w
    tissue fractions of the subject template, averaged over the DWI voxel that holds the
    point (``anat.transfer.containing_voxel_fraction``). A criterion whose map is not supplied
    is skipped. Over several sessions (``longitudinal_statistics``) each ROI takes the
    strictest of ``csf_caps()`` under which the retention rule keeps it in every session.
    """

    gm_prob_min: float | None = GM_PROB_MIN
    csf_prob_max: float | None = CSF_PROB_MAX
    csf_prob_stricter: tuple[float, ...] = CSF_PROB_STRICTER

    def csf_caps(self) -> tuple[float | None, ...]:
        """The CSF caps an ROI tries, strictest first; ``csf_prob_max`` always comes last."""
        if self.csf_prob_max is None:
            return (None,)
        stricter = sorted({cap for cap in self.csf_prob_stricter if cap < self.csf_prob_max})
        return (*stricter, self.csf_prob_max)

    def csf_caps_text(self) -> str:
        """The caps as the methods text and sidecars name them ("0, 0.01 and 0.05")."""
        caps = [f"{cap:g}" for cap in self.csf_caps()]
        return caps[0] if len(caps) == 1 else f"{', '.join(caps[:-1])} and {caps[-1]}"

    def at_csf_cap(self, cap: float | None) -> GrayMatterRule:
        """The same rule with one CSF cap."""
        return GrayMatterRule(self.gm_prob_min, cap, ())


@dataclass(frozen=True)
class RetentionRule:
    """When an ROI counts as missing: it kept < ``min_fraction`` of its atlas voxels or
    < ``min_voxels`` voxels (``Config.roi_min_fraction``/``roi_min_voxels``)."""

    min_fraction: float = ROI_MIN_FRACTION
    min_voxels: int = ROI_MIN_VOXELS

    def missing_reason(
        self, n_kept: int, n_atlas: int, fraction: float | None = None
    ) -> str | None:
        """Why an ROI with `n_kept` of `n_atlas` atlas voxels is missing; None if it is not.

        ``fraction``: the share of the ROI's volume kept, when the voxels are samples of
        unequal weight (subject-template points in DWI voxels); default n_kept / n_atlas.
        """
        if n_atlas == 0:
            return "no atlas voxel on the DWI grid"
        volume = fraction is not None
        fraction = n_kept / n_atlas if fraction is None else fraction
        kept = f"kept {n_kept} of {n_atlas} atlas voxels"
        if fraction < self.min_fraction:
            share = " of its volume" if volume else ""
            return f"{kept} ({100 * fraction:.1f}%{share} < {100 * self.min_fraction:g}%)"
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
    "md_mean": {
        "Description": "Mean MD over the ROI's kept subject-template points, each read at the "
        "DWI voxel it falls in (a voxel holding k points weighs k times)",
        "Units": "mm^2/s",
    },
    "md_median": {
        "Description": "Median MD over the kept points (a point weighs as md_mean's): robust to "
        "the few voxels whose partial volume with CSF the tissue maps missed, which skew the "
        "mean upward by different amounts in different sessions",
        "Units": "mm^2/s",
    },
    "md_std": {
        "Description": "Standard deviation (ddof=1) of MD over the kept points",
        "Units": "mm^2/s",
    },
    "n_voxels": {
        "Description": "DWI voxels averaged: those holding points kept by the gray-matter rule "
        "(anatomy alone) that lie in every session's DWI brain mask with a successful tensor "
        "fit in every session (the same points in every session)"
    },
    "n_voxels_brain": {
        "Description": "DWI voxels holding atlas points inside every session's DWI brain "
        "mask, before the rule"
    },
    "n_voxels_atlas": {"Description": "DWI voxels holding the ROI's atlas points"},
    "fraction_kept": {
        "Description": "Share of the ROI's atlas points (its volume in the subject template) "
        "that are averaged"
    },
    "csf_fraction_max": {
        "Description": "The CSF cap the ROI's points met: the largest CSF fraction of the DWI "
        "voxel holding a point (the template's hard tissue labels over its footprint) that was "
        "kept. The strictest of the rule's caps under which the ROI kept enough of its atlas "
        "volume in every session (the same for all sessions; anatomy alone)"
    },
    "fa_mean": {"Description": "Mean FA over the kept points"},
    "md_fwcorr_mean": {
        "Description": "Mean free-water-corrected MD (tissue compartment of the free-water "
        "model, model-fwdti_param-md) over the same kept voxels as md_mean, except those whose "
        "free-water fit left no tissue (n_voxels_fw_no_tissue)",
        "Units": "mm^2/s",
    },
    "md_fwcorr_median": {
        "Description": "Median free-water-corrected MD over the same voxels as md_fwcorr_mean",
        "Units": "mm^2/s",
    },
    "fw_fraction_mean": {
        "Description": "Mean free-water signal fraction (model-fwdti_param-fwf; 0..1, single "
        "shell negative below the gray-matter b0 reference: the map sidecar's "
        "FreeWaterFractionRange) over the "
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
    fw_usable: np.ndarray | None = None,
    fitted: np.ndarray | None = None,
    displacement_mm: np.ndarray | None = None,
    jacobian: np.ndarray | None = None,
    voxel: np.ndarray | None = None,
    rule: GrayMatterRule = GrayMatterRule(),
    retention: RetentionRule = RetentionRule(),
    roi_names: Sequence[str] = ROI_NAMES,
    csf_caps: Mapping[str, float | None] | None = None,
) -> pd.DataFrame:
    """Per-ROI MD statistics after the gray-matter rule.

    Every array has one element per sample: a voxel of the MD grid, or (``voxel`` given) a
    subject-template point with the flat index of the DWI voxel it falls in, so that a DWI
    voxel holding k points weighs k times (``regions.py``). ``labels``: integer atlas
    indices (1..len(roi_names), 0 = background). Returns one row per ROI (``roi_names`` order)
    with ``STAT_COLUMNS``: md_mean, md_median, md_std (ddof=1) in mm^2/s over the kept samples,
    ``n_voxels`` averaged, ``n_voxels_brain`` inside ``brain_mask`` before the rule,
    ``n_voxels_atlas`` (distinct voxels, all three), ``fraction_kept`` (of the ROI's samples,
    i.e. its volume), fa_mean, md_fwcorr_mean/md_fwcorr_median/fw_fraction_mean (of
    ``fw_md``/``fw_fraction``
    over the kept samples that are also ``fw_usable``; n/a when not given), the QC counts,
    ``n_voxels_fit_failed`` (kept by the rule but not ``fitted``, default: this MD's own
    successful fits),
    the susceptibility distortion over the atlas samples (of ``displacement_mm``/``jacobian``;
    n/a when not given) and ``status``/``reason``. ``csf_caps``: per ROI name, the CSF cap
    applied instead of ``rule.csf_prob_max`` (``longitudinal_statistics``' choice); the cap
    used is the ``csf_fraction_max`` column (n/a without ``csf_prob``).
    Which samples are averaged depends on the labels, the brain mask and the tissue maps only
    (plus a successful tensor fit), never on the MD, FA or free-water values. An ROI that
    fails ``retention`` is missing: NaN statistics and a warning naming the reason; it never
    raises.
    """
    md = np.asarray(md, dtype=float)
    labels = np.asarray(labels)
    for name, array in (("labels", labels), ("brain_mask", brain_mask), ("voxel", voxel),
                        ("fitted", fitted)):  # fmt: skip
        _check_shape(name, array, md.shape)
    if not np.issubdtype(labels.dtype, np.integer):
        rounded = np.rint(labels)
        if not np.allclose(labels[np.isfinite(labels)], rounded[np.isfinite(labels)]):
            raise ValueError("labels must be integer atlas indices")
        labels = np.nan_to_num(rounded, nan=0).astype(np.int64)
    caps = {name: rule.csf_prob_max for name in roi_names} | dict(csf_caps or {})
    keep = {
        cap: gray_matter_mask(gm_prob, csf_prob, rule.at_csf_cap(cap), md.shape)
        for cap in set(caps.values())
    }
    for name, array in (("fa", fa), ("fw_md", fw_md), ("fw_fraction", fw_fraction),
                        ("fw_usable", fw_usable), ("displacement_mm", displacement_mm),
                        ("jacobian", jacobian)):  # fmt: skip
        _check_shape(name, array, md.shape)
    free_water = {
        name: None if array is None else np.asarray(array, dtype=float)
        for name, array in (("md_fwcorr_mean", fw_md), ("fw_fraction_mean", fw_fraction))
    }
    in_brain = np.ones(md.shape, bool) if brain_mask is None else np.asarray(brain_mask, bool)
    fw_ok = np.ones(md.shape, bool) if fw_usable is None else np.asarray(fw_usable, bool)
    fa_array = None if fa is None else np.asarray(fa, dtype=float)
    voxels = _VoxelCounter(voxel)
    fitted = valid_fit(md) if fitted is None else np.asarray(fitted, bool) & valid_fit(md)
    rows = []
    for position, name in enumerate(roi_names):
        atlas_roi = labels == position + 1
        selected = atlas_roi & in_brain & keep[caps[name]]
        row = _roi_row(md, fa_array, atlas_roi, selected & fitted, retention, voxels)
        no_cap = csf_prob is None or caps[name] is None
        row["csf_fraction_max"] = np.nan if no_cap else caps[name]
        if row["status"] == ROI_OK:
            row |= _free_water_means(free_water, selected & fitted & fw_ok, voxels)
        row["n_voxels_fit_failed"] = voxels.count(selected & ~fitted)
        row |= {"roi": name, "index": position + 1,
                "n_voxels_brain": voxels.count(atlas_roi & in_brain)}  # fmt: skip
        row |= _distortion(displacement_mm, jacobian, atlas_roi)
        if row["status"] == ROI_MISSING:
            LOGGER.warning("ROI %s is missing: %s; its statistics are n/a", name, row["reason"])
        rows.append(row)
    return pd.DataFrame(rows, columns=list(STAT_COLUMNS))


class _VoxelCounter:
    """Counts distinct voxels among selected samples (each sample its own voxel if no ids)."""

    def __init__(self, voxel: np.ndarray | None):
        self.voxel = None if voxel is None else np.asarray(voxel)

    def count(self, selected: np.ndarray) -> int:
        if self.voxel is None:
            return int(np.count_nonzero(selected))
        return int(np.unique(self.voxel[selected]).size)


def _distortion(displacement_mm, jacobian, atlas_roi: np.ndarray) -> dict:
    """How much susceptibility distortion the ROI's atlas samples had (n/a if not corrected)."""
    row = {}
    if displacement_mm is not None:
        values = np.abs(np.asarray(displacement_mm, dtype=float)[atlas_roi])
        if np.isfinite(values).any():
            row["sdc_displacement_mm"] = float(np.nanmedian(values))
    if jacobian is not None:
        values = np.asarray(jacobian, dtype=float)[atlas_roi]
        values = values[np.isfinite(values)]
        if values.size:
            row["sdc_severe_fraction"] = float((np.abs(values - 1.0) > SEVERE_JACOBIAN).mean())
    return row


def longitudinal_statistics(
    samples: Sequence[dict[str, np.ndarray]],
    retention: RetentionRule = RetentionRule(),
    roi_names: Sequence[str] = ROI_NAMES,
    rule: GrayMatterRule = GrayMatterRule(),
) -> tuple[list[pd.DataFrame], list[np.ndarray]]:
    """One participant's ROI tables, one per session, all over one voxel set.

    Each entry of ``samples`` is one session's reading of the same subject-template points
    (``label``; the ``gm``/``csf`` shares of the rule; the DWI ``voxel`` each falls in,
    ``in_brain``; the maps' values ``md``, ``fa``, and when present ``fw_md``,
    ``fw_fraction``, ``displacement``, ``jacobian``). A point is averaged in every session or
    in none: it must lie in the DWI brain mask (with data) and have a successful tensor fit in
    all of them, so a voxel lost at 24 h (field of view, mask) leaves the baseline mean too and
    dMD compares the same tissue. Returns the tables and each session's averaged points.
    """
    if not samples:
        raise ValueError("no session to measure")
    labels = samples[0]["label"]
    if any(not np.array_equal(session["label"], labels) for session in samples[1:]):
        raise ValueError("the sessions sampled different ROI points (not one subject template)")
    in_brain = np.logical_and.reduce([session["in_brain"] for session in samples])
    fitted = np.logical_and.reduce([valid_fit(session["md"]) for session in samples])
    fw_usable = None
    if all("fw_fraction" in session for session in samples):
        fw_usable = np.logical_and.reduce(
            [np.isfinite(session["fw_fraction"]) for session in samples]
        )
    usable = (labels > 0) & in_brain & fitted
    gray = {
        cap: gray_matter_mask(samples[0]["gm"], samples[0]["csf"], rule.at_csf_cap(cap))
        for cap in rule.csf_caps()
    }
    counters = [_VoxelCounter(session["voxel"]) for session in samples]
    caps = {
        name: _strictest_cap(labels == index, usable, gray, retention, counters)
        for index, name in enumerate(roi_names, start=1)
    }
    tables = [
        regional_statistics(
            session["md"],
            labels,
            fa=session.get("fa"),
            fw_md=session.get("fw_md"),
            fw_fraction=session.get("fw_fraction"),
            gm_prob=session["gm"],
            csf_prob=session["csf"],
            brain_mask=in_brain,
            fw_usable=fw_usable,
            fitted=fitted,
            displacement_mm=session.get("displacement"),
            jacobian=session.get("jacobian"),
            voxel=session["voxel"],
            rule=rule,
            retention=retention,
            roi_names=roi_names,
            csf_caps=caps,
        )
        for session in samples
    ]
    averaged = np.zeros(labels.shape, bool)
    for index, cap in enumerate(caps.values(), start=1):
        averaged |= (labels == index) & gray[cap]
    averaged &= usable
    return tables, [averaged.copy() for _ in samples]


def _strictest_cap(
    atlas_roi: np.ndarray,
    usable: np.ndarray,
    gray: dict[float | None, np.ndarray],
    retention: RetentionRule,
    counters: Sequence[_VoxelCounter],
) -> float | None:
    """The first CSF cap of ``gray`` (strictest first) under which the ROI's usable points
    pass ``retention`` in every session (each its own DWI voxels), else the loosest: tissue
    shares and masks decide, never the values measured."""
    for cap, mask in gray.items():
        kept = atlas_roi & usable & mask
        if all(_retention(atlas_roi, kept, retention, voxels)[3] is None for voxels in counters):
            return cap
    return next(reversed(gray))


def _free_water_means(
    maps: dict[str, np.ndarray | None], kept: np.ndarray, voxels: _VoxelCounter
) -> dict:
    """Means of the free-water maps (and the corrected MD's median) over an ROI's kept samples
    (the MD mean's, less those the free-water fit left unusable), ignoring samples without a
    value, and how many kept voxels have no free-water-corrected MD."""
    row = {}
    for column, values in maps.items():
        if values is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN ROI: n/a
                row[column] = float(np.nanmean(values[kept]))
                if column == "md_fwcorr_mean":
                    row["md_fwcorr_median"] = float(np.nanmedian(values[kept]))
    if maps["md_fwcorr_mean"] is not None:
        row["n_voxels_fw_no_tissue"] = voxels.count(kept & ~valid_fit(maps["md_fwcorr_mean"]))
    return row


def _retention(
    atlas_roi: np.ndarray, kept: np.ndarray, retention: RetentionRule, voxels: _VoxelCounter
) -> tuple[int, int, float, str | None]:
    """Kept and atlas voxels, the kept share of the ROI's samples, and why the ROI is missing
    (None if it is not)."""
    n_kept, n_atlas = voxels.count(kept), voxels.count(atlas_roi)
    n_samples = int(np.count_nonzero(atlas_roi))
    fraction = np.count_nonzero(kept) / n_samples if n_samples else np.nan
    reason = retention.missing_reason(
        n_kept, n_atlas, None if voxels.voxel is None or not n_samples else fraction
    )
    return n_kept, n_atlas, fraction, reason


def _roi_row(
    md: np.ndarray,
    fa: np.ndarray | None,
    atlas_roi: np.ndarray,
    kept: np.ndarray,
    retention: RetentionRule,
    voxels: _VoxelCounter,
) -> dict:
    """Statistics of one ROI's kept samples, or n/a with the reason it is missing."""
    n_kept, n_atlas, fraction, reason = _retention(atlas_roi, kept, retention, voxels)
    row = dict.fromkeys(ROI_STATISTICS, np.nan) | {
        "n_voxels": n_kept,
        "n_voxels_atlas": n_atlas,
        "fraction_kept": fraction,
        "status": ROI_OK,
        "reason": None,
    }
    if reason is not None:
        return row | {"status": ROI_MISSING, "reason": reason}
    values = md[kept]
    row["n_voxels_md_csf"] = voxels.count(kept & (md >= MD_CSF_MAX))
    if fa is not None:
        row["n_voxels_fa_wm"] = voxels.count(kept & (np.nan_to_num(fa, nan=0.0) >= FA_WM_MAX))
    row["md_mean"] = float(values.mean())
    row["md_median"] = float(np.median(values))
    if n_kept >= MIN_VOXELS_FOR_STD:
        row["md_std"] = float(values.std(ddof=1))
    if fa is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            row["fa_mean"] = float(np.nanmean(fa[kept]))
    return row
