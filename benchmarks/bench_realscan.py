"""The real Prisma scan through the whole App: the figures issue 10 asks for, in one table.

Usage:

    python benchmarks/bench_realscan.py OUT_DIR [--source DIR] [--nprocs 2] [--sdc auto]
        [--interpolation trilinear]
        [--work-dir DIR] [--compare-to OLD_OUT_DIR --compare-label LABEL]

Arranges ``../shared/realdata/siemens_prisma_xa30_subM31`` with ``scripts/arrange_realdata.py``
(PA series at ses-baseline, AP at ses-24h, the same MPRAGE in both; the images are copied into
OUT_DIR, never into the repository), runs the participant level, and reads back from the
derivatives: the T1w brain-mask volume, ``reg_dwi_t1w_dice`` and the DWI field-of-view coverage,
mean FD and outlier count, each ROI's retention and status, the QC verdict, and the per-ROI
PA vs AP disagreement |MD(AP) - MD(PA)| / mean (the true MD is the same in both series, so it is
the pipeline's own error; n/a where an ROI is missing). ``--compare-to`` adds the same figures
from an earlier run's OUT (e.g. one made with an older commit, or with ``--sdc none``) as a
"before" column. With distortion correction it also reports the method per session, the Dice of
the PA and AP DWI brain masks brought into the subject template (each through its own published
DWI -> T1w transform), and the PA vs AP disagreement in the ventral ROIs (BA10, vACC, amygdala)
where susceptibility distortion is worst.

Writes OUT_DIR/bench_realscan.json and .md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).parent), str(REPO / "scripts")]
from arrange_realdata import SESSIONS, SUBJECT  # noqa: E402  (session -> the series it holds)
from bench_participant import (  # noqa: E402
    ALTERNATIVE,
    MEASURED,
    dwi_derivative,
    machine,
    machine_lines,
)

from ketamine_dti.config import Config  # noqa: E402
from ketamine_dti.dwi.resampling import INTERPOLATION_ORDERS  # noqa: E402

#: ROIs over the frontal sinus and beside the temporal bone: where distortion is worst.
VENTRAL = ("ba10", "vacc", "amygdala")
TARGETS = {
    "t1w_brain_volume_ml": "1,100-1,800 ml",
    "reg_dwi_t1w_dice": ">= 0.85",
    "mean_fd": "<= 0.5 mm",
    "n_outlier_volumes": "<= 3 of 21",
}


#: The session QC metrics tabulated for PA / AP (desc-qc_metrics.tsv columns), in this order.
QC_FIGURES: tuple[str, ...] = (
    "t1w_brain_volume_ml",
    "brain_volume_ml",
    "reg_dwi_t1w_dice",
    "reg_dwi_t1w_bbr_cost",
    "reg_dwi_t1w_bbr_shift_mm",
    "dwi_fov_fraction",
    "reg_t1w_mni_ncc",
    "mean_fd",
    "n_outlier_volumes",
    "n_rois_missing",
    "qc_verdict",
    "sdc_method",
    "sdc_max_roi_displacement_mm",
    "sdc_max_roi_severe_fraction",
)


def _disagreement(pa: pd.DataFrame, ap: pd.DataFrame, column: str) -> pd.Series:
    """Per ROI |MD(AP) - MD(PA)| / their mean (NaN where either is missing)."""
    return (ap[column] - pa[column]).abs() / ((ap[column] + pa[column]) / 2)


def figures(out: Path) -> dict:
    """The issue-10 figures of one finished run (OUTPUT_DIR of the participant level)."""
    result: dict = {"sessions": {}}
    rois = {}
    for session in SESSIONS:
        qc = pd.read_csv(
            dwi_derivative(out, SUBJECT, session, "desc-qc_metrics.tsv"), sep="\t"
        ).iloc[0]
        table = pd.read_csv(dwi_derivative(out, SUBJECT, session, "desc-roi_md.tsv"), sep="\t")
        rois[session] = table.set_index("roi")
        result["sessions"][session] = {
            key: (None if pd.isna(qc.get(key)) else _plain(qc.get(key)))
            for key in (*QC_FIGURES, "qc_reasons")
        }
    pa, ap = rois["baseline"], rois["24h"]
    result["column"] = MEASURED
    disagreement = _disagreement(pa, ap, MEASURED)
    result["alternative"] = ALTERNATIVE
    result["median_disagreement_alternative"] = float(_disagreement(pa, ap, ALTERNATIVE).median())
    result["rois"] = {
        roi: {
            "n_voxels_pa": int(pa.loc[roi, "n_voxels"]),
            "n_voxels_ap": int(ap.loc[roi, "n_voxels"]),
            "fraction_kept_pa": float(pa.get("fraction_kept", pd.Series(np.nan)).get(roi, np.nan)),
            "fraction_kept_ap": float(ap.get("fraction_kept", pd.Series(np.nan)).get(roi, np.nan)),
            "status_pa": str(pa.get("status", pd.Series("(no rule)")).get(roi, "(no rule)")),
            "status_ap": str(ap.get("status", pd.Series("(no rule)")).get(roi, "(no rule)")),
            "disagreement": None if pd.isna(disagreement[roi]) else float(disagreement[roi]),
        }
        for roi in pa.index
    }
    measured = disagreement.dropna()
    result["median_disagreement"] = float(measured.median()) if len(measured) else None
    result["max_disagreement"] = float(measured.max()) if len(measured) else None
    ventral = measured[[roi for roi in measured.index if roi.startswith(VENTRAL)]]
    result["median_ventral_disagreement"] = float(ventral.median()) if len(ventral) else None
    result["dwi_mask_dice_pa_ap_in_t1w"] = _mask_dice_in_t1w(out)
    mask = out / f"sub-{SUBJECT}/anat/sub-{SUBJECT}_desc-brain_mask.nii.gz"
    if mask.exists():
        image = nib.load(mask)
        voxels = int(np.count_nonzero(np.asanyarray(image.dataobj)))
        result["anat_brain_mask_ml"] = voxels * float(np.prod(image.header.get_zooms()[:3])) / 1e3
    return result


def _mask_dice_in_t1w(out: Path) -> float | None:
    """Dice of the two sessions' DWI brain masks in the subject template, each moved there by
    its own published DWI -> T1w transform (linear, then > 0.5)."""
    import tempfile

    from ketamine_dti.anat.registration import apply_transforms

    anat = out / f"sub-{SUBJECT}/anat/sub-{SUBJECT}_desc-preproc_T1w.nii.gz"
    masks = []
    with tempfile.TemporaryDirectory() as tmp:
        for session in SESSIONS:
            mask = dwi_derivative(out, SUBJECT, session, "space-dwi_desc-brain_mask.nii.gz")
            xfm = dwi_derivative(out, SUBJECT, session, "from-dwi_to-T1w_mode-image_xfm.mat")
            if not (mask.exists() and xfm.exists() and anat.exists()):
                return None
            moved = apply_transforms(mask, anat, [str(xfm)], Path(tmp) / f"{session}.nii.gz")
            masks.append(nib.load(moved).get_fdata() > 0.5)
    return float(2 * np.sum(masks[0] & masks[1]) / (masks[0].sum() + masks[1].sum()))


def _plain(value):
    """A numpy scalar as its Python value (JSON-serialisable); anything else unchanged."""
    return value.item() if hasattr(value, "item") else value


def run(
    out_dir: Path,
    source: Path | None,
    nprocs: int,
    sdc: str,
    work: Path | None,
    interpolation: str = Config.interpolation,
) -> dict:
    bids, out, work = out_dir / "bids", out_dir / "out", work or out_dir / "work"
    if not bids.exists():
        command = [sys.executable, str(REPO / "scripts/arrange_realdata.py"), str(bids)]
        subprocess.run(command + (["--source", str(source)] if source else []), check=True)
    started = time.time()
    app = [sys.executable, "-m", "bids_app.run", str(bids), str(out), "participant"]
    app += ["-w", str(work), "--nprocs", str(nprocs), "--skip-bids-validation", "--sdc", sdc]
    app += ["--interpolation", interpolation]
    proc = subprocess.run(app, capture_output=True, text=True)
    (out_dir / "app.log").write_text(proc.stdout + proc.stderr)
    return {"exit_code": proc.returncode, "wall_s": time.time() - started}


def _cell(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def markdown(after: dict, before: dict | None, before_label: str) -> str:
    both = [("after", after)] + ([(before_label, before)] if before else [])
    lines = [
        "# The real Prisma scan through the App (issue 10 figures)",
        "",
        f"Command: `python benchmarks/bench_realscan.py OUT --sdc {after.get('sdc', 'auto')} "
        f"--interpolation {after.get('interpolation', 'trilinear')}` "
        f"(exit code {after['exit_code']}, {after['wall_s'] / 60:.1f} min wall). "
        "ses-baseline = PA, ses-24h = AP.",
        "",
        *(machine_lines(after["machine"]) if after.get("machine") else []),
        "| figure | target | " + " | ".join(f"{label} PA / AP" for label, _ in both) + " |",
        "|---|---|" + "---|" * len(both),
    ]
    for key in QC_FIGURES:
        cells = [
            " / ".join(_cell(result["sessions"][s].get(key)) for s in SESSIONS)
            for _, result in both
        ]
        lines.append(f"| {key} | {TARGETS.get(key, '-')} | " + " | ".join(cells) + " |")
    anat = [_cell(result.get("anat_brain_mask_ml")) for _, result in both]
    lines.append("| anat desc-brain_mask (ml) | 1,100-1,800 ml | " + " | ".join(anat) + " |")
    lines += [
        "",
        "| ROI | "
        + " | ".join(f"{label}: voxels kept (of atlas) PA / AP, PA vs AP" for label, _ in both)
        + " |",
        "|---|" + "---|" * len(both),
    ]
    for roi in after["rois"]:
        cells = []
        for _, result in both:
            entry = result["rois"].get(roi, {})
            disagreement = entry.get("disagreement")
            cells.append(
                f"{entry['n_voxels_pa']} ({entry['fraction_kept_pa']:.0%}) / "
                f"{entry['n_voxels_ap']} ({entry['fraction_kept_ap']:.0%}), "
                + ("n/a (missing)" if disagreement is None else f"{disagreement:.1%}")
            )
        lines.append(f"| {roi} | " + " | ".join(cells) + " |")
    for label, result in both:
        median = result.get("median_disagreement")
        ventral = result.get("median_ventral_disagreement")
        dice = result.get("dwi_mask_dice_pa_ap_in_t1w")
        lines.append(
            f"\n{label}: median PA vs AP disagreement of {result.get('column', 'md_mean')} over "
            "measured ROIs = "
            + ("n/a (no ROI measured in both)" if median is None else f"{median:.1%}")
            + "; over the measured ventral ROIs (BA10, vACC, amygdala) = "
            + ("n/a" if ventral is None else f"{ventral:.1%}")
            + "; PA/AP DWI brain-mask Dice in the subject template = "
            + ("n/a" if dice is None else f"{dice:.3f}")
            + (f"; {result['alternative']}: {result['median_disagreement_alternative']:.1%}"
               if "median_disagreement_alternative" in result else "")
        )  # fmt: skip
    lines += ["", "QC reasons (after):"]
    lines += [f"- {s}: {after['sessions'][s].get('qc_reasons')}" for s in SESSIONS]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--source", type=Path, default=None)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--sdc", default="auto", choices=["auto", "pepolar", "none"])
    parser.add_argument(
        "--interpolation", default=Config.interpolation, choices=list(INTERPOLATION_ORDERS)
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="default OUT_DIR/work")
    parser.add_argument("--compare-to", type=Path, default=None, help="an earlier run's OUT")
    parser.add_argument("--compare-label", default="before")
    parser.add_argument("--analyse-only", action="store_true", help="read OUT_DIR/out only")
    args = parser.parse_args(argv)
    out_dir = args.out_dir.absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    status_file = out_dir / "run_status.json"
    if args.analyse_only:
        status = json.loads(status_file.read_text())
    else:
        status = run(
            out_dir, args.source, args.nprocs, args.sdc, args.work_dir, args.interpolation
        )
        status["sdc"], status["interpolation"] = args.sdc, args.interpolation
        status["machine"] = machine()
        status_file.write_text(json.dumps(status))
    after = status | figures(out_dir / "out")
    before = figures(args.compare_to) if args.compare_to else None
    (out_dir / "bench_realscan.json").write_text(
        json.dumps({"after": after, args.compare_label: before}, indent=2, default=str)
    )
    text = markdown(after, before, args.compare_label)
    (out_dir / "bench_realscan.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
