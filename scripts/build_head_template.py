#!/usr/bin/env python
"""Rebuild the bundled whole-head template for brain extraction: Colin27 at 2 mm.

Usage: ``python scripts/build_head_template.py [--check]``

Source: Debian's ``mricron-data`` (``apt-get install mricron-data``), files
``/usr/share/mricron/templates/ch2.nii.gz`` (Colin27 whole head, 1 mm) and ``ch2bet.nii.gz``
(its brain). Brain extraction needs a head *with* its brain mask; the bundled MNI152 is
brain-only. Writes ``ketamine_dti/data/templateflow/tpl-Colin27/`` byte for byte reproducibly
(gzip mtime 0, via ``build_atlas_bundle.save_nifti``); ``--check`` compares instead.
Provenance and licence: ``ketamine_dti/data/README.md``.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import nibabel as nb
import numpy as np
from build_atlas_bundle import BUNDLE_HOME, Grid, save_nifti

TEMPLATE = "Colin27"
SOURCE_DIR = Path("/usr/share/mricron/templates")
#: sha256 of the Debian files (mricron-data 1.2.20211006+dfsg-4); the build stops on others.
SOURCE_SHA256 = {
    "ch2.nii.gz": "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309",
    "ch2bet.nii.gz": "592a2d20abdf36eefcb540ca8958428040edffc1bc1a18ba1dcfbabac77c5dd1",
}
#: A 2 mm voxel is brain when at least half of its eight 1 mm voxels are.
MASK_MIN_FRACTION = 0.5
#: 1 mm -> 2 mm: each 2 mm voxel is the mean of a 2x2x2 block (exact, no interpolation).
BLOCK = 2


def check_sources(source_dir: Path, digests: dict[str, str] = SOURCE_SHA256) -> None:
    """Stop unless the Debian files are the ones the bundle was built from."""
    for name, digest in digests.items():
        actual = hashlib.sha256((source_dir / name).read_bytes()).hexdigest()
        if actual != digest:
            raise SystemExit(f"{source_dir / name}: sha256 {actual} is not {digest}")


def block_mean(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2x2 block means of a 1 mm RAS volume (zero-padded to even) and the 2 mm affine."""
    pad = [(0, dim % BLOCK) for dim in volume.shape]
    padded = np.pad(volume.astype(np.float64), pad)
    shape = [dim // BLOCK for dim in padded.shape]
    blocks = padded.reshape(shape[0], BLOCK, shape[1], BLOCK, shape[2], BLOCK)
    coarse_affine = affine.copy()
    coarse_affine[:3, :3] = affine[:3, :3] * BLOCK
    coarse_affine[:3, 3] = affine[:3, :3] @ np.full(3, (BLOCK - 1) / 2) + affine[:3, 3]
    return blocks.mean(axis=(1, 3, 5)), coarse_affine


def template_description(shape, affine) -> dict:
    """TemplateFlow's template_description.json for the bundled Colin27 subset."""
    return {
        "Authors": ["Holmes CJ", "Hoge R", "Collins L", "Woods R", "Toga AW", "Evans AC"],
        "BIDSVersion": "1.1.0",
        "Identifier": TEMPLATE,
        "License": "MNI permissive notice (Colin27); BSD-3-Clause (MRIcron packaging); "
        "see ketamine_dti/data/README.md",
        "Name": "Colin27: average of 27 T1w scans of one individual (MNI), whole head",
        "ReferencesAndLinks": ["https://doi.org/10.1097/00004728-199803000-00032"],
        "Species": "Homo sapiens",
        "TemplateFlowVersion": "1.0.0",
        "res": {
            "02": {
                "origin": [float(v) for v in affine[:3, 3]],
                "shape": [int(v) for v in shape],
                "zooms": [float(v) for v in np.diag(affine)[:3]],
            }
        },
        "GeneratedBy": [
            {
                "Name": "ketamine-dti scripts/build_head_template.py",
                "Description": "Whole-head T1w and brain mask at 2 mm (2x2x2 block means) "
                "from Debian mricron-data ch2.nii.gz / ch2bet.nii.gz; brain-extraction prior.",
            }
        ],
    }


def build(out_home: Path, source_dir: Path = SOURCE_DIR) -> dict[str, float]:
    """Write tpl-Colin27 (res-02 T1w head and brain mask) under ``out_home``."""
    check_sources(source_dir)
    head = nb.load(source_dir / "ch2.nii.gz")
    brain = nb.load(source_dir / "ch2bet.nii.gz")
    if not np.allclose(head.affine, brain.affine) or nb.aff2axcodes(head.affine) != tuple("RAS"):
        raise SystemExit("ch2 and ch2bet must share one RAS 1 mm grid")
    t1w, affine = block_mean(np.asanyarray(head.dataobj), head.affine)
    fraction, _ = block_mean(np.asanyarray(brain.dataobj) > 0, brain.affine)
    mask = fraction >= MASK_MIN_FRACTION
    grid = Grid(tuple(t1w.shape), affine)
    tpl_dir = out_home / f"tpl-{TEMPLATE}"
    tpl_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"tpl-{TEMPLATE}_res-02"
    save_nifti(np.rint(t1w), grid, np.uint8, tpl_dir / f"{prefix}_T1w.nii.gz")
    save_nifti(mask, grid, np.uint8, tpl_dir / f"{prefix}_desc-brain_mask.nii.gz")
    (tpl_dir / "template_description.json").write_text(
        json.dumps(template_description(t1w.shape, affine), indent=2) + "\n"
    )
    return {"brain_ml": float(mask.sum() * 8e-3), "head_voxels": float((t1w > 0).sum())}


def main(argv: list[str] | None = None) -> int:
    """Rebuild (or with --check, verify) tpl-Colin27 in the bundled TemplateFlow home."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="rebuild to a temp dir and compare")
    args = parser.parse_args(argv)
    if not args.check:
        print(build(BUNDLE_HOME))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        print(build(Path(tmp)))
        folder = f"tpl-{TEMPLATE}"
        same = same_files(Path(tmp) / folder, BUNDLE_HOME / folder)
    print("bundle is up to date" if same else "bundle is stale")
    return 0 if same else 1


def same_files(built: Path, bundled: Path) -> bool:
    """True if two folders hold the same file names with byte-identical contents."""
    names = sorted(p.name for p in built.iterdir())
    if names != sorted(p.name for p in bundled.iterdir()):
        return False
    return all(filecmp.cmp(built / name, bundled / name, False) for name in names)


if __name__ == "__main__":
    sys.exit(main())
