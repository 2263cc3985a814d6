"""The one place that talks to ANTs (antspyx): seeds, threads, metric defaults, image and
transform I/O, resampling. ``dwi/`` and ``anat/`` call these; nothing here knows the science.

Transform lists follow the fMRIPrep convention ``from-X_to-Y``: an ordered tuple of ANTs files
(``.mat`` affine, ``.nii.gz`` displacement field) that, given in this order as ``transformlist``
with no inversion flags, resamples an image living in space X onto a grid in space Y. Each
Y-grid point meets the list's *first* file first (``[warp, affine]``: the warp lives on Y's
grid), so a ``.mat`` of a from-X_to-Y list maps Y-points to X-points. Inverse affines are
written as their own ``.mat`` files, so no list ever needs ``whichtoinvert``. 4x4 matrices of
``.mat`` files map points in ITK's LPS millimetres.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ketamine_dti.dwi.mutual_information import MI_BINS, search_rotations
from ketamine_dti.errors import InputError
from ketamine_dti.threads import limit_threads

LOGGER = logging.getLogger(__name__)

PathLike = str | os.PathLike

# --- seeds: fixed, so reruns give identical transforms --------------------------------------
#: antsRegistration ``--random-seed`` of the anatomical registrations (anat/): it fixes the
#: metric's random point sampling.
REGISTRATION_SEED: int = 20240
#: antspyx's global seed (``set_ants_deterministic``) for the per-volume motion registrations
#: (dwi/motion.py). It differs from REGISTRATION_SEED only by history; changing it would move
#: every motion estimate and so every derivative.
MOTION_SEED: int = 20231

# --- threads ---------------------------------------------------------------------------------
#: ITK threads when the caller says nothing: 1 keeps results bit-identical and shares 2 cores.
DEFAULT_N_THREADS: int = 1

# --- metric defaults, shared by every registration --------------------------------------------
#: Fraction of voxels the linear metrics sample, regularly and seeded (ANTs' default; 0.15 was
#: faster but less accurate on small phantoms).
METRIC_SAMPLING_FRACTION: float = 0.25
#: Cross-correlation radius (voxels) of a SyN metric; CC is the standard T1w-to-T1w choice.
CC_RADIUS: int = 2
#: Grid (mm) on which a coarse rotation search scores its candidates: 15-degree steps need no
#: finer detail. On a standard participant the search cost 0.77 s of CPU on the 2 mm copies
#: and 0.33 s on 4 mm copies of them, copying included.
SEARCH_SPACING_MM: float = 4.0

#: Characters that antsRegistration's option parser treats as syntax inside a file name.
_ANTS_SYNTAX_CHARACTERS = frozenset(",[]")
#: ITK's LPS world frame is RAS+ with the first two axes flipped (the flip is its own inverse).
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@contextmanager
def itk_threads(n_threads: int | None) -> Iterator[int]:
    """``limit_threads`` for an ANTs call; ``None`` means DEFAULT_N_THREADS (ITK has no
    'as before' that is reproducible)."""
    n_threads = DEFAULT_N_THREADS if n_threads is None else n_threads
    with limit_threads(n_threads, blas=False, numba_pool=False) as n:
        yield n


# --- images ----------------------------------------------------------------------------------
def load_image(path: PathLike, ndim: int = 3):
    """Read an image with ANTs, raising InputError with the file name when it is unusable."""
    import ants

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found; check the input paths")
    try:
        image = ants.image_read(str(path))
    except Exception as exc:  # ITK raises RuntimeError/ValueError for corrupt files
        raise InputError(f"{path}: unreadable image ({exc}); re-export the NIfTI") from exc
    if image.dimension != ndim:
        raise InputError(f"{path}: expected a {ndim}-D image, got {image.dimension}-D")
    if not np.all(np.isfinite(image.numpy())):
        raise InputError(f"{path}: image has NaN/Inf voxels; fix or mask them first")
    return image


def read_grid(path: PathLike):
    """The 3-D grid of an image: a 4-D series gives its first volume."""
    import ants

    image = ants.image_read(str(path))
    if image.dimension == 4:
        image = ants.slice_image(image, axis=3, idx=0)
    return image


#: Work files of the anatomy chain are uncompressed: ITK writes a 1 mm float T1w in 0.19 s as
#: .nii and in 1.24 s as .nii.gz, and reads it back faster. Only the sinks compress.
WORK_EXTENSION = ".nii"


def nifti_extension(path: PathLike) -> str:
    """ ".nii.gz" or ".nii", as ``path`` is compressed or not (a copy keeps its format)."""
    return ".nii.gz" if str(path).endswith(".gz") else ".nii"


def save_like(reference, array: np.ndarray, out_file: PathLike, pixel_type: str = "float") -> str:
    """Write ``array`` on ``reference``'s grid (``pixel_type``: ANTs name, e.g. 'unsigned
    char'); returns the absolute path."""
    import ants

    image = reference.new_image_like(np.asarray(array).astype(np.float32))
    if pixel_type != "float":
        image = image.clone(pixel_type)
    ants.image_write(image, str(out_file))
    return str(Path(out_file).absolute())


def apply_mask(in_file: PathLike, mask_file: PathLike, out_file: PathLike) -> str:
    """Zero ``in_file`` outside ``mask_file`` (same grid)."""
    import ants

    image = ants.image_read(str(in_file))
    mask = ants.image_read(str(mask_file))
    if image.shape != mask.shape:
        raise InputError(f"{mask_file}: grid {mask.shape} differs from {in_file} {image.shape}")
    ants.image_write(image * (mask > 0), str(out_file))
    return str(Path(out_file).absolute())


def image_from_array(volume: np.ndarray, affine: np.ndarray):
    """A 3-D array with a RAS+ voxel-to-world affine as an ANTsImage (which works in LPS)."""
    import ants

    lps = _LPS @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return ants.from_numpy(
        np.ascontiguousarray(volume, dtype=np.float32),
        origin=tuple(lps[:3, 3]),
        spacing=tuple(spacing),
        direction=direction,
    )


def image_affine(image) -> np.ndarray:
    """The RAS+ voxel-to-world affine of a 3-D ANTsImage (the inverse of ``image_from_array``)."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.direction) * np.asarray(image.spacing)
    lps[:3, 3] = image.origin
    return _LPS @ lps


def voxel_to_world(image, indices: np.ndarray) -> np.ndarray:
    """World points (ITK's LPS mm) of voxel ``indices`` (N x 3) of an ANTsImage."""
    scaled = np.asarray(indices, dtype=float) * np.asarray(image.spacing)
    return scaled @ np.asarray(image.direction).T + np.asarray(image.origin)


def check_ants_path(path: PathLike) -> str:
    """Absolute path as a string; InputError if antsRegistration could not parse it."""
    text = str(Path(path).absolute())
    if _ANTS_SYNTAX_CHARACTERS & set(text):
        raise InputError(
            f"{text}: ANTs cannot parse paths containing ',', '[' or ']'; "
            "use a work directory without them"
        )
    return text


# --- transforms ------------------------------------------------------------------------------
def transform_to_ras(transform) -> np.ndarray:
    """A linear ANTs transform (LPS, fixed -> moving points) as a 4x4 RAS+ matrix."""
    basis = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    mapped = np.array([transform.apply_to_point(tuple(_LPS[:3, :3] @ p)) for p in basis])
    mapped = mapped @ _LPS[:3, :3]  # back to RAS (the flip is its own inverse)
    matrix = np.eye(4)
    matrix[:3, 3] = mapped[0]
    matrix[:3, :3] = (mapped[1:] - mapped[0]).T
    return matrix


def affine_to_matrix(xfm_file: PathLike) -> np.ndarray:
    """4x4 homogeneous point map (LPS mm) of an ANTs affine/rigid ``.mat`` file.

    ITK stores ``y = A (x - c) + t + c`` (A 3x3, t translation, c fixed-parameter centre).
    """
    import ants

    xfm = ants.read_transform(str(xfm_file))
    params = np.asarray(xfm.parameters, dtype=float)
    center = np.asarray(xfm.fixed_parameters, dtype=float)
    linear = params[:9].reshape(3, 3)
    translation = params[9:12]
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = translation + center - linear @ center
    return matrix


def matrix_to_affine(matrix: np.ndarray, out_file: PathLike) -> str:
    """Write a 4x4 homogeneous point map (LPS mm) as an ANTs ``AffineTransform`` ``.mat``."""
    import ants

    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (4, 4) or not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise ValueError("matrix must be a 4x4 homogeneous affine")
    xfm = ants.create_ants_transform(
        transform_type="AffineTransform",
        precision="double",
        dimension=3,
        matrix=matrix[:3, :3],
        translation=matrix[:3, 3],
        center=np.zeros(3),
    )
    ants.write_transform(xfm, str(out_file))
    return str(Path(out_file).absolute())


def ras_to_affine_file(matrix: np.ndarray, out_file: PathLike) -> str:
    """Write a 4x4 RAS+ point map (fixed -> moving points) as an ANTs ``.mat``."""
    return matrix_to_affine(_LPS @ np.asarray(matrix, dtype=float) @ _LPS, out_file)


def invert_affine_file(xfm_file: PathLike, out_file: PathLike) -> str:
    """Write the inverse of an ANTs affine ``.mat`` as its own file."""
    return matrix_to_affine(np.linalg.inv(affine_to_matrix(xfm_file)), out_file)


def identity_file(out_dir: PathLike) -> str:
    """An identity ``.mat`` in ``out_dir`` (a from-X_to-X list of one file)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return matrix_to_affine(np.eye(4), out_dir / "identity.mat")


def compose_transforms(*steps: Sequence[str]) -> tuple[str, ...]:
    """Compose ``from_a_to_b, from_b_to_c, ...`` into ``from_a_to_z`` (an ANTs transformlist).

    A Z-grid point must meet the last step first, so the steps are concatenated in reverse.
    """
    return tuple(str(item) for step in reversed(steps) for item in step)


def collapse_linear(transforms: Sequence[str], out_file: PathLike) -> str:
    """One ``.mat`` equal to a from-X_to-Y list of affine ``.mat`` files (e.g. DWI -> session
    T1w -> subject template), so users get a single rigid map per published space pair."""
    matrix = np.eye(4)
    for transform in transforms:  # an output-grid point meets the list's first file first
        if not str(transform).endswith(".mat"):
            raise ValueError(f"{transform}: only affine .mat files can be collapsed")
        matrix = affine_to_matrix(transform) @ matrix
    return matrix_to_affine(matrix, out_file)


def write_composite_transform(transforms: Sequence[str], out_file: PathLike) -> str:
    """One ITK ``CompositeTransform`` file (``.h5``) equal to a from-X_to-Y list.

    A published transform must be one file that ``antsApplyTransforms -t`` (or nitransforms)
    takes as is, as fMRIPrep's ``_xfm.h5``. Affines and warps are stored as they are (not
    resampled into one field), so the file moves images exactly as the list does. ITK writes
    the warp in double precision although it holds float32 values (ANTs' fields are float):
    ``_compact_copy`` stores it as float32, compressed (43 -> 16 MB for a participant's two).
    """
    import ants

    out_file = Path(out_file).absolute()
    if out_file.suffix != ".h5":
        raise ValueError(f"{out_file}: the composite transform is written as .h5")
    steps = [
        ants.read_transform(str(t))
        if str(t).endswith(".mat")
        else ants.transform_from_displacement_field(ants.image_read(str(t)))
        for t in transforms
    ]
    itk_file = out_file.with_name(out_file.stem + "_itk.h5")
    ants.write_transform(ants.compose_ants_transforms(steps), str(itk_file))
    _compact_copy(itk_file, out_file)
    itk_file.unlink()
    return str(out_file)


#: Parameter arrays at least this long (a displacement field's, not an affine's 12) are stored
#: gzip-compressed with HDF5's byte shuffle; ITK's HDF5 reads the filters transparently.
COMPRESS_MIN_VALUES = 1000


def _compact_copy(source: Path, target: Path) -> None:
    """Copy an ITK HDF5 transform file, storing each displacement field as float32 when that
    loses nothing (its type string then says ``_float_``; ITK's reader converts the precision
    on reading) and compressed, and without object modification times (ITK stamps every
    dataset), so a rerun or a resumed run writes a byte-identical transform."""
    import h5py

    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        narrowed = set()
        names: list[str] = []
        src.visititems(
            lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None
        )
        for name in names:  # h5py makes the groups on the way
            data = src[name][()]
            options = {}
            if data.dtype == np.float64 and data.size >= COMPRESS_MIN_VALUES:
                single = data.astype(np.float32)
                if np.array_equal(single, data):
                    data = single
                    narrowed.add(name.rsplit("/", 1)[0])
                options = {"compression": "gzip", "shuffle": True}
            dst.create_dataset(name, data=data, dtype=data.dtype, track_times=False, **options)
        for group in narrowed:
            kind = dst[f"{group}/TransformType"]
            name = kind[0].decode() if isinstance(kind[0], bytes) else kind[0]
            kind[0] = name.replace("_double_", "_float_")


# --- resampling and registration -------------------------------------------------------------
def apply_transforms(
    in_file: PathLike,
    reference_file: PathLike,
    transforms: Sequence[str],
    out_file: PathLike,
    *,
    interpolation: str = "linear",
    image_type: int = 0,
    default_value: float = 0.0,
    n_threads: int | None = None,
) -> str:
    """Resample ``in_file`` onto ``reference_file``'s grid through ``transforms`` (from-X_to-Y).

    ``interpolation``: ``linear``, ``nearestNeighbor``, ``genericLabel``, ``bSpline``;
    ``image_type=3`` treats a 4-D input as a stack of 3-D maps. Returns ``out_file``.
    """
    import ants

    with itk_threads(n_threads):
        moving = ants.image_read(str(in_file))
        reference = read_grid(reference_file)
        transforms = [str(t) for t in transforms] or [identity_file(Path(out_file).parent)]
        warped = ants.apply_transforms(
            fixed=reference,
            moving=moving,
            transformlist=transforms,
            # explicit: antspyx otherwise inverts the first file of a [.mat, warp] pair itself
            whichtoinvert=[False] * len(transforms),
            interpolator=interpolation,
            imagetype=image_type,
            defaultvalue=default_value,
        )
        ants.image_write(warped, str(out_file))
    return str(Path(out_file).absolute())


def search_rigid_start(
    fixed_file: PathLike,
    moving_file: PathLike,
    out_file: PathLike,
    *,
    step_deg: float,
    arc_fraction: float,
    spacing_mm: float = SEARCH_SPACING_MM,
    n_threads: int | None = None,
) -> str:
    """Coarse rigid start for a registration of brain-masked images: the best of
    ``mutual_information.search_rotations`` (rotations every ``step_deg`` degrees over
    ``arc_fraction`` of a half turn about each axis, about the fixed centre of mass after the
    centres are aligned) on copies of both images at ``spacing_mm``, written as a ``.mat``
    (fixed -> moving points)."""
    import ants

    with itk_threads(n_threads):
        fixed = coarse_copy(ants.image_read(str(fixed_file)), spacing_mm)
        moving = coarse_copy(ants.image_read(str(moving_file)), spacing_mm)
    ras_map = search_rotations(
        fixed.numpy(), image_affine(fixed), moving.numpy(), image_affine(moving),
        step_deg=step_deg, arc_fraction=arc_fraction,
    )  # fmt: skip
    return ras_to_affine_file(ras_map, out_file)


def coarse_copy(image, spacing_mm: float):
    """``image`` smoothed (Gaussian FWHM about one new voxel) and resampled to isotropic
    ``spacing_mm``; returned as it is if it is already that coarse."""
    import ants

    if min(image.spacing) >= spacing_mm:
        return image
    smoothed = ants.smooth_image(image, spacing_mm / 2.0, sigma_in_physical_coordinates=True)
    return ants.resample_image(smoothed, (spacing_mm,) * 3, use_voxels=False, interp_type=0)


def coarse_copy_file(in_file: PathLike, spacing_mm: float, out_file: PathLike) -> str:
    """``coarse_copy`` of an image file, written to ``out_file``; ``in_file`` itself if it is
    already that coarse. For registrations whose finest level is ``spacing_mm`` or coarser:
    ANTs smooths each image at its own resolution at every level, so a 1 mm image costs
    several times its 2 mm copy for the same transform (world mm, valid on either grid)."""
    import ants

    image = ants.image_read(str(in_file))
    if min(image.spacing) >= spacing_mm:
        return str(in_file)
    ants.image_write(coarse_copy(image, spacing_mm), str(out_file))
    return str(Path(out_file).absolute())


def run_registration(args: list[str], seed: int, n_threads: int | None) -> None:
    """Run antsRegistration (3-D, float) with command-line ``args`` and a fixed seed."""
    import ants

    full = ["--dimensionality", "3", "--float", "1", "--random-seed", str(int(seed))] + args
    LOGGER.debug("antsRegistration %s", " ".join(full))
    with itk_threads(n_threads):
        ants.registration(fixed=full, moving=None)


def register_arrays(
    fixed,
    moving,
    *,
    transform: str,
    mask=None,
    iterations: Sequence[int],
    shrink_factors: Sequence[int],
    smoothing_sigmas: Sequence[float],
    seed: int = MOTION_SEED,
    sampling: float = METRIC_SAMPLING_FRACTION,
):
    """Linear antspyx registration of two in-memory images (Mattes MI on a random ``sampling``
    fraction of the voxels, identity start); returns the fixed -> moving ANTs transform."""
    import ants

    ants.config.set_ants_deterministic(True, seed)
    with tempfile.TemporaryDirectory(prefix="ketamine_dti_motion_") as tmp:
        result = ants.registration(
            fixed=fixed,
            moving=moving,
            type_of_transform=transform,
            initial_transform=["Identity"],
            outprefix=os.path.join(tmp, "reg_"),
            mask=mask,
            aff_metric="mattes",
            aff_sampling=MI_BINS,
            aff_random_sampling_rate=sampling,
            aff_iterations=iterations,
            aff_shrink_factors=shrink_factors,
            aff_smoothing_sigmas=smoothing_sigmas,
        )
        return ants.read_transform(result["fwdtransforms"][0])


def register_along_axis(
    fixed: Sequence[np.ndarray],
    moving: Sequence[np.ndarray],
    zooms: Sequence[float],
    axis: int,
    *,
    metrics: Sequence[tuple[str, float]],
    syn_parameters: tuple[float, float, float],
    iterations: Sequence[int],
    shrink_factors: Sequence[int],
    smoothing_sigmas: Sequence[float],
    fixed_mask: np.ndarray | None = None,
    seed: int = REGISTRATION_SEED,
    n_threads: int | None = None,
) -> np.ndarray:
    """SyN of images that share one voxel grid, the deformation restricted to voxel ``axis``
    (antsRegistration ``--restrict-deformation``); returns the displacement (mm, along
    ``axis``, positive towards higher voxel index) on that grid, such that
    ``moving[k](x + u(x) e_axis)`` matches ``fixed[k](x)``.

    The arrays are written with an identity direction and zero origin (voxel axes are the
    world axes, as sdcflows deobliques before its SyN), so that a restriction to one world axis
    is one to the voxel axis, whatever the real orientation. ``metrics`` pairs each
    fixed/moving image with its metric (``cc``: cross-correlation, radius CC_RADIUS;
    ``mattes``: MI, MI_BINS bins) and weight; ``syn_parameters`` = (gradient step, update and
    total field smoothing, as variances in voxels, ANTs' SyN[...]). No linear stage runs: the
    images must already be aligned.
    """
    import ants

    if not len(fixed) == len(moving) == len(metrics):
        raise ValueError("one fixed image, one moving image and one metric per pair")
    restrict = "x".join("1" if a == axis else "0" for a in range(3))
    with tempfile.TemporaryDirectory(prefix="ketamine_dti_syn_") as tmp:

        def write(volume, name):
            image = ants.from_numpy(
                np.ascontiguousarray(volume, dtype=np.float32),
                origin=(0.0, 0.0, 0.0), spacing=tuple(float(z) for z in zooms),
            )  # fmt: skip
            path = os.path.join(tmp, name)
            ants.image_write(image, path)
            return path

        args = []
        for index, (fixed_image, moving_image, (metric, weight)) in enumerate(
            zip(fixed, moving, metrics, strict=True)
        ):
            pair = f"{write(fixed_image, f'fixed{index}.nii.gz')},"
            pair += f"{write(moving_image, f'moving{index}.nii.gz')},{weight:g}"
            if metric == "cc":
                args += ["--metric", f"CC[{pair},{CC_RADIUS}]"]
            elif metric == "mattes":
                args += ["--metric", f"MI[{pair},{MI_BINS}]"]
            else:
                raise ValueError(f"unknown metric {metric!r}; use 'cc' or 'mattes'")
        step, update, total = syn_parameters
        args = ["--transform", f"SyN[{step:g},{update:g},{total:g}]", *args]
        args += [
            "--convergence", f"[{'x'.join(str(int(i)) for i in iterations)},1e-6,10]",
            "--shrink-factors", "x".join(str(int(s)) for s in shrink_factors),
            "--smoothing-sigmas", "x".join(f"{s:g}" for s in smoothing_sigmas) + "vox",
            "--restrict-deformation", restrict,
        ]  # fmt: skip
        if fixed_mask is not None:
            mask_file = write(np.asarray(fixed_mask, dtype=np.float32), "mask.nii.gz")
            args += ["--masks", f"[{mask_file}]"]
        prefix = os.path.join(tmp, "syn_")
        args += ["--collapse-output-transforms", "1", "--output", prefix]
        run_registration(args, seed, n_threads)
        warp = ants.image_read(f"{prefix}0Warp.nii.gz").numpy()
    return np.asarray(warp[..., axis], dtype=np.float32)
