"""Atropos tissue segmentation of a real T1w (nilearn's ICBM152) against its own tissue maps."""

from __future__ import annotations

import tempfile

import nibabel as nib
import numpy as np
import pytest

from ketamine_dti.anat.registration import dice
from ketamine_dti.anat.segmentation import order_by_intensity, segment_tissues
from ketamine_dti.errors import InputError
from ketamine_dti.simulate.anatomy import nilearn_data_dir

TEST_VOXEL_MM = 3.0
#: ICBM maps are stored as 0..255.
ICBM_MAX = 255.0


def _icbm(name: str):
    import ants

    image = ants.image_read(
        str(nilearn_data_dir() / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")
    )
    return ants.resample_image(image, (TEST_VOXEL_MM,) * 3, use_voxels=False, interp_type=0)


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    import ants

    folder = tmp_path_factory.mktemp("seg")
    t1w = _icbm("t1")
    ants.image_write(t1w, str(folder / "brain.nii.gz"))
    mask = t1w.new_image_like((t1w.numpy() > 1).astype(np.float32))
    ants.image_write(mask, str(folder / "mask.nii.gz"))
    result = segment_tissues(folder / "brain.nii.gz", folder / "mask.nii.gz", folder / "out")
    return folder, result


def test_segmentation_matches_the_reference_tissue_maps(segmented):
    folder, result = segmented
    mask = nib.load(folder / "mask.nii.gz").get_fdata() > 0
    gm = nib.load(result.gm_file).get_fdata()
    wm = nib.load(result.wm_file).get_fdata()
    csf = nib.load(result.csf_file).get_fdata()
    assert np.allclose((gm + wm + csf)[mask], 1.0, atol=1e-4)
    assert gm[~mask].max() == 0.0
    reference_gm = _icbm("gm").numpy() / ICBM_MAX
    reference_wm = _icbm("wm").numpy() / ICBM_MAX
    assert np.corrcoef(gm[mask], reference_gm[mask])[0, 1] > 0.7
    assert dice(wm > 0.5, reference_wm > 0.5) > 0.8
    dseg = np.asarray(nib.load(result.dseg_file).dataobj)
    assert set(np.unique(dseg)) == {0, 1, 2, 3}
    t1w = nib.load(folder / "brain.nii.gz").get_fdata()
    means = [t1w[dseg == k].mean() for k in (1, 2, 3)]
    assert means[0] < means[1] < means[2]  # CSF < GM < WM on T1w


def test_segmentation_is_repeatable_and_leaves_no_temporary_files(
    segmented, tmp_path, monkeypatch
):
    folder, first = segmented
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    second = segment_tissues(folder / "brain.nii.gz", folder / "mask.nii.gz", tmp_path / "out")
    assert list(system_tmp.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"tissue_{name}_probseg.nii" for name in ("csf", "gm", "wm")] + ["tissue_dseg.nii.gz"]
    )
    assert np.array_equal(
        nib.load(first.gm_file).get_fdata(), nib.load(second.gm_file).get_fdata()
    )


def test_order_by_intensity():
    image = np.array([3.0, 1.0, 2.0])
    probabilities = [np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])]
    ordered = order_by_intensity(image, probabilities, np.ones(3, bool))
    assert [int(np.argmax(p)) for p in ordered] == [1, 2, 0]


def test_empty_mask_is_an_input_error(segmented, tmp_path):
    folder, _ = segmented
    empty = nib.load(folder / "mask.nii.gz")
    nib.save(
        nib.Nifti1Image(np.zeros(empty.shape, np.float32), empty.affine), tmp_path / "e.nii.gz"
    )
    with pytest.raises(InputError, match="empty"):
        segment_tissues(folder / "brain.nii.gz", tmp_path / "e.nii.gz", tmp_path)


def test_template_priors_bring_the_segmentation_closer_to_an_independent_reference(
    segmented, tmp_path
):
    """The bundled MNI152NLin6Asym priors (Atropos of that template) on nilearn's ICBM 2009a
    T1w: closer to ICBM's own GM map than intensity alone, most in the deep gray matter."""
    from ketamine_dti.anat.segmentation import warp_priors
    from ketamine_dti.ants_backend import apply_transforms
    from ketamine_dti.resources import get_atlas, get_tissue_priors

    folder, kmeans = segmented
    brain = folder / "brain.nii.gz"
    priors = warp_priors(get_tissue_priors(), brain, [], tmp_path / "priors")  # both in MNI
    for prior in priors:
        values = nib.load(prior).get_fdata()
        assert values.min() >= 0.0 and values.max() <= 1.0 + 1e-6
    with_priors = segment_tissues(
        brain, folder / "mask.nii.gz", tmp_path / "out", priors=get_tissue_priors()
    )
    atlas_file = apply_transforms(
        get_atlas(1)[0], brain, [], tmp_path / "atlas.nii.gz", interpolation="genericLabel"
    )
    # amygdalae, hippocampi
    deep = np.isin(np.rint(nib.load(atlas_file).get_fdata()), (3, 4, 5, 6))
    mask = nib.load(folder / "mask.nii.gz").get_fdata() > 0
    reference = _icbm("gm").numpy() / ICBM_MAX
    scores = {}
    for name, result in (("kmeans", kmeans), ("priors", with_priors)):
        gm = nib.load(result.gm_file).get_fdata()
        scores[name] = (
            np.corrcoef(gm[mask], reference[mask])[0, 1],
            np.mean(gm[deep] >= 0.5),
        )
    # measured: correlation 0.858 -> 0.898, deep GM called GM 0.77 -> 0.81 (reference: 0.90)
    assert scores["priors"][0] > scores["kmeans"][0] + 0.02
    assert scores["priors"][1] > scores["kmeans"][1]
    with pytest.raises(ValueError, match="expected 3 maps"):
        segment_tissues(brain, folder / "mask.nii.gz", tmp_path / "bad", priors=priors[:2])
