"""One simulated scanning session: DWI (+ ground-truth ROI masks) and T1w, as arrays.

This module wires :mod:`anatomy`, :mod:`regions` and :mod:`signal`; it does no file I/O (the
BIDS writer does).

The ROIs are the participant's true regions (:mod:`regions`), never the pipeline's atlas. Two
ground-truth masks of them live on the session's DWI grid at the reference head position (the
first b0; every later volume moves relative to it, so a motion-corrected series is in this
space):

- ``region_dseg``: the true region, a voxel being ROI k's when at least
  :data:`REGION_MIN_FRACTION` of it is brain inside ROI k: what an atlas ROI on the DWI grid
  estimates (for its Dice);
- ``truth_dseg``: the essentially pure gray matter of each ROI, where the measured MD should be
  the true one: GM-of-ROI-k fraction >= :data:`TRUTH_MIN_ROI_GM` and CSF fraction <=
  :data:`TRUTH_MAX_CSF`.

A third truth, ``truth_md``, is the apparent MD of every voxel there (:func:`signal.apparent_md`):
averaged over the voxels a pipeline kept, it separates the pipeline's measurement from how well
its voxels match the true regions.

Why: to first order a fraction f of a compartment c with relative S0 r and diffusivity D_c
shifts the apparent MD of GM (MD D) by ``f r (1 - exp(-b (D_c - D))) / (b D)``: about +2.4 per
unit CSF fraction (+2.4% MD per 1% free water), about -0.1 per unit WM fraction (measured
with superficial WM's anisotropy) and up to ~0.1 per unit of GM with another MD
(:data:`BIAS_PER_FRACTION`). The rule keeps each mask voxel's bias under ~0.5%.

Fallback: a thin cortical ROI (BA10) has no such voxel on a 4 mm grid, as in real data. Then
the mask takes the voxels where that ROI holds the majority of the voxel and whose bias bound
``2.4 f_csf + 0.1 f_wm + sum_l f_l |md_l / md_roi - 1|`` (other GM by its actual MD contrast;
absolute values, no cancellation) is within :data:`TRUTH_FALLBACK_MARGIN` of the ROI's best
voxel, so every ROI keeps at least one voxel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ketamine_dti.simulate import anatomy, head, regions, signal, susceptibility
from ketamine_dti.simulate import realism as realism_models
from ketamine_dti.simulate.presets import (
    PHASE_ENCODING_DIRECTION,
    T1W_HEAD_CENTRE_OFFSET_MM,
    Preset,
    get_preset,
)

LOGGER = logging.getLogger(__name__)

#: A DWI voxel is in ROI k's true region when at least half of it is brain inside ROI k.
REGION_MIN_FRACTION = 0.5
#: Truth mask rule (see the module docstring): pure GM of one ROI, (almost) no CSF.
TRUTH_MIN_ROI_GM = 0.95
TRUTH_MAX_CSF = 0.002
#: |Relative MD bias| per unit volume fraction of each contaminant of a GM voxel (docstring).
BIAS_PER_FRACTION = {"csf": 2.4, "wm": 0.1, "other_gm": 0.1}
#: Each DWI voxel is imaged as the mean of SUBVOXELS^3 sub-voxels of the head (when the
#: template resolves them), each moved and interpolated on the sub-voxel grid: a moved head is
#: imaged without the blur of interpolating the DWI grid itself (simulate_dwi).
SUBVOXELS = 2
#: Fallback: the ROI must hold at least this fraction of the voxel, and its bias bound must be
#: within this margin (relative MD) of the ROI's best voxel.
TRUTH_FALLBACK_MIN_ROI_GM = 0.5
TRUTH_FALLBACK_MARGIN = 0.002
#: A voxel is in the brain mask if at least half of it is brain tissue or CSF.
BRAIN_MASK_FRACTION = 0.5
#: The radiographer angles the DWI slab to the head's pitch within this SD (degrees), and
#: centres the field of view on the brain within this SD (mm).
SLAB_PITCH_ERROR_SD_DEG = 3.0
FOV_CENTRING_SD_MM = 4.0
#: Participant motion level: lognormal SD (a few participants move several times more).
MOTION_LEVEL_LOG_SD = 0.5
#: T1w (MPRAGE-like) intensities relative to WM, and the SNR of WM in the T1w.
T1W_RELATIVE = {
    "gm": 0.62,
    "wm": 1.0,
    "csf": head.TISSUES["csf"][0],
    "skull": 0.05,
    "scalp": 0.85,
}
T1W_WM_SIGNAL = 1000.0
T1W_SNR = 30.0
#: Per-participant T1w scaling of the whole head (scanners and converters differ): WM signal
#: multiplied by a log-normal factor (SD T1W_SCALE_LOG_SD), plus an offset up to
#: T1W_OFFSET_MAX x WM, stored as one of T1W_STORAGE ("int16_scaled": int16 with the arbitrary
#: scl_slope/scl_inter that nibabel picks to fit the range).
T1W_SCALE_LOG_SD = 1.0
T1W_OFFSET_MAX = 0.1
T1W_STORAGE = ("int16", "int16_scaled", "uint16", "float32")
#: MD (mm^2/s) of the gray matter of the benchmark session (no clinical model there).
BENCHMARK_GM_MD = 0.80e-3


@dataclass(frozen=True)
class T1wScaling:
    """Stored T1w = scale x signal + offset, in storage dtype (module constants)."""

    scale: float
    offset: float
    storage: str

    def apply(self, magnitude: np.ndarray) -> np.ndarray:
        """Scaled values; integer storages are rounded and clipped to their range."""
        values = magnitude * np.float32(self.scale) + np.float32(self.offset)
        if self.storage in ("int16", "uint16"):
            info = np.iinfo(self.storage)
            return np.clip(np.rint(values), 0, info.max).astype(self.storage)
        return values.astype(np.float32)


def random_t1w_scaling(rng: np.random.Generator) -> T1wScaling:
    """A participant's scanner scaling; integer storages keep their range (no clipping)."""
    storage = str(rng.choice(T1W_STORAGE))
    scale = float(np.exp(rng.normal(0.0, T1W_SCALE_LOG_SD)))
    offset = float(rng.uniform(0.0, T1W_OFFSET_MAX)) * T1W_WM_SIGNAL * scale
    if storage in ("int16", "uint16"):
        # Brightest tissue (fat, ~1.2 WM) x bias (< ~1.5) x coil gain must fit the range.
        top = np.iinfo(storage).max / (2.0 * T1W_WM_SIGNAL * (1.0 + head.COIL_AMPLITUDE_RANGE[1]))
        scale = min(scale, top)
        offset = min(offset, T1W_OFFSET_MAX * T1W_WM_SIGNAL * scale)
    return T1wScaling(scale=scale, offset=round(offset, 3), storage=storage)


@dataclass(frozen=True)
class T1wSession:
    """One T1w: data (stored values, see T1wScaling), affine, true brain mask on its grid."""

    data: np.ndarray
    affine: np.ndarray
    brain_mask: np.ndarray
    storage: str


@dataclass(frozen=True)
class DwiSession:
    """One DWI series and its truth, in the image's own frame.

    data: (X, Y, Z, n) float32 magnitude with Rician noise (equal to ``clean`` when noiseless);
    clean: the same acquisition (same motion and distortion) without noise; bvals (n,) s/mm^2;
    bvecs (n, 3) unit vectors in the voxel frame (FSL convention, LAS image); affine (4, 4);
    sigma: Gaussian noise SD per channel (0 when noiseless); snr: mean WM b0 / sigma;
    brain_mask: brain (incl. CSF) >= 50% of the voxel; truth_dseg: int16 ROI indices (module
    docstring) and truth_rule {index: "pure"/"fallback"/"absent"}; region_dseg: int16 true
    regions (module docstring); fractions: "gm", "wm", "csf" (X, Y, Z), "roi_gm" and "region"
    (L, X, Y, Z) volume fractions at the reference position, as imaged (with any free water
    added, see simulate_dwi); motion: the per-volume motion and eddy parameters. With
    susceptibility distortion (issue 11): field, the true off-resonance at the reference position
    (undistorted, like the truth masks), and reverse_pe (X, Y, Z, n) float32, the reverse
    phase-encoded b=0 volumes (noise as ``data``). truth_md (X, Y, Z) float32: the apparent MD
    (mm^2/s) of every voxel at the reference position, from the noiseless signal before motion,
    eddy and susceptibility resampling (signal.apparent_md): what a perfect pipeline would
    measure there, free water and partial volume included.
    With DWI realism items (issue 12, :mod:`realism`): artefacts, what they did.
    """

    data: np.ndarray
    clean: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    affine: np.ndarray
    sigma: float
    snr: float | None
    brain_mask: np.ndarray
    truth_dseg: np.ndarray
    truth_rule: dict
    region_dseg: np.ndarray
    fractions: dict
    motion: signal.Motion
    field: susceptibility.SessionField | None = None
    reverse_pe: np.ndarray | None = None
    truth_md: np.ndarray | None = None
    artefacts: realism_models.SessionArtefacts | None = None

    def framewise_displacement_mm(self) -> np.ndarray:
        """The true FD per volume (mm): from each volume's mean head position, within-volume
        motion (realism ``slice_motion``) included, the slices weighted by the brain's voxels.

        A jerk during a volume is head motion that the volume's image shows and any volume
        registration measures; leaving it out put a slab session's truth at 0.38 mm where the
        head's mean positions moved 0.73 mm (session 43).
        """
        slice_motion = None if self.artefacts is None else self.artefacts.slice_motion
        if slice_motion is None:
            return self.motion.framewise_displacement_mm()
        weights = self.brain_mask.sum(axis=(0, 1))
        offsets = slice_motion.volume_offsets(len(self.bvals), weights)
        return self.motion.framewise_displacement_mm(offsets=offsets)


def truth_masks(
    gm_by_label: np.ndarray, wm: np.ndarray, csf: np.ndarray, gm_md: np.ndarray | None = None
) -> tuple[np.ndarray, dict[int, str]]:
    """ROI indices of the essentially pure-GM voxels of each ROI, and the rule used per ROI.

    gm_by_label (L+1, X, Y, Z): GM fraction per label (0 = GM outside every ROI); gm_md
    (L+1, X, Y, Z): the MD of each label's GM per voxel (mm^2/s). In the fallback, GM of other
    labels counts by its actual MD contrast with the ROI (``|md_l / md_k - 1|``, absolute);
    without gm_md it counts BIAS_PER_FRACTION["other_gm"].
    """
    n_labels = gm_by_label.shape[0] - 1
    dseg = np.zeros(csf.shape, dtype=np.int16)
    rule: dict[int, str] = {}
    for label in range(1, n_labels + 1):
        roi_gm = gm_by_label[label]
        pure = (roi_gm >= TRUTH_MIN_ROI_GM) & (csf <= TRUTH_MAX_CSF)
        if pure.any():
            dseg[pure] = label
            rule[label] = "pure"
            continue
        candidates = (roi_gm >= TRUTH_FALLBACK_MIN_ROI_GM) & (dseg == 0)
        if not candidates.any():
            candidates = (roi_gm > 0) & (roi_gm == roi_gm.max()) & (dseg == 0)
        if not candidates.any():
            rule[label] = "absent"
            continue
        bound = BIAS_PER_FRACTION["csf"] * csf + BIAS_PER_FRACTION["wm"] * wm
        for other in range(n_labels + 1):
            if other == label:
                continue
            if gm_md is None:
                contrast = BIAS_PER_FRACTION["other_gm"]
            else:
                contrast = np.abs(gm_md[other] / gm_md[label] - 1.0)
            bound = bound + contrast * gm_by_label[other]
        best = bound[candidates].min()
        dseg[candidates & (bound <= best + TRUTH_FALLBACK_MARGIN)] = label
        rule[label] = "fallback"
    fallback = [k for k, r in rule.items() if r != "pure"]
    if fallback:
        LOGGER.debug("truth mask fallback for labels %s", fallback)
    return dseg, rule


def region_masks(region: np.ndarray) -> np.ndarray:
    """ROI index (int16) of each voxel whose brain is at least REGION_MIN_FRACTION in one ROI.

    region (L, X, Y, Z): brain volume fraction inside each ROI (regions do not overlap, so at
    most one ROI can hold half of a voxel).
    """
    dseg = np.zeros(region.shape[1:], dtype=np.int16)
    for label, fraction in enumerate(region, start=1):
        dseg[fraction >= REGION_MIN_FRACTION] = label
    return dseg


def gm_md_map(gm_by_label: np.ndarray, reach_gm: np.ndarray, label_md: np.ndarray) -> np.ndarray:
    """MD (mm^2/s) of each label's GM per voxel (L+1, X, Y, Z).

    ROI k's GM has exactly ``label_md[k]``. GM outside the ROIs has the participant-level
    ``label_md[0]``, pulled towards nearby ROIs' MD by their reach (weights summing to <= 1).
    """
    gm_md = np.broadcast_to(
        np.asarray(label_md, dtype=np.float32)[:, None, None, None],
        (len(label_md), *gm_by_label.shape[1:]),
    ).copy()
    if len(reach_gm) == 0:
        return gm_md
    outside = gm_by_label[0]
    weights = np.divide(reach_gm, outside, out=np.zeros_like(reach_gm), where=outside > 0)
    total = weights.sum(axis=0)
    weights /= np.maximum(total, 1.0)
    contrast = np.asarray(label_md[1:], dtype=np.float32) - np.float32(label_md[0])
    gm_md[0] += np.tensordot(contrast, weights, axes=1)
    return gm_md


def simulate_dwi(
    template: anatomy.TemplateAnatomy,
    participant: anatomy.ParticipantAnatomy,
    pose: anatomy.HeadPose,
    preset: Preset,
    rng: np.random.Generator,
    label_md: np.ndarray,
    atlas: anatomy.RoiAtlas | None,
    snr: float | None,
    motion_level: float = 1.0,
    head_shape: head.HeadShape | None = None,
    distortion: str = "none",
    fieldmap_rng: np.random.Generator | None = None,
    free_water: np.ndarray | None = None,
    realism: realism_models.Realism = realism_models.IDEAL,
) -> DwiSession:
    """One DWI series of one session; ``snr=None`` gives the ideal (noiseless, still) series.

    label_md: GM MD (mm^2/s) for label 0 (GM outside the ROIs) and each ROI 1..L; ``atlas``:
    the participant's true regions (regions.participant_regions). ``free_water`` (L,): CSF added
    to each ROI in this session, as a fraction of its brain volume, in place of its GM
    (anatomy.add_region_free_water); the truth masks keep the anatomy's tissue. A
    ``head_shape`` adds the head outside the brain (isotropic, head.TISSUES); the brain is as is.
    ``distortion`` (susceptibility.DISTORTION_CHOICES, needs the head) plants the head's
    susceptibility field in every volume and makes the reverse phase-encoded b0s, whose noise
    comes from ``fieldmap_rng`` (``rng`` is used exactly as without distortion). ``realism``
    (its DWI items) adds second-order eddy currents with their Jacobian, within-volume motion,
    k-space truncation and slice dropouts from its own random streams (``rng`` is used exactly
    as without them).
    """
    level = susceptibility.get_level(distortion)
    if level is not None and head_shape is None:
        raise ValueError("susceptibility distortion needs the whole head (head_shape)")
    n_labels = len(label_md) - 1
    slab_pitch = pose.angles_deg[0] + rng.normal(0.0, SLAB_PITCH_ERROR_SD_DEG)
    affine = anatomy.scanner_grid(
        pose,
        preset.dwi_voxel_mm,
        preset.dwi_shape,
        slab_pitch_deg=slab_pitch,
        offset_mm=np.add(preset.dwi_fov_offset_mm, rng.normal(0.0, FOV_CENTRING_SD_MM, 3)),
    )
    oversample = int(round(preset.dwi_voxel_mm / abs(template.affine[0, 0])))
    factor = SUBVOXELS if oversample % SUBVOXELS == 0 else 1
    fine_affine, fine_shape = anatomy.subvoxel_grid(affine, preset.dwi_shape, factor)
    fine_anatomy = anatomy.voxel_tissue(
        template, participant, pose, fine_affine, fine_shape, oversample // factor, atlas, n_labels
    )
    fine = fine_anatomy
    if free_water is not None and np.any(free_water):
        fine = anatomy.add_region_free_water(fine_anatomy, free_water)
    anatomy_tissue = anatomy.coarsen_tissue(fine_anatomy, factor)
    tissue = anatomy_tissue if fine is fine_anatomy else anatomy.coarsen_tissue(fine, factor)
    del fine_anatomy
    bvals, bvecs = signal.gradient_scheme(preset.n_directions, preset.n_b0, preset.bval)
    noiseless = snr is None
    motion = (
        signal.no_motion(len(bvals))
        if noiseless
        else signal.random_motion(rng, len(bvals), level=motion_level)
    )
    s0_field = signal.S0_WM * signal.bias_field(
        rng,
        fine_shape,
        preset.dwi_voxel_mm / factor,
        preset.receive_linear_mean,
        preset.receive_quadratic_mean,
    )
    outside = None
    if head_shape is not None:
        grid = (template, participant, pose, affine)
        outside = extracerebral_signal(tissue.brain, bvals, head_shape, grid, factor)
    head_signal = signal.tissue_signal(
        fine.gm_by_label,
        fine.wm,
        fine.csf,
        fine.fibre_tensor,
        fine.wm_depth,
        gm_md_map(fine.gm_by_label, fine.reach_gm, label_md),
        bvals,
        signal.head_frame_gradients(bvecs, motion),
        s0_field,
        outside,
        signal.b0_contrast(preset.b0_repetition_time_s),
    )
    del fine, s0_field, outside
    reference = anatomy.block_mean_series(head_signal, factor)
    truth_md = signal.apparent_md(reference, bvals)
    artefacts = None
    if realism.any_dwi:
        artefacts = draw_artefacts(realism, motion, bvals, tissue.brain, preset)
    clean = realism_models.move_series(
        head_signal,
        preset.dwi_voxel_mm,
        motion,
        bvals,
        bvecs,
        realism_models.full_eddy(motion, None) if artefacts is None else artefacts.eddy,
        artefacts is not None and artefacts.eddy_jacobian,
        None if artefacts is None else artefacts.slice_motion,
        factor,
    )
    del head_signal
    gm_md = gm_md_map(tissue.gm_by_label, tissue.reach_gm, label_md)
    field = reverse_pe = None
    if level is not None:
        grid = (template, participant, pose, affine)
        field, reverse_pe = plant_distortion(
            clean, reference[..., 0], grid, head_shape, preset, level, motion
        )
    del reference
    if artefacts is not None:
        apply_acquisition_artefacts(artefacts, clean, reverse_pe, realism)
    if noiseless:
        data, sigma = clean, 0.0
    else:
        sigma = signal.snr_sigma(clean[..., 0], tissue.wm, snr)
        data = signal.add_rician_noise(clean, sigma, rng)
        if reverse_pe is not None:
            if fieldmap_rng is None:
                raise ValueError("a noisy distorted series needs fieldmap_rng for its fieldmap")
            reverse_pe = signal.add_rician_noise(reverse_pe, sigma, fieldmap_rng)
    dseg, rule = truth_masks(
        anatomy_tissue.gm_by_label, anatomy_tissue.wm, anatomy_tissue.csf, gm_md
    )
    del anatomy_tissue
    return DwiSession(
        data=data,
        clean=clean,
        bvals=bvals,
        bvecs=bvecs,
        affine=affine,
        sigma=sigma,
        snr=snr,
        brain_mask=tissue.brain >= BRAIN_MASK_FRACTION,
        truth_dseg=dseg,
        truth_rule=rule,
        region_dseg=region_masks(tissue.region),
        fractions={
            "gm": tissue.gm,
            "wm": tissue.wm,
            "csf": tissue.csf,
            "roi_gm": tissue.gm_by_label[1:],
            "region": tissue.region,
        },
        motion=motion,
        field=field,
        reverse_pe=reverse_pe,
        truth_md=truth_md,
        artefacts=artefacts,
    )


def draw_artefacts(
    realism: realism_models.Realism,
    motion: signal.Motion,
    bvals: np.ndarray,
    brain: np.ndarray,
    preset: Preset,
) -> realism_models.SessionArtefacts:
    """The session's DWI realism draws, each item from its own stream (realism.Realism.rng)."""
    quadratic = None
    if "eddy" in realism:
        quadratic = realism_models.random_eddy_quadratic(realism.rng("eddy"))
    slice_motion = dropouts = phases = None
    if "slice_motion" in realism:
        slice_motion = realism_models.random_slice_motion(
            realism.rng("slice_motion"), len(bvals), preset.dwi_shape[2]
        )
    if "dropouts" in realism:
        brain_slices = (brain >= BRAIN_MASK_FRACTION).any(axis=(0, 1))
        dropouts = realism_models.random_dropouts(realism.rng("dropouts"), bvals, brain_slices)
    if "gibbs" in realism:
        phases = realism_models.random_phases(realism.rng("gibbs"), bvals)
    return realism_models.SessionArtefacts(
        eddy=realism_models.full_eddy(motion, quadratic),
        eddy_jacobian=quadratic is not None,
        slice_motion=slice_motion,
        dropouts=dropouts,
        phases=phases,
        omit_high=PHASE_ENCODING_DIRECTION.endswith("-"),
    )


def apply_acquisition_artefacts(
    artefacts: realism_models.SessionArtefacts,
    clean: np.ndarray,
    reverse_pe: np.ndarray | None,
    realism: realism_models.Realism,
) -> None:
    """k-space truncation (then dropouts) of the moved, distorted series, in place.

    The reverse phase-encoded b0s traverse k-space the other way: partial Fourier omits the
    opposite lines; their phases come after the series' in the ``gibbs`` stream.
    """
    if artefacts.phases is not None:
        realism_models.truncate_series(clean, artefacts.phases, artefacts.omit_high)
        if reverse_pe is not None:
            stream = realism.rng("gibbs")
            realism_models.random_phases(stream, np.zeros(clean.shape[3]))
            phases = realism_models.random_phases(stream, np.zeros(reverse_pe.shape[3]))
            realism_models.truncate_series(reverse_pe, phases, not artefacts.omit_high)
    if artefacts.dropouts is not None:
        artefacts.dropouts.apply(clean)


def plant_distortion(
    clean: np.ndarray,
    reference_b0: np.ndarray,
    grid: tuple,
    head_shape: head.HeadShape,
    preset: Preset,
    level: susceptibility.DistortionLevel,
    motion: signal.Motion,
) -> tuple[susceptibility.SessionField, np.ndarray]:
    """Displace a moved series (in place) by the session's susceptibility field; its fieldmap.

    grid: (template, participant, pose, affine) of the DWI. Each volume is displaced along PE
    after its motion and eddy resampling, with the head's field moved like the head (the
    eddy x field-gradient cross-term, ~0.05 mm, is neglected). The fieldmap is
    susceptibility.FIELDMAP_VOLUMES b=0 volumes of the reference b0 with the opposite PE
    direction, at the first volume's head position (acquired just before the series). Returns
    the field and the clean fieldmap (X, Y, Z, n) float32.
    """
    shape = clean.shape[:3]
    field = susceptibility.session_field(grid, head_shape, shape, preset, level)
    rigid = [
        signal.rigid_index_matrix(
            shape, preset.dwi_voxel_mm, motion.translations_mm[v], motion.rotations_deg[v]
        )
        for v in range(clean.shape[3])
    ]
    susceptibility.distort_series(clean, field, rigid, PHASE_ENCODING_DIRECTION)
    reverse = susceptibility.reverse_direction(PHASE_ENCODING_DIRECTION)
    axis, _ = susceptibility.phase_encoding(reverse)
    reverse_b0 = susceptibility.displace_along_axis(
        reference_b0, field.displacement_voxels(reverse), axis
    )
    volumes = np.repeat(reverse_b0[..., None], susceptibility.FIELDMAP_VOLUMES, axis=3)
    return field, np.asfortranarray(volumes)


def extracerebral_signal(
    brain: np.ndarray, bvals: np.ndarray, head_shape: head.HeadShape, grid: tuple, factor: int
) -> signal.OutsideSignal:
    """The head's DWI signal outside the brain, for signal.tissue_signal on a grid ``factor``
    times finer than the DWI's.

    grid: (template, participant, pose, affine) of the DWI; brain (X, Y, Z): its brain
    fraction. The head's tissues are painted per DWI voxel (their boundaries are far from the
    brain's ROIs) and fill what the brain leaves of each sub-voxel.
    """
    template, participant, pose, affine = grid
    table, column = head.dwi_table(bvals)
    values, _, _ = head.head_properties(
        template, participant, pose, head_shape, affine, brain.shape, table, brain
    )
    return signal.OutsideSignal(values, column, factor)


def t1w_grid(
    pose: anatomy.HeadPose, preset: Preset, full_head: bool
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """T1w affine and shape: the brain-centred box, or (full head) a box reaching the neck."""
    if not full_head:
        shape = preset.t1w_shape
        return anatomy.scanner_grid(pose, preset.t1w_voxel_mm, shape), shape
    shape = preset.t1w_head_shape
    offset = np.asarray(T1W_HEAD_CENTRE_OFFSET_MM, dtype=float)
    return anatomy.scanner_grid(pose, preset.t1w_voxel_mm, shape, offset_mm=offset), shape


def simulate_t1w(
    template: anatomy.TemplateAnatomy,
    participant: anatomy.ParticipantAnatomy,
    pose: anatomy.HeadPose,
    preset: Preset,
    rng: np.random.Generator,
    head_shape: head.HeadShape | None = None,
    scaling: T1wScaling | None = None,
    contrast: realism_models.T1wContrast | None = None,
    realism: realism_models.Realism = realism_models.IDEAL,
) -> T1wSession:
    """A T1w of the head (brain, then either the whole head or a thin shell), bias and noise.

    ``head_shape=None`` gives the brain-only T1w (a synthetic CSF/skull/scalp shell, int16); a
    ``head_shape`` gives the whole head down to the neck (:mod:`head`) stored with ``scaling``.
    The true brain mask holds the voxels at least half brain tissue or CSF (as on the DWI).
    Realism (issue 12): a participant's ``contrast`` replaces the fixed linear tissue mix;
    ``realism``'s ``t1w_bias`` adds a cubic bias field and ``t1w_noise`` correlates the noise
    and varies its level (``rng`` is used exactly as without them).
    """
    affine, shape = t1w_grid(pose, preset, head_shape is not None)
    tissue = anatomy.voxel_tissue(
        template, participant, pose, affine, shape, 1, None, 0, with_fibre=False
    )
    brain = tissue.brain
    relative = T1W_RELATIVE
    gain = 1.0
    if head_shape is None:
        outside = brain_only_shell(tissue.shell_distance_mm)
    else:
        values, _, depth = head.head_properties(
            template, participant, pose, head_shape, affine, shape, head.t1w_table(), brain
        )
        outside = values[0]
        gain = head.coil_gain(depth, head_shape.coil_amplitude, head_shape.coil_length_mm)
    if contrast is None:
        intensity = (
            relative["gm"] * tissue.gm
            + relative["wm"] * tissue.wm
            + relative["csf"] * tissue.csf
            + np.clip(1.0 - brain, 0.0, 1.0) * outside
        )
    else:
        intensity = contrast.intensity(tissue.gm, tissue.wm, tissue.csf)
        intensity += np.clip(1.0 - brain, 0.0, 1.0) * outside
    voxel_mm = preset.t1w_voxel_mm
    clean = T1W_WM_SIGNAL * intensity * signal.bias_field(rng, shape, voxel_mm)
    clean *= gain
    if "t1w_bias" in realism:
        clean *= realism_models.polynomial_log_field(
            realism.rng("t1w_bias"), shape, voxel_mm, 3, realism_models.T1W_BIAS_LOG_SD
        )
    sigma = T1W_WM_SIGNAL / T1W_SNR
    if "t1w_noise" in realism:
        level = realism_models.polynomial_log_field(
            realism.rng("t1w_noise"), shape, voxel_mm, 2, realism_models.T1W_NOISE_LEVEL_LOG_SD
        )
        noisy = realism_models.correlated_rician_noise(
            clean.astype(np.float32), sigma * level, rng
        )
    else:
        noisy = signal.add_rician_noise(clean.astype(np.float32), sigma, rng)
    if scaling is None:
        data = np.clip(np.rint(noisy), 0, np.iinfo(np.int16).max).astype(np.int16)
        storage = "int16"
    else:
        data, storage = scaling.apply(noisy), scaling.storage
    mask = brain >= BRAIN_MASK_FRACTION
    return T1wSession(data=data, affine=affine, brain_mask=mask, storage=storage)


def brain_only_shell(shell_distance_mm: np.ndarray) -> np.ndarray:
    """T1w (relative) of the brain-only head: CSF, skull, scalp, air by distance from the hull."""
    relative = T1W_RELATIVE
    knots = [0.0, 2.0, 3.0, 7.0, 8.0, 11.0, 13.0]
    values = [
        relative["csf"],
        relative["csf"],
        relative["skull"],
        relative["skull"],
        relative["scalp"],
        relative["scalp"],
        0.0,
    ]
    return np.interp(shell_distance_mm, knots, values).astype(np.float32)


def simulate_benchmark_session(
    preset: str = "standard",
    seed: int = 0,
    snr: float | None = None,
    realism: str = "ideal",
    realism_off: tuple[str, ...] = (),
    still: bool = False,
) -> DwiSession:
    """A realistic single DWI session for kernel benchmarks (no clinical model, no files).

    ``data`` has Rician noise at ``snr`` (default: the preset's, see :mod:`signal` for the
    definition); ``clean`` is the same series (same motion and eddy distortion) without noise.
    ``still``: the same head and pose imaged still and noiseless (``simulate_dwi`` with
    ``snr=None``: no motion, no eddy currents; ``realism`` must then be ``ideal``).
    ROIs (the participant's true regions) get the clinical model's population baseline MDs,
    other GM :data:`BENCHMARK_GM_MD`. ``realism`` (realism.REALISM_LEVELS) adds its DWI items
    (eddy, slice_motion, dropouts, gibbs; the anatomy and T1w items do not apply here), whose
    draws are in ``artefacts``; ``realism_off`` switches items off (each item draws from its
    own stream, so the rest of the session is the same).
    """
    from ketamine_dti.rois import ROI_NAMES
    from ketamine_dti.simulate.clinical import ROI_BASELINE_MD

    chosen = get_preset(preset)
    snr = chosen.default_snr if snr is None else float(snr)
    if snr <= 0:
        raise ValueError(f"snr={snr}; give a positive signal-to-noise ratio")
    rng = np.random.default_rng([seed, 0])
    template = anatomy.load_template_anatomy()
    boundary_rng = np.random.default_rng([seed, 0, regions.BOUNDARY_STREAM])
    atlas, _ = regions.participant_regions(boundary_rng, ROI_NAMES)
    participant = anatomy.random_participant(rng, template)
    pose = anatomy.random_head_pose(rng, template.centre_mm)
    label_md = np.array([BENCHMARK_GM_MD] + [ROI_BASELINE_MD[r] for r in ROI_NAMES])
    items = realism_models.resolve_realism(realism, realism_off)
    if still and items:
        raise ValueError("a still, noiseless session takes no realism items; use realism='ideal'")
    session_realism = realism_models.Realism(items, (seed, 0)).for_session(0)
    return simulate_dwi(
        template, participant, pose, chosen, rng, label_md, atlas, None if still else snr,
        realism=session_realism,
    )  # fmt: skip
