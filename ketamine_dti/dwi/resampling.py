"""The one interpolation of a DWI series: every raw volume read once through its motion/eddy
map and, when a susceptibility field is known, its displacement along phase encoding, with the
Jacobian intensity correction.

Motion maps (``dwi.motion``) take reference points to raw-volume points and follow the head; the
susceptibility displacement (``dwi.susceptibility``) is along the scanner's phase-encode axis and
is evaluated at the reference point (the field moves with the head, as the simulator also
assumes; the change of the field with sub-degree rotations within a series is a few Hz). Reading
raw volume i at ``M_i p + shift(p) e_pe`` and multiplying by the Jacobian ``J(p)`` corrects both
in one interpolation, as FSL eddy with a TOPUP field does.

The interpolation is a cubic B-spline (as eddy's and ANTs' BSpline): trilinear weighting is a
low-pass filter whose strength depends on each volume's sub-voxel offset, so it mixed CSF
into thin cortex by an amount that changed with the head position of the session (retest
error of regional MD). ``order=1`` keeps trilinear.

The motion/eddy map carries a Jacobian too: an eddy-current field that stretches a volume along
phase encoding by a factor s spreads its signal over s times as many voxels, so the raw
intensity is 1/s of the true one; reading at ``M_i p`` and multiplying by ``det M_i`` (the
map's volume change, 1 for pure head motion) restores it, as eddy's Jacobian modulation does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy import ndimage

from ketamine_dti.dwi import series_registration

#: Spline order of the one interpolation: 3 (cubic B-spline) or 1 (trilinear).
INTERPOLATION_ORDER: int = 3


@dataclass(frozen=True)
class Displacement:
    """A susceptibility correction on the reference grid.

    shift: voxels along ``axis`` (the PE voxel axis) at which each reference point's signal
    sits in a raw volume; jacobian: the intensity factor restoring compressed (> 1) or
    stretched (< 1) signal.
    """

    shift: np.ndarray
    axis: int
    jacobian: np.ndarray


def resample_series(
    data: np.ndarray,
    affines: np.ndarray,
    affine: np.ndarray,
    displacement: Displacement | None = None,
    order: int = INTERPOLATION_ORDER,
) -> np.ndarray:
    """(X, Y, Z, N) float32: each volume of ``data`` resampled onto the reference grid through
    its reference -> raw map ``affines[i]`` (RAS+, mm) and multiplied by that map's Jacobian
    determinant, displaced and Jacobian-weighted by ``displacement`` if given; negative values
    (interpolation overshoot, Jacobian) clipped to 0. ``order``: 3 (cubic B-spline) or 1."""
    data = np.asarray(data)
    affines = np.asarray(affines, dtype=float)
    if affines.shape != (data.shape[-1], 4, 4):
        raise ValueError(f"{data.shape[-1]} volumes need {data.shape[-1]} 4x4 maps, got "
                         f"{affines.shape}")  # fmt: skip
    shift = axis = jacobian = None
    if displacement is not None:
        shift, axis = displacement.shift, displacement.axis
        jacobian = np.asarray(displacement.jacobian, dtype=np.float32)
    if order not in (1, 3):
        raise ValueError(f"order must be 1 or 3, got {order!r}")
    interpolate = series_registration.resample if order == 1 else resample_cubic
    corrected = np.empty(data.shape, dtype=np.float32)
    for index in range(data.shape[-1]):
        volume = interpolate(
            data[..., index], affines[index], affine, shift=shift, axis=1 if axis is None else axis
        )
        volume *= np.float32(affine_jacobian(affines[index]))
        if jacobian is not None:
            volume *= jacobian
        corrected[..., index] = volume
    np.clip(corrected, 0.0, None, out=corrected)
    return corrected


def resample_cubic(
    volume: np.ndarray,
    world_map: np.ndarray,
    affine: np.ndarray,
    shift: np.ndarray | None = None,
    axis: int = 1,
) -> np.ndarray:
    """``series_registration.resample`` with a cubic B-spline instead of trilinear weights
    (the volume is prefiltered to spline coefficients, mirror boundary, as scipy's
    ``map_coordinates(order=3, mode="mirror")``); points outside the volume give 0."""
    volume = np.asarray(volume)
    if min(volume.shape) < 2:
        raise ValueError(f"cannot interpolate a volume of shape {volume.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    if shift is None:
        shift = np.zeros((1, 1, 1), dtype=np.float32)
    elif np.shape(shift) != volume.shape:
        raise ValueError(f"shift of shape {np.shape(shift)} is not on the grid {volume.shape}")
    affine = np.asarray(affine, dtype=float)
    voxel_map = np.linalg.inv(affine) @ np.asarray(world_map, dtype=float) @ affine
    coefficients = ndimage.spline_filter(
        np.asarray(volume, dtype=np.float32), order=3, mode="mirror", output=np.float32
    )
    out = np.empty(volume.shape, dtype=np.float32)
    _cubic_grid(coefficients, voxel_map, np.ascontiguousarray(shift, dtype=np.float32),
                int(axis), out)  # fmt: skip
    return out


@njit(cache=True, nogil=True, inline="always")
def _mirror(index, size):  # pragma: no cover - JIT
    """Whole-sample mirror of an index just outside 0..size-1 (scipy's "mirror")."""
    if index < 0:
        return -index
    if index > size - 1:
        return 2 * (size - 1) - index
    return index


@njit(cache=True, nogil=True, inline="always")
def _cubic_weights(t, weights):  # pragma: no cover - JIT
    """Cubic B-spline weights of samples floor(x) - 1 .. floor(x) + 2 at fraction t."""
    u = 1.0 - t
    weights[0] = u * u * u / 6.0
    weights[1] = (3.0 * t * t * t - 6.0 * t * t + 4.0) / 6.0
    weights[2] = (-3.0 * t * t * t + 3.0 * t * t + 3.0 * t + 1.0) / 6.0
    weights[3] = t * t * t / 6.0


@njit(cache=True, nogil=True)
def _cubic_grid(coefficients, voxel_map, shift, axis, out):  # pragma: no cover - JIT
    """out[p] = cubic B-spline of ``coefficients`` at voxel_map @ p + shift[p] e_axis (0 outside
    the volume) for every grid p; ``shift`` of shape (1, 1, 1) means none."""
    nx, ny, nz = coefficients.shape
    ox, oy, oz = out.shape
    shifted = shift.shape == out.shape
    wx, wy, wz = np.empty(4), np.empty(4), np.empty(4)
    ix, iy, iz = np.empty(4, np.int64), np.empty(4, np.int64), np.empty(4, np.int64)
    for a in range(ox):
        for b in range(oy):
            x0 = voxel_map[0, 0] * a + voxel_map[0, 1] * b + voxel_map[0, 3]
            y0 = voxel_map[1, 0] * a + voxel_map[1, 1] * b + voxel_map[1, 3]
            z0 = voxel_map[2, 0] * a + voxel_map[2, 1] * b + voxel_map[2, 3]
            for c in range(oz):
                x = x0 + voxel_map[0, 2] * c
                y = y0 + voxel_map[1, 2] * c
                z = z0 + voxel_map[2, 2] * c
                if shifted:
                    if axis == 0:
                        x += shift[a, b, c]
                    elif axis == 1:
                        y += shift[a, b, c]
                    else:
                        z += shift[a, b, c]
                if x < 0.0 or y < 0.0 or z < 0.0 or x > nx - 1 or y > ny - 1 or z > nz - 1:
                    out[a, b, c] = 0.0
                    continue
                i, j, k = int(np.floor(x)), int(np.floor(y)), int(np.floor(z))
                _cubic_weights(x - i, wx)
                _cubic_weights(y - j, wy)
                _cubic_weights(z - k, wz)
                for n in range(4):
                    ix[n] = _mirror(i - 1 + n, nx)
                    iy[n] = _mirror(j - 1 + n, ny)
                    iz[n] = _mirror(k - 1 + n, nz)
                total = 0.0
                for p in range(4):
                    for q in range(4):
                        row = 0.0
                        for r in range(4):
                            row += wz[r] * coefficients[ix[p], iy[q], iz[r]]
                        total += wx[p] * wy[q] * row
                out[a, b, c] = total


def affine_jacobian(world_map: np.ndarray) -> float:
    """Volume change |det| of a reference -> raw map (> 1 where the raw volume is stretched)."""
    return float(abs(np.linalg.det(np.asarray(world_map, dtype=float)[:3, :3])))


def outside_field_of_view(
    affines: np.ndarray,
    affine: np.ndarray,
    shape: tuple[int, ...],
    displacement: Displacement | None = None,
) -> np.ndarray:
    """(X, Y, Z) bool: reference voxels that some volume had to read outside its field of view.

    ``resample_series`` fills those reads with 0, which is no data: a tensor fitted to a zero
    b0 or a zero diffusion-weighted sample gives an absurd MD (0.02 mm^2/s at the frontal pole
    where the susceptibility displacement reaches past the anterior edge of the grid). Callers
    exclude these voxels from regional averages.
    """
    shape = tuple(shape[:3])
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    homogeneous = np.vstack([grid, np.ones((1, grid.shape[1]), np.float32)])
    shift = None if displacement is None else np.asarray(displacement.shift, np.float32).ravel()
    limit = np.asarray(shape, np.float32)[:, None] - 1
    outside = np.zeros(grid.shape[1], dtype=bool)
    inverse = np.linalg.inv(np.asarray(affine, dtype=float))
    for world_map in np.asarray(affines, dtype=float):
        points = ((inverse @ world_map @ affine)[:3] @ homogeneous).astype(np.float32)
        if shift is not None:
            points[displacement.axis] += shift
        outside |= np.any((points < 0) | (points > limit), axis=0)
    return outside.reshape(shape)
