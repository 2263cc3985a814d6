"""Boundary-based registration (BBR; Greve & Fischl 2009, NeuroImage 48:63-72) of an EPI b0 to
the T1w's gray/white boundary: the rigid refinement of the b0 -> T1w coregistration.

Why: mutual information between a 2-3 mm b0 and a T1w brain has a flat optimum. On the real
Prisma pair, adding +-1 to one stored DWI sample in ten (about 1/30 of the noise SD) moved the
MI result by 0.5-2 mm, and starts 6 mm apart ended 6 mm apart at equal MI; each ROI's MD then
moved by up to 3.8% (``benchmarks/tuning/numerical_stability.py``). BBR scores only the
contrast across the white surface, which a millimetre of misalignment destroys: in a T2-weighted
b0, gray matter just outside the surface is brighter than white matter just inside it.

The surface comes from the T1w's hard tissue labels (white matter next to gray matter). For each
surface point ``p`` with outward normal ``n`` the b0 is sampled (trilinear) at ``p - d_wm n`` and
``p + d_gm n``; the point's percent contrast ``Q = 100 (g - w) / ((g + w) / 2)`` enters
``1 + tanh(-M * Q)`` (Greve & Fischl's cost with the sign for T2 contrast), averaged over
the points; the slope ``M`` is scaled to the b0's own contrast. The six rigid parameters are
found by Powell's method, first on a smoothed b0, then on the b0 itself. Everything is
deterministic: a fixed point set, no random sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation

#: Tissue labels of ``anat.segmentation``'s hard segmentation.
GM_LABEL, WM_LABEL = 2, 3
#: mm into white matter / out into gray matter at which the b0 is sampled (Greve & Fischl
#: sample 2 mm into WM and half the cortical thickness, ~1.2-1.5 mm, into GM).
WM_DISTANCE_MM: float = 2.0
GM_DISTANCE_MM: float = 1.5
#: Slope of the tanh, in units of the median |percent contrast| of the surface points at the
#: start. Greve & Fischl fixed M = 0.5 per percent for BOLD, whose gray/white contrast is a few
#: percent; a b0's is larger and varies with resolution and TE, and a fixed slope saturates
#: (every point's term at its floor over a millimetre-wide plateau: 1.0 mm off on a synthetic
#: head with 2.5 mm voxels, 0.1 mm with the scaled slope).
SLOPE_PER_MEDIAN_CONTRAST: float = 1.0
#: Surface points used at most (spread evenly over the surface): the cost's noise falls as
#: 1/sqrt(points) and its price grows with them; 20,000 cost ~10 ms per evaluation.
MAX_POINTS: int = 20_000
#: Gaussian SD (mm) of the smoothed b0 of the first, wider-capture pass.
COARSE_SMOOTHING_MM: float = 2.0
#: Powell tolerances: parameters (mm and radians x 50 mm) and cost.
XTOL: float = 1e-3
FTOL: float = 1e-7
#: Radius (mm) that scales rotations to arc lengths, so one unit of any parameter moves the
#: brain's edge by ~1 mm (as framewise displacement does).
HEAD_RADIUS_MM: float = 50.0


@dataclass(frozen=True)
class BoundaryFit:
    """The refined T1w -> b0 point map (4x4 RAS) and how it was reached."""

    matrix: np.ndarray
    cost: float
    start_cost: float
    slope: float
    n_points: int
    shift_mm: float  # RMS displacement of the surface points from the start


def white_surface(
    dseg: np.ndarray, affine: np.ndarray, max_points: int = MAX_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """Points on the gray/white boundary of a hard segmentation and their outward normals
    (world mm, RAS). A white-matter voxel with a gray-matter face neighbour is a boundary voxel;
    its point is moved along the normal to where the smoothed white-matter map crosses 1/2."""
    wm = dseg == WM_LABEL
    gm = dseg == GM_LABEL
    near_gm = ndimage.binary_dilation(gm, structure=ndimage.generate_binary_structure(3, 1))
    boundary = wm & near_gm
    smooth = ndimage.gaussian_filter(wm.astype(np.float32), 1.0)
    gradient = np.stack(np.gradient(smooth), axis=-1)[boundary]  # per voxel index
    index = np.argwhere(boundary).astype(float)
    linear = affine[:3, :3]
    # a gradient in index space becomes a world gradient through the inverse transpose
    world_gradient = gradient @ np.linalg.inv(linear)
    norm = np.linalg.norm(world_gradient, axis=1)
    keep = norm > 1e-6
    index, world_gradient, norm = index[keep], world_gradient[keep], norm[keep]
    normals = -world_gradient / norm[:, None]  # out of white matter
    values = smooth[boundary][keep]
    offset = np.clip((values - 0.5) / norm, -1.5, 1.5)  # mm along the normal to the 1/2 level
    points = index @ linear.T + affine[:3, 3] + offset[:, None] * normals
    if len(points) > max_points:
        chosen = np.linspace(0, len(points) - 1, max_points).round().astype(int)
        points, normals = points[chosen], normals[chosen]
    return points, normals


def moved_surface(
    points: np.ndarray, normals: np.ndarray, matrix: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Surface points and normals carried by a 4x4 point map (normals by its inverse
    transpose, renormalised, so they stay normal under an affine)."""
    moved = points @ matrix[:3, :3].T + matrix[:3, 3]
    turned = normals @ np.linalg.inv(matrix[:3, :3])
    return moved, turned / np.linalg.norm(turned, axis=1, keepdims=True)


def _rigid(params: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """4x4 rigid map about ``centre``: rotation vector ``params[:3] / HEAD_RADIUS_MM``, then
    translation ``params[3:]`` (mm)."""
    matrix = np.eye(4)
    rotation = Rotation.from_rotvec(params[:3] / HEAD_RADIUS_MM).as_matrix()
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre - rotation @ centre + params[3:]
    return matrix


class _Cost:
    """The BBR cost of a T1w -> b0 point map, for a fixed point set."""

    def __init__(self, image, image_affine, points, normals, slope):
        self.slope = slope
        self.image = np.asarray(image, dtype=np.float32)
        self.to_index = np.linalg.inv(image_affine)
        self.inner = np.c_[points - WM_DISTANCE_MM * normals, np.ones(len(points))]
        self.outer = np.c_[points + GM_DISTANCE_MM * normals, np.ones(len(points))]

    def samples(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        to_index = (self.to_index @ matrix)[:3]
        w = ndimage.map_coordinates(self.image, to_index @ self.inner.T, order=1, cval=0.0)
        g = ndimage.map_coordinates(self.image, to_index @ self.outer.T, order=1, cval=0.0)
        return w, g

    def __call__(self, matrix: np.ndarray) -> float:
        contrast = _percent_contrast(*self.samples(matrix))
        return float(np.mean(1.0 + np.tanh(-self.slope * contrast)))


def _percent_contrast(w: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Each point's percent contrast, gray over white."""
    total = g + w
    return 200.0 * (g - w) / np.where(total > 0, total, 1.0)


def refine(
    image: np.ndarray,
    image_affine: np.ndarray,
    points: np.ndarray,
    normals: np.ndarray,
    start: np.ndarray,
    slope: float | None = None,
) -> BoundaryFit:
    """BBR from ``start`` (4x4 RAS map of T1w points to b0 points). Points whose samples fall
    outside the b0's brain signal at the start (a DWI slab that misses part of the brain) are
    left out, once, so the point set never changes during the search. ``slope`` (per percent
    of contrast; default: SLOPE_PER_MEDIAN_CONTRAST over the median |contrast| at ``start``)
    must be shared by fits whose costs are compared."""
    image = np.asarray(image, np.float32)
    w, g = _Cost(image, image_affine, points, normals, 0.0).samples(start)
    valid = (w > 0) & (g > 0)
    if valid.sum() < 100:
        raise ValueError(f"only {int(valid.sum())} white-surface points fall inside the b0")
    points, normals = points[valid], normals[valid]
    centre = points.mean(axis=0)
    if slope is None:
        typical = float(np.median(np.abs(_percent_contrast(w[valid], g[valid]))))
        slope = SLOPE_PER_MEDIAN_CONTRAST / max(typical, 1e-3)
    voxel_mm = float(np.mean(np.linalg.svd(image_affine[:3, :3], compute_uv=False)))
    smoothed = ndimage.gaussian_filter(image, COARSE_SMOOTHING_MM / voxel_mm)
    costs = [
        _Cost(smoothed, image_affine, points, normals, slope),
        _Cost(image, image_affine, points, normals, slope),
    ]
    params = np.zeros(6)
    start_cost = costs[-1](start)
    for cost in costs:
        result = optimize.minimize(
            lambda p, cost=cost: cost(start @ _rigid(p, centre)),
            params,
            method="Powell",
            options={"xtol": XTOL, "ftol": FTOL, "maxfev": 4000},
        )
        params = result.x
    matrix = start @ _rigid(params, centre)
    moved = (np.c_[points, np.ones(len(points))] @ (matrix - start).T)[:, :3]
    return BoundaryFit(
        matrix=matrix,
        cost=costs[-1](matrix),
        start_cost=start_cost,
        slope=slope,
        n_points=len(points),
        shift_mm=float(np.sqrt(np.mean(np.sum(moved**2, axis=1)))),
    )
