"""Fieldmap-less susceptibility distortion correction (SyN-SDC), for a DWI series with no
fieldmap, only when asked for (``--use-syn-sdc``).

As sdcflows' fieldmap-less estimate [Treiber et al. 2016; Wang et al. 2017]: the distorted b0
reference is registered nonlinearly to the same participant's T1w, already brought onto the
b0 grid by the rigid b0 -> T1w registration, with ANTs SyN whose deformation is restricted to
the phase-encode (PE) axis, the one axis along which off-resonance displaces EPI signal. Two
metrics drive it together: local cross-correlation with a b0-like image, the T1w brain with its
intensities inverted (CSF bright, white matter dark, as on a b0), and mutual information with the
T1w brain itself. The displacement along PE is the distortion; divided by the readout it is the
field in Hz, with the convention of ``susceptibility``: the signal of the undistorted point x
appears at ``x + field_hz * TotalReadoutTime * sign(PE)`` voxels along PE.

A registration sees the distortion only where the images have structure, and SyN's own
smoothing is local, so the field is regularised before use. A susceptibility field has no
sources inside the brain (air and bone lie outside it), so it is harmonic there: inside the
brain the field is replaced by its least-squares fit with solid harmonics (degree
HARMONIC_DEGREE), outside it is continued smoothly from the brain (``gre_fieldmap.extrapolate``),
and the whole is smoothed lightly.

Arrays in, arrays out: the images are 3-D arrays on the b0 grid (``affine``: voxel -> mm);
``interfaces.fieldmap.EstimateSynField`` does the file work.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ketamine_dti.ants_backend import REGISTRATION_SEED, register_along_axis
from ketamine_dti.dwi.gre_fieldmap import extrapolate
from ketamine_dti.dwi.harmonics import solid_harmonics
from ketamine_dti.dwi.susceptibility import FWHM_TO_SIGMA, check_readout, phase_encoding

LOGGER = logging.getLogger(__name__)

#: T1w percentiles inside the brain that span the inverted, b0-like image: the low end clips
#: dark partial-volume edge voxels, the high end bright vessels and fat left by the mask.
INVERSION_PERCENTILES = (1.0, 99.0)
#: (metric, weight) of each image pair: local CC against the inverted T1w (the b0-like
#: contrast, sharp at the CSF/tissue edges that carry the distortion) and Mattes MI against
#: the T1w brain (robust to the contrast the inversion gets wrong), as sdcflows combines them.
METRICS = (("cc", 1.0), ("mattes", 1.0))
#: SyN gradient step and update/total field smoothing (variances in voxels, ANTs' SyN[...]).
SYN_PARAMETERS = (0.2, 3.0, 1.0)
#: Multi-resolution schedule: iterations, shrink factors, smoothing sigmas (voxels).
SYN_ITERATIONS = (60, 30)
SYN_SHRINK = (2, 1)
SYN_SMOOTHING = (1.0, 0.0)
#: Highest degree of the solid harmonics that represent the field inside the brain. The
#: field's sources (air, bone) lie outside the brain, so it is harmonic there; degree 6 (49
#: functions) represents the simulator's true fields to a median 2.4% of their 99th
#: percentile (degree 4: 3.5%, 8: 1.3%) while averaging out the registration's local errors.
HARMONIC_DEGREE = 6
#: mm; FWHM of the final light smoothing of the whole field (as the GRE path smooths).
FINAL_FWHM_MM = 4.0
#: voxels by which the brain mask is dilated to limit where the metrics are computed (the
#: displaced signal at the brain's edge carries the distortion; the scalp, absent from the
#: T1w brain, must not); None: the whole field of view.
METRIC_MASK_DILATION: int | None = 2


@dataclass(frozen=True)
class SynEstimate:
    """The field (Hz, on the b0 grid) and how it was obtained.

    field_hz: regularised field; raw_field_hz: the field of the SyN displacement as it came;
    b0_like: the inverted T1w the b0 was registered to; seconds: wall time.
    """

    field_hz: np.ndarray
    raw_field_hz: np.ndarray
    b0_like: np.ndarray
    seconds: float


def b0_like(t1w_brain: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """The T1w brain with its intensities inverted inside ``brain_mask`` (0 outside), scaled to
    [0, 1] between INVERSION_PERCENTILES: CSF bright and white matter dark, as on a b0."""
    mask = np.asarray(brain_mask, bool)
    if not mask.any():
        raise ValueError("the T1w brain mask is empty on the b0 grid: check the b0 -> T1w map")
    t1w = np.nan_to_num(np.asarray(t1w_brain, dtype=np.float64))
    low, high = np.percentile(t1w[mask], INVERSION_PERCENTILES)
    if not high > low:
        raise ValueError("the T1w brain is constant inside its mask")
    inverted = (high - np.clip(t1w, low, high)) / (high - low)
    return np.where(mask, inverted, 0.0).astype(np.float32)


def regularise(field_hz: np.ndarray, brain_mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The field inside the brain replaced by its least-squares fit with solid harmonics of
    degree <= HARMONIC_DEGREE, continued smoothly outside the brain
    (``gre_fieldmap.extrapolate``), then smoothed lightly everywhere (FINAL_FWHM_MM).
    ``affine``: voxel -> world (mm) of the grid."""
    mask = np.asarray(brain_mask, bool)
    affine = np.asarray(affine, dtype=float)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    points = np.argwhere(mask) @ affine[:3, :3].T
    points -= points.mean(axis=0)
    points /= np.linalg.norm(points, axis=1).max()
    basis = solid_harmonics(points, HARMONIC_DEGREE)
    coefficients, *_ = np.linalg.lstsq(basis, np.asarray(field_hz, float)[mask], rcond=None)
    inside = np.zeros(mask.shape)
    inside[mask] = basis @ coefficients
    continued = extrapolate(inside, mask, zooms)
    final = ndimage.gaussian_filter(continued, FINAL_FWHM_MM * FWHM_TO_SIGMA / zooms)
    return final.astype(np.float32)


def _metric_mask(mask: np.ndarray) -> np.ndarray | None:
    if METRIC_MASK_DILATION is None:
        return None
    return ndimage.binary_dilation(mask, iterations=METRIC_MASK_DILATION)


def estimate_syn_field(
    b0: np.ndarray,
    t1w_brain: np.ndarray,
    brain_mask: np.ndarray,
    affine: np.ndarray,
    pe_direction: str,
    total_readout_time: float,
    *,
    seed: int = REGISTRATION_SEED,
    n_threads: int | None = None,
) -> SynEstimate:
    """Field (Hz) of a DWI series from its distorted ``b0`` reference and the T1w brain
    (``t1w_brain`` and its ``brain_mask``) brought onto the b0 grid rigidly, so undistorted.
    ``affine``: voxel -> world (mm) of the b0 grid; ``pe_direction``: BIDS
    PhaseEncodingDirection in the b0's voxel axes; ``total_readout_time``: BIDS
    TotalReadoutTime (s)."""
    started = time.perf_counter()
    axis, sign = phase_encoding(pe_direction)
    readout = check_readout(total_readout_time)
    b0 = np.nan_to_num(np.asarray(b0, dtype=np.float32))
    if b0.shape != np.shape(t1w_brain) or b0.shape != np.shape(brain_mask):
        raise ValueError("the b0, the T1w brain and its mask must be on one grid")
    mask = np.asarray(brain_mask, bool)
    inverted = b0_like(t1w_brain, mask)
    t1w = np.where(mask, np.nan_to_num(np.asarray(t1w_brain, dtype=np.float32)), 0.0)
    zooms = tuple(float(z) for z in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    fixed = {"cc": inverted, "mattes": t1w}  # the image each metric compares with the b0
    displacement_mm = register_along_axis(
        [fixed[metric] for metric, _ in METRICS], [b0] * len(METRICS), zooms, axis,
        metrics=METRICS, syn_parameters=SYN_PARAMETERS, iterations=SYN_ITERATIONS,
        shrink_factors=SYN_SHRINK, smoothing_sigmas=SYN_SMOOTHING,
        fixed_mask=_metric_mask(mask), seed=seed, n_threads=n_threads,
    )  # fmt: skip
    # the b0 holds the signal of x at x + u: u = field * readout * sign voxels
    raw = displacement_mm / zooms[axis] / (readout * sign)
    field = regularise(raw, mask, affine)
    seconds = time.perf_counter() - started
    LOGGER.info(
        "SyN-SDC field: |field| p99 %.1f Hz inside the brain, in %.1f s",
        float(np.percentile(np.abs(field[mask]), 99)), seconds,
    )  # fmt: skip
    return SynEstimate(field, raw.astype(np.float32), inverted, seconds)
