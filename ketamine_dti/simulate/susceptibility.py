"""The susceptibility field of the simulated head and the EPI distortion it causes (issue 11).

A forward physical model, written for the simulator alone: the App's estimator
(``ketamine_dti.dwi``) shares no code and no model with it, so that recovering this field is a
real test.

1. **Susceptibility map.** The whole head of :mod:`head` (its brain from :mod:`anatomy`) is painted
   on a grid whose axes are the scanner's (B0 along +z), in the session's head pose, so the field
   is computed for the head's orientation in the magnet. Volume susceptibility relative to soft
   tissue (water, -9.05 ppm SI) per tissue, :data:`SUSCEPTIBILITY_PPM`: air +9.4 ppm (chi_air
   +0.36 ppm), cortical bone -2 ppm, fatty marrow/diploe -1 ppm, every soft tissue 0. Partial
   volume mixes them (the mastoid foam is 60% air). The frontal and maxillary sinuses, nasal
   cavity and nasopharynx, mastoid air cells, ear canals (painted for this, see
   :data:`head.EAR_CANAL_RADIUS_MM`), mouth, airway and the air around the head all count.
2. **Field.** ``dB/B0 = IFFT[(1/3 - kz^2 / |k|^2) FFT[chi]]`` (the Lorentz-corrected dipole
   kernel: Salomir et al. 2003, Marques & Bowtell 2005). chi is taken relative to the air around
   the head, so the zero padding (:data:`PAD_FACTOR`) is air and the periodic copies of the head
   are far away; the k = 0 term is 0 (the mean field is the scanner's frequency adjustment).
3. **Shim.** The scanner removes the least-squares fit of its shim fields over the brain: the
   solid harmonics up to :attr:`DistortionLevel.shim_order` (0: frequency; 1: X, Y, Z; 2: Z2,
   ZX, ZY, X2-Y2, XY). The shim is fixed in the scanner; the head's own field moves with it.
4. **Hz.** ``field_hz = ppm x 1e-6 x 42.577 MHz/T x 3 T`` (127.7 Hz per ppm).
5. **Distortion.** Along the phase-encoding (PE) axis, the signal of true voxel position ``y``
   appears at ``y + s field_hz(y) TotalReadoutTime`` voxels, ``s = +1`` for PE ``j`` and ``-1``
   for ``j-`` (FSL TOPUP's and sdcflows' convention). The displacement is applied by pushing each
   true voxel's signal, as a segment of the PE line whose two ends move with the field, onto the
   output voxels it overlaps (:func:`displace_along_axis`): signal is conserved, so stretched
   regions darken and compressed ones pile up (the Jacobian), folding included.

Per session the field is recomputed for the head pose (pitch SD 5 degrees). Within a series the
head's field follows each volume's rigid motion (resampled with it), the shim stays in the scanner
frame; the change of the field with the small within-series rotations (< ~1 degree, a few Hz) is
neglected: a first-order model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numba
import numpy as np
import scipy.fft

from ketamine_dti.simulate import anatomy, head, signal
from ketamine_dti.simulate.presets import (
    EFFECTIVE_ECHO_SPACING_S,
    PARALLEL_REDUCTION_FACTOR,
    Preset,
)

LOGGER = logging.getLogger(__name__)

#: Proton gyromagnetic ratio / 2 pi (Hz/T) and the simulated field strength (T).
GYROMAGNETIC_HZ_PER_T = 42.577e6
FIELD_STRENGTH_T = 3.0
#: Hz of off-resonance per ppm of field at 3 T (127.7).
HZ_PER_PPM = GYROMAGNETIC_HZ_PER_T * FIELD_STRENGTH_T * 1e-6
#: Volume susceptibility (ppm, SI) relative to soft tissue / water (chi_water = -9.05 ppm):
#: air +0.36 ppm absolute; cortical bone ~2 ppm more diamagnetic than water (Hopkins & Wehrli
#: 1997); diploe and vertebral marrow are trabecular bone in fat, about half of that. Every other
#: tissue (including fat, brain, CSF, blood) is taken as 0: their differences are < 1 ppm.
SUSCEPTIBILITY_PPM: dict[str, float] = {"air": 9.4, "bone": -2.0, "marrow": -1.0}
#: The susceptibility grid is padded with air to this multiple of its size along every axis
#: before the FFT: the periodic copies of the head then change the field in the brain by < 0.3 Hz
#: (measured against a 3x padding).
PAD_FACTOR = 1.5
#: Template-mm box of the head painted for the field: the whole head and the neck down to
#: ~26 cm below the brain's centre, with a margin for head size and pose. Cutting the neck at
#: -180 or -600 mm instead changes the shimmed field in the brain no more than moving the 4 mm
#: grid by a fraction of a voxel does (p99 ~3 Hz, at air boundaries).
FIELD_HEAD_BOX_MM = ((-106.0, 106.0), (-138.0, 132.0), (-250.0, 122.0))
FIELD_BOX_MARGIN_MM = 8.0
#: The susceptibility grid is at the DWI's voxel size, never coarser than this (mm).
FIELD_MAX_VOXEL_MM = 4.0
#: The shim fits the field over the voxels at least this much brain (tissue + CSF).
SHIM_BRAIN_FRACTION = 0.5
#: Length (mm) that scales positions in the shim fit (conditioning only).
SHIM_SCALE_MM = 100.0
#: One line for the ground truth's planted_effects.json.
MODEL_SUMMARY = (
    "susceptibility map of the posed whole head (air +9.4, cortical bone -2, marrow -1 ppm "
    "relative to soft tissue; partial volume) on a scanner-aligned grid at the DWI voxel size; "
    "field = Lorentz-corrected dipole kernel (1/3 - kz^2/k^2, B0 along scanner z) by FFT with "
    f"{PAD_FACTOR}x zero (air) padding; minus the least-squares shim (solid harmonics) over the "
    "brain; x 127.7 Hz/ppm (3 T); trilinear onto the DWI grid"
)
#: ``--distortion`` choices; ``none`` is the default of every preset for now.
DISTORTION_CHOICES = ("none", "typical", "unaccelerated", "strong")
#: Reverse phase-encoding b=0 volumes in each session's fieldmap (fmap/*_dir-PA_epi).
FIELDMAP_VOLUMES = 3


@dataclass(frozen=True)
class DistortionLevel:
    """How strongly the field distorts the EPI.

    shim_order: highest order of the scanner's shim harmonics (2 on a modern research 3 T with
    second-order shim coils, 1 with linear gradients only); acceleration: in-plane parallel
    imaging factor R. The echo spacing, hence the readout time and every displacement, scale
    as ``PARALLEL_REDUCTION_FACTOR / R`` (the presets' echo spacing is for R = 2).
    """

    name: str
    shim_order: int
    acceleration: int
    description: str

    def effective_echo_spacing_s(self) -> float:
        return EFFECTIVE_ECHO_SPACING_S * PARALLEL_REDUCTION_FACTOR / self.acceleration

    def total_readout_time_s(self, preset: Preset) -> float:
        """EPI total readout time (s): effective echo spacing x (phase-encode lines - 1)."""
        return preset.total_readout_time_s * PARALLEL_REDUCTION_FACTOR / self.acceleration


DISTORTION_LEVELS: dict[str, DistortionLevel] = {
    "typical": DistortionLevel(
        name="typical",
        shim_order=2,
        acceleration=2,
        description="3 T, second-order shim over the brain, GRAPPA 2 (the preset's echo "
        "spacing): |displacement| median ~0.4 mm and 99th percentile ~3-4 mm over the brain, "
        "up to ~10-14 mm at its edge above the frontal sinus and beside the temporal bone, "
        "< 0.5 mm in its centre",
    ),
    "unaccelerated": DistortionLevel(
        name="unaccelerated",
        shim_order=2,
        acceleration=1,
        description="3 T, second-order shim, no in-plane acceleration (echo spacing and readout "
        "time doubled): the real Prisma pair's protocol (multiband 3, R = 1, 0.67 ms echo "
        "spacing, 0.048 s readout over 72 lines), twice the typical displacements",
    ),
    "strong": DistortionLevel(
        name="strong",
        shim_order=1,
        acceleration=1,
        description="3 T, linear shim only, no in-plane acceleration (echo spacing and readout "
        "time doubled): over twice the typical displacements (99th percentile ~7-13 mm over "
        "the brain, up to ~20-30 mm), with pile-up and folding beside the temporal bone",
    ),
}


def phase_encoding(direction: str) -> tuple[int, int]:
    """(image axis, sign) of a BIDS PhaseEncodingDirection: "j-" is (1, -1)."""
    axis = "ijk".index(direction[0])
    return axis, -1 if direction.endswith("-") else 1


def reverse_direction(direction: str) -> str:
    """The opposite PhaseEncodingDirection ("j-" <-> "j")."""
    return direction[0] if direction.endswith("-") else direction + "-"


def get_level(name: str) -> DistortionLevel | None:
    """The level called ``name`` (None for ``none``); ValueError names the valid ones."""
    if name == "none":
        return None
    try:
        return DISTORTION_LEVELS[name]
    except KeyError:
        raise ValueError(
            f"--distortion {name!r} is unknown; use one of {', '.join(DISTORTION_CHOICES)}"
        ) from None


# ---- The field of a susceptibility distribution.


def dipole_field_ppm(chi_ppm: np.ndarray, voxel_mm, pad_factor: float = PAD_FACTOR) -> np.ndarray:
    """Relative field dB/B0 (ppm) of a susceptibility map (ppm), B0 along the grid's third axis.

    chi is relative to the medium outside the grid (the padding); voxel_mm: one size or three.
    Convolution with the Lorentz-corrected dipole, D(k) = 1/3 - kz^2 / |k|^2, D(0) = 0, on the
    grid zero-padded to ``pad_factor`` x its size (no wrap-around).
    """
    voxel = np.broadcast_to(np.asarray(voxel_mm, dtype=float), (3,))
    shape = chi_ppm.shape
    padded = tuple(scipy.fft.next_fast_len(int(np.ceil(pad_factor * n)), real=True) for n in shape)
    spectrum = scipy.fft.rfftn(chi_ppm.astype(np.float32), s=padded, workers=1)
    kx = np.fft.fftfreq(padded[0], voxel[0]).astype(np.float32)[:, None, None]
    ky = np.fft.fftfreq(padded[1], voxel[1]).astype(np.float32)[None, :, None]
    kz = np.fft.rfftfreq(padded[2], voxel[2]).astype(np.float32)[None, None, :]
    k2 = kx * kx + ky * ky + kz * kz
    k2[0, 0, 0] = 1.0
    kernel = np.float32(1.0 / 3.0) - kz * kz / k2
    kernel[0, 0, 0] = 0.0
    spectrum *= kernel
    field = scipy.fft.irfftn(spectrum, s=padded, workers=1)
    return np.ascontiguousarray(field[: shape[0], : shape[1], : shape[2]], dtype=np.float32)


def sphere_field_ppm(points_mm: np.ndarray, radius_mm: float, delta_chi_ppm: float) -> np.ndarray:
    """Analytic dB/B0 (ppm) of a sphere (centre 0) of susceptibility delta_chi, B0 along z.

    Lorentz-corrected: 0 inside; ``delta_chi / 3 (R / r)^3 (3 cos^2 theta - 1)`` outside.
    points_mm (..., 3).
    """
    r = np.linalg.norm(points_mm, axis=-1)
    safe = np.maximum(r, 1e-9)
    cos2 = (points_mm[..., 2] / safe) ** 2
    outside = delta_chi_ppm / 3.0 * (radius_mm / safe) ** 3 * (3.0 * cos2 - 1.0)
    return np.where(r > radius_mm, outside, 0.0)


def shim_basis(points_mm: np.ndarray, order: int) -> np.ndarray:
    """The shim fields (n, n_terms) at scanner points (n, 3) relative to the shim centre.

    Solid harmonics, as shim coils make: 1; X, Y, Z; Z2 = z^2 - (x^2 + y^2) / 2, ZX, ZY,
    X2-Y2, XY (positions in units of SHIM_SCALE_MM).
    """
    x, y, z = (points_mm / SHIM_SCALE_MM).T
    terms = [np.ones_like(x)]
    if order >= 1:
        terms += [x, y, z]
    if order >= 2:
        terms += [z * z - 0.5 * (x * x + y * y), z * x, z * y, x * x - y * y, x * y]
    return np.stack(terms, axis=1)


@dataclass(frozen=True)
class Shim:
    """The scanner's shim: field = -basis(position - centre) @ coefficients (ppm)."""

    centre_mm: np.ndarray
    order: int
    coefficients: np.ndarray

    def field_ppm(self, points_mm: np.ndarray) -> np.ndarray:
        """The shim's field (ppm) at scanner points (n, 3)."""
        return -(shim_basis(points_mm - self.centre_mm, self.order) @ self.coefficients)


def fit_shim(
    field_ppm: np.ndarray, affine: np.ndarray, mask: np.ndarray, order: int, centre_mm
) -> Shim:
    """The shim that minimises the field's squared sum over ``mask`` (least squares)."""
    points = nib_apply(affine, np.argwhere(mask))
    basis = shim_basis(points - np.asarray(centre_mm), order)
    coefficients, *_ = np.linalg.lstsq(basis, field_ppm[mask].astype(np.float64), rcond=None)
    return Shim(np.asarray(centre_mm, dtype=float), order, coefficients)


def nib_apply(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Scanner mm (n, 3) of voxel indices (n, 3)."""
    return index @ affine[:3, :3].T + affine[:3, 3]


# ---- The head's field in a session.


def field_grid(
    template: anatomy.TemplateAnatomy,
    participant: anatomy.ParticipantAnatomy,
    pose: anatomy.HeadPose,
    voxel_mm: float,
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Scanner-axis-aligned grid (RAS, isotropic) that holds the posed head and neck."""
    corners = np.array(np.meshgrid(*FIELD_HEAD_BOX_MM, indexing="ij")).reshape(3, -1).T
    centre = participant.centre_mm
    subject = centre + (corners - centre) * participant.scale.max()
    scanner = (subject - pose.centre_mm) @ pose.rotation.T + pose.translation_mm
    low = scanner.min(axis=0) - FIELD_BOX_MARGIN_MM
    high = scanner.max(axis=0) + FIELD_BOX_MARGIN_MM
    shape = tuple(int(n) for n in np.ceil((high - low) / voxel_mm).astype(int) + 1)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = low
    return affine, shape


def susceptibility_map(
    grid: tuple, head_shape: head.HeadShape, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Susceptibility (ppm, relative to soft tissue) of the posed head on a grid, and its brain.

    grid: (template, participant, pose, affine) of the grid. Returns chi (X, Y, Z) float32 (air
    outside the head: SUSCEPTIBILITY_PPM["air"]) and the brain fraction (tissue + CSF) per voxel.
    """
    template, participant, pose, affine = grid
    tissue = anatomy.voxel_tissue(
        template, participant, pose, affine, shape, 1, None, 0, with_fibre=False
    )
    brain = tissue.brain
    table = head.property_table({"chi": SUSCEPTIBILITY_PPM})
    values, _, _ = head.head_properties(
        template, participant, pose, head_shape, affine, shape, table, brain
    )
    chi = np.clip(1.0 - brain, 0.0, 1.0) * values[0]  # the brain itself is soft tissue: 0
    return chi.astype(np.float32), brain


@dataclass(frozen=True)
class SessionField:
    """A session's off-resonance on its DWI grid at the reference head position (first b0).

    head_hz: the field of the head's susceptibility (moves with the head); shim_hz: the
    scanner's shim (fixed in the scanner); the off-resonance is their sum (``field_hz``).
    readout_time_s: TotalReadoutTime of the DWI (and of its fieldmap).
    """

    head_hz: np.ndarray
    shim_hz: np.ndarray
    readout_time_s: float
    level: DistortionLevel

    @property
    def field_hz(self) -> np.ndarray:
        return self.head_hz + self.shim_hz

    def displacement_voxels(self, direction: str, field_hz: np.ndarray | None = None):
        """Displacement (voxels, along +axis of PE ``direction``) of the signal at each point.

        ``s field TotalReadoutTime``, s = -1 for a "-" direction; of ``field_hz`` if given.
        """
        _, sign = phase_encoding(direction)
        field = self.field_hz if field_hz is None else field_hz
        return (field * np.float32(sign * self.readout_time_s)).astype(np.float32)


def session_field(
    grid: tuple,
    head_shape: head.HeadShape,
    shape: tuple[int, int, int],
    preset: Preset,
    level: DistortionLevel,
) -> SessionField:
    """The off-resonance (Hz) of one session on its DWI grid.

    grid: (template, participant, pose, affine) of the DWI, whose shape is ``shape``.

    The head is painted on a scanner-aligned grid at the DWI voxel size (at most
    FIELD_MAX_VOXEL_MM) in the session's pose, its field computed with B0 along scanner z, shimmed
    over the brain, then sampled (trilinear) at the DWI voxel centres.
    """
    template, participant, pose, affine = grid
    voxel_mm = min(preset.dwi_voxel_mm, FIELD_MAX_VOXEL_MM)
    grid_affine, grid_shape = field_grid(template, participant, pose, voxel_mm)
    posed = (template, participant, pose, grid_affine)
    chi, brain = susceptibility_map(posed, head_shape, grid_shape)
    chi -= np.float32(SUSCEPTIBILITY_PPM["air"])  # relative to the air around the head
    field_ppm = dipole_field_ppm(chi, voxel_mm)
    del chi
    shim = fit_shim(
        field_ppm,
        grid_affine,
        brain >= SHIM_BRAIN_FRACTION,
        level.shim_order,
        pose.translation_mm,
    )
    index = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    points = nib_apply(affine, index)
    shim_hz = (shim.field_ppm(points) * HZ_PER_PPM).reshape(shape).astype(np.float32)
    to_grid = np.linalg.inv(grid_affine) @ affine
    grid_index = np.ascontiguousarray(index.reshape(*shape, 3))
    head_ppm = anatomy.sample_channels(field_ppm[None], to_grid, grid_index, 0.0)[0]
    head_hz = (head_ppm * np.float32(HZ_PER_PPM)).astype(np.float32)
    return SessionField(
        head_hz=head_hz,
        shim_hz=shim_hz,
        readout_time_s=level.total_readout_time_s(preset),
        level=level,
    )


# ---- Distortion of the EPI.


@numba.njit(cache=True, nogil=True)
def _push_lines(volume, displacement, out):  # pragma: no cover - compiled
    """Mass-conserving displacement along axis 1 of (X, Y, Z) volumes (see the module doc).

    The true voxel j is the segment [j - 1/2, j + 1/2]; each end moves by the displacement
    interpolated there (the edge voxels' own at the grid's ends); its signal is spread evenly
    over the moved segment and summed into the output voxels it overlaps. Signal moved beyond
    the grid is lost.
    """
    nx, ny, nz = volume.shape
    for i in range(nx):
        for k in range(nz):
            for j in range(ny):
                mass = volume[i, j, k]
                if mass == 0.0:
                    continue
                d_low = displacement[i, j, k]
                d_high = d_low
                if j > 0:
                    d_low = 0.5 * (displacement[i, j - 1, k] + d_low)
                if j < ny - 1:
                    d_high = 0.5 * (displacement[i, j + 1, k] + d_high)
                a = j - 0.5 + d_low
                b = j + 0.5 + d_high
                if a > b:  # folded over
                    a, b = b, a
                width = b - a
                if width < 1e-6:
                    m = int(np.floor(a + 0.5))
                    if 0 <= m < ny:
                        out[i, m, k] += mass
                    continue
                first = max(int(np.floor(a + 0.5)), 0)
                last = min(int(np.floor(b + 0.5)), ny - 1)
                for m in range(first, last + 1):
                    overlap = min(b, m + 0.5) - max(a, m - 0.5)
                    if overlap > 0.0:
                        out[i, m, k] += mass * (overlap / width)


def displace_along_axis(volume: np.ndarray, displacement_voxels: np.ndarray, axis: int = 1):
    """The volume as EPI shows it: signal at true voxel y appears at y + displacement (voxels).

    Mass-conserving (the Jacobian intensity change is implicit); zero displacement returns the
    volume unchanged, bit for bit.
    """
    moved = np.moveaxis(np.asarray(volume, dtype=np.float32), axis, 1)
    shift = np.moveaxis(np.asarray(displacement_voxels, dtype=np.float64), axis, 1)
    out = np.zeros(moved.shape, dtype=np.float64)
    _push_lines(np.ascontiguousarray(moved, dtype=np.float64), np.ascontiguousarray(shift), out)
    return np.moveaxis(out.astype(np.float32), 1, axis)


def distort_series(
    clean: np.ndarray,
    field: SessionField,
    rigid_matrices: list[np.ndarray],
    direction: str,
) -> None:
    """Displace every volume of a moved series (X, Y, Z, n) in place along PE ``direction``.

    rigid_matrices[v]: the 4x4 map from an output voxel to the reference voxel it shows (the
    head's motion only): the head's field is resampled with it (it moves with the head), the
    shim is not.
    """
    axis, _ = phase_encoding(direction)
    for v in range(clean.shape[3]):
        matrix = rigid_matrices[v]
        head_hz = field.head_hz
        if not np.allclose(matrix, np.eye(4)):
            head_hz = signal.resample_affine(field.head_hz, matrix)
        displacement = field.displacement_voxels(direction, head_hz + field.shim_hz)
        clean[..., v] = displace_along_axis(clean[..., v], displacement, axis)


def field_summary(
    field: SessionField, brain_mask: np.ndarray, voxel_mm: float, direction: str
) -> dict[str, float]:
    """JSON-ready figures of a session's field inside a brain mask (Hz, mm)."""
    inside = np.asarray(brain_mask, dtype=bool)
    hz = np.abs(field.field_hz[inside])
    mm = np.abs(field.displacement_voxels(direction)[inside]) * voxel_mm
    return {
        "brain_abs_field_hz_median": round(float(np.median(hz)), 2),
        "brain_abs_field_hz_p99": round(float(np.percentile(hz, 99)), 2),
        "brain_abs_field_hz_max": round(float(hz.max()), 2),
        "brain_abs_displacement_mm_median": round(float(np.median(mm)), 3),
        "brain_abs_displacement_mm_p99": round(float(np.percentile(mm, 99)), 3),
        "brain_abs_displacement_mm_max": round(float(mm.max()), 3),
    }
