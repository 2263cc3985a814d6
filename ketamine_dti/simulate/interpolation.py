"""Point-sampling kernels shared by the anatomy and the signal resampling (numba, no I/O).

One place for the affine map of a point, nearest-neighbour rounding and trilinear
interpolation. A sample is found in two steps: a *cell* (lower corner index and offsets) and
the weighted sum over its eight corners (:func:`trilinear`), where corners outside the grid
count as 0. Two cells are used: :func:`clamped_cell` for points known to lie inside the grid
(the last cell is reused at the upper edge) and :func:`floor_cell` for any point. Volumes are
channel-first, (C, X, Y, Z). The arithmetic is written out in a fixed order, so results are
bit-for-bit reproducible; the helpers are inlined into the calling loops.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def apply_affine(matrix, q0, q1, q2):  # pragma: no cover - compiled
    """``matrix @ (q0, q1, q2, 1)``, the first three rows, as three floats."""
    t = matrix
    p0 = t[0, 0] * q0 + t[0, 1] * q1 + t[0, 2] * q2 + t[0, 3]
    p1 = t[1, 0] * q0 + t[1, 1] * q1 + t[1, 2] * q2 + t[1, 3]
    p2 = t[2, 0] * q0 + t[2, 1] * q1 + t[2, 2] * q2 + t[2, 3]
    return p0, p1, p2


@numba.njit(cache=True, nogil=True, inline="always")
def nearest_index(matrix, q0, q1, q2):  # pragma: no cover - compiled
    """Voxel index nearest to ``matrix @ (q, 1)`` (halves round up)."""
    a0, a1, a2 = apply_affine(matrix, q0, q1, q2)
    return int(np.floor(a0 + 0.5)), int(np.floor(a1 + 0.5)), int(np.floor(a2 + 0.5))


@numba.njit(cache=True, nogil=True, inline="always")
def clamped_cell(volume, p0, p1, p2):  # pragma: no cover - compiled
    """Cell (i0, i1, i2, d0, d1, d2) of a point within [0, shape - 1] of volume (C, X, Y, Z)."""
    i0 = min(int(p0), volume.shape[1] - 2)
    i1 = min(int(p1), volume.shape[2] - 2)
    i2 = min(int(p2), volume.shape[3] - 2)
    return i0, i1, i2, p0 - i0, p1 - i1, p2 - i2


@numba.njit(cache=True, nogil=True, inline="always")
def floor_cell(volume, p0, p1, p2):  # pragma: no cover - compiled
    """(touches, cell) of any point; ``touches`` is False when no corner of the cell
    (i0, i1, i2, d0, d1, d2) lies inside volume (C, X, Y, Z)."""
    f0 = np.floor(p0)
    f1 = np.floor(p1)
    f2 = np.floor(p2)
    i0 = int(f0)
    i1 = int(f1)
    i2 = int(f2)
    touches = not (
        i0 < -1
        or i1 < -1
        or i2 < -1
        or i0 >= volume.shape[1]
        or i1 >= volume.shape[2]
        or i2 >= volume.shape[3]
    )
    return touches, (i0, i1, i2, p0 - f0, p1 - f1, p2 - f2)


@numba.njit(cache=True, nogil=True, inline="always")
def trilinear(volume, c, cell):  # pragma: no cover - compiled
    """Channel c of volume (C, X, Y, Z) interpolated in a cell; corners outside count as 0."""
    i0, i1, i2, d0, d1, d2 = cell
    sx, sy, sz = volume.shape[1], volume.shape[2], volume.shape[3]
    value = 0.0
    for e0 in range(2):
        q0 = i0 + e0
        if q0 < 0 or q0 >= sx:
            continue
        w0 = d0 if e0 else 1.0 - d0
        for e1 in range(2):
            q1 = i1 + e1
            if q1 < 0 or q1 >= sy:
                continue
            w1 = w0 * (d1 if e1 else 1.0 - d1)
            for e2 in range(2):
                q2 = i2 + e2
                if q2 < 0 or q2 >= sz:
                    continue
                w2 = w1 * (d2 if e2 else 1.0 - d2)
                value += w2 * volume[c, q0, q1, q2]
    return value
