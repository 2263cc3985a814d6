#!/usr/bin/env python
"""Rebuild the simulator's true regions: AAL and Brodmann labels on Colin27, 1 mm, cropped.

Usage: ``python scripts/build_truth_regions.py [--check]``

Why: the simulator must plant each ROI's MD in regions that the pipeline's ``ketamine7`` atlas
(Harvard-Oxford + Talairach on MNI152) does not define, or "ROI accuracy" measures that atlas
registered to itself. These regions come from parcellations drawn on another brain (Colin27):
AAL (Tzourio-Mazoyer et al. 2002) for amygdala and hippocampus, MRIcron's Brodmann map for BA10
and the ventral ACC. Sources: Debian's ``mricron-data`` (``apt-get install mricron-data``),
``/usr/share/mricron/templates/``, checked by sha256. Writes ``ketamine_dti/data/simulator/``
byte for byte reproducibly (gzip mtime 0, via ``build_atlas_bundle.save_nifti``); ``--check``
compares instead. The rules and their reasons: ``ketamine_dti/data/README.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import nibabel as nb
import numpy as np
from build_atlas_bundle import (
    GENU_TOLERANCE_MM,
    REPO,
    Grid,
    genu_landmarks,
    pull_labels,
    roi_summary,
    save_nifti,
    world_coordinates,
)
from build_atlas_bundle import print_summary as print_atlas_summary
from build_head_template import SOURCE_DIR, check_sources, same_files
from build_head_template import SOURCE_SHA256 as HEAD_SHA256

from ketamine_dti.rois import ROI_NAMES  # label order 1..7

OUT_DIR = REPO / "ketamine_dti" / "data" / "simulator"
STEM = "truth_regions"
#: sha256 of the Debian files (mricron-data 1.2.20211006+dfsg-4); the build stops on others.
SOURCE_SHA256 = {
    "aal.nii.gz": "b512dcd3f36b77f56be7a9a038134096e66314b7e8c31d25875b96bcf6991454",
    "aal.nii.txt": "1788d6556a9ec056de9867b2382cf1ce1b51b87ae4cfd9cd25de48ae4dde709e",
    "brodmann.nii.gz": "23ddedf2867c2bb857762a901b4f57f453139e41ffcdfc54a070fcaa3432d1f9",
    "ch2bet.nii.gz": HEAD_SHA256["ch2bet.nii.gz"],  # Colin27's brain: the genu landmarks
}
#: ROI -> AAL label name (aal.nii.txt); AAL draws both structures on Colin27 by hand.
AAL_REGIONS = {
    "amygdala_left": "Amygdala_L",
    "amygdala_right": "Amygdala_R",
    "hippocampus_left": "Hippocampus_L",
    "hippocampus_right": "Hippocampus_R",
}
#: Brodmann labels (value = area number): BA10 (split at x = 0 mm, the plane itself in neither),
#: BA25 (subgenual / subcallosal) and the pregenual part of BA24/32 for the ventral ACC.
BA10 = 10
BA_SUBGENUAL = (25,)
BA_CINGULATE = (24, 32)
#: The genu of Colin27's corpus callosum (ch2bet, measured as for the MNI152 vACC rule by
#: build_atlas_bundle.genu_landmarks): front face at y = 35 mm, from z = -1 to 17 mm. BA24/32
#: counts as ventral ACC in front of it (y >= 36) up to its top (z <= 17), or below it
#: (z <= -2; this map has no BA24/32 there: BA25 fills it).
COLIN_GENU_MM = {"anterior_y_mm": 35.0, "inferior_z_mm": -1.0, "superior_z_mm": 17.0}


def read_aal_names(path: Path) -> dict[str, int]:
    """AAL label name -> value, from MRIcron's ``aal.nii.txt`` (value name code per line)."""
    names = {}
    for line in filter(str.strip, path.read_text().splitlines()):
        value, name, *_ = line.split()
        names[name] = int(value)
    return names


def ventral_acc(brodmann: np.ndarray, xyz: np.ndarray, genu: dict[str, float]) -> np.ndarray:
    """BA25, plus BA24/32 in front of (and no higher than) or below the measured genu."""
    y, z = xyz[1], xyz[2]
    pregenual = (y > genu["anterior_y_mm"]) & (z <= genu["superior_z_mm"])
    subgenual = z < genu["inferior_z_mm"]
    cingulate = np.isin(brodmann, BA_CINGULATE) & (pregenual | subgenual)
    return np.isin(brodmann, BA_SUBGENUAL) | cingulate


def check_genu(measured: dict[str, float]) -> None:
    """Stop when Colin27's genu is no longer where the vACC rule says it is."""
    off = {k: v for k, v in measured.items() if abs(v - COLIN_GENU_MM[k]) > GENU_TOLERANCE_MM}
    if off:
        raise SystemExit(f"Colin27 genu {off} disagrees with COLIN_GENU_MM {COLIN_GENU_MM}")


def truth_labels(source_dir: Path = SOURCE_DIR) -> tuple[np.ndarray, Grid]:
    """The seven true regions (ROI_NAMES order) on Colin27's 1 mm grid; AAL first, then BA."""
    check_sources(source_dir, SOURCE_SHA256)
    aal = nb.load(source_dir / "aal.nii.gz")
    brodmann = nb.load(source_dir / "brodmann.nii.gz")
    brain = nb.load(source_dir / "ch2bet.nii.gz")
    for image in (brodmann, brain):
        if image.shape != aal.shape or not np.allclose(image.affine, aal.affine):
            raise SystemExit("aal, brodmann and ch2bet must share one 1 mm grid")
    if nb.aff2axcodes(aal.affine) != tuple("RAS"):
        raise SystemExit("aal.nii.gz is not RAS")
    grid = Grid(tuple(aal.shape), aal.affine.copy())
    xyz = world_coordinates(grid)
    genu = genu_landmarks(np.asarray(brain.dataobj, dtype=np.float64), grid)
    check_genu(genu)
    aal_values = np.asarray(aal.dataobj)
    ba = np.asarray(brodmann.dataobj)
    names = read_aal_names(source_dir / "aal.nii.txt")
    regions = {roi: aal_values == names[aal_name] for roi, aal_name in AAL_REGIONS.items()}
    regions["ba10_left"] = (ba == BA10) & (xyz[0] < 0)
    regions["ba10_right"] = (ba == BA10) & (xyz[0] > 0)
    regions["vacc"] = ventral_acc(ba, xyz, COLIN_GENU_MM)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    for roi in [*AAL_REGIONS, "ba10_left", "ba10_right", "vacc"]:  # AAL's own labels first
        labels[regions[roi] & (labels == 0)] = ROI_NAMES.index(roi) + 1
    return labels, grid


def crop(labels: np.ndarray, grid: Grid) -> tuple[np.ndarray, Grid]:
    """The labels' bounding box (the rest is background) and its grid."""
    where = np.argwhere(labels > 0)
    low, high = where.min(axis=0), where.max(axis=0) + 1
    affine = grid.affine.copy()
    affine[:3, 3] = grid.affine[:3, :3] @ low + grid.affine[:3, 3]
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    return labels[box], Grid(tuple(int(v) for v in high - low), affine)


def build(out_dir: Path, source_dir: Path = SOURCE_DIR) -> list[dict]:
    """Write the cropped label image and its table under ``out_dir``; return the ROI summary."""
    labels, grid = crop(*truth_labels(source_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_nifti(labels, grid, np.uint8, out_dir / f"{STEM}_res-01_dseg.nii.gz")
    lines = ["index\tname"] + [f"{i}\t{name}" for i, name in enumerate(ROI_NAMES, start=1)]
    (out_dir / f"{STEM}_dseg.tsv").write_text("\n".join(lines) + "\n")
    return roi_summary(labels, grid)


def anatomy_report(out_dir: Path) -> list[str]:
    """How the regions land on the simulator's anatomy, and their Dice with ketamine7 there.

    Mean GM/WM/CSF fraction of each region on the simulator's (sharpened ICBM 2009a) template,
    and the Dice with the pipeline's ketamine7 labels on that template's 1 mm grid: plain and
    weighted by GM (the tissue whose MD is measured).
    """
    from ketamine_dti.anat.registration import dice
    from ketamine_dti.resources import get_atlas
    from ketamine_dti.simulate.anatomy import load_template_anatomy

    template = load_template_anatomy()
    grid = Grid(template.fractions.shape[1:], template.affine)
    image = nb.load(out_dir / f"{STEM}_res-01_dseg.nii.gz")
    truth = pull_labels(np.asarray(image.dataobj), image.affine, grid)
    atlas = nb.load(get_atlas(resolution=1)[0])
    ketamine7 = pull_labels(np.asarray(atlas.dataobj), atlas.affine, grid)
    gm, wm, csf = template.fractions
    rows = [f"{'roi':<18} {'GM':>5} {'WM':>5} {'CSF':>5} {'GM ml':>6} {'Dice':>5} {'GM Dice':>7}"]
    for index, name in enumerate(ROI_NAMES, start=1):
        ours, theirs = truth == index, ketamine7 == index
        gm_dice = 2 * gm[ours & theirs].sum() / (gm[ours].sum() + gm[theirs].sum())
        rows.append(
            f"{name:<18} {gm[ours].mean():>5.2f} {wm[ours].mean():>5.2f} {csf[ours].mean():>5.2f}"
            f" {gm[ours].sum() / 1e3:>6.2f} {dice(ours, theirs):>5.2f} {gm_dice:>7.2f}"
        )
    return rows


def print_summary(rows: list[dict]) -> None:
    """Volumes (mm^3) and centroids (Colin27/MNI mm), as the atlas bundle prints its own."""
    print_atlas_summary([{"res": 1, **row} for row in rows])


def main(argv: list[str] | None = None) -> int:
    """Rebuild (or with --check, verify) the simulator's bundled true regions."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="rebuild to a temp dir and compare")
    parser.add_argument(
        "--report",
        action="store_true",
        help="also print tissue fractions on the simulated anatomy and the Dice with ketamine7",
    )
    args = parser.parse_args(argv)
    if not args.check:
        print_summary(build(OUT_DIR))
        if args.report:
            print("\n".join(anatomy_report(OUT_DIR)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        print_summary(build(Path(tmp)))
        same = same_files(Path(tmp), OUT_DIR)
    print("bundle is up to date" if same else "bundle is stale")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
