"""T1w bias correction and brain extraction against the bundled template (no network).

Brain extraction registers the head T1w to the MNI152NLin6Asym brain template (metric
restricted to a dilated template brain mask, so the skull does not drive it), pulls the
template brain mask back into the T1w grid, and cleans it (largest component, holes filled).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ketamine_dti.anat.longitudinal import head_mask
from ketamine_dti.anat.registration import (
    bundled_template,
    normalized_cross_correlation,
    register_syn,
)
from ketamine_dti.ants_backend import (
    REGISTRATION_SEED,
    PathLike,
    apply_mask,
    apply_transforms,
    itk_threads,
    load_image,
    save_like,
)
from ketamine_dti.errors import InputError

LOGGER = logging.getLogger(__name__)

#: N4 shrink factor: the bias field is smooth, so fitting it at 1/4 resolution loses nothing.
N4_SHRINK: int = 4
#: N4 iterations per fitting level (ANTs default 50x50x50x50; 3 levels are plenty for 1.5-3T).
N4_ITERATIONS: tuple[int, ...] = (50, 50, 30)
N4_TOLERANCE: float = 1e-7
#: Dilation (mm) of the template brain mask that restricts the extraction metric: the brain
#: edge must be inside the metric region, the scalp mostly outside.
METRIC_MASK_DILATION_MM: float = 8.0
#: Warped template-mask probability above which a voxel is brain.
MASK_THRESHOLD: float = 0.5
#: Closing radius (voxels) that smooths the warped mask edge without swallowing sulci.
MASK_CLOSING_ITERATIONS: int = 1
#: Coarse SyN for extraction: two low-resolution levels; the full-resolution detail of the mask
#: edge does not pay for its time here (the ROIs sit well inside the brain).
EXTRACTION_SYN_ITERATIONS: tuple[int, ...] = (40, 20)
EXTRACTION_SYN_METRIC: str = "mattes"
EXTRACTION_SYN_SHRINK: tuple[int, ...] = (4, 2)
EXTRACTION_SYN_SMOOTHING: tuple[float, ...] = (2.0, 1.0)
#: Millilitres per mm^3.
ML_PER_MM3: float = 1e-3


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
    out_name: str = "t1w_n4.nii.gz",
    n_threads: int | None = None,
) -> str:
    """N4 bias-field correction of a 3-D T1w; writes ``<out_dir>/<out_name>`` (same grid)."""
    import ants

    image = load_image(in_file)
    if mask_file is not None:
        mask = load_image(mask_file)
    else:
        mask = image.new_image_like(head_mask(image.numpy()).astype(np.float32))
    if mask.numpy().sum() == 0:
        raise InputError(f"{in_file}: image is empty (no head voxels); check the T1w")
    with itk_threads(n_threads):
        corrected = ants.n4_bias_field_correction(
            image,
            mask=mask,
            shrink_factor=N4_SHRINK,
            convergence={"iters": list(N4_ITERATIONS), "tol": N4_TOLERANCE},
        )
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / out_name
    ants.image_write(corrected, str(out_file))
    return str(out_file)


def refine_mask(probability: np.ndarray, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """Binary brain mask from a warped mask probability: threshold, closing, largest
    connected component, holes filled (ventricles stay inside)."""
    mask = np.asarray(probability) > threshold
    if not mask.any():
        return mask
    if MASK_CLOSING_ITERATIONS:
        mask = ndimage.binary_closing(mask, iterations=MASK_CLOSING_ITERATIONS)
    labels, n_components = ndimage.label(mask)
    if n_components > 1:
        sizes = ndimage.sum(mask, labels, index=range(1, n_components + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def dilate_mask_file(mask_file: PathLike, radius_mm: float, out_file: PathLike) -> str:
    """Binary dilation of a mask by ``radius_mm`` (rounded to whole voxels)."""
    import ants

    mask = ants.image_read(str(mask_file))
    n_voxels = max(1, int(round(radius_mm / min(mask.spacing))))
    dilated = ndimage.binary_dilation(mask.numpy() > 0, iterations=n_voxels)
    return save_like(mask, dilated, out_file)


def extract_brain(
    t1w_file: PathLike,
    out_dir: PathLike,
    *,
    template_resolution: int = 2,
    template_file: PathLike | None = None,
    template_mask_file: PathLike | None = None,
    seed: int = REGISTRATION_SEED,
    n_threads: int | None = None,
) -> BrainExtraction:
    """Brain mask of a bias-corrected head T1w via registration to the template brain.

    Writes ``t1w_brain.nii.gz`` and ``t1w_brainmask.nii.gz`` (uint8) in ``out_dir`` on the
    input grid. ``template_file``/``template_mask_file`` default to the bundled
    MNI152NLin6Asym ``desc-brain`` T1w and mask at ``template_resolution`` mm.
    QC: ``brain_volume_ml`` and ``ncc_template`` (template vs warped T1w in the template mask).
    """
    import ants

    if template_file is None or template_mask_file is None:
        template_file, template_mask_file = bundled_template(template_resolution)
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    t1w = load_image(t1w_file)
    metric_mask = dilate_mask_file(
        template_mask_file, METRIC_MASK_DILATION_MM, out_dir / "template_metric_mask.nii.gz"
    )
    reg = register_syn(
        template_file,
        t1w_file,
        out_dir,
        prefix="bex_",
        fixed_mask_file=metric_mask,
        syn_metric=EXTRACTION_SYN_METRIC,
        syn_iterations=EXTRACTION_SYN_ITERATIONS,
        syn_shrink_factors=EXTRACTION_SYN_SHRINK,
        syn_smoothing_sigmas=EXTRACTION_SYN_SMOOTHING,
        seed=seed,
        n_threads=n_threads,
    )
    probability_file = apply_transforms(
        template_mask_file,
        t1w_file,
        reg.from_fixed_to_moving,
        out_dir / "t1w_brainprob.nii.gz",
        interpolation="linear",
    )
    mask = refine_mask(ants.image_read(probability_file).numpy())
    if not mask.any():
        raise InputError(
            f"{t1w_file}: brain extraction found no brain; check that the image is a T1w head"
        )
    mask_file = save_like(t1w, mask, out_dir / "t1w_brainmask.nii.gz", "unsigned char")
    brain_file = apply_mask(t1w_file, mask_file, out_dir / "t1w_brain.nii.gz")
    qc = _extraction_qc(t1w, mask, template_file, template_mask_file, reg.warped_file)
    affine = tuple(f for f in reg.from_moving_to_fixed if f.endswith(".mat"))
    return BrainExtraction(
        brain_file=brain_file,
        mask_file=mask_file,
        from_template_to_t1w=reg.from_fixed_to_moving,
        from_t1w_to_template=reg.from_moving_to_fixed,
        affine_t1w_to_template=affine,
        qc=qc,
    )


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
