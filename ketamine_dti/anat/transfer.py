"""The ROI atlas and tissue fractions moved into the subject template, and the template's
ROI samples moved onto each session's native DWI grid.

The MD map never moves. Each ROI is one set of subject-template points (the atlas moved into
the template once, ``atlas_to_grid``), chosen from the template's tissue fractions over the
footprint of the DWI voxel that will hold each point (``containing_voxel_fraction``); every
session maps the same points into its DWI grid (``template_to_dwi_points``) and reads the
voxel each falls in, so every session averages the same tissue (issue 13).

Tissue fractions come from the hard segmentation (each T1w voxel counted as one tissue), not
from averaged posterior probabilities: Atropos posteriors are not volume fractions, and on the
real Prisma scan (2 mm T1w, 3 mm DWI) they leave a CSF floor of 0.03-0.1 everywhere, so no ROI
voxel passed a 5% CSF rule (0-5% of each ROI kept, against 42-77% from the hard labels).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ketamine_dti.anat.morphology import bounding_box
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


def atlas_to_grid(
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
    """Bring a template-space dseg onto a reference grid (``transforms``: from-MNI_to-grid).

    ``fraction`` (default): every label's one-hot map is smoothed to the grid voxel's footprint
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
        raise InputError(f"{reference_file}: reference grid not found")
    reference = read_grid(reference_file)  # a series: the grid of its first volume
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
        box = _reached_box(atlas, stem, resample) if crop else None
        if box is not None:  # the stack is resampled onto the reference voxels it can reach
            resample["reference_file"] = f"{stem}_reference_box.nii.gz"
            ants.image_write(
                ants.crop_indices(reference, [b.start for b in box], [b.stop for b in box]),
                resample["reference_file"],
            )
        warped_file = f"{stem}_fractions.nii.gz"
        apply_transforms(
            stack_file, out_file=warped_file, interpolation="linear", image_type=3, **resample
        )
        fractions = ants.image_read(warped_file).numpy()
        labels = np.zeros(reference.shape, np.int16)
        inside = box if box is not None else ...
        labels[inside] = labels_from_fractions(fractions, label_values, min_fraction)
    return save_like(reference, labels, out_file, dtype)


def _reached_box(atlas, stem: Path, resample: dict) -> tuple[slice, ...] | None:
    """The reference voxels (bounding box, one voxel of margin) that the cropped atlas grid
    maps onto: beyond them every fraction is 0, so the 4-D stack need not be resampled there.
    On a 1 mm subject template the full-grid stack made the step peak at 2.75 GB."""
    import ants

    support = atlas.new_image_like(np.ones(atlas.shape, np.float32))
    support_file = f"{stem}_atlas_support.nii.gz"
    ants.image_write(support, support_file)
    reached_file = f"{stem}_atlas_support_reached.nii.gz"
    apply_transforms(support_file, out_file=reached_file, interpolation="linear", **resample)
    return bounding_box(ants.image_read(reached_file).numpy() > 0, 1)


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

    sigma = footprint_sigma_voxels(atlas.spacing, reference.spacing)
    box = bounding_box(labels != 0, int(np.ceil(4.0 * float(np.max(sigma)))) + 2)
    if box is None:
        return atlas
    return ants.crop_indices(atlas, [b.start for b in box], [b.stop for b in box])


def _direction_4d(direction: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = direction
    return out


def footprint_sigma_voxels(
    source_spacing: Sequence[float], target_spacing: Sequence[float], boxes: int = 1
) -> np.ndarray:
    """Gaussian sigma (in source voxels, per source axis) that turns point samples of a
    source-grid map into means over a target voxel.

    A box of width w has variance w^2/12; the target voxel is taken as an isotropic cube of
    its geometric-mean size (grids may be rotated against each other), so the added variance
    is (w_target^2 - w_source^2) / 12, zero if the source is coarser. ``boxes=2``: the mean
    over the target voxel that *contains* a point, wherever the grid falls (the voxel's centre
    is uniform within a box around the point: box * box, variance 2 w^2/12).
    """
    source = np.asarray(source_spacing, dtype=float)
    width = float(np.prod(np.asarray(target_spacing, dtype=float)[:3]) ** (1.0 / 3.0))
    variance = np.clip(boxes * width**2 - source[:3] ** 2, 0.0, None) / 12.0
    return np.sqrt(variance) / source[:3]


def containing_voxel_fraction(
    indicator: np.ndarray, spacing: Sequence[float], dwi_voxel_mm: Sequence[float]
) -> np.ndarray:
    """Expected share of a tissue in the DWI voxel that holds each point of a template grid.

    ``indicator``: the tissue's hard labels (0/1) on the template grid (``spacing`` mm). The
    DWI grid's placement differs between sessions, so the rule that keeps a point must not
    depend on it: it reads the fraction averaged over every placement (``boxes=2``).
    """
    from scipy import ndimage

    sigma = footprint_sigma_voxels(spacing, dwi_voxel_mm, boxes=2)
    data = np.asarray(indicator, dtype=np.float32)
    return np.clip(ndimage.gaussian_filter(data, sigma, mode="constant"), 0.0, 1.0)


def linear_point_map(transforms: Sequence[str]) -> np.ndarray:
    """A from-X_to-Y list of affine ``.mat`` files as one 4x4 RAS+ map of points Y -> X."""
    from ketamine_dti.ants_backend import affine_to_matrix

    lps = np.eye(4)
    for transform in transforms:  # a Y point meets the list's first file first
        if not str(transform).endswith(".mat"):
            raise ValueError(f"{transform}: the ROI samples follow affine .mat steps only")
        lps = affine_to_matrix(transform) @ lps
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip


def dwi_to_template_map(from_dwi_to_template: str) -> np.ndarray:
    """4x4 RAS+ map of points DWI -> template from one from-dwi_to-template affine ``.mat``
    (which, as a resampling transform, maps template points to DWI points)."""
    return np.linalg.inv(linear_point_map([from_dwi_to_template]))


def values_at_voxels(
    volume: np.ndarray,
    volume_affine: np.ndarray,
    voxels: np.ndarray,
    grid_affine: np.ndarray,
    grid_to_volume: np.ndarray,
) -> np.ndarray:
    """``volume`` read at the centres of a grid's ``voxels`` (N x 3 indices), trilinear, 0
    outside it; ``grid_to_volume``: 4x4 RAS+ map of points grid -> volume."""
    from scipy import ndimage

    to_volume_voxel = np.linalg.inv(volume_affine) @ np.asarray(grid_to_volume) @ grid_affine
    homogeneous = np.c_[np.asarray(voxels, dtype=float), np.ones(len(voxels))]
    coordinates = (homogeneous @ to_volume_voxel.T)[:, :3]
    return ndimage.map_coordinates(
        np.asarray(volume, dtype=np.float32), coordinates.T, order=1, cval=0.0
    )


def template_to_dwi_points(
    indices: np.ndarray,
    template_affine: np.ndarray,
    from_template_to_dwi: Sequence[str],
    dwi_affine: np.ndarray,
    dwi_shape: Sequence[int],
) -> np.ndarray:
    """Flat index of the DWI voxel holding each template voxel centre (N x 3 ``indices``;
    -1 outside the DWI grid). ``from_template_to_dwi``: the transform list that resamples a
    template image onto the DWI grid (it maps DWI points to template points)."""
    dwi_to_template = linear_point_map(from_template_to_dwi)
    to_voxel = np.linalg.inv(dwi_affine) @ np.linalg.inv(dwi_to_template) @ template_affine
    homogeneous = np.c_[np.asarray(indices, dtype=float), np.ones(len(indices))]
    voxel = np.rint(homogeneous @ to_voxel.T)[:, :3].astype(np.int64)
    shape = np.asarray(dwi_shape[:3])
    inside = np.all((voxel >= 0) & (voxel < shape), axis=1)
    flat = np.full(len(voxel), -1, dtype=np.int64)
    flat[inside] = np.ravel_multi_index(tuple(voxel[inside].T), tuple(shape))
    return flat


def majority_labels(
    voxel: np.ndarray, labels: np.ndarray, grid_size: int, min_count: float = 1.0
) -> np.ndarray:
    """Label of each voxel of a flat grid from the labelled points it holds: the most
    frequent label if it has at least ``min_count`` points, else 0."""
    voxel, labels = np.asarray(voxel), np.asarray(labels, dtype=np.int64)
    hit = voxel >= 0
    n_labels = int(labels.max(initial=0)) + 1
    counts = np.bincount(
        voxel[hit] * n_labels + labels[hit], minlength=grid_size * n_labels
    ).reshape(grid_size, n_labels)
    counts[:, 0] = 0
    best = counts.argmax(axis=1)
    return np.where(counts[np.arange(grid_size), best] >= min_count, best, 0)


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
