"""ANTs registration with explicit, light schedules, a fixed seed and a fixed thread count.

Transform lists follow the ``from-X_to-Y`` convention (see docs/anat_api.md): an ordered tuple
of ANTs transform files that, given as ``transformlist`` to ``ants.apply_transforms`` (no
inversion flags), resamples an image living in space X onto a grid in space Y. Inverse affines
are written as their own ``.mat`` files so that no list ever needs ``whichtoinvert``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ketamine_dti.errors import InputError

LOGGER = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: antsRegistration --random-seed: fixes the metric's random sampling, so reruns are identical.
DEFAULT_SEED: int = 20240
#: ITK threads when the caller says nothing: 1 keeps results bit-identical and shares 2 cores.
DEFAULT_N_THREADS: int = 1

#: Mutual-information histogram bins (ANTs default; enough for T1w/b0 contrast).
MI_BINS: int = 32
#: Fraction of voxels sampled by the linear stages' metric (ANTs default 0.25; faster, seeded).
LINEAR_SAMPLING_FRACTION: float = 0.25
#: Gradient step of linear stages (mm-ish scaled step; ANTs' antsRegistrationSyN uses 0.1).
LINEAR_GRADIENT_STEP: float = 0.1
#: Linear multi-resolution schedule: iterations / shrink factors / smoothing sigmas (voxels).
#: Three levels suffice for rigid/affine at 1-2 mm and keep a T1w-to-T1w step within seconds.
LINEAR_ITERATIONS: tuple[int, ...] = (200, 100, 50)
LINEAR_SHRINK: tuple[int, ...] = (4, 2, 1)
LINEAR_SMOOTHING: tuple[float, ...] = (2.0, 1.0, 0.0)
#: register_linear's default schedule in mm: the finest level is 2 mm even for a 1 mm T1w
#: (sub-voxel rigid accuracy at 2 mm is ~0.1-0.2 mm; a 1 mm level costs 8x for little gain).
LINEAR_LEVELS_MM: tuple[float, ...] = (8.0, 4.0, 2.0)
LINEAR_SMOOTHING_MM: tuple[float, ...] = (4.0, 2.0, 1.0)
#: Convergence: stop a level when the metric changed less than this over the window.
CONVERGENCE_THRESHOLD: float = 1e-6
CONVERGENCE_WINDOW: int = 10
#: SyN: gradient step, update- and total-field smoothing (voxels), as in antsRegistrationSyN.
SYN_GRADIENT_STEP: float = 0.2
SYN_UPDATE_SIGMA: float = 3.0
SYN_TOTAL_SIGMA: float = 0.0
#: SyN at the 2 mm template: 3 levels; the full-resolution level is short because the
#: 7 ROIs are large compared with 2 mm and the budget is 10 min per participant on 2 cores.
SYN_ITERATIONS: tuple[int, ...] = (60, 30, 10)
SYN_SHRINK: tuple[int, ...] = (4, 2, 1)
SYN_SMOOTHING: tuple[float, ...] = (2.0, 1.0, 0.0)
#: Cross-correlation radius (voxels) of the SyN metric; CC is the standard T1w-to-T1w choice.
SYN_CC_RADIUS: int = 2
#: TemplateFlow resolution index of the MNI registration target (res-02: 2 mm), which is also
#: the grid of the published MNI-space T1w.
MNI_RESOLUTION: int = 2
#: SyN metric of the MNI registration. Mattes MI: on a tiny participant it reached the same
#: brain-mask Dice (0.989) as CC at a quarter of the CPU time (23 s vs ~95 s, 1 thread); CC
#: gives a slightly higher NCC (0.94 vs 0.93) and can be chosen with syn_metric="cc".
MNI_SYN_METRIC: str = "mattes"


@dataclass(frozen=True)
class Registration:
    """Result of one registration: transform lists (files), the warped moving image, QC."""

    from_moving_to_fixed: tuple[str, ...]
    from_fixed_to_moving: tuple[str, ...]
    warped_file: str
    qc: dict[str, float] = field(default_factory=dict)


def set_threads(n_threads: int | None) -> int:
    """Set ITK's thread count (ITK reads it once per process: call before the first ANTs call)."""
    n = DEFAULT_N_THREADS if n_threads is None else max(1, int(n_threads))
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(n)
    return n


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


def _schedule(values: Sequence[float], unit: str = "") -> str:
    return "x".join(f"{v:g}" for v in values) + unit


def shrink_for_levels(levels_mm: Sequence[float], spacing: Sequence[float]) -> tuple[int, ...]:
    """Integer shrink factors that bring a grid of ``spacing`` (mm) to about ``levels_mm``."""
    voxel = float(min(spacing))
    return tuple(max(1, int(round(level / voxel))) for level in levels_mm)


def _linear_stage(
    transform: str,
    metric: str,
    fixed: str,
    moving: str,
    masks: str | None,
    iterations: Sequence[int] = LINEAR_ITERATIONS,
    shrink: Sequence[int] = LINEAR_SHRINK,
    smoothing: Sequence[float] | str = LINEAR_SMOOTHING,
) -> list[str]:
    if metric == "mattes":
        metric_str = f"MI[{fixed},{moving},1,{MI_BINS},Regular,{LINEAR_SAMPLING_FRACTION}]"
    elif metric == "gc":
        metric_str = f"GC[{fixed},{moving},1,1,Regular,{LINEAR_SAMPLING_FRACTION}]"
    elif metric == "meansquares":
        metric_str = f"MeanSquares[{fixed},{moving},1,1,Regular,{LINEAR_SAMPLING_FRACTION}]"
    else:
        raise ValueError(f"unknown metric {metric!r}; use 'mattes', 'gc' or 'meansquares'")
    return [
        "--transform",
        f"{transform}[{LINEAR_GRADIENT_STEP}]",
        "--metric",
        metric_str,
        "--convergence",
        f"[{_schedule(iterations)},{CONVERGENCE_THRESHOLD:g},{CONVERGENCE_WINDOW}]",
        "--shrink-factors",
        _schedule(shrink),
        "--smoothing-sigmas",
        smoothing if isinstance(smoothing, str) else _schedule(smoothing, "vox"),
    ] + (["--masks", masks] if masks else [])


def _syn_stage(
    fixed: str,
    moving: str,
    masks: str | None,
    metric: str = "cc",
    iterations: Sequence[int] = SYN_ITERATIONS,
    shrink: Sequence[int] = SYN_SHRINK,
    smoothing: Sequence[float] = SYN_SMOOTHING,
) -> list[str]:
    return [
        "--transform",
        f"SyN[{SYN_GRADIENT_STEP},{SYN_UPDATE_SIGMA:g},{SYN_TOTAL_SIGMA:g}]",
        "--metric",
        f"CC[{fixed},{moving},1,{SYN_CC_RADIUS}]"
        if metric == "cc"
        else f"MI[{fixed},{moving},1,{MI_BINS}]",
        "--convergence",
        f"[{_schedule(iterations)},{CONVERGENCE_THRESHOLD:g},{CONVERGENCE_WINDOW}]",
        "--shrink-factors",
        _schedule(shrink),
        "--smoothing-sigmas",
        _schedule(smoothing, "vox"),
    ] + (["--masks", masks] if masks else [])


#: Characters that antsRegistration's option parser treats as syntax inside a file name.
_ANTS_SYNTAX_CHARACTERS = frozenset(",[]")


def _check_ants_path(path: PathLike) -> str:
    text = str(Path(path).absolute())
    if _ANTS_SYNTAX_CHARACTERS & set(text):
        raise InputError(
            f"{text}: ANTs cannot parse paths containing ',', '[' or ']'; "
            "use a work directory without them"
        )
    return text


def _run_ants_registration(args: list[str], seed: int, n_threads: int | None) -> None:
    import ants

    set_threads(n_threads)
    full = ["--dimensionality", "3", "--float", "1", "--random-seed", str(int(seed))] + args
    LOGGER.debug("antsRegistration %s", " ".join(full))
    ants.registration(fixed=full, moving=None)


def invert_affine_file(xfm_file: PathLike, out_file: PathLike) -> str:
    """Write the inverse of an ANTs affine ``.mat`` as its own file."""
    matrix = affine_to_matrix(xfm_file)
    return matrix_to_affine(np.linalg.inv(matrix), out_file)


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


def compose_transforms(*steps: Sequence[str]) -> tuple[str, ...]:
    """Compose ``from_a_to_b, from_b_to_c, ...`` into ``from_a_to_z`` (an ANTs transformlist).

    ANTs takes each output-grid point through the list's *first* file first (``[warp,
    affine]``: the warp lives on the output grid), so a Z-grid point must meet the last step
    first: the steps are concatenated in reverse order.
    """
    return tuple(str(item) for step in reversed(steps) for item in step)


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

    set_threads(n_threads)
    moving = ants.image_read(str(in_file))
    reference = ants.image_read(str(reference_file))
    if reference.dimension == 4:  # the grid of a series is that of its first volume
        reference = ants.slice_image(reference, axis=3, idx=0)
    transforms = [str(t) for t in transforms] or [_identity_file(Path(out_file).parent)]
    warped = ants.apply_transforms(
        fixed=reference,
        moving=moving,
        transformlist=transforms,
        # explicit: antspyx otherwise inverts the first file of a [.mat, warp] pair by itself
        whichtoinvert=[False] * len(transforms),
        interpolator=interpolation,
        imagetype=image_type,
        defaultvalue=default_value,
    )
    ants.image_write(warped, str(out_file))
    return str(Path(out_file).absolute())


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
    resampled into one field), so the file moves images exactly as the list does.
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
    _copy_without_timestamps(itk_file, out_file)
    itk_file.unlink()
    return str(out_file)


def _copy_without_timestamps(source: Path, target: Path) -> None:
    """Copy an HDF5 file without object modification times (ITK stamps every dataset), so a
    rerun or a resumed run writes a byte-identical transform."""
    import h5py

    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:

        def copy(name, item):
            if isinstance(item, h5py.Group):
                dst.require_group(name)
            else:
                dst.create_dataset(name, data=item[()], dtype=item.dtype, track_times=False)

        src.visititems(copy)


def _identity_file(out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    return matrix_to_affine(np.eye(4), out_dir / "identity.mat")


def normalized_cross_correlation(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None
) -> float:
    """Pearson correlation of two same-contrast images inside ``mask`` (1 = identical up to
    a linear intensity change). NaN if either image is constant there."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    sel = np.ones(a.shape, bool) if mask is None else np.asarray(mask, bool)
    x = a[sel] - a[sel].mean() if sel.any() else np.array([])
    y = b[sel] - b[sel].mean() if sel.any() else np.array([])
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks, in [0, 1]; NaN if both are empty."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else float("nan")


def registration_qc(
    fixed_file: PathLike,
    warped_file: PathLike,
    *,
    fixed_mask_file: PathLike | None = None,
    warped_mask_file: PathLike | None = None,
) -> dict[str, float]:
    """QC of a registration on the fixed grid.

    ``ncc``: correlation fixed vs warped inside the fixed mask (meaningful for the same
    contrast); ``mutual_information``: ANTs Mattes MI (more negative = better aligned; for
    b0 vs T1w); ``dice_mask``: fixed mask vs warped moving mask (if both given).
    """
    import ants

    fixed = ants.image_read(str(fixed_file))
    warped = ants.image_read(str(warped_file))
    mask = None
    if fixed_mask_file is not None:
        mask = ants.image_read(str(fixed_mask_file)).numpy() > 0
    qc = {
        "ncc": normalized_cross_correlation(fixed.numpy(), warped.numpy(), mask),
        "mutual_information": float(ants.image_mutual_information(fixed, warped)),
    }
    if mask is not None and warped_mask_file is not None:
        warped_mask = ants.image_read(str(warped_mask_file)).numpy() > 0
        qc["dice_mask"] = dice(mask, warped_mask)
    return qc


def _initial(fixed: str, moving: str, initial_transform: Sequence[str] | None) -> list[str]:
    if initial_transform:
        args: list[str] = []
        for item in initial_transform:
            args += ["--initial-moving-transform", str(item)]
        return args
    # centre-of-mass alignment: robust start for heads placed anywhere in the field of view
    return ["--initial-moving-transform", f"[{fixed},{moving},1]"]


def _mask_option(fixed_mask: PathLike | None, moving_mask: PathLike | None) -> str | None:
    if fixed_mask is None and moving_mask is None:
        return None
    fm = _check_ants_path(fixed_mask) if fixed_mask is not None else "NULL"
    mm = _check_ants_path(moving_mask) if moving_mask is not None else "NULL"
    return f"[{fm},{mm}]"


def register_linear(
    fixed_file: PathLike,
    moving_file: PathLike,
    out_dir: PathLike,
    *,
    prefix: str = "lin_",
    transform: str = "Rigid",
    metric: str = "mattes",
    fixed_mask_file: PathLike | None = None,
    moving_mask_file: PathLike | None = None,
    initial_transform: Sequence[str] | None = None,
    iterations: Sequence[int] = LINEAR_ITERATIONS,
    shrink_factors: Sequence[int] | None = None,
    smoothing_sigmas: Sequence[float] | None = None,
    seed: int = DEFAULT_SEED,
    n_threads: int | None = None,
) -> Registration:
    """Rigid (or Affine) registration of ``moving`` to ``fixed``.

    Writes ``<prefix>0GenericAffine.mat`` (from-moving_to-fixed), ``<prefix>inverse.mat``
    (from-fixed_to-moving) and ``<prefix>warped.nii.gz`` in ``out_dir``. ``metric``:
    ``mattes`` (mutual information, across contrasts: b0 -> T1w), ``gc``/``meansquares``.
    """
    if transform not in ("Rigid", "Affine", "Similarity", "Translation"):
        raise ValueError(f"transform must be Rigid/Affine/Similarity/Translation, not {transform}")
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    fixed_image = load_image(fixed_file)  # clear error on a bad file before ANTs sees it
    load_image(moving_file)
    fixed, moving = _check_ants_path(fixed_file), _check_ants_path(moving_file)
    out_prefix = _check_ants_path(out_dir / prefix)
    warped = str(out_dir / f"{prefix}warped.nii.gz")
    masks = _mask_option(fixed_mask_file, moving_mask_file)
    args = _initial(fixed, moving, initial_transform)
    if shrink_factors is None:  # the coarsest levels are dropped if fewer iterations are given
        n_levels = len(iterations)
        levels_mm = LINEAR_LEVELS_MM[-n_levels:]
        shrink_factors = shrink_for_levels(levels_mm, fixed_image.spacing)
        smoothing = _schedule(LINEAR_SMOOTHING_MM[-n_levels:], "mm")
    else:
        smoothing = _schedule(smoothing_sigmas or LINEAR_SMOOTHING[-len(shrink_factors) :], "vox")
    args += _linear_stage(
        transform, metric, fixed, moving, masks, iterations, shrink_factors, smoothing
    )
    args += [
        "--collapse-output-transforms",
        "1",
        "--winsorize-image-intensities",
        "[0.005,0.995]",
        "--interpolation",
        "Linear",
        "--output",
        f"[{out_prefix},{warped}]",
    ]
    _run_ants_registration(args, seed, n_threads)
    forward = f"{out_prefix}0GenericAffine.mat"
    inverse = invert_affine_file(forward, f"{out_prefix}inverse.mat")
    qc = registration_qc(fixed, warped, fixed_mask_file=fixed_mask_file)
    return Registration((forward,), (inverse,), warped, qc)


def register_syn(
    fixed_file: PathLike,
    moving_file: PathLike,
    out_dir: PathLike,
    *,
    prefix: str = "syn_",
    fixed_mask_file: PathLike | None = None,
    moving_mask_file: PathLike | None = None,
    initial_transform: Sequence[str] | None = None,
    syn_metric: str = "cc",
    affine_iterations: Sequence[int] = LINEAR_ITERATIONS,
    syn_iterations: Sequence[int] = SYN_ITERATIONS,
    syn_shrink_factors: Sequence[int] = SYN_SHRINK,
    syn_smoothing_sigmas: Sequence[float] = SYN_SMOOTHING,
    seed: int = DEFAULT_SEED,
    n_threads: int | None = None,
) -> Registration:
    """Rigid + affine (Mattes MI) then SyN of ``moving`` to ``fixed``.

    ``syn_metric``: ``cc`` (cross-correlation, same contrast, sharper) or ``mattes`` (MI, for
    images whose backgrounds differ, e.g. a head against a skull-stripped template).

    Writes ``<prefix>0GenericAffine.mat``, ``<prefix>1Warp.nii.gz``,
    ``<prefix>1InverseWarp.nii.gz``
    and ``<prefix>inverse.mat``. With ``affine_iterations=()`` the linear stages are skipped
    (use with an ``initial_transform``).
    """
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in (fixed_file, moving_file):
        load_image(path)
    fixed, moving = _check_ants_path(fixed_file), _check_ants_path(moving_file)
    out_prefix = _check_ants_path(out_dir / prefix)
    warped = str(out_dir / f"{prefix}warped.nii.gz")
    masks = _mask_option(fixed_mask_file, moving_mask_file)
    args = _initial(fixed, moving, initial_transform)
    if affine_iterations:
        n_levels = len(affine_iterations)
        shrink, smooth = LINEAR_SHRINK[-n_levels:], LINEAR_SMOOTHING[-n_levels:]
        args += _linear_stage(
            "Rigid", "mattes", fixed, moving, masks, affine_iterations, shrink, smooth
        )
        args += _linear_stage(
            "Affine", "mattes", fixed, moving, masks, affine_iterations, shrink, smooth
        )
    args += _syn_stage(
        fixed, moving, masks, syn_metric, syn_iterations, syn_shrink_factors, syn_smoothing_sigmas
    )
    args += [
        "--collapse-output-transforms",
        "1",
        "--winsorize-image-intensities",
        "[0.005,0.995]",
        "--interpolation",
        "Linear",
        "--output",
        f"[{out_prefix},{warped}]",
    ]
    _run_ants_registration(args, seed, n_threads)
    affine = f"{out_prefix}0GenericAffine.mat"
    warp = f"{out_prefix}1Warp.nii.gz"
    inverse_warp = f"{out_prefix}1InverseWarp.nii.gz"
    inverse_affine = invert_affine_file(affine, f"{out_prefix}inverse.mat")
    qc = registration_qc(fixed, warped, fixed_mask_file=fixed_mask_file)
    return Registration((warp, affine), (inverse_affine, inverse_warp), warped, qc)


def register_to_mni(
    t1w_brain_file: PathLike,
    mask_file: PathLike,
    out_dir: PathLike,
    *,
    resolution: int = MNI_RESOLUTION,
    initial_transform: Sequence[str] | None = None,
    syn_metric: str = MNI_SYN_METRIC,
    syn_iterations: Sequence[int] = SYN_ITERATIONS,
    template_file: PathLike | None = None,
    template_mask_file: PathLike | None = None,
    seed: int = DEFAULT_SEED,
    n_threads: int | None = None,
) -> Registration:
    """SyN of a brain-extracted T1w (moving) to the bundled MNI152NLin6Asym brain (fixed).

    ``from_moving_to_fixed`` is T1w -> MNI, ``from_fixed_to_moving`` MNI -> T1w. With an
    ``initial_transform`` (the affine from ``extract_brain``) the linear stages are shortened.
    QC adds ``dice_mask``: template brain mask vs the T1w mask warped to MNI.
    ``template_file``/``template_mask_file`` override the bundled template (tests).
    """
    if template_file is None or template_mask_file is None:
        from ketamine_dti.resources import get_template

        template_file = get_template(resolution=resolution, desc="brain", suffix="T1w")
        template_mask_file = get_template(resolution=resolution, desc="brain", suffix="mask")
    template, template_mask = str(template_file), str(template_mask_file)
    # extract_brain's affine is already a template affine: re-running the linear stages on top
    # of it doubled the CPU time without changing the result (NCC/Dice to 3 decimals).
    affine_iterations = () if initial_transform else LINEAR_ITERATIONS
    reg = register_syn(
        template,
        t1w_brain_file,
        out_dir,
        prefix="mni_",
        initial_transform=initial_transform,
        affine_iterations=affine_iterations,
        syn_metric=syn_metric,
        syn_iterations=syn_iterations,
        seed=seed,
        n_threads=n_threads,
    )
    warped_mask = apply_transforms(
        mask_file,
        template,
        reg.from_moving_to_fixed,
        Path(out_dir) / "mni_warped_mask.nii.gz",
        interpolation="nearestNeighbor",
    )
    qc = registration_qc(
        template, reg.warped_file, fixed_mask_file=template_mask, warped_mask_file=warped_mask
    )
    return Registration(reg.from_moving_to_fixed, reg.from_fixed_to_moving, reg.warped_file, qc)
