"""Halfway space: the split of a rigid transform, and the unbiased subject template."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ketamine_dti import ants_backend as backend
from ketamine_dti.anat.longitudinal import build_subject_template, halfway_matrices, is_rigid
from ketamine_dti.simulate.anatomy import nilearn_data_dir

TEST_VOXEL_MM = 3.0


def _random_rigid(rng: np.random.Generator, max_deg: float = 40.0) -> np.ndarray:
    matrix = np.eye(4)
    angle = np.radians(rng.uniform(1.0, max_deg))
    axis = rng.normal(size=3)
    matrix[:3, :3] = Rotation.from_rotvec(angle * axis / np.linalg.norm(axis)).as_matrix()
    matrix[:3, 3] = rng.normal(0.0, 20.0, 3)
    return matrix


@pytest.mark.parametrize("seed", range(5))
def test_halfway_composes_to_full_and_is_symmetric(seed):
    matrix = _random_rigid(np.random.default_rng(seed))
    half, half_inv = halfway_matrices(matrix)
    assert np.allclose(half @ half, matrix, atol=1e-10)
    assert np.allclose(half @ half_inv, np.eye(4), atol=1e-10)
    assert is_rigid(half)
    # the split of the inverse is the inverse of the split: neither session is privileged
    half_of_inverse, _ = halfway_matrices(np.linalg.inv(matrix))
    assert np.allclose(half_of_inverse, half_inv, atol=1e-10)
    # half the rotation angle, same axis
    full_rotvec = Rotation.from_matrix(matrix[:3, :3]).as_rotvec()
    half_rotvec = Rotation.from_matrix(half[:3, :3]).as_rotvec()
    assert np.allclose(half_rotvec, full_rotvec / 2, atol=1e-10)


def test_halfway_of_identity_and_affine_fallback():
    half, half_inv = halfway_matrices(np.eye(4))
    assert np.allclose(half, np.eye(4)) and np.allclose(half_inv, np.eye(4))
    scaled = np.diag([1.21, 1.0, 0.81, 1.0])
    half, _ = halfway_matrices(scaled)
    assert np.allclose(half, np.diag([1.1, 1.0, 0.9, 1.0]))


@pytest.fixture(scope="module")
def two_sessions(tmp_path_factory):
    """ICBM T1w at 3 mm (session A) and a copy moved by a known rigid motion (session B)."""
    import ants

    folder = tmp_path_factory.mktemp("sessions")
    image = ants.image_read(
        str(nilearn_data_dir() / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    )
    image = ants.resample_image(image, (TEST_VOXEL_MM,) * 3, use_voxels=False, interp_type=0)
    # pad so the moved head stays inside the field of view
    padded = ants.pad_image(image, pad_width=[(4, 4)] * 3)
    ants.image_write(padded, str(folder / "a.nii.gz"))
    center = np.asarray(padded.get_center_of_mass())
    rotation = Rotation.from_euler("xyz", [8, -3, 4], degrees=True).as_matrix()
    truth = np.eye(4)  # point map A -> B
    truth[:3, :3] = rotation
    truth[:3, 3] = center - rotation @ center + np.array([5.0, -4.0, 3.0])
    # session B shows the head moved: b(y) = a(truth^-1 y)
    move = backend.matrix_to_affine(np.linalg.inv(truth), folder / "move.mat")
    moved = ants.apply_transforms(padded, padded, [move], interpolator="bSpline")
    ants.image_write(moved * 1.3, str(folder / "b.nii.gz"))  # another scanner gain
    return folder / "a.nii.gz", folder / "b.nii.gz", truth, center


@pytest.mark.slow  # 11-17 s of the fast tier (session 9)
def test_subject_template_is_halfway_and_unbiased(tmp_path, two_sessions):
    a_file, b_file, truth, center = two_sessions
    tpl = build_subject_template([a_file, b_file], tmp_path, n_threads=1)
    # the .mat of from-template_to-A maps A points to template (M) points
    to_a = backend.affine_to_matrix(tpl.from_template_to_session[0][0])
    to_b = backend.affine_to_matrix(tpl.from_template_to_session[1][0])
    # A -> M -> B recovers the full motion (0.5 mm / 0.5 degree)
    estimate = np.linalg.inv(to_b) @ to_a
    residual = np.linalg.inv(truth) @ estimate
    assert np.degrees(Rotation.from_matrix(residual[:3, :3]).magnitude()) < 0.5
    for offset in ([0, 0, 0], [60, 0, 0], [0, 60, 0], [0, 0, 60]):
        point = np.append(center + offset, 1.0)
        assert np.linalg.norm((residual @ point - point)[:3]) < 0.5
    # equal halves: the angle from the template to each session is half the full angle
    full = np.degrees(Rotation.from_matrix(truth[:3, :3]).magnitude())
    for matrix in (to_a, to_b):
        assert np.degrees(Rotation.from_matrix(matrix[:3, :3]).magnitude()) == pytest.approx(
            full / 2, abs=0.25
        )
    # session -> template lists are the inverses of template -> session
    back_a = backend.affine_to_matrix(tpl.from_session_to_template[0][0])
    assert np.allclose(back_a @ to_a, np.eye(4), atol=1e-6)
    assert tpl.qc["ncc_halfway"] > 0.97
    assert tpl.qc["rotation_deg"] == pytest.approx(full, abs=0.5)
    template = nib.load(tpl.template_file)
    assert template.shape == nib.load(a_file).shape


def test_single_session_template_is_identity(tmp_path, two_sessions):
    a_file, _, _, _ = two_sessions
    tpl = build_subject_template([a_file], tmp_path)
    assert np.allclose(backend.affine_to_matrix(tpl.from_template_to_session[0][0]), np.eye(4))
    assert np.array_equal(nib.load(tpl.template_file).get_fdata(), nib.load(a_file).get_fdata())


def test_template_rejects_three_sessions(tmp_path, two_sessions):
    a_file, b_file, _, _ = two_sessions
    with pytest.raises(ValueError, match="1 or 2"):
        build_subject_template([a_file, b_file, a_file], Path(tmp_path))
