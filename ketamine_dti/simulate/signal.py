"""Diffusion signal of a tissue mixture, head motion, eddy-like distortion and Rician noise.

Arrays in, arrays out (numpy, and numba for the signal and resampling loops). Diffusivities in
mm^2/s, b-values in s/mm^2.

Tissue model (per voxel, partial volume from :mod:`anatomy`):

- gray matter: a nearly isotropic tensor, MD from the clinical model per ROI and session (MD of
  GM outside the ROIs is a participant-level value), with a weak anisotropy
  (:data:`GM_ANISOTROPY`) along the local fibre field. Its trace, hence its MD, is exact;
- white matter: an axially symmetric tensor along the fibre field, MD :data:`WM_MD`, more
  anisotropic in deep than in superficial WM (:data:`WM_ANISOTROPY_DEEP`);
- CSF: free water, :data:`CSF_DIFFUSIVITY`;
- T2-weighted S0 differs by tissue (:data:`S0_RELATIVE`), under a smooth receive-coil bias.

SNR is defined as ``mean b0 signal in white matter (WM fraction >= WM_SNR_FRACTION, in the clean
first b0) / sigma``, with sigma the SD of the Gaussian noise in each of the two quadrature
channels (so the magnitude is Rician).

Geometry. Gradients are handled in the image (voxel-axis) frame, as FSL bvecs are: the first
volume is the reference head position; volume v sees the head rotated by ``R_v``, so the
tissue's diffusion is probed along ``R_v^T g``; the image is then resampled with the rigid
motion and an eddy-current-like displacement along the phase-encode axis
(realism.move_series), from the head's signal on a grid of sub-voxels, so that a moved head
is imaged without the blur of interpolating the voxel grid itself.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np

from ketamine_dti.simulate.anatomy import rotation_matrix
from ketamine_dti.simulate.interpolation import apply_affine, floor_cell, trilinear

LOGGER = logging.getLogger(__name__)

#: Free water at body temperature (mm^2/s).
CSF_DIFFUSIVITY = 3.0e-3
#: White-matter MD (mm^2/s) and anisotropy a (eigenvalues MD*(1+2a), MD*(1-a), MD*(1-a), so
#: FA = 3a / sqrt(3 + 6a^2)): FA 0.68 in deep WM, 0.33 in superficial (gyral) WM, where
#: fibres fan and cross; the local depth comes from the template (anatomy.wm_depth).
WM_MD = 0.72e-3
WM_ANISOTROPY_DEEP = 0.47
WM_ANISOTROPY_SUPERFICIAL = 0.20
#: Gray-matter anisotropy a: eigenvalues MD*(1+2a), MD*(1-a), MD*(1-a), i.e. FA ~0.12.
GM_ANISOTROPY = 0.07
#: T2-weighted S0 relative to WM at TE ~ 80-90 ms (proton density x T2 decay), 3 T, fully
#: relaxed (a long TR).
S0_RELATIVE = {"gm": 1.4, "wm": 1.0, "csf": 3.0}
#: Longitudinal relaxation times (s) at 3 T: WM ~0.85, cortical GM ~1.35 (Wansapura et al.
#: 1999, JMRI 9:531-8; Stanisz et al. 2005, MRM 54:507-12), CSF ~4.2 (Lu et al. 2005).
T1_S = {"gm": 1.35, "wm": 0.85, "csf": 4.2}
#: b0 signal of pure WM under a flat coil (scanner units; int16 storage keeps headroom).
S0_WM = 1000.0
#: WM fraction that counts as white matter in the SNR definition.
WM_SNR_FRACTION = 0.9
#: Receive-coil bias: SD of the linear and quadratic coefficients (fraction of signal at 100 mm).
BIAS_LINEAR_SD = 0.06
BIAS_QUADRATIC_SD = 0.04
BIAS_LENGTH_MM = 100.0
#: Inter-volume motion: random-walk step SD and per-volume jitter SD (mm and degrees), for a
#: motion level of 1 (mean framewise displacement ~0.35 mm between DWI volumes; participants'
#: levels vary, see session.MOTION_LEVEL_LOG_SD).
MOTION_STEP_MM = 0.08
MOTION_STEP_DEG = 0.06
MOTION_JITTER_MM = 0.04
MOTION_JITTER_DEG = 0.03
#: Eddy-current displacement along phase encode, per unit gradient at b = 1000 s/mm^2:
#: SD of the constant shift (mm) and of the x/y/z gradients of the shift (mm per mm).
EDDY_SHIFT_SD_MM = 0.5
EDDY_LINEAR_SD = 0.008
EDDY_REFERENCE_BVAL = 1000.0
#: Rows along k that tissue_signal's kernel takes in turn (16 float32: one cache line).
ROW_BLOCK = 16
#: Iterations of the electrostatic repulsion that spreads the gradient directions (converged).
REPULSION_ITERATIONS = 2000


def gradient_scheme(n_directions: int, n_b0: int, bval: float) -> tuple[np.ndarray, np.ndarray]:
    """b-values (s/mm^2) and unit b-vectors (n, 3), image frame, b0s spread through the run.

    Directions come from electrostatic repulsion on the half sphere with a fixed start, so every
    session of a preset uses the same scanner table, as on a real scanner.
    """
    directions = np.array(_repulsion_directions(n_directions))
    n_volumes = n_directions + n_b0
    b0_positions = np.round(np.linspace(0, n_volumes, n_b0, endpoint=False)).astype(int)
    bvals = np.full(n_volumes, bval)
    bvecs = np.zeros((n_volumes, 3))
    bvals[b0_positions] = 0.0
    is_dwi = bvals > 0
    bvecs[is_dwi] = directions
    return bvals, bvecs


@functools.lru_cache(maxsize=8)
def _repulsion_directions(n_directions: int) -> tuple[tuple[float, float, float], ...]:
    """Unit vectors (upper half sphere) spread by electrostatic repulsion, fixed start."""
    from dipy.core.sphere import HemiSphere, disperse_charges

    rng = np.random.default_rng(n_directions)
    theta = np.arccos(rng.uniform(-1.0, 1.0, n_directions))
    phi = rng.uniform(0.0, 2.0 * np.pi, n_directions)
    hemi, _ = disperse_charges(HemiSphere(theta=theta, phi=phi), REPULSION_ITERATIONS)
    directions = hemi.vertices * np.where(hemi.vertices[:, 2:3] < 0, -1.0, 1.0)
    return tuple(tuple(float(c) for c in d) for d in directions)


def bias_field(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    voxel_mm: float,
    linear_mean: Sequence[float] = (0.0, 0.0, 0.0),
    quadratic_mean: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """A smooth multiplicative receive field (mean ~1): exp of linear + quadratic terms in the
    grid-centred position (units of BIAS_LENGTH_MM), each coefficient drawn about its mean
    (``linear_mean``, ``quadratic_mean``: a coil's own profile; zero by default)."""
    axes = [(np.arange(s) - (s - 1) / 2.0) * voxel_mm / BIAS_LENGTH_MM for s in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    linear = np.add(linear_mean, rng.normal(0.0, BIAS_LINEAR_SD, 3))
    quadratic = np.add(quadratic_mean, rng.normal(0.0, BIAS_QUADRATIC_SD, 3))
    log_field = (
        linear[0] * x
        + linear[1] * y
        + linear[2] * z
        + quadratic[0] * x**2
        + quadratic[1] * y**2
        + quadratic[2] * z**2
    )
    return np.exp(log_field).astype(np.float32)


@numba.njit(cache=True, nogil=True, parallel=True)
def _tissue_signal(
    gm,
    gm_md,
    wm,
    csf,
    fibre,
    depth,
    bvals,
    design,
    relative,
    s0,
    head,
    head_column,
    factor,
    paint,
    out,
):  # pragma: no cover - compiled
    """out[i, j, k, v]: the voxel's compartments' signal (+ the head's, with ``paint``) x s0.

    design (n_vol, 6): each gradient's (gx^2, gy^2, gz^2, 2 gx gy, 2 gx gz, 2 gy gz), so that
    g^T T g = design[v] . fibre[:, voxel]; relative: S0 of GM, WM, CSF; head (U, CX, CY, CZ) on
    the grid ``factor`` times coarser, head_column[v] its column for volume v. Blocks of
    ROW_BLOCK slabs along k run in parallel.
    """
    n_labels = gm.shape[0]
    nx, ny, nz, n_vol = out.shape
    s0_gm, s0_wm, s0_csf = relative[0], relative[1], relative[2]
    csf_signal = s0_csf * np.exp(-bvals * CSF_DIFFUSIVITY)
    n_blocks = (nz + ROW_BLOCK - 1) // ROW_BLOCK
    for block in numba.prange(n_blocks):
        # One row of voxels (i) at a time, gathered once from inputs of any memory order;
        # ROW_BLOCK neighbouring rows along k in turn, which share the cache lines of
        # C-ordered inputs.
        row_gm = np.empty((n_labels, nx), dtype=np.float32)
        row_md = np.empty((n_labels, nx), dtype=np.float32)
        row_fibre = np.empty((6, nx), dtype=np.float32)
        row_wm = np.empty(nx)
        row_csf = np.empty(nx)
        row_s0 = np.empty(nx)
        brain = np.empty(nx)
        anisotropy = np.empty(nx)
        coarse_i = np.arange(nx) // factor
        for j in range(ny):
            cj = j // factor
            for k in range(block * ROW_BLOCK, min((block + 1) * ROW_BLOCK, nz)):
                ck = k // factor
                for i in range(nx):
                    w = wm[i, j, k]
                    f = csf[i, j, k]
                    total = w + f
                    for label in range(n_labels):
                        row_gm[label, i] = gm[label, i, j, k]
                        row_md[label, i] = gm_md[label, i, j, k]
                        total += row_gm[label, i]
                    for c in range(6):
                        row_fibre[c, i] = fibre[c, i, j, k]
                    row_wm[i] = w
                    row_csf[i] = f
                    row_s0[i] = s0[i, j, k]
                    brain[i] = total
                    deep = min(max(depth[i, j, k], 0.0), 1.0)
                    anisotropy[i] = (
                        WM_ANISOTROPY_SUPERFICIAL
                        + (WM_ANISOTROPY_DEEP - WM_ANISOTROPY_SUPERFICIAL) * deep
                    )
                for v in range(n_vol):
                    b = bvals[v]
                    d = design[v]
                    for i in range(nx):
                        value = 0.0
                        if brain[i] > 0.0:
                            along = (
                                d[0] * row_fibre[0, i]
                                + d[1] * row_fibre[1, i]
                                + d[2] * row_fibre[2, i]
                                + d[3] * row_fibre[3, i]
                                + d[4] * row_fibre[4, i]
                                + d[5] * row_fibre[5, i]
                            )
                            # WM: ADC along g = MD (1 + a (3 (g . v)^2 - 1)), trace-preserving.
                            if row_wm[i] > 0.0:
                                adc = WM_MD * (1.0 + (3.0 * along - 1.0) * anisotropy[i])
                                # Single precision, as the stored signal.
                                value += s0_wm * row_wm[i] * np.exp(np.float32(-b * adc))
                            value += row_csf[i] * csf_signal[v]
                            gm_shape = 1.0 - GM_ANISOTROPY + 3.0 * GM_ANISOTROPY * along
                            for label in range(n_labels):
                                fraction = row_gm[label, i]
                                if fraction > 0.0:
                                    exponent = np.float32(-b * row_md[label, i] * gm_shape)
                                    value += s0_gm * fraction * np.exp(exponent)
                        if paint and brain[i] < 1.0:
                            painted = head[head_column[v], coarse_i[i], cj, ck]
                            value += (1.0 - max(brain[i], 0.0)) * painted
                        out[i, j, k, v] = value * row_s0[i]


class OutsideSignal(NamedTuple):
    """The head's signal outside the brain, for :func:`tissue_signal`: ``values`` (U, CX, CY, CZ)
    relative to WM S0 on a grid ``factor`` times coarser than the signal's, ``column`` (n_vol,)
    the row of ``values`` that volume v shows (head.dwi_table)."""

    values: np.ndarray
    column: np.ndarray
    factor: int


def b0_contrast(repetition_time_s: float | None = None) -> dict[str, float]:
    """S0 of each tissue relative to WM: :data:`S0_RELATIVE`, times the T1 saturation
    ``1 - exp(-TR / T1)`` of a repetition time (relative to WM's), or fully relaxed (None).

    Why: at a short TR, CSF has not recovered (T1 ~4 s), and the b0 loses most of the CSF
    contrast that mutual information registers on. At the real Prisma pair's TR of 3.5 s this
    gives CSF / GM / WM = 1.72 / 1.32 / 1 (its b0, voxels picked by ADC: ~1.8 / 1.37 / 1).
    """
    if repetition_time_s is None:
        return dict(S0_RELATIVE)
    recovered = {t: 1.0 - np.exp(-repetition_time_s / t1) for t, t1 in T1_S.items()}
    return {t: float(S0_RELATIVE[t] * recovered[t] / recovered["wm"]) for t in S0_RELATIVE}


def tissue_signal(
    gm_by_label: np.ndarray,
    wm: np.ndarray,
    csf: np.ndarray,
    fibre_tensor: np.ndarray,
    wm_depth: np.ndarray,
    gm_md: np.ndarray,
    bvals: np.ndarray,
    head_gradients: np.ndarray,
    s0_field: np.ndarray,
    outside: OutsideSignal | None = None,
    s0_relative: dict[str, float] | None = None,
) -> np.ndarray:
    """Noise-free DWI (X, Y, Z, n_vol) float32 of a tissue mixture, at the reference position.

    gm_by_label (L+1, X, Y, Z): GM fraction per label (0 = outside ROIs); gm_md (L+1, X, Y, Z):
    the MD (mm^2/s) of each label's GM in each voxel; wm_depth (X, Y, Z): 0 superficial .. 1
    deep white matter; fibre_tensor (6, X, Y, Z): v v^T in the image frame; head_gradients
    (n_vol, 3): unit gradient of each volume in the head's reference frame; s0_field (X, Y, Z):
    WM b0 signal including the coil bias. ``outside``: the head's signal, filling what the
    brain leaves of each voxel. ``s0_relative``: the tissues' b0 contrast (default
    :data:`S0_RELATIVE`; see :func:`b0_contrast`).
    """
    contrast = S0_RELATIVE if s0_relative is None else s0_relative
    n_vol = len(bvals)
    gx, gy, gz = np.asarray(head_gradients, dtype=np.float64).T
    design = np.stack([gx * gx, gy * gy, gz * gz, 2 * gx * gy, 2 * gx * gz, 2 * gy * gz], axis=1)
    if outside is None:
        head, column, factor = np.zeros((1, 1, 1, 1), np.float32), np.zeros(n_vol, int), 1
    else:
        head, column, factor = outside
    # Volume-major (Fortran) memory: each volume is contiguous, as NIfTI stores it.
    out = np.empty(wm.shape + (n_vol,), dtype=np.float32, order="F")

    def c32(array: np.ndarray) -> np.ndarray:  # any memory order: the kernel gathers rows
        return np.asarray(array, dtype=np.float32)

    _tissue_signal(
        c32(gm_by_label),
        c32(gm_md),
        c32(wm),
        c32(csf),
        c32(fibre_tensor),
        c32(wm_depth),
        np.asarray(bvals, dtype=np.float64),
        np.ascontiguousarray(design),
        np.array([contrast[t] for t in ("gm", "wm", "csf")]),
        c32(s0_field),
        c32(head),
        np.ascontiguousarray(column, dtype=np.int64),
        int(factor),
        outside is not None,
        out,
    )
    return out


def apparent_md(series: np.ndarray, bvals: np.ndarray) -> np.ndarray:
    """The MD (mm^2/s) a perfect DTI pipeline would measure in each voxel of a noiseless series.

    series (X, Y, Z, n_vol): the noiseless signal at the reference head position before any
    motion, eddy or susceptibility resampling (each volume's gradient is the one the tissue
    saw); bvals (n_vol,) s/mm^2. Returns float32 (X, Y, Z): the mean over the diffusion-weighted
    volumes of the apparent diffusion coefficient ``ln(S0 / S_v) / b_v``, S0 the mean of the
    b=0 volumes; 0 where a voxel has no signal (outside the head).

    Why this quantity: it is the partial-volume-mixed, apparent MD of the voxel as imaged, not
    the tissue's MD. A DTI fit is log-linear, so for any voxel (a tissue mixture included) its
    MD, the trace of the fitted tensor / 3, is the mean of the directions' ADCs when the
    directions cover the sphere evenly (mean g g^T = I/3; the repulsion scheme is close: for
    the weakly anisotropic GM tensor the error is below 0.1%). For a single tensor it is
    exactly the compartment's MD. The log of the direction-averaged signal would be lower by
    about b var(ADC) / 2 (the spherical-mean ADC, another model); a volume-weighted mean of the
    compartments' MDs would ignore that CSF, with its high S0 and diffusivity, moves the
    measured MD by ~2.4x its volume fraction (session.BIAS_PER_FRACTION), which a pipeline that
    averages a voxel with CSF in it rightly reports. Noise, motion, distortion, interpolation
    and the choice of voxels are what a pipeline adds to this.
    """
    bvals = np.asarray(bvals, dtype=float)
    weighted = np.flatnonzero(bvals > 0)
    unweighted = np.flatnonzero(bvals <= 0)
    if len(weighted) == 0 or len(unweighted) == 0:
        raise ValueError("apparent_md needs b=0 and diffusion-weighted volumes")
    s0 = np.zeros(series.shape[:3], dtype=np.float64)
    for volume in unweighted:
        s0 += series[..., volume]
    s0 /= len(unweighted)
    valid = s0 > 0
    adc_sum = np.zeros_like(s0)
    for volume in weighted:
        weighted_signal = series[..., volume].astype(np.float64)
        valid &= weighted_signal > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            adc_sum += np.log(s0 / weighted_signal) / bvals[volume]
    md = np.where(valid, adc_sum / len(weighted), 0.0)
    return md.astype(np.float32)


@dataclass(frozen=True)
class Motion:
    """Per-volume rigid motion in the image frame (mm, degrees) and eddy coefficients.

    eddy (3, 4): displacement along the phase-encode axis for a unit gradient along image axis
    a is ``eddy[a, 0] + eddy[a, 1:] . position_mm`` (scaled by b / 1000).
    """

    translations_mm: np.ndarray  # (n_vol, 3)
    rotations_deg: np.ndarray  # (n_vol, 3)
    eddy: np.ndarray  # (3, 4)

    @property
    def rotations(self) -> np.ndarray:
        return np.stack([rotation_matrix(a) for a in self.rotations_deg])

    def framewise_displacement_mm(
        self, radius_mm: float = 50.0, offsets: np.ndarray | None = None
    ) -> np.ndarray:
        """Power et al. FD between consecutive volumes (rotations as arc on a 50 mm sphere).

        ``offsets`` (n_vol, 6; mm, degrees): how far each volume's mean head position during
        its acquisition lies from its base position (within-volume motion,
        ``realism.SliceMotion.volume_offsets``).
        """
        translations, rotations = self.translations_mm, self.rotations_deg
        if offsets is not None:
            translations = translations + offsets[:, :3]
            rotations = rotations + offsets[:, 3:]
        params = np.hstack([translations, np.deg2rad(rotations) * radius_mm])
        return np.concatenate([[0.0], np.abs(np.diff(params, axis=0)).sum(axis=1)])


def no_motion(n_volumes: int) -> Motion:
    """The ideal acquisition: the head never moves and there are no eddy currents."""
    return Motion(np.zeros((n_volumes, 3)), np.zeros((n_volumes, 3)), np.zeros((3, 4)))


def random_motion(rng: np.random.Generator, n_volumes: int, level: float = 1.0) -> Motion:
    """Random-walk head motion (volume 0 is the reference) and per-session eddy coefficients."""

    def walk(step: float, jitter: float) -> np.ndarray:
        steps = rng.normal(0.0, step * level, (n_volumes, 3))
        path = np.cumsum(steps, axis=0) + rng.normal(0.0, jitter * level, (n_volumes, 3))
        return path - path[0]

    translations = walk(MOTION_STEP_MM, MOTION_JITTER_MM)
    rotations = walk(MOTION_STEP_DEG, MOTION_JITTER_DEG)
    eddy = np.hstack(
        [rng.normal(0.0, EDDY_SHIFT_SD_MM, (3, 1)), rng.normal(0.0, EDDY_LINEAR_SD, (3, 3))]
    )
    return Motion(translations, rotations, eddy)


def head_frame_gradients(bvecs: np.ndarray, motion: Motion) -> np.ndarray:
    """Each volume's gradient as the moved head sees it: R_v^T g (n_vol, 3)."""
    return np.einsum("vji,vj->vi", motion.rotations, bvecs)


@numba.njit(cache=True, nogil=True)
def _resample_affine(volume, matrix, out):  # pragma: no cover - compiled
    """out[p] = volume[0][matrix @ (p, 1)] with trilinear interpolation, 0 outside.

    volume is (1, X, Y, Z) (a single channel, see :mod:`interpolation`); out is (X, Y, Z).
    """
    nx, ny, nz = out.shape
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                p0, p1, p2 = apply_affine(matrix, i, j, k)
                touches, cell = floor_cell(volume, p0, p1, p2)
                out[i, j, k] = trilinear(volume, 0, cell) if touches else 0.0


def resample_affine(volume: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """One volume (X, Y, Z) sampled at ``matrix @ (output index, 1)``: trilinear, 0 outside."""
    out = np.empty(volume.shape, dtype=np.float32)
    source = np.ascontiguousarray(volume, dtype=np.float32)[None]
    _resample_affine(source, np.ascontiguousarray(matrix, dtype=np.float64), out)
    return out


def rigid_index_matrix(
    shape: tuple[int, int, int],
    voxel_mm: float,
    translation_mm: np.ndarray,
    angles_deg: np.ndarray,
    undistort: np.ndarray | None = None,
) -> np.ndarray:
    """Output voxel index -> reference voxel index of a head moved by (translation, angles).

    ``undistort`` (4x4, mm from the grid centre) is applied to the output position first: the
    eddy displacement of :func:`volume_source_matrix`. One place builds the grid's rigid
    geometry for every caller (motion, susceptibility, within-volume motion, the benchmarks).
    """
    centre = (np.array(shape) - 1) / 2.0
    index_to_mm = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    index_to_mm[:3, 3] = -centre * voxel_mm
    rotation = rotation_matrix(angles_deg)
    unmove = np.eye(4)
    unmove[:3, :3] = rotation.T
    unmove[:3, 3] = -rotation.T @ np.asarray(translation_mm, dtype=float)
    undistort = np.eye(4) if undistort is None else undistort  # x identity: exact
    return np.linalg.inv(index_to_mm) @ unmove @ undistort @ index_to_mm


def volume_source_matrix(
    shape: tuple[int, int, int],
    voxel_mm: float,
    motion: Motion,
    volume: int,
    bval: float,
    bvec: np.ndarray,
    phase_encode_axis: int = 1,
) -> np.ndarray:
    """4x4 map from an output voxel index to the reference-position voxel index it shows.

    Output position p (mm from the grid centre) shows the head point
    ``R_v^T (p - d_v(p) e_pe - t_v)``, with the eddy displacement d_v affine in p.
    """
    undistort = np.eye(4)
    if bval > 0:
        coefficients = (bvec @ motion.eddy) * (bval / EDDY_REFERENCE_BVAL)
        undistort[phase_encode_axis, 3] -= coefficients[0]
        undistort[phase_encode_axis, :3] -= coefficients[1:]
    translation, angles = motion.translations_mm[volume], motion.rotations_deg[volume]
    return rigid_index_matrix(shape, voxel_mm, translation, angles, undistort)


def snr_sigma(clean_b0: np.ndarray, wm_fraction: np.ndarray, snr: float) -> float:
    """Gaussian noise SD that gives the requested SNR (mean clean b0 in WM / sigma)."""
    white = wm_fraction >= WM_SNR_FRACTION
    return float(clean_b0[white].mean() / snr)


def add_rician_noise(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of SD sigma per channel (float32).

    The output keeps the memory order of ``clean`` (noise is drawn in that order).
    """

    def gaussian() -> np.ndarray:
        if clean.flags.f_contiguous and not clean.flags.c_contiguous:
            return rng.standard_normal(clean.shape[::-1], dtype=np.float32).T
        return rng.standard_normal(clean.shape, dtype=np.float32)

    noisy = gaussian()
    noisy *= np.float32(sigma)
    noisy += clean
    noisy *= noisy
    imaginary = gaussian()
    imaginary *= np.float32(sigma)
    imaginary *= imaginary
    noisy += imaginary
    return np.sqrt(noisy, out=noisy)
