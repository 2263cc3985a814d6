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
    corrected = bias_correct(tmp_path / "biased.nii.gz", tmp_path, n_threads=1)
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
    assert result.qc["ncc_template"] > 0.8
    brain_values = nib.load(result.brain_file).get_fdata()
    assert np.all(brain_values[~mask] == 0)
