"""Real harmonics: the smooth bases of a field inside a head (solid harmonics: a susceptibility
field has no sources in the brain, ``syn_sdc``) and of a diffusion signal over the sphere of
gradient directions (even spherical harmonics: the signal is antipodally symmetric,
``slice_outliers``)."""

from __future__ import annotations

import numpy as np


def solid_harmonics(points: np.ndarray, degree: int) -> np.ndarray:
    """(N, (degree + 1)^2) real solid harmonics r^l Y_lm of ``points`` (N x 3, centred on
    the brain and scaled to about unit radius), degree by degree: the harmonic functions of
    degree <= ``degree``, the basis of a field with no sources in the region. On unit vectors
    they are the orthonormal real spherical harmonics."""
    from scipy.special import sph_harm_y

    radius = np.linalg.norm(points, axis=1)
    polar = np.arccos(np.clip(points[:, 2] / np.maximum(radius, 1e-12), -1.0, 1.0))
    azimuth = np.arctan2(points[:, 1], points[:, 0])
    columns = []
    for level in range(degree + 1):
        for m in range(-level, level + 1):
            value = sph_harm_y(level, abs(m), polar, azimuth)
            real = value.real if m >= 0 else value.imag
            columns.append(radius**level * real * (np.sqrt(2.0) if m else 1.0))
    return np.stack(columns, axis=1)


def even_spherical_harmonics(directions: np.ndarray, degree: int):
    """(basis, degrees): the real spherical harmonics of even degree <= ``degree`` at the unit
    ``directions`` (N x 3), (N, (degree + 1)(degree + 2) / 2), and each column's degree."""
    directions = np.asarray(directions, dtype=float)
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    degrees = np.repeat(np.arange(degree + 1), 2 * np.arange(degree + 1) + 1)
    even = degrees % 2 == 0
    return solid_harmonics(unit, degree)[:, even], degrees[even]
