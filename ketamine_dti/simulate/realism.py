"""What real scans do and the pipeline's models do not assume (issue 12): the realism items.

Each item is switched on or off on its own (``--realism {ideal,typical}``, ``--realism-off``)
and recorded in the ground truth. With every item off (``ideal``) the simulator runs exactly
the code and random draws it ran before them, so its output is unchanged bit for bit; each item
draws from its own random stream (:meth:`Realism.rng`), so switching one item off leaves every
other draw as it was.

Items (:data:`REALISM_ITEMS`):

- ``eddy``: eddy-current displacement along phase encode with second-order spatial terms
  (x^2, y^2, z^2, xy, xz, yz, each linear in the gradient), on top of the constant and linear
  ones, and the Jacobian intensity change of the whole displacement (signal is conserved);
- ``slice_motion``: motion within a volume: in a few volumes the head jerks during the volume,
  so each slice (acquired in interleaved order) sees its own rigid position;
- ``dropouts``: whole-slice signal loss (cardiac pulsation during the diffusion encoding) in a
  few diffusion-weighted volumes, more often in inferior slices; never in a b0;
- ``gibbs``: the image a scanner reconstructs from truncated k-space: the voxel-average
  (box) blurring of the simulated image is undone in-plane, only the acquired k-space is kept
  (6/8 partial Fourier along phase encode), zero-filled, with a smooth per-volume phase, and the
  magnitude taken: ringing at sharp edges and partial-Fourier blurring along phase encode;
- ``t1w_contrast``: per-participant GM, WM and CSF T1w intensities and a non-linear GM/WM
  partial-volume mix (mixed voxels brighter than the linear mix, as deep cortical layers are
  myelinated);
- ``t1w_bias``: a cubic smooth receive bias (~10-20% across the brain) on top of the existing
  linear + quadratic one (:func:`signal.bias_field`) and the coil's surface gain;
- ``t1w_noise``: spatially correlated Rician noise with a smoothly varying level (parallel
  imaging g-factor), made from the same Gaussian draws as the white noise;
- ``local_anatomy``: per participant, the ventricles enlarged and sulci widened in a few
  patches (CSF in place of tissue), a local change the smooth warp cannot make.

Arrays in, arrays out; nothing here comes from the pipeline's correction models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numba
import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

from ketamine_dti.simulate.anatomy import TemplateAnatomy, block_mean
from ketamine_dti.simulate.interpolation import apply_affine, floor_cell, nearest_index, trilinear
from ketamine_dti.simulate.signal import EDDY_REFERENCE_BVAL, Motion, rigid_index_matrix

#: The items, in the order of their random streams (the fifth seed word).
REALISM_ITEMS: tuple[str, ...] = (
    "eddy",
    "slice_motion",
    "dropouts",
    "gibbs",
    "t1w_contrast",
    "t1w_bias",
    "t1w_noise",
    "local_anatomy",
)
REALISM_LEVELS: dict[str, frozenset[str]] = {
    "ideal": frozenset(),
    "typical": frozenset(REALISM_ITEMS),
}
#: Random stream (third seed word, after seed and participant) of the realism items.
REALISM_STREAM = 4

#: Second-order eddy terms: SD of each coefficient's displacement (mm along phase encode, per
#: unit gradient at b = 1000) at EDDY_QUADRATIC_RADIUS_MM from the grid centre: ~half the
#: linear terms' there (signal.EDDY_LINEAR_SD x 70 mm = 0.56 mm), as on twice-refocused EPI.
EDDY_QUADRATIC_SD_MM = 0.25
EDDY_QUADRATIC_RADIUS_MM = 70.0
#: Names of the displacement terms, in coefficient order (position p in mm from the grid
#: centre, image axes): the first four are signal.Motion.eddy's.
EDDY_TERMS = ("const", "x", "y", "z", "xx", "yy", "zz", "xy", "xz", "yz")

#: Within-volume motion: share of the volumes (never the first) in which the head jerks; the
#: jerk's SD per axis (mm, degrees), the time it takes (share of the volume's acquisition).
SLICE_MOTION_VOLUME_SHARE = 0.08
SLICE_MOTION_JERK_MM = 1.0
SLICE_MOTION_JERK_DEG = 1.0
SLICE_MOTION_RISE = 0.1

#: Dropouts: share of the diffusion-weighted volumes hit, slices per hit volume, the signal
#: factor of a dropped slice, and how fast the risk falls from the lowest brain slice upward
#: (e-folding as a share of the brain's slice extent).
DROPOUT_VOLUME_SHARE = 0.10
DROPOUT_SLICES = (1, 3)
DROPOUT_FACTOR = (0.1, 0.5)
DROPOUT_INFERIOR_SCALE = 0.3

#: k-space: partial Fourier along phase encode (acquired share of the lines), and the smooth
#: per-volume image phase that shifts the echo in k-space: SD of its linear part (k-space lines)
#: for b0 and diffusion-weighted volumes, and of its quadratic part (radians at the field edge).
PARTIAL_FOURIER = 6.0 / 8.0
PHASE_SHIFT_LINES_SD = {"b0": 0.3, "dwi": 1.0}
PHASE_QUADRATIC_SD_RAD = 1.0

#: T1w contrast per participant: SD of GM (relative to WM) and relative SD of CSF intensity;
#: exponent range of the GM/WM mix (effective WM share = (wm / (gm + wm)) ** exponent).
T1W_GM_SD = 0.04
T1W_GM_LIMITS = (0.5, 0.75)
T1W_CSF_RELATIVE_SD = 0.15
T1W_MIX_EXPONENT = (0.6, 0.9)
#: T1w bias: SD of each cubic-polynomial coefficient of the log field over BIAS_LENGTH_MM.
T1W_BIAS_LOG_SD = 0.08
T1W_BIAS_LENGTH_MM = 100.0
#: T1w noise: weight of each neighbour in the noise's 3-tap filter along every axis, and the
#: SD of the log noise level (g-factor) as a quadratic field over T1W_BIAS_LENGTH_MM.
T1W_NOISE_NEIGHBOUR_WEIGHT = 0.35
T1W_NOISE_LEVEL_LOG_SD = 0.12

#: Local anatomy: ventricles (CSF >= half, deeper than VENTRICLE_MIN_DEPTH_MM in the brain)
#: enlarged by up to VENTRICLE_DILATION_MM; SULCAL_PATCHES patches (radius and the share of
#: sulcus-adjacent GM that turns to CSF at their centre drawn from the ranges).
VENTRICLE_CSF = 0.5
VENTRICLE_MIN_DEPTH_MM = 20.0
VENTRICLE_DILATION_MM = (0.0, 2.5)
SULCAL_PATCHES = (3, 8)
SULCAL_RADIUS_MM = (8.0, 18.0)
SULCAL_AMPLITUDE = (0.3, 0.8)
SULCAL_ADJACENCY_SIGMA_MM = 1.0

MODEL_SUMMARY = {
    "eddy": "displacement along phase encode (image j) d(p) = sum_t c_t term_t(p), terms "
    f"{', '.join(EDDY_TERMS)} of the position p (mm from the grid centre, image axes); "
    "c = (bvec @ coefficients) x b / 1000; the image intensity is multiplied by the Jacobian "
    "1 - dd/dy, so the total signal is conserved",
    "slice_motion": "in the listed volumes each slice has its own rigid position: the "
    "volume's, plus a jerk A x smoothstep((t - t0) / rise) over the slice's acquisition time t "
    "(interleaved: even slices then odd, as the sidecar's SliceTiming)",
    "dropouts": "the slice's signal is multiplied by signal_factor before noise",
    "gibbs": "in-plane DFT of each volume (with a smooth phase), divided by the voxel "
    "average's transfer function sinc(f_x) sinc(f_y), the k-space lines partial Fourier does "
    "not acquire set to zero (zero-filled reconstruction), magnitude of the inverse DFT; noise "
    "is added after that (white)",
    "t1w_contrast": "T1w = I_csf csf + (gm + wm) (I_gm + (1 - I_gm) x^gamma), x = wm / (gm + wm) "
    "(WM = 1); I_gm, I_csf and gamma per participant",
    "t1w_bias": "exp(cubic polynomial of position / length) on top of the linear + quadratic "
    "bias and the coil gain",
    "t1w_noise": "each Gaussian channel filtered by [w, 1, w] along every axis (SD kept) and "
    "multiplied by a smooth noise level (g-factor, mean ~1)",
    "local_anatomy": "template fractions changed per participant before the warp: tissue "
    "within dilation_mm of the ventricles becomes CSF; in each patch, GM next to sulcal CSF "
    "turns to CSF by amplitude x exp(-r^2 / (2 radius^2))",
}


@dataclass(frozen=True)
class Realism:
    """The realism items switched on, and the seed words of their random streams."""

    enabled: frozenset[str] = frozenset()
    seed_words: tuple[int, ...] = ()

    def __contains__(self, item: str) -> bool:
        return item in self.enabled

    @property
    def any_dwi(self) -> bool:
        return bool(self.enabled & {"eddy", "slice_motion", "dropouts", "gibbs"})

    def rng(self, item: str) -> np.random.Generator:
        """The item's own random stream (seed words, REALISM_STREAM, item index)."""
        return np.random.default_rng([*self.seed_words, REALISM_STREAM, REALISM_ITEMS.index(item)])

    def for_session(self, position: int) -> Realism:
        return dataclasses.replace(self, seed_words=(*self.seed_words, int(position)))


IDEAL = Realism()


def resolve_realism(level: str, off: tuple[str, ...] | list[str] = ()) -> frozenset[str]:
    """The items of ``level`` minus ``off``; ValueError names the valid levels and items."""
    if level not in REALISM_LEVELS:
        raise ValueError(f"--realism {level!r} is unknown; use one of {', '.join(REALISM_LEVELS)}")
    unknown = [name for name in off if name not in REALISM_ITEMS]
    if unknown:
        raise ValueError(
            f"--realism-off {' '.join(unknown)}: unknown item; "
            f"use any of {' '.join(REALISM_ITEMS)}"
        )
    return REALISM_LEVELS[level] - frozenset(off)


def interleaved_order(n_slices: int) -> list[int]:
    """Slices in acquisition order: interleaved ascending, even indices then odd."""
    return list(range(0, n_slices, 2)) + list(range(1, n_slices, 2))


# ---- Eddy currents and within-volume motion: one resampling of each volume.


def random_eddy_quadratic(rng: np.random.Generator) -> np.ndarray:
    """Second-order eddy coefficients (3 gradient axes, 6 terms), mm / mm^2 at b = 1000."""
    scale = EDDY_QUADRATIC_SD_MM / EDDY_QUADRATIC_RADIUS_MM**2
    return rng.normal(0.0, scale, (3, 6))


def eddy_displacement_mm(
    coefficients: np.ndarray, shape: tuple[int, int, int], voxel_mm: float
) -> np.ndarray:
    """The displacement along phase encode (mm) of one volume on its grid (X, Y, Z).

    coefficients (10,): the volume's c_t of EDDY_TERMS (gradient and b already applied).
    """
    x, y, z = [(np.arange(s) - (s - 1) / 2.0) * voxel_mm for s in shape]
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    c = coefficients
    return (
        c[0]
        + c[1] * x
        + c[2] * y
        + c[3] * z
        + c[4] * x * x
        + c[5] * y * y
        + c[6] * z * z
        + c[7] * x * y
        + c[8] * x * z
        + c[9] * y * z
    )


@numba.njit(cache=True, nogil=True, inline="always")
def _eddy_row(c, y, z):  # pragma: no cover - compiled
    """Along x at (y, z): d = constant + (slope + c[4] x) x, Jacobian 1 - dd/dy =
    jacobian_constant - c[7] x (c: eddy_displacement_mm's 10 coefficients)."""
    constant = c[0] + c[2] * y + c[3] * z + c[5] * y * y + c[6] * z * z + c[9] * y * z
    slope = c[1] + c[7] * y + c[8] * z
    jacobian_constant = 1.0 - (c[2] + 2.0 * c[5] * y + c[9] * z)
    return constant, slope, jacobian_constant


@numba.njit(cache=True, nogil=True)
def _resample_slice(
    volume, slice_matrices, eddy, centre, voxel_mm, jacobian, factor, support, out, k
):  # pragma: no cover
    """out[i, j, k]: the mean over the voxel's factor^3 sub-voxel points q of the head at
    ``slice_matrices[k] @ (q0, q1 - d(q) / voxel_mm, q2, 1)``, trilinear on the sub-voxel grid.

    d(q): eddy (10,) polynomial of the point's position ((q - centre) x voxel_mm, mm along j);
    with ``jacobian`` each point's value is multiplied by 1 - dd/dy. volume (1, FX, FY, FZ) is
    the head on anatomy.subvoxel_grid(factor): voxel index p is sub-voxel index
    ``factor (p + 0.5) - 0.5``. A voxel whose centre shows a voxel (clamped to the grid) outside
    ``support`` (X, Y, Z) is 0 without sampling (head_support). This is slice k of out.
    """
    nx, ny, nz = out.shape
    c = eddy
    n = factor
    weight = 1.0 / (n * n * n)
    matrix = slice_matrices[k]
    zk = (k - centre[2]) * voxel_mm
    for j in range(ny):
        yj = (j - centre[1]) * voxel_mm
        for i in range(nx):
            xi = (i - centre[0]) * voxel_mm
            row_constant, row_slope, _ = _eddy_row(c, yj, zk)
            dc = row_constant + (row_slope + c[4] * xi) * xi
            r0, r1, r2 = nearest_index(matrix, i, j - dc / voxel_mm, k)
            r0 = min(max(r0, 0), nx - 1)
            r1 = min(max(r1, 0), ny - 1)
            r2 = min(max(r2, 0), nz - 1)
            if not support[r0, r1, r2]:
                out[i, j, k] = 0.0
                continue
            total = 0.0
            for sc in range(n):
                q2 = k + (sc + 0.5) / n - 0.5
                z = (q2 - centre[2]) * voxel_mm
                for sb in range(n):
                    q1 = j + (sb + 0.5) / n - 0.5
                    y = (q1 - centre[1]) * voxel_mm
                    constant, slope, jacobian_constant = _eddy_row(c, y, z)
                    for sa in range(n):
                        q0 = i + (sa + 0.5) / n - 0.5
                        x = (q0 - centre[0]) * voxel_mm
                        d = constant + (slope + c[4] * x) * x
                        p0, p1, p2 = apply_affine(matrix, q0, q1 - d / voxel_mm, q2)
                        touches, cell = floor_cell(
                            volume,
                            n * (p0 + 0.5) - 0.5,
                            n * (p1 + 0.5) - 0.5,
                            n * (p2 + 0.5) - 0.5,
                        )
                        if not touches:
                            continue
                        value = trilinear(volume, 0, cell)
                        if jacobian:
                            value *= jacobian_constant - c[7] * x
                        total += value
            out[i, j, k] = total * weight


@numba.njit(cache=True, nogil=True, parallel=True)
def _resample_volume(
    volume, slice_matrices, eddy, centre, voxel_mm, jacobian, factor, support, out
):  # pragma: no cover - compiled
    """_resample_slice for every slice of out, slices in parallel."""
    for k in numba.prange(out.shape[2]):
        _resample_slice(
            volume, slice_matrices, eddy, centre, voxel_mm, jacobian, factor, support, out, k
        )


#: Voxels of margin around the head in head_support: a voxel's sub-voxel points and their
#: interpolation reach less than 2 voxels from where its centre maps for any rotation below
#: ~30 degrees and eddy stretch below ~50%.
SUPPORT_MARGIN_VOXELS = 2


def head_support(volume: np.ndarray, factor: int) -> np.ndarray:
    """Voxels (X, Y, Z) within SUPPORT_MARGIN_VOXELS of a non-zero sub-voxel of ``volume``
    (FX, FY, FZ): elsewhere a moved image is 0 (air). One volume of a series tells: a
    diffusion signal is 0 only where S0 is."""
    blocks = block_mean((volume != 0).astype(np.float32), factor) > 0
    cube = np.ones((3, 3, 3), dtype=bool)
    return ndimage.binary_dilation(blocks, cube, iterations=SUPPORT_MARGIN_VOXELS)


def resample_volume(
    volume: np.ndarray,
    slice_matrices: np.ndarray,
    eddy_coefficients: np.ndarray,
    voxel_mm: float,
    jacobian: bool,
    factor: int = 1,
    support: np.ndarray | None = None,
) -> np.ndarray:
    """One volume as the scanner shows it: eddy displacement along j, then each slice's rigid
    map (slice_matrices (Z, 4, 4), output voxel index -> reference voxel index).

    volume: the head at the reference position on anatomy.subvoxel_grid(factor) of the output
    grid (factor 1: the output grid itself); each output voxel is the mean of its sub-voxels'
    points, each interpolated on that finer grid, so a moved head is imaged without the blur
    of interpolating the voxel grid itself. voxel_mm: the output grid's voxel size. support
    (head_support, of the series): only voxels that can show the head are sampled.
    """
    shape = tuple(s // factor for s in volume.shape)
    out = np.empty(shape, dtype=np.float32, order="F")
    centre = (np.array(shape, dtype=np.float64) - 1) / 2.0
    if support is None:
        support = np.ones(shape, dtype=bool)
    _resample_volume(
        np.asfortranarray(volume, dtype=np.float32)[None],
        np.ascontiguousarray(slice_matrices, dtype=np.float64),
        np.ascontiguousarray(eddy_coefficients, dtype=np.float64),
        centre,
        float(voxel_mm),
        bool(jacobian),
        int(factor),
        np.ascontiguousarray(support, dtype=bool),
        out,
    )
    return out


@dataclass(frozen=True)
class SliceMotion:
    """Within-volume motion: per hit volume, each slice's offset from the volume's position.

    offsets[v] (Z, 6): translation (mm) and rotation (degrees) offsets of each slice.
    """

    offsets: dict[int, np.ndarray]

    def table(self, n_slices: int) -> list[dict]:
        order = interleaved_order(n_slices)
        rows = []
        for volume, offsets in sorted(self.offsets.items()):
            for k in range(n_slices):
                rows.append(
                    {
                        "volume": volume,
                        "slice": k,
                        "acquisition_position": order.index(k),
                        **{
                            name: round(float(value), 5)
                            for name, value in zip(SLICE_MOTION_COLUMNS, offsets[k], strict=True)
                        },
                    }
                )
        return rows

    def volume_offsets(self, n_volumes: int, slice_weights: np.ndarray) -> np.ndarray:
        """(n_volumes, 6): each volume's mean slice offset, weighted by ``slice_weights`` (Z,),
        e.g. the brain's voxels per slice; zero in volumes without a jerk.

        The head's average position while the volume was acquired: what one rigid registration
        of the whole volume finds, and what its framewise displacement (FD) measures. The
        offsets are small rotations, so their weighted mean is their mean pose.
        """
        weights = np.asarray(slice_weights, dtype=float)
        weights = weights / weights.sum()
        offsets = np.zeros((n_volumes, 6))
        for volume, per_slice in self.offsets.items():
            offsets[volume] = weights @ np.asarray(per_slice, dtype=float)
        return offsets


SLICE_MOTION_COLUMNS = (
    "trans_x_mm",
    "trans_y_mm",
    "trans_z_mm",
    "rot_x_deg",
    "rot_y_deg",
    "rot_z_deg",
)


def random_slice_motion(
    rng: np.random.Generator, n_volumes: int, n_slices: int, level: float = 1.0
) -> SliceMotion:
    """Pick the volumes (never the reference, at least one) and each one's jerk over time."""
    count = max(1, int(rng.binomial(n_volumes - 1, SLICE_MOTION_VOLUME_SHARE)))
    volumes = np.sort(rng.choice(np.arange(1, n_volumes), size=count, replace=False))
    order = interleaved_order(n_slices)
    time = np.empty(n_slices)
    time[order] = (np.arange(n_slices) + 0.5) / n_slices
    offsets = {}
    for volume in volumes:
        amplitude = rng.normal(0.0, 1.0, 6) * level
        amplitude[:3] *= SLICE_MOTION_JERK_MM
        amplitude[3:] *= SLICE_MOTION_JERK_DEG
        onset = rng.uniform(0.2, 0.8)
        ramp = np.clip((time - onset) / SLICE_MOTION_RISE, 0.0, 1.0)
        ramp = ramp * ramp * (3.0 - 2.0 * ramp)
        offsets[int(volume)] = ramp[:, None] * amplitude[None, :]
    return SliceMotion(offsets)


# ---- Slice dropouts.


@dataclass(frozen=True)
class Dropouts:
    """(volume, slice, signal_factor) of every dropped slice."""

    slices: tuple[tuple[int, int, float], ...]

    def apply(self, series: np.ndarray) -> None:
        """Scale the dropped slices of a series (X, Y, Z, n) in place."""
        for volume, k, factor in self.slices:
            series[:, :, k, volume] *= np.float32(factor)


def random_dropouts(
    rng: np.random.Generator, bvals: np.ndarray, brain_slices: np.ndarray
) -> Dropouts:
    """A few diffusion-weighted volumes (at least one) lose 1-3 slices, inferior ones more often.

    brain_slices (Z,) bool: slices that hold brain (the risk is over these only).
    """
    weighted = np.flatnonzero(bvals > 0)
    count = max(1, int(rng.binomial(len(weighted), DROPOUT_VOLUME_SHARE)))
    volumes = np.sort(rng.choice(weighted, size=count, replace=False))
    candidates = np.flatnonzero(brain_slices)
    extent = max(candidates[-1] - candidates[0], 1)
    risk = np.exp(-(candidates - candidates[0]) / (DROPOUT_INFERIOR_SCALE * extent))
    risk /= risk.sum()
    slices = []
    for volume in volumes:
        n = int(rng.integers(DROPOUT_SLICES[0], DROPOUT_SLICES[1] + 1))
        chosen = np.sort(
            rng.choice(candidates, size=min(n, len(candidates)), replace=False, p=risk)
        )
        for k in chosen:
            slices.append((int(volume), int(k), round(float(rng.uniform(*DROPOUT_FACTOR)), 4)))
    return Dropouts(tuple(slices))


# ---- k-space truncation (Gibbs ringing) with partial Fourier.


def omitted_lines(n_lines: int, omit_high: bool, partial_fourier: float = PARTIAL_FOURIER):
    """Boolean (n_lines,) over DFT frequencies (numpy order): the lines not acquired."""
    frequency = np.fft.fftfreq(n_lines) * n_lines
    acquired = int(round(partial_fourier * n_lines))
    ranked = np.sort(frequency)
    if omit_high:
        return frequency > ranked[acquired - 1]
    return frequency < ranked[n_lines - acquired]


def random_phases(rng: np.random.Generator, bvals: np.ndarray) -> np.ndarray:
    """Per volume (n, 3): k-space shift along x and y (lines) and quadratic phase (radians)."""
    phases = rng.normal(0.0, 1.0, (len(bvals), 3))
    shift_sd = np.where(bvals > 0, PHASE_SHIFT_LINES_SD["dwi"], PHASE_SHIFT_LINES_SD["b0"])
    phases[:, :2] *= shift_sd[:, None]
    phases[:, 2] *= PHASE_QUADRATIC_SD_RAD
    return phases


def truncate_k_space(volume: np.ndarray, phase: np.ndarray, omit_high: bool) -> np.ndarray:
    """The magnitude image the scanner reconstructs from one volume (X, Y, Z), see the docs.

    phase (3,): k-space shift along x and y (lines) and quadratic phase (radians at the edge);
    the readout (x) is fully sampled, phase encode (y) with PARTIAL_FOURIER.
    """
    nx, ny = volume.shape[:2]
    x = (np.arange(nx) - nx / 2.0) / nx
    y = (np.arange(ny) - ny / 2.0) / ny
    angle = 2.0 * np.pi * (phase[0] * x[:, None] + phase[1] * y[None, :])
    angle += phase[2] * 4.0 * (x[:, None] ** 2 + y[None, :] ** 2)
    image = volume * np.exp(1j * angle).astype(np.complex64)[..., None]
    spectrum = sp_fft.fft2(image, axes=(0, 1))
    transfer = np.sinc(np.fft.fftfreq(nx))[:, None] * np.sinc(np.fft.fftfreq(ny))[None, :]
    spectrum /= transfer.astype(np.float32)[..., None]
    spectrum[:, omitted_lines(ny, omit_high), :] = 0.0
    return np.abs(sp_fft.ifft2(spectrum, axes=(0, 1))).astype(np.float32)


def truncate_series(series: np.ndarray, phases: np.ndarray, omit_high: bool) -> None:
    """Apply :func:`truncate_k_space` to every volume of a series (X, Y, Z, n) in place."""
    for v in range(series.shape[3]):
        series[..., v] = truncate_k_space(series[..., v], phases[v], omit_high)


# ---- T1w.


@dataclass(frozen=True)
class T1wContrast:
    """A participant's T1w intensities (WM = 1) and GM/WM mixing exponent."""

    gm: float
    csf: float
    mix_exponent: float

    def intensity(self, gm: np.ndarray, wm: np.ndarray, csf: np.ndarray) -> np.ndarray:
        """Relative T1w of the brain's tissue fractions (non-linear GM/WM mix)."""
        parenchyma = gm + wm
        share = np.divide(wm, parenchyma, out=np.zeros_like(wm), where=parenchyma > 0)
        mixed = self.gm + (1.0 - self.gm) * share**self.mix_exponent
        return (parenchyma * mixed + self.csf * csf).astype(np.float32)


def random_t1w_contrast(rng: np.random.Generator, gm: float, csf: float) -> T1wContrast:
    """Around the population's GM and CSF intensities (relative to WM)."""
    return T1wContrast(
        gm=round(float(np.clip(rng.normal(gm, T1W_GM_SD), *T1W_GM_LIMITS)), 4),
        csf=round(float(csf * np.exp(rng.normal(0.0, T1W_CSF_RELATIVE_SD))), 4),
        mix_exponent=round(float(rng.uniform(*T1W_MIX_EXPONENT)), 4),
    )


def polynomial_log_field(
    rng: np.random.Generator, shape: tuple[int, int, int], voxel_mm: float, order: int, sd: float
) -> np.ndarray:
    """exp of a random polynomial of position (over T1W_BIAS_LENGTH_MM) up to ``order``.

    Each coefficient of x^a y^b z^c (0 < a + b + c <= order) is N(0, sd); evaluated as
    sum_c P_c(x, y) z^c, one plane polynomial per power of z.
    """
    x, y, z = [(np.arange(s) - (s - 1) / 2.0) * voxel_mm / T1W_BIAS_LENGTH_MM for s in shape]
    log_field = np.zeros(shape, dtype=np.float32)
    for c in range(order + 1):
        plane = np.zeros(shape[:2])
        for a in range(order + 1 - c):
            for b in range(order + 1 - a - c):
                if a + b + c > 0:
                    plane += rng.normal(0.0, sd) * np.outer(x**a, y**b)
        log_field += plane.astype(np.float32)[:, :, None] * (z**c).astype(np.float32)
    return np.exp(log_field, out=log_field)


def correlate_noise(noise: np.ndarray) -> np.ndarray:
    """White Gaussian noise filtered by [w, 1, w] along each axis, its SD kept (float32)."""
    w = T1W_NOISE_NEIGHBOUR_WEIGHT
    kernel = np.array([w, 1.0, w], dtype=np.float32)
    kernel /= np.sqrt((kernel**2).sum())
    out = noise
    for axis in range(noise.ndim):
        out = ndimage.correlate1d(out, kernel, axis=axis, mode="wrap")
    return out


def correlated_rician_noise(
    clean: np.ndarray, sigma: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Magnitude of clean + complex correlated Gaussian noise of SD ``sigma`` (map) per channel.

    Draws exactly what :func:`signal.add_rician_noise` draws (two C-order standard normal
    arrays of clean's shape), so the caller's later random draws are unchanged.
    """
    real = correlate_noise(rng.standard_normal(clean.shape, dtype=np.float32))
    real *= sigma
    real += clean
    real *= real
    imaginary = correlate_noise(rng.standard_normal(clean.shape, dtype=np.float32))
    imaginary *= sigma
    imaginary *= imaginary
    real += imaginary
    return np.sqrt(real, out=real)


# ---- Local anatomy.


@dataclass(frozen=True)
class _TemplateRegions:
    """Participant-independent parts of the local anatomy (computed once per template)."""

    ventricles: np.ndarray  # bool, template grid
    box: tuple[slice, ...]  # around the ventricles (plus the largest dilation)
    distance_mm: np.ndarray  # distance from the ventricles inside the box
    cortex: np.ndarray  # (n, 3) template indices of GM >= half outside the ventricles


_REGIONS: dict[int, _TemplateRegions] = {}


def template_regions(template: TemplateAnatomy) -> _TemplateRegions:
    """Ventricles (CSF >= VENTRICLE_CSF, deeper than VENTRICLE_MIN_DEPTH_MM; depth on a 2x
    coarser grid), their distance map and the cortical voxels; cached per template."""
    key = id(template.fractions)
    if key not in _REGIONS:
        voxel_mm = float(np.abs(np.diag(template.affine)[:3]).mean())
        brain = template.fractions.sum(axis=0) > 0.5
        coarse = brain[::2, ::2, ::2]
        depth = ndimage.distance_transform_edt(coarse, sampling=2.0 * voxel_mm)
        depth = depth.repeat(2, 0).repeat(2, 1).repeat(2, 2)[tuple(slice(n) for n in brain.shape)]
        ventricles = (template.fractions[2] >= VENTRICLE_CSF) & (depth > VENTRICLE_MIN_DEPTH_MM)
        where = np.argwhere(ventricles)
        margin = int(np.ceil(VENTRICLE_DILATION_MM[1] / voxel_mm)) + 2
        low = np.maximum(where.min(axis=0) - margin, 0)
        high = np.minimum(where.max(axis=0) + margin + 1, ventricles.shape)
        box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        distance = ndimage.distance_transform_edt(~ventricles[box], sampling=voxel_mm)
        cortex = np.argwhere((template.fractions[0] > 0.5) & ~ventricles)
        _REGIONS.clear()
        _REGIONS[key] = _TemplateRegions(ventricles, box, distance.astype(np.float32), cortex)
    return _REGIONS[key]


def _box(centre: np.ndarray, radius: float, shape: tuple[int, ...]) -> tuple[slice, ...]:
    low = np.maximum(np.floor(centre - radius).astype(int), 0)
    high = np.minimum(np.ceil(centre + radius).astype(int) + 1, shape)
    return tuple(slice(a, b) for a, b in zip(low, high, strict=True))


def local_anatomy(
    template: TemplateAnatomy, rng: np.random.Generator
) -> tuple[TemplateAnatomy, dict]:
    """A participant's own template: ventricles enlarged, sulci widened in a few patches.

    Returns the template with new fractions (brain total unchanged) and the JSON-ready record.
    """
    voxel_mm = float(np.abs(np.diag(template.affine)[:3]).mean())
    fractions = template.fractions.copy()
    gm, wm, csf = fractions
    regions = template_regions(template)
    ventricles, box = regions.ventricles, regions.box
    dilation = float(rng.uniform(*VENTRICLE_DILATION_MM))
    gain = np.clip(dilation - regions.distance_mm + 0.5 * voxel_mm, 0.0, voxel_mm) / voxel_mm
    gain[regions.distance_mm == 0] = 0.0  # the ventricles themselves keep their tissue
    tissue = gm[box] + wm[box]
    csf[box] += gain * tissue
    gm[box] *= 1.0 - gain
    wm[box] *= 1.0 - gain
    added = float((gain * tissue).sum()) * voxel_mm**3
    ventricle_added = added

    sulcal_csf = np.where(ventricles, 0.0, csf).astype(np.float32)
    cortex = regions.cortex
    patches = []
    for _ in range(int(rng.integers(SULCAL_PATCHES[0], SULCAL_PATCHES[1] + 1))):
        centre = cortex[rng.integers(len(cortex))].astype(float)
        radius_mm = float(rng.uniform(*SULCAL_RADIUS_MM))
        amplitude = float(rng.uniform(*SULCAL_AMPLITUDE))
        radius = radius_mm / voxel_mm
        box = _box(centre, 3.0 * radius, gm.shape)
        grid = np.ogrid[box]
        r2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
        weight = amplitude * np.exp(-0.5 * r2 / radius**2).astype(np.float32)
        adjacency = ndimage.gaussian_filter(sulcal_csf[box], SULCAL_ADJACENCY_SIGMA_MM / voxel_mm)
        moved = weight * np.clip(adjacency, 0.0, 1.0) * gm[box]
        gm[box] -= moved
        csf[box] += moved
        sulcal_csf[box] += moved
        patch_added = float(moved.sum()) * voxel_mm**3
        added += patch_added
        patches.append(
            {
                "centre_template_mm": [
                    round(float(v), 1)
                    for v in template.affine[:3, :3] @ centre + template.affine[:3, 3]
                ],
                "radius_mm": round(radius_mm, 2),
                "amplitude": round(amplitude, 3),
                "csf_added_ml": round(patch_added / 1000.0, 3),
            }
        )
    record = {
        "ventricle_dilation_mm": round(dilation, 3),
        "ventricle_csf_added_ml": round(ventricle_added / 1000.0, 3),
        "sulcal_patches": patches,
        "csf_added_ml_total": round(added / 1000.0, 3),
    }
    return dataclasses.replace(template, fractions=fractions), record


# ---- One session's DWI artefacts.


@dataclass(frozen=True)
class SessionArtefacts:
    """What the DWI realism items did in one session (for the ground truth).

    eddy: (3, 10) displacement coefficients per gradient axis (EDDY_TERMS, mm at b = 1000),
    the linear ones signal.Motion.eddy's; eddy_jacobian: whether intensity follows the
    Jacobian; phases (n, 3) and omit_high: the k-space model (None without ``gibbs``).
    """

    eddy: np.ndarray
    eddy_jacobian: bool
    slice_motion: SliceMotion | None
    dropouts: Dropouts | None
    phases: np.ndarray | None
    omit_high: bool

    def volume_eddy(self, bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
        """Each volume's coefficients (n, 10): bvec @ eddy x b / 1000 (0 for b0)."""
        return volume_eddy(self.eddy, bvals, bvecs)


def volume_eddy(eddy: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    """Per-volume displacement coefficients (n, 10) from per-axis ones (3, 10)."""
    scale = np.where(bvals > 0, bvals / EDDY_REFERENCE_BVAL, 0.0)
    return (bvecs @ eddy) * scale[:, None]


def full_eddy(motion: Motion, quadratic: np.ndarray | None) -> np.ndarray:
    """(3, 10) coefficients: the motion's constant + linear terms and the quadratic ones."""
    return np.hstack([motion.eddy, np.zeros((3, 6)) if quadratic is None else quadratic])


def move_series(
    volumes: np.ndarray,
    voxel_mm: float,
    motion: Motion,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    eddy: np.ndarray,
    jacobian: bool,
    slice_motion: SliceMotion | None,
    factor: int = 1,
) -> np.ndarray:
    """Each volume as the moved head appears: eddy displacement (eddy (3, 10), with its
    Jacobian if asked) and the volume's rigid motion, per slice in jerked volumes.

    volumes (FX, FY, FZ, n): the head at the reference position on the sub-voxel grid of the
    output (anatomy.subvoxel_grid(factor)); returns (FX, FY, FZ, n) / factor (resample_volume).
    """
    shape = tuple(s // factor for s in volumes.shape[:3])
    out = np.empty(shape + volumes.shape[3:], dtype=np.float32, order="F")
    coefficients = volume_eddy(eddy, bvals, bvecs)
    support = head_support(volumes[..., 0], factor)
    jerks = {} if slice_motion is None else slice_motion.offsets
    for v in range(volumes.shape[3]):
        translation, angles = motion.translations_mm[v], motion.rotations_deg[v]
        if v in jerks:
            matrices = np.stack(
                [
                    rigid_index_matrix(shape, voxel_mm, translation + o[:3], angles + o[3:])
                    for o in jerks[v]
                ]
            )
        else:
            matrix = rigid_index_matrix(shape, voxel_mm, translation, angles)
            matrices = np.repeat(matrix[None], shape[2], axis=0)
        out[..., v] = resample_volume(
            volumes[..., v], matrices, coefficients[v], voxel_mm, jacobian, factor, support
        )
    return out
