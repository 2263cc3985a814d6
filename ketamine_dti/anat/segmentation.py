"""T1w tissue segmentation (CSF / GM / WM probabilities) with ANTs Atropos and template priors.

The GM and CSF probabilities are later warped into each session's DWI grid to keep the ROI
statistics in gray matter (see ``ketamine_dti.rois.GrayMatterRule``). Intensity alone is not
enough on real scans: the amygdala and much of the medial temporal lobe have WM-like T1w
intensity, and on the real Prisma MPRAGE a k-means Atropos gave GM 464 ml against WM 722 ml and
a median GM probability of 0.13-0.21 in the amygdalae. Template tissue priors moved into the
subject template (as antsAtroposN4 / antsCorticalThickness do, weight 0.25) give GM 693 ml,
WM 490 ml and 0.74-0.75 there.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ketamine_dti.anat.morphology import bounding_box
from ketamine_dti.ants_backend import (
    WORK_EXTENSION,
    PathLike,
    apply_transforms,
    itk_threads,
    load_image,
    save_like,
)
from ketamine_dti.errors import InputError

LOGGER = logging.getLogger(__name__)

#: Tissue classes in increasing T1w intensity (the order Atropos' k-means finds them in).
TISSUE_NAMES: tuple[str, ...] = ("csf", "gm", "wm")
#: Atropos outer iterations: the EM converges in a few on a bias-corrected T1w.
ATROPOS_ITERATIONS: int = 3
#: Markov-random-field smoothing weight (ANTs' brain-extraction default 0.1): mild, keeps the
#: thin cortical ribbon.
ATROPOS_MRF_WEIGHT: float = 0.1
#: Weight of the template tissue priors against the T1w's own intensities (antsAtroposN4's and
#: antsCorticalThickness' default): enough to call the amygdala GM, little enough that the
#: subject's own cortical ribbon wins where the SyN registration is a voxel off.
PRIOR_WEIGHT: float = 0.25
#: mm. Gaussian smoothing of the priors once in the subject template: the registration to MNI is
#: good to a few mm in cortex, so a sharp prior would paint the template's sulci onto the subject.
PRIOR_SMOOTHING_MM: float = 1.0


@dataclass(frozen=True)
class TissueProbabilities:
    """Tissue probability maps (float32, [0, 1], T1w grid) and a hard segmentation."""

    csf_file: str
    gm_file: str
    wm_file: str
    dseg_file: str  # uint8: 1 = CSF, 2 = GM, 3 = WM, 0 outside the mask


def order_by_intensity(
    image: np.ndarray, probabilities: list[np.ndarray], mask: np.ndarray
) -> list[np.ndarray]:
    """Sort class probability maps by their mean T1w intensity (CSF < GM < WM)."""
    means = []
    for prob in probabilities:
        weights = prob[mask]
        means.append(float((weights * image[mask]).sum() / max(weights.sum(), 1e-12)))
    return [probabilities[i] for i in np.argsort(means)]


#: Voxels kept around the brain mask's box: the MRF neighbourhood (1) plus one, so cropping
#: changes no probability (checked: identical maps on a 1 mm standard participant, whose box
#: holds 47% of the volume; Atropos 73 -> ~45 s).
BOX_MARGIN_VOXELS: int = 2
#: Voxels kept beyond that for the priors, so their smoothing (PRIOR_SMOOTHING_MM) sees the
#: same neighbourhood as on the whole grid at the mask (4 sigma at 1 mm voxels).
PRIOR_BOX_MARGIN_VOXELS: int = 6


def segment_tissues(
    t1w_brain_file: PathLike,
    mask_file: PathLike,
    out_dir: PathLike,
    *,
    priors: Sequence[PathLike] | None = None,
    prior_transforms: Sequence[str] = (),
    prior_weight: float = PRIOR_WEIGHT,
    n_iterations: int = ATROPOS_ITERATIONS,
    mrf_weight: float = ATROPOS_MRF_WEIGHT,
    n_threads: int | None = None,
) -> TissueProbabilities:
    """Three-class Atropos inside the brain mask, run on the mask's bounding box.

    ``priors``: CSF, GM and WM probability maps, moved onto the T1w by ``prior_transforms``
    (ANTs order; empty if they are on the T1w's grid) with ``warp_priors``, used as Atropos'
    initialisation and prior (``prior_weight``); without them, k-means initialisation and
    intensity alone (the template's own priors are made that way). Writes
    ``tissue_{csf,gm,wm}_probseg.nii`` and ``tissue_dseg.nii.gz`` in ``out_dir`` on the
    T1w's grid. Atropos runs with a constant internal seed (``use-random-seed 0``), so it is
    repeatable.
    """
    import ants

    image = load_image(t1w_brain_file)
    mask = load_image(mask_file).numpy() > 0
    if mask.sum() == 0:
        raise InputError(f"{mask_file}: brain mask is empty; check the brain extraction")
    if priors is not None and len(priors) != len(TISSUE_NAMES):
        raise ValueError(f"priors: expected {len(TISSUE_NAMES)} maps (CSF, GM, WM)")
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    wide = bounding_box(mask, BOX_MARGIN_VOXELS + PRIOR_BOX_MARGIN_VOXELS)
    box = tuple(
        slice(b.start - w.start, b.stop - w.start)
        for b, w in zip(bounding_box(mask, BOX_MARGIN_VOXELS), wide, strict=True)
    )
    wide_image = _crop(image, wide)
    initialisation = f"Kmeans[{len(TISSUE_NAMES)}]"
    if priors is not None:
        box_file = out_dir / f"brain_box{WORK_EXTENSION}"
        wide_file = save_like(wide_image, wide_image.numpy(), box_file)
        moved = warp_priors(
            priors, wide_file, prior_transforms, out_dir / "priors", n_threads=n_threads
        )
        initialisation = [_crop(load_image(p), box) for p in moved]
    box_image = _crop(wide_image, box)
    box_mask = box_image.new_image_like(mask[wide][box].astype(np.float32))
    # only the box goes into Atropos, whose peak is the step's: the whole-grid images wait on
    # disk (two segmentations at once set the peak memory of a multi-participant run)
    del image, wide_image
    # antspyx's atropos writes its probability files to tempfile's folder and leaves them
    # there: point it at a scratch folder of ours that is removed afterwards
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        previous, tempfile.tempdir = tempfile.tempdir, scratch
        try:
            with itk_threads(n_threads):
                result = ants.atropos(
                    a=box_image,
                    x=box_mask,
                    i=initialisation,
                    m=f"[{mrf_weight},1x1x1]",
                    c=f"[{n_iterations},0]",
                    priorweight=prior_weight,
                    r=0,
                )
        finally:
            tempfile.tempdir = previous
        inside = box_mask.numpy() > 0
        probabilities = [p.numpy() * inside for p in result["probabilityimages"]]
    probabilities = order_by_intensity(box_image.numpy(), probabilities, inside)
    total = np.sum(probabilities, axis=0)
    total[total == 0] = 1.0
    full_box = tuple(
        slice(w.start + b.start, w.start + b.stop) for w, b in zip(wide, box, strict=True)
    )
    image = load_image(t1w_brain_file)  # the grid to write on
    files = {}
    maps = []
    for name, prob in zip(TISSUE_NAMES, probabilities, strict=True):
        full = np.zeros(mask.shape, np.float32)
        full[full_box] = prob / total * inside
        maps.append(full[full_box])
        files[name] = save_like(image, full, out_dir / f"tissue_{name}_probseg{WORK_EXTENSION}")
    # labelled inside the box only: the mask lies within it, and outside it every map is 0
    dseg = np.zeros(mask.shape, np.uint8)
    dseg[full_box] = np.argmax(np.stack(maps), axis=0) + 1
    dseg *= mask
    dseg_file = save_like(image, dseg, out_dir / "tissue_dseg.nii.gz", "unsigned char")
    volumes = {n: float((dseg == i + 1).sum()) for i, n in enumerate(TISSUE_NAMES)}
    LOGGER.info("tissue voxels: %s", volumes)
    return TissueProbabilities(files["csf"], files["gm"], files["wm"], dseg_file)


def _crop(image, box: tuple[slice, ...]):
    """An ANTs image cut to ``box`` (voxel slices), with its world position kept."""
    import ants

    return ants.crop_indices(image, [b.start for b in box], [b.stop for b in box])


def warp_priors(
    prior_files: Sequence[PathLike],
    reference_file: PathLike,
    transforms: Sequence[str],
    out_dir: PathLike,
    *,
    smoothing_mm: float = PRIOR_SMOOTHING_MM,
    n_threads: int | None = None,
) -> list[str]:
    """Template tissue priors (CSF, GM, WM) moved onto the T1w grid, smoothed and renormalised.

    Returns ``prior_{csf,gm,wm}.nii`` in ``out_dir``: each voxel's priors sum to 1 where
    any is positive (0 outside the template's brain).
    """
    import ants

    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    maps = []
    for name, prior_file in zip(TISSUE_NAMES, prior_files, strict=True):
        out_file = out_dir / f"prior_{name}{WORK_EXTENSION}"
        apply_transforms(prior_file, reference_file, transforms, out_file, n_threads=n_threads)
        image = ants.image_read(str(out_file))
        if smoothing_mm > 0:
            image = ants.smooth_image(image, smoothing_mm, sigma_in_physical_coordinates=True)
        maps.append(image)
    data = np.clip(np.stack([m.numpy() for m in maps]), 0.0, None)
    total = data.sum(axis=0)
    data = np.divide(data, total, out=np.zeros_like(data), where=total > 1e-6)
    files = []
    for name, image, prior in zip(TISSUE_NAMES, maps, data, strict=True):
        files.append(save_like(image, prior, out_dir / f"prior_{name}{WORK_EXTENSION}"))
    return files
