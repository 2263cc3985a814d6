"""One participant's anatomy, and each session's DWI grid, in either registration design.

``longitudinal`` (the App's design): one halfway subject template from both sessions' T1w, one
brain extraction, one tissue segmentation and one MNI registration on it; each session reaches
it by its halfway rigid. ``independent`` (for the null benchmark only): every session is
extracted, segmented and registered to MNI on its own, as a cross-sectional pipeline would.

These functions chain the steps of ``brain``, ``longitudinal``, ``segmentation`` and
``registration`` with files in and out, so a benchmark can run them without Nipype and a
workflow can call them as a single node or wire the same steps itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ketamine_dti.anat.brain import apply_mask, bias_correct, extract_brain, mask_in_session
from ketamine_dti.anat.longitudinal import build_subject_template
from ketamine_dti.anat.registration import (
    DEFAULT_SEED,
    PathLike,
    Registration,
    apply_transforms,
    compose_transforms,
    dice,
    register_linear,
    register_to_mni,
)
from ketamine_dti.anat.segmentation import segment_tissues

LOGGER = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("longitudinal", "independent")


@dataclass(frozen=True)
class AnatSession:
    """One session's T1w products on its own T1w grid, and the maps into it."""

    session: str
    t1w_file: str  # bias-corrected head T1w
    brain_file: str
    mask_file: str
    from_mni_to_t1w: tuple[str, ...]
    from_tissue_to_t1w: tuple[str, ...]  # tissue maps' grid -> this session's T1w (may be ())
    gm_file: str  # tissue probabilities, on the tissue grid
    csf_file: str
    wm_file: str
    qc: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AnatParticipant:
    """All sessions of a participant, the design used, QC, and wall/CPU time per step (s)."""

    mode: str
    sessions: dict[str, AnatSession]
    template_file: str | None
    qc: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


class _Timer:
    """Wall time and process CPU time (s) per step; CPU time is what a busy machine distorts
    least (ANTs runs in this process, so its threads are counted)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def __call__(self, name: str, func, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = func(*args, **kwargs)
        for key, elapsed in (
            (f"{name}_wall_s", time.perf_counter() - wall),
            (f"{name}_cpu_s", time.process_time() - cpu),
        ):
            self.timings[key] = self.timings.get(key, 0.0) + elapsed
        return result


def run_anat_participant(
    t1w_files: Mapping[str, PathLike],
    out_dir: PathLike,
    *,
    mode: str = "longitudinal",
    resolution: int = 2,
    template_file: PathLike | None = None,
    template_mask_file: PathLike | None = None,
    seed: int = DEFAULT_SEED,
    n_threads: int | None = None,
) -> AnatParticipant:
    """Anatomy of one participant: ``t1w_files`` maps session label -> raw T1w, baseline first.

    ``template_file``/``template_mask_file`` override the bundled MNI152NLin6Asym brain at
    ``resolution`` mm (tests). Outputs go under ``out_dir`` (one sub-folder per step).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    out_dir = Path(out_dir).absolute()
    timer = _Timer()
    sessions = list(t1w_files)
    tpl_kwargs = {"template_file": template_file, "template_mask_file": template_mask_file}
    reg_kwargs = {"seed": seed, "n_threads": n_threads}
    n4 = {
        ses: timer("bias_correct", bias_correct, t1w_files[ses], out_dir / f"ses-{ses}" / "n4")
        for ses in sessions
    }
    result: dict[str, AnatSession] = {}
    qc: dict[str, float] = {}
    if mode == "longitudinal":
        tpl = timer(
            "subject_template",
            build_subject_template,
            [n4[s] for s in sessions],
            out_dir / "template",
            **reg_kwargs,
        )
        qc.update({f"template_{k}": v for k, v in tpl.qc.items()})
        bex = timer(
            "brain_extraction",
            extract_brain,
            tpl.template_file,
            out_dir / "brain",
            template_resolution=resolution,
            **tpl_kwargs,
            **reg_kwargs,
        )
        seg = timer(
            "segmentation",
            segment_tissues,
            bex.brain_file,
            bex.mask_file,
            out_dir / "tissue",
            n_threads=n_threads,
        )
        mni = timer(
            "mni_registration",
            register_to_mni,
            bex.brain_file,
            bex.mask_file,
            out_dir / "mni",
            resolution=resolution,
            initial_transform=bex.affine_t1w_to_template,
            **tpl_kwargs,
            **reg_kwargs,
        )
        qc.update({f"mni_{k}": v for k, v in mni.qc.items()})
        qc.update({f"brain_{k}": v for k, v in bex.qc.items()})
        for index, ses in enumerate(sessions):
            ses_dir = out_dir / f"ses-{ses}"
            to_session = tpl.from_template_to_session[index]
            mask = timer(
                "session_masks",
                mask_in_session,
                bex.mask_file,
                n4[ses],
                to_session,
                ses_dir / "t1w_brainmask.nii.gz",
            )
            brain = apply_mask(n4[ses], mask, ses_dir / "t1w_brain.nii.gz")
            result[ses] = AnatSession(
                session=ses,
                t1w_file=n4[ses],
                brain_file=brain,
                mask_file=mask,
                from_mni_to_t1w=compose_transforms(mni.from_fixed_to_moving, to_session),
                from_tissue_to_t1w=tuple(to_session),
                gm_file=seg.gm_file,
                csf_file=seg.csf_file,
                wm_file=seg.wm_file,
                qc={f"mni_{k}": v for k, v in mni.qc.items()},
            )
    else:
        for ses in sessions:
            ses_dir = out_dir / f"ses-{ses}"
            bex = timer(
                "brain_extraction",
                extract_brain,
                n4[ses],
                ses_dir / "brain",
                template_resolution=resolution,
                **tpl_kwargs,
                **reg_kwargs,
            )
            seg = timer(
                "segmentation",
                segment_tissues,
                bex.brain_file,
                bex.mask_file,
                ses_dir / "tissue",
                n_threads=n_threads,
            )
            mni = timer(
                "mni_registration",
                register_to_mni,
                bex.brain_file,
                bex.mask_file,
                ses_dir / "mni",
                resolution=resolution,
                initial_transform=bex.affine_t1w_to_template,
                **tpl_kwargs,
                **reg_kwargs,
            )
            result[ses] = AnatSession(
                session=ses,
                t1w_file=n4[ses],
                brain_file=bex.brain_file,
                mask_file=bex.mask_file,
                from_mni_to_t1w=tuple(mni.from_fixed_to_moving),
                from_tissue_to_t1w=(),
                gm_file=seg.gm_file,
                csf_file=seg.csf_file,
                wm_file=seg.wm_file,
                qc={f"mni_{k}": v for k, v in mni.qc.items()},
            )
        return AnatParticipant(mode, result, None, qc, timer.timings)
    return AnatParticipant(mode, result, tpl.template_file, qc, timer.timings)


def register_dwi_to_t1w(
    b0_file: PathLike,
    t1w_brain_file: PathLike,
    out_dir: PathLike,
    *,
    dwi_mask_file: PathLike | None = None,
    t1w_mask_file: PathLike | None = None,
    seed: int = DEFAULT_SEED,
    n_threads: int | None = None,
) -> Registration:
    """Rigid, mutual-information registration of the session T1w brain onto the DWI grid.

    The mean b0 (or mean DWI) is the *fixed* image so the metric runs on the small DWI grid:
    ``from_moving_to_fixed`` is T1w -> DWI, ``from_fixed_to_moving`` DWI -> T1w. QC:
    ``mutual_information`` and, with both masks, ``dice_mask`` (DWI mask vs T1w mask on the
    DWI grid).
    """
    reg = register_linear(
        b0_file,
        t1w_brain_file,
        out_dir,
        prefix="t1w_to_dwi_",
        transform="Rigid",
        metric="mattes",
        fixed_mask_file=dwi_mask_file,
        seed=seed,
        n_threads=n_threads,
    )
    qc = {"mutual_information": reg.qc["mutual_information"]}
    if dwi_mask_file is not None and t1w_mask_file is not None:
        import ants

        warped_mask = apply_transforms(
            t1w_mask_file,
            b0_file,
            reg.from_moving_to_fixed,
            Path(out_dir) / "t1w_to_dwi_mask.nii.gz",
            interpolation="nearestNeighbor",
        )
        qc["dice_mask"] = dice(
            ants.image_read(str(dwi_mask_file)).numpy() > 0,
            ants.image_read(warped_mask).numpy() > 0,
        )
    return Registration(reg.from_moving_to_fixed, reg.from_fixed_to_moving, reg.warped_file, qc)


@dataclass(frozen=True)
class DwiSpace:
    """Atlas labels and tissue probabilities on a session's DWI grid, and the maps used."""

    dseg_file: str
    gm_file: str
    csf_file: str
    from_mni_to_dwi: tuple[str, ...]
    from_t1w_to_dwi: tuple[str, ...]
    qc: dict[str, float] = field(default_factory=dict)


def bring_to_dwi(
    anat: AnatSession,
    b0_file: PathLike,
    out_dir: PathLike,
    *,
    dwi_mask_file: PathLike | None = None,
    atlas_file: PathLike | None = None,
    atlas_resolution: int = 2,
    method: str = "fraction",
    seed: int = DEFAULT_SEED,
    n_threads: int | None = None,
) -> DwiSpace:
    """Register the session's b0 to its T1w and move atlas, GM and CSF onto the DWI grid.

    ``atlas_file`` defaults to the bundled ketamine7 dseg at ``atlas_resolution`` mm. QC keys:
    ``dwi_t1w_mutual_information``, ``dwi_t1w_dice_mask``.
    """
    from ketamine_dti.rois import atlas_to_dwi, warp_probability

    out_dir = Path(out_dir).absolute()
    if atlas_file is None:
        from ketamine_dti.resources import get_atlas

        atlas_file, _ = get_atlas(resolution=atlas_resolution)
    reg = register_dwi_to_t1w(
        b0_file,
        anat.brain_file,
        out_dir,
        dwi_mask_file=dwi_mask_file,
        t1w_mask_file=anat.mask_file,
        seed=seed,
        n_threads=n_threads,
    )
    from_t1w_to_dwi = tuple(reg.from_moving_to_fixed)
    from_mni_to_dwi = compose_transforms(anat.from_mni_to_t1w, from_t1w_to_dwi)
    from_tissue_to_dwi = compose_transforms(anat.from_tissue_to_t1w, from_t1w_to_dwi)
    dseg = atlas_to_dwi(
        atlas_file, b0_file, from_mni_to_dwi, out_dir / "atlas_dseg.nii.gz", method=method
    )
    gm = warp_probability(anat.gm_file, b0_file, from_tissue_to_dwi, out_dir / "gm_prob.nii.gz")
    csf = warp_probability(anat.csf_file, b0_file, from_tissue_to_dwi, out_dir / "csf_prob.nii.gz")
    qc = {f"dwi_t1w_{k}": float(v) for k, v in reg.qc.items()}
    if not np.isfinite(qc.get("dwi_t1w_dice_mask", 1.0)):
        LOGGER.warning("DWI-T1w mask overlap is undefined (empty masks?)")
    return DwiSpace(dseg, gm, csf, from_mni_to_dwi, from_t1w_to_dwi, qc)
