"""GRE fieldmaps -> the field (Hz) on the DWI b0 grid (``dwi.gre_fieldmap``), against an
analytic field: the phasediff and magnitude are made here with scipy from
``susceptibility_phantom`` (the truth is the field at any point), the b0 by its ``distort``."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation
from susceptibility_phantom import GaussianField, distort, head

from ketamine_dti.dwi import gre_fieldmap, susceptibility

SHAPE = (52, 64, 48)  # the b0 grid
VOXEL_MM = 3.0
#: s; the echo spacing of the phasediff: the frontal bump (120 Hz) accrues 2 pi x 1.2 rad and
#: the ear lobes (-60 Hz) 2 pi x 0.6 rad, so both wrap (|f| > 1 / (2 dTE) = 50 Hz).
ECHO_TIMES = (0.005, 0.015)
PHASE_NOISE_RAD = 0.05
PE_DIRECTION, READOUT_S = "j-", 0.05
#: the GRE grid: other voxel size, other field of view, x flipped (LAS), shifted.
GRE_SHAPE, GRE_VOXEL_MM = (46, 56, 42), 3.5
#: head motion between the GRE and the DWI (degrees about x, y, z; mm).
ROTATION_DEG, TRANSLATION_MM = (3.0, -2.0, 2.5), (2.0, -3.0, 1.5)
TWO_PI = 2.0 * np.pi


def _centred_affine(shape, voxel_mm, flip_x=False, shift_mm=(0.0, 0.0, 0.0)):
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    if flip_x:
        affine[0, 0] = -voxel_mm
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + shift_mm
    return affine


def _wrapped_phase(field_hz, inside, rng):
    """2 pi f dTE plus noise inside the head, uniform noise outside, wrapped to [-pi, pi)."""
    delta_te = ECHO_TIMES[1] - ECHO_TIMES[0]
    phase = TWO_PI * field_hz * delta_te + rng.normal(0.0, PHASE_NOISE_RAD, field_hz.shape)
    phase = np.where(inside, phase, rng.uniform(-np.pi, np.pi, field_hz.shape))
    return (phase + np.pi) % TWO_PI - np.pi


@pytest.fixture(scope="module")
def phantom():
    field = GaussianField(SHAPE, VOXEL_MM)
    image, inside = head(SHAPE, VOXEL_MM)
    magnitude = image + np.random.default_rng(3).normal(0.0, 0.02, SHAPE)
    return field, image, inside, magnitude


@pytest.fixture(scope="module")
def gre_scene(phantom):
    """The GRE acquired with the head moved by a rigid map (head points at DWI time -> at GRE
    time), on its own grid; the magnitude has another contrast (dark CSF)."""
    field, image, inside, _ = phantom
    rng = np.random.default_rng(4)
    b0_affine = _centred_affine(SHAPE, VOXEL_MM)
    gre_affine = _centred_affine(GRE_SHAPE, GRE_VOXEL_MM, flip_x=True, shift_mm=(1.0, -2.0, 3.0))
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", ROTATION_DEG, degrees=True).as_matrix()
    motion[:3, 3] = TRANSLATION_MM
    gre_voxels = np.indices(GRE_SHAPE).reshape(3, -1).astype(float)
    gre_points = gre_affine[:3, :3] @ gre_voxels + gre_affine[:3, 3:]
    b0_voxels = np.linalg.inv(motion @ b0_affine) @ np.vstack(
        [gre_points, np.ones(gre_points.shape[1])]
    )
    at_gre = b0_voxels[:3].reshape(3, *GRE_SHAPE)
    other_contrast = np.where(image > 1.8, 0.4, image)
    magnitude = ndimage.map_coordinates(other_contrast, at_gre, order=1, cval=0.0)
    magnitude += rng.normal(0.0, 0.02, GRE_SHAPE)
    gre_inside = ndimage.map_coordinates(inside.astype(float), at_gre, order=1) > 0.5
    gre_field = field(at_gre)
    phasediff = _wrapped_phase(gre_field, gre_inside, rng)
    b0 = distort(image, field, READOUT_S, axis=1, sign=-1)
    return {
        "b0": b0, "b0_affine": b0_affine, "gre_affine": gre_affine, "motion": motion,
        "magnitude": magnitude, "phasediff": phasediff, "gre_field": gre_field,
    }  # fmt: skip


def _p99(field_hz, inside):
    return float(np.percentile(np.abs(field_hz[inside]), 99))


def test_phasediff_is_unwrapped_inside_the_head(phantom):
    field, _, inside, magnitude = phantom
    truth = field.on_grid()
    phasediff = _wrapped_phase(truth, inside, np.random.default_rng(5))
    assert np.abs(TWO_PI * truth * (ECHO_TIMES[1] - ECHO_TIMES[0]))[inside].max() > np.pi
    recovered = gre_fieldmap.field_from_phasediff(phasediff, ECHO_TIMES, magnitude=magnitude)
    covered = gre_fieldmap.head_mask(magnitude)
    assert np.mean(covered[inside]) > 0.85  # the head mask is the head, less its edge voxel
    error = np.abs(recovered - truth)[covered & inside]
    assert np.median(error) <= 0.02 * _p99(truth, inside)
    assert np.percentile(error, 99.9) < 1.0 / (2 * (ECHO_TIMES[1] - ECHO_TIMES[0]))  # no jump


def test_siemens_integer_phase_gives_the_same_field(phantom):
    field, _, inside, magnitude = phantom
    phasediff = _wrapped_phase(field.on_grid(), inside, np.random.default_rng(6))
    stored = np.round((phasediff + np.pi) / TWO_PI * 4096).astype(np.int16) % 4096
    assert stored.min() >= 0 and stored.max() <= 4095
    in_radians = gre_fieldmap.field_from_phasediff(phasediff, ECHO_TIMES, magnitude=magnitude)
    in_integers = gre_fieldmap.field_from_phasediff(stored, ECHO_TIMES, magnitude=magnitude)
    difference = np.abs(in_integers - in_radians)[gre_fieldmap.head_mask(magnitude)]
    level_hz = 1.0 / 4096 / (ECHO_TIMES[1] - ECHO_TIMES[0])  # one integer step, in Hz
    assert np.percentile(difference, 99) <= level_hz


def test_fieldmap_units_become_hz():
    field = np.random.default_rng(0).normal(0.0, 50.0, (6, 7, 8))
    cases = {"Hz": field, "rad/s": field * TWO_PI, "T": field / 42.577478518e6}
    for units, stored in cases.items():
        np.testing.assert_allclose(
            gre_fieldmap.field_from_fieldmap(stored, units), field, rtol=1e-5, atol=1e-4
        )
    with pytest.raises(ValueError, match="Units 'ppm'"):
        gre_fieldmap.field_from_fieldmap(field, "ppm")


def test_field_goes_onto_the_b0_grid_and_corrects_it(phantom, gre_scene):
    field, image, inside, _ = phantom
    scene = gre_scene
    gre_field = gre_fieldmap.field_from_phasediff(
        scene["phasediff"], ECHO_TIMES, magnitude=scene["magnitude"]
    )
    on_grid, to_gre = gre_fieldmap.field_on_b0_grid(
        gre_field, scene["gre_affine"], scene["magnitude"], scene["b0"], scene["b0_affine"]
    )
    assert on_grid.shape == SHAPE and on_grid.dtype == np.float32
    truth = field.on_grid()
    error = np.abs(on_grid - truth)[inside]
    assert np.median(error) <= 0.10 * _p99(truth, inside)
    steepest = [
        np.sqrt(sum(g**2 for g in np.gradient(f, VOXEL_MM))).max() for f in (on_grid, truth)
    ]
    assert steepest[0] < 1.25 * steepest[1]  # continued beyond the head without an edge

    head_points = scene["b0_affine"] @ np.vstack([np.argwhere(inside).T, np.ones(inside.sum())])
    misplaced = np.linalg.norm((to_gre - scene["motion"]) @ head_points, axis=0)
    assert np.median(misplaced) < VOXEL_MM / 2

    region = ndimage.binary_dilation(inside, iterations=2)
    corrected = susceptibility.unwarp(
        scene["b0"], on_grid, scene["b0_affine"], READOUT_S, PE_DIRECTION
    )
    before = np.sqrt(np.mean((scene["b0"] - image)[region] ** 2))
    after = np.sqrt(np.mean((corrected - image)[region] ** 2))
    assert after < 0.7 * before


@pytest.mark.parametrize("kind", ["phasediff", "fieldmap"])
def test_interface_writes_the_field_on_the_b0_grid(phantom, gre_scene, kind, tmp_path):
    from ketamine_dti.interfaces.fieldmap import GreFieldToB0

    field, _, inside, _ = phantom
    scene = gre_scene
    fieldmap, details = scene["phasediff"], {"echo_times": list(ECHO_TIMES)}
    if kind == "fieldmap":
        fieldmap, details = scene["gre_field"] * TWO_PI, {"units": "rad/s"}
    paths = {}
    for name, data, affine in (
        ("b0", scene["b0"], scene["b0_affine"]),
        (kind, fieldmap, scene["gre_affine"]),
        ("magnitude", scene["magnitude"], scene["gre_affine"]),
    ):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), paths[name])
    node = GreFieldToB0(
        b0_file=paths["b0"], fieldmap_file=paths[kind], kind=kind,
        magnitude_file=paths["magnitude"], **details,
    )  # fmt: skip
    result = node.run(cwd=str(tmp_path))
    written = nib.load(result.outputs.field_file)
    assert written.shape == SHAPE and written.get_data_dtype() == np.float32
    np.testing.assert_allclose(written.affine, scene["b0_affine"])
    error = np.abs(written.get_fdata() - field.on_grid())[inside]
    assert np.median(error) <= 0.10 * _p99(field.on_grid(), inside)
    assert np.loadtxt(result.outputs.to_fieldmap_file).shape == (4, 4)


def test_bad_input_is_refused(phantom):
    _, _, inside, magnitude = phantom
    phasediff = np.zeros(SHAPE)
    with pytest.raises(ValueError, match="EchoTime1 and EchoTime2 are equal"):
        gre_fieldmap.field_from_phasediff(phasediff, (0.005, 0.005), magnitude=magnitude)
    with pytest.raises(ValueError, match="milliseconds"):
        gre_fieldmap.field_from_phasediff(phasediff, (5.19, 7.65), magnitude=magnitude)
    with pytest.raises(ValueError, match="must be on one grid"):
        gre_fieldmap.field_from_phasediff(phasediff, ECHO_TIMES, magnitude=magnitude[:-1])
    with pytest.raises(ValueError, match="magnitude image is empty"):
        gre_fieldmap.field_from_phasediff(phasediff, ECHO_TIMES, magnitude=np.zeros(SHAPE))
    affine = np.eye(4)
    with pytest.raises(ValueError, match="magnitude image is empty"):
        gre_fieldmap.field_on_b0_grid(phasediff, affine, np.zeros(SHAPE), magnitude, affine)
    with pytest.raises(ValueError, match="must be on one grid"):
        gre_fieldmap.field_on_b0_grid(phasediff[1:], affine, magnitude, magnitude, affine)
    with pytest.raises(ValueError, match="no measured"):
        gre_fieldmap.field_on_b0_grid(phasediff, affine, magnitude, magnitude, affine)
    with pytest.raises(ValueError, match="neither radians nor Siemens"):
        gre_fieldmap.field_from_phasediff(phasediff + 10000.0 * inside, ECHO_TIMES)
