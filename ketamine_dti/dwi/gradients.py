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

#: s/mm^2; scanners often report b=5..50 for the "b0" images, which are treated as unweighted.
B0_THRESHOLD = 50.0
#: |norm - 1| allowed for a diffusion-weighted b-vector before it is called broken; converters
#: round to 4-6 decimals, so anything beyond 10% is a wrong file, not rounding.
BVEC_NORM_TOLERANCE = 0.1


@dataclass(frozen=True)
class GradientTable:
    """b-values (s/mm^2, shape (N,)) and unit b-vectors (shape (N, 3), FSL voxel convention)."""

    bvals: np.ndarray
    bvecs: np.ndarray

    @property
    def b0_mask(self) -> np.ndarray:
        """True for the unweighted (b0) volumes."""
        return self.bvals <= B0_THRESHOLD

    @property
    def n_volumes(self) -> int:
        return int(self.bvals.shape[0])


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


def check_gradient_table(
    bvals: np.ndarray,
    bvecs: np.ndarray,
    n_volumes: int,
    bval_file: str | Path = "bval",
    bvec_file: str | Path = "bvec",
) -> GradientTable:
    """Check counts, b0 presence and b-vector norms; return a table with unit b-vectors.

    Raises InputError naming the file that is wrong and what to do about it.
    """
    bvals = np.asarray(bvals, dtype=float).ravel()
    bvecs = np.asarray(bvecs, dtype=float)
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
        raise InputError(f"{bval_file}/{bvec_file}: non-finite gradient values; fix the files")
    if np.any(bvals < 0):
        raise InputError(f"{bval_file}: negative b-values; b-values are in s/mm^2 and >= 0")
    b0_mask = bvals <= B0_THRESHOLD
    if not b0_mask.any():
        raise InputError(
            f"{bval_file}: no b0 volume (b <= {B0_THRESHOLD:g} s/mm^2); a b0 reference is needed "
            "for motion correction and the tensor fit"
        )
    if b0_mask.all():
        raise InputError(f"{bval_file}: no diffusion-weighted volume; cannot fit a tensor")
    norms = np.linalg.norm(bvecs, axis=1)
    bad = ~b0_mask & (np.abs(norms - 1.0) > BVEC_NORM_TOLERANCE)
    if bad.any():
        raise InputError(
            f"{bvec_file}: b-vectors of volumes {np.flatnonzero(bad).tolist()} are not unit "
            f"length (norms {np.round(norms[bad], 3).tolist()}); check the file's orientation"
        )
    unit = np.zeros_like(bvecs)
    weighted = ~b0_mask
    unit[weighted] = bvecs[weighted] / norms[weighted, None]
    return GradientTable(bvals=bvals, bvecs=unit)


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
