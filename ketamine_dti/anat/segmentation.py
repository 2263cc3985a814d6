"""T1w tissue segmentation (CSF / GM / WM probabilities) with ANTs Atropos.

The GM and CSF probabilities are later warped into each session's DWI grid to keep the ROI
statistics in gray matter (see ``ketamine_dti.rois.GrayMatterRule``).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ketamine_dti.ants_backend import PathLike, itk_threads, load_image, save_like
from ketamine_dti.errors import InputError

LOGGER = logging.getLogger(__name__)

#: Tissue classes in increasing T1w intensity (the order Atropos' k-means finds them in).
TISSUE_NAMES: tuple[str, ...] = ("csf", "gm", "wm")
#: Atropos outer iterations: the EM converges in a few on a bias-corrected T1w.
ATROPOS_ITERATIONS: int = 3
#: Markov-random-field smoothing weight (ANTs' brain-extraction default 0.1): mild, keeps the
#: thin cortical ribbon.
ATROPOS_MRF_WEIGHT: float = 0.1


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


def segment_tissues(
    t1w_brain_file: PathLike,
    mask_file: PathLike,
    out_dir: PathLike,
    *,
    n_iterations: int = ATROPOS_ITERATIONS,
    mrf_weight: float = ATROPOS_MRF_WEIGHT,
    n_threads: int | None = None,
) -> TissueProbabilities:
    """Three-class Atropos (k-means initialisation) inside the brain mask.

    Writes ``tissue_{csf,gm,wm}_probseg.nii.gz`` and ``tissue_dseg.nii.gz`` in ``out_dir``.
    Atropos runs with a constant internal seed (``use-random-seed 0``), so it is repeatable.
    """
    import ants

    image = load_image(t1w_brain_file)
    mask_image = load_image(mask_file)
    mask = mask_image.numpy() > 0
    if mask.sum() == 0:
        raise InputError(f"{mask_file}: brain mask is empty; check the brain extraction")
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    # antspyx's atropos writes its probability files to tempfile's folder and leaves them
    # there: point it at a scratch folder of ours that is removed afterwards
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        previous, tempfile.tempdir = tempfile.tempdir, scratch
        try:
            with itk_threads(n_threads):
                result = ants.atropos(
                    a=image,
                    x=mask_image.clone("float"),
                    i=f"Kmeans[{len(TISSUE_NAMES)}]",
                    m=f"[{mrf_weight},1x1x1]",
                    c=f"[{n_iterations},0]",
                    r=0,
                )
        finally:
            tempfile.tempdir = previous
        probabilities = [p.numpy() * mask for p in result["probabilityimages"]]
    probabilities = order_by_intensity(image.numpy(), probabilities, mask)
    total = np.sum(probabilities, axis=0)
    total[total == 0] = 1.0
    probabilities = [p / total * mask for p in probabilities]

    files = {
        name: save_like(image, prob, out_dir / f"tissue_{name}_probseg.nii.gz")
        for name, prob in zip(TISSUE_NAMES, probabilities, strict=True)
    }
    dseg = (np.argmax(np.stack(probabilities), axis=0) + 1) * mask
    dseg_file = save_like(image, dseg, out_dir / "tissue_dseg.nii.gz", "unsigned char")
    volumes = {n: float((dseg == i + 1).sum()) for i, n in enumerate(TISSUE_NAMES)}
    LOGGER.info("tissue voxels: %s", volumes)
    return TissueProbabilities(files["csf"], files["gm"], files["wm"], dseg_file)
