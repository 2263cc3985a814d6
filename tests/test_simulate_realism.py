"""Simulator realism (issue 12 item 1): each item changes the data, is recorded, and ``ideal``
runs none of them."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ketamine_dti.simulate import anatomy, bids_writer, realism, session, signal
from ketamine_dti.simulate.bids_writer import make_options, participant_realism
from ketamine_dti.simulate.cli import main as simulate
from ketamine_dti.simulate.clinical import simulate_clinical
from ketamine_dti.simulate.presets import PRESETS, get_preset

DWI_ITEMS = ("eddy", "slice_motion", "dropouts", "gibbs")
T1W_ITEMS = ("t1w_contrast", "t1w_bias", "t1w_noise")
#: A dropped slice keeps at most realism.DROPOUT_FACTOR[1] of its signal; with noise and the
#: Rician floor its brain mean stays below this share of the same slice in the other volumes.
DROPPED_RATIO = 0.65
SEED = 5


def _grid(seed: int = 2):
    """Template, participant and pose of one tiny session (brain only: fast)."""
    template = anatomy.load_template_anatomy()
    rng = np.random.default_rng([seed, 1])
    participant = anatomy.random_participant(rng, template)
    pose = anatomy.random_head_pose(rng, template.centre_mm)
    return template, participant, pose


def _items(names) -> realism.Realism:
    return realism.Realism(frozenset(names), (SEED, 1))


def _dwi(grid, names=None) -> session.DwiSession:
    """The session's DWI with the named items (None: without the realism argument)."""
    template, participant, pose = grid
    extra = {} if names is None else {"realism": _items(names).for_session(0)}
    return session.simulate_dwi(
        template,
        participant,
        pose,
        get_preset("tiny"),
        np.random.default_rng(SEED),
        np.array([0.8e-3]),
        None,
        40.0,
        **extra,
    )


def _t1w(grid, names) -> np.ndarray:
    template, participant, pose = grid
    items = _items(names)
    template, contrast, _ = participant_realism(items, template)
    return session.simulate_t1w(
        template,
        participant,
        pose,
        get_preset("tiny"),
        np.random.default_rng(SEED),
        contrast=contrast,
        realism=items.for_session(0),
    ).data


@pytest.fixture(scope="module")
def grid():
    return _grid()


@pytest.fixture(scope="module")
def typical_dwi(grid):
    return _dwi(grid, realism.REALISM_ITEMS)


def test_levels_defaults_and_switches(tmp_path):
    assert realism.REALISM_LEVELS["ideal"] == frozenset()
    assert realism.REALISM_LEVELS["typical"] == frozenset(realism.REALISM_ITEMS)
    defaults = {name: make_options(tmp_path, preset=name).realism for name in PRESETS}
    every = frozenset(realism.REALISM_ITEMS)
    assert defaults == {"standard": every, "tiny": frozenset(), "slab": every}
    assert make_options(tmp_path, preset="standard", noiseless=True).realism == frozenset()
    off = make_options(tmp_path, preset="standard", realism_off=("gibbs", "dropouts"))
    assert off.realism == frozenset(realism.REALISM_ITEMS) - {"gibbs", "dropouts"}
    with pytest.raises(ValueError, match="contradict"):
        make_options(tmp_path, noiseless=True, realism_level="typical")
    with pytest.raises(ValueError, match="unknown item"):
        realism.resolve_realism("typical", ("ringing",))
    assert simulate([str(tmp_path / "a"), "--realism", "harsh"]) == 64
    assert simulate([str(tmp_path / "b"), "--realism-off", "ringing"]) == 64


@pytest.mark.parametrize("item", DWI_ITEMS)
def test_every_dwi_item_changes_the_data(grid, typical_dwi, item):
    """Same seed, the item off: the DWI differs, and only the item's own draws are gone."""
    without = _dwi(grid, set(realism.REALISM_ITEMS) - {item})
    assert not np.allclose(without.data, typical_dwi.data)
    assert without.sigma == pytest.approx(typical_dwi.sigma, rel=0.05)
    others = {
        "slice_motion": without.artefacts.slice_motion,
        "dropouts": without.artefacts.dropouts,
        "gibbs": without.artefacts.phases,
    }
    for other, drawn in others.items():
        assert (drawn is None) == (other == item)
    if item != "dropouts":
        assert without.artefacts.dropouts == typical_dwi.artefacts.dropouts


@pytest.mark.parametrize("item", T1W_ITEMS)
def test_every_t1w_item_changes_the_t1w(grid, item):
    typical = _t1w(grid, realism.REALISM_ITEMS)
    without = _t1w(grid, set(realism.REALISM_ITEMS) - {item})
    assert typical.shape == without.shape
    assert not np.array_equal(typical, without)


def test_local_anatomy_adds_csf_locally_and_keeps_the_brain():
    template = anatomy.load_template_anatomy()
    changed, record = realism.local_anatomy(template, np.random.default_rng(3))
    before, after = template.fractions, changed.fractions
    np.testing.assert_allclose(after.sum(axis=0), before.sum(axis=0), atol=1e-5)
    added_ml = (after[2] - before[2]).sum() / 1000.0  # 1 mm voxels
    assert added_ml == pytest.approx(record["csf_added_ml_total"], rel=0.01)
    assert added_ml > 0.5
    brain = before.sum(axis=0) > 0.5
    touched = np.abs(after[2] - before[2]) > 1e-4
    assert touched.sum() < 0.1 * brain.sum()  # local: most of the brain is as it was
    assert np.all(after >= -1e-6)


def test_ideal_equals_realism_with_every_item_off(grid, monkeypatch):
    """ideal runs none of the realism items' code (every series moves through move_series): the
    series and T1w are the pre-existing path's."""

    def refuse(*args, **kwargs):
        raise AssertionError("realism code ran with every item off")

    for name in (
        "truncate_series",
        "random_dropouts",
        "random_slice_motion",
        "random_eddy_quadratic",
        "random_phases",
        "local_anatomy",
        "random_t1w_contrast",
        "polynomial_log_field",
        "correlated_rician_noise",
    ):
        monkeypatch.setattr(realism, name, refuse)
    template, participant, pose = grid
    ideal = _dwi(grid, ())
    plain = _dwi(grid)
    assert ideal.artefacts is None
    np.testing.assert_array_equal(ideal.data, plain.data)
    t1w = session.simulate_t1w(
        template, participant, pose, get_preset("tiny"), np.random.default_rng(SEED)
    )
    np.testing.assert_array_equal(_t1w(grid, ()), t1w.data)


def test_benchmark_session_takes_the_dwi_items():
    from ketamine_dti.simulate import simulate_benchmark_session

    typical = simulate_benchmark_session("tiny", seed=1, realism="typical")
    assert typical.artefacts.dropouts is not None and typical.artefacts.eddy_jacobian
    assert simulate_benchmark_session("tiny", seed=1).artefacts is None


def test_a_still_benchmark_session_is_the_same_head_without_motion_or_noise():
    from ketamine_dti.simulate import simulate_benchmark_session

    still = simulate_benchmark_session("tiny", seed=1, still=True)
    moving = simulate_benchmark_session("tiny", seed=1)
    np.testing.assert_array_equal(still.data, still.clean)
    assert still.sigma == 0.0 and not np.any(still.framewise_displacement_mm())
    assert moving.framewise_displacement_mm()[1:].mean() > 0.1
    np.testing.assert_array_equal(still.truth_dseg, moving.truth_dseg)  # same head and pose
    with pytest.raises(ValueError, match="no realism items"):
        simulate_benchmark_session("tiny", seed=1, realism="typical", still=True)


def test_new_resampling_equals_the_affine_one_without_new_terms():
    """No quadratic eddy, no Jacobian, no slice motion: the realism resampling is the old one."""
    rng = np.random.default_rng(4)
    volumes = rng.random((14, 12, 10, 3)).astype(np.float32)
    motion = signal.random_motion(rng, 3, level=3.0)
    bvals = np.array([0.0, 1000.0, 1000.0])
    bvecs = np.array([[0, 0, 0], [1.0, 0, 0], [0, 0.6, 0.8]])
    old = np.stack(
        [
            signal.resample_affine(
                volumes[..., v],
                signal.volume_source_matrix(volumes.shape[:3], 2.0, motion, v, bvals[v], bvecs[v]),
            )
            for v in range(3)
        ],
        axis=-1,
    )
    eddy = realism.full_eddy(motion, None)
    new = realism.move_series(volumes, 2.0, motion, bvals, bvecs, eddy, False, None)
    np.testing.assert_allclose(new, old, atol=1e-5)


def test_a_moved_head_is_imaged_from_its_sub_voxels_without_interpolation_blur():
    """Half a voxel of motion: the image is the block mean of the head shifted on the sub-voxel
    grid, not the voxel grid interpolated (which blurs a sharp edge)."""
    rng = np.random.default_rng(5)
    fine = np.zeros((24, 20, 16, 2), dtype=np.float32)
    fine[13:, :, :, :] = 1.0  # a sharp edge between sub-voxels 12 and 13, inside voxel 6
    fine += rng.random(fine.shape).astype(np.float32) * 0.1
    motion = signal.Motion(
        translations_mm=np.array([[0.0, 0, 0], [1.0, 0, 0]]),  # 1 mm on a 2 mm grid
        rotations_deg=np.zeros((2, 3)),
        eddy=np.zeros((3, 4)),
    )
    bvals, bvecs = np.zeros(2), np.zeros((2, 3))
    eddy = realism.full_eddy(motion, None)
    moved = realism.move_series(fine, 2.0, motion, bvals, bvecs, eddy, False, None, factor=2)
    assert moved.shape == (12, 10, 8, 2)
    np.testing.assert_allclose(moved[..., 0], anatomy.block_mean(fine[..., 0], 2), atol=1e-6)
    # The head 1 mm further along x: sub-voxel f shows sub-voxel f - 1.
    shifted = np.zeros_like(fine[..., 1])
    shifted[1:] = fine[:-1, :, :, 1]
    np.testing.assert_allclose(moved[..., 1], anatomy.block_mean(shifted, 2), atol=1e-6)
    # The old way, interpolating the voxel grid, spreads the edge over two voxels.
    coarse = np.stack([anatomy.block_mean(fine[..., v], 2) for v in range(2)], axis=-1)
    blurred = realism.move_series(coarse, 2.0, motion, bvals, bvecs, eddy, False, None)
    edge = slice(5, 8)
    assert np.abs(blurred[edge, 1:-1, 1:-1, 1] - moved[edge, 1:-1, 1:-1, 1]).max() > 0.2


def test_skipping_the_air_changes_no_voxel():
    """move_series samples only voxels that can show the head (head_support): the series is
    the one sampled everywhere, under rotation, eddy stretch and a head at the grid's edge."""
    rng = np.random.default_rng(8)
    fine = np.zeros((40, 36, 28, 3), dtype=np.float32)
    index = np.indices(fine.shape[:3]).astype(float)
    head = ((index - np.array([20.0, 18.0, 4.0])[:, None, None, None]) ** 2).sum(axis=0) < 150
    fine[head] = rng.random((head.sum(), 3)).astype(np.float32) + 0.5
    motion = signal.random_motion(rng, 3, level=20.0)
    bvals = np.array([0.0, 1000.0, 1000.0])
    bvecs = np.array([[0, 0, 0], [1.0, 0, 0], [0, 0.6, 0.8]])
    eddy = realism.full_eddy(motion, realism.random_eddy_quadratic(rng))
    moved = realism.move_series(fine, 2.0, motion, bvals, bvecs, eddy, True, None, factor=2)
    coefficients = realism.volume_eddy(eddy, bvals, bvecs)
    for v in range(3):
        matrix = signal.rigid_index_matrix(
            (20, 18, 14), 2.0, motion.translations_mm[v], motion.rotations_deg[v]
        )
        matrices = np.repeat(matrix[None], 14, axis=0)
        everywhere = realism.resample_volume(fine[..., v], matrices, coefficients[v], 2.0, True, 2)
        np.testing.assert_array_equal(moved[..., v], everywhere)
        # Without the margin, voxels at the moved head's edge would be lost.
        blocks = anatomy.block_mean(head.astype(np.float32), 2) > 0
        tight = realism.resample_volume(
            fine[..., v], matrices, coefficients[v], 2.0, True, 2, support=blocks
        )
        assert v == 0 or not np.array_equal(tight, everywhere)
    support = realism.head_support(fine[..., 0], 2)
    assert 0 < support.mean() < 0.9  # there is air to skip


def test_sub_voxel_grid_centres_are_where_the_voxel_is_sampled():
    affine = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -120], [0, 0, 2.0, -60], [0, 0, 0, 1]])
    fine_affine, fine_shape = anatomy.subvoxel_grid(affine, (10, 8, 6), 2)
    assert fine_shape == (20, 16, 12)
    index = np.array([[0, 0, 0], [3, 5, 11], [19, 15, 11]], dtype=float)
    fine_mm = nib.affines.apply_affine(fine_affine, index)
    np.testing.assert_allclose(fine_mm, nib.affines.apply_affine(affine, (index + 0.5) / 2 - 0.5))
    # Block means of any memory order and leading axes.
    volume = np.random.default_rng(6).random((3, 4, 6, 2)).astype(np.float32)
    expected = volume.reshape(3, 2, 2, 3, 2, 1, 2).mean(axis=(2, 4, 6))
    np.testing.assert_allclose(anatomy.block_mean(volume, 2), expected, rtol=1e-6)
    np.testing.assert_allclose(
        anatomy.block_mean(np.asfortranarray(volume), 2), expected, rtol=1e-6
    )


def test_eddy_jacobian_preserves_total_signal():
    """A stretch along phase encode (linear + quadratic): the Jacobian keeps the signal."""
    shape = (32, 40, 8)
    index = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1)[:, None, None, None] / 2.0
    blob = np.exp(-(((index - centre) / np.array([6.0, 7.0, 3.0])[:, None, None, None]) ** 2))
    volume = blob.sum(axis=0).astype(np.float32) * (blob.prod(axis=0) > 1e-3)
    coefficients = np.zeros(10)
    coefficients[2] = 0.08  # 8% stretch along y
    coefficients[5] = 4e-4  # y^2, mm/mm^2
    coefficients[7] = 2e-4  # xy
    identity = np.repeat(np.eye(4)[None], shape[2], axis=0)
    with_jacobian = realism.resample_volume(volume, identity, coefficients, 2.0, True)
    without = realism.resample_volume(volume, identity, coefficients, 2.0, False)
    assert with_jacobian.sum() == pytest.approx(volume.sum(), rel=0.005)
    assert abs(without.sum() / volume.sum() - 1.0) > 0.05
    # The displacement's map is the one the kernel applies (same polynomial, mm).
    displacement = realism.eddy_displacement_mm(coefficients, shape, 2.0)
    assert displacement.shape == shape
    assert displacement[0, 0, 0] == pytest.approx(
        coefficients[2] * -39.0 + coefficients[5] * 39.0**2 + coefficients[7] * 31.0 * 39.0
    )


def test_k_space_truncation_rings_at_an_edge_and_omits_a_quarter_of_the_lines():
    lines = realism.omitted_lines(96, omit_high=True)
    assert lines.sum() == 24 and lines[np.fft.fftfreq(96) * 96 == 47]
    assert realism.omitted_lines(96, omit_high=False)[np.fft.fftfreq(96) * 96 == -48]
    volume = np.zeros((48, 48, 2), dtype=np.float32)
    volume[12:36, 12:36] = 100.0
    volume[11, 12:36] = 30.0  # an edge inside a voxel
    ringing = realism.truncate_k_space(volume, np.zeros(3), omit_high=True)
    assert ringing.min() >= 0.0
    assert ringing[12:36, 12:36].max() > 104.0  # overshoot beside the edges
    assert not np.allclose(ringing, volume, atol=1.0)
    assert ringing.sum() == pytest.approx(np.abs(volume).sum(), rel=0.1)


def test_t1w_contrast_is_non_linear_in_the_gm_wm_mix():
    contrast = realism.T1wContrast(gm=0.6, csf=0.3, mix_exponent=0.7)
    gm = np.array([1.0, 0.0, 0.0, 0.5], dtype=np.float32)
    wm = np.array([0.0, 1.0, 0.0, 0.5], dtype=np.float32)
    csf = np.array([0.0, 0.0, 1.0, 0.0], dtype=np.float32)
    values = contrast.intensity(gm, wm, csf)
    np.testing.assert_allclose(values[:3], [0.6, 1.0, 0.3], rtol=1e-6)
    assert values[3] > 0.5 * (0.6 + 1.0) + 0.03  # brighter than the linear mix


def test_t1w_noise_is_correlated_and_keeps_its_sd():
    noise = np.random.default_rng(0).standard_normal((60, 60, 60), dtype=np.float32)
    correlated = realism.correlate_noise(noise)
    assert correlated.std() == pytest.approx(1.0, rel=0.02)
    lag = np.corrcoef(correlated[1:].ravel(), correlated[:-1].ravel())[0, 1]
    assert lag > 0.4 and abs(np.corrcoef(noise[1:].ravel(), noise[:-1].ravel())[0, 1]) < 0.02


@pytest.fixture(scope="module")
def typical_trial(tmp_path_factory) -> Path:
    """The first participant of a tiny ``typical`` trial, written as the CLI writes it."""
    out = tmp_path_factory.mktemp("realism") / "bids"
    options = make_options(out, n_participants=3, seed=SEED, realism_level="typical")
    trial = simulate_clinical(3, seed=SEED, sessions=options.sessions)
    out.mkdir(parents=True)
    bids_writer.write_top_level(options, trial)
    result = bids_writer.simulate_participant(options, trial, 0)
    bids_writer.write_ground_truth(options, trial, [result])
    return out


def test_dropouts_are_recorded_and_visible(typical_trial):
    truth = typical_trial / "sourcedata" / "ground_truth"
    found = 0
    for table_path in sorted(truth.glob("sub-*/ses-*/*_desc-truth_dropouts.tsv")):
        participant, ses = table_path.parts[-3], table_path.parts[-2]
        dropped = pd.read_csv(table_path, sep="\t")
        dwi_path = typical_trial / participant / ses / "dwi" / f"{participant}_{ses}_dwi"
        data = np.asarray(nib.load(f"{dwi_path}.nii.gz").dataobj, dtype=np.float32)
        bvals = np.loadtxt(f"{dwi_path}.bval")
        mask = _head_mask(data[..., 0])
        weighted = np.flatnonzero(bvals > 0)
        assert set(dropped.volume) <= set(weighted)
        assert dropped.signal_factor.between(*realism.DROPOUT_FACTOR).all()
        slice_means = np.stack(
            [
                [
                    data[..., k, v][mask[..., k]].mean() if mask[..., k].any() else np.nan
                    for v in weighted
                ]
                for k in range(data.shape[2])
            ]
        )  # (Z, n_weighted)
        ratio = slice_means / np.nanmedian(slice_means, axis=1, keepdims=True)
        # Slices with a quarter of the largest slice's head, volumes without motion within.
        counts = mask.sum(axis=(0, 1))
        large = counts >= 0.25 * counts.max()
        jerk_path = Path(str(table_path).replace("dropouts", "slicemotion"))
        jerked = set(pd.read_csv(jerk_path, sep="\t").volume)
        seen = {
            (int(weighted[v]), int(k))
            for k, v in zip(*np.nonzero(ratio < DROPPED_RATIO), strict=True)
            if large[k] and weighted[v] not in jerked
        }
        recorded = {
            (int(v), int(k))
            for v, k in zip(dropped.volume, dropped.slice, strict=True)
            if large[k] and v not in jerked
        }
        assert seen == recorded
        found += len(recorded)
        artefacts = json.loads(
            (table_path.parent / f"{participant}_{ses}_desc-truth_artefacts.json").read_text()
        )
        assert artefacts["dropouts"]["volumes"] == sorted(set(dropped.volume))
        assert np.array(artefacts["eddy"]["coefficients_per_gradient_axis"]).shape == (3, 10)
        motion = pd.read_csv(
            table_path.parent / f"{participant}_{ses}_desc-truth_motion.tsv", sep="\t"
        )
        assert len(motion) == len(bvals) and "eddy_yy" in motion
    assert found > 0
    planted = json.loads((truth / "planted_effects.json").read_text())
    assert planted["realism"]["items"] == list(realism.REALISM_ITEMS)
    assert set(planted["realism"]["per_participant"]) == {"sub-001"}
    record = planted["realism"]["per_participant"]["sub-001"]
    assert set(record) == {"sessions", "local_anatomy", "t1w_contrast"}
    assert "realism=typical" in (typical_trial / "dataset_description.json").read_text()


def _head_mask(b0: np.ndarray) -> np.ndarray:
    """Voxels of the head with signal (b0 above a fifth of its 99th percentile)."""
    return b0 > 0.2 * np.percentile(b0, 99)


def test_true_fd_counts_the_heads_mean_position_within_each_volume(typical_dwi):
    """A jerk during a volume moves the head's mean position in that volume: the true FD
    differs from the between-volume one exactly at each jerked volume and the one after."""
    jerked = sorted(typical_dwi.artefacts.slice_motion.offsets)
    with_jerks = typical_dwi.framewise_displacement_mm()
    without = typical_dwi.motion.framewise_displacement_mm()
    changed = np.flatnonzero(~np.isclose(with_jerks, without, atol=1e-9))
    expected = sorted({v for j in jerked for v in (j, j + 1) if v < len(without)})
    assert changed.tolist() == expected


def test_volume_offsets_are_the_weighted_mean_slice_offset():
    constant = np.tile([0.5, -1.0, 0.2, 1.0, 0.0, -0.5], (6, 1))
    ramp = np.outer(np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]), [1.0, 0, 0, 0, 0, 2.0])
    jerks = realism.SliceMotion({1: constant, 3: ramp})
    weights = np.array([1.0, 1.0, 1.0, 3.0, 3.0, 3.0])  # the brain mostly in the upper slices
    offsets = jerks.volume_offsets(4, weights)
    np.testing.assert_allclose(offsets[1], constant[0])  # any weights: the constant offset
    np.testing.assert_allclose(offsets[3], [0.75, 0, 0, 0, 0, 1.5])  # 9 of 12 weight moved
    np.testing.assert_array_equal(offsets[[0, 2]], 0.0)
