"""Rigid, affine and SyN registration schedules (antsRegistration), and their QC.

Seeds, threads, metric defaults and the transform conventions (``from-X_to-Y`` lists) are
those of ``ketamine_dti.ants_backend``; this module chooses the stages and their schedules.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ketamine_dti.ants_backend import (
    CC_RADIUS,
    METRIC_SAMPLING_FRACTION,
    REGISTRATION_SEED,
    PathLike,
    apply_mask,
    apply_transforms,
    check_ants_path,
    coarse_copy_file,
    identity_file,
    image_affine,
    invert_affine_file,
    itk_threads,
    load_image,
    ras_to_affine_file,
    read_grid,
    run_registration,
    save_like,
    search_rigid_start,
    transform_to_ras,
)
from ketamine_dti.dwi.mutual_information import MI_BINS

LOGGER = logging.getLogger(__name__)

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
#: TemplateFlow resolution index of the MNI registration target (res-02: 2 mm), which is also
#: the grid of the published MNI-space T1w.
MNI_RESOLUTION: int = 2
#: SyN metric of the MNI registration. Mattes MI: on a tiny participant it reached the same
#: brain-mask Dice (0.989) as CC at a quarter of the CPU time (23 s vs ~95 s, 1 thread); CC
#: gives a slightly higher NCC (0.94 vs 0.93) and can be chosen with syn_metric="cc".
MNI_SYN_METRIC: str = "mattes"
#: The MNI linear stages stop at 4 mm (shrink 2 of the 2 mm template): SyN refines at 2 mm
#: anyway. On a tiny participant this took the registration from 66 to 42 s; the seven
#: atlas ROIs moved onto the T1w kept Dice 0.96-0.997 with the 2 mm linear level's.
MNI_LINEAR_ITERATIONS: tuple[int, ...] = LINEAR_ITERATIONS[:2]
MNI_LINEAR_SHRINK: tuple[int, ...] = LINEAR_SHRINK[:2]
#: Coarse rotation search of the b0 -> T1w start: every 15 degrees over +-0.15 of a half turn
#: (+-27 degrees) about each axis, enough for a head tilted in the coil, 27 starts.
DWI_SEARCH_STEP_DEG: float = 15.0
DWI_SEARCH_ARC_FRACTION: float = 0.15


@dataclass(frozen=True)
class Registration:
    """Result of one registration: transform lists (files), the warped moving image, QC."""

    from_moving_to_fixed: tuple[str, ...]
    from_fixed_to_moving: tuple[str, ...]
    warped_file: str
    qc: dict[str, float] = field(default_factory=dict)


def _schedule(values: Sequence[float], unit: str = "") -> str:
    return "x".join(f"{v:g}" for v in values) + unit


def mni_syn_levels(dwi_voxel_mm: float | None, resolution: int = MNI_RESOLUTION) -> int:
    """How many of the SyN levels (coarsest first, ``SYN_SHRINK`` of the ``resolution`` mm
    template) the MNI registration runs for a DWI whose finest voxel edge is ``dwi_voxel_mm``
    (None: all).

    The ROIs are read on the DWI grid, so the SyN stops at the coarsest level that still
    resolves its voxel: a 4 mm DWI (the tiny preset) keeps the 8 and 4 mm levels and skips the
    2 mm one; 2 and 3 mm DWIs keep all three.
    """
    n_levels = len(SYN_SHRINK)
    if dwi_voxel_mm is None:
        return n_levels
    spacing = [shrink * resolution for shrink in SYN_SHRINK]
    # the finest level goes while the next coarser one still resolves the DWI voxel
    while n_levels > 1 and spacing[n_levels - 2] <= dwi_voxel_mm + 1e-6:
        n_levels -= 1
    return n_levels


def shrink_for_levels(levels_mm: Sequence[float], spacing: Sequence[float]) -> tuple[int, ...]:
    """Integer shrink factors that bring a grid of ``spacing`` (mm) to about ``levels_mm``."""
    voxel = float(min(spacing))
    return tuple(max(1, int(round(level / voxel))) for level in levels_mm)


def _stage(
    transform: str,
    metric: str,
    iterations: Sequence[int],
    shrink: Sequence[int],
    smoothing: str,
    masks: str | None,
) -> list[str]:
    """One antsRegistration stage: transform, metric and multi-resolution schedule."""
    return [
        "--transform",
        transform,
        "--metric",
        metric,
        "--convergence",
        f"[{_schedule(iterations)},{CONVERGENCE_THRESHOLD:g},{CONVERGENCE_WINDOW}]",
        "--shrink-factors",
        _schedule(shrink),
        "--smoothing-sigmas",
        smoothing,
    ] + (["--masks", masks] if masks else [])


def _linear_stage(
    transform: str,
    metric: str,
    fixed: str,
    moving: str,
    masks: str | None,
    iterations: Sequence[int] = LINEAR_ITERATIONS,
    shrink: Sequence[int] = LINEAR_SHRINK,
    smoothing: Sequence[float] | str = LINEAR_SMOOTHING,
    sampling_fraction: float = METRIC_SAMPLING_FRACTION,
) -> list[str]:
    sampling = f"Regular,{sampling_fraction}"
    if metric == "mattes":
        metric_str = f"MI[{fixed},{moving},1,{MI_BINS},{sampling}]"
    elif metric == "gc":
        metric_str = f"GC[{fixed},{moving},1,1,{sampling}]"
    elif metric == "meansquares":
        metric_str = f"MeanSquares[{fixed},{moving},1,1,{sampling}]"
    else:
        raise ValueError(f"unknown metric {metric!r}; use 'mattes', 'gc' or 'meansquares'")
    if not isinstance(smoothing, str):
        smoothing = _schedule(smoothing, "vox")
    transform_str = f"{transform}[{LINEAR_GRADIENT_STEP}]"
    return _stage(transform_str, metric_str, iterations, shrink, smoothing, masks)


def _syn_stage(
    fixed: str,
    moving: str,
    masks: str | None,
    metric: str = "cc",
    iterations: Sequence[int] = SYN_ITERATIONS,
    shrink: Sequence[int] = SYN_SHRINK,
    smoothing: Sequence[float] = SYN_SMOOTHING,
) -> list[str]:
    if metric == "cc":
        metric_str = f"CC[{fixed},{moving},1,{CC_RADIUS}]"
    else:
        metric_str = f"MI[{fixed},{moving},1,{MI_BINS}]"
    transform_str = f"SyN[{SYN_GRADIENT_STEP},{SYN_UPDATE_SIGMA:g},{SYN_TOTAL_SIGMA:g}]"
    return _stage(
        transform_str, metric_str, iterations, shrink, _schedule(smoothing, "vox"), masks
    )


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
    fm = check_ants_path(fixed_mask) if fixed_mask is not None else "NULL"
    mm = check_ants_path(moving_mask) if moving_mask is not None else "NULL"
    return f"[{fm},{mm}]"


def bundled_template(resolution: int) -> tuple[str, str]:
    """The bundled MNI152NLin6Asym brain T1w and brain mask at ``resolution`` (TemplateFlow
    index: 1 or 2 mm)."""
    from ketamine_dti.resources import get_template

    return (
        get_template(resolution=resolution, desc="brain", suffix="T1w"),
        get_template(resolution=resolution, desc="brain", suffix="mask"),
    )


@dataclass(frozen=True)
class _Job:
    """The checked paths of one antsRegistration run."""

    fixed: str
    moving: str
    out_prefix: str
    warped: str
    masks: str | None
    fixed_spacing: tuple[float, ...]


def _prepare(
    fixed_file: PathLike,
    moving_file: PathLike,
    out_dir: PathLike,
    prefix: str,
    fixed_mask_file: PathLike | None,
    moving_mask_file: PathLike | None,
    check: bool = True,
) -> _Job:
    """Check inputs (a clear error on a bad file before ANTs sees it; ``check=False`` for files
    this module wrote from checked ones, whose header alone is read) and name the outputs."""
    import ants

    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    if check:
        spacing = load_image(fixed_file).spacing
        load_image(moving_file)
    else:
        spacing = ants.image_header_info(str(fixed_file))["spacing"]
    return _Job(
        fixed=check_ants_path(fixed_file),
        moving=check_ants_path(moving_file),
        out_prefix=check_ants_path(out_dir / prefix),
        warped=str(out_dir / f"{prefix}warped.nii.gz"),
        masks=_mask_option(fixed_mask_file, moving_mask_file),
        fixed_spacing=tuple(float(x) for x in spacing),
    )


def _run(
    job: _Job,
    stages: list[str],
    initial_transform: Sequence[str] | None,
    seed: int,
    n_threads: int | None,
) -> None:
    """antsRegistration: initial transform, ``stages``, one collapsed output and the warped."""
    args = _initial(job.fixed, job.moving, initial_transform) + stages
    args += [
        "--collapse-output-transforms",
        "1",
        "--winsorize-image-intensities",
        "[0.005,0.995]",
        "--interpolation",
        "Linear",
        "--output",
        f"[{job.out_prefix},{job.warped}]",
    ]
    run_registration(args, seed, n_threads)


def _on_finest_level_grid(
    fixed_file: PathLike, moving_file: PathLike, fixed_mask_file: PathLike | None, stem: Path
) -> tuple[str, str, str | None]:
    """Copies of images finer than LINEAR_LEVELS_MM[-1] on that grid (``coarse_copy_file``),
    and the fixed mask on the fixed copy's grid (the QC compares them voxel by voxel).

    The schedule never goes below that level, but ANTs smooths each image at its own
    resolution at every level. On a standard participant (seed 11 sub-001, session 14) the
    b0 -> T1w step went from 23-26 to 18-21 s of CPU per session and the two sessions'
    template from 44 to 31 s; the maps moved by at most 0.18 and 0.04 mm.
    """
    spacing = LINEAR_LEVELS_MM[-1]
    fixed = coarse_copy_file(fixed_file, spacing, f"{stem}fixed_grid.nii.gz")
    moving = coarse_copy_file(moving_file, spacing, f"{stem}moving_grid.nii.gz")
    if fixed_mask_file is not None and fixed != str(fixed_file):
        fixed_mask_file = apply_transforms(
            fixed_mask_file, fixed, [], f"{stem}fixed_mask_grid.nii.gz",
            interpolation="nearestNeighbor",
        )  # fmt: skip
    return fixed, moving, None if fixed_mask_file is None else str(fixed_mask_file)


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
    sampling_fraction: float = METRIC_SAMPLING_FRACTION,
    with_qc: bool = True,
    seed: int = REGISTRATION_SEED,
    n_threads: int | None = None,
) -> Registration:
    """Rigid (or Affine) registration of ``moving`` to ``fixed``.

    Writes ``<prefix>0GenericAffine.mat`` (from-moving_to-fixed), ``<prefix>inverse.mat``
    (from-fixed_to-moving) and ``<prefix>warped.nii.gz`` in ``out_dir``; with the default
    mm schedule, images finer than its last level enter (and the warped image and QC come
    out) on that level's grid (``_on_finest_level_grid``). ``metric``:
    ``mattes`` (mutual information, across contrasts: b0 -> T1w), ``gc``/``meansquares``;
    ``sampling_fraction`` of the voxels enter it. ``with_qc=False`` skips ``registration_qc``
    (two full-size reads and two metrics) for a caller that scores the result itself.
    """
    if transform not in ("Rigid", "Affine", "Similarity", "Translation"):
        raise ValueError(f"transform must be Rigid/Affine/Similarity/Translation, not {transform}")
    job = _prepare(fixed_file, moving_file, out_dir, prefix, fixed_mask_file, moving_mask_file)
    if shrink_factors is None:
        fixed_file, moving_file, fixed_mask_file = _on_finest_level_grid(
            job.fixed, job.moving, fixed_mask_file, Path(job.out_prefix)
        )
        job = _prepare(
            fixed_file, moving_file, out_dir, prefix, fixed_mask_file, moving_mask_file,
            check=False,
        )  # fmt: skip
        # the coarsest levels are dropped if fewer iterations are given
        n_levels = len(iterations)
        levels_mm = LINEAR_LEVELS_MM[-n_levels:]
        shrink_factors = shrink_for_levels(levels_mm, job.fixed_spacing)
        smoothing = _schedule(LINEAR_SMOOTHING_MM[-n_levels:], "mm")
    else:
        smoothing = _schedule(smoothing_sigmas or LINEAR_SMOOTHING[-len(shrink_factors) :], "vox")
    stages = _linear_stage(
        transform,
        metric,
        job.fixed,
        job.moving,
        job.masks,
        iterations,
        shrink_factors,
        smoothing,
        sampling_fraction,
    )
    _run(job, stages, initial_transform, seed, n_threads)
    forward = f"{job.out_prefix}0GenericAffine.mat"
    inverse = invert_affine_file(forward, f"{job.out_prefix}inverse.mat")
    qc = {}
    if with_qc:
        qc = registration_qc(job.fixed, job.warped, fixed_mask_file=fixed_mask_file)
    return Registration((forward,), (inverse,), job.warped, qc)


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
    affine_shrink_factors: Sequence[int] | None = None,
    syn_iterations: Sequence[int] = SYN_ITERATIONS,
    syn_shrink_factors: Sequence[int] = SYN_SHRINK,
    syn_smoothing_sigmas: Sequence[float] = SYN_SMOOTHING,
    seed: int = REGISTRATION_SEED,
    n_threads: int | None = None,
) -> Registration:
    """Rigid + affine (Mattes MI) then SyN of ``moving`` to ``fixed``.

    ``syn_metric``: ``cc`` (cross-correlation, same contrast, sharper) or ``mattes`` (MI, for
    images whose backgrounds differ, e.g. a head against a skull-stripped template).

    Writes ``<prefix>0GenericAffine.mat``, ``<prefix>1Warp.nii.gz``,
    ``<prefix>1InverseWarp.nii.gz``
    and ``<prefix>inverse.mat``. With ``affine_iterations=()`` the linear stages are skipped
    (use with an ``initial_transform``). ``affine_shrink_factors`` (default: the last levels of
    LINEAR_SHRINK) can stop the linear stages above full resolution when SyN follows anyway.
    """
    job = _prepare(fixed_file, moving_file, out_dir, prefix, fixed_mask_file, moving_mask_file)
    stages: list[str] = []
    if affine_iterations:
        n_levels = len(affine_iterations)
        shrink = affine_shrink_factors or LINEAR_SHRINK[-n_levels:]
        # as LINEAR_SMOOTHING: half the shrink factor, 0 at full resolution
        smoothing = tuple(factor / 2 if factor > 1 else 0.0 for factor in shrink)
        schedule = (affine_iterations, shrink, smoothing)
        for linear in ("Rigid", "Affine"):
            stages += _linear_stage(linear, "mattes", job.fixed, job.moving, job.masks, *schedule)
    stages += _syn_stage(
        job.fixed,
        job.moving,
        job.masks,
        syn_metric,
        syn_iterations,
        syn_shrink_factors,
        syn_smoothing_sigmas,
    )
    _run(job, stages, initial_transform, seed, n_threads)
    affine = f"{job.out_prefix}0GenericAffine.mat"
    warp = f"{job.out_prefix}1Warp.nii.gz"
    inverse_warp = f"{job.out_prefix}1InverseWarp.nii.gz"
    inverse_affine = invert_affine_file(affine, f"{job.out_prefix}inverse.mat")
    # no QC here: each caller scores its own result (brain extraction, MNI with masks)
    return Registration((warp, affine), (inverse_affine, inverse_warp), job.warped)


def register_dwi_to_t1w(
    b0_file: PathLike,
    dwi_mask_file: PathLike,
    t1w_brain_file: PathLike,
    t1w_mask_file: PathLike,
    out_dir: PathLike,
    *,
    white_surface: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = REGISTRATION_SEED,
    n_threads: int | None = None,
) -> Registration:
    """Rigid registration of the b0 (moving) to the session's T1w brain (fixed):
    ``from_moving_to_fixed`` is DWI -> T1w.

    Mutual information of the brain-masked images (so skull and neck do not pull it) runs from
    two starts: the scanner's own alignment of the two images, and the centres of mass of the
    two brains turned by the best of a coarse rotation search (for headers that disagree).
    Either alone failed somewhere: on the real Prisma pair, whose DWI slab misses the lower
    brain, the centre-of-mass start put the PA and AP b0s 5.4 mm apart (median over the brain;
    the scanner's start 2.0 mm), and a head far from the scanner's frame needs the search.

    With ``white_surface`` (points and outward normals of the T1w's gray/white boundary, world
    mm of the T1w) each MI result is refined by boundary-based registration
    (``boundary_registration``) and the lower BBR cost wins; without it, the higher MI. MI's
    optimum is flat at DWI resolution: on the real pair the two starts ended 6 mm apart at equal
    MI, and a perturbation far below the noise moved the result by up to 2 mm; BBR brought
    both starts to within 0.01-0.08 mm of each other and moved 0.05-0.10 mm under that
    perturbation (``benchmarks/results/numerical_stability_session41_*``).
    QC then adds ``bbr_cost`` (Greve & Fischl's cost, 0 best, 2 worst) and ``bbr_shift_mm``
    (how far BBR moved the surface from the MI result it started from).

    QC adds ``dice_mask``: the DWI mask moved onto the T1w grid vs the T1w mask *inside the
    DWI's field of view* (a DWI slab that stops above the cerebellum is no misregistration;
    on the real Prisma scan the whole-brain Dice was 0.83 with the cerebellum cut off), and
    ``dwi_fov_fraction``: the fraction of the T1w brain that the DWI grid covers.
    """
    import ants

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    b0_brain = apply_mask(b0_file, dwi_mask_file, out_dir / "b0_brain.nii.gz")
    # register_linear's own finest-level copies (it takes them as they are), made here so
    # that the search's copies come from them: from the 1 mm T1w they cost 1.9 s more CPU
    fixed, moving, fixed_mask = _on_finest_level_grid(
        t1w_brain_file, b0_brain, t1w_mask_file, out_dir / "dwi2t1w_"
    )
    searched = search_rigid_start(
        fixed,
        moving,
        out_dir / "dwi2t1w_start.mat",
        step_deg=DWI_SEARCH_STEP_DEG,
        arc_fraction=DWI_SEARCH_ARC_FRACTION,
        n_threads=n_threads,
    )
    starts = {"dwi2t1w_": searched, "dwi2t1w_scanner_": identity_file(out_dir / "scanner")}
    candidates = [
        register_linear(
            fixed,
            moving,
            out_dir,
            prefix=prefix,
            transform="Rigid",
            metric="mattes",
            fixed_mask_file=fixed_mask,
            initial_transform=[start],
            seed=seed,
            n_threads=n_threads,
            with_qc=white_surface is None,
        )
        for prefix, start in starts.items()
    ]
    if white_surface is None:
        result = min(candidates, key=lambda registration: registration.qc["mutual_information"])
    else:
        result = _refine_by_boundary(
            b0_file, b0_brain, fixed, fixed_mask, candidates, white_surface, out_dir, n_threads
        )

    def to_t1w(in_file, name):
        return ants.image_read(
            apply_transforms(
                in_file,
                t1w_brain_file,
                result.from_moving_to_fixed,
                out_dir / name,
                interpolation="nearestNeighbor",
            )
        ).numpy()

    warped_mask = to_t1w(dwi_mask_file, "dwi_mask_in_t1w.nii.gz") > 0
    grid = read_grid(b0_file)
    fov_file = save_like(grid, np.ones(grid.shape), out_dir / "dwi_fov.nii.gz", "unsigned char")
    fov = to_t1w(fov_file, "dwi_fov_in_t1w.nii.gz") > 0
    t1w_mask = ants.image_read(str(t1w_mask_file)).numpy() > 0
    qc = dict(result.qc)  # register_linear's registration_qc: T1w brain vs warped b0, in mask
    qc["dice_mask"] = dice(t1w_mask & fov, warped_mask)
    qc["dwi_fov_fraction"] = float((t1w_mask & fov).sum() / max(int(t1w_mask.sum()), 1))
    return Registration(
        result.from_moving_to_fixed, result.from_fixed_to_moving, result.warped_file, qc
    )


def _refine_by_boundary(
    b0_file, b0_brain, fixed, fixed_mask, candidates, white_surface, out_dir, n_threads
) -> Registration:
    """The BBR refinement of each MI result (``register_dwi_to_t1w``); the lowest cost wins."""
    import ants

    from ketamine_dti.anat.boundary_registration import refine

    with itk_threads(n_threads):
        b0 = ants.image_read(str(b0_file))
    image, affine = b0.numpy(), image_affine(b0)
    starts = [
        transform_to_ras(ants.read_transform(candidate.from_moving_to_fixed[0]))
        for candidate in candidates
    ]
    first = refine(image, affine, *white_surface, starts[0])
    # one slope for all, so that their costs compare
    fits = [first] + [
        refine(image, affine, *white_surface, start, slope=first.slope) for start in starts[1:]
    ]
    best = min(fits, key=lambda fit: fit.cost)
    forward = ras_to_affine_file(best.matrix, out_dir / "dwi2t1w_bbr_0GenericAffine.mat")
    inverse = invert_affine_file(forward, out_dir / "dwi2t1w_bbr_inverse.mat")
    warped = apply_transforms(
        b0_brain, fixed, [forward], out_dir / "dwi2t1w_bbr_warped.nii.gz", n_threads=n_threads
    )
    qc = registration_qc(fixed, warped, fixed_mask_file=fixed_mask)
    qc["bbr_cost"] = best.cost
    qc["bbr_shift_mm"] = best.shift_mm
    return Registration((forward,), (inverse,), warped, qc)


def register_to_mni(
    t1w_brain_file: PathLike,
    mask_file: PathLike,
    out_dir: PathLike,
    *,
    resolution: int = MNI_RESOLUTION,
    initial_transform: Sequence[str] | None = None,
    syn_metric: str = MNI_SYN_METRIC,
    syn_iterations: Sequence[int] = SYN_ITERATIONS,
    dwi_voxel_mm: float | None = None,
    template_file: PathLike | None = None,
    template_mask_file: PathLike | None = None,
    seed: int = REGISTRATION_SEED,
    n_threads: int | None = None,
) -> Registration:
    """SyN of a brain-extracted T1w (moving) to the bundled MNI152NLin6Asym brain (fixed).

    ``from_moving_to_fixed`` is T1w -> MNI, ``from_fixed_to_moving`` MNI -> T1w. With an
    ``initial_transform`` (the affine from ``extract_brain``) the linear stages start from it.
    QC adds ``dice_mask``: template brain mask vs the T1w mask warped to MNI.
    ``dwi_voxel_mm`` (the finest DWI voxel edge) drops SyN levels finer than the ROIs can use
    (``mni_syn_levels``); the warp is then written on the finest level's grid.
    ``template_file``/``template_mask_file`` override the bundled template (tests).
    """
    if template_file is None or template_mask_file is None:
        template_file, template_mask_file = bundled_template(resolution)
    template, template_mask = str(template_file), str(template_mask_file)
    n_levels = mni_syn_levels(dwi_voxel_mm, resolution)
    # extract_brain's affine maps to its whole-head template (Colin27, near but not equal to
    # MNI152 in size and position): it is a start, and the linear stages refine it
    reg = register_syn(
        template,
        t1w_brain_file,
        out_dir,
        prefix="mni_",
        initial_transform=initial_transform,
        affine_iterations=MNI_LINEAR_ITERATIONS,
        affine_shrink_factors=MNI_LINEAR_SHRINK,
        syn_metric=syn_metric,
        syn_iterations=syn_iterations[:n_levels],
        syn_shrink_factors=SYN_SHRINK[:n_levels],
        syn_smoothing_sigmas=SYN_SMOOTHING[:n_levels],
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
