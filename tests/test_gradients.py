"""Gradient table: reading, checks with clear errors, FSL <-> world frames, b-vector rotation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ketamine_dti.dwi import gradients
from ketamine_dti.errors import InputError


def _table(n_b0=2, n_dw=6):
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(n_dw, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    bvals = np.r_[np.zeros(n_b0), np.full(n_dw, 1000.0)]
    bvecs = np.vstack([np.zeros((n_b0, 3)), directions])
    return bvals, bvecs


def test_write_read_roundtrip(tmp_path):
    bvals, bvecs = _table()
    gradients.write_bvals(tmp_path / "x.bval", bvals)
    gradients.write_bvecs(tmp_path / "x.bvec", bvecs)
    assert np.array_equal(gradients.read_bvals(tmp_path / "x.bval"), bvals)
    assert np.allclose(gradients.read_bvecs(tmp_path / "x.bvec"), bvecs, atol=1e-8)
    assert (tmp_path / "x.bvec").read_text().count("\n") == 3  # FSL: 3 rows


def test_check_accepts_and_normalises():
    bvals, bvecs = _table()
    bvecs[3] *= 1.005  # converter rounding: normalised, b kept
    gtab = gradients.check_gradient_table(bvals, bvecs, 8)
    assert np.allclose(np.linalg.norm(gtab.bvecs[2:], axis=1), 1.0)
    assert gtab.b0_mask.tolist() == [True, True] + [False] * 6
    assert gtab.bvals[3] == 1000.0


def test_non_unit_bvecs_scale_b_as_mrtrix(caplog):
    """|g| = 0.5 on a b=1000 volume means b = 250 (b is proportional to |g|^2), logged."""
    bvals, bvecs = _table()
    bvecs[4] *= 0.5
    bvecs[5] *= 2.0
    with caplog.at_level("INFO"):
        gtab = gradients.check_gradient_table(bvals, bvecs, 8, bvec_file="a.bvec")
    assert gtab.bvals[4] == pytest.approx(250.0) and gtab.bvals[5] == pytest.approx(4000.0)
    assert np.allclose(np.linalg.norm(gtab.bvecs[2:], axis=1), 1.0)
    assert "a.bvec: 2 b-vectors are not unit length" in caplog.text


def test_b0_threshold_and_shells():
    bvals = np.array([0, 5, 30, 995, 1000, 1004, 2000, 2050, 3000])
    assert gradients.cluster_shells(bvals).tolist() == pytest.approx(
        [0, 0, 0, 999.666667, 999.666667, 999.666667, 2025, 2025, 3000]
    )
    assert gradients.cluster_shells(bvals, b0_threshold=10)[2] == 30  # b=30 is a shell then
    bvals, bvecs = _table()
    bvals[1] = 40
    assert gradients.check_gradient_table(bvals, bvecs, 8).b0_mask[1]
    with pytest.raises(InputError, match="no b0 volume .b <= 10 s/mm"):
        bvals[0] = 20
        gradients.check_gradient_table(bvals, bvecs, 8, b0_threshold=10)


def test_tensor_determinability():
    bvals, bvecs = _table()
    assert gradients.tensor_determinable(bvecs[2:])
    assert not gradients.tensor_determinable(bvecs[2:7])  # 5 directions
    same = np.tile(bvecs[2], (8, 1)) * np.r_[1, -1, 1, -1, 1, -1, 1, -1][:, None]
    assert not gradients.tensor_determinable(same)  # one axis, both signs
    planar = bvecs[2:].copy()
    planar[:, 2] = 0
    planar /= np.linalg.norm(planar, axis=1, keepdims=True)
    assert not gradients.tensor_determinable(planar)  # all in one plane: Dzz unknown
    gtab = gradients.check_gradient_table(
        np.r_[0, np.full(8, 1000.0)], np.vstack([[0, 0, 0], same]), 9
    )
    with pytest.raises(InputError, match="a.bvec: .* do not span 6 non-collinear directions"):
        gradients.require_tensor_fit(gtab, "a.bvec")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b, v: (b[:-1], v), "7 b-values for 8 DWI volumes"),
        (lambda b, v: (b, v[:-1]), "7 b-vectors for 8 DWI volumes"),
        (lambda b, v: (np.full_like(b, 1000.0), v), "no b0 volume"),
        (lambda b, v: (b * -1, v), "negative b-values"),
        (lambda b, v: (b / 1000, v), "look like ms/um"),
        (lambda b, v: (b, np.where(np.arange(8)[:, None] == 4, np.nan, v)), "NaN or Inf"),
        (lambda b, v: (b, v * np.r_[1, 1, 1, 0, 1, 1, 1, 1][:, None]), "zero b-vector"),
    ],
)
def test_check_rejects_with_file_name(change, message):
    bvals, bvecs = change(*_table())
    with pytest.raises(InputError, match=message) as info:
        gradients.check_gradient_table(bvals, bvecs, 8, bval_file="a.bval", bvec_file="a.bvec")
    assert "a.bval" in str(info.value) or "a.bvec" in str(info.value)


def test_fsl_convention_known_answer():
    """FSL's first axis is radiological: +x in the .bvec is world -x for both storage orders."""
    for affine in (np.diag([2.0, 2, 2, 1]), np.diag([-2.0, 2, 2, 1])):
        world = gradients.fsl_to_world(np.array([[1.0, 0, 0], [0, 1, 0]]), affine)
        assert np.allclose(world, [[-1, 0, 0], [0, 1, 0]])
        back = gradients.world_to_fsl(world, affine)
        assert np.allclose(back, [[1, 0, 0], [0, 1, 0]])


def test_rotation_part_ignores_eddy_shear_and_scale():
    rotation = Rotation.from_euler("xyz", [5, -3, 8], degrees=True).as_matrix()
    # a symmetric positive stretch/shear along the phase-encode axis (y), as eddy currents make
    stretch = np.array([[1.0, 0.03, 0.0], [0.03, 1.04, 0.02], [0.0, 0.02, 1.0]])
    recovered = gradients.rotation_part(rotation @ stretch)
    assert np.allclose(recovered, rotation, atol=1e-10)


def test_rotate_bvecs_known_rotation():
    """A head turned +90 deg about z saw the scanner's x gradient along its own -y."""
    affine = np.diag([-2.0, 2, 2, 1])  # LAS storage: FSL = voxel axes, no flip
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    fsl = gradients.world_to_fsl(np.array([[1.0, 0, 0], [0, 0, 0]]), affine)
    rotated = gradients.rotate_bvecs(fsl, np.stack([motion, motion]), affine)
    world = gradients.fsl_to_world(rotated, affine)
    assert np.allclose(world[0], [0, -1, 0], atol=1e-12)
    assert np.allclose(world[1], 0)  # b0 stays zero


def test_rotation_excluding_phase_encoding_known_answer():
    """Head rotation R times an eddy distortion of the PE (j) row only: R comes back exactly."""
    image_affine = np.diag([-2.0, 2, 2, 1])
    rotation = Rotation.from_euler("xyz", [3, -2, 4], degrees=True).as_matrix()
    eddy = np.eye(3)
    eddy[1] = [0.04, 1.03, -0.02]  # y displacement depends on x, y and z
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ eddy
    recovered = gradients.rotation_excluding_phase_encoding(matrix, image_affine, pe_axis=1)
    assert np.allclose(recovered, rotation, atol=1e-12)
    # the polar rotation is biased by the shear, which is why the PE-aware one is used
    assert not np.allclose(gradients.rotation_part(matrix), rotation, atol=1e-3)
