"""Each participant's true regions: parcellations the pipeline does not use, moved locally.

Why: the pipeline measures each ROI with its ``ketamine7`` atlas (Harvard-Oxford and Talairach
labels on MNI152). Planting the regional MD in those same labels would make "ROI accuracy"
measure the registration of that atlas to itself. The true regions are therefore:

1. drawn by others on another brain: AAL's amygdala and hippocampus and MRIcron's Brodmann
   BA10 and ventral ACC (BA25 + pregenual BA24/32), all on Colin27 (bundled
   ``data/simulator/truth_regions_res-01_dseg.nii.gz``, built by
   ``scripts/build_truth_regions.py``; rules in ``ketamine_dti/data/README.md``);
2. moved per participant by a smooth random displacement of their boundaries
   (:func:`perturb_labels`), a few mm, which no atlas and no registration can know. It is drawn
   from its own random stream (:data:`BOUNDARY_STREAM`), so every other draw of a participant
   stays as it was, and it comes on top of the anatomy's warp, which moves tissue and regions
   together.

Frames: the labels' world mm (Colin27 in MNI space) are used as template mm, like every other
template in the simulator (see :mod:`anatomy`). Arrays in, arrays out; the only file read is
the bundled label image.
"""

from __future__ import annotations

import functools
import logging
from importlib import resources

import nibabel as nib
import numpy as np
from scipy import ndimage

from ketamine_dti.simulate import anatomy

LOGGER = logging.getLogger(__name__)

#: The bundled true regions (labels 1..7 in ketamine_dti.rois.ROI_NAMES order), 1 mm.
REGIONS_FILE = "truth_regions_res-01_dseg.nii.gz"
#: Third seed word of the participant's boundary displacement (bids_writer's streams: 1 head,
#: 2 fieldmap noise).
BOUNDARY_STREAM = 3
#: Boundary displacement: white noise on a grid every BOUNDARY_SPACING_MM, Gaussian-smoothed at
#: BOUNDARY_SMOOTHING_MM (about a gyrus, far shorter than the anatomy's 18 mm warp, so the shift
#: varies along one region's border), scaled to an RMS of BOUNDARY_RMS_MM per component (2.6 mm
#: as a vector, at most ~7 mm): areal borders of one name differ between brains by several mm
#: even after nonlinear registration. Over 12 draws the moved regions keep a Dice of 0.69-0.81
#: (amygdala .. BA10) with the bundled ones and their volume varies by 6-17% (SD).
BOUNDARY_SPACING_MM = 2.0
BOUNDARY_SMOOTHING_MM = 8.0
BOUNDARY_RMS_MM = 1.5
#: The label box grows by this many RMS on each side, so a region can move out of it.
BOUNDARY_MARGIN_RMS = 4.0


@functools.lru_cache(maxsize=1)
def load_regions() -> tuple[np.ndarray, np.ndarray]:
    """The bundled true-region labels (uint8, cropped box) and their affine (template mm)."""
    path = resources.files("ketamine_dti") / "data" / "simulator" / REGIONS_FILE
    with resources.as_file(path) as local:
        image = nib.load(local)
        labels = np.asarray(image.dataobj, dtype=np.uint8)
    return labels, image.affine.copy()


def boundary_displacement(
    shape: tuple[int, int, int],
    voxel_mm: float,
    rng: np.random.Generator,
    rms_mm: float = BOUNDARY_RMS_MM,
    smoothing_mm: float = BOUNDARY_SMOOTHING_MM,
) -> np.ndarray:
    """A smooth random displacement (3, *shape) float32 in mm over a grid of ``voxel_mm``."""
    extent_mm = np.array(shape) * voxel_mm
    n_points = np.ceil(extent_mm / BOUNDARY_SPACING_MM).astype(int) + 1
    noise = rng.standard_normal((3, *n_points))
    sigma = smoothing_mm / BOUNDARY_SPACING_MM
    field = np.stack([ndimage.gaussian_filter(c, sigma, mode="wrap") for c in noise])
    field *= rms_mm / field.reshape(3, -1).std(axis=1).reshape(3, 1, 1, 1)
    where = np.indices(shape, dtype=np.float32).reshape(3, -1) * (voxel_mm / BOUNDARY_SPACING_MM)
    return np.stack(
        [ndimage.map_coordinates(c, where, order=1).reshape(shape) for c in field]
    ).astype(np.float32)


def perturb_labels(
    labels: np.ndarray,
    affine: np.ndarray,
    rng: np.random.Generator,
    rms_mm: float = BOUNDARY_RMS_MM,
    smoothing_mm: float = BOUNDARY_SMOOTHING_MM,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels pulled through a smooth random displacement: ``new(p) = old(p + u(p))``.

    The box is padded by BOUNDARY_MARGIN_RMS x ``rms_mm`` first. Returns the new labels, their
    affine and the displacement u (3, ...) in mm. Nearest neighbour: labels stay labels.
    """
    voxel_mm = float(np.abs(np.diag(affine)[:3]).mean())
    margin = int(np.ceil(BOUNDARY_MARGIN_RMS * rms_mm / voxel_mm))
    padded = np.pad(labels, margin)
    padded_affine = affine.copy()
    padded_affine[:3, 3] = affine[:3, :3] @ np.full(3, -margin) + affine[:3, 3]
    shift = boundary_displacement(padded.shape, voxel_mm, rng, rms_mm, smoothing_mm)
    steps = np.einsum("ij,j...->i...", np.linalg.inv(affine[:3, :3]), shift)  # mm -> voxels
    source = np.indices(padded.shape, dtype=np.float32) + steps
    index = np.rint(source).astype(np.int64)
    inside = np.all((index >= 0) & (index < np.array(padded.shape).reshape(3, 1, 1, 1)), axis=0)
    moved = np.zeros_like(padded)
    moved[inside] = padded[tuple(i[inside] for i in index)]
    return moved, padded_affine, shift


def participant_regions(
    rng: np.random.Generator, names: tuple[str, ...]
) -> tuple[anatomy.RoiAtlas, dict]:
    """One participant's true regions (labels 1.. = ``names``, with their MD reach maps) and a
    record for the truth: the displacement's random stream, its realised RMS and maximum (mm),
    and per region the volume ratio and the Dice with the unmoved region (template space).
    """
    labels, affine = load_regions()
    moved, moved_affine, shift = perturb_labels(labels, affine, rng)
    margin = (moved.shape[0] - labels.shape[0]) // 2
    before = np.pad(labels, margin)
    length = np.sqrt((shift**2).sum(axis=0))
    record = {
        "random_stream": BOUNDARY_STREAM,
        "realised_rms_mm": round(float(np.sqrt((shift**2).mean(axis=(1, 2, 3))).mean()), 3),
        "realised_max_mm": round(float(length.max()), 3),
        "per_region": {},
    }
    for k, name in enumerate(names, start=1):
        old, new = before == k, moved == k
        record["per_region"][name] = {
            "volume_ratio": round(float(new.sum() / max(old.sum(), 1)), 4),
            "dice_with_bundled": round(float(2 * (old & new).sum() / (old.sum() + new.sum())), 4),
        }
    atlas = anatomy.RoiAtlas.from_labels(moved, moved_affine, len(names))
    return atlas, record
