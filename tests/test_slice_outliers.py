"""Slice-outlier replacement: planted dropouts are found (recall and precision >= 0.9) and
replaced by the prediction, and dropout-free noisy data raise <= 0.5% false alarms. Phantoms
are built here: a two-shell tensor ellipsoid with Rician noise and a 1% intensity drift per
volume."""

from __future__ import annotations

import numpy as np
import pytest

from ketamine_dti.dwi.slice_outliers import (
    replace_slice_outliers,
    slice_axis_from_metadata,
)

SHAPE = (20, 22, 14)
N_B0 = 3
SHELLS = (1000.0, 2000.0)
DIRECTIONS_PER_SHELL = 20
NOISE_SD = 25.0  # b0 brain signal 1000: SNR 40 at b0, ~10 at b = 2000


def gradient_table(seed: int = 0):
    rng = np.random.default_rng(seed)
    bvals, bvecs = [np.zeros(N_B0)], [np.zeros((N_B0, 3))]
    for b in SHELLS:
        directions = rng.normal(size=(DIRECTIONS_PER_SHELL, 3))
        bvecs.append(directions / np.linalg.norm(directions, axis=1, keepdims=True))
        bvals.append(np.full(DIRECTIONS_PER_SHELL, b))
    return np.concatenate(bvals), np.vstack(bvecs)


def phantom(seed: int):
    """Noisy signal of an ellipsoid brain (x, y, z, volumes), its mask and gradient table.

    Tensors vary smoothly: MD 0.7-0.9e-3 mm^2/s, FA up to 0.6 along a direction turning with
    x; each volume carries a 1% global intensity jitter (drift), which the model does not know.
    """
    rng = np.random.default_rng(seed)
    bvals, bvecs = gradient_table(seed)
    grid = np.stack(np.indices(SHAPE), -1).astype(float)
    centre = (np.array(SHAPE) - 1) / 2
    radius = (np.array(SHAPE) - 3) / 2
    mask = np.sum(((grid - centre) / radius) ** 2, axis=-1) <= 1.0
    x = grid[..., 0] / SHAPE[0]
    md = 0.7e-3 + 0.2e-3 * grid[..., 2] / SHAPE[2]
    anisotropy = 0.6 * np.sin(np.pi * x) ** 2
    angle = np.pi * x
    fibre = np.stack([np.cos(angle), np.sin(angle), np.zeros_like(angle)], -1)
    along = md * (1 + 2 * anisotropy / 1.5)
    across = (3 * md - along) / 2
    projection = np.einsum("xyzk,nk->xyzn", fibre, bvecs) ** 2
    adc = across[..., None] + (along - across)[..., None] * projection
    s0 = np.where(mask, 1000.0, 0.0)[..., None]
    clean = s0 * np.exp(-bvals * adc) * (1 + 0.01 * rng.normal(size=bvals.size))
    noisy = np.hypot(
        clean + rng.normal(0, NOISE_SD, clean.shape), rng.normal(0, NOISE_SD, clean.shape)
    )
    return noisy.astype(np.float32), clean, mask, bvals, bvecs


def plant_dropouts(data, bvals, rng, volume_fraction=0.1):
    """Signal loss of 30-90% in 1-3 brain slices of 10% of the diffusion volumes, inferior
    slices more often (as cardiac pulsation does)."""
    truth = np.zeros((data.shape[-1], data.shape[2]), dtype=bool)
    weighted = np.flatnonzero(bvals > 0)
    hit = rng.choice(weighted, size=round(volume_fraction * weighted.size), replace=False)
    slices = np.arange(2, data.shape[2] - 2)  # slices holding enough brain
    prior = 1.0 / (1.0 + slices)  # inferior (low index) slices more often
    for volume in hit:
        chosen = rng.choice(slices, size=rng.integers(1, 4), replace=False, p=prior / prior.sum())
        for slice_index in chosen:
            data[:, :, slice_index, volume] *= rng.uniform(0.1, 0.7)
            truth[volume, slice_index] = True
    return truth


def test_planted_dropouts_are_found_and_replaced():
    """Over 4 phantoms (~30 dropped slices): recall and precision >= 0.9, and the replaced
    slices' mean is back within 10% of the clean signal (it was 30-90% low)."""
    true_positive = false_positive = false_negative = 0
    for seed in range(4):
        data, clean, mask, bvals, bvecs = phantom(seed)
        truth = plant_dropouts(data, bvals, np.random.default_rng(100 + seed))
        result = replace_slice_outliers(data, bvals, bvecs, mask, slice_axis=2)
        true_positive += int(np.sum(result.outliers & truth))
        false_positive += int(np.sum(result.outliers & ~truth))
        false_negative += int(np.sum(~result.outliers & truth))
        assert not result.outliers[bvals == 0].any()
        for volume, slice_index in zip(*np.nonzero(result.outliers & truth), strict=True):
            inside = mask[:, :, slice_index]
            replaced = result.data[:, :, slice_index, volume][inside]
            expected = clean[:, :, slice_index, volume][inside]
            assert abs(np.mean(replaced) - np.mean(expected)) < 0.1 * np.mean(expected)
    recall = true_positive / (true_positive + false_negative)
    precision = true_positive / (true_positive + false_positive)
    print(f"recall {recall:.3f} precision {precision:.3f} ({true_positive} found)")
    assert recall >= 0.9 and precision >= 0.9


def test_dropout_free_data_raise_few_false_alarms():
    """<= 0.5% of the tested slices of clean noisy phantoms are flagged."""
    flagged = tested = 0
    for seed in range(6):
        data, _, mask, bvals, bvecs = phantom(10 + seed)
        result = replace_slice_outliers(data, bvals, bvecs, mask, slice_axis=2, replace=False)
        flagged += int(result.outliers.sum())
        tested += int(result.tested.sum())
    print(f"false alarms {flagged} of {tested} slices ({flagged / tested:.3%})")
    assert tested > 1000
    assert flagged <= 0.005 * tested


def test_without_replacement_the_data_are_untouched():
    data, _, mask, bvals, bvecs = phantom(3)
    plant_dropouts(data, bvals, np.random.default_rng(5))
    result = replace_slice_outliers(data, bvals, bvecs, mask, replace=False)
    assert result.outliers.any()
    np.testing.assert_array_equal(result.data, data)


@pytest.mark.parametrize(
    ("metadata", "axis"),
    [({}, 2), ({"SliceEncodingDirection": "j-"}, 1), ({"SliceEncodingDirection": "i"}, 0)],
)
def test_the_slice_axis_follows_the_sidecar(metadata, axis):
    assert slice_axis_from_metadata(metadata) == axis


def test_slices_along_another_axis_are_found():
    """The same dropouts in a series stored with slices along j."""
    data, _, mask, bvals, bvecs = phantom(2)
    truth = plant_dropouts(data, bvals, np.random.default_rng(7))
    swapped = np.swapaxes(data, 1, 2)
    result = replace_slice_outliers(swapped, bvals, bvecs, np.swapaxes(mask, 1, 2), slice_axis=1)
    assert np.sum(result.outliers & truth) >= 0.9 * truth.sum()


def test_replacement_removes_the_md_bias_of_dropouts():
    """In the voxels of dropped slices, WLS MD is biased up by the lost signal; after
    replacement it is within noise of the dropout-free fit."""
    from ketamine_dti.dwi.tensor import fit_tensor

    data, _, mask, bvals, bvecs = phantom(5)
    reference = fit_tensor(data, bvals, bvecs, mask=mask).md
    dropped = data.copy()
    truth = plant_dropouts(dropped, bvals, np.random.default_rng(6), volume_fraction=0.2)
    hit = np.zeros(mask.shape, dtype=bool)
    hit[:, :, truth.any(axis=0)] = True
    hit &= mask
    replaced = replace_slice_outliers(dropped, bvals, bvecs, mask).data

    def bias(series):
        md = fit_tensor(series, bvals, bvecs, mask=mask).md
        return float(np.median((md[hit] - reference[hit]) / reference[hit]))

    before, after = bias(dropped), bias(replaced)
    print(f"median MD bias in dropped slices: {before:.2%} without, {after:.2%} with replacement")
    assert before > 0.015 and abs(after) < 0.003  # 2.2% and 0.01%


def test_shells_that_cannot_be_predicted_are_left_untested():
    """Six directions (too few for a median and MAD), or twelve volumes along three axes (no
    angular model of degree 2 without one of them): nothing tested, data unchanged, no error."""
    data, _, mask, bvals, bvecs = phantom(0)
    few = np.r_[np.arange(N_B0), N_B0 + np.arange(6)]
    result = replace_slice_outliers(data[..., few], bvals[few], bvecs[few], mask)
    assert not result.tested.any()
    axes = np.tile(np.eye(3), (4, 1))
    degenerate = np.vstack([np.zeros((N_B0, 3)), axes])
    shell = np.r_[np.zeros(N_B0), np.full(12, SHELLS[0])]
    series = data[..., : N_B0 + 12]
    result = replace_slice_outliers(series, shell, degenerate, mask)
    assert not result.tested.any()
    np.testing.assert_array_equal(result.data, series)
