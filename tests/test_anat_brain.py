"""T1w bias correction and brain extraction (no network: bundled template)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ketamine_dti import ants_backend as backend
from ketamine_dti.anat import registration as reg
from ketamine_dti.anat.brain import bias_correct, extract_brain, refine_mask
from ketamine_dti.errors import InputError
from ketamine_dti.simulate.anatomy import nilearn_data_dir

#: Head shell drawn around the ICBM brain (mm from the brain edge) and its T1w intensities
#: relative to the template's 0-255 scale: CSF and skull dark, scalp bright.
SHELL = ((3.0, 20.0), (8.0, 8.0), (14.0, 170.0))


def _icbm(name: str, voxel_mm: float):
    import ants

    image = ants.image_read(
        str(nilearn_data_dir() / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")
    )
    return ants.resample_image(image, (voxel_mm,) * 3, use_voxels=False, interp_type=0)


def test_refine_mask_fills_holes_and_drops_islands():
    grid = np.indices((30, 30, 30)) - 14.5
    radius = np.sqrt((grid**2).sum(axis=0))
    probability = (radius < 10).astype(float)
    probability[radius < 3] = 0.0  # a "ventricle" the template mask might miss
    probability[1:3, 1:3, 1:3] = 1.0  # an island (a piece of scalp)
    mask = refine_mask(probability)
    assert mask[15, 15, 15]  # hole filled
    assert not mask[1:3, 1:3, 1:3].any()  # island gone
    assert mask.sum() == pytest.approx((radius < 10).sum(), rel=0.03)
    assert not refine_mask(np.zeros((4, 4, 4))).any()


def test_bias_correction_flattens_white_matter(tmp_path):
    import ants

    t1w = _icbm("t1", 3.0)
    wm = _icbm("wm", 3.0).numpy() > 200  # WM probability > 0.8
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in t1w.shape], indexing="ij")
    field = np.exp(0.25 * axes[0] - 0.2 * axes[2] + 0.15 * axes[1] ** 2)
    ants.image_write(
        t1w.new_image_like((t1w.numpy() * field).astype(np.float32)),
        str(tmp_path / "biased.nii.gz"),
    )
    corrected = bias_correct(tmp_path / "biased.nii.gz", tmp_path)
    before = nib.load(tmp_path / "biased.nii.gz").get_fdata()[wm]
    after = nib.load(corrected).get_fdata()[wm]
    cv_before, cv_after = before.std() / before.mean(), after.std() / after.mean()
    assert cv_after < 0.6 * cv_before


def test_bias_correction_rejects_an_empty_image(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), tmp_path / "z.nii.gz")
    with pytest.raises(InputError, match="z.nii.gz"):
        bias_correct(tmp_path / "z.nii.gz", tmp_path)


@pytest.mark.slow
def test_extract_brain_on_a_synthetic_head_with_the_bundled_template(tmp_path):
    """ICBM brain + CSF/skull/scalp shell, rotated and scaled: Dice with the true brain > 0.93."""
    import ants

    brain_image = _icbm("t1", 2.0)
    brain_image = ants.pad_image(brain_image, pad_width=[(10, 10)] * 3)
    data = brain_image.numpy()
    brain = data > 1
    distance = ndimage.distance_transform_edt(
        ~ndimage.binary_closing(brain, iterations=3), sampling=2.0
    )
    head = data.copy()
    inner = 0.0
    for outer, value in SHELL:
        head[(distance > inner) & (distance <= outer)] = value
        inner = outer
    center = np.asarray(brain_image.get_center_of_mass())
    from scipy.spatial.transform import Rotation

    linear = 1.05 * Rotation.from_euler("xyz", [10, -5, 6], degrees=True).as_matrix()
    move = np.eye(4)
    move[:3, :3] = linear
    move[:3, 3] = center - linear @ center + np.array([5.0, -6.0, 4.0])
    move_file = backend.matrix_to_affine(move, tmp_path / "move.mat")
    head_image = ants.apply_transforms(brain_image, brain_image.new_image_like(head), [move_file])
    truth = ants.apply_transforms(
        brain_image,
        brain_image.new_image_like(brain.astype(np.float32)),
        [move_file],
        interpolator="nearestNeighbor",
    )
    ants.image_write(head_image, str(tmp_path / "head.nii.gz"))

    result = extract_brain(tmp_path / "head.nii.gz", tmp_path / "bex", n_threads=1)
    mask = nib.load(result.mask_file).get_fdata() > 0
    assert reg.dice(mask, truth.numpy() > 0) > 0.93
    assert result.qc["brain_volume_ml"] == pytest.approx(truth.numpy().sum() * 8e-3, rel=0.1)
    # the template is now Colin27, another brain than this MNI152-made head (it was the same
    # image before), so the NCC inside its brain mask measures inter-subject similarity: 0.75 here
    assert result.qc["ncc_template"] > 0.6
    brain_values = nib.load(result.brain_file).get_fdata()
    assert np.all(brain_values[~mask] == 0)


def _ball_head(shape=(48, 56, 60), voxel=(3.0, 3.0, 3.0), neck=True):
    """A brain ball in a dark skull and a bright scalp, with or without a neck below it."""
    grid = np.indices(shape).astype(float)
    center = np.array([24.0, 28.0, 38.0])
    offsets = [(g - c) * v for g, c, v in zip(grid, center, voxel, strict=True)]
    radius_mm = np.sqrt(sum(offset**2 for offset in offsets))
    image = np.where(radius_mm < 60, 300.0, 0.0)  # brain
    image[(radius_mm >= 60) & (radius_mm < 66)] = 20.0  # skull
    image[(radius_mm >= 66) & (radius_mm < 72)] = 800.0  # scalp fat
    if neck:
        axial = np.sqrt(((grid[0] - 24) * 3.0) ** 2 + ((grid[1] - 28) * 3.0) ** 2)
        image[(axial < 45) & (grid[2] < 20) & (image == 0)] = 250.0
    return image, radius_mm < 60


def test_upper_head_center_ignores_the_neck_and_the_voxel_order():
    from ketamine_dti.anat.brain import upper_head_center

    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    with_neck, _ = _ball_head(neck=True)
    without, _ = _ball_head(neck=False)
    center_neck = upper_head_center(backend.image_from_array(with_neck, affine))
    center_plain = upper_head_center(backend.image_from_array(without, affine))
    assert np.linalg.norm(center_neck - center_plain) < 3.0
    # the same head stored LPS with permuted axes: the world centre is the same
    flipped = np.transpose(with_neck[::-1, ::-1, :], (2, 0, 1))
    permuted_affine = np.array(
        [[0, -3.0, 0, 47 * 3.0], [0, 0, -3.0, 55 * 3.0], [3.0, 0, 0, 0], [0, 0, 0, 1]]
    )
    center_permuted = upper_head_center(backend.image_from_array(flipped, permuted_affine))
    assert np.allclose(center_permuted, center_neck, atol=1e-3)


def test_tissue_refinement_cuts_the_scalp_and_keeps_the_brain():
    from ketamine_dti.anat.brain import refine_with_tissue

    image, brain = _ball_head(neck=False)
    prior = ndimage.binary_dilation(brain, iterations=2)  # a prior 6 mm too generous
    tissue = (image > 150) & (image < 600)
    tissue[24, 28, 38 + 20 : 38 + 24] = True  # a thin bright bridge towards the scalp
    mask = refine_with_tissue(prior, tissue, (3.0, 3.0, 3.0))
    assert reg.dice(mask, brain) > 0.97
    assert not (mask & (image == 800)).any()


def test_unusable_t1w_is_an_input_error_naming_the_file(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    cases = {
        "constant.nii.gz": np.full((20, 20, 20), 7.0, np.float32),
        "slice.nii.gz": np.random.default_rng(0).random((40, 40, 1)).astype(np.float32),
        "empty.nii.gz": np.zeros((20, 20, 20), np.float32),
    }
    for name, data in cases.items():
        nib.save(nib.Nifti1Image(data, affine), tmp_path / name)
        with pytest.raises(InputError, match=name):
            extract_brain(tmp_path / name, tmp_path / "out")


def _moved_colin(tmp_path, name: str, crop_inferior_mm: float = 0.0):
    """The bundled Colin27 head rotated, scaled, shifted and stored LPS with permuted axes
    (and optionally cropped from below); returns (file, its true brain mask on that grid)."""
    import ants
    from scipy.spatial.transform import Rotation

    from ketamine_dti.anat.brain import bundled_head_template

    head_file, mask_file = bundled_head_template()
    head = ants.image_read(head_file)
    center = np.asarray(head.get_center_of_mass())
    linear = 0.93 * Rotation.from_euler("xyz", [12, -8, 10], degrees=True).as_matrix()
    move = np.eye(4)
    move[:3, :3] = linear
    move[:3, 3] = center - linear @ center + np.array([8.0, -12.0, 10.0])
    move_file = backend.matrix_to_affine(move, tmp_path / f"{name}_move.mat")
    grid = nib.load(head_file)
    data = np.transpose(np.asarray(grid.dataobj)[::-1, :, ::-1], (1, 0, 2))  # permuted + flips
    affine = grid.affine @ np.array(
        [[0, -1, 0, data.shape[1] - 1], [1, 0, 0, 0], [0, 0, -1, data.shape[2] - 1], [0, 0, 0, 1]]
    )
    if crop_inferior_mm:  # the third axis runs inferior here: drop its last slices
        data = data[:, :, : -int(crop_inferior_mm / 2)]
    reference = backend.image_from_array(data.astype(np.float32), affine)
    moved = ants.apply_transforms(reference, head, [move_file], interpolator="linear")
    truth = ants.apply_transforms(
        reference, ants.image_read(mask_file), [move_file], interpolator="nearestNeighbor"
    )
    ants.image_write(moved * 3.7 + 50.0, str(tmp_path / f"{name}.nii.gz"))  # other scaling
    return tmp_path / f"{name}.nii.gz", truth.numpy() > 0


@pytest.mark.slow
def test_extraction_maps_the_template_mask_back_onto_a_moved_reoriented_template(tmp_path):
    """Colin27 is the template, so its own mask cannot be an independent truth: this checks
    that a known rotation/scaling/reorientation of the template head is undone."""
    head_file, truth = _moved_colin(tmp_path, "moved")
    result = extract_brain(head_file, tmp_path / "bex", n_threads=1)
    mask = nib.load(result.mask_file).get_fdata() > 0
    assert reg.dice(mask, truth) > 0.92
    # measured +13.8% (2,428 vs 2,133 ml): the refinement keeps a rim outside ch2bet on this
    # 1.24x enlarged Colin27 (on the real scan and the simulated heads it does not: see
    # benchmarks/results/brain_extraction.md); a known gap, bounded here so it cannot grow
    assert result.qc["brain_volume_ml"] == pytest.approx(truth.sum() * 8e-3, rel=0.15)
    # 30 mm less below (Colin27's field of view ends under the cerebellum, so this cuts into
    # it): inside the shared field of view the mask must not change
    cropped_file, cropped_truth = _moved_colin(tmp_path, "cropped", crop_inferior_mm=30.0)
    cropped = extract_brain(cropped_file, tmp_path / "bex_cropped", n_threads=1)
    cropped_mask = nib.load(cropped.mask_file).get_fdata() > 0
    assert reg.dice(cropped_mask, mask[:, :, : cropped_mask.shape[2]]) > 0.95
    assert reg.dice(cropped_mask, cropped_truth) > 0.92


# The real Prisma MPRAGE (whole head, face and neck, strong bias) is checked end to end, brain
# volume included, by tests/test_realscan.py.
