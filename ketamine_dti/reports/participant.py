"""Per-participant HTML report (OUTPUT_DIR/sub-<label>.html): QC, registration, MD, ROIs."""

from __future__ import annotations

import base64
import io
import logging
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ketamine_dti import __version__, bids
from ketamine_dti.config import Config
from ketamine_dti.crashes import read_crash_files
from ketamine_dti.derivatives import spec_path
from ketamine_dti.reports.render import (
    FAILED,
    FROM_QC_VERDICT,
    Section,
    Verdict,
    anchor,
    methods_html,
    render,
    table_html,
    worst,
)

LOGGER = logging.getLogger(__name__)

#: Axial slices shown in the MD montage.
N_SLICES = 8
#: MD display range (mm^2/s): tissue up to twice gray matter; CSF saturates.
MD_DISPLAY_MAX = 2.0e-3
#: The outline drawn on the b0: white matter (T1w tissue probability above this) moved into DWI.
WM_OUTLINE_PROBABILITY = 0.5
#: Slice titles sit at the top of their (axis-less) panel. Given explicitly, matplotlib skips
#: placing each title above tick labels there are none of, which measured every axis at both
#: draws of a tight-bbox save (2 of a report's 3.6 s of PNG writing); the pixels are the same.
TITLE_Y = 1.0


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def md_montage(md: np.ndarray, labels: np.ndarray) -> str:
    """Axial MD slices through the ROIs with the kept ROI voxels overlaid; a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    md = np.nan_to_num(md)
    rows = np.flatnonzero(labels.any(axis=(0, 1)))
    if rows.size == 0:
        rows = np.flatnonzero(md.any(axis=(0, 1)))
    slices = np.unique(np.linspace(rows.min(), rows.max(), N_SLICES).round().astype(int))
    figure, axes = plt.subplots(1, len(slices), figsize=(2.2 * len(slices), 2.6))
    for axis, z in zip(np.atleast_1d(axes), slices, strict=True):
        axis.imshow(md[:, :, z].T, origin="lower", cmap="gray", vmin=0, vmax=MD_DISPLAY_MAX)
        overlay = np.ma.masked_equal(labels[:, :, z].T, 0)
        axis.imshow(
            overlay,
            origin="lower",
            cmap="tab10",
            vmin=1,
            vmax=10,
            alpha=0.6,
            interpolation="nearest",
        )
        axis.set_title(f"z={z}", fontsize=8, y=TITLE_Y)
        axis.axis("off")
    return _png(figure)


def contour_montage(
    background: np.ndarray, outline: np.ndarray, like: np.ndarray | None = None
) -> str:
    """Axial slices of one image with the edge of a mask from the other space drawn in red:
    registration QC at a glance (as fMRIPrep/QSIPrep reportlets); a base64 PNG. The slices
    span the outline's extent, or that of ``like`` (the other panel of a before/after pair)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    background = np.nan_to_num(background)
    rows = np.flatnonzero((outline if like is None else like).any(axis=(0, 1)))
    if rows.size == 0:
        rows = np.arange(background.shape[2])
    margin = max(1, (rows.max() - rows.min()) // 8)
    slices = np.linspace(rows.min() + margin, rows.max() - margin, N_SLICES)
    slices = np.unique(slices.round().astype(int))
    vmax = np.percentile(background[background > 0], 99.5) if background.any() else 1.0
    figure, axes = plt.subplots(1, len(slices), figsize=(2.2 * len(slices), 2.6))
    for axis, z in zip(np.atleast_1d(axes), slices, strict=True):
        axis.imshow(background[:, :, z].T, origin="lower", cmap="gray", vmin=0, vmax=vmax)
        if outline[:, :, z].any():
            axis.contour(outline[:, :, z].T.astype(float), levels=[0.5], colors="red",
                         linewidths=0.8)  # fmt: skip
        axis.set_title(f"z={z}", fontsize=8, y=TITLE_Y)
        axis.axis("off")
    return _png(figure)


def _moved_into(
    in_file: Path, reference: Path, transform: Path | None, invert: bool = False
) -> np.ndarray:
    """`in_file` resampled onto `reference` through one published transform (or its inverse);
    with no transform, by the headers alone (where the image lay before registration)."""
    from ketamine_dti.anat.registration import apply_transforms, invert_affine_file
    from ketamine_dti.ants_backend import identity_file

    with tempfile.TemporaryDirectory() as tmp:
        if transform is None:
            transform = identity_file(tmp)
        elif invert:
            transform = invert_affine_file(transform, Path(tmp) / "inverse.mat")
        moved = apply_transforms(in_file, reference, [str(transform)], Path(tmp) / "moved.nii")
        return nib.load(moved).get_fdata()


def registration_figures(out: Path, participant: bids.ParticipantInputs) -> dict[str, str]:
    """Before/after panels from the published files alone (empty if they are missing): the
    template brain in MNI with the MNI brain outline, as registered and by its header alone;
    each session's b0 with the T1w white-matter outline, after the b0 to T1w registration and
    before it (headers alone), and before distortion correction when there was one. Each pair
    shows the same slices, so the panels switch in place."""
    from ketamine_dti.anat.registration import MNI_RESOLUTION
    from ketamine_dti.resources import get_template

    subject = participant.subject
    mni_t1w = spec_path(out, "t1w_mni", subject)
    wm = spec_path(out, "probseg_wm", subject)
    if not (mni_t1w.exists() and wm.exists()):
        return {}
    mni_mask = get_template(resolution=MNI_RESOLUTION, desc="brain", suffix="mask")
    mni_outline = nib.load(mni_mask).get_fdata() > 0
    unregistered = _moved_into(spec_path(out, "t1w_preproc", subject), mni_t1w, None)
    unregistered *= _moved_into(spec_path(out, "t1w_mask", subject), mni_t1w, None) > 0.5
    figures = {
        "mni": contour_montage(nib.load(mni_t1w).get_fdata(), mni_outline),
        "mni:before": contour_montage(unregistered, mni_outline),
    }
    for session in participant.sessions:
        b0_file = spec_path(out, "b0_reference", subject, session.session)
        xfm = spec_path(out, "xfm_dwi_t1w", subject, session.session)
        b0 = nib.load(b0_file).get_fdata()
        wm_in_dwi = _moved_into(wm, b0_file, xfm, invert=True) > WM_OUTLINE_PROBABILITY
        figures[session.session] = contour_montage(b0, wm_in_dwi)
        by_header = _moved_into(wm, b0_file, None) > WM_OUTLINE_PROBABILITY
        figures[f"{session.session}:before"] = contour_montage(b0, by_header, like=wm_in_dwi)
        uncorrected = spec_path(out, "b0_uncorrected", subject, session.session)
        if uncorrected.exists():
            before = contour_montage(nib.load(uncorrected).get_fdata(), wm_in_dwi)
            figures[f"{session.session}:sdc_before"] = before
    return figures


def motion_plot(confounds: pd.DataFrame) -> str:
    """Translations, rotations and framewise displacement per volume; a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(3, 1, figsize=(8, 5), sharex=True)
    for column in ("trans_x", "trans_y", "trans_z"):
        axes[0].plot(confounds[column], label=column)
    for column in ("rot_x", "rot_y", "rot_z"):
        axes[1].plot(np.degrees(confounds[column]), label=column)
    axes[2].bar(range(len(confounds)), confounds["framewise_displacement"], color="tab:red")
    axes[0].set_ylabel("mm")
    axes[1].set_ylabel("degrees")
    axes[2].set_ylabel("FD (mm)")
    axes[2].set_xlabel("volume")
    for axis in axes[:2]:
        axis.legend(fontsize=7, ncol=3)
    return _png(figure)


def split_reasons(cell) -> list[str]:
    """The reasons of a ``qc_reasons`` cell (empty for n/a)."""
    from ketamine_dti.qc import REASON_SEPARATOR

    if not isinstance(cell, str) or cell in ("", "n/a"):
        return []
    return cell.split(REASON_SEPARATOR)


def crash_links(out: Path, subject: str) -> list[dict]:
    """The participant's crash files, newest first: name, link relative to the report, and
    the failed step's error."""
    return [
        {
            "name": crash.path.name,
            "href": crash.path.relative_to(out).as_posix(),
            "error": crash.error or f"step {crash.node} failed (no error line in the file)",
        }
        for crash in read_crash_files(out / f"sub-{subject}" / "log")
    ]


def _figure(value) -> str:
    return "n/a" if pd.isna(value) else f"{value:.3g}"


def _session_context(config: Config, participant, session, registration) -> dict:
    """What the report shows of one finished session."""
    out = Path(config.output_dir)

    def path(key, ses=session.session):
        return spec_path(out, key, participant.subject, ses, atlas=config.atlas_label)

    qc = pd.read_csv(path("qc_table"), sep="\t")
    rois = pd.read_csv(path("roi_table"), sep="\t")
    row = qc.iloc[0]
    missing = rois[rois["status"] != "ok"] if "status" in rois else rois.iloc[:0]
    return {
        "name": session.session,
        "verdict": row["qc_verdict"],
        "verdict_word": FROM_QC_VERDICT.get(row["qc_verdict"], FAILED),
        "reasons": split_reasons(row["qc_reasons"]),
        "mean_fd": _figure(row.get("mean_fd")),
        "n_outliers": _figure(row.get("n_outlier_volumes")),
        "dice": _figure(row.get("reg_dwi_t1w_dice")),
        "bbr_cost": _figure(row.get("reg_dwi_t1w_bbr_cost")),
        "sdc_method": row["sdc_method"] if "sdc_method" in qc else "none",
        "rois_ok": len(rois) - len(missing),
        "rois_missing": len(missing),
        "missing": [(r["roi"], r.get("reason", "n/a")) for _, r in missing.iterrows()],
        "qc_table": table_html(qc.T, header=False, float_format=lambda v: f"{v:.4g}"),
        "montage": md_montage(
            nib.load(path("md")).get_fdata(), np.asanyarray(nib.load(path("atlas_gm")).dataobj)
        ),
        "motion": motion_plot(pd.read_csv(path("confounds"), sep="\t")),
        "coregistration": registration.get(session.session),
        "coregistration_before": registration.get(f"{session.session}:before"),
        "sdc_before": registration.get(f"{session.session}:sdc_before"),
        "roi_table": table_html(rois, index=False, float_format=lambda v: f"{v:.4g}"),
    }


def write_participant_report(
    config: Config, participant: bids.ParticipantInputs, failure: str | None = None
) -> Path:
    """Render sub-<label>.html: from the participant's derivatives, or, when it failed
    (``failure``: why), its verdict and crash files alone."""
    out = Path(config.output_dir)
    subject = participant.subject
    sessions, mni = [], None
    if failure is not None:
        verdict = Verdict(FAILED, [failure])
    else:
        registration = registration_figures(out, participant)
        sessions = [
            _session_context(config, participant, session, registration)
            for session in participant.sessions
        ]
        if "mni" in registration:
            mni = {"after": registration["mni"], "before": registration["mni:before"]}
        verdict = Verdict(
            worst(s["verdict_word"] for s in sessions),
            [f"ses-{s['name']}: {reason}" for s in sessions for reason in s["reasons"]],
        )
    sections = [Section("summary", "Summary"), Section("errors", "Errors")]
    sections += [Section("anatomy", "Anatomy")] if mni else []
    sections += [Section(f"ses-{anchor(s['name'])}", f"ses-{s['name']}") for s in sessions]
    sections += [Section("methods", "Methods"), Section("software", "Software")]
    citation = out / "logs" / "CITATION.md"
    html = render(
        "participant.html",
        subject=subject,
        version=__version__,
        verdict=verdict,
        sections=sections,
        failure=failure,
        crashes=crash_links(out, subject),
        sessions=sessions,
        session_names=[f"ses-{s.session}" for s in participant.sessions],
        mni=mni,
        single_session=participant.single_session,
        methods=methods_html(citation.read_text()) if citation.exists() else None,
    )
    return bids.atomic_write_text(out / f"sub-{subject}.html", html)
