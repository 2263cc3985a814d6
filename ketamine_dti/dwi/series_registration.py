"""Rigid and affine registration of two volumes of one series, by Gauss-Newton least squares.

Volumes of one DWI series share a grid, lie within a few mm of each other, and (once each is
compared with a target of its own contrast) differ only by noise. Least squares is then the
maximum-likelihood metric, and the inverse-compositional Gauss-Newton scheme (Baker & Matthews
2004) solves it with the target's gradient computed once per pyramid level: one interpolation
of the moving volume per iteration, no histogram. That is what makes motion correction cost
seconds per series instead of minutes of general-purpose mutual-information registration.

Maps are 4x4 world (RAS+, mm) matrices from fixed (reference) points to moving (raw) points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ketamine_dti.bspline import cubic_weights, mirror

#: Pyramid (coarse to fine): the metric is evaluated on every `stride`-th voxel of the mask,
#: on images smoothed with a Gaussian of `stride` / 2 voxels (as ANTs' shrink and sigma pairs).
#: Strides are chosen so the coarsest level sees about COARSEST_LEVEL_MM.
COARSEST_LEVEL_MM = 8.0
#: Gauss-Newton steps per level at most (coarse to fine); a level stops earlier once a step
#: moves no mask voxel by more than CONVERGED_MM.
MAX_STEPS = (20, 12, 8)
#: mm; largest displacement of a mask voxel by one step below which a level has converged
#: (a tenth of the residual per-volume error on the simulator, ~0.08 mm).
CONVERGED_MM = 0.01
#: relative Levenberg damping of the normal equations (guards flat or tiny masks).
DAMPING = 1e-6
#: minimum points of the mask a level must keep to be estimated.
MIN_POINTS = 64
#: seed of the sub-voxel jitter of the metric's points (fixed: registrations are repeatable).
JITTER_SEED = 20231
#: voxels of the moving volume kept around the mask's bounding box: room for the largest
#: motion between volumes of a series (this many voxels, e.g. 12 mm at 2 mm).
MOVING_MARGIN_VOXELS = 6


@dataclass(frozen=True)
class Level:
    """One pyramid level: a voxel stride and the Gaussian sigma (voxels) applied first."""

    stride: int
    sigma: float


def pyramid(zooms: tuple[float, ...]) -> tuple[Level, ...]:
    """Levels from about COARSEST_LEVEL_MM down to the native grid (callers take slices)."""
    n_coarser = int(round(np.log2(COARSEST_LEVEL_MM / float(np.mean(zooms)))))
    n_coarser = min(max(n_coarser, 0), len(MAX_STEPS) - 1)
    strides = [2**level for level in range(n_coarser, -1, -1)]
    return tuple(Level(s, s / 2.0 if s > 1 else 0.0) for s in strides)


def _smooth(volume: np.ndarray, sigma: float) -> np.ndarray:
    volume = np.asarray(volume, dtype=np.float32)
    return ndimage.gaussian_filter(volume, sigma) if sigma > 0 else volume


def _jacobian(gradient: np.ndarray, centered: np.ndarray, rigid: bool) -> np.ndarray:
    """(n, 6 or 12) derivative of the target at each point w.r.t. the update parameters.

    Rigid: small rotation vector (x' cross grad) and translation; affine: the 9 entries of the
    linear part (grad_i * x'_j) and translation. x' are world points relative to the centre.
    """
    if rigid:
        return np.concatenate([np.cross(centered, gradient), gradient], axis=1)
    linear = (gradient[:, :, None] * centered[:, None, :]).reshape(len(centered), 9)
    return np.concatenate([linear, gradient], axis=1)


def _update(step: np.ndarray, rigid: bool) -> np.ndarray:
    """4x4 centred-coordinates map of a parameter step (exact rotation for rigid)."""
    matrix = np.eye(4)
    if rigid:
        matrix[:3, :3] = Rotation.from_rotvec(step[:3]).as_matrix()
    else:
        matrix[:3, :3] += step[:9].reshape(3, 3)
    matrix[:3, 3] = step[-3:]
    return matrix


@dataclass(frozen=True)
class _LevelTarget:
    """What one level needs from the target, computed once for every volume registered to it."""

    level: Level
    points: np.ndarray  # (n, 3) voxel coordinates of the level's mask points (float)
    values: np.ndarray  # (n,) smoothed target at the points
    jacobian: np.ndarray  # (n, p)
    hessian: np.ndarray  # (p, p) J^T J over all points
    reach: np.ndarray  # (3,) largest |x'| of the points per axis (mm), for the stopping rule


@dataclass(frozen=True)
class Target:
    """A fixed volume prepared for least-squares registration: per-level points, values and
    Gauss-Newton normal equations, plus the crop of the grid the moving volumes need."""

    affine: np.ndarray
    rigid: bool
    levels: tuple[_LevelTarget, ...]
    centre: np.ndarray  # world point (mm) the updates rotate about: the mask's centroid
    box: tuple[slice, ...]  # the part of the grid a moving volume can be sampled in


def prepare(
    fixed: np.ndarray,
    affine: np.ndarray,
    mask: np.ndarray,
    rigid: bool = False,
    levels: tuple[Level, ...] | None = None,
) -> Target:
    """Precompute the target side of the inverse-compositional scheme for ``levels`` (default:
    the full ``pyramid``): the target's gradient, Jacobian and J^T J do not depend on the
    moving volume, so one preparation serves a whole shell."""
    affine = np.asarray(affine, dtype=float)
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("registration mask is empty")
    linear = affine[:3, :3]
    if levels is None:
        levels = pyramid(tuple(np.linalg.norm(linear, axis=0)))
    to_world_gradient = np.linalg.inv(linear).T  # voxel gradient -> world gradient
    all_points = np.argwhere(mask)
    centre = linear @ all_points.mean(axis=0) + affine[:3, 3]
    prepared = []
    for level in levels:
        points = all_points[np.all(all_points % level.stride == 0, axis=1)]
        if len(points) < MIN_POINTS:
            continue
        smoothed = _smooth(fixed, level.sigma)
        # off-grid points: on the grid, the interpolated moving volume's noise variance
        # depends on the sub-voxel offset and drags the least-squares optimum towards
        # half-voxel shifts; a fixed random jitter (as ANTs' random sampling) averages it out
        rng = np.random.default_rng(JITTER_SEED)
        points = points + rng.uniform(-0.5, 0.5, size=points.shape) * level.stride
        points = np.clip(points, 0, np.asarray(mask.shape) - 1)
        coords = points.T
        values = ndimage.map_coordinates(smoothed, coords, order=1)
        gradient = np.stack(
            [ndimage.map_coordinates(g, coords, order=1) for g in np.gradient(smoothed)], axis=1
        )
        gradient = gradient.astype(np.float64) @ to_world_gradient.T
        centred = points @ linear.T + affine[:3, 3] - centre
        jacobian = _jacobian(gradient, centred, rigid)
        prepared.append(
            _LevelTarget(
                level=level,
                points=points.astype(np.float64),
                values=values.astype(np.float64),
                jacobian=jacobian,
                hessian=jacobian.T @ jacobian,
                reach=np.abs(centred).max(axis=0),
            )
        )
    if not prepared:
        raise ValueError(f"registration mask has fewer than {MIN_POINTS} points")
    start = np.maximum(all_points.min(axis=0) - MOVING_MARGIN_VOXELS, 0)
    stop = np.minimum(all_points.max(axis=0) + MOVING_MARGIN_VOXELS + 1, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
    return Target(affine=affine, rigid=rigid, levels=tuple(prepared), centre=centre, box=box)


@njit(cache=True, nogil=True, inline="always")
def _trilinear(volume, x, y, z):  # pragma: no cover - JIT
    """Trilinear value of ``volume`` at voxel point (x, y, z); NaN outside the volume."""
    nx, ny, nz = volume.shape
    if x < 0.0 or y < 0.0 or z < 0.0 or x > nx - 1 or y > ny - 1 or z > nz - 1:
        return np.nan
    i = min(int(x), nx - 2)
    j = min(int(y), ny - 2)
    k = min(int(z), nz - 2)
    fx, fy, fz = x - i, y - j, z - k
    c00 = volume[i, j, k] * (1 - fx) + volume[i + 1, j, k] * fx
    c10 = volume[i, j + 1, k] * (1 - fx) + volume[i + 1, j + 1, k] * fx
    c01 = volume[i, j, k + 1] * (1 - fx) + volume[i + 1, j, k + 1] * fx
    c11 = volume[i, j + 1, k + 1] * (1 - fx) + volume[i + 1, j + 1, k + 1] * fx
    return (c00 * (1 - fy) + c10 * fy) * (1 - fz) + (c01 * (1 - fy) + c11 * fy) * fz


@njit(cache=True, nogil=True)
def _normal_terms(source, voxel_map, points, values, jacobian):  # pragma: no cover - JIT
    """J^T r over the points whose image lies inside ``source`` (trilinear), and J^T J over
    those outside (to be subtracted from the full J^T J), in one pass without temporaries."""
    n_points, n_params = jacobian.shape
    jtr = np.zeros(n_params)
    outside = np.zeros((n_params, n_params))
    for k in range(n_points):
        px, py, pz = points[k, 0], points[k, 1], points[k, 2]
        x = voxel_map[0, 0] * px + voxel_map[0, 1] * py + voxel_map[0, 2] * pz + voxel_map[0, 3]
        y = voxel_map[1, 0] * px + voxel_map[1, 1] * py + voxel_map[1, 2] * pz + voxel_map[1, 3]
        z = voxel_map[2, 0] * px + voxel_map[2, 1] * py + voxel_map[2, 2] * pz + voxel_map[2, 3]
        value = _trilinear(source, x, y, z)
        if np.isnan(value):
            for a in range(n_params):
                for b in range(n_params):
                    outside[a, b] += jacobian[k, a] * jacobian[k, b]
            continue
        residual = value - values[k]
        for a in range(n_params):
            jtr[a] += jacobian[k, a] * residual
    return jtr, outside


def register(target: Target, moving: np.ndarray, initial: np.ndarray | None = None) -> np.ndarray:
    """The RAS+ map fixed -> moving (same grid) that minimises the squared difference over
    the target's mask, starting from ``initial`` (default identity).

    Each level takes inverse-compositional steps: the linearised target F(x + u) ~ F + grad F . u
    is fitted to the resampled moving volume, and the map is composed with the inverse of the
    fitted update. Points whose image falls outside the moving volume leave the fit.
    """
    world_to_voxel = np.linalg.inv(target.affine)
    to_box = np.eye(4)
    to_box[:3, 3] = [-part.start for part in target.box]
    to_centred = np.eye(4)
    to_centred[:3, 3] = -target.centre
    from_centred = np.linalg.inv(to_centred)
    current = np.eye(4) if initial is None else np.asarray(initial, dtype=float).copy()
    cropped = np.asarray(moving[target.box], dtype=np.float32)
    for level_index, level in enumerate(target.levels):
        source = _smooth(cropped, level.level.sigma)
        for _ in range(MAX_STEPS[min(level_index, len(MAX_STEPS) - 1)]):
            voxel_map = to_box @ world_to_voxel @ current @ target.affine
            jtr, outside = _normal_terms(
                source, voxel_map, level.points, level.values, level.jacobian
            )
            hessian = level.hessian - outside
            hessian = hessian + DAMPING * np.trace(hessian) / len(hessian) * np.eye(len(hessian))
            delta = _update(np.linalg.solve(hessian, jtr), target.rigid)
            current = current @ from_centred @ np.linalg.inv(delta) @ to_centred
            movement = np.abs(delta[:3, :3] - np.eye(3)) @ level.reach + np.abs(delta[:3, 3])
            if movement.max() < CONVERGED_MM:
                break
    return current


@njit(cache=True, nogil=True, inline="always")
def _cubic(coefficients, x, y, z, indices):  # pragma: no cover - JIT
    """Cubic B-spline value at voxel point (x, y, z) of prefiltered ``coefficients`` (mirror
    boundary); NaN outside the volume. ``indices``: a (3, 4) scratch array."""
    nx, ny, nz = coefficients.shape
    if x < 0.0 or y < 0.0 or z < 0.0 or x > nx - 1 or y > ny - 1 or z > nz - 1:
        return np.nan
    sx, sy, sz = np.floor(x), np.floor(y), np.floor(z)
    for n in range(4):
        indices[0, n] = mirror(int(sx) - 1 + n, nx)
        indices[1, n] = mirror(int(sy) - 1 + n, ny)
        indices[2, n] = mirror(int(sz) - 1 + n, nz)
    wx, wy, wz = cubic_weights(x - sx), cubic_weights(y - sy), cubic_weights(z - sz)
    total = 0.0
    for p in range(4):
        for q in range(4):
            row = 0.0
            for r in range(4):
                row += wz[r] * coefficients[indices[0, p], indices[1, q], indices[2, r]]
            total += wx[p] * wy[q] * row
    return total


@njit(cache=True, nogil=True)
def _sample_grid(volume, voxel_map, shift, axis, cubic, out):  # pragma: no cover - JIT
    """out[p] = volume at voxel_map @ p + shift[p] e_axis (trilinear, or cubic B-spline of
    prefiltered coefficients; 0 outside the volume) for every grid p; ``shift`` of shape
    (1, 1, 1) means none."""
    ox, oy, oz = out.shape
    shifted = shift.shape == out.shape
    indices = np.empty((3, 4), np.int64)
    for a in range(ox):
        for b in range(oy):
            x = voxel_map[0, 0] * a + voxel_map[0, 1] * b + voxel_map[0, 3]
            y = voxel_map[1, 0] * a + voxel_map[1, 1] * b + voxel_map[1, 3]
            z = voxel_map[2, 0] * a + voxel_map[2, 1] * b + voxel_map[2, 3]
            for c in range(oz):
                px = x + voxel_map[0, 2] * c
                py = y + voxel_map[1, 2] * c
                pz = z + voxel_map[2, 2] * c
                if shifted:
                    if axis == 0:
                        px += shift[a, b, c]
                    elif axis == 1:
                        py += shift[a, b, c]
                    else:
                        pz += shift[a, b, c]
                if cubic:
                    value = _cubic(volume, px, py, pz, indices)
                else:
                    value = _trilinear(volume, px, py, pz)
                out[a, b, c] = 0.0 if np.isnan(value) else value


def resample(
    volume: np.ndarray,
    world_map: np.ndarray,
    affine: np.ndarray,
    shift: np.ndarray | None = None,
    axis: int = 1,
    order: int = 1,
) -> np.ndarray:
    """A volume resampled onto its own grid through a RAS+ grid -> volume map: trilinear
    (``order`` 1, no overshoot) or cubic B-spline (3: prefiltered with a mirror boundary, as
    scipy's ``map_coordinates(order=3, mode="mirror")``), zero outside the volume, float32.

    ``shift`` (voxels, on the grid) moves each grid point's sample along the volume's voxel
    ``axis`` after the map: the susceptibility displacement along phase encoding, which is fixed
    in the scanner while the map follows the head, so both fold into this one interpolation.
    """
    if min(np.shape(volume)) < 2:
        raise ValueError(f"cannot interpolate a volume of shape {np.shape(volume)}")
    affine = np.asarray(affine, dtype=float)
    voxel_map = np.linalg.inv(affine) @ np.asarray(world_map, dtype=float) @ affine
    out = np.empty(np.shape(volume), dtype=np.float32)
    if shift is None:
        shift = np.zeros((1, 1, 1), dtype=np.float32)
    elif np.shape(shift) != out.shape:
        raise ValueError(f"shift of shape {np.shape(shift)} is not on the grid {out.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    if order not in (1, 3):
        raise ValueError(f"order must be 1 or 3, got {order!r}")
    samples = np.ascontiguousarray(volume, dtype=np.float32)
    if order == 3:
        samples = ndimage.spline_filter(samples, order=3, mode="mirror", output=np.float32)
    _sample_grid(
        samples, voxel_map, np.ascontiguousarray(shift, dtype=np.float32), int(axis),
        order == 3, out,
    )  # fmt: skip
    return out
