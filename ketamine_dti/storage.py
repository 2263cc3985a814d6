"""How published images are stored: integers in steps finer than anything the data resolve.

A float32 copy of a noisy image spends most of its 32 bits on noise that gzip cannot shrink
(a standard session's preprocessed DWI: 150 MB as float32, 46 MB as int16 in the raw steps).
Each rule below bounds the rounding error against a scale the image itself gives: its noise,
its range, or (for probabilities) the unit interval. The App's own fits and ROI tables always
use the unrounded values; only the published copy is rounded.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np

#: A step of a quarter of the noise SD adds (1/4)^2 / 12 = 0.5% to the noise variance.
NOISE_FRACTION = 0.25

#: Volumes whose noise is estimated, evenly spaced: 10 of a standard series took 0.5 s (with
#: both cores busy), all 70 would take about 3 s per session.
NOISE_VOLUMES = 10

#: The storage rules (``OutputSpec.storage``), with their sidecars' "Storage" entry.
DESCRIPTIONS = {
    "noise": "int16 times scl_slope: the App's float values rounded to a step of "
    f"{NOISE_FRACTION:g} times the image's own noise SD (the median over up to {NOISE_VOLUMES} "
    "volumes of the "
    "smallest over axes of 1.4826 median |second difference| / sqrt 6), never finer than the "
    "raw series' step, widened if the range needs it; rounding adds at most "
    f"{100 * NOISE_FRACTION**2 / 12:.1f}% to the noise variance",
    "range": "int16 times scl_slope: the App's float values rounded to a step of "
    "max |value| / 32767",
    "probability": "uint8 times scl_slope 1/255: probabilities rounded to steps of 1/255",
}
RULES = tuple(DESCRIPTIONS)

#: Voxels a noise estimate reads at most (a 1 mm T1w has 11.5 million: 2.4 s in all, 0.2 s
#: on every 11th line; a standard DWI volume's 0.6 million are all read).
NOISE_SAMPLE = 2**20

_INT16_MAX = float(np.iinfo(np.int16).max)
_MAD_TO_SD = 1.4826


def raw_step(paths: list[str]) -> float:
    """The raw series' own step (its scale factor, 1 when unscaled) when every run is
    integer-typed, as scanners write it: a finer step would store nothing acquired. 0 for a
    float raw or no raw at all."""
    steps = []
    for path in paths:
        image = nib.load(path)
        if not np.issubdtype(image.get_data_dtype(), np.integer):
            return 0.0
        slope = float(image.dataobj.slope)  # nibabel moves scl_slope here (1 when unset)
        steps.append(slope if np.isfinite(slope) and slope != 0 else 1.0)
    return min(steps) if steps else 0.0


def noise_sd(volume: np.ndarray) -> float:
    """Robust SD of a volume's voxel noise: second differences along each axis (three nonzero,
    finite neighbours), 1.4826 median |difference| / sqrt(6), the smallest over the axes.
    Second differences cancel smooth gradients and a median ignores edges; noise made
    smooth by denoising or interpolation lowers the estimate, so the step only gets finer.
    0 when no triple qualifies."""
    estimates = []
    # every stride-th line across the next axis: about NOISE_SAMPLE voxels, neighbours intact
    stride = max(1, int(np.ceil(volume.size / NOISE_SAMPLE)))
    for axis in range(volume.ndim):
        moved = np.moveaxis(volume, axis, 0)[:, ::stride]
        ahead, centre, behind = moved[2:], moved[1:-1], moved[:-2]
        triples = (ahead != 0) & (centre != 0) & (behind != 0)
        triples &= np.isfinite(ahead) & np.isfinite(centre) & np.isfinite(behind)
        if triples.any():
            second = ahead[triples] - 2.0 * centre[triples] + behind[triples]
            estimates.append(_MAD_TO_SD * float(np.median(np.abs(second))) / np.sqrt(6.0))
    return min(estimates, default=0.0)


def _volumes(image: nib.Nifti1Image) -> np.ndarray:
    source = np.asanyarray(image.dataobj)
    return source.reshape(*source.shape[:3], -1)


def _clean(volumes: np.ndarray, k: int) -> np.ndarray:
    volume = np.asarray(volumes[..., k], dtype=np.float64)
    return np.nan_to_num(volume, nan=0, posinf=0, neginf=0)


def as_int16(path: str, floor: float = 0.0, noise_fraction: float = 0.0) -> nib.Nifti1Image:
    """The image as int16 times one scale factor, non-finite values -> 0. The step is the
    coarsest of ``floor`` (e.g. the raw step), ``noise_fraction`` times the median noise SD of
    NOISE_VOLUMES volumes, and max |value| / 32767 (the range must fit).

    Volume by volume, in float64: whole-series float64 copies (700 MB for a standard session)
    cost seconds, mostly in first-touch page faults."""
    image = nib.load(path)
    volumes = _volumes(image)
    n_volumes = volumes.shape[3]
    sampled = set(np.linspace(0, n_volumes - 1, min(n_volumes, NOISE_VOLUMES)).round().astype(int))
    peak, noise = 0.0, []
    for k in range(n_volumes):
        volume = _clean(volumes, k)
        peak = max(peak, float(np.abs(volume).max(initial=0.0)))
        if noise_fraction and k in sampled:
            noise.append(noise_sd(volume))
    noise_step = noise_fraction * float(np.median(noise)) if noise else 0.0
    step = max(floor, noise_step, peak / _INT16_MAX) or 1.0
    stored = np.empty(volumes.shape, np.int16)
    for k in range(n_volumes):
        stored[..., k] = np.round(_clean(volumes, k) / step)
    return _scaled(image, stored, step)


def as_probability(path: str) -> nib.Nifti1Image:
    """A probability map as uint8 in steps of 1/255 (at most 0.2% off); values outside [0, 1]
    are clipped and non-finite ones -> 0."""
    image = nib.load(path)
    values = np.nan_to_num(np.asarray(image.dataobj, dtype=np.float32), nan=0, posinf=0, neginf=0)
    stored = np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    return _scaled(image, stored, 1.0 / 255.0)


def _scaled(image: nib.Nifti1Image, stored: np.ndarray, step: float) -> nib.Nifti1Image:
    header = image.header.copy()
    header.set_data_dtype(stored.dtype)
    out = nib.Nifti1Image(stored.reshape(image.shape), image.affine, header)
    out.header.set_slope_inter(step, 0.0)
    return out


def stored(path: str, rule: str, raw_files: Sequence[str] = ()) -> nib.Nifti1Image:
    """The image at ``path`` as ``rule`` stores it (``raw_files``: the raw images whose step
    bounds the "noise" rule, ``raw_step``)."""
    if rule == "noise":
        return as_int16(path, raw_step(list(raw_files)), NOISE_FRACTION)
    if rule == "range":
        return as_int16(path)
    if rule == "probability":
        return as_probability(path)
    raise ValueError(f"unknown storage rule {rule!r}; expected one of {RULES}")
