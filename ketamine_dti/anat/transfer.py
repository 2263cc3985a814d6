"""Atlas labels and tissue fractions moved onto a session's native DWI grid.

The MD map never moves: the template-space atlas and the subject-template tissue segmentation
are resampled once onto the DWI grid, each smoothed first to the DWI voxel's footprint so that a
DWI voxel gets the fraction of each label or tissue it contains (partial volume is what biases
MD). Tissue fractions come from the hard segmentation (each T1w voxel counted as one tissue),
not from averaged posterior probabilities: Atropos posteriors are not volume fractions, and on
the real Prisma scan (2 mm T1w, 3 mm DWI) they leave a CSF floor of 0.03-0.1 everywhere, so no
ROI voxel passed a 5% CSF rule (0-5% of each ROI kept, against 42-77% from the hard labels).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ketamine_dti.ants_backend import apply_transforms, load_image, read_grid, save_like
from ketamine_dti.errors import InputError

#: Fraction of a DWI voxel (linear-interpolation weight of the one-hot map) that must belong to
#: one label for the voxel to take it: majority rule, no voxel in two ROIs.
LABEL_FRACTION_MIN: float = 0.5


def one_hot(labels: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Stack of float32 indicator maps, shape ``(*labels.shape, len(label_values))``."""
    labels = np.asarray(labels)
    return np.stack([(labels == v) for v in label_values], axis=-1).astype(np.float32)


def labels_from_fractions(
    fractions: np.ndarray,
    label_values: Sequence[int] | None = None,
    min_fraction: float = LABEL_FRACTION_MIN,
) -> np.ndarray:
    """Hard labels from resampled one-hot maps, shape ``(*grid, n_labels)``.

    A voxel takes the label with the largest fraction if that fraction is at least
    ``min_fraction``, else 0. ``label_values`` (default 1..n_labels) gives each map's label.
    """
    fractions = np.asarray(fractions, dtype=float)
    n_labels = fractions.shape[-1]
    values = np.arange(1, n_labels + 1) if label_values is None else np.asarray(label_values)
    if values.size != n_labels:
        raise ValueError(f"{values.size} label values for {n_labels} fraction maps")
    best = np.argmax(fractions, axis=-1)
    best_fraction = np.take_along_axis(fractions, best[..., None], axis=-1)[..., 0]
    out = np.where(best_fraction >= min_fraction, values[best], 0)
    return out.astype(np.int16)


def atlas_to_dwi(
    atlas_file: str | os.PathLike,
    reference_file: str | os.PathLike,
    transforms: Sequence[str],
    out_file: str | os.PathLike,
    *,
    method: str = "fraction",
    min_fraction: float = LABEL_FRACTION_MIN,
    crop: bool = True,
    n_threads: int | None = None,
) -> str:
    """Bring a template-space dseg onto a session's DWI grid (``transforms``: from-MNI_to-DWI).

    ``fraction`` (default): every label's one-hot map is smoothed to the DWI voxel's footprint
    (``footprint_sigma_voxels``; nothing if the atlas is as coarse) and resampled with linear
    interpolation (one 4-D call); ``labels_from_fractions`` then keeps a label where it covers
    at least ``min_fraction`` of the DWI voxel: partial-volume aware, and smoother than
    nearest neighbour at the coarser DWI resolution. ``nearest``: ANTs ``genericLabel`` instead.
    ``crop`` stacks only the labels' bounding box (same labels, a fraction of the memory).
    Writes a uint8 (int16 if needed) dseg on the reference grid; returns its path.
    """
    import ants

    if method not in ("fraction", "nearest"):
        raise ValueError(f"method must be 'fraction' or 'nearest', not {method!r}")
    out_file = Path(out_file).absolute()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    atlas = load_image(atlas_file)
    if not Path(reference_file).exists():
        raise InputError(f"{reference_file}: DWI reference not found; pass the mean b0")
    reference = read_grid(reference_file)  # a DWI series: the grid of its first volume
    stem = out_file.parent / out_file.name.split(".")[0]
    reference_3d = f"{stem}_reference.nii.gz"
    ants.image_write(reference, reference_3d)
    atlas_labels = np.rint(atlas.numpy()).astype(np.int64)
    label_values = [int(v) for v in np.unique(atlas_labels) if v != 0]
    dtype = "unsigned char" if max(label_values, default=0) < 256 else "short"
    resample = {"reference_file": reference_3d, "transforms": transforms, "n_threads": n_threads}
    if method == "nearest":
        apply_transforms(atlas_file, out_file=out_file, interpolation="genericLabel", **resample)
        labels = np.rint(ants.image_read(str(out_file)).numpy())
    else:
        # only the labels' bounding box (plus the smoothing reach) is stacked: the one-hot
        # stack of a whole 1 mm template took ~2.3 GB per session
        if crop:
            atlas = _crop_to_labels(atlas, atlas_labels, reference)
            atlas_labels = np.rint(atlas.numpy()).astype(np.int64)
        stack_file = _write_footprint_stack(atlas, atlas_labels, label_values, reference, stem)
        warped_file = f"{stem}_fractions.nii.gz"
        apply_transforms(
            stack_file, out_file=warped_file, interpolation="linear", image_type=3, **resample
        )
        fractions = ants.image_read(warped_file).numpy()
        labels = labels_from_fractions(fractions, label_values, min_fraction)
    return save_like(reference, labels, out_file, dtype)


def _write_footprint_stack(atlas, atlas_labels, label_values, reference, stem: Path) -> str:
    """The labels' one-hot maps as one 4-D image smoothed to the DWI footprint; its path."""
    import ants

    stack = ants.from_numpy(
        one_hot(atlas_labels, label_values),
        origin=(*atlas.origin, 0.0),
        spacing=(*atlas.spacing, 1.0),
        direction=_direction_4d(atlas.direction),
    )
    stack = _smooth_to_footprint(stack, reference)
    stack_file = f"{stem}_onehot.nii.gz"
    ants.image_write(stack, stack_file)
    return stack_file


def _crop_to_labels(atlas, labels: np.ndarray, reference):
    """The atlas cropped to its labelled voxels, with a margin the footprint smoothing and
    linear interpolation cannot see past (zeros outside stay zeros)."""
    import ants

    inside = np.argwhere(labels != 0)
    if inside.size == 0:
        return atlas
    sigma = footprint_sigma_voxels(atlas.spacing, reference.spacing)
    margin = int(np.ceil(4.0 * float(np.max(sigma)))) + 2
    lower = np.maximum(inside.min(axis=0) - margin, 0)
    upper = np.minimum(inside.max(axis=0) + margin + 1, labels.shape)
    return ants.crop_indices(atlas, lower.tolist(), upper.tolist())


def _direction_4d(direction: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = direction
    return out


def footprint_sigma_voxels(
    source_spacing: Sequence[float], target_spacing: Sequence[float]
) -> np.ndarray:
    """Gaussian sigma (in source voxels, per source axis) that turns point samples of a
    source-grid map into means over a target voxel.

    A box of width w has variance w^2/12; the target voxel is taken as an isotropic cube of
    its geometric-mean size (grids may be rotated against each other), so the added variance
    is (w_target^2 - w_source^2) / 12, zero if the source is coarser.
    """
    source = np.asarray(source_spacing, dtype=float)
    width = float(np.prod(np.asarray(target_spacing, dtype=float)[:3]) ** (1.0 / 3.0))
    variance = np.clip(width**2 - source[:3] ** 2, 0.0, None) / 12.0
    return np.sqrt(variance) / source[:3]


def _smooth_to_footprint(image, reference):
    """An ANTs image smoothed (per 3-D volume) to the reference voxel's footprint."""
    from scipy import ndimage

    sigma = footprint_sigma_voxels(image.spacing, reference.spacing)
    if not np.any(sigma > 0):
        return image
    data = image.numpy()
    full_sigma = (*sigma, 0.0) if data.ndim == 4 else tuple(sigma)
    smoothed = ndimage.gaussian_filter(data, full_sigma, mode="constant")
    return image.new_image_like(smoothed.astype(np.float32))


def warp_tissue_fraction(
    dseg_file: str | os.PathLike,
    label: int,
    reference_file: str | os.PathLike,
    transforms: Sequence[str],
    out_file: str | os.PathLike,
    *,
    n_threads: int | None = None,
) -> str:
    """Fraction of each DWI voxel that the T1w segmentation ``dseg_file`` labels ``label``:
    the label's indicator map, averaged over the DWI voxel's footprint (``warp_probability``)."""
    import ants

    dseg = ants.image_read(str(dseg_file))
    indicator_file = Path(out_file).parent / ("indicator_" + Path(out_file).name)
    save_like(dseg, np.rint(dseg.numpy()) == label, indicator_file)
    return warp_probability(
        indicator_file, reference_file, transforms, out_file, n_threads=n_threads
    )


def warp_probability(
    prob_file: str | os.PathLike,
    reference_file: str | os.PathLike,
    transforms: Sequence[str],
    out_file: str | os.PathLike,
    *,
    footprint: bool = True,
    n_threads: int | None = None,
) -> str:
    """Resample a tissue probability map onto the DWI grid, clipped to [0, 1].

    With ``footprint`` the map is first smoothed to the DWI voxel's size
    (``footprint_sigma_voxels``), so each DWI voxel gets the tissue *fraction* it contains,
    not the probability at its centre: partial volume is what biases MD.
    """
    import ants

    source_file = prob_file
    if footprint:
        image = ants.image_read(str(prob_file))
        reference = ants.image_read(str(reference_file))
        source_file = Path(out_file).parent / ("footprint_" + Path(out_file).name)
        ants.image_write(_smooth_to_footprint(image, reference), str(source_file))
    apply_transforms(source_file, reference_file, transforms, out_file, n_threads=n_threads)
    image = ants.image_read(str(out_file))
    ants.image_write(image.new_image_like(np.clip(image.numpy(), 0.0, 1.0)), str(out_file))
    return str(Path(out_file).absolute())
