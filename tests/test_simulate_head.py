"""The simulated whole head (issue 10): tissues and contrast, field of view, truth brain mask,
per-participant T1w scaling, the DWI outside the brain, and ``--head brain``."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest

from ketamine_dti.simulate import anatomy, head, session
from ketamine_dti.simulate.presets import get_preset

#: The T1w grid must reach this far (mm) below the lowest brain voxel (the neck).
NECK_REACH_MM = 70.0


@pytest.fixture(scope="module")
def tiny_head():
    """One tiny-preset T1w of the whole head (no scaling: int16, WM = 1000 units)."""
    rng = np.random.default_rng([4, 1])
    template = anatomy.load_template_anatomy()
    participant = anatomy.random_participant(rng, template)
    pose = anatomy.random_head_pose(rng, template.centre_mm)
    # Intrinsic contrast: no receive-coil profile here (test_coil_profile checks it).
    shape = dataclasses.replace(
        head.random_head_shape(np.random.default_rng([4, 1, 1])), coil_amplitude=0.0
    )
    preset = get_preset("tiny")
    t1w = session.simulate_t1w(template, participant, pose, preset, rng, shape)
    affine, grid = session.t1w_grid(pose, preset, True)
    tissue = anatomy.voxel_tissue(
        template, participant, pose, affine, grid, 1, None, 0, with_fibre=False
    )
    _, labels, _ = head.head_properties(
        template, participant, pose, shape, affine, grid, head.t1w_table(), tissue.brain
    )
    return {"t1w": t1w, "tissue": tissue, "labels": labels, "grid": grid}


def _mean_of(tiny_head, tissue: str) -> float:
    """Mean T1w of voxels that are wholly that extracerebral tissue (no brain, label inside)."""
    labels, brain = tiny_head["labels"], tiny_head["tissue"].brain
    core = labels == head.TISSUE_INDEX[tissue]
    from scipy import ndimage

    core = ndimage.binary_erosion(core) & (brain == 0)
    assert core.sum() >= 5, tissue
    return float(tiny_head["t1w"].data[core].mean())


def test_head_has_its_tissues_with_t1w_contrast(tiny_head):
    """fat > WM > GM > muscle > CSF > bone/air, measured on the written T1w (bias and noise)."""
    tissue, data = tiny_head["tissue"], tiny_head["t1w"].data
    white = float(data[tissue.wm > 0.95].mean())
    gray = float(data[tissue.gm > 0.95].mean())
    fat, muscle = _mean_of(tiny_head, "fat"), _mean_of(tiny_head, "muscle")
    csf, bone = _mean_of(tiny_head, "csf"), _mean_of(tiny_head, "bone")
    assert fat > 1.1 * white > white > gray > muscle > csf > bone, (fat, white, gray, muscle)
    present = set(np.unique(tiny_head["labels"][tiny_head["tissue"].brain < 0.5]))
    expected = {"skin", "fat", "muscle", "bone", "marrow", "csf", "vitreous", "cord", "disc"}
    expected |= {"mucosa", "air", "vessel"}
    assert {head.TISSUE_INDEX[t] for t in expected} <= present


def test_field_of_view_reaches_the_neck(tiny_head):
    """The T1w grid runs ~8 cm below the brain, and the neck (not air) fills its bottom."""
    t1w, grid = tiny_head["t1w"], tiny_head["grid"]
    brain_z = nib.affines.apply_affine(t1w.affine, np.argwhere(t1w.brain_mask))[:, 2]
    corners = np.array(
        [[i, j, k] for i in (0, grid[0]) for j in (0, grid[1]) for k in (0, grid[2])]
    )
    lowest_grid_z = nib.affines.apply_affine(t1w.affine, corners)[:, 2].min()
    assert brain_z.min() - lowest_grid_z > NECK_REACH_MM
    labels = tiny_head["labels"]
    bottom = labels[..., :3] if t1w.affine[2, 2] > 0 else labels[..., -3:]
    assert (bottom != head.TISSUE_INDEX["air"]).mean() > 0.1  # the neck's cross-section


def test_truth_mask_is_the_brain(tiny_head):
    """The true mask is the brain (tissue + CSF >= 50%): no voxel of it is mostly head."""
    t1w, tissue = tiny_head["t1w"], tiny_head["tissue"]
    np.testing.assert_array_equal(t1w.brain_mask, tissue.brain >= session.BRAIN_MASK_FRACTION)
    volume_ml = t1w.brain_mask.sum() * get_preset("tiny").t1w_voxel_mm ** 3 / 1000
    assert 1300 < volume_ml < 2100  # the ICBM152 brain with its CSF, scaled per participant
    fat = tiny_head["labels"] == head.TISSUE_INDEX["fat"]
    assert not (fat & t1w.brain_mask).any()


def test_skull_is_not_a_uniform_shell(tiny_head):
    """Skull thickness varies with position (thin temporal squama, thick occiput)."""
    shape = head.random_head_shape(np.random.default_rng(0))
    points = np.array([[0.0, -110.0, 10.0], [66.0, -10.0, -10.0], [0.0, -20.0, 80.0]]).T
    occipital, temporal, vertex = head.skull_thickness(points.astype(np.float32), shape)
    assert occipital > 1.3 * vertex > 1.3 * temporal


def test_coil_profile_brightens_the_surface():
    """Without prescan normalisation the skin is 1 + A brighter than the head's centre."""
    depth = np.array([0.0, 10.0, 80.0], dtype=np.float32)
    surface, cortex, centre = head.coil_gain(depth, amplitude=3.0, length_mm=15.0)
    assert surface == pytest.approx(4.0)
    assert surface > cortex > centre > 1.0
    assert centre == pytest.approx(1.0, abs=0.02)


def test_dwi_inside_the_brain_is_unchanged_and_the_scalp_appears():
    """With the head, the noiseless DWI differs only where the brain does not fill the voxel."""
    template = anatomy.load_template_anatomy()
    preset = get_preset("tiny")
    sessions = {}
    for name, shape in (
        ("brain", None),
        ("full", head.random_head_shape(np.random.default_rng(1))),
    ):
        rng = np.random.default_rng(9)
        participant = anatomy.random_participant(rng, template)
        pose = anatomy.random_head_pose(rng, template.centre_mm)
        sessions[name] = session.simulate_dwi(
            template,
            participant,
            pose,
            preset,
            rng,
            np.array([0.8e-3]),
            None,
            None,
            head_shape=shape,
        )
    brain, full = sessions["brain"], sessions["full"]
    filled = (brain.fractions["gm"] + brain.fractions["wm"] + brain.fractions["csf"]) >= 1.0 - 1e-6
    # Filled to 1e-6: a sub-voxel may leave the head a few millionths (simulate_dwi).
    np.testing.assert_allclose(full.clean[filled], brain.clean[filled], rtol=1e-5)
    b0 = full.bvals == 0
    extra = (full.clean - brain.clean)[..., b0].mean(axis=-1)
    assert (extra[~filled] > 0.1 * session.signal.S0_WM).sum() > 500  # scalp, muscle, eyes
    # At b = 1000 the scalp and muscle fade (fat suppressed, muscle D ~1.5e-3).
    dw = (full.clean - brain.clean)[..., ~b0].mean(axis=-1)
    assert dw[~filled].sum() < 0.5 * extra[~filled].sum()


def test_t1w_scaling_and_storage_differ_between_participants(tiny_trial):
    """Each participant's T1w has its own scale/offset/storage, as the ground truth records."""
    truth = json.loads(
        (tiny_trial / "sourcedata" / "ground_truth" / "planted_effects.json").read_text()
    )
    scaling = truth["head"]["t1w_scaling"]
    assert truth["head"]["mode"] == "full"
    assert len({s["storage"] for s in scaling.values()}) >= 2
    white_levels = {}
    for participant, record in scaling.items():
        stem = tiny_trial / participant / "ses-baseline" / "anat"
        image = nib.load(stem / f"{participant}_ses-baseline_T1w.nii.gz")
        expected = {"int16_scaled": np.int16}.get(record["storage"], np.dtype(record["storage"]))
        assert image.get_data_dtype() == expected
        mask = nib.load(
            tiny_trial
            / "sourcedata"
            / "ground_truth"
            / participant
            / "ses-baseline"
            / f"{participant}_ses-baseline_space-T1w_desc-brain_mask.nii.gz"
        )
        assert mask.shape == image.shape
        np.testing.assert_allclose(mask.affine, image.affine)
        brain = np.asarray(image.dataobj, dtype=float)[np.asarray(mask.dataobj) > 0]
        white_levels[participant] = np.percentile(brain, 90)
        if truth["head"]["head_shape"][participant]["coil_amplitude"] == 0:
            # Prescan-normalised: the WM level follows the scale (1000 x scale + offset, 25%).
            level = session.T1W_WM_SIGNAL * record["scale"] + record["offset"]
            assert white_levels[participant] == pytest.approx(level, rel=0.25)
    levels = np.array(list(white_levels.values()))
    assert levels.max() / levels.min() > 1.5


def test_head_brain_keeps_the_brain_only_t1w(tmp_path):
    """``--head brain``: the old T1w (brain-centred box, thin shell, int16, no neck)."""
    from ketamine_dti.simulate.cli import main

    out = tmp_path / "bids"
    assert main([str(out), "--n-participants", "3", "--seed", "2", "--head", "brain"]) == 0
    image = nib.load(out / "sub-001" / "ses-baseline" / "anat" / "sub-001_ses-baseline_T1w.nii.gz")
    assert image.shape == get_preset("tiny").t1w_shape
    assert image.get_data_dtype() == np.int16
    truth = json.loads((out / "sourcedata" / "ground_truth" / "planted_effects.json").read_text())
    assert truth["head"]["mode"] == "brain"
    assert set(truth["head"]["t1w_scaling"].values()) == {None}
