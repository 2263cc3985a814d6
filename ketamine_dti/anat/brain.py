"""T1w bias correction and brain extraction with a whole-head template prior (no network).

As antsBrainExtraction: the head T1w is registered to a whole-head template that has a brain
mask (Colin27, bundled at 2 mm), the mask is pulled back onto the T1w grid and refined by the
T1w's own tissue classes (Atropos in a band around the prior), then cleaned. The registration
starts from the upper head, not the centre of mass, which a neck in the field of view drags
down by centimetres. Everything runs in world (LPS) millimetres, so the voxel order, axis
flips and slice thickness of the input do not matter; outputs are on the input grid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ketamine_dti.anat.bias_field import correct, working_shrink
from ketamine_dti.anat.longitudinal import head_mask
from ketamine_dti.anat.morphology import dilate_mm, erode_mm, largest_component
from ketamine_dti.anat.registration import normalized_cross_correlation, register_syn
from ketamine_dti.ants_backend import (
    REGISTRATION_SEED,
    WORK_EXTENSION,
    PathLike,
    apply_mask,
    apply_transforms,
    coarse_copy_file,
    load_image,
    matrix_to_affine,
    save_like,
    voxel_to_world,
)
from ketamine_dti.errors import InputError

LOGGER = logging.getLogger(__name__)

#: mm; the head-wide N4 fits its smooth field on a working grid this coarse (shrink 4 on a 2 mm
#: T1w as before; shrink 8 on 1 mm). On a 1 mm simulated head (176x256x256) shrink 4 cost 44 s of
#: CPU and shrink 8 7 s; the fields differ by 0.4% median, 2.6% at the 99th percentile, and the
#: brain-band N4 that follows refits the brain's own bias.
N4_GRID_MM: float = 8.0
#: N4 iterations per fitting level (ANTs default 50x50x50x50; 3 levels are plenty for 1.5-3T).
N4_ITERATIONS: tuple[int, ...] = (50, 50, 30)
N4_TOLERANCE: float = 1e-7
#: The second N4, inside the brain band: a B-spline mesh every 60 mm on a ~4 mm working grid and
#: four levels, because a head-wide fit (ANTs' default 200 mm mesh, 1/4 resolution) leaves the
#: deep-brain dip of multichannel head coils (real Prisma MPRAGE: deep WM classed as CSF). The
#: grid is set in mm, not as a fixed shrink: on a 1 mm simulated head shrink 4 instead of 2 cut
#: the extraction from 228 to 86 s wall at the same Dice (0.979); 2 mm T1ws keep shrink 2.
BRAIN_N4_SPLINE_MM: float = 60.0
BRAIN_N4_GRID_MM: float = 4.0
BRAIN_N4_ITERATIONS: tuple[int, ...] = (50, 50, 50, 30)
#: The whole-head template with a brain mask (TemplateFlow name; bundled at res-02).
HEAD_TEMPLATE: str = "Colin27"
HEAD_TEMPLATE_RESOLUTION: int = 2
#: Height (mm) of the head's top slab whose centre aligns subject and template: about vertex to
#: skull base, so a neck or shoulders below it cannot pull the start point down.
UPPER_HEAD_MM: float = 100.0
#: Percentile of the head's superior coordinates taken as the vertex (robust to stray voxels).
VERTEX_PERCENTILE: float = 99.9
#: Dilation (mm) of the template brain mask that restricts the extraction metric: the skull
#: and scalp over the brain drive the match, the face, neck and shoulders do not.
METRIC_MASK_DILATION_MM: float = 20.0
#: Warped template-mask probability above which a voxel is brain.
MASK_THRESHOLD: float = 0.5
#: Closing radius (voxels) that smooths the warped mask edge without swallowing sulci.
MASK_CLOSING_ITERATIONS: int = 1
#: Coarse registration for extraction: the prior only has to land within the refinement band.
#: Rigid and affine at 8 and 4 mm on the 2 mm template (a 2 mm level cost 17 of a tiny
#: participant's 60 s of registration, and SyN follows), then SyN at 8 and 4 mm with
#: cross-correlation head to head (30/10 iterations instead of 50/20: the prior moved by
#: Dice 0.98, its refinement by less). Mattes MI in the SyN stage would cost half as much
#: (10.5 vs 20 s on a 1 mm head), but on the real MPRAGE stored as 5 mm slices it grew the
#: brain by 16% (1,767 vs 1,522 ml; CC 1,515 ml): session 14, brain_extraction_session14.
EXTRACTION_LINEAR_ITERATIONS: tuple[int, ...] = (200, 100)
EXTRACTION_LINEAR_SHRINK: tuple[int, ...] = (4, 2)
EXTRACTION_SYN_ITERATIONS: tuple[int, ...] = (30, 10)
EXTRACTION_SYN_METRIC: str = "cc"
EXTRACTION_SYN_SHRINK: tuple[int, ...] = (4, 2)
EXTRACTION_SYN_SMOOTHING: tuple[float, ...] = (2.0, 1.0)
#: Refinement: tissue is classified within this distance (mm) of the prior brain edge.
REFINE_BAND_MM: float = 6.0
#: Opening radius (mm) that cuts thin bridges of bright tissue (dura, vessels, scalp) off the
#: brain before its largest component is kept; skull between brain and scalp is thicker.
REFINE_OPENING_MM: float = 4.0
#: Closing radius (mm) that puts sulcal CSF back inside the mask.
REFINE_CLOSING_MM: float = 4.0
#: Brain tissue (GM or WM) on the band-corrected T1w, relative to the median of the prior's
#: core (mostly WM and GM): CSF, bone and background are darker than half of it, fat and
#: marrow brighter than twice it (T1w MPRAGE/SPGR contrast).
TISSUE_MIN_FRACTION: float = 0.5
TISSUE_MAX_FRACTION: float = 2.0
#: Millilitres per mm^3.
ML_PER_MM3: float = 1e-3
#: Smallest extent (voxels) of each axis of a 3-D T1w we accept (a 2-D slice stack is not one).
MIN_AXIS_VOXELS: int = 8


@dataclass(frozen=True)
class BrainExtraction:
    """Brain mask and brain image on the input T1w grid, plus the T1w <-> template maps."""

    brain_file: str
    mask_file: str
    from_template_to_t1w: tuple[str, ...]
    from_t1w_to_template: tuple[str, ...]
    affine_t1w_to_template: tuple[str, ...]
    qc: dict[str, float] = field(default_factory=dict)


def bias_correct(
    in_file: PathLike,
    out_dir: PathLike,
    *,
    mask_file: PathLike | None = None,
    out_name: str = f"t1w_n4{WORK_EXTENSION}",
    shrink: int | None = None,
    iterations: Sequence[int] = N4_ITERATIONS,
    spline_distance_mm: float | None = None,
) -> str:
    """N4 bias-field correction of a 3-D T1w; writes ``<out_dir>/<out_name>`` (same grid).
    ``shrink`` (None: a working grid of N4_GRID_MM); ``spline_distance_mm``: B-spline mesh
    spacing (None: one span over the image, ANTs' default). As ANTs' N4, voxels outside the
    mask (default: the head) are left as they are; ``bias_field`` computes ANTs' field (within
    float32 rounding on an axis-aligned grid) 15-30x faster."""
    import ants

    image = load_image(in_file)
    data = image.numpy()
    if shrink is None:
        shrink = working_shrink(image.spacing, N4_GRID_MM)
    mask = load_image(mask_file).numpy() > 0 if mask_file is not None else head_mask(data)
    if not mask.any():
        raise InputError(f"{in_file}: image is empty (no head voxels); check the T1w")
    corrected = correct(
        data, mask, image.spacing, shrink=shrink, iterations=iterations,
        spline_distance_mm=spline_distance_mm, tolerance=N4_TOLERANCE,
    )  # fmt: skip
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / out_name
    ants.image_write(image.new_image_like(corrected), str(out_file))
    return str(out_file)


def check_t1w(image, path: PathLike) -> None:
    """InputError naming ``path`` for a T1w no extraction can work on: a slice, a constant."""
    if min(image.shape) < MIN_AXIS_VOXELS:
        raise InputError(
            f"{path}: shape {image.shape} is not a 3-D head volume (an axis has fewer than "
            f"{MIN_AXIS_VOXELS} voxels); give the full T1w"
        )
    data = image.numpy()
    if np.ptp(data) == 0:
        raise InputError(f"{path}: image is constant ({data.flat[0]:g}); check the T1w")


def bundled_head_template() -> tuple[str, str]:
    """The bundled whole-head template T1w and its brain mask (Colin27, 2 mm)."""
    from ketamine_dti.resources import get_template

    query = {"resolution": HEAD_TEMPLATE_RESOLUTION, "template": HEAD_TEMPLATE}
    return (
        str(get_template(desc=None, suffix="T1w", **query)),
        str(get_template(desc="brain", suffix="mask", **query)),
    )


def dilate_mask_file(mask_file: PathLike, radius_mm: float, out_file: PathLike) -> str:
    """Binary dilation of a mask file by ``radius_mm`` (world mm)."""
    mask = load_image(mask_file)
    return save_like(mask, dilate_mm(mask.numpy() > 0, radius_mm, mask.spacing), out_file)


def refine_mask(probability: np.ndarray, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """Binary brain mask from a warped mask probability: threshold, closing, largest
    connected component, holes filled (ventricles stay inside)."""
    mask = np.asarray(probability) > threshold
    if not mask.any():
        return mask
    if MASK_CLOSING_ITERATIONS:
        mask = ndimage.binary_closing(mask, iterations=MASK_CLOSING_ITERATIONS)
    return ndimage.binary_fill_holes(largest_component(mask))


def refine_with_tissue(
    prior: np.ndarray,
    tissue: np.ndarray,
    spacing: Sequence[float],
    band: np.ndarray | None = None,
    core: np.ndarray | None = None,
) -> np.ndarray:
    """The brain as the T1w's own GM/WM near the template prior (antsBrainExtraction's step).

    ``prior``: the warped template mask (binary); ``tissue``: GM or WM by the T1w's intensity
    classes in a band around it. An opening cuts bridges to the scalp, the largest component
    is kept, a closing and hole filling put sulcal and ventricular CSF back. The prior's core
    (deeper than the band) stays brain whatever its intensity. ``band``/``core``: the prior
    dilated/eroded by REFINE_BAND_MM, if the caller has them (each is a distance transform).
    """
    if band is None:
        band = dilate_mm(prior, REFINE_BAND_MM, spacing)
    if core is None:
        core = erode_mm(prior, REFINE_BAND_MM, spacing)
    brain = tissue & band
    brain = erode_mm(brain, REFINE_OPENING_MM, spacing)
    brain = dilate_mm(largest_component(brain), REFINE_OPENING_MM, spacing) & band
    brain |= core
    brain = erode_mm(dilate_mm(brain, REFINE_CLOSING_MM, spacing), REFINE_CLOSING_MM, spacing)
    return ndimage.binary_fill_holes(largest_component(brain))


def upper_head_center(image) -> np.ndarray:
    """Centre (LPS mm) of the top UPPER_HEAD_MM of the head: the brain's neighbourhood whether
    or not the field of view reaches down to the neck."""
    data = image.numpy()
    mask = largest_component(head_mask(data))
    points = voxel_to_world(image, np.argwhere(mask))
    superior = points[:, 2]  # LPS: +z is superior, whatever the voxel order
    vertex = np.percentile(superior, VERTEX_PERCENTILE)
    return points[superior >= vertex - UPPER_HEAD_MM].mean(axis=0)


def initial_translation(template, t1w, out_file: PathLike) -> str:
    """A translation ``.mat`` (template points -> T1w points) aligning the upper heads."""
    matrix = np.eye(4)
    matrix[:3, 3] = upper_head_center(t1w) - upper_head_center(template)
    return matrix_to_affine(matrix, out_file)


def extract_brain(
    t1w_file: PathLike,
    out_dir: PathLike,
    *,
    template_file: PathLike | None = None,
    template_mask_file: PathLike | None = None,
    seed: int = REGISTRATION_SEED,
    n_threads: int | None = None,
) -> BrainExtraction:
    """Brain mask of a bias-corrected head T1w (any orientation, FOV, scaling, 1-5 mm).

    Writes ``t1w_brain.nii`` and ``t1w_brainmask.nii.gz`` (uint8) in ``out_dir`` on the
    input grid. ``template_file``/``template_mask_file``: a whole-head template and its brain
    mask (default: the bundled Colin27). The transforms map T1w <-> that template.
    QC: ``brain_volume_ml``, ``prior_volume_ml`` (before refinement) and ``ncc_template``.
    """
    import ants

    if template_file is None or template_mask_file is None:
        template_file, template_mask_file = bundled_head_template()
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    t1w = load_image(t1w_file)
    check_t1w(t1w, t1w_file)
    if not head_mask(t1w.numpy()).any():
        raise InputError(f"{t1w_file}: image is empty (no head voxels); check the T1w")
    # the registration works at 8 and 4 mm: a 1 mm head cost 31 s of CPU, its 2 mm copy 20
    moving = coarse_copy_file(
        t1w_file, HEAD_TEMPLATE_RESOLUTION, out_dir / "t1w_registration_grid.nii.gz"
    )
    start = initial_translation(
        load_image(template_file), load_image(moving), out_dir / "bex_initial_translation.mat"
    )
    reg = register_syn(
        template_file,
        moving,
        out_dir,
        prefix="bex_",
        fixed_mask_file=dilate_mask_file(
            template_mask_file, METRIC_MASK_DILATION_MM, out_dir / "template_metric_mask.nii.gz"
        ),
        initial_transform=[start],
        affine_iterations=EXTRACTION_LINEAR_ITERATIONS,
        affine_shrink_factors=EXTRACTION_LINEAR_SHRINK,
        syn_metric=EXTRACTION_SYN_METRIC,
        syn_iterations=EXTRACTION_SYN_ITERATIONS,
        syn_shrink_factors=EXTRACTION_SYN_SHRINK,
        syn_smoothing_sigmas=EXTRACTION_SYN_SMOOTHING,
        seed=seed,
        n_threads=n_threads,
    )
    probability_file = apply_transforms(
        template_mask_file, t1w_file, reg.from_fixed_to_moving, out_dir / "t1w_brainprob.nii.gz"
    )
    prior = refine_mask(ants.image_read(probability_file).numpy())
    if not prior.any():
        raise InputError(
            f"{t1w_file}: brain extraction found no brain; check that the image is a T1w head"
        )
    mask, flat_file = _refine(t1w, prior, out_dir)
    mask_file = save_like(t1w, mask, out_dir / "t1w_brainmask.nii.gz", "unsigned char")
    # the brain image is the brain-corrected one: segmentation needs its flat WM
    brain_file = apply_mask(flat_file, mask_file, out_dir / f"t1w_brain{WORK_EXTENSION}")
    qc = _extraction_qc(t1w, mask, template_file, template_mask_file, reg.warped_file)
    qc["prior_volume_ml"] = float(prior.sum() * np.prod(t1w.spacing) * ML_PER_MM3)
    affine = tuple(f for f in reg.from_moving_to_fixed if f.endswith(".mat"))
    return BrainExtraction(
        brain_file=brain_file,
        mask_file=mask_file,
        from_template_to_t1w=reg.from_fixed_to_moving,
        from_t1w_to_template=reg.from_moving_to_fixed,
        affine_t1w_to_template=affine,
        qc=qc,
    )


def _refine(t1w, prior: np.ndarray, out_dir: Path) -> tuple[np.ndarray, str]:
    """N4 again inside a band around the prior (the head-wide fit leaves the brain's own bias
    to the scalp), tissue by intensity relative to the prior's core, ``refine_with_tissue``.
    Returns the mask and the brain-corrected T1w file."""
    import ants

    band = dilate_mm(prior, REFINE_BAND_MM, t1w.spacing)
    data = correct(
        t1w.numpy(), band, t1w.spacing, shrink=working_shrink(t1w.spacing, BRAIN_N4_GRID_MM),
        iterations=BRAIN_N4_ITERATIONS, spline_distance_mm=BRAIN_N4_SPLINE_MM,
        tolerance=N4_TOLERANCE,
    )  # fmt: skip
    flat = str(out_dir / f"t1w_band_n4{WORK_EXTENSION}")
    ants.image_write(t1w.new_image_like(data), flat)
    core = erode_mm(prior, REFINE_BAND_MM, t1w.spacing)
    reference = float(np.median(data[core if core.any() else prior]))
    tissue = (data >= TISSUE_MIN_FRACTION * reference) & (data <= TISSUE_MAX_FRACTION * reference)
    return refine_with_tissue(prior, tissue, t1w.spacing, band=band, core=core), flat


def _extraction_qc(
    t1w, mask: np.ndarray, template_file: PathLike, template_mask_file: PathLike, warped_file: str
) -> dict[str, float]:
    """Brain volume (ml) and the NCC of the template with the T1w warped onto it."""
    import ants

    template = ants.image_read(str(template_file))
    template_mask = ants.image_read(str(template_mask_file)).numpy() > 0
    qc = {
        "brain_volume_ml": float(mask.sum() * np.prod(t1w.spacing) * ML_PER_MM3),
        "ncc_template": normalized_cross_correlation(
            template.numpy(), ants.image_read(warped_file).numpy(), template_mask
        ),
    }
    LOGGER.info("brain extraction: %.0f ml, NCC to template %.3f", *qc.values())
    return qc


def mask_in_session(
    mask_file: PathLike, session_t1w_file: PathLike, transforms: Sequence[str], out_file: PathLike
) -> str:
    """Bring a brain mask (e.g. from the subject template) onto a session's T1w grid."""
    return apply_transforms(
        mask_file, session_t1w_file, transforms, out_file, interpolation="nearestNeighbor"
    )
