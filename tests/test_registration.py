"""ANTs registration wrappers: transform conventions, known-transform recovery, determinism."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ketamine_dti import ants_backend as backend
from ketamine_dti.anat import registration as reg
from ketamine_dti.errors import InputError
from ketamine_dti.simulate.anatomy import nilearn_data_dir

#: Test grid (mm): coarse enough for second-scale registrations, fine enough for 0.5 mm accuracy.
TEST_VOXEL_MM = 3.0


def _downsampled_icbm(
    path: Path, voxel_mm: float = TEST_VOXEL_MM, source: Path | None = None
) -> Path:
    """ICBM 2009a (or ``source``, an image on its grid) resampled to ``voxel_mm``."""
    import ants

    image = ants.image_read(
        str(source or nilearn_data_dir() / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    )
    small = ants.resample_image(image, (voxel_mm,) * 3, use_voxels=False, interp_type=0)
    ants.image_write(small, str(path))
    return path


def _rigid_about(center: np.ndarray, angles_deg, translation_mm) -> np.ndarray:
    """4x4 point map: rotate about ``center`` (LPS mm), then translate."""
    rotation = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = center - rotation @ center + np.asarray(translation_mm, float)
    return matrix


@pytest.fixture(scope="module")
def icbm(tmp_path_factory) -> Path:
    return _downsampled_icbm(tmp_path_factory.mktemp("icbm") / "t1w.nii.gz")


def _center_of_mass(path: Path) -> np.ndarray:
    import ants

    return np.asarray(ants.image_read(str(path)).get_center_of_mass())


def test_affine_file_roundtrip_and_point_convention(tmp_path):
    import ants

    matrix = _rigid_about(np.array([10.0, -20.0, 5.0]), [3, -7, 11], [2, 4, -6])
    matrix[:3, :3] *= 1.05  # an affine, not only rigid
    path = backend.matrix_to_affine(matrix, tmp_path / "m.mat")
    assert np.allclose(backend.affine_to_matrix(path), matrix, atol=1e-6)
    point = np.array([12.0, -3.0, 40.0])
    mapped = ants.read_transform(path).apply_to_point(tuple(point))
    assert np.allclose(mapped, (matrix @ np.append(point, 1))[:3], atol=1e-4)
    inverse = backend.invert_affine_file(path, tmp_path / "inv.mat")
    assert np.allclose(backend.affine_to_matrix(inverse) @ matrix, np.eye(4), atol=1e-6)


def test_apply_transforms_moves_content_the_documented_way(tmp_path):
    """from-X_to-Y with point map T: output(y) = input(T y). A +6 mm x point shift moves a
    bright voxel by -2 voxels along the x image axis (LPS x = RAS -x on a RAS grid)."""
    data = np.zeros((20, 20, 20), np.float32)
    data[10, 10, 10] = 1.0
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])), tmp_path / "dot.nii.gz")
    shift = np.eye(4)
    shift[0, 3] = 6.0  # LPS x
    xfm = backend.matrix_to_affine(shift, tmp_path / "shift.mat")
    out = backend.apply_transforms(
        tmp_path / "dot.nii.gz",
        tmp_path / "dot.nii.gz",
        [xfm],
        tmp_path / "out.nii.gz",
        interpolation="nearestNeighbor",
    )
    moved = np.argwhere(nib.load(out).get_fdata() > 0.5)
    # output voxel i has RAS x = 3 i, LPS x = -3 i; it samples LPS x = -3 i + 6, i.e. voxel i - 2
    assert moved.tolist() == [[12, 10, 10]]


def test_compose_equals_sequential_resampling(tmp_path, icbm):
    center = _center_of_mass(icbm)
    first = backend.matrix_to_affine(
        _rigid_about(center, [5, 0, 0], [3, 0, 0]), tmp_path / "a.mat"
    )
    second = backend.matrix_to_affine(
        _rigid_about(center, [0, 0, -4], [0, 2, 0]), tmp_path / "b.mat"
    )
    # from-A_to-B = first, from-B_to-C = second: a C point goes through `second`, then `first`
    composed = backend.compose_transforms([first], [second])
    one_go = backend.apply_transforms(icbm, icbm, composed, tmp_path / "c.nii.gz")
    product = backend.affine_to_matrix(first) @ backend.affine_to_matrix(second)
    single = backend.matrix_to_affine(product, tmp_path / "p.mat")
    by_product = backend.apply_transforms(icbm, icbm, [single], tmp_path / "d.nii.gz")
    a, b = nib.load(one_go).get_fdata(), nib.load(by_product).get_fdata()
    assert np.allclose(a, b, atol=1e-3 * a.max())


def test_collapse_linear_equals_the_list(tmp_path, icbm):
    center = _center_of_mass(icbm)
    first = backend.matrix_to_affine(
        _rigid_about(center, [3, 0, 2], [1, 0, 0]), tmp_path / "a.mat"
    )
    second = backend.matrix_to_affine(
        _rigid_about(center, [0, -4, 0], [0, 0, 2]), tmp_path / "b.mat"
    )
    chain = backend.compose_transforms([first], [second])
    single = backend.collapse_linear(chain, tmp_path / "ab.mat")
    by_list = backend.apply_transforms(icbm, icbm, chain, tmp_path / "l.nii.gz")
    by_single = backend.apply_transforms(icbm, icbm, [single], tmp_path / "s.nii.gz")
    assert np.abs(nib.load(by_list).get_fdata() - nib.load(by_single).get_fdata()).max() < 1e-3
    with pytest.raises(ValueError, match="only affine"):
        backend.collapse_linear([first, str(tmp_path / "warp.nii.gz")], tmp_path / "x.mat")


def test_composite_transform_file_resamples_like_its_list(tmp_path, icbm):
    """The published .h5 (affine + SyN warp in one file) moves an image as the list does."""
    center = _center_of_mass(icbm)
    moving = backend.apply_transforms(
        icbm,
        icbm,
        [
            backend.matrix_to_affine(
                _rigid_about(center, [4, 0, 0], [2, -1, 0]), tmp_path / "m.mat"
            )
        ],
        tmp_path / "moving.nii.gz",
    )
    syn = reg.register_syn(
        icbm, moving, tmp_path, prefix="syn_", affine_iterations=(20, 10, 0),
        syn_iterations=(10, 5, 0),
    )  # fmt: skip
    assert any(t.endswith("Warp.nii.gz") for t in syn.from_moving_to_fixed)
    h5 = backend.write_composite_transform(syn.from_moving_to_fixed, tmp_path / "x.h5")
    by_list = nib.load(syn.warped_file).get_fdata()
    by_h5 = nib.load(
        backend.apply_transforms(moving, icbm, [h5], tmp_path / "h5.nii.gz")
    ).get_fdata()
    assert np.abs(by_h5 - by_list).max() <= 1e-4 * np.abs(by_list).max()
    again = backend.write_composite_transform(syn.from_moving_to_fixed, tmp_path / "again.h5")
    assert Path(h5).read_bytes() == Path(again).read_bytes()  # no timestamps inside
    with h5py.File(h5) as stored:  # the warp in float32 (as ANTs computed it), compressed
        kinds = {stored[f"TransformGroup/{i}/TransformType"][0].decode() for i in (1, 2)}
        assert kinds == {"AffineTransform_double_3_3", "DisplacementFieldTransform_float_3_3"}
        field = stored["TransformGroup/2/TransformParameters"]
        assert field.dtype == np.float32 and field.compression == "gzip"
    inverse = backend.write_composite_transform(syn.from_fixed_to_moving, tmp_path / "inv.h5")
    back = backend.apply_transforms(icbm, moving, [inverse], tmp_path / "inv_h5.nii.gz")
    back_list = backend.apply_transforms(
        icbm, moving, syn.from_fixed_to_moving, tmp_path / "i.nii.gz"
    )
    assert np.abs(nib.load(back).get_fdata() - nib.load(back_list).get_fdata()).max() <= 1e-2
    with pytest.raises(ValueError, match=".h5"):
        backend.write_composite_transform(syn.from_moving_to_fixed, tmp_path / "x.nii.gz")


def test_mni_syn_levels_follow_the_finest_dwi_voxel():
    """The SyN stops at the coarsest level (8, 4, 2 mm) that still resolves the DWI voxel."""
    levels = [reg.mni_syn_levels(mm) for mm in (None, 1.25, 2.0, 3.0, 3.9, 4.0, 5.0, 8.0)]
    assert levels == [3, 3, 3, 3, 3, 2, 2, 1]


@pytest.mark.slow  # ~8 s: one MNI registration (session 27)
def test_mni_registration_for_4mm_dwi_skips_the_2mm_level_and_publishes_its_coarse_warp(
    tmp_path, icbm
):
    """A 4 mm DWI: the warp comes out on the 4 mm level's grid, still lands the brain on the
    template, and its composite .h5 (the published transform) resamples as its list does."""
    full = nib.load(nilearn_data_dir() / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    tissue = sum(
        nib.load(
            nilearn_data_dir() / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
        ).get_fdata(dtype=np.float32)
        for name in ("gm", "wm")
    )
    brain = full.get_fdata(dtype=np.float32) * (tissue > 0.5)
    nib.save(nib.Nifti1Image(brain, full.affine), tmp_path / "brain.nii.gz")
    brain_file = _downsampled_icbm(tmp_path / "brain_3mm.nii.gz", source=tmp_path / "brain.nii.gz")
    small = nib.load(brain_file)
    mask_file = tmp_path / "mask_3mm.nii.gz"
    nib.save(nib.Nifti1Image((small.get_fdata() > 0).astype(np.uint8), small.affine), mask_file)

    result = reg.register_to_mni(brain_file, mask_file, tmp_path / "mni", dwi_voxel_mm=4.0)
    template = nib.load(reg.bundled_template(reg.MNI_RESOLUTION)[0])
    warp = nib.load(next(f for f in result.from_moving_to_fixed if f.endswith("Warp.nii.gz")))
    assert warp.shape[:3] == tuple(n // 2 for n in template.shape)  # ANTs shrinks by 2: 4 mm
    assert np.allclose(warp.header.get_zooms()[:3], 4.0)
    assert result.qc["dice_mask"] > 0.9
    h5 = backend.write_composite_transform(result.from_moving_to_fixed, tmp_path / "x.h5")
    by_list = nib.load(result.warped_file).get_fdata()
    by_h5 = nib.load(
        backend.apply_transforms(brain_file, template.get_filename(), [h5], tmp_path / "h5.nii.gz")
    ).get_fdata()
    assert np.abs(by_h5 - by_list).max() <= 1e-4 * np.abs(by_list).max()


def test_rigid_registration_recovers_known_motion(tmp_path, icbm):
    """Within 0.5 mm (at the brain centre and 60 mm away) and 0.5 degree."""
    import ants

    center = _center_of_mass(icbm)
    truth = _rigid_about(center, [6, -4, 5], [4, -3, 5])
    truth_file = backend.matrix_to_affine(truth, tmp_path / "truth.mat")
    image = ants.image_read(str(icbm))
    moved = ants.apply_transforms(image, image, [truth_file], interpolator="bSpline")
    ants.image_write(moved, str(tmp_path / "moved.nii.gz"))

    result = reg.register_linear(icbm, tmp_path / "moved.nii.gz", tmp_path / "reg", seed=1)
    estimate = backend.affine_to_matrix(result.from_moving_to_fixed[0])
    # moved(x) = fixed(truth x); the estimate maps fixed points to moving points: truth^-1
    residual = truth @ estimate
    angle = np.degrees(Rotation.from_matrix(residual[:3, :3]).magnitude())
    assert angle < 0.5
    for offset in ([0, 0, 0], [60, 0, 0], [0, 60, 0], [0, 0, 60]):
        point = np.append(center + offset, 1.0)
        assert np.linalg.norm((residual @ point - point)[:3]) < 0.5
    assert result.qc["ncc"] > 0.95


def test_registration_is_deterministic(tmp_path, icbm):
    import ants

    center = _center_of_mass(icbm)
    truth = backend.matrix_to_affine(
        _rigid_about(center, [3, 2, -2], [2, 1, 0]), tmp_path / "t.mat"
    )
    image = ants.image_read(str(icbm))
    ants.image_write(ants.apply_transforms(image, image, [truth]), str(tmp_path / "m.nii.gz"))
    light = {"iterations": (50, 20), "shrink_factors": (4, 2), "smoothing_sigmas": (2, 1)}
    first = reg.register_linear(
        icbm, tmp_path / "m.nii.gz", tmp_path / "r1", seed=5, n_threads=1, **light
    )
    second = reg.register_linear(
        icbm, tmp_path / "m.nii.gz", tmp_path / "r2", seed=5, n_threads=1, **light
    )
    assert np.array_equal(
        backend.affine_to_matrix(first.from_moving_to_fixed[0]),
        backend.affine_to_matrix(second.from_moving_to_fixed[0]),
    )


def test_qc_measures_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 10, 10))
    assert reg.normalized_cross_correlation(a, 3 * a + 2) == pytest.approx(1.0)
    assert reg.normalized_cross_correlation(a, -a) == pytest.approx(-1.0)
    assert np.isnan(reg.normalized_cross_correlation(a, np.ones_like(a)))
    m1 = np.zeros((4, 4, 4), bool)
    m2 = m1.copy()
    m1[:2] = True  # 32 voxels
    m2[1:3] = True  # 32 voxels, 16 shared
    assert reg.dice(m1, m2) == pytest.approx(0.5)
    assert np.isnan(reg.dice(np.zeros(3, bool), np.zeros(3, bool)))


def test_bad_inputs_raise_input_error(tmp_path, icbm):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="broken.nii.gz"):
        reg.register_linear(icbm, broken, tmp_path / "r")
    with pytest.raises(InputError, match="not found"):
        reg.register_linear(icbm, tmp_path / "absent.nii.gz", tmp_path / "r")
    with pytest.raises(InputError, match="cannot parse"):
        reg.register_linear(icbm, icbm, tmp_path / "a,b")


def _register_moved_b0(tmp_path, t1w_file, b0, mask, truth: np.ndarray, white_surface=None):
    """Move a b0 and its mask by the point map ``truth`` and register them to the T1w
    (``mask.nii.gz`` in ``tmp_path`` is the T1w's brain mask)."""
    import ants

    truth_file = backend.matrix_to_affine(truth, tmp_path / "truth.mat")
    for name, source in (("b0", b0), ("b0_mask", mask)):
        moved = ants.apply_transforms(b0, source, [truth_file], interpolator="linear")
        ants.image_write(moved, str(tmp_path / f"{name}.nii.gz"))
    return reg.register_dwi_to_t1w(
        tmp_path / "b0.nii.gz",
        tmp_path / "b0_mask.nii.gz",
        t1w_file,
        tmp_path / "mask.nii.gz",
        tmp_path / "reg",
        white_surface=white_surface,
        n_threads=1,
    )


@pytest.mark.slow  # 4-5 s: two rigid registrations (session 22)
def test_dwi_to_t1w_registers_the_masked_b0_and_reports_mask_dice(tmp_path, icbm):
    import ants

    image = ants.image_read(str(icbm))
    mask = image.new_image_like((image.numpy() > 0.2 * image.numpy().max()).astype(np.float32))
    ants.image_write(mask, str(tmp_path / "mask.nii.gz"))
    truth = _rigid_about(_center_of_mass(icbm), [3, 0, -2], [2, -1, 0])
    result = _register_moved_b0(tmp_path, icbm, image, mask, truth)
    assert result.qc["dice_mask"] > 0.9  # 3 mm grid, the moved mask resampled twice
    assert Path(result.from_moving_to_fixed[0]).name.endswith("0GenericAffine.mat")
    assert (tmp_path / "reg" / "b0_brain.nii.gz").exists()


@pytest.mark.slow  # 5.5 s: two rigid registrations (session 22)
def test_dwi_to_t1w_keeps_the_scanner_alignment_of_a_slab_missing_the_lower_brain(tmp_path, icbm):
    """A b0 slab without the lower 60% of the brain, 1 degree and 1 mm from the T1w: its
    centre of mass sits centimetres above the T1w brain's, and a start there ended 24 mm off
    (the real Prisma pair's failure); the scanner's alignment must win."""
    import ants

    image = ants.image_read(str(icbm))
    data = image.numpy()
    brain = data > 0.2 * data.max()
    ants.image_write(image.new_image_like(brain.astype(np.float32)), str(tmp_path / "mask.nii.gz"))
    world = (np.indices(data.shape).reshape(3, -1).T * image.spacing) @ np.asarray(
        image.direction
    ).T + image.origin  # LPS mm: z is superior
    superior = world[:, 2].reshape(data.shape)
    cut = np.percentile(superior[brain], 60)
    slab = brain & (superior > cut)
    b0 = np.where(slab, 1.4 * data.max() - data, 0.0).astype(np.float32)
    truth = _rigid_about(_center_of_mass(icbm), [1, 0, 0], [1, 0, 0])
    result = _register_moved_b0(
        tmp_path, icbm, image.new_image_like(b0), image.new_image_like(slab * 1.0), truth
    )
    residual = truth @ backend.affine_to_matrix(result.from_moving_to_fixed[0])
    homogeneous = np.c_[world[brain.ravel()][::97], np.ones(len(world[brain.ravel()][::97]))]
    error = np.linalg.norm((homogeneous @ residual.T - homogeneous)[:, :3], axis=1)
    assert np.median(error) < 1.0


@pytest.mark.slow  # 4-5 s: two rigid registrations (session 22)
def test_dwi_to_t1w_recovers_a_large_offset_with_b0_contrast(tmp_path, icbm):
    """A b0-like image (CSF bright, WM dark) 20 degrees and 12 mm off: the coarse rotation
    search plus rigid MI brings it back within 1 mm and 1 degree."""
    import ants

    image = ants.image_read(str(icbm))
    data = image.numpy()
    brain = data > 0.2 * data.max()
    mask = image.new_image_like(brain.astype(np.float32))
    ants.image_write(mask, str(tmp_path / "mask.nii.gz"))
    b0 = image.new_image_like((np.where(brain, 1.4 * data.max() - data, 0.0)).astype(np.float32))
    center = _center_of_mass(icbm)
    truth = _rigid_about(center, [20, -6, 8], [12, -8, 6])
    result = _register_moved_b0(tmp_path, icbm, b0, mask, truth)
    # b0(x) = T1w-contrast(truth x); the DWI -> T1w list resamples b0 onto the T1w: truth^-1
    found = backend.affine_to_matrix(result.from_moving_to_fixed[0])
    assert np.allclose(np.linalg.svd(found[:3, :3])[1], 1.0, atol=1e-4)  # rigid: no rescaling
    residual = truth @ found
    assert np.degrees(Rotation.from_matrix(residual[:3, :3]).magnitude()) < 1.0
    for offset in ([0, 0, 0], [60, 0, 0], [0, 60, 0], [0, 0, 60]):
        point = np.append(center + offset, 1.0)
        assert np.linalg.norm((residual @ point - point)[:3]) < 1.0
    assert result.qc["dice_mask"] > 0.9


@pytest.mark.slow  # 8 s: two rigid registrations and two boundary refinements (session 41)
def test_dwi_to_t1w_refines_on_the_white_surface(tmp_path, icbm):
    """The b0-like brain 6 degrees and 5 mm off, with the T1w's gray/white boundary (from
    intensity bands of the T1w, labelled as the segmentation labels them): the final map is
    BBR's, within 0.5 mm at 60 mm from the centre, and QC reports its cost and shift."""
    import ants

    from ketamine_dti.anat.boundary_registration import GM_LABEL, WM_LABEL, white_surface

    image = ants.image_read(str(icbm))
    data = image.numpy()
    brain = data > 0.2 * data.max()
    ants.image_write(image.new_image_like(brain.astype(np.float32)), str(tmp_path / "mask.nii.gz"))
    b0 = image.new_image_like((np.where(brain, 1.4 * data.max() - data, 0.0)).astype(np.float32))
    wm_floor, gm_floor = np.percentile(data[brain], [60, 25])
    labels = np.where(data >= wm_floor, WM_LABEL, np.where(data >= gm_floor, GM_LABEL, 1)) * brain
    surface = white_surface(labels, backend.image_affine(image))
    center = _center_of_mass(icbm)
    truth = _rigid_about(center, [6, -3, 2], [5, -2, 3])
    result = _register_moved_b0(tmp_path, icbm, b0, image.new_image_like(brain * 1.0), truth,
                                white_surface=surface)  # fmt: skip
    assert Path(result.from_moving_to_fixed[0]).name == "dwi2t1w_bbr_0GenericAffine.mat"
    residual = truth @ backend.affine_to_matrix(result.from_moving_to_fixed[0])
    for offset in ([0, 0, 0], [60, 0, 0], [0, 60, 0], [0, 0, 60]):
        point = np.append(center + offset, 1.0)
        assert np.linalg.norm((residual @ point - point)[:3]) < 0.5
    assert 0.0 <= result.qc["bbr_cost"] < 0.5
    assert result.qc["bbr_shift_mm"] >= 0.0
    assert result.qc["dice_mask"] > 0.9


def test_rigid_start_finds_a_tilted_b0_on_its_own_grid(tmp_path, icbm):
    """The brain with b0-like contrast tilted 15 degrees about x and moved, on a 2 mm grid
    (the T1w's is 3 mm): the start file has that rotation, and is within a voxel of the
    4 mm search grid over the brain (measured 2.3 mm: the centres of mass of the two
    contrasts differ by that much)."""
    import ants

    image = ants.image_read(str(icbm))
    data = image.numpy()
    brain = data > 0.2 * data.max()
    t1w = image.new_image_like(np.where(brain, data, 0.0).astype(np.float32))
    ants.image_write(t1w, str(tmp_path / "t1w_brain.nii.gz"))
    b0 = image.new_image_like(np.where(brain, 1.4 * data.max() - data, 0.0).astype(np.float32))
    truth = _rigid_about(_center_of_mass(icbm), [15, 0, 0], [6, -4, 5])
    truth_file = backend.matrix_to_affine(truth, tmp_path / "truth.mat")
    grid = ants.resample_image(image, (2.0,) * 3, use_voxels=False, interp_type=0)
    moved = ants.apply_transforms(grid, b0, [truth_file], interpolator="linear")
    ants.image_write(moved, str(tmp_path / "b0_brain.nii.gz"))
    start = backend.search_rigid_start(
        tmp_path / "t1w_brain.nii.gz", tmp_path / "b0_brain.nii.gz", tmp_path / "start.mat",
        step_deg=reg.DWI_SEARCH_STEP_DEG, arc_fraction=reg.DWI_SEARCH_ARC_FRACTION, n_threads=1,
    )  # fmt: skip
    # moved(y) = b0(truth y): a T1w point x is the b0 point truth^-1 x
    residual = truth @ backend.affine_to_matrix(start)
    assert np.degrees(Rotation.from_matrix(residual[:3, :3]).magnitude()) < 1.0
    points = backend.voxel_to_world(image, np.argwhere(brain))
    error = np.linalg.norm(np.c_[points, np.ones(len(points))] @ (residual - np.eye(4)).T, axis=1)
    assert error.max() < backend.SEARCH_SPACING_MM, error.max()
