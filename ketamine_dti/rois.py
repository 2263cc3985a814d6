"""The seven gray-matter regions of Kopelman et al. (2023), and regional MD statistics.

Statistics are computed in each session's native DWI grid on MD maps that were never
resampled: only the atlas labels and tissue probabilities move (``atlas_to_dwi``,
``warp_probability``). Inside each atlas ROI, voxels that are not gray matter are dropped by
``GrayMatterRule`` (documented below), and the number of voxels kept is reported.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ketamine_dti.errors import InputError

LOGGER = logging.getLogger(__name__)

#: ROI names, in atlas index order (index = position + 1). The group stage relies on them.
ROI_NAMES: tuple[str, ...] = (
    "ba10_left",
    "ba10_right",
    "amygdala_left",
    "amygdala_right",
    "hippocampus_left",
    "hippocampus_right",
    "vacc",
)

#: Columns of the regional statistics table (MD in mm^2/s, FA unitless, counts in voxels).
STAT_COLUMNS: tuple[str, ...] = (
    "roi",
    "index",
    "md_mean",
    "md_median",
    "md_std",
    "n_voxels",
    "n_voxels_atlas",
    "fa_mean",
)

# --- Gray-matter / partial-volume rule -------------------------------------------------------
#: mm^2/s. Adult GM MD is ~0.7-0.9e-3 and free water (CSF) ~3.0e-3 at 37 C; a voxel above
#: 1.5e-3 holds roughly >= 30% CSF, so its MD says more about CSF than about tissue.
MD_CSF_MAX: float = 1.5e-3
#: Unitless. GM FA is ~0.1-0.2 and WM ~0.4-0.8; FA >= 0.3 marks a voxel dominated by WM.
FA_WM_MAX: float = 0.3
#: T1w GM probability (warped to DWI) below which a voxel is mostly WM or CSF: majority rule.
GM_PROB_MIN: float = 0.5
#: T1w CSF fraction (footprint-averaged, warped to DWI) above which a voxel is dropped. CSF
#: (D 3.0e-3, S0 ~2x GM) dominates the mixture: 5% CSF already raises apparent MD by ~10% at
#: b=1000. On a simulated participant, 0.05 cut the median ROI MD error from 4% (0.3) to ~1%.
CSF_PROB_MAX: float = 0.05
#: Atlas transfer: fraction of a DWI voxel (linear-interpolation weight of the one-hot map)
#: that must belong to one label for the voxel to take it: majority rule, no voxel in two ROIs.
LABEL_FRACTION_MIN: float = 0.5
#: Smallest number of voxels with which a standard deviation is reported (ddof=1).
MIN_VOXELS_FOR_STD: int = 2


@dataclass(frozen=True)
class GrayMatterRule:
    """Which voxels of an atlas ROI count as gray matter; ``None`` switches a criterion off.

    A voxel is kept if all active criteria hold: ``md < md_max`` (no CSF partial volume),
    ``fa < fa_max`` (not white matter), ``gm_prob >= gm_prob_min`` and
    ``csf_prob <= csf_prob_max`` (T1w tissue probabilities warped to the DWI grid). A
    criterion whose map is not supplied is skipped. Voxels with non-finite or non-positive MD
    (failed fits, outside the brain) are always dropped.
    """

    md_max: float | None = MD_CSF_MAX
    fa_max: float | None = FA_WM_MAX
    gm_prob_min: float | None = GM_PROB_MIN
    csf_prob_max: float | None = CSF_PROB_MAX


def _check_shape(name: str, array: np.ndarray | None, shape: tuple[int, ...]) -> None:
    if array is not None and np.shape(array) != shape:
        raise ValueError(f"{name} has shape {np.shape(array)}, expected {shape} (the MD grid)")


def gray_matter_mask(
    md: np.ndarray,
    fa: np.ndarray | None = None,
    gm_prob: np.ndarray | None = None,
    csf_prob: np.ndarray | None = None,
    rule: GrayMatterRule = GrayMatterRule(),
) -> np.ndarray:
    """Boolean mask of voxels kept by ``rule`` (MD in mm^2/s, FA and probabilities unitless)."""
    md = np.asarray(md, dtype=float)
    for name, array in (("fa", fa), ("gm_prob", gm_prob), ("csf_prob", csf_prob)):
        _check_shape(name, array, md.shape)
    keep = np.isfinite(md) & (md > 0)
    if rule.md_max is not None:
        keep &= md < rule.md_max
    if fa is not None and rule.fa_max is not None:
        keep &= np.nan_to_num(np.asarray(fa, float), nan=np.inf) < rule.fa_max
    if gm_prob is not None and rule.gm_prob_min is not None:
        keep &= np.nan_to_num(np.asarray(gm_prob, float), nan=0.0) >= rule.gm_prob_min
    if csf_prob is not None and rule.csf_prob_max is not None:
        keep &= np.nan_to_num(np.asarray(csf_prob, float), nan=1.0) <= rule.csf_prob_max
    return keep


#: Sidecar description of every column ``regional_statistics`` writes (MD in mm^2/s).
ROI_COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "roi": {"Description": "ROI name (atlas index order)"},
    "index": {"Description": "Atlas index"},
    "md_mean": {"Description": "Mean MD over kept gray-matter voxels", "Units": "mm^2/s"},
    "md_median": {"Description": "Median MD over kept voxels", "Units": "mm^2/s"},
    "md_std": {
        "Description": "Standard deviation (ddof=1) of MD over kept voxels",
        "Units": "mm^2/s",
    },
    "n_voxels": {"Description": "Voxels kept after the gray-matter rule (native DWI grid)"},
    "n_voxels_atlas": {"Description": "Atlas voxels in the brain mask before the rule"},
    "fa_mean": {"Description": "Mean FA over kept voxels"},
}


def regional_statistics(
    md: np.ndarray,
    labels: np.ndarray,
    *,
    fa: np.ndarray | None = None,
    gm_prob: np.ndarray | None = None,
    csf_prob: np.ndarray | None = None,
    brain_mask: np.ndarray | None = None,
    rule: GrayMatterRule = GrayMatterRule(),
    roi_names: Sequence[str] = ROI_NAMES,
) -> pd.DataFrame:
    """Per-ROI MD statistics on the native DWI grid, after the gray-matter rule.

    ``labels``: integer atlas indices (1..len(roi_names), 0 = background) on the MD grid.
    Returns one row per ROI (``roi_names`` order) with ``STAT_COLUMNS``: md_mean, md_median,
    md_std (ddof=1) in mm^2/s, ``n_voxels`` kept, ``n_voxels_atlas`` before exclusion (inside
    ``brain_mask`` if given), fa_mean. An ROI left empty gets NaN statistics, ``n_voxels`` 0
    and a warning; it never raises.
    """
    md = np.asarray(md, dtype=float)
    labels = np.asarray(labels)
    _check_shape("labels", labels, md.shape)
    _check_shape("brain_mask", brain_mask, md.shape)
    if not np.issubdtype(labels.dtype, np.integer):
        rounded = np.rint(labels)
        if not np.allclose(labels[np.isfinite(labels)], rounded[np.isfinite(labels)]):
            raise ValueError("labels must be integer atlas indices")
        labels = np.nan_to_num(rounded, nan=0).astype(np.int64)
    keep = gray_matter_mask(md, fa, gm_prob, csf_prob, rule)
    in_brain = np.ones(md.shape, bool) if brain_mask is None else np.asarray(brain_mask, bool)
    fa_array = None if fa is None else np.asarray(fa, dtype=float)

    rows = []
    for position, name in enumerate(roi_names):
        index = position + 1
        atlas_roi = (labels == index) & in_brain
        kept = atlas_roi & keep
        values = md[kept]
        n_kept = int(values.size)
        row = {
            "roi": name,
            "index": index,
            "md_mean": np.nan,
            "md_median": np.nan,
            "md_std": np.nan,
            "n_voxels": n_kept,
            "n_voxels_atlas": int(atlas_roi.sum()),
            "fa_mean": np.nan,
        }
        if n_kept == 0:
            LOGGER.warning(
                "ROI %s: no voxel left (%d in the atlas ROI before the gray-matter rule); "
                "its statistics are NaN",
                name,
                row["n_voxels_atlas"],
            )
        else:
            row["md_mean"] = float(values.mean())
            row["md_median"] = float(np.median(values))
            if n_kept >= MIN_VOXELS_FOR_STD:
                row["md_std"] = float(values.std(ddof=1))
            if fa_array is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    row["fa_mean"] = float(np.nanmean(fa_array[kept]))
        rows.append(row)
    return pd.DataFrame(rows, columns=list(STAT_COLUMNS))


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

    from ketamine_dti.anat.registration import apply_transforms, load_image

    out_file = Path(out_file).absolute()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    atlas = load_image(atlas_file)
    if not Path(reference_file).exists():
        raise InputError(f"{reference_file}: DWI reference not found; pass the mean b0")
    reference = ants.image_read(str(reference_file))
    if reference.dimension == 4:  # a DWI series: its grid is that of the first volume
        reference = ants.slice_image(reference, axis=3, idx=0)
    reference_3d = out_file.parent / (out_file.name.split(".")[0] + "_reference.nii.gz")
    ants.image_write(reference, str(reference_3d))
    atlas_labels = np.rint(atlas.numpy()).astype(np.int64)
    label_values = [int(v) for v in np.unique(atlas_labels) if v != 0]
    dtype = "unsigned char" if max(label_values, default=0) < 256 else "short"
    if method == "nearest":
        apply_transforms(
            atlas_file,
            reference_3d,
            transforms,
            out_file,
            interpolation="genericLabel",
            n_threads=n_threads,
        )
        labels = np.rint(ants.image_read(str(out_file)).numpy())
    elif method == "fraction":
        # only the labels' bounding box (plus the smoothing reach) is stacked: the one-hot
        # stack of a whole 1 mm template took ~2.3 GB per session
        if crop:
            atlas = _crop_to_labels(atlas, atlas_labels, reference)
            atlas_labels = np.rint(atlas.numpy()).astype(np.int64)
        onehot = one_hot(atlas_labels, label_values)
        stack = ants.from_numpy(
            onehot,
            origin=(*atlas.origin, 0.0),
            spacing=(*atlas.spacing, 1.0),
            direction=_direction_4d(atlas.direction),
        )
        stack = _smooth_to_footprint(stack, reference)
        stack_file = out_file.parent / (out_file.name.split(".")[0] + "_onehot.nii.gz")
        warped_file = out_file.parent / (out_file.name.split(".")[0] + "_fractions.nii.gz")
        ants.image_write(stack, str(stack_file))
        apply_transforms(
            stack_file,
            reference_3d,
            transforms,
            warped_file,
            interpolation="linear",
            image_type=3,
            n_threads=n_threads,
        )
        fractions = ants.image_read(str(warped_file)).numpy()
        labels = labels_from_fractions(fractions, label_values, min_fraction)
    else:
        raise ValueError(f"method must be 'fraction' or 'nearest', not {method!r}")
    ants.image_write(
        reference.new_image_like(labels.astype(np.float32)).clone(dtype), str(out_file)
    )
    return str(out_file)


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

    from ketamine_dti.anat.registration import apply_transforms

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
