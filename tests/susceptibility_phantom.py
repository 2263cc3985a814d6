"""An analytic susceptibility field and a textured head phantom distorted by it, written
independently of ``ketamine_dti.dwi.susceptibility`` (scipy's map_coordinates and a
bisection inverting the displacement), for its tests and benchmark."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Gaussian bumps (centre as a fraction of the grid, width in mm, peak in Hz): the frontal
#: sinus in front of and below the centre, the two ear canals/mastoids low and lateral.
BUMPS = (
    ((0.50, 0.85, 0.30), 14.0, 120.0),
    ((0.18, 0.45, 0.22), 11.0, -60.0),
    ((0.82, 0.45, 0.22), 11.0, -60.0),
)
#: a seeded field moves each bump's centre by up to this fraction of the grid per axis and
#: scales its peak by 1 +- this fraction, so that seeds differ in the field, not only noise.
CENTRE_JITTER = 0.05
PEAK_JITTER = 0.25
#: bisection steps solving x + d(x) = y per voxel (monotone while 1 + d' > 0): halves a
#: bracket of a few tens of voxels to ~1e-8 voxel.
BISECTION_STEPS = 32


@dataclass(frozen=True)
class GaussianField:
    """Sum of 3-D Gaussians (Hz) on a grid of ``shape`` with voxel size ``voxel_mm``."""

    shape: tuple[int, int, int]
    voxel_mm: float
    scale: float = 1.0  # multiplies every peak (0 gives no field)
    seed: int | None = None  # None: BUMPS as they are

    def _bumps(self):
        if self.seed is None:
            return BUMPS
        rng = np.random.default_rng(self.seed)
        return tuple(
            (
                np.asarray(centre) + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, 3),
                width,
                peak * (1 + rng.uniform(-PEAK_JITTER, PEAK_JITTER)),
            )
            for centre, width, peak in BUMPS
        )

    def _terms(self, points):
        for centre, width_mm, peak in self._bumps():
            centre_voxels = np.asarray(centre) * (np.asarray(self.shape) - 1)
            offset = [(points[a] - centre_voxels[a]) * self.voxel_mm for a in range(3)]
            value = self.scale * peak * np.exp(-sum(o**2 for o in offset) / (2 * width_mm**2))
            yield value, offset, width_mm

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Field (Hz) at voxel coordinates ``points`` (3, ...)."""
        return sum(value for value, _, _ in self._terms(points))

    def derivative(self, points: np.ndarray, axis: int) -> np.ndarray:
        """d field / d voxel index along ``axis`` (Hz per voxel)."""
        return sum(
            -value * offset[axis] * self.voxel_mm / width**2
            for value, offset, width in self._terms(points)
        )

    def on_grid(self) -> np.ndarray:
        return self(np.indices(self.shape).astype(float))


def head(shape: tuple[int, int, int], voxel_mm: float, seed: int = 0):
    """A b0-like head: textured tissue (mean 1), bright CSF blobs, dark air; and its interior."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    centre = (np.asarray(shape, dtype=float) - 1) / 2
    radii = np.array([68.0, 85.0, 62.0]) / voxel_mm
    radii = np.minimum(radii, centre - 4)
    inside = sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3)) < 1
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 4.0 / voxel_mm)
    image = 1.0 + 0.3 * texture / texture.std()
    ventricles = sum(((grid[a] - centre[a]) / (radii[a] * 0.25)) ** 2 for a in range(3)) < 1
    image = np.where(ventricles, 2.5, image)
    image = ndimage.gaussian_filter(inside * image, 1.0 / voxel_mm)
    return image, inside


def distort(image, field: GaussianField, readout_s: float, axis: int, sign: int):
    """The EPI image of ``image``: the signal of x lands at y = x + d(x), d = field * readout *
    sign (voxels along ``axis``), at intensity image(x) / (1 + d'(x))."""
    grid = np.indices(image.shape).astype(float)
    scale = readout_s * sign
    reach = np.abs(scale * field(grid)).max() + 1.0
    low, high = grid[axis] - reach, grid[axis] + reach
    source = grid.copy()
    for _ in range(BISECTION_STEPS):
        source[axis] = (low + high) / 2
        beyond = source[axis] + scale * field(source) > grid[axis]
        high = np.where(beyond, source[axis], high)
        low = np.where(beyond, low, source[axis])
    source[axis] = (low + high) / 2
    jacobian = 1.0 + scale * field.derivative(source, axis)
    if jacobian.min() <= 0:
        raise ValueError("the field folds the image (Jacobian <= 0)")
    return ndimage.map_coordinates(image, source, order=3, mode="nearest") / jacobian


def noisy(image, snr: float, gain: float, seed: int):
    """``gain`` * image plus Gaussian noise of SD gain / snr (tissue mean is 1)."""
    rng = np.random.default_rng(seed)
    return gain * (image + rng.normal(0.0, 1.0 / snr, image.shape))
