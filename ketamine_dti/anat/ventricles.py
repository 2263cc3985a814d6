"""Ventricle coverage: do the DWI's own ventricles land on the T1w's deep CSF?

A T1w of another person registers rigidly to a DWI with a brain-mask Dice as high as the right
one (0.87), and its tissue fractions pass every ROI rule (issue 10). What no other person's
T1w reproduces is the shape of the lateral ventricles. The DWI shows them without any model:
deep voxels with free-water MD. This module measures the share of those voxels that fall on
the T1w's CSF after registration. Both sides are anatomy-level and contrast-free (MD against
hard tissue labels), so b-value, distortion and T1w contrast do not move it much: 34 good
sessions (simulated 2 and 4 mm, real 3 mm Prisma with and without SDC) scored 0.75-0.85, the
T1w of another person 0.14-0.39 (docs/qc.md).

Pure functions: arrays in, numbers out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ketamine_dti.anat.morphology import depth_mm
from ketamine_dti.anat.transfer import footprint_sigma_voxels, values_at_voxels

#: A DWI voxel is ventricle-like when its MD exceeds this multiple of the brain's median MD
#: (free water 3.0e-3 mm^2/s at 37 C, brain median 0.7-0.9e-3; a GM/CSF partial-volume voxel
#: must be mostly CSF to pass).
MD_RATIO: float = 2.0
#: mm from the DWI brain mask's edge: sulcal and cisternal CSF near the surface is left out
#: (it depends on the mask and on distortion, not on whose brain it is).
DWI_DEPTH_MM: float = 8.0
#: ml; smaller connected clusters of high-MD voxels are noise or vessels, not ventricles.
MIN_COMPONENT_ML: float = 1.0
#: ml; with less ventricle volume than this (small FOV, tiny ventricles) coverage is n/a.
MIN_VENTRICLE_ML: float = 2.0
#: mm inside the T1w (subject template) brain mask for CSF to count as deep CSF.
T1W_DEPTH_MM: float = 12.0
#: A ventricle voxel is covered when at least this share of its footprint is deep CSF.
COVERED_FRACTION: float = 1.0 / 3.0


def dwi_ventricles(md: np.ndarray, mask: np.ndarray, zooms: Sequence[float]) -> np.ndarray:
    """Boolean map of the DWI's ventricles: deep (``DWI_DEPTH_MM``) mask voxels with MD above
    ``MD_RATIO`` times the brain's median, in clusters of at least ``MIN_COMPONENT_ML``."""
    md = np.asarray(md, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool) & np.isfinite(md)
    if not mask.any():
        return np.zeros(md.shape, dtype=bool)
    zooms = tuple(float(z) for z in zooms[:3])
    median = float(np.median(md[mask & (md > 0)])) if np.any(mask & (md > 0)) else np.inf
    depth = depth_mm(mask, zooms)
    candidates = mask & (depth >= DWI_DEPTH_MM) & (md > MD_RATIO * median)
    labels, n = ndimage.label(candidates)
    if n == 0:
        return candidates
    sizes = np.bincount(labels.ravel())[1:] * float(np.prod(zooms)) / 1000.0
    keep = np.flatnonzero(sizes >= MIN_COMPONENT_ML) + 1
    return np.isin(labels, keep)


def deep_csf_fraction(
    dseg: np.ndarray,
    brain_mask: np.ndarray,
    spacing: Sequence[float],
    dwi_voxel_mm: Sequence[float],
    csf_label: int = 1,
) -> np.ndarray:
    """Share of deep CSF (hard label ``csf_label`` at least ``T1W_DEPTH_MM`` inside the brain
    mask) over a DWI voxel's footprint, on the T1w grid (``spacing`` mm)."""
    mask = np.asarray(brain_mask) > 0
    deep = (np.asarray(dseg) == csf_label) & (depth_mm(mask, tuple(spacing[:3])) >= T1W_DEPTH_MM)
    sigma = footprint_sigma_voxels(spacing, dwi_voxel_mm)
    return ndimage.gaussian_filter(deep.astype(np.float32), sigma, mode="constant")


def ventricle_coverage(
    ventricles: np.ndarray,
    dwi_affine: np.ndarray,
    csf_fraction: np.ndarray,
    t1w_affine: np.ndarray,
    dwi_to_t1w: np.ndarray,
) -> tuple[float, float]:
    """(coverage, ventricle volume ml): the share of ventricle voxels whose centre, mapped by
    ``dwi_to_t1w`` (4x4 RAS+ map of points DWI -> T1w), reads a deep-CSF share of at least
    ``COVERED_FRACTION`` (linear interpolation; 0 outside the T1w grid). Coverage is NaN when
    the ventricles total less than ``MIN_VENTRICLE_ML``."""
    voxel_ml = abs(float(np.linalg.det(np.asarray(dwi_affine)[:3, :3]))) / 1000.0
    points = np.argwhere(ventricles)
    volume = len(points) * voxel_ml
    if volume < MIN_VENTRICLE_ML:
        return float("nan"), volume
    share = values_at_voxels(csf_fraction, t1w_affine, points, dwi_affine, dwi_to_t1w)
    return float(np.mean(share >= COVERED_FRACTION)), volume
