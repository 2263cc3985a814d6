"""The susceptibility field (Hz) from a GRE fieldmap, on the grid of the DWI b0 reference.

A GRE fieldmap gives the off-resonance field directly: a ``phasediff`` image holds the phase
accrued between two echoes, 2 pi f (TE2 - TE1), wrapped into [-pi, pi); a ``fieldmap`` image
holds f itself (Hz, rad/s or T). The phase difference is unwrapped inside the head by quality-
guided region growing (Herraez et al. 2002's reliability order, voxel by voxel): the smoothest
voxels are unwrapped first, so that the 2 pi jumps near the sinuses and ear canals, where
|f| > 1 / (2 (TE2 - TE1)), are crossed where the phase is most trustworthy.

The field then goes onto the DWI grid as sdcflows and QSIPrep do: the GRE magnitude is
registered rigidly to the DWI b0 reference (Mattes mutual information: the contrasts differ),
although the b0 is EPI-distorted and the magnitude is not (the distortion is local, a rigid
fit of the whole head barely sees it). Outside the head the phase is noise, so the field
there is replaced by a smooth continuation of the inside before it is smoothed lightly and
resampled: a sharp edge at the scalp would become a sharp edge of the displacement.

Conventions as in ``susceptibility``: the field is defined at the undistorted position,
affines are 4x4 voxel -> world (RAS+, mm), times in seconds.
"""

from __future__ import annotations

import heapq
import logging

import numpy as np
from numba import njit
from scipy import ndimage

from ketamine_dti.dwi.mask import brain_mask, fill_holes_slicewise
from ketamine_dti.dwi.motion import register_mutual_information
from ketamine_dti.dwi.pepolar import ALIGN_MASK_DILATION, to_grid
from ketamine_dti.dwi.susceptibility import FWHM_TO_SIGMA

LOGGER = logging.getLogger(__name__)

TWO_PI = 2.0 * np.pi
#: Hz/T; the proton gyromagnetic ratio over 2 pi (CODATA 2018): a ``fieldmap`` in tesla is the
#: off-resonance field strength, and protons precess at this many Hz per tesla of it.
PROTON_GYROMAGNETIC_RATIO_HZ_PER_T = 42.577478518e6
#: BIDS ``Units`` of a ``fieldmap`` image -> Hz per unit.
HZ_PER_UNIT = {"Hz": 1.0, "rad/s": 1.0 / TWO_PI, "T": PROTON_GYROMAGNETIC_RATIO_HZ_PER_T}
#: rad; a phase difference in radians spans one turn, or a few if the scanner unwrapped it; a
#: range beyond this many turns is integer storage (Siemens: 0..4095 for -pi..pi).
STORED_PHASE_MIN_RANGE = 8 * TWO_PI
#: Siemens stores a phase image as 12-bit integers, 0..4095 for -pi..pi (software VE and later:
#: signed, -4096..4094 for -pi..pi, twice as many levels).
SIEMENS_PHASE_LEVELS = 4096
#: s; no echo time lasts this long: an EchoTime above it was written in milliseconds.
MAX_ECHO_TIME_S = 1.0
#: fraction of the magnitude's 98th percentile (bright scalp and tissue) above which a voxel
#: is head: air holds only noise, a few % of it; brain tissue is well above a tenth.
HEAD_FRACTION = 0.1
#: voxels eroded from the head mask: the edge voxels are partial-volumed with air and their
#: phase is the noisiest of the head.
HEAD_EROSION_VOXELS = 1
#: mm; sigma of each relaxation step that smooths the field continued outside the head, and
#: the number of steps: together they round off the ridges of a nearest-voxel fill over about
#: 4 mm * sqrt(12) ~ 14 mm, the scale over which the field itself varies near the scalp.
EXTRAPOLATION_SIGMA_MM = 4.0
EXTRAPOLATION_STEPS = 12
#: mm; FWHM of the Gaussian that smooths the field (as sdcflows smooths its fieldmaps): it
#: averages out phase noise of a few Hz per voxel, while susceptibility fields vary over
#: >= 10 mm (sinus and ear-canal lobes).
SMOOTHING_FWHM_MM = 4.0
#: a b0 grid point counts as inside the GRE field of view where the trilinear weight of the
#: GRE grid reaches this (the last half voxel of the field of view is partly outside).
COVERED_WEIGHT = 0.999


# ---------------------------------------------------------------- checks


def _three_d(name: str, volume) -> np.ndarray:
    array = np.asarray(volume)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3-D volume, got shape {array.shape}")
    return array


def _on_field_grid(name: str, volume, field: np.ndarray) -> np.ndarray:
    """``volume`` refused unless it has the fieldmap's shape (BIDS: one grid per GRE)."""
    array = _three_d(name, volume)
    if array.shape != field.shape:
        raise ValueError(
            f"{name} has shape {array.shape} but the fieldmap has {field.shape}: the GRE "
            "fieldmap and its magnitude must be on one grid"
        )
    return array


def _check_affine(name: str, affine) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"{name} must be a finite 4x4 matrix, got shape {affine.shape}")
    return affine


def echo_time_difference(echo_times) -> float:
    """TE2 - TE1 (s) of a phasediff, refused unless both are plausible and differ. Signed: a
    phasediff is phase(TE2) - phase(TE1), so TE2 < TE1 flips the field, correctly."""
    try:
        first, second = (float(value) for value in echo_times)
    except (TypeError, ValueError):
        raise ValueError(
            f"echo times {echo_times!r} are not two numbers (EchoTime1, EchoTime2 in s)"
        ) from None
    for value in (first, second):
        if not (np.isfinite(value) and 0 < value < MAX_ECHO_TIME_S):
            raise ValueError(
                f"echo time {value} s is not a positive number of seconds below "
                f"{MAX_ECHO_TIME_S} s (was it given in milliseconds?); fix EchoTime1/EchoTime2"
            )
    if first == second:
        raise ValueError(
            f"EchoTime1 and EchoTime2 are equal ({first} s): the phase difference then holds "
            "no field; fix the phasediff JSON sidecar"
        )
    return second - first


# ---------------------------------------------------------------- masks and phase


def head_mask(magnitude: np.ndarray) -> np.ndarray:
    """The head on a GRE magnitude: above HEAD_FRACTION of its 98th percentile, the largest
    connected piece with its holes filled (dark sinuses and ventricles stay in), eroded by
    HEAD_EROSION_VOXELS. Where the phase is signal rather than noise."""
    volume = np.nan_to_num(np.asarray(_three_d("magnitude", magnitude), dtype=np.float32))
    if not np.any(volume > 0):
        raise ValueError(
            "the magnitude image is empty (no positive voxel): check the fieldmap's magnitude file"
        )
    foreground = volume > HEAD_FRACTION * np.percentile(volume[volume > 0], 98)
    labels, n_pieces = ndimage.label(foreground)
    if n_pieces > 1:
        sizes = ndimage.sum_labels(foreground, labels, index=np.arange(1, n_pieces + 1))
        foreground = labels == (int(np.argmax(sizes)) + 1)
    mask = fill_holes_slicewise(ndimage.binary_fill_holes(foreground))
    eroded = ndimage.binary_erosion(mask, iterations=HEAD_EROSION_VOXELS)
    return eroded if eroded.any() else mask


def phase_in_radians(phase: np.ndarray) -> np.ndarray:
    """A phase image in radians, wrapped into [-pi, pi). Integer storage, detected by a range
    beyond STORED_PHASE_MIN_RANGE, is rescaled: 0..4095 (Siemens) or -4096..4095 (Siemens,
    signed) onto -pi..pi."""
    phase = np.asarray(phase, dtype=np.float64)
    finite = phase[np.isfinite(phase)]
    if finite.size == 0:
        raise ValueError("the phase image has no finite voxel")
    low, high = float(finite.min()), float(finite.max())
    if high - low > STORED_PHASE_MIN_RANGE:
        if low >= 0 and high < SIEMENS_PHASE_LEVELS:
            phase = (phase - SIEMENS_PHASE_LEVELS / 2) * (TWO_PI / SIEMENS_PHASE_LEVELS)
        elif low >= -SIEMENS_PHASE_LEVELS and high < SIEMENS_PHASE_LEVELS:
            phase = phase * (np.pi / SIEMENS_PHASE_LEVELS)
        else:
            raise ValueError(
                f"the phase image spans {low:g}..{high:g}: neither radians nor Siemens "
                "integer storage (0..4095 or -4096..4095); rescale it to radians"
            )
        LOGGER.info("phase stored as integers %g..%g: rescaled to radians", low, high)
    return _wrap(np.nan_to_num(phase))


def _wrap(phase: np.ndarray) -> np.ndarray:
    return (phase + np.pi) % TWO_PI - np.pi


def _unreliability(phase: np.ndarray) -> np.ndarray:
    """Herraez et al.'s second-difference measure per voxel: the wrapped phase's curvature
    along the three axes (0 where the phase is smooth, large where it is noise)."""
    padded = np.pad(phase, 1, mode="edge")
    centre = padded[1:-1, 1:-1, 1:-1]
    total = np.zeros(phase.shape)
    for axis in range(3):
        before = [slice(1, -1)] * 3
        after = [slice(1, -1)] * 3
        before[axis], after[axis] = slice(0, -2), slice(2, None)
        curvature = _wrap(padded[tuple(before)] - centre) - _wrap(centre - padded[tuple(after)])
        total += curvature**2
    return np.sqrt(total)


@njit(cache=True, nogil=True)
def _grow(phase, unreliability, inside, offsets, seed, done, unwrapped):  # pragma: no cover
    """Unwrap the region of ``seed`` (flat indices of padded volumes, ``inside`` False on the
    border): the most reliable voxel next to the unwrapped part goes next, moved by the 2 pi
    multiple that brings it nearest the mean of its unwrapped neighbours."""
    heap = [(unreliability[seed], seed)]
    while len(heap) > 0:
        _, index = heapq.heappop(heap)
        if done[index]:
            continue
        total = 0.0
        count = 0
        for offset in offsets:
            if done[index + offset]:
                total += unwrapped[index + offset]
                count += 1
        value = phase[index]
        if count > 0:
            value += 2.0 * np.pi * np.round((total / count - value) / (2.0 * np.pi))
        unwrapped[index] = value
        done[index] = True
        for offset in offsets:
            neighbour = index + offset
            if inside[neighbour] and not done[neighbour]:
                heapq.heappush(heap, (unreliability[neighbour], neighbour))


def unwrap_phase(phase: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Phase (rad) unwrapped inside ``mask`` (0 outside), piece by connected piece; the largest
    piece is moved by the 2 pi multiple that puts its median nearest 0, the others nearest the
    largest's median (the field is continuous across the gaps)."""
    phase = _wrap(np.asarray(phase, dtype=np.float64))
    mask = np.asarray(mask, dtype=bool)
    shape = tuple(n + 2 for n in phase.shape)
    padded_phase = np.pad(phase, 1).ravel()
    inside = np.pad(mask, 1).ravel()
    unreliability = np.pad(_unreliability(phase), 1).ravel()
    strides = (shape[1] * shape[2], shape[2], 1)
    offsets = np.array([sign * stride for stride in strides for sign in (-1, 1)], dtype=np.int64)
    done = np.zeros(inside.shape, dtype=bool)
    unwrapped = np.zeros(inside.shape)
    labels, n_pieces = ndimage.label(inside.reshape(shape))
    labels = labels.ravel()
    sizes = np.bincount(labels, minlength=n_pieces + 1)
    pieces = np.split(np.argsort(labels, kind="stable"), np.cumsum(sizes)[:-1])[1:]
    reference = None  # median phase of the largest piece, once unwrapped
    for members in sorted(pieces, key=len, reverse=True):
        seed = members[np.argmin(unreliability[members])]
        _grow(padded_phase, unreliability, inside, offsets, np.int64(seed), done, unwrapped)
        median = float(np.median(unwrapped[members]))
        target = 0.0 if reference is None else reference
        unwrapped[members] -= TWO_PI * np.round((median - target) / TWO_PI)
        if reference is None:
            reference = float(np.median(unwrapped[members]))
    out = unwrapped.reshape(shape)[1:-1, 1:-1, 1:-1]
    LOGGER.info(
        "phase unwrapped in %d piece(s): %.1f%% of %d voxels moved by a multiple of 2 pi",
        n_pieces, 100.0 * np.mean(np.abs(out - phase)[mask] > np.pi), int(mask.sum()),
    )  # fmt: skip
    return out


# ---------------------------------------------------------------- fields in Hz


def field_from_phasediff(
    phasediff: np.ndarray,
    echo_times,
    magnitude: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Field (Hz) from a GRE phase difference: unwrapped phase / (2 pi (TE2 - TE1)).

    ``phasediff`` in radians, or as Siemens integers (0..4095 for -pi..pi; detected by a range
    far beyond 2 pi and rescaled); ``echo_times`` = (EchoTime1, EchoTime2) in s. The phase is
    unwrapped inside ``mask`` (default: ``head_mask(magnitude)``; without either, the whole
    volume), with the 2 pi offset that puts the median field nearest 0; 0 outside the mask,
    where the phase is noise. float32.
    """
    delta_te = echo_time_difference(echo_times)
    phase = phase_in_radians(_three_d("phasediff", phasediff))
    if magnitude is not None:
        _on_field_grid("magnitude", magnitude, phase)
    if mask is None:
        mask = np.ones(phase.shape, bool) if magnitude is None else head_mask(magnitude)
    mask = _on_field_grid("mask", mask, phase).astype(bool)
    if not mask.any():
        raise ValueError("the head mask of the phasediff is empty")
    return (unwrap_phase(phase, mask) / (TWO_PI * delta_te)).astype(np.float32)


def field_from_fieldmap(fieldmap: np.ndarray, units: str) -> np.ndarray:
    """A BIDS ``fieldmap`` image in Hz (float32): ``units`` "Hz", "rad/s" (/ 2 pi) or "T"
    (x the proton gyromagnetic ratio / 2 pi)."""
    if units not in HZ_PER_UNIT:
        raise ValueError(
            f"fieldmap Units {units!r} is not one of {', '.join(HZ_PER_UNIT)}; fix the "
            "fieldmap's JSON sidecar"
        )
    field = _three_d("fieldmap", fieldmap)
    return (np.nan_to_num(np.asarray(field, dtype=np.float64)) * HZ_PER_UNIT[units]).astype(
        np.float32
    )


# ---------------------------------------------------------------- onto the b0 grid


def extrapolate(field: np.ndarray, known: np.ndarray, zooms) -> np.ndarray:
    """``field`` kept where ``known``, continued smoothly elsewhere: each unknown voxel takes
    its nearest known value, then EXTRAPOLATION_STEPS Gaussian relaxations (known voxels held)
    round off the ridges of that fill, so the continuation leaves the known part without a
    kink."""
    known = np.asarray(known, dtype=bool)
    if not known.any():
        raise ValueError("no voxel to extrapolate the field from")
    field = np.asarray(field, dtype=np.float64)
    if known.all():
        return field
    zooms = np.asarray(zooms, dtype=float)
    nearest = ndimage.distance_transform_edt(
        ~known, sampling=zooms, return_distances=False, return_indices=True
    )
    filled = field[tuple(nearest)]
    sigma = EXTRAPOLATION_SIGMA_MM / zooms
    for _ in range(EXTRAPOLATION_STEPS):
        filled = np.where(known, field, ndimage.gaussian_filter(filled, sigma, mode="nearest"))
    return filled


def field_on_b0_grid(
    field_hz: np.ndarray,
    field_affine: np.ndarray,
    magnitude: np.ndarray,
    b0: np.ndarray,
    b0_affine: np.ndarray,
    mask: np.ndarray | None = None,
    b0_mask: np.ndarray | None = None,
    smoothing_fwhm_mm: float = SMOOTHING_FWHM_MM,
) -> tuple[np.ndarray, np.ndarray]:
    """The GRE field (Hz; with ``magnitude`` on the grid of ``field_affine``) on the grid of
    the DWI ``b0`` reference, and the RAS+ map from b0 points to GRE points.

    The map is a rigid mutual-information registration of the magnitude to the b0, focused on
    ``b0_mask`` (default: the b0's brain mask) dilated by ``pepolar.ALIGN_MASK_DILATION``.
    The field is kept inside ``mask`` (default: ``head_mask(magnitude)``) except where it is
    exactly 0 (masked by the scanner or by ``field_from_phasediff``: no measurement), continued
    smoothly beyond (``extrapolate``), smoothed by a Gaussian of FWHM ``smoothing_fwhm_mm`` (0:
    not at all) and resampled (trilinear) once through the map; b0 points outside the GRE field
    of view take the continuation of the nearest covered ones. float32.
    """
    field = np.nan_to_num(np.asarray(_three_d("field_hz", field_hz), dtype=np.float64))
    magnitude = _on_field_grid("magnitude", magnitude, field)
    b0 = np.nan_to_num(np.asarray(_three_d("b0", b0), dtype=np.float32))
    field_affine = _check_affine("field_affine", field_affine)
    b0_affine = _check_affine("b0_affine", b0_affine)
    if mask is None:
        mask = head_mask(magnitude)
    measured = _on_field_grid("mask", mask, field).astype(bool) & (field != 0)
    if not measured.any():
        raise ValueError("the fieldmap holds no measured (non-zero) voxel inside the head mask")
    b0_zooms = tuple(np.linalg.norm(b0_affine[:3, :3], axis=0))
    if b0_mask is None:
        b0_mask = brain_mask(b0, b0_zooms)
    b0_mask = np.asarray(_three_d("b0_mask", b0_mask), dtype=bool)
    if b0_mask.shape != b0.shape or not b0_mask.any():
        raise ValueError("the b0 brain mask is empty or not on the b0 grid")

    magnitude_on_b0 = to_grid(magnitude, field_affine, b0.shape, b0_affine)
    focus = ndimage.binary_dilation(b0_mask, iterations=ALIGN_MASK_DILATION)
    to_gre = register_mutual_information(b0, magnitude_on_b0, b0_affine, fixed_mask=focus)

    field_zooms = np.linalg.norm(field_affine[:3, :3], axis=0)
    smooth = extrapolate(field, measured, field_zooms)
    if smoothing_fwhm_mm > 0:
        sigma = smoothing_fwhm_mm * FWHM_TO_SIGMA / field_zooms
        smooth = ndimage.gaussian_filter(smooth, sigma, mode="nearest")
    through_map = to_gre @ b0_affine  # b0 voxel -> GRE world point
    on_grid = to_grid(smooth, field_affine, b0.shape, through_map)
    covered = to_grid(np.ones(field.shape), field_affine, b0.shape, through_map)
    covered = covered >= COVERED_WEIGHT
    if not covered.any():
        raise ValueError(
            "the GRE fieldmap's field of view does not overlap the b0 after registration: "
            "check that the fieldmap belongs to this DWI series"
        )
    if not covered.all():
        on_grid = extrapolate(on_grid, covered, b0_zooms)
    LOGGER.info(
        "GRE field on the b0 grid: %.1f..%.1f Hz (1st-99th percentile in the brain)",
        *np.percentile(on_grid[b0_mask], [1, 99]),
    )
    return on_grid.astype(np.float32), to_gre
