"""Within-subject reference unbiased between the two sessions (a rigid halfway space).

The two sessions' T1w are rigidly registered, the transform is split into two equal halves
(a rotation by half the angle about the same axis), each session is resampled once into the
halfway space and the two are averaged. Neither session is privileged, so a change between
sessions cannot come from one of them being interpolated and the other not.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from ketamine_dti.anat.registration import normalized_cross_correlation, register_linear
from ketamine_dti.ants_backend import (
    REGISTRATION_SEED,
    WORK_EXTENSION,
    PathLike,
    affine_to_matrix,
    apply_transforms,
    identity_file,
    load_image,
    matrix_to_affine,
    nifti_extension,
    save_like,
)

LOGGER = logging.getLogger(__name__)

#: Tolerance on R^T R = I and det R = 1 for a matrix to count as rigid (float32 .mat files).
RIGID_TOLERANCE: float = 1e-4
#: Head mask for intensity normalisation: voxels above this fraction of the 99th percentile.
HEAD_FRACTION: float = 0.1
#: Upper percentile used for the head threshold (robust to a few hot voxels).
HEAD_PERCENTILE: float = 99.0
#: Fraction of the voxels in the session-to-session Mattes MI. Two T1w of one head are the
#: easiest registration there is: on a standard participant (seed 11 sub-001) 0.10 instead of
#: the default 0.25 moved the halfway map by at most 0.006 mm over the brain and cut the
#: template from 45 to 30 s; 0.05 moved it 0.015 mm for 4 s more.
SESSION_SAMPLING_FRACTION: float = 0.10
#: Iterations per level (8, 4, 2 mm) of that registration: its last level starts within a few
#: hundredths of a mm, so 10 iterations there instead of 50. Training seed 7, 6 tiny
#: participants (2 mm T1w): 12.5 -> 5.0 s per template, reg_session_halfway_ncc identical to 4
#: decimals (mni_levels_session27.md). Standard: seed 11's sub-001 template is bit-identical,
#: and the 4-participant paper trial's error moved 3.16 -> 3.13% (r 0.867 both).
SESSION_ITERATIONS: tuple[int, ...] = (200, 100, 10)


def is_rigid(matrix: np.ndarray, tol: float = RIGID_TOLERANCE) -> bool:
    """True if the 3x3 part of a 4x4 homogeneous matrix is a proper rotation."""
    linear = np.asarray(matrix, float)[:3, :3]
    return bool(
        np.allclose(linear.T @ linear, np.eye(3), atol=tol)
        and abs(np.linalg.det(linear) - 1.0) < tol
    )


def halfway_matrices(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a rigid 4x4 point map M into H with H @ H = M; returns ``(H, inv(H))``.

    The rotation is halved about the same axis (exact, no matrix-square-root branch issue);
    the translation solves (R_h + I) t_h = t. A non-rigid (affine) M falls back to the
    principal real matrix square root. Symmetric: the split of inv(M) is inv(H).
    """
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (4, 4):
        raise ValueError("matrix must be 4x4")
    half = np.eye(4)
    if is_rigid(matrix):
        rotvec = Rotation.from_matrix(matrix[:3, :3]).as_rotvec()
        rot_half = Rotation.from_rotvec(rotvec / 2.0).as_matrix()
        half[:3, :3] = rot_half
        half[:3, 3] = np.linalg.solve(rot_half + np.eye(3), matrix[:3, 3])
    else:
        from scipy.linalg import sqrtm

        LOGGER.warning("halfway split of a non-rigid matrix: using the matrix square root")
        half = np.real(sqrtm(matrix))
        half[3] = [0.0, 0.0, 0.0, 1.0]
    return half, np.linalg.inv(half)


def head_mask(data: np.ndarray) -> np.ndarray:
    """Rough head mask: voxels brighter than a fraction of the robust maximum."""
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(data.shape, bool)
    return data > HEAD_FRACTION * np.percentile(finite, HEAD_PERCENTILE)


def normalize_intensity(data: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Scale an image to median 1 inside the head (or ``mask``): sessions differ in gain."""
    sel = head_mask(data) if mask is None else np.asarray(mask, bool)
    median = float(np.median(data[sel])) if sel.any() else 0.0
    return data / median if median > 0 else data.astype(float)


def _displacement_at(matrix: np.ndarray, point: Sequence[float]) -> float:
    """How far (mm) a rigid point map moves ``point`` (the head centre: a rotation-free size)."""
    p = np.append(np.asarray(point, float), 1.0)
    return float(np.linalg.norm((matrix @ p - p)[:3]))


@dataclass(frozen=True)
class SubjectTemplate:
    """The participant's halfway T1w and the rigid maps between it and each session."""

    template_file: str
    from_session_to_template: tuple[tuple[str, ...], ...]
    from_template_to_session: tuple[tuple[str, ...], ...]
    qc: dict[str, float] = field(default_factory=dict)


def build_subject_template(
    t1w_files: Sequence[PathLike],
    out_dir: PathLike,
    *,
    mask_files: Sequence[PathLike] | None = None,
    seed: int = REGISTRATION_SEED,
    n_threads: int | None = None,
) -> SubjectTemplate:
    """Halfway-space average of one participant's (bias-corrected) T1w, baseline first.

    One file: the template is a copy and both transform lists are the identity. Two files:
    rigid session B -> A (Mattes MI), halved; both resampled (linear, once) on session A's grid
    in the halfway space, intensity-normalised and averaged. QC: ``ncc_halfway`` between the
    two resampled sessions inside the head.
    """
    import ants

    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [Path(f).absolute() for f in t1w_files]
    if len(files) not in (1, 2):
        raise ValueError(f"expected 1 or 2 T1w files, got {len(files)}")
    # a single session's template is a copy, so it keeps that file's format
    extension = nifti_extension(files[0]) if len(files) == 1 else WORK_EXTENSION
    template_file = out_dir / f"subject_template{extension}"
    if len(files) == 1:  # two files are checked by register_linear
        load_image(files[0])
        shutil.copyfile(files[0], template_file)
        identity = identity_file(out_dir)
        return SubjectTemplate(str(template_file), ((identity,),), ((identity,),), {})

    fixed_mask = str(mask_files[0]) if mask_files else None
    moving_mask = str(mask_files[1]) if mask_files else None
    reg = register_linear(
        files[0],
        files[1],
        out_dir,
        prefix="ses2_to_ses1_",
        transform="Rigid",
        metric="mattes",
        fixed_mask_file=fixed_mask,
        moving_mask_file=moving_mask,
        iterations=SESSION_ITERATIONS,
        sampling_fraction=SESSION_SAMPLING_FRACTION,
        with_qc=False,  # ncc_halfway below scores the result
        seed=seed,
        n_threads=n_threads,
    )
    # point map A -> B; halfway space M: x_M = H x_A, x_B = H x_M
    point_map = affine_to_matrix(reg.from_moving_to_fixed[0])
    half, half_inv = halfway_matrices(point_map)
    # from-B_to-M uses the point map M -> B (= H); from-A_to-M uses M -> A (= H^-1)
    a_to_tpl = matrix_to_affine(half_inv, out_dir / "ses1_to_template.mat")
    b_to_tpl = matrix_to_affine(half, out_dir / "ses2_to_template.mat")
    tpl_to_a = matrix_to_affine(half, out_dir / "template_to_ses1.mat")
    tpl_to_b = matrix_to_affine(half_inv, out_dir / "template_to_ses2.mat")

    resampled = []
    for index, (path, xfm) in enumerate(zip(files, (a_to_tpl, b_to_tpl), strict=True)):
        out = out_dir / f"ses{index + 1}_halfway{WORK_EXTENSION}"
        apply_transforms(path, files[0], [xfm], out, interpolation="linear")
        resampled.append(ants.image_read(str(out)))
    arrays = [normalize_intensity(img.numpy()) for img in resampled]
    mean = 0.5 * (arrays[0] + arrays[1])
    save_like(resampled[0], mean, template_file)
    qc = {
        "ncc_halfway": normalized_cross_correlation(arrays[0], arrays[1], head_mask(mean)),
        "rotation_deg": float(np.degrees(Rotation.from_matrix(point_map[:3, :3]).magnitude())),
        "translation_mm": _displacement_at(point_map, resampled[0].get_center_of_mass()),
    }
    LOGGER.info(
        "subject template: sessions %.2f deg / %.2f mm apart, NCC %.3f",
        qc["rotation_deg"],
        qc["translation_mm"],
        qc["ncc_halfway"],
    )
    return SubjectTemplate(
        str(template_file), ((a_to_tpl,), (b_to_tpl,)), ((tpl_to_a,), (tpl_to_b,)), qc
    )
