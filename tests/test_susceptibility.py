"""Susceptibility distortion correction: an analytic field warped into a phantom (by an
independent forward model, ``susceptibility_phantom``) is recovered from the blip-up/blip-down
pair, correction inverts the forward model, no field gives no field, and bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, optimize
from susceptibility_phantom import GaussianField, distort, head, noisy

from ketamine_dti.dwi import susceptibility

SHAPE = (56, 64, 44)
VOXEL_MM = 3.0
READOUT_S = 0.05  # s; 120 Hz -> 6 voxels = 18 mm of shift at the frontal bump
SNR = 40.0
#: a different receive gain for the reverse-PE image: normalisation must absorb it.
DOWN_GAIN = 0.8


def _affine():
    affine = np.diag([-VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])  # LAS, as many scanners store it
    affine[:3, 3] = [80.0, -95.0, -60.0]
    return affine


def _pair(pe_up, pe_down, readout_down=READOUT_S, scale=1.0, seed=0):
    """The phantom, its interior, the true field and the noisy up and down images."""
    image, inside = head(SHAPE, VOXEL_MM, seed)
    field = GaussianField(SHAPE, VOXEL_MM, scale)
    axis, sign_up = susceptibility.phase_encoding(pe_up)
    sign_down = susceptibility.phase_encoding(pe_down)[1]
    up = noisy(distort(image, field, READOUT_S, axis, sign_up), SNR, 1.0, seed + 1)
    down = noisy(distort(image, field, readout_down, axis, sign_down), SNR, DOWN_GAIN, seed + 2)
    return image, inside, field.on_grid(), up, down


def _rms(a, b, inside):
    return float(np.sqrt(np.mean((a - b)[inside] ** 2)))


def test_displacement_and_jacobian_of_a_linear_field():
    """A field rising 10 Hz per voxel along j shifts by field * readout voxels (sign from the
    direction) and compresses by 1 + 10 Hz * readout."""
    field = np.broadcast_to(10.0 * np.arange(SHAPE[1])[None, :, None], SHAPE)
    shift = susceptibility.displacement_voxels(field, READOUT_S, "j-")
    np.testing.assert_allclose(shift, -field * READOUT_S)
    np.testing.assert_allclose(susceptibility.jacobian(field, READOUT_S, "j"), 1.5)
    np.testing.assert_allclose(susceptibility.jacobian(field, READOUT_S, "j-"), 0.5)
    np.testing.assert_allclose(susceptibility.jacobian(field, READOUT_S, "i"), 1.0)
    world = susceptibility.displacement_world_mm(field, _affine(), READOUT_S, "i")
    np.testing.assert_allclose(world[..., 0], -VOXEL_MM * field * READOUT_S)  # L: x flips
    np.testing.assert_allclose(world[..., 1:], 0.0)


def test_unwarp_of_a_uniform_field_is_a_whole_voxel_shift():
    image, _ = head(SHAPE, VOXEL_MM)
    field = np.full(SHAPE, 2.0 / READOUT_S)  # 2 voxels along +k
    corrected = susceptibility.unwarp(image, field, _affine(), READOUT_S, "k")
    np.testing.assert_allclose(corrected[:, :, :-2], image[:, :, 2:], atol=1e-5)


def test_unwarp_inverts_the_independent_forward_model():
    """Inside the head (bar its edge, a near-step that compression aliases) the corrected
    image matches the undistorted one; without the Jacobian it does not."""
    image, inside = head(SHAPE, VOXEL_MM)
    interior = ndimage.binary_erosion(inside, iterations=2)
    field = GaussianField(SHAPE, VOXEL_MM)
    clean = distort(image, field, READOUT_S, 1, 1)
    field = field.on_grid()
    corrected = susceptibility.unwarp(clean, field, _affine(), READOUT_S, "j")
    before, after = _rms(clean, image, interior), _rms(corrected, image, interior)
    without_jacobian = susceptibility.unwarp(
        clean, field, _affine(), READOUT_S, "j", jacobian=False
    )
    assert after < 0.1 * before
    assert after < 0.25 * _rms(without_jacobian, image, interior)


@pytest.mark.parametrize(
    ("pe_up", "pe_down", "readout_down"), [("j", "j-", READOUT_S), ("i-", "i", 0.035)]
)
def test_analytic_field_is_recovered(pe_up, pe_down, readout_down):
    """Median |error| inside the head <= 10% of the true field's 99th percentile (it is ~1%),
    and the corrected pair agrees several times better than the raw pair."""
    image, inside, truth, up, down = _pair(pe_up, pe_down, readout_down)
    estimate = susceptibility.estimate_field(
        up, down, _affine(), pe_up, pe_down, READOUT_S, readout_down
    )
    error = np.abs(estimate.field_hz - truth)[inside]
    p99 = np.percentile(np.abs(truth[inside]), 99)
    assert np.median(error) <= 0.1 * p99
    assert np.median(error) <= 0.02 * p99
    corrected_up = susceptibility.unwarp(up, estimate.field_hz, _affine(), READOUT_S, pe_up)
    corrected_down = susceptibility.unwarp(
        down / DOWN_GAIN, estimate.field_hz, _affine(), readout_down, pe_down
    )
    ratio = _rms(up, down / DOWN_GAIN, inside) / _rms(corrected_up, corrected_down, inside)
    assert ratio > 3.0
    assert estimate.data_cost_after < 0.2 * estimate.data_cost_before
    assert len(estimate.iterations) == len(susceptibility.SCHEDULE)


def test_no_field_gives_no_field():
    _, inside, _, up, down = _pair("j", "j-", scale=0.0)
    estimate = susceptibility.estimate_field(
        up, down, _affine(), "j", "j-", READOUT_S, READOUT_S, mask=inside
    )
    field = np.abs(estimate.field_hz[inside])
    assert np.median(field) < 0.5  # Hz: < 0.025 voxel at a 50 ms readout
    assert np.percentile(field, 99) < 3.0


def test_analytic_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    image, _ = head((24, 20, 16), 6.0)
    up = image + 0.01 * rng.normal(size=image.shape)
    down = np.roll(image, 1, axis=2)
    basis = susceptibility._basis(image.shape, np.full(3, 6.0), 20.0)
    problem = susceptibility._Problem(
        images=np.stack([susceptibility._prefilter(v) for v in (up, down)]),
        steps=np.array([1.0, -0.7]), rows=tuple(np.arange(n) for n in image.shape),
        weights=np.ones(image.shape), basis=basis,
        bending=susceptibility._bending_energy(basis, np.full(3, 6.0)), bending_weight=1e-2,
    )  # fmt: skip
    point = rng.normal(0.0, 0.5, np.prod(basis.shape))
    error = optimize.check_grad(
        lambda x: problem(x)[0], lambda x: problem(x)[1], point, epsilon=1e-6
    )
    assert error < 1e-4 * np.linalg.norm(problem(point)[1])


@pytest.mark.parametrize(
    ("pe_up", "pe_down", "readouts", "message"),
    [
        ("j", "j", (0.05, 0.05), "same phase-encoding direction as the DWI"),
        ("j-", "j-", (0.05, 0.05), r"needs the reverse \('j'\)"),
        ("j", "i-", (0.05, 0.05), "different axes"),
        ("y", "y-", (0.05, 0.05), "is not one of i, i-, j, j-, k, k-"),
        ("j", "j-", (0.0, 0.05), "positive number of seconds"),
        ("j", "j-", (0.05, -0.05), "positive number of seconds"),
        ("j", "j-", (0.05, float("nan")), "positive number of seconds"),
        ("j", "j-", (47.6, 47.6), "milliseconds"),
    ],
)
def test_bad_metadata_is_refused(pe_up, pe_down, readouts, message):
    volume = np.ones((8, 8, 8))
    with pytest.raises(ValueError, match=message):
        susceptibility.estimate_field(volume, volume, np.eye(4), pe_up, pe_down, *readouts)


def test_mismatched_grids_are_refused():
    volume = np.ones((8, 8, 8))
    with pytest.raises(ValueError, match="b0_down has shape"):
        susceptibility.estimate_field(volume, np.ones((8, 8, 9)), np.eye(4), "j", "j-", 0.05, 0.05)
    with pytest.raises(ValueError, match="mask has shape"):
        susceptibility.estimate_field(
            volume, volume, np.eye(4), "j", "j-", 0.05, 0.05, mask=np.ones((8, 8, 9), bool)
        )
    with pytest.raises(ValueError, match="mask is empty"):
        susceptibility.estimate_field(
            volume, volume, np.eye(4), "j", "j-", 0.05, 0.05, mask=np.zeros((8, 8, 8), bool)
        )
    with pytest.raises(ValueError, match="field_hz has shape"):
        susceptibility.unwarp(volume, np.zeros((8, 9, 8)), np.eye(4), 0.05, "j")
