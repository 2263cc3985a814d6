"""DWI brain mask from the b0 reference.

Median filtering plus Otsu's threshold (DIPY's median_otsu) separates brain from background on a
b0, where CSF and tissue are bright and air is dark; the largest connected component with its
holes filled removes eye/neck islands and keeps dark ventricles. Holes are filled in 3-D and
then slice by slice along every axis: a dark region joined to the outside by a channel (the
fourth ventricle through the foramina, a cut field of view) is no 3-D hole, but it is a hole in
most slices. On the real Prisma b = 2500 scan this raised the DWI-T1w mask Dice from 0.841 /
0.864 to 0.869 / 0.883 (same transforms).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

LOGGER = logging.getLogger(__name__)

#: mm; radius of the median filter that smooths noise before Otsu; larger radii erode the
#: brain edge (repeated medians round off convex shapes: 8 mm lost 30% of a phantom at 2 mm).
MEDIAN_RADIUS_MM = 4.0
#: passes of the median filter (DIPY's default).
MEDIAN_PASSES = 4
#: voxels of morphological closing to bridge sulci that Otsu cuts off the brain.
CLOSING_VOXELS = 1


def brain_mask(b0: np.ndarray, zooms: tuple[float, ...]) -> np.ndarray:
    """Boolean brain mask of a 3-D b0 (or mean b0) image with voxel sizes `zooms` (mm)."""
    from dipy.segment.mask import median_otsu

    volume = np.nan_to_num(np.asarray(b0, dtype=np.float32))
    if volume.ndim != 3:
        raise ValueError(f"brain_mask needs a 3-D image, got shape {volume.shape}")
    if not np.any(volume > 0):
        raise ValueError("brain_mask: the b0 image is empty (no positive voxel)")
    radius = max(1, int(round(MEDIAN_RADIUS_MM / float(np.mean(zooms[:3])))))
    _, mask = median_otsu(volume, median_radius=radius, numpass=MEDIAN_PASSES)
    mask = ndimage.binary_closing(mask, iterations=CLOSING_VOXELS)
    labels, n_components = ndimage.label(mask)
    if n_components > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n_components + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return fill_holes_slicewise(ndimage.binary_fill_holes(mask))


def fill_holes_slicewise(mask: np.ndarray) -> np.ndarray:
    """``mask`` with the 2-D holes of every slice along each of the three axes filled (the
    voxel order of the input does not matter)."""
    out = np.asarray(mask, bool).copy()
    for axis in range(3):
        moved = np.moveaxis(out, axis, 0)  # a view: filling it fills ``out``
        for index in range(moved.shape[0]):
            moved[index] = ndimage.binary_fill_holes(moved[index])
    return out
