"""Susceptibility distortion correction applied: the one interpolation undoes motion and
distortion together, a reverse-PE image on another grid and head position still gives the
field, the workflow wires it only when a reverse-PE image exists, and `--sdc auto` on a
dataset without fieldmaps builds exactly the `--sdc none` workflow."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from susceptibility_phantom import GaussianField, distort, head, noisy

from ketamine_dti.dwi import pepolar, resampling, series_registration, susceptibility

SHAPE = (48, 56, 40)
VOXEL_MM = 3.0
READOUT_S = 0.04


def _affine():
    affine = np.diag([-VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = [70.0, -80.0, -55.0]
    return affine


class _MovedField:
    """The phantom's field carried by a head translated by ``offset`` voxels (the forward
    model's field follows the head)."""

    def __init__(self, field: GaussianField, offset):
        self.field, self.offset = field, np.asarray(offset, float).reshape(3, *([1] * 3))

    def __call__(self, points):
        return self.field(points - self.offset.reshape(3, *([1] * (points.ndim - 1))))

    def derivative(self, points, axis):
        return self.field.derivative(points - self.offset.reshape(3, *([1] * (points.ndim - 1))),
                                     axis)  # fmt: skip


def _moved(image, offset):
    return ndimage.shift(image, offset, order=3, mode="nearest")


def _world_translation(offset_voxels):
    """RAS+ map of reference points to raw points of a head translated by ``offset_voxels``."""
    matrix = np.eye(4)
    matrix[:3, 3] = _affine()[:3, :3] @ np.asarray(offset_voxels, float)
    return matrix


def test_a_constant_shift_moves_samples_by_whole_voxels():
    volume = np.random.default_rng(0).normal(size=(6, 9, 5)).astype(np.float32)
    shift = np.full(volume.shape, 2.0, np.float32)
    out = series_registration.resample(volume, np.eye(4), _affine(), shift=shift, axis=1)
    np.testing.assert_allclose(out[:, :-2], volume[:, 2:], atol=1e-6)
    np.testing.assert_allclose(out[:, -2:], 0.0)  # read beyond the grid: zero
    with pytest.raises(ValueError, match="grid"):
        series_registration.resample(volume, np.eye(4), _affine(), shift=shift[:3], axis=1)


def test_voxels_read_outside_the_field_of_view_are_reported():
    """A 2-voxel displacement along j reads beyond the grid for the last two rows; a 1-voxel
    translation along i for the last column, in the volume that moved."""
    shape = (5, 8, 4)
    shift = resampling.Displacement(np.full(shape, 2.0), axis=1, jacobian=np.ones(shape))
    still = np.eye(4)[None]
    outside = resampling.outside_field_of_view(still, _affine(), shape, shift)
    expected = np.zeros(shape, bool)
    expected[:, 6:] = True
    np.testing.assert_array_equal(outside, expected)
    assert not resampling.outside_field_of_view(still, _affine(), shape).any()
    moved = np.stack([np.eye(4), _world_translation((1.0, 0.0, 0.0))])
    outside = resampling.outside_field_of_view(moved, _affine(), shape)
    assert outside[-1].all() and not outside[:-1].any()


def test_one_interpolation_undoes_motion_and_distortion_together():
    """A raw volume of a head moved by 1.5 voxels and distorted along j (the independent
    forward model, the field moving with the head) is restored by one resampling with the
    motion map, the displacement and the Jacobian, down to the error of interpolating an
    undistorted moved volume; motion alone or distortion alone leaves several times more."""
    image, inside = head(SHAPE, VOXEL_MM)
    interior = ndimage.binary_erosion(inside, iterations=3)
    field = GaussianField(SHAPE, VOXEL_MM)
    offset = (1.5, 0.0, -1.0)
    raw = distort(_moved(image, offset), _MovedField(field, offset), READOUT_S, 1, -1)
    truth_hz = field.on_grid()
    full = resampling.Displacement(
        shift=susceptibility.displacement_voxels(truth_hz, READOUT_S, "j-"),
        axis=1,
        jacobian=susceptibility.jacobian(truth_hz, READOUT_S, "j-"),
    )
    motion = _world_translation(offset)[None]

    def error(volume, affines, displacement):
        out = resampling.resample_series(volume[..., None], affines, _affine(), displacement)
        return float(np.sqrt(np.mean((out[..., 0] - image)[interior] ** 2)))

    both = error(raw, motion, full)  # 0.040
    floor = error(_moved(image, offset), motion, None)  # trilinear interpolation alone: 0.039
    assert both < 1.15 * floor
    assert both < 0.35 * error(raw, motion, None)  # 0.138
    assert both < 0.2 * error(raw, np.eye(4)[None], full)  # 0.297


def test_the_one_interpolation_is_scipys_cubic_b_spline_and_blurs_less_than_trilinear():
    """Motion map plus displacement through the cubic kernel equals scipy's
    map_coordinates(order=3, mode="mirror") inside the grid, 0 outside; order=1 is the
    trilinear kernel. Moving a head half a voxel and back blurs it less with the spline."""
    rng = np.random.default_rng(3)
    volume = ndimage.gaussian_filter(rng.normal(size=(20, 24, 16)), 1.2).astype(np.float32)
    world_map = _world_translation((0.4, -1.3, 0.7))
    world_map[:3, :3] = _affine()[:3, :3] @ np.array(
        [[0.999, -0.03, 0.01], [0.03, 0.999, 0.0], [-0.01, 0.0, 1.0]]
    ) @ np.linalg.inv(_affine()[:3, :3])  # fmt: skip
    shift = rng.uniform(-0.8, 0.8, volume.shape).astype(np.float32)
    cubic = series_registration.resample(volume, world_map, _affine(), shift, axis=1, order=3)
    voxel_map = np.linalg.inv(_affine()) @ world_map @ _affine()
    points = voxel_map[:3, :3] @ np.indices(volume.shape).reshape(3, -1) + voxel_map[:3, 3:]
    points[1] += shift.ravel()
    expected = ndimage.map_coordinates(volume.astype(float), points, order=3, mode="mirror")
    inside = np.all((points >= 0) & (points <= np.array(volume.shape)[:, None] - 1), axis=0)
    assert 0.5 < inside.mean() < 1
    np.testing.assert_allclose(cubic.ravel()[inside], expected[inside], atol=1e-5)
    assert not cubic.ravel()[~inside].any()
    linear = resampling.resample_series(volume[..., None], world_map[None], _affine(), order=1)
    trilinear = series_registration.resample(volume, world_map, _affine())
    trilinear *= np.float32(resampling.affine_jacobian(world_map))
    np.testing.assert_array_equal(linear[..., 0], np.clip(trilinear, 0, None))
    image, inside = head(SHAPE, VOXEL_MM)
    interior = ndimage.binary_erosion(inside, iterations=3)
    half = _world_translation((0.5, 0.5, 0.5))
    back = np.linalg.inv(half)

    def there_and_back(order):
        moved = resampling.resample_series(image[..., None], half[None], _affine(), order=order)
        out = resampling.resample_series(moved, back[None], _affine(), order=order)[..., 0]
        return float(np.sqrt(np.mean((out - image)[interior] ** 2)))

    assert there_and_back(3) < 0.6 * there_and_back(1)
    with pytest.raises(ValueError, match="order"):
        resampling.resample_series(image[..., None], half[None], _affine(), order=2)


def test_the_eddy_jacobian_preserves_total_signal_under_a_stretch():
    """An eddy-current field that stretches a volume 6% along phase encoding spreads the same
    signal thinner; reading it back through the stretch map and multiplying by the map's
    determinant restores the total signal (without it, 6% would be lost)."""
    image, _ = head(SHAPE, VOXEL_MM)
    stretch = 1.06
    voxel_map = np.eye(4)
    voxel_map[1, 1] = stretch  # reference -> raw: points move away from the centre along j
    voxel_map[1, 3] = (1.0 - stretch) * (SHAPE[1] - 1) / 2.0
    world_map = _affine() @ voxel_map @ np.linalg.inv(_affine())
    assert resampling.affine_jacobian(world_map) == pytest.approx(stretch)
    # acquisition: the raw volume at M p holds the signal of p, diluted by the stretch
    raw = series_registration.resample(image, np.linalg.inv(world_map), _affine()) / stretch
    assert raw.sum() == pytest.approx(image.sum(), rel=0.005)
    corrected = resampling.resample_series(raw[..., None], world_map[None], _affine())[..., 0]
    assert corrected.sum() == pytest.approx(image.sum(), rel=0.005)
    assert corrected.sum() / stretch < 0.95 * image.sum()  # what no Jacobian would give


def test_reverse_image_on_another_grid_and_head_position_gives_the_field():
    """The fmap EPI image is stored on a grid shifted by 3 voxels with the head moved by 1.2
    voxels along i: it is resampled, aligned, and the field is recovered within 5% of its 99th
    percentile (median), with the movement found."""
    image, inside = head(SHAPE, VOXEL_MM, seed=3)
    field = GaussianField(SHAPE, VOXEL_MM, seed=5)
    up = noisy(distort(image, field, READOUT_S, 1, 1), 40.0, 1.0, 1)
    offset = (1.2, 0.0, 0.0)
    down = distort(_moved(image, offset), _MovedField(field, offset), READOUT_S, 1, -1)
    down = noisy(down, 40.0, 0.7, 2)
    down_affine = _affine().copy()
    down_affine[:3, 3] += _affine()[:3, :3] @ np.array([0.0, 0.0, 3.0])  # starts 3 slices up
    down = down[:, :, 3:]  # the fmap's field of view
    result = pepolar.estimate_pepolar(
        up, _affine(), "j", READOUT_S, [(down, down_affine)], "j-", READOUT_S
    )
    truth = field.on_grid()
    p99 = np.percentile(np.abs(truth[inside]), 99)
    assert np.median(np.abs(result.field_hz - truth)[inside]) <= 0.05 * p99
    found = result.to_reverse[0][:3, 3]
    np.testing.assert_allclose(found, _world_translation(offset)[:3, 3], atol=0.5 * VOXEL_MM)
    assert result.estimate.data_cost_after < 0.3 * result.estimate.data_cost_before


def test_the_field_comes_from_the_series_first_b0(tmp_path):
    """Given the DWI series and its b-values, the interface estimates from the first b0 (the
    one that defines the reference frame): a second b0 of a head moved by 2 voxels along PE and
    a diffusion-weighted volume in between change nothing."""
    import nibabel as nib

    from ketamine_dti.interfaces.fieldmap import EstimateSusceptibilityField

    image, inside = head(SHAPE, VOXEL_MM, seed=3)
    field = GaussianField(SHAPE, VOXEL_MM, seed=5)
    up = noisy(distort(image, field, READOUT_S, 1, 1), 40.0, 1.0, 1)
    moved = distort(_moved(image, (0, 2, 0)), _MovedField(field, (0, 2, 0)), READOUT_S, 1, 1)
    series = np.stack([up, 0.3 * up, moved], axis=-1).astype(np.float32)
    down = noisy(distort(image, field, READOUT_S, 1, -1), 40.0, 0.7, 2)
    nib.save(nib.Nifti1Image(series, _affine()), tmp_path / "dwi.nii.gz")
    nib.save(nib.Nifti1Image(down.astype(np.float32), _affine()), tmp_path / "epi.nii.gz")
    (tmp_path / "dwi.bval").write_text("0 1000 0\n")
    node = EstimateSusceptibilityField(
        b0_file=str(tmp_path / "dwi.nii.gz"), bval_file=str(tmp_path / "dwi.bval"),
        pe_direction="j", readout=READOUT_S, reverse_files=[str(tmp_path / "epi.nii.gz")],
        reverse_bvals=[""], reverse_pe_direction="j-", reverse_readout=READOUT_S,
        b0_threshold=50.0,
    )  # fmt: skip
    estimated = nib.load(node.run(cwd=str(tmp_path)).outputs.field_file).get_fdata()
    direct = pepolar.estimate_pepolar(
        up, _affine(), "j", READOUT_S, [(down, _affine())], "j-", READOUT_S
    ).field_hz
    np.testing.assert_allclose(estimated, direct, atol=1e-3)
    truth = field.on_grid()
    p99 = np.percentile(np.abs(truth[inside]), 99)
    assert np.median(np.abs(estimated - truth)[inside]) <= 0.05 * p99


def test_a_reverse_image_read_out_the_same_way_is_refused():
    image, _ = head(SHAPE, VOXEL_MM)
    with pytest.raises(ValueError, match="same phase-encoding direction"):
        pepolar.estimate_pepolar(image, _affine(), "j", READOUT_S, [(image, _affine())], "j",
                                 READOUT_S)  # fmt: skip


# ------------------------------------------------------------------------------ workflows
def _plan(folder: Path, method="pepolar"):
    from ketamine_dti.fieldmaps import EpiImage, FieldmapInputs, PhaseEncoding

    dwi_pe = PhaseEncoding("j-", 0.05)
    if method == "none":
        return FieldmapInputs("dwi.nii.gz", "none")
    (folder / "fmap_epi.nii.gz").write_text("x")
    epi = EpiImage(str(folder / "fmap_epi.nii.gz"), PhaseEncoding("j", 0.05))
    return FieldmapInputs("dwi.nii.gz", method, dwi_pe, epi=(epi,))


def _names(workflow):
    return {name.split(".")[-1] for name in workflow.list_node_names()}


def test_a_pepolar_plan_feeds_the_field_into_the_one_resampling(tmp_path):
    from ketamine_dti.workflows.dwi import init_dwi_preproc_wf

    with_sdc = init_dwi_preproc_wf(fieldmap=_plan(tmp_path))
    assert {"estimate_susceptibility", "resample_dwi"} <= _names(with_sdc)
    estimate = with_sdc.get_node("estimate_susceptibility")
    resample = with_sdc.get_node("resample_dwi")
    assert (estimate.inputs.pe_direction, estimate.inputs.reverse_pe_direction) == ("j-", "j")
    assert resample.inputs.pe_direction == "j-" and resample.inputs.readout == 0.05
    edges = with_sdc._graph.get_edge_data(estimate, resample)["connect"]
    assert ("field_file", "field_file") in edges
    # the field comes from the restored series (the one motion is estimated on), first b0,
    # not from the resampled b0 reference
    graph, motion = with_sdc._graph, with_sdc.get_node("motion_correct")
    (restored,) = [n for n in graph.predecessors(motion) if n.name in ("denoise", "unring")]
    assert graph.get_edge_data(restored, estimate)["connect"] == [("out_file", "b0_file")]
    feeds = with_sdc._graph.get_edge_data(with_sdc.get_node("check_dwi"), estimate)["connect"]
    assert feeds == [("out_bval", "bval_file")]
    assert with_sdc._graph.get_edge_data(with_sdc.get_node("motion_correct"), estimate) is None
    assert "reverse phase-encoded" in " ".join(with_sdc.desc.split())
    for plan in (None, _plan(tmp_path, "none")):
        workflow = init_dwi_preproc_wf(fieldmap=plan)
        assert "estimate_susceptibility" not in _names(workflow)
        assert "was not corrected" in " ".join(workflow.desc.split())


def test_a_syn_plan_registers_the_b0_to_the_t1w_and_feeds_the_one_resampling(tmp_path):
    """SyN-SDC needs the session's T1w brain (inputnode), registers the uncorrected b0 to it
    rigidly, then estimates the field that goes into the one resampling."""
    from ketamine_dti.interfaces.fieldmap import EstimateSynField
    from ketamine_dti.workflows.dwi import SYN_T1W_FIELDS, init_dwi_preproc_wf

    workflow = init_dwi_preproc_wf(fieldmap=replace(_plan(tmp_path), method="syn", epi=()))
    estimate = workflow.get_node("estimate_susceptibility")
    assert isinstance(estimate.interface, EstimateSynField)
    assert (estimate.inputs.pe_direction, estimate.inputs.readout) == ("j-", 0.05)
    resample = workflow.get_node("resample_dwi")
    assert ("field_file", "field_file") in workflow._graph.get_edge_data(estimate, resample)[
        "connect"
    ]
    assert resample.inputs.pe_direction == "j-" and resample.inputs.readout == 0.05
    inputnode, rigid = workflow.get_node("inputnode"), workflow.get_node("syn_dwi_to_t1w")
    assert set(SYN_T1W_FIELDS) <= set(inputnode.inputs.copyable_trait_names())
    edges = workflow._graph.get_edge_data(rigid, estimate)["connect"]
    assert ("from_t1w_to_dwi", "from_t1w_to_dwi") in edges
    methods = " ".join(workflow.desc.split())
    assert "SyN-SDC" in methods and "restricted to the phase-encoding axis" in methods
    assert "was not corrected" not in methods


def test_a_gre_plan_feeds_its_field_into_the_one_resampling(tmp_path):
    from ketamine_dti.fieldmaps import GreFieldmap
    from ketamine_dti.interfaces.fieldmap import GreFieldToB0
    from ketamine_dti.workflows.dwi import init_dwi_preproc_wf

    for name in ("phasediff", "magnitude1"):
        (tmp_path / f"{name}.nii.gz").write_text("x")
    gre = GreFieldmap(
        "phasediff",
        str(tmp_path / "phasediff.nii.gz"),
        (str(tmp_path / "magnitude1.nii.gz"),),
        echo_times=(0.00492, 0.00738),
    )
    workflow = init_dwi_preproc_wf(fieldmap=replace(_plan(tmp_path), method="fieldmap", gre=gre))
    estimate = workflow.get_node("estimate_susceptibility")
    assert isinstance(estimate.interface, GreFieldToB0)
    assert estimate.inputs.echo_times == [0.00492, 0.00738]
    edges = workflow._graph.get_edge_data(estimate, workflow.get_node("resample_dwi"))["connect"]
    assert ("field_file", "field_file") in edges
    assert "GRE fieldmap (phasediff)" in " ".join(workflow.desc.split())


def _flat(workflow):
    """Every node (by its place in the workflow) with its set inputs, and every edge with
    the fields it carries."""
    graph = workflow._create_flat_graph()
    assert len({node.fullname for node in graph.nodes()}) == graph.number_of_nodes()
    nodes = {
        node.fullname: sorted((k, repr(v)) for k, v in node.inputs.get().items())
        for node in graph.nodes()
    }
    edges = sorted(
        (a.fullname, b.fullname, repr(sorted(data.get("connect", []))))
        for a, b, data in graph.edges(data=True)
    )
    return nodes, edges


def test_auto_without_fieldmaps_builds_exactly_the_none_workflow(tiny_trial, tmp_path):
    """Every node, edge and set input is the same, so the outputs are byte-identical."""
    from ketamine_dti import bids
    from ketamine_dti.config import Config
    from ketamine_dti.preflight import check_participant
    from ketamine_dti.workflows.base import init_participant_wf

    layout = bids.get_layout(tiny_trial)
    built = {}
    for sdc in ("auto", "none"):
        config = Config(bids_dir=tiny_trial, output_dir=tmp_path / "out", work_dir=tmp_path / sdc,
                        analysis_level="participant", sdc=sdc)  # fmt: skip
        participant = check_participant(config, layout, "001", [])
        assert [s.fieldmaps[0].method for s in participant.sessions] == ["none", "none"]
        workflow = init_participant_wf(participant, config)
        workflow.base_dir = str(tmp_path)
        built[sdc] = workflow
    (auto_nodes, auto_edges), (none_nodes, none_edges) = _flat(built["auto"]), _flat(built["none"])
    assert len(auto_nodes) > 50 and "estimate_susceptibility" not in str(auto_nodes)
    assert auto_nodes == none_nodes
    assert auto_edges == none_edges
