"""Arrange the real Siemens Prisma scan (shared/realdata) as a two-session BIDS dataset.

The folder holds one man's DWI acquired twice in one sitting, with PA (``j``) and AP (``j-``)
phase encoding, and his whole-head MPRAGE. The true MD is the same in both series, so when the PA
series is one session and the AP series the other, any MD change the App reports is its own error.

    python scripts/arrange_realdata.py OUT_DIR [--fieldmaps | --no-fieldmaps]
        [--source ../shared/realdata/siemens_prisma_xa30_subM31]

Writes ``OUT_DIR`` (a BIDS dataset, images copied, never linked, so the source stays untouched;
OUT_DIR belongs outside the repository): ``ses-baseline`` = PA, ``ses-24h`` = AP, the same T1w
in both sessions, and with ``--fieldmaps`` (the default) each session's ``fmap/`` holds the
*other* series' b=0 volume as a reverse-phase-encoding EPI fieldmap, ``dir-AP``/``dir-PA``
``_epi``, with that series' ``PhaseEncodingDirection`` and ``TotalReadoutTime`` and an
``IntendedFor`` naming the session's DWI: ``--sdc auto`` finds it as a pepolar fieldmap
(``ketamine_dti.fieldmaps``). ``--no-fieldmaps`` leaves ``fmap/`` out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

SUBJECT = "M31"
SOURCE_SUBJECT = "sub-M31"
#: session label -> phase-encoding direction label of the series it holds
SESSIONS = {"baseline": "PA", "24h": "AP"}
DEFAULT_SOURCE = (
    Path(__file__).resolve().parents[2] / "shared" / "realdata" / "siemens_prisma_xa30_subM31"
)
B0_MAX = 50.0  # s/mm^2: volumes at or below count as b=0


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")


def _dataset_files(out: Path, source: Path) -> None:
    _write_json(
        out / "dataset_description.json",
        {
            "Name": "Siemens Prisma XA30 PA/AP retest (sub-M31), arranged for ketamine-dti",
            "BIDSVersion": "1.10.0",
            "DatasetType": "raw",
            "License": "BSD-2-Clause",
            "SourceDatasets": [{"URL": "https://github.com/neurolabusc/dcm_qa_xa30"}],
            "GeneratedBy": [{"Name": "ketamine-dti scripts/arrange_realdata.py"}],
        },
    )
    (out / "participants.tsv").write_text("participant_id\tgroup\nsub-M31\tn/a\n")
    _write_json(
        out / "participants.json",
        {"group": {"Description": "Trial arm (none: a volunteer scanned twice, not randomized)"}},
    )
    (out / "README").write_text(
        "One adult man scanned on a Siemens Prisma (XA30): the same DWI protocol twice in one "
        "sitting, PA phase encoding (ses-baseline) and AP (ses-24h), and a whole-head MPRAGE "
        f"(copied into both sessions). Arranged by scripts/arrange_realdata.py from {source.name}."
        "\n"
    )


def _b0_volume(dwi: Path, bval: Path) -> nib.Nifti1Image:
    """The first b=0 volume of a series (the reverse-PE image for the other series)."""
    image = nib.load(dwi)
    bvals = np.loadtxt(bval, ndmin=1)
    index = int(np.flatnonzero(bvals <= B0_MAX)[0])
    data = np.asanyarray(image.dataobj)[..., index]
    header = image.header.copy()
    header.set_data_shape(data.shape)
    return nib.Nifti1Image(data, image.affine, header)


def arrange(out: Path, source: Path = DEFAULT_SOURCE, fieldmaps: bool = True) -> Path:
    """Write the two-session dataset under ``out`` and return it."""
    if not (source / f"{SOURCE_SUBJECT}_T1w.nii.gz").exists():
        raise FileNotFoundError(f"{source}: not the sub-M31 real-scan folder (no T1w found)")
    out.mkdir(parents=True, exist_ok=True)
    _dataset_files(out, source)
    for session, direction in SESSIONS.items():
        ses_dir = out / f"sub-{SUBJECT}" / f"ses-{session}"
        prefix = f"sub-{SUBJECT}_ses-{session}"
        (ses_dir / "anat").mkdir(parents=True, exist_ok=True)
        (ses_dir / "dwi").mkdir(exist_ok=True)
        for extension in (".nii.gz", ".json"):
            shutil.copyfile(
                source / f"{SOURCE_SUBJECT}_T1w{extension}",
                ses_dir / "anat" / f"{prefix}_T1w{extension}",
            )
        dwi_name = f"{prefix}_dir-{direction}_dwi"
        for extension in (".nii.gz", ".json", ".bval", ".bvec"):
            shutil.copyfile(
                source / f"{SOURCE_SUBJECT}_dir-{direction}_dwi{extension}",
                ses_dir / "dwi" / f"{dwi_name}{extension}",
            )
        if not fieldmaps:
            continue
        other = next(d for d in SESSIONS.values() if d != direction)
        (ses_dir / "fmap").mkdir(exist_ok=True)
        epi = ses_dir / "fmap" / f"{prefix}_dir-{other}_epi"
        stem = source / f"{SOURCE_SUBJECT}_dir-{other}_dwi"
        nib.save(_b0_volume(Path(f"{stem}.nii.gz"), Path(f"{stem}.bval")), f"{epi}.nii.gz")
        meta = json.loads(Path(f"{stem}.json").read_text())
        meta["IntendedFor"] = [f"bids::sub-{SUBJECT}/ses-{session}/dwi/{dwi_name}.nii.gz"]
        _write_json(Path(f"{epi}.json"), meta)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument(
        "--fieldmaps",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give each session's DWI the other series' b=0 volume as its reverse-PE fieldmap",
    )
    args = parser.parse_args(argv)
    try:
        arrange(args.out_dir, args.source, fieldmaps=args.fieldmaps)
    except FileNotFoundError as exc:
        print(f"arrange_realdata: {exc}", file=sys.stderr)
        return 1
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
