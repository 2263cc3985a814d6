#!/usr/bin/env python
"""Analysis: is single-shell free water's water b0 reference pure water on a real scan?

Why: the single-shell prior reads free water from where a voxel's b0 lies between a gray-matter
and a water reference (``dwi.free_water``). The water reference is the median b0 of the voxels
whose DTI MD is at least ``WATER_REFERENCE_MD``. On the real Prisma scan (3 mm voxels, b = 2500)
that median was only 1.25-1.5x gray matter's b0 (session 32), where CSF at a long TE is usually
2-3x: partial volume with tissue darkens CSF voxels, a darker water reference amplifies every
voxel's f. This reads a finished ``bench_realscan.py`` (or ``bench_participant.py``) run and, per
session, tabulates the b0 (after the App's receive field) of:

- the App's water voxels (DTI MD rule), with their percentiles;
- the DWI voxels the T1w segmentation calls CSF (the subject template's CSF share, the same
  share the ROI rule and the gray-matter reference read, at each voxel centre through the
  published from-dwi_to-T1w transform), alone and with the MD rule;
- the App's gray-matter reference voxels.

No pipeline is run and nothing is changed: it measures what a water reference would be under
each rule, for a decision made elsewhere.

Usage::

    python benchmarks/tuning/free_water_water_reference.py OUT_DIR [--csf-min 0.9]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS / "tuning"))
from free_water_b0_change import one_file, published_fit_inputs  # noqa: E402

PERCENTILES = (10, 50, 90, 99)


def describe(values: np.ndarray) -> dict:
    """Count and percentiles of ``values`` (NaN percentiles when empty)."""
    if values.size == 0:
        return {"n": 0} | {f"p{p}": None for p in PERCENTILES}
    return {"n": int(values.size)} | {
        f"p{p}": round(float(np.percentile(values, p)), 1) for p in PERCENTILES
    }


def one_session(dwi_dir: Path, work: Path, csf_min: float) -> dict:
    """The b0 of each candidate voxel set of one session's published DWI."""
    from ketamine_dti.anat.transfer import dwi_to_template_map, values_at_voxels
    from ketamine_dti.dwi.free_water import WATER_REFERENCE_MD, b0_receive_field
    from ketamine_dti.dwi.gradients import B0_THRESHOLD

    inputs = published_fit_inputs(dwi_dir)
    image, mask, md, prior = (inputs[k] for k in ("image", "mask", "md", "prior"))
    b0 = inputs["data"][..., inputs["bvals"] <= B0_THRESHOLD].mean(axis=-1).astype(float)
    b0 = b0 / b0_receive_field(b0, mask, image.header.get_zooms()[:3], md)
    session = dwi_dir.parent.name.replace("-", "_")
    subject = dwi_dir.parents[1].name.replace("-", "_")
    session_work = next(work.rglob(f"{subject}_wf/{session}_wf"))
    reference = session_work / "gray_matter_reference/gray_matter_reference.nii.gz"
    gray = (np.asarray(nib.load(reference).dataobj) > 0) & mask
    csf_file = next(work.rglob(f"{subject}_wf/**/csf_share.nii*"))
    csf_image = nib.load(csf_file)
    voxels = np.argwhere(mask)
    to_template = dwi_to_template_map(
        str(one_file(dwi_dir, "*from-dwi_to-T1w_mode-image_xfm.mat"))
    )
    share = np.zeros(mask.shape, np.float32)
    share[tuple(voxels.T)] = values_at_voxels(
        np.asanyarray(csf_image.dataobj), csf_image.affine, voxels, image.affine, to_template
    )
    with np.errstate(invalid="ignore"):
        water_md = mask & (md >= WATER_REFERENCE_MD)
    csf = mask & (share >= csf_min)
    return {
        "dwi": str(dwi_dir),
        "app_references": {
            "tissue": prior["B0ReferenceTissue"],
            "water": prior["B0ReferenceWater"],
        },
        "gray_matter_reference": describe(b0[gray]),
        "water_by_md": describe(b0[water_md]),
        f"csf_share_ge_{csf_min:g}": describe(b0[csf]),
        f"csf_share_ge_{csf_min:g}_and_md": describe(b0[csf & water_md]),
        "md_of_csf_share_voxels_p50": (
            round(float(np.nanmedian(md[csf])), 6) if csf.any() else None
        ),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the benchmark's OUT_DIR (out/ and work/ in it)")
    parser.add_argument("--csf-min", type=float, default=0.9, help="template CSF share")
    args = parser.parse_args(argv)
    out, work = args.root / "out", args.root / "work"
    rows = [
        one_session(dwi_dir, work, args.csf_min) for dwi_dir in sorted(out.glob("sub-*/ses-*/dwi"))
    ]
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
