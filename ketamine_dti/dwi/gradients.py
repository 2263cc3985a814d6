"""The diffusion gradient table: reading, checking and rotating b-vectors.

b-values are in s/mm^2. b-vectors follow the FSL convention (the one scanners' converters
export): unit vectors in the image's voxel axes, with the first axis flipped when the voxel-to-
world matrix has a positive determinant. Rotation by head motion happens in world space, so the
helpers here convert between the two frames explicitly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.linalg import polar

from ketamine_dti.errors import InputError

LOGGER = logging.getLogger(__name__)

#: s/mm^2; scanners often report b=5..50 for the "b0" images, which are treated as unweighted
#: (MRtrix3's default bzero threshold is 10; 50 also covers Philips' b=25..50 "b0"s).
B0_THRESHOLD = 50.0
#: Relative width of a shell: b-values within 5% of a shell's centre belong to it (scanners
#: report e.g. b=995..1005 for one nominal shell, and the norm rescaling below spreads them).
SHELL_TOLERANCE = 0.05
#: |norm - 1| below which a diffusion-weighted b-vector is taken as unit (converter rounding).
BVEC_UNIT_TOLERANCE = 0.01
#: If every b-value is at most this, they are in ms/um^2 (1 ms/um^2 = 1000 s/mm^2), not s/mm^2.
BVAL_MS_PER_UM2_MAX = 10.0
#: Unique gradient directions (up to sign) a tensor fit needs: 6 unknowns besides S0.
MIN_TENSOR_DIRECTIONS = 6
#: Relative singular value below which the tensor design counts as rank deficient.
_DESIGN_RANK_TOLERANCE = 1e-6


@dataclass(frozen=True)
class GradientTable:
    """b-values (s/mm^2, shape (N,)) and unit b-vectors (shape (N, 3), FSL voxel convention)."""

    bvals: np.ndarray
    bvecs: np.ndarray
    b0_threshold: float = B0_THRESHOLD

    @property
    def b0_mask(self) -> np.ndarray:
        """True for the unweighted (b0) volumes."""
        return self.bvals <= self.b0_threshold

    @property
    def n_volumes(self) -> int:
        return int(self.bvals.shape[0])

    @property
    def shells(self) -> np.ndarray:
        """Shell centre (s/mm^2) of every volume, 0 for b0s (see :func:`cluster_shells`)."""
        return cluster_shells(self.bvals, self.b0_threshold)


def _read_numbers(path: str | Path, ndmin: int, what: str, expected: str) -> np.ndarray:
    """A text file of numbers; InputError naming the file and the layout it should have."""
    try:
        return np.loadtxt(path, dtype=float, ndmin=ndmin)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read {what} ({exc}); expected {expected}") from exc


def read_bvals(path: str | Path) -> np.ndarray:
    """Read an FSL .bval file (one row of numbers) as a float array, s/mm^2."""
    return _read_numbers(path, 1, "b-values", "one row of numbers").ravel()


def read_bvecs(path: str | Path) -> np.ndarray:
    """Read an FSL .bvec file (3 rows) and return it as an (N, 3) array."""
    values = _read_numbers(path, 2, "b-vectors", "3 rows of numbers")
    if values.shape[0] == 3:
        return values.T.copy()
    if values.shape[1] == 3:
        return values.copy()
    raise InputError(f"{path}: b-vectors have shape {values.shape}; expected 3 rows (FSL format)")


def cluster_shells(
    bvals: np.ndarray, b0_threshold: float = B0_THRESHOLD, tolerance: float = SHELL_TOLERANCE
) -> np.ndarray:
    """Shell centre of every volume (s/mm^2; 0 for b0s).

    Sorted b-values join the current shell while within ``tolerance`` of its running mean,
    so b=995..1005 is one shell and b=1000 vs 2000 are two.
    """
    bvals = np.asarray(bvals, dtype=float).ravel()
    centres = np.zeros_like(bvals)
    weighted = np.flatnonzero(bvals > b0_threshold)
    members: list[int] = []
    for index in weighted[np.argsort(bvals[weighted], kind="stable")]:
        if (
            members
            and abs(bvals[index] - bvals[members].mean()) > tolerance * bvals[members].mean()
        ):
            centres[members] = bvals[members].mean()
            members = []
        members.append(index)
    if members:
        centres[members] = bvals[members].mean()
    return centres


def normalise_bvecs(
    bvals: np.ndarray, bvecs: np.ndarray, b0_threshold: float = B0_THRESHOLD
) -> tuple[np.ndarray, np.ndarray, int]:
    """Unit b-vectors, with b scaled by the squared norm where a vector is not unit (MRtrix3).

    Some scanners encode lower b-values on a shell by shortening the gradient vector (b is
    proportional to |g|^2). Returns (bvals, unit bvecs, number of volumes rescaled); b0 volumes
    get a zero vector.
    """
    bvals = np.asarray(bvals, dtype=float).ravel().copy()
    bvecs = np.asarray(bvecs, dtype=float)
    norms = np.linalg.norm(bvecs, axis=1)
    weighted = (bvals > b0_threshold) & (norms > 0)
    rescale = weighted & (np.abs(norms - 1.0) > BVEC_UNIT_TOLERANCE)
    bvals[rescale] *= norms[rescale] ** 2
    unit = np.zeros_like(bvecs)
    unit[weighted] = bvecs[weighted] / norms[weighted, None]
    return bvals, unit, int(rescale.sum())


def tensor_determinable(bvecs: np.ndarray) -> bool:
    """Whether unit directions (N, 3) determine a tensor: the 6-column design has full rank."""
    g = np.asarray(bvecs, dtype=float)
    if g.shape[0] < MIN_TENSOR_DIRECTIONS:
        return False
    design = np.column_stack(
        [g[:, 0] ** 2, g[:, 1] ** 2, g[:, 2] ** 2, g[:, 0] * g[:, 1], g[:, 0] * g[:, 2],
         g[:, 1] * g[:, 2]]
    )  # fmt: skip
    singular = np.linalg.svd(design, compute_uv=False)
    return bool(singular[-1] > _DESIGN_RANK_TOLERANCE * singular[0])


def _check_counts(bvals, bvecs, n_volumes, bval_file, bvec_file) -> None:
    if bvals.shape[0] != n_volumes:
        raise InputError(
            f"{bval_file}: {bvals.shape[0]} b-values for {n_volumes} DWI volumes; "
            "the .bval must list one value per volume"
        )
    if bvecs.shape != (n_volumes, 3):
        raise InputError(
            f"{bvec_file}: {bvecs.shape[0]} b-vectors for {n_volumes} DWI volumes; "
            "the .bvec must have 3 rows with one column per volume"
        )
    if not (np.all(np.isfinite(bvals)) and np.all(np.isfinite(bvecs))):
        bad = bval_file if not np.all(np.isfinite(bvals)) else bvec_file
        raise InputError(f"{bad}: NaN or Inf in the gradient table; re-export the file")
    if np.any(bvals < 0):
        raise InputError(f"{bval_file}: negative b-values; b-values are in s/mm^2 and >= 0")
    if bvals.max() <= BVAL_MS_PER_UM2_MAX and bvals.max() > 0:
        raise InputError(
            f"{bval_file}: every b-value is <= {BVAL_MS_PER_UM2_MAX:g}; they look like ms/um^2 "
            "(1 ms/um^2 = 1000 s/mm^2); write them in s/mm^2"
        )


def check_gradient_table(
    bvals: np.ndarray,
    bvecs: np.ndarray,
    n_volumes: int,
    bval_file: str | Path = "bval",
    bvec_file: str | Path = "bvec",
    b0_threshold: float = B0_THRESHOLD,
) -> GradientTable:
    """Check counts, units and b0 presence; return a table with unit b-vectors.

    b-vectors that are not unit length are normalised and their b-values scaled by the squared
    norm (MRtrix3's convention), with a log line. Raises InputError naming the file that is
    wrong and what to do about it.
    """
    bvals = np.asarray(bvals, dtype=float).ravel()
    bvecs = np.asarray(bvecs, dtype=float)
    _check_counts(bvals, bvecs, n_volumes, bval_file, bvec_file)
    b0_mask = bvals <= b0_threshold
    if not b0_mask.any():
        raise InputError(
            f"{bval_file}: no b0 volume (b <= {b0_threshold:g} s/mm^2); a b0 reference is needed "
            "for motion correction and the tensor fit (see --b0-threshold)"
        )
    if b0_mask.all():
        raise InputError(f"{bval_file}: no diffusion-weighted volume; cannot fit a tensor")
    norms = np.linalg.norm(bvecs, axis=1)
    zero = ~b0_mask & (norms == 0)
    if zero.any():
        raise InputError(
            f"{bvec_file}: volumes {np.flatnonzero(zero).tolist()} are diffusion weighted but "
            "have a zero b-vector; check the .bval/.bvec pair"
        )
    bvals, unit, n_rescaled = normalise_bvecs(bvals, bvecs, b0_threshold)
    if n_rescaled:
        LOGGER.info(
            "%s: %d b-vectors are not unit length; b scaled by the squared norm and the vectors "
            "normalised (as MRtrix3 does)", bvec_file, n_rescaled,
        )  # fmt: skip
    return GradientTable(bvals=bvals, bvecs=unit, b0_threshold=b0_threshold)


def require_tensor_fit(gtab: GradientTable, bvec_file: str | Path = "bvec") -> None:
    """InputError unless the diffusion-weighted directions determine a tensor."""
    if not tensor_determinable(gtab.bvecs[~gtab.b0_mask]):
        raise InputError(
            f"{bvec_file}: the diffusion-weighted volumes do not span {MIN_TENSOR_DIRECTIONS} "
            "non-collinear directions, so a tensor cannot be fitted; check the gradient table"
        )


def write_bvals(path: str | Path, bvals: np.ndarray) -> None:
    """Write b-values as one FSL row (integers when they are integral)."""
    values = np.asarray(bvals, dtype=float)
    text = " ".join(f"{v:g}" for v in values)
    Path(path).write_text(text + "\n")


def write_bvecs(path: str | Path, bvecs: np.ndarray) -> None:
    """Write (N, 3) b-vectors as the 3-row FSL format."""
    rows = np.asarray(bvecs, dtype=float).T
    Path(path).write_text("\n".join(" ".join(f"{v:.8f}" for v in row) for row in rows) + "\n")


def _voxel_to_world_rotation(affine: np.ndarray) -> np.ndarray:
    """Orthonormal part of the voxel-to-world matrix, with FSL's x flip folded in.

    Maps an FSL b-vector to a world (RAS) direction.
    """
    linear = np.asarray(affine, dtype=float)[:3, :3]
    rotation, _ = polar(linear)  # drop zooms and shears
    flip = np.diag([-1.0, 1.0, 1.0]) if np.linalg.det(linear) > 0 else np.eye(3)
    return rotation @ flip


def fsl_to_world(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """FSL b-vectors (N, 3) to world (RAS+) directions for an image with this affine."""
    return np.asarray(bvecs, dtype=float) @ _voxel_to_world_rotation(affine).T


def world_to_fsl(directions: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World (RAS+) directions (N, 3) to FSL b-vectors for an image with this affine."""
    return np.asarray(directions, dtype=float) @ _voxel_to_world_rotation(affine)


def rotation_part(matrix: np.ndarray) -> np.ndarray:
    """Closest rotation to a 3x3 linear map (polar decomposition), ignoring scale and shear.

    Eddy-current distortion is a shear/scale along the phase-encode axis; it must not rotate the
    gradient, only head motion does (Leemans & Jones 2009).
    """
    rotation, _ = polar(np.asarray(matrix, dtype=float)[:3, :3])
    if np.linalg.det(rotation) < 0:  # a reflection is not a head movement
        raise ValueError("affine contains a reflection; cannot take its rotation")
    return rotation


def rotation_excluding_phase_encoding(
    matrix: np.ndarray, image_affine: np.ndarray, pe_axis: int
) -> np.ndarray:
    """Head rotation of an affine whose eddy-current part distorts only the phase-encode axis.

    Eddy currents displace voxels along the phase-encode (PE) voxel axis only, by an amount
    that depends linearly on position: in voxel axes the affine is ``R @ E`` with ``E`` the
    identity except its PE row. The PE column of the affine is then along ``R``'s PE column,
    and the other columns are ``R``'s plus a multiple of it, so Gram-Schmidt from the PE column
    gives ``R`` exactly; a polar decomposition would instead turn half of any eddy shear into a
    spurious rotation. Returns the rotation in world (RAS+) axes.
    """
    voxel_axes, _ = polar(np.asarray(image_affine, dtype=float)[:3, :3])
    linear = voxel_axes.T @ np.asarray(matrix, dtype=float)[:3, :3] @ voxel_axes
    columns = np.empty((3, 3))
    columns[:, pe_axis] = linear[:, pe_axis] / np.linalg.norm(linear[:, pe_axis])
    for axis in range(3):
        if axis != pe_axis:
            column = (
                linear[:, axis] - (linear[:, axis] @ columns[:, pe_axis]) * columns[:, pe_axis]
            )
            columns[:, axis] = column / np.linalg.norm(column)
    rotation = rotation_part(columns)  # re-orthonormalise the two non-PE columns
    return voxel_axes @ rotation @ voxel_axes.T


def rotate_bvecs(
    bvecs: np.ndarray,
    affines: np.ndarray,
    image_affine: np.ndarray,
    rotations: np.ndarray | None = None,
) -> np.ndarray:
    """Rotate FSL b-vectors by the rotation part of per-volume motion affines.

    Args:
        bvecs: (N, 3) FSL b-vectors of the raw volumes.
        affines: (N, 4, 4) world (RAS+, mm) maps from reference-space points to the points of
            each raw volume (the map used to resample the volume onto the reference).
        image_affine: voxel-to-world affine of the reference grid.
        rotations: (N, 3, 3) world rotations to use instead of the affines' polar rotation
            (e.g. from rotation_excluding_phase_encoding).

    Returns:
        (N, 3) b-vectors in the reference frame: a head rotated by R saw the scanner gradient g
        as R^T g, which is what the corrected (resampled) volume now encodes.
    """
    bvecs = np.asarray(bvecs, dtype=float)
    world = fsl_to_world(bvecs, image_affine)
    rotated = np.empty_like(world)
    if rotations is None:
        rotations = np.stack([rotation_part(affine) for affine in np.asarray(affines, float)])
    for index, rotation in enumerate(rotations):
        rotated[index] = rotation.T @ world[index]
    out = world_to_fsl(rotated, image_affine)
    zero = np.linalg.norm(bvecs, axis=1) == 0
    out[zero] = 0.0
    return out
