"""Susceptibility distortion of EPI: the field from two b0s of opposed phase encoding, and
the correction of any volume with it.

Physical model (as FSL TOPUP and HySCO): off-resonance only displaces signal along the
phase-encode (PE) axis, by ``field_hz * TotalReadoutTime`` voxels, signed by the PE direction,
and the displaced signal is compressed or stretched, changing its intensity by the Jacobian
``1 + d(shift)/d(pe)``. With ``field_hz`` defined at the *undistorted* position x,

    undistorted(x) = observed(x + shift(x) e_pe) * (1 + d shift / d pe)(x),

so an image and its reverse-PE twin (shift of the opposite sign) corrected with the true field
agree. The estimator finds the smooth field (cubic B-spline on a coarse control grid) that
makes them agree in the least-squares sense, with a bending-energy penalty, coarse to fine on
smoothed images, by L-BFGS with an analytic gradient.

The displacement is one-dimensional, so every sample is a 1-D cubic B-spline interpolation
along a PE line (exact value and derivative): no trilinear 3-D sampling as in
``series_registration``, whose helpers serve affine maps.

Conventions: phase encoding is the BIDS ``PhaseEncodingDirection`` ("i", "j-", ...: voxel axes
of the arrays given), readout times are BIDS ``TotalReadoutTime`` in seconds, affines are 4x4
voxel -> world (RAS+, mm). The two b0s must already be rigidly aligned on one grid.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy import ndimage, optimize

from ketamine_dti.bspline import cubic_slopes, cubic_weights, mirror

LOGGER = logging.getLogger(__name__)

#: BIDS PhaseEncodingDirection letters, in voxel-axis order.
PE_LETTERS = "ijk"
#: s; a TotalReadoutTime this long is a unit mistake (milliseconds given as seconds): EPI
#: readouts last 10-150 ms.
MAX_READOUT_S = 1.0
#: fraction of the image's 98th percentile above which a voxel counts as foreground when no
#: mask is given (air is dark on a b0; this only picks the voxels whose median scales the image).
FOREGROUND_FRACTION = 0.1
#: mm; margin around a given brain mask where the images are still compared: signal displaced
#: out of the brain by up to this much (about 100 Hz at a 50 ms readout and 2 mm) still counts.
MASK_MARGIN_MM = 10.0
#: L-BFGS stopping tolerances (relative cost change, projected gradient): the iteration caps
#: of SCHEDULE end the levels in practice; these stop a level whose cost no longer moves.
LBFGS_FTOL = 1e-10
LBFGS_GTOL = 1e-9
#: FWHM -> Gaussian sigma.
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True)
class FitLevel:
    """One level of the coarse-to-fine fit.

    knot_spacing_mm: B-spline control-point spacing of the field; fwhm_mm: Gaussian smoothing
    of both images (widens the capture range at coarse levels); point_spacing_mm: spacing of
    the points where the images are compared (at most every voxel); bending_weight: weight of
    the mean bending energy of the displacement (voxels/mm^2)^2 against the mean squared
    difference of the median-normalised images; max_iterations: L-BFGS iterations at most.
    """

    knot_spacing_mm: float
    fwhm_mm: float
    point_spacing_mm: float
    bending_weight: float
    max_iterations: int


#: Coarse to fine, TOPUP's b02b0 schedule condensed to four levels. Tuned on the benchmark's
#: training seeds and the real Prisma PA/AP pair: the 7 mm level lowered the real pair's
#: corrected RMS difference from 0.167 to 0.130; bending weights 3-30x larger at the finer
#: levels began to cost accuracy (real pair 0.140, p95 error up on the strong field), 10-1000x
#: smaller changed nothing. 80 iterations at the finest level (40 before) lowered the worst
#: session's BA10 field error on training seeds 1, 2 and 7 (24 sessions, fitted from each
#: series' first b0) from 10.4% to 7.5% of the field's p99 (brain median 1.8% -> 1.7%); a 5 mm
#: level or a 10x smaller final bending weight did not help (worst BA10 11.8% / 10.9%).
SCHEDULE = (
    FitLevel(20.0, 8.0, 4.0, 1000.0, 30),
    FitLevel(14.0, 4.0, 4.0, 100.0, 30),
    FitLevel(10.0, 2.0, 2.0, 10.0, 40),
    FitLevel(7.0, 0.0, 2.0, 1.0, 80),
)


def knot_spacings(schedule: tuple[FitLevel, ...] = SCHEDULE) -> str:
    """The schedule's B-spline knot spacings, coarse to fine, for methods text and sidecars."""
    return " -> ".join(f"{level.knot_spacing_mm:g}" for level in schedule) + " mm"


@dataclass(frozen=True)
class FieldEstimate:
    """The estimated field (Hz, on the b0 grid) and how the fit went.

    iterations: L-BFGS iterations per level; cost: final objective at the finest level;
    data_cost_before / data_cost_after: half the mean squared difference of the corrected,
    median-normalised images at the finest level with no field and with the estimate;
    seconds: wall time.
    """

    field_hz: np.ndarray
    iterations: tuple[int, ...]
    cost: float
    data_cost_before: float
    data_cost_after: float
    seconds: float


# ---------------------------------------------------------------- validation and geometry


def phase_encoding(direction: str) -> tuple[int, int]:
    """(voxel axis, sign) of a BIDS PhaseEncodingDirection: "j-" -> (1, -1)."""
    text = str(direction).strip()
    if len(text) not in (1, 2) or text[0] not in PE_LETTERS or text[1:] not in ("", "-"):
        raise ValueError(
            f"PhaseEncodingDirection {direction!r} is not one of i, i-, j, j-, k, k-; "
            "fix the JSON sidecar"
        )
    return PE_LETTERS.index(text[0]), -1 if text.endswith("-") else 1


def check_readout(total_readout_time: float, what: str = "TotalReadoutTime") -> float:
    """The readout time as a float, refused unless it is a plausible number of seconds."""
    try:
        value = float(total_readout_time)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {total_readout_time!r} is not a number of seconds") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {value}")
    if value >= MAX_READOUT_S:
        raise ValueError(
            f"{what} = {value} s is longer than any EPI readout; it is in seconds in BIDS "
            "(was it given in milliseconds?)"
        )
    return value


def check_pepolar_pair(pe_up: str, pe_down: str) -> tuple[int, int, int]:
    """(axis, sign_up, sign_down) of a blip-up/blip-down pair, refused unless the two encode
    along one axis in opposite directions."""
    axis_up, sign_up = phase_encoding(pe_up)
    axis_down, sign_down = phase_encoding(pe_down)
    if axis_up != axis_down:
        raise ValueError(
            f"the fieldmap is phase-encoded along {pe_down!r} and the DWI along {pe_up!r}: "
            "different axes; a blip-up/blip-down pair must share the axis with opposite "
            "directions"
        )
    if sign_up == sign_down:
        reverse = PE_LETTERS[axis_up] + ("" if sign_up < 0 else "-")
        raise ValueError(
            f"the fieldmap has the same phase-encoding direction as the DWI ({pe_up!r}); "
            f"a blip-up/blip-down estimate needs the reverse ({reverse!r}): check the "
            "PhaseEncodingDirection of the fieldmap"
        )
    return axis_up, sign_up, sign_down


def _check_volume(name: str, volume: np.ndarray, shape: tuple[int, ...] | None = None):
    array = np.asarray(volume)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3-D volume, got shape {array.shape}")
    if shape is not None and array.shape != tuple(shape):
        raise ValueError(
            f"{name} has shape {array.shape}, expected {tuple(shape)}: put both on one grid "
            "first (the pair must already be rigidly aligned)"
        )
    if min(array.shape) < 4:
        raise ValueError(f"{name} of shape {array.shape} is too small to interpolate")
    return array


def _check_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    return affine


def displacement_voxels(
    field_hz: np.ndarray, total_readout_time: float, pe_direction: str
) -> np.ndarray:
    """Shift (voxels, along the PE axis, signed in voxel index) at which an undistorted point
    appears in the image acquired with ``pe_direction``."""
    _, sign = phase_encoding(pe_direction)
    readout = check_readout(total_readout_time)
    return np.asarray(field_hz, dtype=float) * readout * sign


def jacobian(field_hz: np.ndarray, total_readout_time: float, pe_direction: str) -> np.ndarray:
    """1 + d(shift)/d(pe) (central differences): the factor that restores the intensity of
    signal compressed (> 1) or stretched (< 1) by the distortion."""
    axis, _ = phase_encoding(pe_direction)
    shift = displacement_voxels(field_hz, total_readout_time, pe_direction)
    return 1.0 + np.gradient(shift, axis=axis)


def displacement_world_mm(
    field_hz: np.ndarray, affine: np.ndarray, total_readout_time: float, pe_direction: str
) -> np.ndarray:
    """(..., 3) world displacement (mm): the distorted image holds the signal of world point q
    at q + displacement(q). To fold the correction into one resampling with a motion map M
    (reference point p -> raw point), read the raw volume at M p + displacement(M p)."""
    axis, _ = phase_encoding(pe_direction)
    column = _check_affine(affine)[:3, axis]
    shift = displacement_voxels(field_hz, total_readout_time, pe_direction)
    return shift[..., None] * column


# ---------------------------------------------------------------- 1-D cubic B-spline sampling


@njit(cache=True, nogil=True, inline="always")
def _cubic(line, position):  # pragma: no cover - JIT
    """Value and derivative at ``position`` of the cubic B-spline with coefficients ``line``
    (unit spacing; coefficients mirrored about the ends, as the prefilter assumes)."""
    base = np.floor(position)
    start = int(base) - 1
    weights = cubic_weights(position - base)
    slopes = cubic_slopes(position - base)
    value = 0.0
    derivative = 0.0
    for tap in range(4):
        index = mirror(start + tap, line.shape[0])
        value += weights[tap] * line[index]
        derivative += slopes[tap] * line[index]
    return value, derivative


@njit(cache=True, nogil=True)
def _sample_lines(coefficients, positions, out):  # pragma: no cover - JIT
    """out[a, b, c] = spline of line (a, b) at positions[a, b, c] (PE axis last)."""
    n0, n1, n2 = out.shape
    for a in range(n0):
        for b in range(n1):
            line = coefficients[a, b]
            for c in range(n2):
                out[a, b, c] = _cubic(line, positions[a, b, c])[0]


@njit(cache=True, nogil=True, inline="always")
def _corrected(line, column, step, shift, slope):  # pragma: no cover - JIT
    """One image's corrected value J * I(p + s) at PE position ``column`` (s = step * shift,
    J = 1 + step * slope), and its derivatives with respect to shift and slope."""
    value, derivative = _cubic(line, column + step * shift)
    jacobian = 1.0 + step * slope
    return jacobian * value, jacobian * step * derivative, step * value


@njit(cache=True, nogil=True)
def _residual_terms(images, steps, rows, columns, field, weights, out):  # pragma: no cover - JIT
    """Sum over the points of w r^2, r = corrected ``images[0]`` - corrected ``images[1]``.
    ``field`` holds the shift and its PE slope at the points (image k shifts by ``steps[k]``
    times them); ``out`` receives w r dr/dshift and w r dr/dslope per point."""
    total = 0.0
    for a in range(rows[0].shape[0]):
        for b in range(rows[1].shape[0]):
            line_up = images[0, rows[0][a], rows[1][b]]
            line_down = images[1, rows[0][a], rows[1][b]]
            for c in range(columns.shape[0]):
                weight = weights[a, b, c]
                if weight == 0.0:
                    out[:, a, b, c] = 0.0
                    continue
                shift, slope = field[0, a, b, c], field[1, a, b, c]
                up, by_shift_up, by_slope_up = _corrected(
                    line_up, columns[c], steps[0], shift, slope
                )
                down, by_shift_down, by_slope_down = _corrected(
                    line_down, columns[c], steps[1], shift, slope
                )
                residual = up - down
                total += weight * residual * residual
                out[0, a, b, c] = weight * residual * (by_shift_up - by_shift_down)
                out[1, a, b, c] = weight * residual * (by_slope_up - by_slope_down)
    return total


def _pe_last(volume: np.ndarray, axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(volume, axis, -1))


def _prefilter(volume: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients along the last (PE) axis."""
    return ndimage.spline_filter1d(volume, order=3, axis=-1, mode="mirror", output=np.float64)


def unwarp(
    image: np.ndarray,
    field_hz: np.ndarray,
    affine: np.ndarray,
    total_readout_time: float,
    pe_direction: str,
    jacobian: bool = True,
) -> np.ndarray:
    """``image`` (acquired with ``pe_direction``) corrected: each voxel reads the image where
    the field displaced its signal (cubic B-spline along PE, through ``displacement_world_mm``
    so the world-space composition is what is exercised), times the Jacobian unless
    ``jacobian=False``. float32, same grid."""
    affine = _check_affine(affine)
    image = _check_volume("image", image)
    _check_volume("field_hz", field_hz, image.shape)
    axis, _ = phase_encoding(pe_direction)
    world = displacement_world_mm(field_hz, affine, total_readout_time, pe_direction)
    shift = world @ np.linalg.inv(affine[:3, :3]).T  # world mm -> voxels: only the PE one moves
    positions = _pe_last(shift[..., axis], axis)
    positions += np.arange(positions.shape[-1])
    out = np.empty(positions.shape, dtype=np.float64)
    _sample_lines(_prefilter(_pe_last(np.asarray(image, dtype=np.float64), axis)), positions, out)
    out = np.moveaxis(out, -1, axis)
    if jacobian:
        out = out * _jacobian_factor(field_hz, total_readout_time, pe_direction)
    return out.astype(np.float32)


_jacobian_factor = jacobian  # ``unwarp``'s flag shadows the function's name


# ---------------------------------------------------------------- B-spline field


def _bspline(t: np.ndarray, order: int) -> np.ndarray:
    """Cubic B-spline (order 0) or its first or second derivative at ``t``."""
    a = np.abs(t)
    inner, outer = a < 1, (a >= 1) & (a < 2)
    out = np.zeros_like(t, dtype=float)
    if order == 0:
        out[inner] = 2.0 / 3.0 - a[inner] ** 2 + a[inner] ** 3 / 2.0
        out[outer] = (2.0 - a[outer]) ** 3 / 6.0
    elif order == 1:
        out[inner] = -2.0 * t[inner] + 1.5 * t[inner] * a[inner]
        out[outer] = -np.sign(t[outer]) * (2.0 - a[outer]) ** 2 / 2.0
    else:
        out[inner] = -2.0 + 3.0 * a[inner]
        out[outer] = 2.0 - a[outer]
    return out


@dataclass(frozen=True)
class _Basis:
    """Per-axis B-spline matrices (voxels x control points) of one knot spacing: value and
    first and second derivatives per voxel (PE axis last)."""

    value: tuple[np.ndarray, ...]
    first: tuple[np.ndarray, ...]
    second: tuple[np.ndarray, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(matrix.shape[1] for matrix in self.value)


def _basis(shape: tuple[int, ...], zooms: np.ndarray, knot_spacing_mm: float) -> _Basis:
    """Control points centred on the grid, one knot interval beyond each end."""
    per_axis = []
    for size, zoom in zip(shape, zooms, strict=True):
        spacing = max(knot_spacing_mm / zoom, 1.0)
        n_knots = int(np.ceil((size - 1) / spacing)) + 3
        origin = (size - 1) / 2.0 - (n_knots - 1) / 2.0 * spacing
        t = (np.arange(size)[:, None] - origin - spacing * np.arange(n_knots)[None, :]) / spacing
        per_axis.append(tuple(_bspline(t, order) / spacing**order for order in range(3)))
    return _Basis(*(tuple(axis[order] for axis in per_axis) for order in range(3)))


def _apply(coefficients: np.ndarray, m0: np.ndarray, m1: np.ndarray, m2=None) -> np.ndarray:
    """(m0 x m1 x m2) applied to a 3-D coefficient array, axis by axis (``m2=None``: leave
    the last axis as it is)."""
    out = np.tensordot(m0, coefficients, axes=(1, 0))
    out = np.tensordot(m1, out, axes=(1, 1)).swapaxes(0, 1)
    return out if m2 is None else out @ m2.T


def _project(field: np.ndarray, basis: _Basis) -> np.ndarray:
    """Least-squares B-spline coefficients of a field on the full grid (separable)."""
    return _apply(field, *(np.linalg.pinv(matrix) for matrix in basis.value))


@dataclass(frozen=True)
class _BendingEnergy:
    """A with c^T A c = mean over the field of view of sum_ab (d2 u / dx_a dx_b)^2 (u the
    B-spline with coefficients c, x in mm): a weighted sum of Kronecker products of 1-D Gram
    matrices of the basis and its derivatives. ``A @ c`` applies each product axis by axis;
    the assembled sparse matrix took 0.8 s per level to build and 5 ms per product
    (1 ms this way)."""

    terms: tuple[tuple[float, tuple[np.ndarray, np.ndarray, np.ndarray]], ...]
    shape: tuple[int, int, int]

    def __matmul__(self, flat: np.ndarray) -> np.ndarray:
        coefficients = flat.reshape(self.shape)
        total = sum(weight * _apply(coefficients, *factors) for weight, factors in self.terms)
        return total.ravel()


def _bending_energy(basis: _Basis, zooms: np.ndarray) -> _BendingEnergy:
    """The bending-energy operator of ``basis`` on voxels of ``zooms`` mm."""
    pairs = zip(basis.value, basis.first, basis.second, zooms, strict=True)
    grams = [
        (zoom * b0.T @ b0, b1.T @ b1 / zoom, b2.T @ b2 / zoom**3) for b0, b1, b2, zoom in pairs
    ]
    volume = float(np.prod([b.shape[0] * z for b, z in zip(basis.value, zooms, strict=True)]))
    mass, slope, curve = (list(kind) for kind in zip(*grams, strict=True))
    terms = []
    for axis in range(3):
        pure = mass[:axis] + [curve[axis]] + mass[axis + 1 :]  # d2/dx_a^2
        mixed = slope[:axis] + [mass[axis]] + slope[axis + 1 :]  # the two other axes
        terms += [(1.0 / volume, tuple(pure)), (2.0 / volume, tuple(mixed))]
    return _BendingEnergy(tuple(terms), basis.shape)


# ---------------------------------------------------------------- estimation


def _normalise(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Image divided by its median over the mask (else over its bright voxels), so that a
    different receive gain or scaling of the two images is no distortion."""
    image = np.nan_to_num(np.asarray(image, dtype=np.float64))
    if mask is None:
        mask = image > FOREGROUND_FRACTION * np.percentile(image, 98)
    median = float(np.median(image[mask])) if np.any(mask) else 0.0
    if not median > 0:
        raise ValueError("b0 image is empty or non-positive inside the mask")
    return image / median


def _comparison_region(
    mask: np.ndarray | None, axis: int, zooms: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """Where the images are compared (PE axis last, of that ``shape``): the mask dilated by
    MASK_MARGIN_MM, or the whole field of view."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    margin = np.maximum(np.round(MASK_MARGIN_MM / zooms).astype(int), 1)
    return ndimage.binary_dilation(_pe_last(mask, axis), np.ones(tuple(2 * margin + 1), bool))


@dataclass
class _Problem:
    """The points, images and operators of one level; parameters are the B-spline
    coefficients of the up image's shift (voxels)."""

    images: np.ndarray  # (2, ...) spline coefficients along PE of the up and down images
    steps: np.ndarray  # (2,) shift of each image per unit of the up image's shift
    rows: tuple[np.ndarray, np.ndarray, np.ndarray]  # voxel indices of the points per axis
    weights: np.ndarray
    basis: _Basis
    bending: _BendingEnergy
    bending_weight: float

    def __post_init__(self):
        self.value = tuple(m[i] for m, i in zip(self.basis.value, self.rows, strict=True))
        self.slope_pe = self.basis.first[2][self.rows[2]]
        self.columns = self.rows[2].astype(np.float64)
        self.n_points = max(float(self.weights.sum()), 1.0)
        self.point_gradients = np.empty((2, *self.weights.shape))

    def data(self, coefficients: np.ndarray) -> float:
        """Half the mean squared difference of the corrected images; fills the point-wise
        gradients."""
        partial = _apply(coefficients, self.value[0], self.value[1])
        field = np.stack([partial @ self.value[2].T, partial @ self.slope_pe.T])
        total = _residual_terms(
            self.images, self.steps, self.rows[:2], self.columns, field, self.weights,
            self.point_gradients,
        )  # fmt: skip
        return 0.5 * total / self.n_points

    def __call__(self, flat: np.ndarray) -> tuple[float, np.ndarray]:
        coefficients = flat.reshape(self.basis.shape)
        data = self.data(coefficients)
        by_shift, by_slope = self.point_gradients
        along_pe = (by_shift @ self.value[2] + by_slope @ self.slope_pe) / self.n_points
        gradient = _apply(along_pe, self.value[0].T, self.value[1].T).ravel()
        bent = self.bending @ flat
        cost = data + 0.5 * self.bending_weight * float(flat @ bent)
        return cost, gradient + self.bending_weight * bent


def estimate_field(
    b0_up: np.ndarray,
    b0_down: np.ndarray,
    affine: np.ndarray,
    pe_up: str,
    pe_down: str,
    readout_up: float,
    readout_down: float,
    mask: np.ndarray | None = None,
    schedule: tuple[FitLevel, ...] = SCHEDULE,
) -> FieldEstimate:
    """Off-resonance field (Hz, on the b0 grid) from a b0 and its reverse-PE twin.

    ``b0_up`` is the image to correct (the DWI's b0), ``b0_down`` the fieldmap's reverse-PE
    b0; both on one grid and already rigidly aligned (this fits no motion). ``mask`` (optional,
    the brain) chooses the voxels whose median scales each image and, dilated by
    MASK_MARGIN_MM, where they are compared; without it the whole field of view is compared.
    """
    started = time.perf_counter()
    axis, sign_up, sign_down = check_pepolar_pair(pe_up, pe_down)
    readout_up = check_readout(readout_up, "TotalReadoutTime of the DWI")
    readout_down = check_readout(readout_down, "TotalReadoutTime of the fieldmap")
    affine = _check_affine(affine)
    b0_up = _check_volume("b0_up", b0_up)
    b0_down = _check_volume("b0_down", b0_down, b0_up.shape)
    if mask is not None:
        mask = _check_volume("mask", mask, b0_up.shape).astype(bool)
        if not mask.any():
            raise ValueError("the mask is empty")
    if not schedule:
        raise ValueError("the fit schedule has no level")
    zooms_native = np.linalg.norm(affine[:3, :3], axis=0)
    zooms = np.r_[np.delete(zooms_native, axis), zooms_native[axis]]  # PE axis last
    up = _pe_last(_normalise(b0_up, mask), axis)
    down = _pe_last(_normalise(b0_down, mask), axis)
    region = _comparison_region(mask, axis, zooms, up.shape)
    hz_per_unit = 1.0 / (readout_up * sign_up)  # parameters are the up image's shift (voxels)
    step_down = readout_down * sign_down / (readout_up * sign_up)

    shift = np.zeros(up.shape)
    iterations, problem, coefficients, result = [], None, None, None
    for level in schedule:
        basis = _basis(up.shape, zooms, level.knot_spacing_mm)
        strides = np.maximum(np.round(level.point_spacing_mm / zooms).astype(int), 1)
        rows = tuple(np.arange(0, n, s) for n, s in zip(up.shape, strides, strict=True))
        sigma = level.fwhm_mm * FWHM_TO_SIGMA / zooms
        problem = _Problem(
            images=np.stack([_prefilter(ndimage.gaussian_filter(v, sigma)) for v in (up, down)]),
            steps=np.array([1.0, step_down]),
            rows=rows,
            weights=region[np.ix_(*rows)].astype(np.float64),
            basis=basis,
            bending=_bending_energy(basis, zooms),
            bending_weight=level.bending_weight,
        )
        coefficients = _project(shift, basis)
        result = optimize.minimize(
            problem, coefficients.ravel(), jac=True, method="L-BFGS-B",
            options={"maxiter": level.max_iterations, "ftol": LBFGS_FTOL, "gtol": LBFGS_GTOL},
        )  # fmt: skip
        coefficients = result.x.reshape(basis.shape)
        shift = _apply(coefficients, *basis.value)
        iterations.append(int(result.nit))
        LOGGER.info(
            "susceptibility field, knots %.0f mm, FWHM %.0f mm: %d iterations, cost %.3g",
            level.knot_spacing_mm, level.fwhm_mm, result.nit, result.fun,
        )  # fmt: skip
    data_before = problem.data(np.zeros(problem.basis.shape))
    data_after = problem.data(coefficients)
    field = np.moveaxis(shift * hz_per_unit, -1, axis)
    return FieldEstimate(
        field_hz=field.astype(np.float32),
        iterations=tuple(iterations),
        cost=float(result.fun),
        data_cost_before=float(data_before),
        data_cost_after=float(data_after),
        seconds=time.perf_counter() - started,
    )
