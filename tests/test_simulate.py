"""Simulator numeric core: tissue signal, noise, motion, gradients, anatomy and truth masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ketamine_dti.simulate import anatomy, realism, session, signal
from ketamine_dti.simulate.presets import get_preset


def _log_linear_md(signal_values: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray) -> float:
    """MD of a tensor fitted by ordinary least squares to log signal (one voxel)."""
    g = bvecs
    design = np.column_stack(
        [
            -bvals * g[:, 0] ** 2,
            -bvals * g[:, 1] ** 2,
            -bvals * g[:, 2] ** 2,
            -2 * bvals * g[:, 0] * g[:, 1],
            -2 * bvals * g[:, 0] * g[:, 2],
            -2 * bvals * g[:, 1] * g[:, 2],
            np.ones_like(bvals),
        ]
    )
    coefficients, *_ = np.linalg.lstsq(design, np.log(signal_values), rcond=None)
    return float(coefficients[:3].mean())


def _one_voxel(gm: float, wm: float, csf: float, md: float = 0.8e-3, n_dirs: int = 30):
    bvals, bvecs = signal.gradient_scheme(n_dirs, 3, 1000.0)
    fibre = np.array([1.0, 0, 0, 0, 0, 0]).reshape(6, 1, 1, 1)  # along x
    values = signal.tissue_signal(
        np.full((1, 1, 1, 1), gm, dtype=np.float32),
        np.full((1, 1, 1), wm, dtype=np.float32),
        np.full((1, 1, 1), csf, dtype=np.float32),
        fibre,
        np.ones((1, 1, 1), dtype=np.float32),  # deep white matter
        np.full((1, 1, 1, 1), md, dtype=np.float32),
        bvals,
        bvecs,
        np.ones((1, 1, 1), dtype=np.float32),
    )[0, 0, 0]
    return values, bvals, bvecs


def test_pure_gray_matter_gives_its_md_back():
    md = 0.83e-3
    values, bvals, bvecs = _one_voxel(1.0, 0.0, 0.0, md=md)
    assert _log_linear_md(values.astype(float), bvals, bvecs) == pytest.approx(md, rel=1e-4)
    assert values[bvals == 0] == pytest.approx(signal.S0_RELATIVE["gm"], rel=1e-6)


def test_pure_white_matter_tensor_has_planned_md_and_direction():
    values, bvals, bvecs = _one_voxel(0.0, 1.0, 0.0)
    assert _log_linear_md(values.astype(float), bvals, bvecs) == pytest.approx(
        signal.WM_MD, rel=1e-4
    )
    # The fibre runs along x: the gradient closest to x sees the lowest signal.
    along_x = np.abs(bvecs[:, 0]) * (bvals > 0)
    assert np.argmax(along_x) == np.argmin(np.where(bvals > 0, values, np.inf))


def test_free_water_partial_volume_raises_md_as_documented():
    """1% CSF raises GM MD by about BIAS_PER_FRACTION['csf'] percent (truth-mask rule basis)."""
    pure, bvals, bvecs = _one_voxel(1.0, 0.0, 0.0)
    mixed, _, _ = _one_voxel(0.99, 0.0, 0.01)
    bias = (
        _log_linear_md(mixed.astype(float), bvals, bvecs)
        / _log_linear_md(pure.astype(float), bvals, bvecs)
        - 1
    )
    assert bias == pytest.approx(session.BIAS_PER_FRACTION["csf"] * 0.01, rel=0.15)


def test_gradient_scheme_has_unit_directions_and_spread_b0():
    preset = get_preset("standard")
    bvals, bvecs = signal.gradient_scheme(preset.n_directions, preset.n_b0, preset.bval)
    assert len(bvals) == preset.n_volumes
    assert (bvals == 0).sum() == preset.n_b0
    assert bvals[0] == 0
    norms = np.linalg.norm(bvecs[bvals > 0], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-9)
    # Repulsion spreads directions: no two (antipodal-equivalent) directions closer than 10 deg.
    dirs = bvecs[bvals > 0]
    cosines = np.abs(dirs @ dirs.T) - 2 * np.eye(len(dirs))
    assert np.degrees(np.arccos(cosines.max())) > 10


def test_rician_noise_has_requested_sigma_and_background_floor():
    rng = np.random.default_rng(0)
    sigma = 10.0
    bright = np.full((200, 200, 1), 1000.0, dtype=np.float32)
    noisy = signal.add_rician_noise(bright, sigma, rng)
    assert noisy.std() == pytest.approx(sigma, rel=0.03)
    background = signal.add_rician_noise(np.zeros_like(bright), sigma, rng)
    # Rayleigh mean: sigma * sqrt(pi / 2).
    assert background.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.03)


def test_motion_resampling_shifts_by_whole_voxels_exactly():
    rng = np.random.default_rng(1)
    volumes = rng.random((12, 10, 8, 2)).astype(np.float32)
    motion = signal.Motion(
        translations_mm=np.array([[0.0, 0, 0], [4.0, 0, 0]]),
        rotations_deg=np.zeros((2, 3)),
        eddy=np.zeros((3, 4)),
    )
    bvals, bvecs = np.array([0.0, 0.0]), np.zeros((2, 3))
    eddy = realism.full_eddy(motion, None)
    moved = realism.move_series(volumes, 2.0, motion, bvals, bvecs, eddy, False, None)
    np.testing.assert_array_equal(moved[..., 0], volumes[..., 0])
    # A 4 mm shift along x on a 2 mm grid: output voxel i shows input voxel i - 2.
    np.testing.assert_allclose(moved[2:, :, :, 1], volumes[:-2, :, :, 1], atol=1e-6)
    assert np.all(moved[:2, :, :, 1] == 0)


def test_eddy_distortion_moves_only_along_phase_encode():
    volumes = np.zeros((16, 16, 4, 2), dtype=np.float32)
    volumes[8, 8, :, :] = 1.0
    motion = signal.Motion(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((3, 4)))
    motion.eddy[0, 0] = 2.0  # a gradient along x shifts the image by 2 mm along j
    bvecs = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    bvals = np.array([0.0, 1000.0])
    eddy = realism.full_eddy(motion, None)
    moved = realism.move_series(volumes, 2.0, motion, bvals, bvecs, eddy, False, None)
    np.testing.assert_array_equal(moved[..., 0], volumes[..., 0])
    peak = np.unravel_index(np.argmax(moved[..., 1]), moved.shape[:3])
    assert peak[:2] == (8, 9)


def test_truth_mask_keeps_pure_voxels_and_falls_back_for_thin_rois():
    shape = (4, 1, 1)
    gm_by_label = np.zeros((3, *shape), dtype=np.float32)
    wm = np.zeros(shape, dtype=np.float32)
    csf = np.zeros(shape, dtype=np.float32)
    # ROI 1: voxel 0 pure, voxel 1 with 1% CSF (biased by ~2.4%: excluded).
    gm_by_label[1, 0] = 1.0
    gm_by_label[1, 1], csf[1] = 0.99, 0.01
    # ROI 2 (thin): never pure; voxel 2 mixes with WM, voxel 3 with CSF (worse).
    gm_by_label[2, 2], wm[2] = 0.8, 0.2
    gm_by_label[2, 3], csf[3] = 0.8, 0.2
    dseg, rule = session.truth_masks(gm_by_label, wm, csf)
    assert dseg.ravel().tolist() == [1, 0, 2, 0]
    assert rule == {1: "pure", 2: "fallback"}


def test_sharpening_keeps_sums_and_boundaries():
    probabilities = np.array([[0.6, 0.5, 1.0], [0.4, 0.5, 0.0]])
    sharp = anatomy.sharpen_fractions(probabilities)
    np.testing.assert_allclose(sharp.sum(axis=0), 1.0)
    assert sharp[0, 0] > 0.9  # a 60/40 voxel becomes nearly pure
    np.testing.assert_allclose(sharp[:, 1], 0.5)  # the boundary stays where it was


def test_rotation_angles_round_trip():
    angles = np.array([4.0, -2.0, 7.0])
    np.testing.assert_allclose(
        anatomy.rotation_to_angles(anatomy.rotation_matrix(angles)), angles, atol=1e-10
    )


def test_fused_grid_mapping_matches_the_reference_transforms():
    """The numba scanner -> template mapping equals pose.to_subject then to_template."""
    rng = np.random.default_rng(2)
    template = anatomy.load_template_anatomy()
    participant = anatomy.random_participant(rng, template)
    pose = anatomy.random_head_pose(rng, template.centre_mm)
    affine = anatomy.scanner_grid(pose, 4.0, (12, 10, 8), slab_pitch_deg=7.0)
    index = anatomy.grid_template_index(template, participant, pose, affine, (12, 10, 8))
    ijk = np.indices((12, 10, 8)).reshape(3, -1).T
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    expected_mm = participant.to_template(pose.to_subject(world))
    got_mm = index.reshape(-1, 3) @ template.affine[:3, :3].T + template.affine[:3, 3]
    np.testing.assert_allclose(got_mm, expected_mm, atol=1e-3)
    # The warp is real: templates coordinates differ from a rigid + scale mapping by mm.
    rigid = template.centre_mm + (pose.to_subject(world) - template.centre_mm) / participant.scale
    assert np.abs(expected_mm - rigid).max() > 1.0


@pytest.fixture(scope="module")
def benchmark_session():
    return session.simulate_benchmark_session(preset="tiny", seed=3, snr=20.0)


def test_benchmark_session_arrays_are_consistent(benchmark_session):
    s = benchmark_session
    assert s.data.dtype == np.float32 and s.clean.dtype == np.float32
    assert s.data.shape == s.clean.shape == (*get_preset("tiny").dwi_shape, 14)
    assert s.bvecs.shape == (14, 3) and s.bvals.shape == (14,)
    assert np.linalg.det(s.affine[:3, :3]) < 0  # LAS, as DICOM converters write
    assert s.brain_mask.dtype == bool and 10_000 < s.brain_mask.sum() < 40_000
    assert set(np.unique(s.truth_dseg)) == set(range(8))


def test_benchmark_session_noise_matches_its_snr_definition(benchmark_session):
    s = benchmark_session
    white = s.fractions["wm"] >= signal.WM_SNR_FRACTION
    b0 = s.bvals == 0
    assert s.clean[..., b0][white].mean() / s.sigma == pytest.approx(20.0, rel=0.02)
    residual = (s.data - s.clean)[..., b0][white]
    assert residual.std() == pytest.approx(s.sigma, rel=0.05)


def test_bvecs_are_in_the_voxel_frame():
    """Corpus callosum fibres, fitted with the written (voxel-frame) bvecs, run world left-right.

    The head sits in the template's orientation (no rotation, no warp), the slab is tilted
    about x and the image is stored LAS, so a frame error would show as a non-x direction.
    """
    import dataclasses

    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    rng = np.random.default_rng(5)
    template = anatomy.load_template_anatomy()
    participant = dataclasses.replace(  # a brain of the typical adult size
        anatomy.random_participant(rng, template, rms_mm=0.0), scale=np.full(3, anatomy.SCALE_MEAN)
    )
    pose = anatomy.HeadPose(np.eye(3), np.zeros(3), template.centre_mm)
    label_md = np.array([0.8e-3])
    dwi = session.simulate_dwi(
        template, participant, pose, get_preset("tiny"), rng, label_md, None, snr=None
    )
    white = dwi.fractions["wm"] > 0.9
    fit = TensorModel(gradient_table(dwi.bvals, bvecs=dwi.bvecs)).fit(dwi.clean, mask=white)
    ijk = np.argwhere(white)
    template_mm = ijk @ dwi.affine[:3, :3].T + dwi.affine[:3, 3] + template.centre_mm
    # Callosal body: midline, above the ventricles (MNI y -20..10, z 15..28).
    callosum = (
        (np.abs(template_mm[:, 0]) < 4)
        & (template_mm[:, 1] > -20)
        & (template_mm[:, 1] < 10)
        & (template_mm[:, 2] > 15)
        & (template_mm[:, 2] < 28)
    )
    assert callosum.sum() >= 3
    axes = dwi.affine[:3, :3] / np.linalg.norm(dwi.affine[:3, :3], axis=0)
    principal = fit.evecs[tuple(ijk[callosum].T)][..., 0]  # (n, 3) voxel frame
    world = principal @ axes.T
    assert np.median(np.abs(world[:, 0])) > 0.8


def test_slab_preset_leaves_the_lower_brain_out_as_the_real_prisma_slab_does():
    """The ``slab`` protocol images what the real pair's 39 x 3 mm slab does (93% of the T1w
    brain; the vertex in, the temporal poles and cerebellum cut), so the coregistration is
    benchmarked on a b0 that misses part of the brain."""
    import dataclasses

    rng = np.random.default_rng(5)
    template = anatomy.load_template_anatomy()
    participant = dataclasses.replace(  # a brain of the typical adult size
        anatomy.random_participant(rng, template, rms_mm=0.0), scale=np.full(3, anatomy.SCALE_MEAN)
    )
    pose = anatomy.HeadPose(np.eye(3), np.zeros(3), template.centre_mm)
    preset = get_preset("slab")
    dwi = session.simulate_dwi(
        template, participant, pose, preset, rng, np.array([0.8e-3]), None, snr=None
    )
    assert dwi.data.shape == (72, 72, 39, 21)
    assert (dwi.bvals == 0).sum() == 1 and set(dwi.bvals[dwi.bvals > 0]) == {2500.0}
    brain = dwi.fractions["gm"] + dwi.fractions["wm"] + dwi.fractions["csf"]
    brain_ml = template.fractions.sum() * abs(np.linalg.det(template.affine[:3, :3])) / 1e3
    inside = brain.sum() * preset.dwi_voxel_mm**3 / 1e3 / (brain_ml * anatomy.SCALE_MEAN**3)
    assert 0.88 < inside < 0.96  # measured 0.945 (0.918 at the template's size)
    per_slice = brain.sum(axis=(0, 1))  # slices run inferior -> superior
    assert per_slice[0] > 10 * per_slice[-1]  # cut below, the vertex inside
    # its TR of 3.5 s leaves CSF unrecovered: the real pair's b0 has CSF ~1.8 x white matter.
    # Against the white matter within 9 mm of the CSF, where the coil's smooth shading is
    # nearly the same (against all white matter the ratio moved 1.47-1.71 with the coil's draw)
    b0 = dwi.clean[..., 0]
    csf, wm = dwi.fractions["csf"] > 0.95, dwi.fractions["wm"] > 0.95
    near = wm & ndimage.binary_dilation(csf, iterations=3)
    assert 1.5 < np.median(b0[csf]) / np.median(b0[near]) < 2.0  # measured 1.66
    # a 64-channel coil's shading: white matter's b0 spans 0.84-1.21 of its median (2nd-98th
    # percentiles; the standard preset's mild field 0.95-1.04)
    assert np.percentile(b0[wm], 98) / np.percentile(b0[wm], 2) > 1.3


def test_b0_contrast_saturates_csf_at_a_short_repetition_time():
    assert signal.b0_contrast() == signal.S0_RELATIVE
    long_tr = signal.b0_contrast(60.0)
    assert long_tr == pytest.approx(signal.S0_RELATIVE, rel=1e-5)
    short = signal.b0_contrast(3.5)
    assert short["wm"] == 1.0 and 1.6 < short["csf"] < 1.8 and 1.25 < short["gm"] < 1.4
