"""Susceptibility distortion planted by the simulator (issue 11, item 5): the forward field model
against the analytic sphere, the displacement with its Jacobian, a simulated session's field in
the frontal and central brain, the reverse-PE fieldmap, the BIDS files, and ``none`` unchanged."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import tree_checksum

from ketamine_dti.simulate import anatomy, head, session, susceptibility
from ketamine_dti.simulate.bids_writer import dwi_sidecar, fieldmap_sidecar, make_options
from ketamine_dti.simulate.cli import main as simulate
from ketamine_dti.simulate.presets import PHASE_ENCODING_DIRECTION, PRESETS, get_preset

#: chi_air - chi_tissue (ppm) of the sphere test; its peak field on the surface is 2/3 of it.
DELTA_CHI_PPM = 9.4
#: Keys a BIDS epi fieldmap sidecar must have for pepolar correction.
FIELDMAP_KEYS = ("PhaseEncodingDirection", "TotalReadoutTime", "IntendedFor")


def _ball(n: int, radius: float, supersample: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Volume fraction of a centred ball (radius in voxels) on an n^3 grid; voxel offsets."""
    offsets = np.indices((n, n, n)).reshape(3, -1).T - (n - 1) / 2.0
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    shifts = np.array(np.meshgrid(sub, sub, sub, indexing="ij")).reshape(3, -1).T
    fraction = np.zeros(len(offsets))
    for shift in shifts:
        fraction += np.linalg.norm(offsets + shift, axis=1) <= radius
    return (fraction / len(shifts)).reshape(n, n, n), offsets


def test_sphere_of_air_matches_the_analytic_dipole_field():
    """Inside 0, outside delta_chi / 3 (R/r)^3 (3 cos^2 - 1), within 1% of the peak field."""
    n, radius = 64, 8.0
    fraction, offsets = _ball(n, radius)
    field = susceptibility.dipole_field_ppm(DELTA_CHI_PPM * fraction, 1.0)
    expected = susceptibility.sphere_field_ppm(offsets, radius, DELTA_CHI_PPM).reshape(n, n, n)
    r = np.linalg.norm(offsets, axis=1).reshape(n, n, n)
    peak = 2.0 * DELTA_CHI_PPM / 3.0
    inside = r < radius - 2
    outside = (r > radius + 2) & (r < n / 2)
    assert np.abs(field[inside]).max() < 0.01 * peak
    assert np.abs(field - expected)[outside].max() < 0.01 * peak
    # The pattern itself: +2/3 dchi (R/r)^3 along B0 (z), -1/3 dchi (R/r)^3 across it.
    centre = n // 2  # voxel n/2 is half a voxel from the centre; r = 2R + 0.5
    along = field[centre - 1 : centre + 1, centre - 1 : centre + 1, centre + 16].mean()
    across = field[centre + 16, centre - 1 : centre + 1, centre - 1 : centre + 1].mean()
    distance = np.hypot(2 * radius + 0.5, np.sqrt(0.5))
    assert along == pytest.approx(2 / 3 * DELTA_CHI_PPM * (radius / distance) ** 3, rel=0.03)
    assert across == pytest.approx(-1 / 3 * DELTA_CHI_PPM * (radius / distance) ** 3, rel=0.03)


def test_hz_per_ppm_is_the_proton_at_3t():
    assert susceptibility.HZ_PER_PPM == pytest.approx(127.7, abs=0.1)


def test_shim_removes_its_own_fields_and_only_those():
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -30.0
    shape = (31, 31, 31)
    points = susceptibility.nib_apply(affine, np.indices(shape).reshape(3, -1).T)
    basis = susceptibility.shim_basis(points, 2)
    shimmable = (basis @ rng.normal(0, 1, basis.shape[1])).reshape(shape)
    mask = np.ones(shape, dtype=bool)
    shim = susceptibility.fit_shim(shimmable, affine, mask, 2, np.zeros(3))
    residual = shimmable + shim.field_ppm(points).reshape(shape)
    assert np.abs(residual).max() < 1e-9
    # A cubic term is not a second-order shim field: it stays (mostly).
    cubic = (points[:, 0] / 30.0) ** 3
    shim = susceptibility.fit_shim(cubic.reshape(shape), affine, mask, 2, np.zeros(3))
    assert np.std(cubic + shim.field_ppm(points)) > 0.3 * np.std(cubic)


def test_displacement_is_exact_at_zero_and_conserves_signal_with_its_jacobian():
    rng = np.random.default_rng(1)
    volume = rng.random((5, 40, 3)).astype(np.float32) + 0.5
    zero = np.zeros_like(volume)
    np.testing.assert_array_equal(susceptibility.displace_along_axis(volume, zero), volume)
    # Half a voxel everywhere: linear interpolation between neighbours.
    half = susceptibility.displace_along_axis(volume, zero + 0.5)
    np.testing.assert_allclose(half[:, 1:], 0.5 * (volume[:, 1:] + volume[:, :-1]), rtol=1e-6)
    # A uniform object stretched by a displacement gradient g darkens by 1 / (1 + g).
    flat = np.ones((1, 60, 1), dtype=np.float32)
    for gradient in (0.3, -0.4):
        shift = (gradient * (np.arange(60) - 30.0)).reshape(1, 60, 1).astype(np.float32)
        out = susceptibility.displace_along_axis(flat, shift)[0, :, 0]
        np.testing.assert_allclose(out[25:36], 1.0 / (1.0 + gradient), rtol=1e-5)
    # Signal is conserved wherever nothing leaves the grid, folding included (a displacement
    # gradient below -1 reverses the order of the signal), and the folded region piles up.
    bump = np.zeros((2, 50, 2), dtype=np.float32)
    bump[:, 15:35] = 1.0
    fold = np.clip(-1.5 * (np.arange(50) - 25.0), -4.0, 4.0).reshape(1, 50, 1)
    moved = susceptibility.displace_along_axis(bump, np.broadcast_to(fold, bump.shape))
    assert moved.sum() == pytest.approx(bump.sum(), rel=1e-6)
    assert moved.max() > 1.5


def test_the_field_follows_each_volume_and_the_shim_stays():
    """distort_series moves the head's field with the volume's rigid motion, not the shim."""
    shape = (6, 30, 4)
    volume = np.ones(shape, dtype=np.float32)
    head_hz = np.zeros(shape, dtype=np.float32)
    head_hz[:, 10] = 60.0  # a thin band of off-resonance at j = 10
    field = susceptibility.SessionField(
        head_hz=head_hz,
        shim_hz=np.full(shape, 5.0, dtype=np.float32),
        readout_time_s=0.01,
        level=susceptibility.DISTORTION_LEVELS["typical"],
    )
    moved = np.eye(4)
    moved[1, 3] = -3.0  # output voxel j shows reference voxel j - 3: the head moved +3 voxels
    series = np.stack([volume, volume], axis=-1)
    susceptibility.distort_series(series, field, [np.eye(4), moved], "j")
    still = susceptibility.displace_along_axis(volume, field.displacement_voxels("j"))
    np.testing.assert_allclose(series[..., 0], still, rtol=1e-6)
    shifted = np.roll(head_hz, 3, axis=1)
    shifted[:, :3] = 0.0
    expected = susceptibility.displace_along_axis(
        volume, field.displacement_voxels("j", shifted + field.shim_hz)
    )
    np.testing.assert_allclose(series[..., 1], expected, rtol=1e-6)


def test_ear_canals_are_air_only_when_asked_for():
    template = anatomy.load_template_anatomy()
    participant = dataclasses.replace(
        anatomy.random_participant(np.random.default_rng(5), template, rms_mm=0.0),
        scale=np.ones(3),
    )
    pose = anatomy.HeadPose(np.eye(3), np.zeros(3), template.centre_mm)
    inner, outer = np.array(head.EAR_CANAL_INNER_MM), np.array(head.EAR_CANAL_OUTER_MM)
    middle = inner + 0.4 * (outer - inner)  # inside the head, along the canal's axis
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = middle - template.centre_mm
    shape = head.random_head_shape(np.random.default_rng(1))
    labels = {}
    for canals in (False, True):
        _, label, _ = head.head_properties(
            template,
            participant,
            pose,
            dataclasses.replace(shape, ear_canals=canals),
            affine,
            (1, 1, 1),
            head.t1w_table(),
        )
        labels[canals] = int(label[0, 0, 0])
    assert labels[True] == head.TISSUE_INDEX["air"]
    assert labels[False] != head.TISSUE_INDEX["air"]


def _tiny_dwi(seed: int, shape: head.HeadShape, distortion: str, snr: float | None = None):
    """One tiny session of a participant seeded ``seed``; the DWI, participant and pose."""
    template = anatomy.load_template_anatomy()
    rng = np.random.default_rng([seed, 1])
    participant = anatomy.random_participant(rng, template)
    pose = anatomy.random_head_pose(rng, template.centre_mm)
    preset = get_preset("tiny")
    label_md = np.array([0.8e-3])
    dwi = session.simulate_dwi(
        template, participant, pose, preset, rng, label_md, None, snr, head_shape=shape,
        distortion=distortion, fieldmap_rng=np.random.default_rng([seed, 2]),
    )  # fmt: skip
    return dwi, participant, pose


@pytest.fixture(scope="module")
def tiny_sessions():
    """One noiseless tiny session with and without ``typical`` distortion, and its regions."""
    template = anatomy.load_template_anatomy()
    shape = dataclasses.replace(
        head.random_head_shape(np.random.default_rng([8, 1, 1])), ear_canals=True
    )
    dwi, participant, pose = _tiny_dwi(8, shape, "typical")
    out = {"none": _tiny_dwi(8, shape, "none")[0], "typical": dwi}
    grid_shape = get_preset("tiny").dwi_shape
    index = anatomy.grid_template_index(template, participant, pose, dwi.affine, grid_shape)
    mm = index @ template.affine[:3, :3].T + template.affine[:3, 3]
    x, y, z = np.moveaxis(mm, -1, 0)
    brain = dwi.brain_mask
    out["regions"] = {
        "ventral_frontal": brain & (y > 35) & (z < -5),
        "inferior_temporal": brain & (np.abs(x) > 30) & (z < -20),
        "centre": brain & (np.abs(x) < 20) & (np.abs(y + 20) < 20) & (np.abs(z - 10) < 15),
    }
    return out


def test_typical_field_is_strong_at_the_sinus_and_temporal_bone_and_zero_centrally(
    tiny_sessions,
):
    dwi = tiny_sessions["typical"]
    regions = tiny_sessions["regions"]
    voxel_mm = get_preset("tiny").dwi_voxel_mm
    field = dwi.field.field_hz
    displacement_mm = np.abs(dwi.field.displacement_voxels(PHASE_ENCODING_DIRECTION)) * voxel_mm
    figures = {
        name: (np.abs(field[mask]).max(), np.percentile(displacement_mm[mask], 95))
        for name, mask in regions.items()
    }
    # 3 T: tens to ~200 Hz beside the sinus and the temporal bone, millimetres of displacement.
    assert 40 < figures["ventral_frontal"][0] < 300, figures
    assert 60 < figures["inferior_temporal"][0] < 400, figures
    assert 1.0 < figures["ventral_frontal"][1] < 10.0, figures
    assert 1.0 < figures["inferior_temporal"][1] < 15.0, figures
    # The centre of the brain, far from air, is shimmed to a few Hz: < 0.5 mm.
    assert figures["centre"][1] < 0.5, figures
    assert np.abs(field[regions["centre"]]).max() < 15.0, figures


def test_distorted_b0_and_reverse_fieldmap_are_the_truth_displacement_of_the_clean_b0(
    tiny_sessions,
):
    none, typical = tiny_sessions["none"], tiny_sessions["typical"]
    reference = none.clean[..., 0]  # noiseless: no motion, so volume 0 is the reference
    forward = typical.field.displacement_voxels(PHASE_ENCODING_DIRECTION)
    expected = susceptibility.displace_along_axis(reference, forward)
    np.testing.assert_allclose(typical.clean[..., 0], expected, rtol=1e-5, atol=1e-3)
    assert typical.reverse_pe.shape == (*reference.shape, susceptibility.FIELDMAP_VOLUMES)
    reverse = susceptibility.displace_along_axis(reference, -forward)
    np.testing.assert_allclose(typical.reverse_pe[..., 0], reverse, rtol=1e-5, atol=1e-3)
    # Opposite displacement: per PE line, the signal's first moment along j moves by
    # sum(signal x displacement) in the DWI and by minus that in the reverse-PE b0.
    # Lines whose signal stays inside the field of view (the head is longer than it along j).
    j = np.arange(reference.shape[1]).reshape(1, -1, 1)
    line_signal = reference.sum(axis=1)
    kept = line_signal > 0
    for image in (typical.clean[..., 0], typical.reverse_pe[..., 0]):
        kept &= np.abs(image.sum(axis=1) - line_signal) < 1e-4 * line_signal
    moment_dwi = (j * (typical.clean[..., 0] - reference)).sum(axis=1)
    moment_fmap = (j * (typical.reverse_pe[..., 0] - reference)).sum(axis=1)
    moved = kept & (np.abs(moment_dwi) > 0.05 * np.abs(moment_dwi[kept]).max())
    assert moved.sum() > 50
    assert np.corrcoef(moment_dwi[moved], moment_fmap[moved])[0, 1] < -0.95
    assert not np.allclose(typical.clean[..., 0], typical.reverse_pe[..., 0], atol=1.0)
    # The brain moves but keeps its signal (mass-conserving, nothing leaves the grid there).
    assert typical.clean[..., 0].sum() == pytest.approx(reference.sum(), rel=0.01)


def test_zero_field_distortion_path_changes_nothing_else(monkeypatch):
    """A typical run whose field is 0 gives none's noisy DWI bit for bit: same random streams."""
    shape = head.random_head_shape(np.random.default_rng([3, 1, 1]))

    def zero_field(grid, head_shape, grid_shape, preset, level):
        zeros = np.zeros(grid_shape, dtype=np.float32)
        return susceptibility.SessionField(zeros, zeros.copy(), 0.02, level)

    monkeypatch.setattr(susceptibility, "session_field", zero_field)
    data = {name: _tiny_dwi(3, shape, name, snr=40.0)[0] for name in ("none", "typical")}
    assert data["none"].field is None and data["typical"].field is not None
    np.testing.assert_array_equal(data["typical"].data, data["none"].data)
    assert data["typical"].sigma == data["none"].sigma


def test_distortion_option_defaults_per_preset_and_needs_the_whole_head(tmp_path):
    defaults = {name: make_options(tmp_path, preset=name).distortion for name in PRESETS}
    assert defaults == {"standard": "typical", "tiny": "none", "slab": "unaccelerated"}
    assert make_options(tmp_path, preset="standard", head="brain").distortion == "none"
    assert make_options(tmp_path, distortion="strong").distortion == "strong"
    with pytest.raises(ValueError, match="--head full"):
        make_options(tmp_path, distortion="typical", head="brain")
    with pytest.raises(ValueError, match="unknown"):
        susceptibility.get_level("mild")
    assert simulate([str(tmp_path / "bids"), "--distortion", "mild"]) == 64


def test_sidecars_name_the_readout_and_opposite_phase_encoding():
    preset = get_preset("standard")
    typical = susceptibility.DISTORTION_LEVELS["typical"]
    strong = susceptibility.DISTORTION_LEVELS["strong"]
    assert dwi_sidecar(preset, typical) == dwi_sidecar(preset)  # typical: the preset's readout
    dwi, fmap = dwi_sidecar(preset, strong), fieldmap_sidecar(preset, strong, "bids::x")
    assert set(FIELDMAP_KEYS) <= set(fmap)
    assert {dwi["PhaseEncodingDirection"], fmap["PhaseEncodingDirection"]} == {"j", "j-"}
    assert fmap["TotalReadoutTime"] == dwi["TotalReadoutTime"]
    assert dwi["TotalReadoutTime"] == pytest.approx(2 * dwi_sidecar(preset)["TotalReadoutTime"])
    # BIDS: TotalReadoutTime = EffectiveEchoSpacing x (phase-encode lines - 1).
    lines = preset.dwi_shape[1]
    assert dwi["TotalReadoutTime"] == pytest.approx(dwi["EffectiveEchoSpacing"] * (lines - 1))


def test_slab_protocol_reads_out_as_the_real_prisma_pair():
    """The slab preset's default level gives the real pair's sidecar timing (no in-plane
    acceleration, 0.67 ms echo spacing, 0.0476 s over 72 lines) with a second-order shim."""
    preset = get_preset("slab")
    level = susceptibility.get_level(preset.default_distortion)
    assert level.shim_order == 2 and level.acceleration == 1
    dwi = dwi_sidecar(preset, level)
    assert dwi["ParallelReductionFactorInPlane"] == 1
    assert dwi["EffectiveEchoSpacing"] == pytest.approx(0.00067, rel=0.02)
    assert dwi["TotalReadoutTime"] == pytest.approx(0.0476, rel=0.02)


@pytest.fixture(scope="module")
def distorted_trial(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distorted") / "bids"
    code = simulate([str(out), "--n-participants", "3", "--seed", "4", "--distortion", "typical"])
    assert code == 0
    return out


@pytest.mark.slow
def test_distorted_trial_has_valid_fieldmaps_and_its_true_field(distorted_trial):
    from ketamine_dti.validator import find_validator, validate

    if find_validator() is None:
        pytest.fail("bids-validator-deno is not installed; pip install bids-validator-deno")
    result = validate(distorted_trial)
    assert result.ok, result.summary("error")
    truth = distorted_trial / "sourcedata" / "ground_truth"
    fieldmaps = sorted(distorted_trial.glob("sub-*/ses-*/fmap/*_dir-PA_epi.nii.gz"))
    assert len(fieldmaps) == 6
    for fmap in fieldmaps:
        sidecar = json.loads(Path(str(fmap).replace(".nii.gz", ".json")).read_text())
        (target,) = sidecar["IntendedFor"]
        dwi_path = distorted_trial / target.removeprefix("bids::")
        dwi_sidecar_ = json.loads(Path(str(dwi_path).replace(".nii.gz", ".json")).read_text())
        assert sidecar["PhaseEncodingDirection"] == "j"
        assert dwi_sidecar_["PhaseEncodingDirection"] == "j-"
        assert sidecar["TotalReadoutTime"] == dwi_sidecar_["TotalReadoutTime"]
        image, dwi = nib.load(fmap), nib.load(dwi_path)
        assert image.shape == (*dwi.shape[:3], susceptibility.FIELDMAP_VOLUMES)
        np.testing.assert_allclose(image.affine, dwi.affine)
        participant, ses = fmap.parts[-4], fmap.parts[-3]
        stem = truth / participant / ses / f"{participant}_{ses}_space-dwi_desc-truth"
        field = nib.load(f"{stem}_fieldmap.nii.gz")
        displacement = nib.load(f"{stem}_displacement.nii.gz")
        assert field.shape == displacement.shape == dwi.shape[:3]
        np.testing.assert_allclose(field.affine, dwi.affine)
        np.testing.assert_allclose(
            np.asarray(displacement.dataobj),
            -np.asarray(field.dataobj) * sidecar["TotalReadoutTime"],
            rtol=1e-5,
            atol=1e-6,
        )
        assert json.loads(Path(f"{stem}_fieldmap.json").read_text())["Units"] == "Hz"
    planted = json.loads((truth / "planted_effects.json").read_text())
    assert planted["distortion"]["level"] == "typical"
    assert set(planted["distortion"]["field_summary"]) == {"sub-001", "sub-002", "sub-003"}
    assert "fmap" in (distorted_trial / "README").read_text()
    assert "desc-truth_fieldmap" in (truth / "README").read_text()


@pytest.mark.slow
def test_none_never_enters_the_distortion_code_and_equals_the_default(tmp_path, monkeypatch):
    """``--distortion none`` writes what a run without the option writes, and no fieldmap."""

    def refuse(*args, **kwargs):
        raise AssertionError("the distortion code ran with --distortion none")

    args = ["--n-participants", "3", "--seed", "6"]
    assert simulate([str(tmp_path / "default"), *args]) == 0
    for name in ("session_field", "distort_series", "displace_along_axis", "field_summary"):
        monkeypatch.setattr(susceptibility, name, refuse)
    assert simulate([str(tmp_path / "none"), *args, "--distortion", "none"]) == 0
    assert tree_checksum(tmp_path / "none") == tree_checksum(tmp_path / "default")
    assert not list((tmp_path / "none").rglob("*fmap*"))
    assert not list((tmp_path / "none").rglob("*desc-truth_fieldmap*"))
    planted = tmp_path / "none" / "sourcedata" / "ground_truth" / "planted_effects.json"
    assert "distortion" not in json.loads(planted.read_text())
