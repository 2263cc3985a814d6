"""Head-motion and eddy-current correction: per-volume affine registration to targets of the
same contrast.

A diffusion-weighted (DW) volume is never registered to a b0: at high b its contrast is unlike
the b0's (dark CSF, noisy), and a mutual-information fit across contrasts wanders by ~1 mm from
volume to volume (18 of 21 volumes flagged on a still volunteer at b=2500). Instead, as FSL eddy
and QSIPrep's SHORELine do, each shell's DW volumes are registered to the mean DW image of their
shell, recomputed from the aligned volumes over a few passes (the first on a coarse pyramid
only); the shell mean is then brought to the b0 reference by ONE rigid registration, so the
b0 -> DW relation is a single transform shared by the shell rather than one noisy estimate per
volume. b0 volumes are aligned rigidly to the first b0; their mean is the reference.

Volumes are brought together by least squares (``series_registration``: seconds per series);
mutual information then refines each DW volume at full resolution only, where its own gradient
direction's contrast would bias least squares (``mutual_information``, our own), and makes the
one b0 -> shell link (ANTs).

DW affines keep the eddy-current part (12 parameters); b-vectors are rotated by each volume's
rotation (without the eddy-current shear), their translation along phase encoding is taken from
the b0s (``pe_translation_from_b0s``) before framewise displacement (FD), and every volume is
interpolated once, from the raw data.

All affines here are 4x4 world (RAS+, mm) maps from reference-space points to raw-volume points.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ketamine_dti.ants_backend import (
    METRIC_SAMPLING_FRACTION,
    image_from_array,
    register_arrays,
    transform_to_ras,
)
from ketamine_dti.dwi import gradients, mutual_information, series_registration
from ketamine_dti.dwi.gradients import (
    GradientTable,
    rotate_bvecs,
    rotation_excluding_phase_encoding,
    rotation_part,
)
from ketamine_dti.dwi.resampling import resample_series

LOGGER = logging.getLogger(__name__)

#: mm; Power et al. (2012) convert rotations to arc length on a sphere of this radius (a head).
FD_HEAD_RADIUS_MM = 50.0
#: mm; a volume whose FD exceeds this is flagged as an outlier (Power et al. 2012's 0.5 mm cut).
FD_OUTLIER_MM = 0.5
#: iterations per level (coarse to fine; ``series_registration.pyramid``'s levels) of the one
#: mutual-information registration per shell.
ITERATIONS_PER_LEVEL = (100, 50, 25)
#: passes of the shell-mean registration: each registers every DW volume of a shell to the
#: mean of the previous pass's aligned volumes (the first to the raw mean), starting from the
#: previous pass's estimate, on a slice of the pyramid's levels (coarse to fine). The first
#: pass stops one level short of full resolution (its target, the raw mean, is blurred by
#: motion anyway); warm-started later passes need only the finer levels.
SHELL_PASS_LEVELS = (slice(0, -1), slice(-2, None), slice(-1, None))
#: steps of the final per-volume mutual-information refinement, at full resolution only (the
#: least-squares passes leave each volume within ~0.1 mm, so a few steps suffice: 8 and 15 gave
#: the same error on training seed 3). Our own Mattes MI (``mutual_information``) since session
#: 12: one antsRegistration per volume cost ~0.3 s of set-up plus ~0.2 s per step.
FINAL_MI_ITERATIONS = 8
#: share of the mask's voxels the final refinement's metric samples. 0.1 (session 10) only
#: saved ANTs' per-sample cost; ours costs milliseconds, so ANTs' default 0.25 is back. On the
#: training seeds 0.25 and 0.1 tie (median voxel error 0.2613/0.2676 against 0.2578/0.2708 mm,
#: seeds 1/3); on the real Prisma scan 0.1 flagged 3 and 3 volumes, 0.25 3 and 1
#: (benchmarks/results/motion_session12.md).
FINAL_MI_SAMPLING = 0.25
#: voxel dilation of the reference brain mask used to focus the metric on the head.
MASK_DILATION_VOXELS = 2
#: voxels kept around the (dilated) brain mask when cropping for registration: room for a few
#: mm of motion; the background outside only costs time.
CROP_MARGIN_VOXELS = 4
#: Fewest DW volumes of a shell from which its mean eddy-current map is estimated
#: (``shell_mean_eddy``: 4 regressors per entry of the phase-encode row).
MIN_VOLUMES_FOR_EDDY_MEAN = 12
#: BIDS PhaseEncodingDirection -> voxel axis.
PE_AXES = {"i": 0, "j": 1, "k": 2}
#: mm; voxel size of the quick brain mask that focuses the registrations (it is dilated anyway;
#: median filtering at native 2 mm costs seconds).
FOCUS_MASK_MM = 4.0
#: Columns of the confounds table: the six rigid parameters (mm, rad; RAS+ axes).
CONFOUND_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


@dataclass(frozen=True)
class MotionResult:
    """Motion-corrected data and what was estimated on the way.

    corrected: (X, Y, Z, N) volumes on the reference grid (None: not resampled here).
    bvecs: (N, 3) rotated FSL b-vectors.
    affines: (N, 4, 4) RAS+ maps, reference points -> raw-volume points (mm).
    parameters: (N, 6) trans_x, trans_y, trans_z (mm), rot_x, rot_y, rot_z (rad), RAS+ axes.
    framewise_displacement: (N,) mm, 0 for the first volume.
    outliers: (N,) bool, FD above FD_OUTLIER_MM.
    reference: (X, Y, Z) b0 reference the volumes were aligned to.
    """

    corrected: np.ndarray | None
    bvecs: np.ndarray
    affines: np.ndarray
    parameters: np.ndarray
    framewise_displacement: np.ndarray
    outliers: np.ndarray
    reference: np.ndarray


def _crop_to_mask(fixed, moving, affine, mask):
    """Crop both volumes to the mask's bounding box (plus a margin); world space is unchanged."""
    present = np.argwhere(mask)
    if present.size == 0:
        return fixed, moving, affine, mask
    start = np.maximum(present.min(axis=0) - CROP_MARGIN_VOXELS, 0)
    stop = np.minimum(present.max(axis=0) + CROP_MARGIN_VOXELS + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    shifted = np.asarray(affine, dtype=float).copy()
    shifted[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return fixed[box], moving[box], shifted, mask[box]


def register_mutual_information(
    fixed: np.ndarray,
    moving: np.ndarray,
    affine: np.ndarray,
    fixed_mask: np.ndarray | None = None,
    rigid: bool = True,
) -> np.ndarray:
    """Rigid (or affine) registration of `moving` to `fixed` (same grid) with Mattes mutual
    information; the RAS+ fixed -> moving matrix, from the identity (volumes of one series are
    already close), on the full pyramid. For different contrasts: a DW shell mean to the b0
    reference, a GRE magnitude to the b0."""
    if fixed_mask is not None:
        fixed, moving, affine, fixed_mask = _crop_to_mask(fixed, moving, affine, fixed_mask)
    zooms = tuple(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    levels = series_registration.pyramid(zooms)
    iterations = ITERATIONS_PER_LEVEL[: len(levels)]
    sampling = METRIC_SAMPLING_FRACTION
    mask_img = (
        None if fixed_mask is None else image_from_array(fixed_mask.astype(np.float32), affine)
    )
    transform = register_arrays(
        image_from_array(fixed, affine),
        image_from_array(moving, affine),
        transform="Rigid" if rigid else "Affine",
        mask=mask_img,
        iterations=iterations,
        shrink_factors=tuple(level.stride for level in levels),
        smoothing_sigmas=tuple(level.sigma for level in levels),
        sampling=sampling,
    )
    return transform_to_ras(transform)


#: The one resampling of this module (trilinear, zero outside).
resample = series_registration.resample


def grid_center(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World (RAS+, mm) coordinates of the grid's central point."""
    center_voxel = (np.asarray(shape[:3], dtype=float) - 1.0) / 2.0
    return (np.asarray(affine) @ np.append(center_voxel, 1.0))[:3]


def pe_axis_from_metadata(metadata: dict) -> int | None:
    """Voxel axis of the BIDS PhaseEncodingDirection ('j-' -> 1), or None if absent."""
    direction = str(metadata.get("PhaseEncodingDirection", ""))[:1]
    return PE_AXES.get(direction)


def motion_parameters(
    affines: np.ndarray, center: np.ndarray, rotations: np.ndarray | None = None
) -> np.ndarray:
    """Six rigid parameters per volume from reference -> raw affines.

    Translations (mm) are the displacement of the grid center; rotations (rad) are the xyz Euler
    angles of `rotations` (default: the affines' polar rotation part, shear and scale removed).
    """
    affines = np.asarray(affines, dtype=float)
    if rotations is None:
        rotations = np.stack([rotation_part(matrix) for matrix in affines])
    params = np.zeros((len(affines), 6))
    for index, matrix in enumerate(affines):
        params[index, :3] = matrix[:3, :3] @ center + matrix[:3, 3] - center
        params[index, 3:] = Rotation.from_matrix(rotations[index]).as_euler("xyz")
    return params


def pe_translation_from_b0s(
    translations: np.ndarray,
    gtab: GradientTable,
    image_affine: np.ndarray,
    pe_axis: int,
) -> np.ndarray:
    """Translations whose phase-encode (PE) component in DW volumes comes from the b0s.

    Along the PE axis a DW volume's translation is the head's plus the eddy-current field
    offset, which one PE direction cannot separate. A model linear in the gradient (FSL eddy's
    default) leaves +-0.5 mm on the Prisma b=2500 scan that flips sign between the PA and AP
    series: field, not head. b0 volumes have no eddy currents, so the head's PE position is
    taken from them, interpolated in acquisition order (constant with a single b0); the other
    two axes and the rotations still come from every volume.
    """
    translations = np.array(translations, dtype=float, copy=True)
    pe_direction = np.asarray(image_affine, dtype=float)[:3, pe_axis]
    pe_direction = pe_direction / np.linalg.norm(pe_direction)
    along_pe = translations @ pe_direction
    b0_indices = np.flatnonzero(gtab.b0_mask)
    order = np.arange(len(translations))
    head_pe = np.interp(order, b0_indices, along_pe[b0_indices])
    weighted = ~gtab.b0_mask
    translations[weighted] += (head_pe - along_pe)[weighted, None] * pe_direction[None, :]
    return translations


def framewise_displacement(
    parameters: np.ndarray, radius_mm: float = FD_HEAD_RADIUS_MM
) -> np.ndarray:
    """Power et al. (2012) FD in mm: sum of |d translation| + radius * sum of |d rotation|."""
    deltas = np.abs(np.diff(np.asarray(parameters, dtype=float), axis=0))
    fd = deltas[:, :3].sum(axis=1) + radius_mm * deltas[:, 3:].sum(axis=1)
    return np.concatenate([[0.0], fd])


def _registration_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    return np.ones(shape[:3], dtype=bool) if mask is None else mask


def align_b0s(
    data: np.ndarray, gtab: GradientTable, affine: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The b0 reference (mean of the b0 volumes rigidly aligned to the first, whose position
    defines reference space) and each b0's reference -> raw affine."""
    b0_indices = np.flatnonzero(gtab.b0_mask)
    first = np.asarray(data[..., b0_indices[0]], dtype=np.float32)
    affines = {int(b0_indices[0]): np.eye(4)}
    aligned = [first]
    if len(b0_indices) > 1:
        target = series_registration.prepare(
            first, affine, _registration_mask(mask, data.shape), rigid=True
        )
        for index in b0_indices[1:]:
            affines[int(index)] = series_registration.register(target, data[..., index])
            aligned.append(resample(data[..., index], affines[int(index)], affine))
    return np.mean(aligned, axis=0), affines


def _shell_frame(
    volumes: np.ndarray, affines: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Affines re-expressed so that their mean is the identity (as template construction does:
    otherwise a blurred target pulls every volume to a larger scale and the frame drifts), and
    the mean of the volumes aligned by them."""
    affines = affines @ np.linalg.inv(affines.mean(axis=0))
    aligned = np.zeros(volumes.shape[:3], dtype=np.float64)
    for index in range(volumes.shape[-1]):
        aligned += resample(volumes[..., index], affines[index], affine)
    return affines, (aligned / volumes.shape[-1]).astype(np.float32)


def align_shell(
    volumes: np.ndarray, affine: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Register the DW volumes (X, Y, Z, n) of one shell to their own mean, iteratively.

    Every volume shares the target's contrast up to its gradient direction's anisotropy. The
    12-parameter affines (head motion plus eddy currents) are first estimated by least
    squares (SHELL_PASS_LEVELS, seconds per shell), the mean recomputed after each pass; then
    each volume is refined by a few full-resolution steps of mutual information, which the
    direction's own contrast does not bias (least squares alone left 0.12 mm per volume on
    held-out seed 3, and spurious rotations on a still phantom with direction-dependent
    texture; mutual information 0.06 mm). Returns the (n, 4, 4) shell-frame -> raw affines and
    the shell mean (the frame is the average head position and eddy distortion of the shell).
    """
    mask = _registration_mask(mask, volumes.shape)
    zooms = tuple(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    n = volumes.shape[-1]
    target = np.mean(volumes, axis=-1, dtype=np.float32)
    affines = np.tile(np.eye(4), (n, 1, 1))
    levels = series_registration.pyramid(zooms)
    for part in SHELL_PASS_LEVELS:
        prepared = series_registration.prepare(target, affine, mask, levels=levels[part] or levels)
        for index in range(n):
            affines[index] = series_registration.register(
                prepared, volumes[..., index], initial=affines[index]
            )
        affines, target = _shell_frame(volumes, affines, affine)
    fixed, _, cropped_affine, cropped_mask = _crop_to_mask(target, target, affine, mask)
    prepared = mutual_information.prepare(fixed, cropped_affine, cropped_mask, FINAL_MI_SAMPLING)
    for index in range(n):
        moved = resample(volumes[..., index], affines[index], affine)
        _, moved, _, _ = _crop_to_mask(target, moved, affine, mask)
        residual = mutual_information.register(prepared, moved, FINAL_MI_ITERATIONS)
        affines[index] = affines[index] @ residual
    return _shell_frame(volumes, affines, affine)


def shell_mean_eddy(
    to_shell: np.ndarray,
    bvecs: np.ndarray,
    affine: np.ndarray,
    pe_axis: int,
    centre: np.ndarray,
) -> np.ndarray:
    """The eddy-current map of a shell's mean image: RAS+ 4x4, undistorted -> shell frame.

    ``align_shell``'s frame is the average of the shell's volumes, eddy distortion included.
    Eddy fields are linear in the gradient (FSL eddy's model), and the directions of a shell
    sampled on a half sphere average to a vector ~0.5 long, so the shell mean is itself
    scaled and sheared along phase encoding by the field of that mean direction. The one
    rigid shell -> b0 registration cannot remove that: every DW volume stayed stretched against
    the b0 (0.1-0.9% on simulated sessions: up to ~1 mm at the frontal pole), and uncorrected
    by the Jacobian, which moved MD by mean(ln J) / b, +-1% from session to session. The PE
    row of each volume's shell-frame voxel map (``to_shell``, per volume (4, 4) RAS+), fitted
    linearly on its gradient direction (``bvecs``, (n, 3)), gives the field per unit gradient;
    at the shell's mean direction it is the shell mean's own. The map keeps the voxel point
    ``centre`` (the brain's centroid) in place: position is the rigid registration's job.
    """
    bvecs = np.asarray(bvecs, dtype=float)
    inverse = np.linalg.inv(affine)
    rows = np.stack([(inverse @ m @ affine)[pe_axis] for m in to_shell])
    rows[:, pe_axis] -= 1.0
    design = np.column_stack([bvecs, np.ones(len(bvecs))])
    per_gradient, *_ = np.linalg.lstsq(design, rows, rcond=None)
    row = bvecs.mean(axis=0) @ per_gradient[:3]
    voxel_map = np.eye(4)
    voxel_map[pe_axis, :3] += row[:3]
    voxel_map[pe_axis, 3] = -row[:3] @ centre
    return affine @ voxel_map @ inverse


def estimate_affines(
    data: np.ndarray,
    gtab: GradientTable,
    affine: np.ndarray,
    mask: np.ndarray | None = None,
    pe_axis: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference -> raw affines (N, 4, 4) of every volume, and the b0 reference.

    b0s: rigid to the first b0. DW volumes: to their shell mean (``align_shell``), composed,
    when the phase-encode axis is known, with the shell mean's own eddy-current map
    (``shell_mean_eddy``), then with one rigid registration of the undistorted shell mean to
    the b0 reference.
    """
    reference, b0_affines = align_b0s(data, gtab, affine, mask)
    affines = np.empty((data.shape[-1], 4, 4))
    for index, matrix in b0_affines.items():
        affines[index] = matrix
    shells = gradients.cluster_shells(gtab.bvals, gtab.b0_threshold)
    # the brain's centroid (voxels), which shell_mean_eddy keeps in place
    centre = (
        np.argwhere(mask).mean(axis=0)
        if mask is not None and mask.any()
        else (np.asarray(data.shape[:3], float) - 1) / 2
    )
    for shell in np.unique(shells[~gtab.b0_mask]):
        members = np.flatnonzero((shells == shell) & ~gtab.b0_mask)
        to_shell, shell_mean = align_shell(data[..., members], affine, mask)
        eddy = np.eye(4)
        if pe_axis is not None and len(members) >= MIN_VOLUMES_FOR_EDDY_MEAN:
            eddy = shell_mean_eddy(to_shell, gtab.bvecs[members], affine, pe_axis, centre)
            shell_mean = resample(shell_mean, eddy, affine)
        shell_from_reference = register_mutual_information(
            reference, shell_mean, affine, fixed_mask=mask
        )
        affines[members] = to_shell @ eddy @ shell_from_reference
        LOGGER.debug("shell b=%g: %d volumes aligned", shell, len(members))
    return affines, reference


def correct_motion(
    data: np.ndarray,
    gtab: GradientTable,
    affine: np.ndarray,
    mask: np.ndarray | None = None,
    pe_axis: int | None = None,
    resample_volumes: bool = True,
) -> MotionResult:
    """Align every volume (``estimate_affines``), rotate b-vectors, and measure motion.

    Args:
        data: (X, Y, Z, N) DWI series (after denoising / unringing).
        gtab: its gradient table (FSL b-vectors of the raw volumes).
        affine: voxel-to-world (RAS+) affine of the series.
        mask: optional brain mask of the first b0 to focus the metric (dilated here).
        pe_axis: phase-encode voxel axis; when known, eddy-current shear and shift along it
            are kept out of the rotations, b-vector rotation and motion parameters.
        resample_volumes: False leaves ``corrected`` None, for a caller that resamples once
            with the susceptibility displacement as well (``resampling.resample_series``).
    """
    if mask is not None:
        mask = ndimage.binary_dilation(mask, iterations=MASK_DILATION_VOXELS)
    affines, reference = estimate_affines(data, gtab, affine, mask, pe_axis)
    corrected = resample_series(data, affines, affine) if resample_volumes else None
    if pe_axis is None:
        rotations = np.stack([rotation_part(matrix) for matrix in affines])
    else:
        rotations = np.stack(
            [rotation_excluding_phase_encoding(matrix, affine, pe_axis) for matrix in affines]
        )
    params = motion_parameters(affines, grid_center(data.shape, affine), rotations)
    if pe_axis is not None:
        params[:, :3] = pe_translation_from_b0s(params[:, :3], gtab, affine, pe_axis)
    fd = framewise_displacement(params)
    return MotionResult(
        corrected=corrected,
        bvecs=rotate_bvecs(gtab.bvecs, affines, affine, rotations=rotations),
        affines=affines,
        parameters=params,
        framewise_displacement=fd,
        outliers=fd > FD_OUTLIER_MM,
        reference=reference,
    )


def correct_series(
    data: np.ndarray,
    gtab: GradientTable,
    affine: np.ndarray,
    zooms: tuple[float, ...],
    pe_axis: int | None = None,
    resample_volumes: bool = True,
) -> MotionResult:
    """``correct_motion`` with the metric focused on the brain mask of the first b0 (voxel
    sizes ``zooms`` in mm): the App's motion step."""
    from ketamine_dti.dwi.mask import brain_mask

    first_b0 = np.asarray(data[..., int(np.flatnonzero(gtab.b0_mask)[0])], dtype=np.float32)
    factor = max(1, int(round(FOCUS_MASK_MM / float(np.mean(zooms[:3])))))
    if factor > 1:  # block means -> mask -> back to the native grid
        shape = np.asarray(first_b0.shape) // factor
        trimmed = first_b0[tuple(slice(0, n * factor) for n in shape)]
        blocks = trimmed.reshape(shape[0], factor, shape[1], factor, shape[2], factor)
        coarse_mask = brain_mask(blocks.mean(axis=(1, 3, 5)), tuple(z * factor for z in zooms))
        initial_mask = np.zeros(first_b0.shape, dtype=bool)
        initial_mask[tuple(slice(0, n * factor) for n in shape)] = (
            coarse_mask.repeat(factor, 0).repeat(factor, 1).repeat(factor, 2)
        )
    else:
        initial_mask = brain_mask(first_b0, zooms)
    return correct_motion(
        data, gtab, affine, mask=initial_mask, pe_axis=pe_axis, resample_volumes=resample_volumes
    )


def confounds_table(result: MotionResult) -> pd.DataFrame:
    """One row per volume: the six motion parameters, FD (mm) and the 0/1 outlier flag."""
    confounds = pd.DataFrame(result.parameters, columns=list(CONFOUND_COLUMNS))
    confounds["framewise_displacement"] = result.framewise_displacement
    confounds["motion_outlier"] = result.outliers.astype(int)
    return confounds


def motion_summary(result: MotionResult) -> dict[str, float | int]:
    """Mean and max FD (mm) and the number of outlier volumes. FD of the first volume is 0 by
    definition, so it is left out of the mean."""
    return {
        "mean_fd": float(np.mean(result.framewise_displacement[1:])),
        "max_fd": float(np.max(result.framewise_displacement)),
        "n_outlier_volumes": int(result.outliers.sum()),
    }
