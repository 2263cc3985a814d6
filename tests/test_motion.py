"""Motion correction: a known rigid motion is recovered, b-vectors follow it, FD is Power's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ketamine_dti.dwi import gradients, motion

VOXEL_MM = 3.0
SHAPE = (36, 40, 34)


def _affine():
    affine = np.diag([-VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])  # LAS, as many scanners store it
    affine[:3, 3] = [52.0, -60.0, -50.0]
    return affine


def _phantom(seed=0):
    """An ellipsoidal 'head' with smooth internal structure (registration needs texture)."""
    rng = np.random.default_rng(seed)
    grid = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]].astype(float)
    centre = (np.array(SHAPE, dtype=float) - 1) / 2
    radii = np.array([13.0, 16.0, 12.0])
    r = np.sqrt(sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(3)))
    inside = r < 1
    texture = ndimage.gaussian_filter(rng.normal(size=SHAPE), 2.0)
    texture /= texture.std()
    tissue = inside * (100.0 + 30.0 * texture)
    return ndimage.gaussian_filter(tissue, 0.7), inside


def _rigid(angles_deg, translation_mm, affine):
    """A RAS+ reference -> moved map rotating about the grid centre."""
    centre = motion.grid_center(SHAPE, affine)
    rotation = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre - rotation @ centre + np.asarray(translation_mm)
    return matrix


def _move(volume, matrix, affine):
    """The volume a scanner records after the head moved by `matrix` (points p -> M p)."""
    return motion.resample(volume, np.linalg.inv(matrix), affine)


def _angle_deg(rotation_a, rotation_b):
    return np.degrees(Rotation.from_matrix(rotation_a.T @ rotation_b).magnitude())


def test_register_recovers_known_rotation_and_rotates_bvector():
    affine = _affine()
    reference, _ = _phantom()
    truth = _rigid([4.0, -3.0, 5.0], [1.5, -2.0, 1.0], affine)
    moved = _move(reference, truth, affine)
    estimate = motion.register_mutual_information(reference, moved, affine)
    assert _angle_deg(estimate[:3, :3], truth[:3, :3]) < 0.3
    centre = motion.grid_center(SHAPE, affine)
    assert np.linalg.norm((estimate - truth)[:3, :3] @ centre + (estimate - truth)[:3, 3]) < 0.3

    # the scanner's gradient, seen by the moved head, is rotated back into the reference frame
    scanner_gradient = np.array([[0.0, 0.6, 0.8]])
    fsl = gradients.world_to_fsl(scanner_gradient, affine)
    corrected = gradients.fsl_to_world(
        gradients.rotate_bvecs(fsl, estimate[None], affine), affine
    )[0]
    expected = truth[:3, :3].T @ scanner_gradient[0]
    assert np.degrees(np.arccos(np.clip(corrected @ expected, -1, 1))) < 0.3


def test_correct_motion_series():
    """Three b0 and five 'diffusion-weighted' volumes (other contrast), each moved."""
    affine = _affine()
    base, inside = _phantom()
    dw_contrast = np.where(inside, 160.0 - base, 0.0)  # inverted tissue contrast, dark outside
    dw_contrast = ndimage.gaussian_filter(dw_contrast, 0.7)
    bvals = np.array([0, 1000, 1000, 0, 1000, 1000, 0, 1000], dtype=float)
    directions = Rotation.random(8, random_state=3).apply([1.0, 0, 0])
    bvecs = np.where(bvals[:, None] > 0, directions, 0.0)
    gtab = gradients.check_gradient_table(bvals, bvecs, 8)
    rng = np.random.default_rng(5)
    truths = [np.eye(4)] + [
        _rigid(rng.uniform(-2, 2, 3), rng.uniform(-1.5, 1.5, 3), affine) for _ in range(7)
    ]
    volumes = [
        _move(base if b == 0 else dw_contrast, truth, affine)
        for b, truth in zip(bvals, truths, strict=True)
    ]
    data = np.stack(volumes, axis=-1)
    result = motion.correct_motion(data, gtab, affine, mask=inside)

    centre = motion.grid_center(SHAPE, affine)
    true_params = motion.motion_parameters(np.stack(truths), centre)
    assert np.abs(result.parameters[:, :3] - true_params[:, :3]).max() < 0.4  # mm
    assert np.degrees(np.abs(result.parameters[:, 3:] - true_params[:, 3:])).max() < 0.6
    assert result.corrected.shape == data.shape
    # aligned volumes match what the true transform gives far better than the raw ones did
    for index in (3, 5):
        ideal = motion.resample(data[..., index], truths[index], affine)
        raw_error = np.abs(data[..., index] - ideal)[inside].mean()
        corrected_error = np.abs(result.corrected[..., index] - ideal)[inside].mean()
        assert corrected_error < 0.35 * raw_error
    assert np.allclose(np.linalg.norm(result.bvecs[bvals > 0], axis=1), 1.0)
    assert np.allclose(
        result.framewise_displacement, motion.framewise_displacement(result.parameters)
    )


def test_the_shell_means_own_eddy_map_is_recovered_from_the_volumes():
    """Eddy fields linear in the gradient (PE row of each voxel map: scale, shears, shift) on a
    half sphere of directions, each volume also rotated by head motion: the shell frame (mean
    map = identity) hides the mean direction's field; shell_mean_eddy gives it back, keeping
    the brain's centre in place. With directions on the whole sphere there is none."""
    rng = np.random.default_rng(4)
    affine, pe_axis, n = _affine(), 1, 40
    bvecs = rng.normal(size=(n, 3))
    bvecs /= np.linalg.norm(bvecs, axis=1, keepdims=True)
    bvecs[bvecs[:, 2] < 0] *= -1  # half sphere, as most single-shell schemes: mean ~0.5 long
    per_gradient = np.array(
        [[0.004, 0.012, -0.003], [0.002, -0.006, 0.010], [-0.003, 0.004, 0.008], [0.9, -0.6, 0.4]]
    )  # a, b, c, t per g
    centre = np.array([14.0, 17.0, 13.0])

    def voxel_map(g):
        matrix = np.eye(4)
        matrix[pe_axis] += g @ per_gradient.T
        return matrix

    expected = voxel_map(bvecs.mean(axis=0))
    eddy_maps = np.stack([affine @ voxel_map(g) @ np.linalg.inv(affine) for g in bvecs])
    for head_sd in (0.0, 0.4):  # degrees of rotation (and 0.75 x that in mm) per volume
        maps = np.stack([m @ _rigid(rng.normal(0, head_sd, 3), rng.normal(0, 0.75 * head_sd, 3),
                                    affine) for m in eddy_maps])  # fmt: skip
        to_shell = maps @ np.linalg.inv(maps.mean(axis=0))
        eddy = motion.shell_mean_eddy(to_shell, bvecs, affine, pe_axis, centre)
        found = np.linalg.inv(affine) @ eddy @ affine
        # still head: exact; moving head: the stretch exactly, shears within the motion noise
        np.testing.assert_allclose(found[pe_axis, pe_axis], expected[pe_axis, pe_axis],
                                   atol=1e-4)  # fmt: skip
        tolerance = 1e-4 if head_sd == 0 else 5e-3
        np.testing.assert_allclose(found[pe_axis, :3], expected[pe_axis, :3], atol=tolerance)
        np.testing.assert_allclose((found @ np.r_[centre, 1])[:3], centre, atol=1e-9)
        other_rows = [axis for axis in range(3) if axis != pe_axis]
        np.testing.assert_allclose(found[other_rows], np.eye(4)[other_rows], atol=1e-12)
    assert abs(expected[pe_axis, pe_axis] - 1) > 0.004  # a stretch the rigid link cannot remove
    balanced = np.concatenate([bvecs, -bvecs])  # whole sphere: mean direction 0
    maps = np.stack([affine @ voxel_map(g) @ np.linalg.inv(affine) for g in balanced])
    to_shell = maps @ np.linalg.inv(maps.mean(axis=0))
    eddy = motion.shell_mean_eddy(to_shell, balanced, affine, pe_axis, centre)
    np.testing.assert_allclose(eddy, np.eye(4), atol=1e-9)


def test_framewise_displacement_known_answer():
    params = np.zeros((3, 6))
    params[1, :3] = [0.1, -0.2, 0.3]  # 0.6 mm of translation
    params[2, 3:] = [0.01, 0.0, -0.02]  # 0.03 rad -> 1.5 mm on a 50 mm sphere
    fd = motion.framewise_displacement(params)
    assert fd == pytest.approx([0.0, 0.6, 0.6 + 1.5])
    outliers = fd > motion.FD_OUTLIER_MM
    assert outliers.tolist() == [False, True, True]


def test_motion_parameters_known_answer():
    affine = _affine()
    truth = _rigid([0.0, 0.0, 2.0], [1.0, 0.0, -0.5], affine)
    params = motion.motion_parameters(truth[None], motion.grid_center(SHAPE, affine))[0]
    assert np.allclose(params[:3], [1.0, 0.0, -0.5])
    assert np.allclose(params[3:], [0.0, 0.0, np.radians(2.0)])


def test_pe_translation_from_b0s_known_answer():
    """Along PE, DW volumes take the head position interpolated between the b0s."""
    bvals = np.array([0, 1000, 1000, 0, 1000, 1000, 1000], dtype=float)
    bvecs = np.where(bvals[:, None] > 0, [0.0, 0.0, 1.0], 0.0)
    gtab = gradients.check_gradient_table(bvals, bvecs, len(bvals))
    rng = np.random.default_rng(2)
    measured = rng.normal(0, 0.3, (len(bvals), 3))
    affine = np.diag([-2.0, 2, 2, 1])  # PE = voxel axis j = world y
    cleaned = motion.pe_translation_from_b0s(measured, gtab, affine, pe_axis=1)
    b0_y = measured[[0, 3], 1]
    assert cleaned[:, 1] == pytest.approx(
        [b0_y[0], *np.interp([1, 2], [0, 3], b0_y), b0_y[1], b0_y[1], b0_y[1], b0_y[1]][:7]
    )
    assert np.array_equal(cleaned[:, [0, 2]], measured[:, [0, 2]])


def _single_b0_series(truths, affine, noise_sd=0.0, anisotropy_sd=5.0, seed=11):
    """One b0 and len(truths)-1 'b=2500' volumes: other contrast, a third of the signal,
    direction-dependent texture and independent noise, each moved by its true map."""
    base, inside = _phantom()
    rng = np.random.default_rng(seed)
    n_dw = len(truths) - 1
    directions = Rotation.random(n_dw, random_state=4).apply([1.0, 0, 0])
    anisotropy = ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.5)
    anisotropy *= anisotropy_sd / anisotropy.std()
    volumes = [_move(base, truths[0], affine)]
    for truth, direction in zip(truths[1:], directions, strict=True):
        # anisotropy enters as (g . e_x)^2, as in g^T D g
        weighted = np.where(inside, 0.3 * (160.0 - base) + direction[0] ** 2 * anisotropy, 0.0)
        volumes.append(_move(ndimage.gaussian_filter(weighted, 0.7), truth, affine))
    data = np.stack(volumes, axis=-1) + rng.normal(0, noise_sd, SHAPE + (len(truths),))
    bvals = np.r_[0.0, np.full(n_dw, 2500.0)]
    gtab = gradients.check_gradient_table(bvals, np.vstack([np.zeros(3), directions]), len(bvals))
    return np.clip(data, 0, None).astype(np.float32), gtab, inside


def _displacement_error(estimate, truth, affine, inside):
    """mm between estimated and true raw points of the phantom's voxels."""
    points = np.c_[np.argwhere(inside), np.ones(int(inside.sum()))] @ affine.T
    return np.linalg.norm((points @ (estimate - truth).T)[:, :3], axis=1)


def test_single_b0_high_b_recovers_known_motion_and_rotates_bvecs():
    """DW volumes are aligned to their shell mean and linked to the single b0 once."""
    affine = _affine()
    rng = np.random.default_rng(8)
    truths = [np.eye(4)] + [
        _rigid(rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3), affine) for _ in range(9)
    ]
    data, gtab, inside = _single_b0_series(truths, affine, noise_sd=2.0)
    result = motion.correct_motion(data, gtab, affine, mask=inside)
    for estimate, truth in zip(result.affines, truths, strict=True):
        assert np.median(_displacement_error(estimate, truth, affine, inside)) < 0.6  # old: 1.3
    # each DW b-vector is rotated back by its volume's true rotation
    world = gradients.fsl_to_world(gtab.bvecs, affine)
    corrected = gradients.fsl_to_world(result.bvecs, affine)
    for index in range(1, len(truths)):
        expected = truths[index][:3, :3].T @ world[index]
        assert np.degrees(np.arccos(np.clip(corrected[index] @ expected, -1, 1))) < 1.0


def test_still_single_b0_series_has_small_fd():
    """No motion, noisy high-b volumes: FD stays far below the outlier cut."""
    affine = _affine()
    data, gtab, inside = _single_b0_series(
        [np.eye(4)] * 8, affine, noise_sd=1.0, anisotropy_sd=2.0
    )
    result = motion.correct_motion(data, gtab, affine, mask=inside, pe_axis=1)
    assert result.framewise_displacement[1:].mean() < 0.35  # measured 0.24 (ANTs-only: 0.24)
    # least squares + a final mutual-information step: max 0.56 mm (one volume over the
    # 0.5 mm cut; the ANTs-only method it replaced: 0.42 mm); the regression is reported
    assert result.framewise_displacement.max() < 0.65
    assert result.outliers.sum() <= 1


def test_confounds_table_and_summary():
    n = 4
    fd = np.array([0.0, 0.2, 0.7, 0.1])
    result = motion.MotionResult(
        corrected=np.zeros((2, 2, 2, n), np.float32),
        bvecs=np.zeros((n, 3)),
        affines=np.tile(np.eye(4), (n, 1, 1)),
        parameters=np.arange(n * 6, dtype=float).reshape(n, 6),
        framewise_displacement=fd,
        outliers=fd > motion.FD_OUTLIER_MM,
        reference=np.zeros((2, 2, 2)),
    )
    table = motion.confounds_table(result)
    assert list(table.columns) == [
        *motion.CONFOUND_COLUMNS,
        "framewise_displacement",
        "motion_outlier",
    ]
    assert table.motion_outlier.tolist() == [0, 0, 1, 0]
    summary = motion.motion_summary(result)
    assert summary == {"mean_fd": pytest.approx(1.0 / 3.0), "max_fd": 0.7, "n_outlier_volumes": 1}


def test_fd_follows_the_simulated_heads_motion_on_the_slab_protocol():
    """The real pair's protocol (one b0, b = 2500, 3 mm; the simulator's ``slab`` preset with
    eddy currents, jerks within volumes, dropouts and ringing): the App's FD tracks the true FD
    (the head's mean position in each volume, jerks included) volume by volume and on average.
    bench_motion, training seeds 1-2: r 0.73 / 0.73, mean 0.72 / 0.64 mm against a true
    0.73 / 0.67 (session 43); measured on the between-volume motion alone (the truth before
    session 43) it had looked like 2x too much."""
    from ketamine_dti.simulate.session import simulate_benchmark_session

    session = simulate_benchmark_session("slab", seed=1, realism="typical")
    gtab = gradients.GradientTable(bvals=session.bvals, bvecs=session.bvecs)
    zooms = tuple(np.linalg.norm(session.affine[:3, :3], axis=0))
    result = motion.correct_series(
        session.data, gtab, session.affine, zooms, pe_axis=1, resample_volumes=False
    )
    truth = session.framewise_displacement_mm()[1:]
    estimate = result.framewise_displacement[1:]
    assert np.corrcoef(estimate, truth)[0, 1] > 0.6
    assert abs(estimate.mean() - truth.mean()) < 0.15
