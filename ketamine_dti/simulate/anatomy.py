"""Simulated anatomy: a real template brain, warped per participant and placed per session.

The brain is nilearn's bundled ICBM152 2009a (symmetric, 1 mm) with its GM and WM probability
maps; CSF is the rest of the (skull-stripped) template brain. A single subject's anatomy is
crisper than a population average, so the three fractions are sharpened (``p**k``, renormalised,
:data:`SHARPEN_EXPONENT`) before use: partial volume then arises where it does in real data, from
the scanner's voxel size.

Frames (all in mm):

- *template*: ICBM152 2009a world coordinates. The true ROI regions (:mod:`regions`) live on
  Colin27 in MNI space, the pipeline's atlas in MNI152NLin6Asym; we treat all three as the same
  mm space, so regions land on this anatomy with the small mismatch that real subjects show
  against a registration template.
- *subject*: a participant's own brain, ``template = c + (subject - c) / scale + u(subject)``
  with ``c`` the template brain centre, an anisotropic size ``scale`` and a smooth random
  displacement ``u`` (:class:`ParticipantAnatomy`).
- *scanner* (world of the NIfTI files): ``scanner = R (subject - c) + t``, a rigid head position
  per session (:class:`HeadPose`).

Everything here is arrays in, arrays out; the only file reads are the bundled template maps.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numba
import numpy as np
from scipy import ndimage

from ketamine_dti.simulate.interpolation import (
    apply_affine,
    clamped_cell,
    floor_cell,
    nearest_index,
    trilinear,
)

LOGGER = logging.getLogger(__name__)

_TEMPLATE_FILES = {
    "t1w": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
#: The template maps are stored as uint8 0..255.
_TEMPLATE_MAX = 255.0
#: Exponent that sharpens population tissue probabilities into one subject's fractions: a 60/40
#: boundary voxel becomes 96/4, so tissue boundaries keep their place but become sub-millimetre
#: sharp, as in a single subject's segmentation; partial volume then comes from the DWI voxels.
SHARPEN_EXPONENT = 8.0
#: Voxel size (mm) of the coarse template fields (fibre orientation, head shell).
COARSE_VOXEL_MM = 2.0
#: Gaussian scale (mm) of the WM-probability gradients and of the structure tensor that gives
#: the fibre field: a tract runs along the direction in which the WM map changes least.
FIBRE_GRADIENT_SIGMA_MM = 2.0
FIBRE_STRUCTURE_SIGMA_MM = 6.0
#: Width (mm) of the midline band where commissural (left-right) fibres dominate the corpus
#: callosum, and the |z| band (mm) around the callosal body where that prior applies.
COMMISSURAL_HALF_WIDTH_MM = 12.0
COMMISSURAL_Z_RANGE_MM = (0.0, 35.0)
#: Width (mm) of the smooth edges of the anatomical priors' regions.
PRIOR_EDGE_MM = 5.0
#: Projection fibres (corona radiata, internal capsule): centre and width of |x| (mm), and the
#: y and z ranges (mm) where the inferior-superior prior applies.
PROJECTION_X_MM = (24.0, 7.0)
PROJECTION_Y_RANGE_MM = (-35.0, 15.0)
PROJECTION_Z_RANGE_MM = (-15.0, 45.0)
#: Coarse WM probability above which a fibre direction is computed (elsewhere: isotropic).
FIBRE_MIN_WM = 0.01
#: White-matter depth: the WM probability smoothed at WM_DEPTH_SIGMA_MM, mapped linearly from
#: WM_DEPTH_RANGE to 0 (superficial, gyral WM) .. 1 (deep WM).
WM_DEPTH_SIGMA_MM = 3.0
WM_DEPTH_RANGE = (0.5, 0.9)
#: Head shell drawn around the brain for the T1w (mm from a smooth brain hull): subarachnoid CSF,
#: skull (dark on T1w), scalp (bright fat/skin).
HULL_SMOOTHING_MM = 4.0
SHELL_CSF_MM = 2.0
SHELL_SKULL_MM = 7.0
SHELL_SCALP_MM = 12.0

#: Regional MD spreads into neighbouring GM with this Gaussian fall-off (mm), computed on a
#: grid REACH_COARSENING times coarser than the atlas, cut at REACH_CUTOFF_SIGMAS.
REGIONAL_MD_SPREAD_MM = 4.0
REACH_COARSENING = 2
REACH_CUTOFF_SIGMAS = 4.0
#: Shell distance given to points outside the template's box (far from any brain).
OUTSIDE_DISTANCE_MM = 1e3
#: Participant warp: white noise on a grid every WARP_SPACING_MM, Gaussian-smoothed at
#: WARP_SMOOTHING_MM, scaled to an RMS of WARP_RMS_MM per component (real inter-subject
#: residuals after an affine registration are a few mm).
WARP_SPACING_MM = 6.0
WARP_SMOOTHING_MM = 18.0
WARP_RMS_MM = 2.0
#: Margin of the warp grid around the template box (fraction of its extent).
WARP_GRID_MARGIN = 0.2
#: Head size: mean and SD of the isotropic scale, the SD of the extra per-axis scale
#: (fractions), and the limits of each axis's scale (~3 SD). The ICBM 2009a brain is larger
#: than an adult's: its brain mask with sulcal CSF holds ~1,920 ml (a simulated participant at
#: scale 1, measured by the App), adults' 1,100-1,800 ml (the real Prisma volunteer: 1,690), and
#: intracranial volume spreads ~10% between adults. A mean of 0.92 gives ~1,500 ml; 0.033 and
#: 0.02 give a volume SD of ~10.5%; the limits keep every brain within ~1,060-2,040 ml. (Until
#: session 44: mean 1, SD 0.05, limits 0.85-1.15, i.e. ~1,920 +- 15% ml up to 2,540.)
SCALE_MEAN = 0.92
SCALE_SD = 0.033
SCALE_AXIS_SD = 0.02
SCALE_LIMITS = (0.82, 1.02)
#: Session head position: SD of rotations (degrees, about x=pitch, y=roll, z=yaw) and of
#: translations (mm); nodding (pitch) varies most between sessions.
POSE_ROTATION_SD_DEG = (5.0, 2.0, 2.0)
POSE_TRANSLATION_SD_MM = (2.0, 3.0, 3.0)


@dataclass(frozen=True)
class TemplateAnatomy:
    """The 1 mm template: fractions (3, X, Y, Z) = GM, WM, CSF, plus coarse 2 mm fields."""

    affine: np.ndarray
    fractions: np.ndarray  # float32, sharpened, sum = 1 inside the brain, 0 outside
    centre_mm: np.ndarray  # brain centre in template mm
    coarse_affine: np.ndarray
    fibre_tensor: np.ndarray  # float32 (6, ...) xx, yy, zz, xy, xz, yz of v v^T (trace 1)
    wm_depth: np.ndarray  # float32, 0 superficial .. 1 deep white matter
    shell_distance_mm: np.ndarray  # float32, distance from a smooth brain hull (0 inside)


@dataclass(frozen=True)
class RoiAtlas:
    """Integer labels (0 = background, k = ROI_NAMES[k-1]) and their affine (template mm).

    ``reach`` (L, X/2, Y/2, Z/2) float32, on a 2x coarser grid (``reach_affine``): how much of
    ROI k's regional MD the gray matter at each point shares, 1 inside the ROI and
    ``exp(-d^2 / (2 REGIONAL_MD_SPREAD_MM^2))`` at a distance d outside it. Regional MD
    differences and their 24 h changes fade out into neighbouring cortex instead of stopping at
    an atlas line, as biology does not know our atlas.
    """

    labels: np.ndarray
    affine: np.ndarray
    reach: np.ndarray
    reach_affine: np.ndarray

    @classmethod
    def from_labels(cls, labels: np.ndarray, affine: np.ndarray, n_labels: int) -> RoiAtlas:
        """Build the atlas and its reach maps (a few EDTs on ROI bounding boxes)."""
        labels = np.asarray(labels).astype(np.int16)
        voxel_mm = float(np.abs(np.diag(affine)[:3]).mean())
        margin = int(np.ceil(REACH_CUTOFF_SIGMAS * REGIONAL_MD_SPREAD_MM / voxel_mm))
        factor = REACH_COARSENING
        coarse_shape = tuple(-(-s // factor) for s in labels.shape)
        padded_shape = tuple(c * factor for c in coarse_shape)
        reach = np.zeros((n_labels, *coarse_shape), dtype=np.float32)
        for k in range(1, n_labels + 1):
            inside = labels == k
            if not inside.any():
                continue
            where = np.argwhere(inside)
            low = np.maximum(where.min(axis=0) - margin, 0)
            high = np.minimum(where.max(axis=0) + margin + 1, labels.shape)
            box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
            distance = ndimage.distance_transform_edt(~inside[box], sampling=voxel_mm)
            full = np.zeros(padded_shape, dtype=np.float32)
            full[box] = np.exp(-0.5 * (distance / REGIONAL_MD_SPREAD_MM) ** 2)
            reach[k - 1] = block_mean(full, factor)
        reach_affine = affine @ np.diag([factor, factor, factor, 1.0])
        reach_affine[:3, 3] = nib.affines.apply_affine(affine, [(factor - 1) / 2.0] * 3)
        return cls(labels=labels, affine=affine, reach=reach, reach_affine=reach_affine)


@dataclass(frozen=True)
class ParticipantAnatomy:
    """A participant's size and smooth warp (subject mm -> template mm)."""

    centre_mm: np.ndarray
    scale: np.ndarray  # (3,) subject size / template size per axis
    warp_origin_mm: np.ndarray  # subject mm of displacement grid voxel (0, 0, 0)
    warp_spacing_mm: float
    displacement_mm: np.ndarray  # float32 (3, ...) displacement grid, template mm

    def to_template(self, subject_mm: np.ndarray) -> np.ndarray:
        """Template mm of subject points (..., 3)."""
        index = (subject_mm - self.warp_origin_mm) / self.warp_spacing_mm
        flat = index.reshape(-1, 3).T
        shift = np.stack(
            [
                ndimage.map_coordinates(d, flat, order=1, mode="nearest")
                for d in self.displacement_mm
            ],
            axis=-1,
        ).reshape(subject_mm.shape)
        return self.centre_mm + (subject_mm - self.centre_mm) / self.scale + shift


@dataclass(frozen=True)
class HeadPose:
    """Rigid head position: ``scanner = rotation (subject - centre) + translation`` (mm)."""

    rotation: np.ndarray  # (3, 3)
    translation_mm: np.ndarray  # (3,) scanner mm of the brain centre
    centre_mm: np.ndarray  # (3,) subject mm of the brain centre

    def to_subject(self, scanner_mm: np.ndarray) -> np.ndarray:
        """Subject mm of scanner points (..., 3)."""
        return (scanner_mm - self.translation_mm) @ self.rotation + self.centre_mm

    @property
    def angles_deg(self) -> np.ndarray:
        return rotation_to_angles(self.rotation)


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation from angles (degrees) about x, then y, then z (applied in that order)."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rotation_to_angles(rotation: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotation_matrix` (degrees), for small angles away from gimbal lock."""
    ay = np.arcsin(-rotation[2, 0])
    ax = np.arctan2(rotation[2, 1], rotation[2, 2])
    az = np.arctan2(rotation[1, 0], rotation[0, 0])
    return np.rad2deg([ax, ay, az])


def nilearn_data_dir() -> Path:
    """Folder of the data files that ship inside the nilearn wheel (not its network fetchers)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("nilearn is not installed; pip install nilearn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def sharpen_fractions(probabilities: np.ndarray, exponent: float = SHARPEN_EXPONENT) -> np.ndarray:
    """Sharpen tissue probabilities (classes first) into fractions that still sum to 1."""
    clipped = np.clip(probabilities, 0.0, 1.0)
    if float(exponent).is_integer():  # repeated products: much faster than np.power
        powered = clipped.copy()
        for _ in range(int(exponent) - 1):
            powered *= clipped
    else:
        powered = np.power(clipped, exponent)
    total = powered.sum(axis=0)
    inside = total > 0
    out = np.zeros_like(powered)
    out[:, inside] = powered[:, inside] / total[inside]
    return out


def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor^3 blocks of the last three axes (cropped to a multiple of factor).

    Sums strided views into an array of the volume's memory order and float type (no copy of
    the volume).
    """
    shape = tuple(s // factor for s in volume.shape[-3:])
    fortran = volume.flags.f_contiguous and not volume.flags.c_contiguous
    dtype = volume.dtype if volume.dtype.kind == "f" else np.float64
    total = np.zeros(volume.shape[:-3] + shape, dtype=dtype, order="F" if fortran else "C")
    for a, b, c in itertools.product(range(factor), repeat=3):
        total += volume[
            ...,
            a : shape[0] * factor : factor,
            b : shape[1] * factor : factor,
            c : shape[2] * factor : factor,
        ]
    total /= factor**3
    return total


def block_mean_series(series: np.ndarray, factor: int) -> np.ndarray:
    """block_mean of each volume of a series (X, Y, Z, n): (X, Y, Z, n) / factor, volume-major
    (Fortran) memory as NIfTI stores it."""
    out = np.empty(
        tuple(s // factor for s in series.shape[:3]) + series.shape[3:],
        dtype=series.dtype if series.dtype.kind == "f" else np.float64,
        order="F",
    )
    for volume in range(series.shape[3]):
        out[..., volume] = block_mean(series[..., volume], factor)
    return out


def fibre_orientation_tensor(
    wm_probability: np.ndarray, voxel_mm: float, coordinates_mm: np.ndarray
) -> np.ndarray:
    """A smooth fibre field as v v^T (6 components, trace 1) from a WM probability map.

    Tracts run along the direction in which the WM map changes least: the eigenvector with the
    smallest eigenvalue of the structure tensor of the WM map. Where WM is a sheet that test is
    ambiguous, so two anatomical priors steer it: commissural (left-right) fibres in the
    callosal midline band, and projection (inferior-superior) fibres in the corona radiata and
    internal capsule. ``coordinates_mm`` (3, ...) holds the template mm of each voxel.
    """
    x_mm, y_mm, z_mm = coordinates_mm
    smoothed = ndimage.gaussian_filter(wm_probability, FIBRE_GRADIENT_SIGMA_MM / voxel_mm)
    grads = np.gradient(smoothed, voxel_mm)
    sigma = FIBRE_STRUCTURE_SIGMA_MM / voxel_mm
    pairs = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
    structure = np.empty(wm_probability.shape + (3, 3), dtype=np.float64)
    for a, b in pairs:
        component = ndimage.gaussian_filter(grads[a] * grads[b], sigma)
        structure[..., a, b] = component
        structure[..., b, a] = component
    scale = np.trace(structure, axis1=-2, axis2=-1)[..., None, None] + 1e-12
    structure /= scale

    def band(values: np.ndarray, low: float, high: float) -> np.ndarray:
        """1 between low and high, with smooth (logistic) edges."""
        width = PRIOR_EDGE_MM
        return (
            1.0 / (1.0 + np.exp(-(values - low) / width)) / (1.0 + np.exp((values - high) / width))
        )

    commissural = np.exp(-0.5 * (x_mm / COMMISSURAL_HALF_WIDTH_MM) ** 2) * band(
        z_mm, *COMMISSURAL_Z_RANGE_MM
    )
    projection = (
        np.exp(-0.5 * ((np.abs(x_mm) - PROJECTION_X_MM[0]) / PROJECTION_X_MM[1]) ** 2)
        * band(y_mm, *PROJECTION_Y_RANGE_MM)
        * band(z_mm, *PROJECTION_Z_RANGE_MM)
    )
    # A prior for axis a penalises the two other axes: the least-varying direction becomes a.
    for weight, axis in ((commissural, 0), (projection, 2)):
        for other in {0, 1, 2} - {axis}:
            structure[..., other, other] += weight
    # Only where there is white matter (the rest is never used): eigh is the costly step.
    where = wm_probability > FIBRE_MIN_WM
    _, vectors = np.linalg.eigh(structure[where])
    v = vectors[..., 0]  # eigenvector of the smallest eigenvalue
    tensor = np.zeros((6,) + wm_probability.shape, dtype=np.float32)
    for n, (a, b) in enumerate(pairs):
        tensor[n][where] = v[:, a] * v[:, b]
    tensor[:3][:, ~where] = 1.0 / 3.0  # isotropic (trace 1) where there is no WM
    return tensor


@functools.lru_cache(maxsize=1)
def load_template_anatomy() -> TemplateAnatomy:
    """Read nilearn's ICBM152 2009a maps once per process and derive the simulation fields."""
    folder = nilearn_data_dir()
    images = {key: nib.load(folder / name) for key, name in _TEMPLATE_FILES.items()}
    affine = images["t1w"].affine.copy()
    t1w = np.asarray(images["t1w"].dataobj, dtype=np.float32)
    gm = np.asarray(images["gm"].dataobj, dtype=np.float32) / _TEMPLATE_MAX
    wm = np.asarray(images["wm"].dataobj, dtype=np.float32) / _TEMPLATE_MAX
    brain = t1w > 0  # the template T1w is skull-stripped
    csf = np.where(brain, np.clip(1.0 - gm - wm, 0.0, 1.0), 0.0).astype(np.float32)
    fractions = np.zeros((3, *brain.shape), dtype=np.float32)
    fractions[:, brain] = sharpen_fractions(np.stack([gm[brain], wm[brain], csf[brain]]))
    centre_index = np.array(ndimage.center_of_mass(brain))
    centre_mm = nib.affines.apply_affine(affine, centre_index)

    factor = int(round(COARSE_VOXEL_MM / abs(affine[0, 0])))
    wm_coarse = block_mean(wm, factor)
    brain_coarse = block_mean(brain.astype(np.float32), factor)
    coarse_affine = affine @ np.diag([factor, factor, factor, 1.0])
    coarse_affine[:3, 3] = nib.affines.apply_affine(affine, [(factor - 1) / 2.0] * 3)
    index = np.indices(wm_coarse.shape, dtype=np.float32)
    coarse_mm = np.einsum("ij,j...->i...", coarse_affine[:3, :3], index) + coarse_affine[
        :3, 3
    ].reshape(3, 1, 1, 1)
    fibre = fibre_orientation_tensor(wm_coarse, COARSE_VOXEL_MM, coarse_mm)

    depth = ndimage.gaussian_filter(wm_coarse, WM_DEPTH_SIGMA_MM / COARSE_VOXEL_MM)
    depth = np.clip((depth - WM_DEPTH_RANGE[0]) / (WM_DEPTH_RANGE[1] - WM_DEPTH_RANGE[0]), 0, 1)
    hull = ndimage.gaussian_filter(brain_coarse, HULL_SMOOTHING_MM / COARSE_VOXEL_MM) > 0.25
    shell = ndimage.distance_transform_edt(~hull, sampling=COARSE_VOXEL_MM).astype(np.float32)
    LOGGER.debug("template anatomy loaded from %s", folder)
    return TemplateAnatomy(
        affine=affine,
        fractions=fractions,
        centre_mm=centre_mm,
        coarse_affine=coarse_affine,
        fibre_tensor=fibre,
        wm_depth=depth.astype(np.float32),
        shell_distance_mm=shell,
    )


def random_participant(
    rng: np.random.Generator, template: TemplateAnatomy, rms_mm: float = WARP_RMS_MM
) -> ParticipantAnatomy:
    """A participant: random head size (per-axis scale) and a smooth random displacement."""
    scale = rng.normal(SCALE_MEAN, SCALE_SD) * (1.0 + rng.normal(0.0, SCALE_AXIS_SD, 3))
    scale = np.clip(scale, *SCALE_LIMITS)
    extent = np.array(template.fractions.shape[1:]) * np.abs(np.diag(template.affine)[:3])
    extent = extent * SCALE_LIMITS[1] * (1.0 + WARP_GRID_MARGIN)
    lower = template.centre_mm - extent / 2.0
    n_points = np.ceil(extent / WARP_SPACING_MM).astype(int) + 1
    noise = rng.standard_normal((3, *n_points))
    sigma = WARP_SMOOTHING_MM / WARP_SPACING_MM
    displacement = np.stack([ndimage.gaussian_filter(c, sigma, mode="wrap") for c in noise])
    displacement *= rms_mm / displacement.reshape(3, -1).std(axis=1).reshape(3, 1, 1, 1)
    return ParticipantAnatomy(
        centre_mm=template.centre_mm.copy(),
        scale=scale,
        warp_origin_mm=lower,
        warp_spacing_mm=WARP_SPACING_MM,
        displacement_mm=displacement.astype(np.float32),
    )


def random_head_pose(rng: np.random.Generator, centre_mm: np.ndarray) -> HeadPose:
    """A session's head position: small rotations and translations about the scanner centre."""
    angles = rng.normal(0.0, POSE_ROTATION_SD_DEG)
    translation = rng.normal(0.0, POSE_TRANSLATION_SD_MM)
    return HeadPose(
        rotation=rotation_matrix(angles), translation_mm=translation, centre_mm=centre_mm.copy()
    )


@dataclass(frozen=True)
class VoxelTissue:
    """Tissue of each voxel of a scanner grid, from sub-voxel sampling (fractions of volume).

    gm_by_label: (n_labels + 1, X, Y, Z) GM fraction inside label k (0 = outside every ROI);
    reach_gm (L, X, Y, Z): GM outside the ROIs weighted by each ROI's reach (RoiAtlas);
    region (L, X, Y, Z): brain (GM + WM + CSF) volume fraction of each voxel inside ROI k;
    wm, csf: fractions; fibre_tensor: (6, X, Y, Z) v v^T in the grid's image axes (voxel frame,
    as FSL bvecs) at voxel centres, or None if not asked for; wm_depth: 0 superficial .. 1 deep
    WM at voxel centres (None likewise);
    shell_distance_mm: distance from the smooth brain hull at voxel centres (for the T1w).
    """

    gm_by_label: np.ndarray
    reach_gm: np.ndarray
    region: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    fibre_tensor: np.ndarray | None
    wm_depth: np.ndarray | None
    shell_distance_mm: np.ndarray

    @property
    def gm(self) -> np.ndarray:
        return self.gm_by_label.sum(axis=0)

    @property
    def brain(self) -> np.ndarray:
        return self.gm + self.wm + self.csf


def add_region_free_water(tissue: VoxelTissue, fraction: np.ndarray) -> VoxelTissue:
    """The same voxels with part of each ROI's GM turned into CSF (free water).

    ``fraction[k - 1]``: CSF added to ROI k, as a fraction of the ROI's brain volume
    (``region``). It replaces the ROI's GM evenly, ``s_k x gm_k`` in every voxel with
    ``s_k = fraction_k x volume_k / gm_k`` (sums over the grid), so the ROI's tissue keeps its
    MD while its free-water share grows, as free-water elimination models it. Needs
    0 <= s_k <= 1 (an ROI cannot lose more GM than it has).
    """
    fraction = np.asarray(fraction, dtype=np.float64)
    n_regions = len(tissue.region)
    volume = tissue.region.reshape(n_regions, -1).sum(axis=1, dtype=np.float64)
    roi_gm = tissue.gm_by_label[1:]
    gm = roi_gm.reshape(n_regions, -1).sum(axis=1, dtype=np.float64)
    share = np.divide(fraction * volume, gm, out=np.zeros_like(fraction), where=gm > 0)
    if np.any(share < 0) or np.any(share > 1):
        raise ValueError(f"free water {fraction} cannot replace more than an ROI's GM or be < 0")
    moved = share.astype(np.float32)[:, None, None, None] * roi_gm
    gm_by_label = tissue.gm_by_label.copy()
    gm_by_label[1:] -= moved
    return dataclasses.replace(tissue, gm_by_label=gm_by_label, csf=tissue.csf + moved.sum(axis=0))


def rotate_tensor_components(tensor6: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """R T R^T for tensors stored as 6 components (xx, yy, zz, xy, xz, yz) along axis 0.

    The map is linear in the components: one 6 x 6 matrix, built from the six unit tensors,
    applied to every voxel at once.
    """
    pairs = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]
    linear = np.empty((6, 6))
    for column, (a, b) in enumerate(pairs):
        unit = np.zeros((3, 3))
        unit[a, b] = unit[b, a] = 1.0
        rotated = rotation @ unit @ rotation.T
        linear[:, column] = [rotated[i, j] for i, j in pairs]
    flat = np.asarray(tensor6, dtype=np.float32).reshape(6, -1)
    return (linear.astype(np.float32) @ flat).reshape(tensor6.shape)


@numba.njit(cache=True, nogil=True)
def _grid_template_index(
    grid_to_subject,
    displacement,
    warp_origin,
    warp_spacing,
    centre,
    inverse_scale,
    template_from_mm,
    out,
):  # pragma: no cover - compiled
    """Template voxel index of every voxel centre of a scanner grid (fused affine + warp).

    subject = grid_to_subject @ (i, j, k, 1); template mm = centre + (subject - centre) *
    inverse_scale + displacement(subject) (trilinear, clamped at the grid edge).
    """
    nx, ny, nz = out.shape[0], out.shape[1], out.shape[2]
    dx, dy, dz = displacement.shape[1], displacement.shape[2], displacement.shape[3]
    subject = np.empty(3)
    mm = np.empty(3)
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                subject[0], subject[1], subject[2] = apply_affine(grid_to_subject, i, j, k)
                index0 = min(max((subject[0] - warp_origin[0]) / warp_spacing, 0.0), dx - 1.0)
                index1 = min(max((subject[1] - warp_origin[1]) / warp_spacing, 0.0), dy - 1.0)
                index2 = min(max((subject[2] - warp_origin[2]) / warp_spacing, 0.0), dz - 1.0)
                cell = clamped_cell(displacement, index0, index1, index2)
                for a in range(3):
                    shift = trilinear(displacement, a, cell)
                    mm[a] = centre[a] + (subject[a] - centre[a]) * inverse_scale[a] + shift
                out[i, j, k, 0], out[i, j, k, 1], out[i, j, k, 2] = apply_affine(
                    template_from_mm, mm[0], mm[1], mm[2]
                )


@numba.njit(cache=True, nogil=True)
def _sample_channels(volume, index_map, points, cval, out):  # pragma: no cover - compiled
    """Trilinear samples of volume (C, X, Y, Z) at ``index_map @ point`` (cval outside)."""
    nc, sx, sy, sz = volume.shape
    nx, ny, nz = points.shape[0], points.shape[1], points.shape[2]
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                p0, p1, p2 = apply_affine(
                    index_map, points[i, j, k, 0], points[i, j, k, 1], points[i, j, k, 2]
                )
                if p0 < 0 or p1 < 0 or p2 < 0 or p0 > sx - 1 or p1 > sy - 1 or p2 > sz - 1:
                    for c in range(nc):
                        out[c, i, j, k] = cval
                    continue
                cell = clamped_cell(volume, p0, p1, p2)
                for c in range(nc):
                    out[c, i, j, k] = trilinear(volume, c, cell)


@numba.njit(cache=True, nogil=True)
def _roi_label(labels, template_to_atlas, n_labels, p0, p1, p2):  # pragma: no cover - compiled
    """ROI label (nearest neighbour) of template voxel point p; 0 outside the atlas or unknown."""
    r0, r1, r2 = nearest_index(template_to_atlas, p0, p1, p2)
    if 0 <= r0 < labels.shape[0] and 0 <= r1 < labels.shape[1] and 0 <= r2 < labels.shape[2]:
        label = labels[r0, r1, r2]
        if 0 <= label <= n_labels:
            return label
    return 0


@numba.njit(cache=True, nogil=True)
def _tissue_kernel(
    centre_index,
    needed,
    step,
    oversample,
    fractions,
    labels,
    template_to_atlas,
    n_labels,
    reach,
    template_to_reach,
    gm_out,
    wm_out,
    csf_out,
    reach_out,
    region_out,
):  # pragma: no cover - compiled
    """Fused sub-voxel sampling: trilinear GM/WM/CSF, nearest ROI label, block mean.

    reach_out[k] accumulates GM outside every ROI weighted by ROI k's reach (nearest sample);
    region_out[k - 1] the brain (GM + WM + CSF) volume fraction of the voxel inside ROI k.
    """
    rx, ry, rz = reach.shape[1], reach.shape[2], reach.shape[3]
    nx, ny, nz = centre_index.shape[0], centre_index.shape[1], centre_index.shape[2]
    sx, sy, sz = fractions.shape[1], fractions.shape[2], fractions.shape[3]
    n = oversample
    weight = 1.0 / (n * n * n)
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                if not needed[i, j, k]:
                    continue
                c0 = centre_index[i, j, k, 0]
                c1 = centre_index[i, j, k, 1]
                c2 = centre_index[i, j, k, 2]
                if c0 < -n or c1 < -n or c2 < -n or c0 > sx + n or c1 > sy + n or c2 > sz + n:
                    continue
                for a in range(n):
                    oa = (a + 0.5) / n - 0.5
                    for b in range(n):
                        ob = (b + 0.5) / n - 0.5
                        for c in range(n):
                            oc = (c + 0.5) / n - 0.5
                            p0 = c0 + step[0, 0] * oa + step[0, 1] * ob + step[0, 2] * oc
                            p1 = c1 + step[1, 0] * oa + step[1, 1] * ob + step[1, 2] * oc
                            p2 = c2 + step[2, 0] * oa + step[2, 1] * ob + step[2, 2] * oc
                            touches, cell = floor_cell(fractions, p0, p1, p2)
                            if not touches:
                                continue
                            g = trilinear(fractions, 0, cell)
                            w = trilinear(fractions, 1, cell)
                            f = trilinear(fractions, 2, cell)
                            label = 0
                            if n_labels > 0:
                                label = _roi_label(labels, template_to_atlas, n_labels, p0, p1, p2)
                                if label > 0:
                                    region_out[label - 1, i, j, k] += (g + w + f) * weight
                                if label == 0 and g > 0.0:
                                    s0, s1, s2 = nearest_index(template_to_reach, p0, p1, p2)
                                    if 0 <= s0 < rx and 0 <= s1 < ry and 0 <= s2 < rz:
                                        for m in range(n_labels):
                                            reach_out[m, i, j, k] += (
                                                g * weight * reach[m, s0, s1, s2]
                                            )
                            gm_out[label, i, j, k] += g * weight
                            wm_out[i, j, k] += w * weight
                            csf_out[i, j, k] += f * weight


def grid_template_index(
    template: TemplateAnatomy,
    participant: ParticipantAnatomy,
    pose: HeadPose,
    affine: np.ndarray,
    shape: tuple[int, int, int],
) -> np.ndarray:
    """Template voxel index (X, Y, Z, 3) of each voxel centre of a scanner grid."""
    to_subject = np.eye(4)
    to_subject[:3, :3] = pose.rotation.T
    to_subject[:3, 3] = pose.centre_mm - pose.rotation.T @ pose.translation_mm
    out = np.empty((*shape, 3), dtype=np.float64)
    _grid_template_index(
        np.ascontiguousarray(to_subject @ affine),
        participant.displacement_mm,
        np.asarray(participant.warp_origin_mm, dtype=np.float64),
        float(participant.warp_spacing_mm),
        np.asarray(participant.centre_mm, dtype=np.float64),
        1.0 / np.asarray(participant.scale, dtype=np.float64),
        np.ascontiguousarray(np.linalg.inv(template.affine)),
        out,
    )
    return out


def sample_channels(
    volume: np.ndarray, index_map: np.ndarray, points: np.ndarray, cval: float
) -> np.ndarray:
    """Trilinear samples (C, X, Y, Z) of ``volume`` (C, ...) at ``index_map @ points``."""
    out = np.empty((volume.shape[0], *points.shape[:3]), dtype=np.float32)
    _sample_channels(
        np.ascontiguousarray(volume, dtype=np.float32),
        np.ascontiguousarray(index_map, dtype=np.float64),
        points,
        float(cval),
        out,
    )
    return out


def voxel_tissue(
    template: TemplateAnatomy,
    participant: ParticipantAnatomy,
    pose: HeadPose,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    oversample: int,
    atlas: RoiAtlas | None,
    n_labels: int,
    with_fibre: bool = True,
) -> VoxelTissue:
    """Partial-volume tissue fractions of a scanner grid (affine, shape) for one session.

    Each voxel is the mean of ``oversample``^3 sub-voxel samples of the sharpened 1 mm template
    fractions, mapped scanner -> subject -> template; ROI labels (nearest neighbour) split the
    GM fraction by ROI. The warp is evaluated exactly at voxel centres; within one voxel the
    sub-voxel pattern follows the pose and head size only (the smooth displacement varies by
    well under 0.1 mm across a voxel).
    """
    centre_index = grid_template_index(template, participant, pose, affine, shape)
    step = np.linalg.inv(template.affine)[:3, :3] @ np.diag(1.0 / participant.scale)
    step = step @ pose.rotation.T @ affine[:3, :3]
    if atlas is None or n_labels == 0:
        n_labels = 0
        labels = np.zeros((1, 1, 1), dtype=np.int16)
        reach = np.zeros((1, 1, 1, 1), dtype=np.float32)
        template_to_atlas = np.eye(4)
        template_to_reach = np.eye(4)
    else:
        labels = np.ascontiguousarray(atlas.labels, dtype=np.int16)
        reach = np.ascontiguousarray(atlas.reach, dtype=np.float32)
        template_to_atlas = np.linalg.inv(atlas.affine) @ template.affine
        template_to_reach = np.linalg.inv(atlas.reach_affine) @ template.affine
    template_to_coarse = np.linalg.inv(template.coarse_affine) @ template.affine
    # Voxels whose centre is farther from the brain hull than the voxel's half diagonal (in
    # template mm, with the largest head scale) hold no brain: skip their sub-voxel sampling.
    shell = sample_channels(
        template.shell_distance_mm[None], template_to_coarse, centre_index, OUTSIDE_DISTANCE_MM
    )[0]
    half_diagonal = 0.5 * np.linalg.norm(affine[:3, :3], axis=0).max() * np.sqrt(3.0)
    needed = shell <= half_diagonal / SCALE_LIMITS[0] + COARSE_VOXEL_MM
    # Single precision, as stored: a voxel sums at most oversample^3 samples.
    gm_by_label = np.zeros((n_labels + 1, *shape), dtype=np.float32)
    wm = np.zeros(shape, dtype=np.float32)
    csf = np.zeros(shape, dtype=np.float32)
    reach_gm = np.zeros((max(n_labels, 1), *shape), dtype=np.float32)
    region = np.zeros((max(n_labels, 1), *shape), dtype=np.float32)
    _tissue_kernel(
        np.ascontiguousarray(centre_index, dtype=np.float64),
        np.ascontiguousarray(needed),
        np.ascontiguousarray(step, dtype=np.float64),
        int(oversample),
        template.fractions,
        labels,
        np.ascontiguousarray(template_to_atlas, dtype=np.float64),
        int(n_labels),
        reach,
        np.ascontiguousarray(template_to_reach, dtype=np.float64),
        gm_by_label,
        wm,
        csf,
        reach_gm,
        region,
    )

    fibre = wm_depth = None
    if with_fibre:
        depth = template.wm_depth[None]
        wm_depth = sample_channels(depth, template_to_coarse, centre_index, 0.0)[0]
        fibre = sample_channels(template.fibre_tensor, template_to_coarse, centre_index, 0.0)
        # Template axes -> scanner axes (head rotation) -> image axes of this grid.
        image_axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
        fibre = rotate_tensor_components(fibre, image_axes.T @ pose.rotation)
    return VoxelTissue(
        gm_by_label=gm_by_label,
        reach_gm=reach_gm[:n_labels],
        region=region[:n_labels],
        wm=wm,
        csf=csf,
        fibre_tensor=fibre,
        wm_depth=wm_depth,
        shell_distance_mm=shell,
    )


def subvoxel_grid(
    affine: np.ndarray, shape: tuple[int, int, int], factor: int
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The grid that splits each voxel of (affine, shape) into factor^3 sub-voxels.

    Sub-voxel index f lies at voxel index ``(f + 0.5) / factor - 0.5``, so the sub-voxel
    centres are where voxel_tissue(oversample=factor) samples.
    """
    scale = np.diag([1.0 / factor] * 3 + [1.0])
    scale[:3, 3] = 0.5 / factor - 0.5
    return affine @ scale, tuple(int(s) * factor for s in shape)


def coarsen_tissue(tissue: VoxelTissue, factor: int) -> VoxelTissue:
    """The block-mean fractions of a sub-voxel grid's tissue (subvoxel_grid) on the voxel grid.

    The fibre field and the WM depth are left to the sub-voxel grid's signal (None here); the
    hull distance is the mean of the sub-voxels' (the distance is smooth).
    """

    def mean(array: np.ndarray) -> np.ndarray:
        return block_mean(array, factor).astype(np.float32)

    return VoxelTissue(
        gm_by_label=mean(tissue.gm_by_label),
        reach_gm=mean(tissue.reach_gm),
        region=mean(tissue.region),
        wm=mean(tissue.wm),
        csf=mean(tissue.csf),
        fibre_tensor=None,
        wm_depth=None,
        shell_distance_mm=mean(tissue.shell_distance_mm),
    )


def scanner_grid(
    pose: HeadPose,
    voxel_mm: float,
    shape: tuple[int, int, int],
    slab_pitch_deg: float = 0.0,
    offset_mm: np.ndarray | None = None,
) -> np.ndarray:
    """Affine of an axial LAS grid (x flipped, as DICOM converters write) centred on the head.

    ``slab_pitch_deg`` tilts the slab about x, as radiographers angle DWI slabs to the AC-PC
    line; ``offset_mm`` is the error of centring the field of view on the brain.
    """
    axes = rotation_matrix([slab_pitch_deg, 0.0, 0.0]) @ np.diag([-voxel_mm, voxel_mm, voxel_mm])
    centre = pose.translation_mm + (np.zeros(3) if offset_mm is None else offset_mm)
    affine = np.eye(4)
    affine[:3, :3] = axes
    affine[:3, 3] = centre - axes @ ((np.array(shape) - 1) / 2.0)
    return affine
