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
from ketamine_dti.derivatives import spec_path

LOGGER = logging.getLogger(__name__)

#: Axial slices shown in the MD montage.
N_SLICES = 8
#: MD display range (mm^2/s): tissue up to twice gray matter; CSF saturates.
MD_DISPLAY_MAX = 2.0e-3
#: The outline drawn on the b0: white matter (T1w tissue probability above this) moved into DWI.
WM_OUTLINE_PROBABILITY = 0.5


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
        axis.set_title(f"z={z}", fontsize=8)
        axis.axis("off")
    return _png(figure)


def contour_montage(background: np.ndarray, outline: np.ndarray) -> str:
    """Axial slices of one image with the edge of a mask from the other space drawn in red:
    registration QC at a glance (as fMRIPrep/QSIPrep reportlets); a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    background = np.nan_to_num(background)
    rows = np.flatnonzero(outline.any(axis=(0, 1)))
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
        axis.set_title(f"z={z}", fontsize=8)
        axis.axis("off")
    return _png(figure)


def _moved_into(in_file: Path, reference: Path, transform: Path, invert: bool) -> np.ndarray:
    """`in_file` resampled onto `reference` through one published transform (or its inverse)."""
    from ketamine_dti.anat.registration import apply_transforms, invert_affine_file

    with tempfile.TemporaryDirectory() as tmp:
        if invert:
            transform = invert_affine_file(transform, Path(tmp) / "inverse.mat")
        moved = apply_transforms(in_file, reference, [str(transform)], Path(tmp) / "moved.nii")
        return nib.load(moved).get_fdata()


def registration_figures(out: Path, participant: bids.ParticipantInputs) -> dict[str, str]:
    """Template brain in MNI with the MNI brain outline; each session's b0 with the T1w white
    matter outline. Built from the published files alone; empty if they are missing."""
    from ketamine_dti.anat.registration import MNI_RESOLUTION
    from ketamine_dti.resources import get_template

    subject = participant.subject
    mni_t1w = spec_path(out, "t1w_mni", subject)
    wm = spec_path(out, "probseg_wm", subject)
    if not (mni_t1w.exists() and wm.exists()):
        return {}
    mni_mask = get_template(resolution=MNI_RESOLUTION, desc="brain", suffix="mask")
    figures = {
        "mni": contour_montage(nib.load(mni_t1w).get_fdata(), nib.load(mni_mask).get_fdata() > 0)
    }
    for session in participant.sessions:
        b0 = spec_path(out, "b0_reference", subject, session.session)
        xfm = spec_path(out, "xfm_dwi_t1w", subject, session.session)
        wm_in_dwi = _moved_into(wm, b0, xfm, invert=True) > WM_OUTLINE_PROBABILITY
        figures[session.session] = contour_montage(nib.load(b0).get_fdata(), wm_in_dwi)
        uncorrected = spec_path(out, "b0_uncorrected", subject, session.session)
        if uncorrected.exists():  # the same slices and outline: the panels flicker in place
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


def write_participant_report(config: Config, participant: bids.ParticipantInputs) -> Path:
    """Render sub-<label>.html from the participant's derivatives."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    out = Path(config.output_dir)
    registration = registration_figures(out, participant)
    sessions = []
    for session in participant.sessions:

        def path(key, ses=session.session):
            return spec_path(out, key, participant.subject, ses, atlas=config.atlas_label)

        md = nib.load(path("md"))
        kept = nib.load(path("atlas_gm"))
        confounds = pd.read_csv(path("confounds"), sep="\t")
        qc = pd.read_csv(path("qc_table"), sep="\t")
        rois = pd.read_csv(path("roi_table"), sep="\t")
        verdict = qc["qc_verdict"].iloc[0]
        sessions.append(
            {
                "name": session.session,
                "verdict": verdict,
                "reasons": split_reasons(qc["qc_reasons"].iloc[0]),
                "qc_table": qc.T.to_html(header=False, float_format=lambda v: f"{v:.4g}"),
                "montage": md_montage(md.get_fdata(), np.asanyarray(kept.dataobj)),
                "motion": motion_plot(confounds),
                "coregistration": registration.get(session.session),
                "sdc_before": registration.get(f"{session.session}:sdc_before"),
                "sdc_method": qc["sdc_method"].iloc[0] if "sdc_method" in qc else "none",
                "roi_table": rois.to_html(index=False, float_format=lambda v: f"{v:.4g}"),
            }
        )
    environment = Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(enabled_extensions=()),
    )
    html = environment.get_template("participant.html").render(
        subject=participant.subject,
        version=__version__,
        sessions=sessions,
        mni_registration=registration.get("mni"),
        single_session=participant.single_session,
    )
    report = out / f"sub-{participant.subject}.html"
    report.write_text(html)
    return report
