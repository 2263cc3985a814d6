"""Fieldmaps for distortion correction: found the BIDS way, checked before any processing."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ketamine_dti import bids, fieldmaps
from ketamine_dti.errors import InputError

sys.path.insert(0, str(Path(__file__).parent))
from test_bids import _write_session  # noqa: E402

DWI_READOUT_S = 0.05  # the TotalReadoutTime _write_session gives every DWI (PE j-)
from conftest import REALDATA  # noqa: E402


# ------------------------------------------------------------------------------ helpers
@pytest.fixture
def root(tmp_path) -> Path:
    """Two participants x two sessions of tiny DWI (6x6x6, PE j-) + T1w, no fieldmap."""
    rng = np.random.default_rng(0)
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
    for subject in ("01", "02"):
        for session in ("baseline", "24h"):
            _write_session(root, subject, session, rng)
    return root


def _prefix(subject: str, session: str) -> str:
    return f"sub-{subject}_ses-{session}"


def _dwi(root: Path, subject: str = "01", session: str = "baseline") -> Path:
    prefix = _prefix(subject, session)
    return root / f"sub-{subject}" / f"ses-{session}" / "dwi" / f"{prefix}_dwi.nii.gz"


def _edit_sidecar(path: Path, **changes) -> None:
    """Set keys of a NIfTI's JSON sidecar; a value of None deletes the key."""
    sidecar = Path(str(path).replace(".nii.gz", ".json"))
    metadata = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    metadata.update(changes)
    sidecar.write_text(json.dumps({k: v for k, v in metadata.items() if v is not None}))


def _fmap(root: Path, name: str, subject="01", session="baseline", shape=(6, 6, 6), **meta):
    """fmap/<prefix>_<name>.nii.gz with a sidecar (None deletes a key); default: a reverse-PE
    EPI (PE j, 50 ms) whose IntendedFor names the session's DWI by a relative path."""
    folder = root / f"sub-{subject}" / f"ses-{session}" / "fmap"
    folder.mkdir(exist_ok=True)
    path = folder / f"{_prefix(subject, session)}_{name}.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    relative = f"ses-{session}/dwi/{_prefix(subject, session)}_dwi.nii.gz"
    defaults = {"PhaseEncodingDirection": "j", "TotalReadoutTime": 0.05, "IntendedFor": [relative]}
    _edit_sidecar(path, **(defaults | meta))
    return path


def _phasediff(root: Path, name: str = "phasediff", magnitudes=("magnitude1",), **meta) -> Path:
    """A GRE phasediff (EchoTime1/2 = 4.92/7.38 ms) with its magnitude image(s)."""
    meta = {"EchoTime1": 0.00492, "EchoTime2": 0.00738} | meta
    path = _fmap(root, name, PhaseEncodingDirection=None, TotalReadoutTime=None, **meta)
    for magnitude in magnitudes:
        _fmap(root, name.replace("phasediff", magnitude))
    return path


def _plans(root: Path, subject="01", session="baseline", sdc="auto", dwi_runs="combine", **kw):
    layout = bids.get_layout(root)
    inputs = bids.collect_session(layout, subject, session, dwi_runs=dwi_runs)
    return fieldmaps.find_fieldmaps(layout, inputs, sdc, **kw)


def _add_reverse_run(root: Path) -> tuple[Path, Path]:
    """sub-01 ses-baseline becomes run-1 (PE j-) and run-2, a copy phase-encoded j."""
    stem = str(_dwi(root)).replace("_dwi.nii.gz", "")
    runs = (Path(f"{stem}_run-1_dwi.nii.gz"), Path(f"{stem}_run-2_dwi.nii.gz"))
    for extension in (".nii.gz", ".bval", ".bvec", ".json"):
        for run in (1, 2):
            shutil.copyfile(f"{stem}_dwi{extension}", f"{stem}_run-{run}_dwi{extension}")
        Path(f"{stem}_dwi{extension}").unlink()
    _edit_sidecar(runs[1], PhaseEncodingDirection="j")
    return runs


# ------------------------------------------------------------------------- discovery
def test_intended_for_relative_path_and_bids_uri_are_both_found(root):
    relative = _fmap(root, "dir-PA_epi")
    uri = f"bids::sub-01/ses-24h/dwi/{_prefix('01', '24h')}_dwi.nii.gz"
    by_uri = _fmap(root, "dir-PA_epi", session="24h", IntendedFor=uri)  # a string, not a list
    layout = bids.get_layout(root)
    participant = fieldmaps.attach_fieldmaps(layout, bids.collect_participant(layout, "01"))
    (baseline,), (followup,) = (session.fieldmaps for session in participant.sessions)
    for plan, epi in ((baseline, relative), (followup, by_uri)):
        assert plan.method == "pepolar"
        assert [Path(e.path) for e in plan.reverse_pe] == [epi]
        assert plan.phase_encoding == fieldmaps.PhaseEncoding("j-", DWI_READOUT_S)
        assert plan.epi[0].phase_encoding == fieldmaps.PhaseEncoding("j", 0.05)
        assert plan.epi[0].bval == ""  # a fmap image, not a DWI series
    assert participant.sessions[0].fieldmaps[0].phase_encoding.axis == 1


def test_b0_field_identifier_is_found(root):
    epi = _fmap(root, "dir-PA_epi", IntendedFor=None, B0FieldIdentifier="pepolar0")
    _fmap(root, "dir-LR_epi", IntendedFor=None, B0FieldIdentifier="other")  # not ours
    _edit_sidecar(_dwi(root), B0FieldSource=["pepolar0"])
    (plan,) = _plans(root)
    assert plan.method == "pepolar" and [Path(e.path) for e in plan.epi] == [epi]


def test_a_second_dwi_series_with_the_opposite_pe_is_the_reverse_pe_image(root):
    first, second = _add_reverse_run(root)
    plans = _plans(root)
    assert [Path(p.dwi) for p in plans] == [first, second]  # one plan per run
    for plan, other in zip(plans, (second, first), strict=True):
        assert plan.method == "pepolar"
        (reverse,) = plan.reverse_pe
        assert Path(reverse.path) == other
        assert reverse.bval == str(other).replace(".nii.gz", ".bval")  # its b=0 volumes
    (only,) = _plans(root, dwi_runs="first")  # not preprocessed, still the reverse-PE image
    assert Path(only.epi[0].path) == second


def test_total_readout_time_falls_back_to_effective_echo_spacing(root):
    # 9 voxels along j (the PE axis) in the fieldmap, 6 in the DWI: BIDS' N - 1
    epi = _fmap(root, "dir-PA_epi", shape=(6, 9, 6), TotalReadoutTime=None,
                EffectiveEchoSpacing=0.0006)  # fmt: skip
    _edit_sidecar(_dwi(root), TotalReadoutTime=None, EffectiveEchoSpacing=0.0005)
    (plan,) = _plans(root)
    assert plan.phase_encoding.total_readout_time == pytest.approx(0.0005 * (6 - 1))
    assert plan.epi[0].phase_encoding.total_readout_time == pytest.approx(0.0006 * (9 - 1))
    metadata = {"PhaseEncodingDirection": "i-", "EffectiveEchoSpacing": 0.0006}
    assert fieldmaps.read_phase_encoding(str(epi), metadata).total_readout_time == pytest.approx(
        0.0006 * (6 - 1)  # axis i of the (6, 9, 6) image
    )


def test_gre_fieldmaps_are_found_with_their_magnitudes(root):
    phasediff = _phasediff(root, magnitudes=("magnitude1", "magnitude2"))
    (plan,) = _plans(root)
    assert plan.method == "fieldmap" and plan.gre.kind == "phasediff"
    assert Path(plan.gre.path) == phasediff and plan.gre.echo_times == (0.00492, 0.00738)
    assert [Path(m).name.split("_")[-1] for m in plan.gre.magnitudes] == [
        "magnitude1.nii.gz", "magnitude2.nii.gz"
    ]  # fmt: skip
    assert plan.phase_encoding.direction == "j-"  # the DWI's, to turn Hz into a displacement
    (plan,) = _plans(root, session="24h")
    assert plan.method == "none"
    fieldmap = _fmap(root, "fieldmap", session="24h", PhaseEncodingDirection=None, Units="Hz")
    _fmap(root, "magnitude", session="24h")
    (plan,) = _plans(root, session="24h")
    assert plan.gre == fieldmaps.GreFieldmap(
        "fieldmap", str(fieldmap), (str(fieldmap).replace("fieldmap.nii", "magnitude.nii"),),
        units="Hz",
    )  # fmt: skip


def test_pepolar_comes_before_a_gre_fieldmap_and_sdc_chooses(root):
    _phasediff(root)
    _fmap(root, "dir-PA_epi")
    notes = []
    assert _plans(root, notes=notes)[0].method == "pepolar"
    assert any("linked to EPI and GRE fieldmaps; using the EPI" in note for note in notes)
    assert _plans(root, sdc="fieldmap")[0].method == "fieldmap"
    assert _plans(root, sdc="pepolar")[0].method == "pepolar"


def test_fieldmap_less_syn_only_when_asked(root):
    assert _plans(root)[0].method == "none"
    (plan,) = _plans(root, use_syn_sdc=True)
    assert plan.method == "syn" and plan.phase_encoding.direction == "j-"
    _fmap(root, "dir-PA_epi")
    assert _plans(root, use_syn_sdc=True)[0].method == "pepolar"  # a fallback only


# ----------------------------------------------------------------------------- refusals
def test_a_fieldmap_with_the_dwis_pe_direction_is_refused(root):
    epi = _fmap(root, "dir-AP_epi", PhaseEncodingDirection="j-")
    with pytest.raises(InputError) as raised:
        _plans(root)
    assert str(raised.value).startswith(f"{epi}: PhaseEncodingDirection j- is the same ")
    assert "same phase-encoding direction as the DWI (sub-01_ses-baseline_dwi.nii.gz)" in str(
        raised.value
    )
    assert "cannot estimate a field" in str(raised.value) and "needs j;" in str(raised.value)
    _fmap(root, "dir-PA_epi")  # with a reverse-PE image beside it, both images are used
    assert [e.phase_encoding.direction for e in _plans(root)[0].epi] == ["j-", "j"]


def test_a_fieldmap_along_another_axis_is_refused(root):
    epi = _fmap(root, "dir-LR_epi", PhaseEncodingDirection="i")
    with pytest.raises(InputError, match=rf"{epi}: PhaseEncodingDirection i is along another"):
        _plans(root)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: _fmap(r, "dir-PA_epi", PhaseEncodingDirection=None),
         r"dir-PA_epi.nii.gz: no PhaseEncodingDirection in the JSON sidecar"),
        (lambda r: _fmap(r, "dir-PA_epi", TotalReadoutTime=None),
         r"dir-PA_epi.nii.gz: neither TotalReadoutTime nor EffectiveEchoSpacing"),
        (lambda r: _fmap(r, "dir-PA_epi", TotalReadoutTime=47.6),
         r"dir-PA_epi.nii.gz: TotalReadoutTime 47.6 .* likely milliseconds"),
        (lambda r: _fmap(r, "dir-PA_epi", PhaseEncodingDirection="y"),
         r"dir-PA_epi.nii.gz: PhaseEncodingDirection 'y' .* is not one of"),
        (lambda r: [_fmap(r, "dir-PA_epi"),
                    _edit_sidecar(_dwi(r), PhaseEncodingDirection=None)],
         r"ses-baseline_dwi.nii.gz: no PhaseEncodingDirection in the JSON sidecar"),
        (lambda r: [_fmap(r, "dir-PA_epi"),
                    _edit_sidecar(_dwi(r), TotalReadoutTime=None)],
         r"ses-baseline_dwi.nii.gz: neither TotalReadoutTime nor EffectiveEchoSpacing"),
        (lambda r: _phasediff(r, EchoTime2=None),
         r"_phasediff.nii.gz: no EchoTime2 in the JSON sidecar"),
        (lambda r: _phasediff(r, EchoTime2=0.00492),
         r"_phasediff.nii.gz: EchoTime1 equals EchoTime2"),
        (lambda r: _phasediff(r, magnitudes=()),
         r"_phasediff.nii.gz: no sub-01_ses-baseline_magnitude1.nii\[.gz\] beside it"),
        (lambda r: [_fmap(r, "fieldmap", PhaseEncodingDirection=None),
                    _fmap(r, "magnitude")],
         r"_fieldmap.nii.gz: Units None in the JSON sidecar is not one of Hz"),
    ],
    ids=["epi_pe", "epi_readout", "epi_readout_ms", "epi_pe_invalid", "dwi_pe", "dwi_readout",
         "echo_time", "echo_times_equal", "magnitude", "units"],
)  # fmt: skip
def test_missing_or_bad_keys_name_the_file_and_the_key(root, damage, message):
    damage(root)
    with pytest.raises(InputError, match=message):
        _plans(root)


def test_intended_for_a_missing_dwi_is_refused(root):
    typo = "ses-baseline/dwi/sub-01_ses-baseline_acq-hardi_dwi.nii.gz"
    epi = _fmap(root, "dir-PA_epi", IntendedFor=[typo])
    with pytest.raises(InputError, match=rf"{epi}: IntendedFor '{typo}' .* does not exist"):
        _plans(root)
    # a missing bold run (a dataset shared without func/) is only noted
    bold = "ses-baseline/func/sub-01_ses-baseline_task-rest_bold.nii.gz"
    relative = "ses-baseline/dwi/sub-01_ses-baseline_dwi.nii.gz"
    _fmap(root, "dir-PA_epi", IntendedFor=[bold, relative])
    notes = []
    assert _plans(root, notes=notes)[0].method == "pepolar"
    assert any(f"IntendedFor '{bold}' does not exist; ignored" in note for note in notes)


def test_b0_field_source_without_identifier_is_refused(root):
    _fmap(root, "dir-PA_epi", IntendedFor=None, B0FieldIdentifier="pepolar0")
    _edit_sidecar(_dwi(root), B0FieldSource="pepolar1")
    with pytest.raises(InputError, match=rf"{_dwi(root)}: B0FieldSource 'pepolar1' .* matches no"):
        _plans(root)


def test_contradictory_links_are_refused(root):
    _phasediff(root)
    _phasediff(root, name="acq-second_phasediff")
    with pytest.raises(InputError, match=r"_dwi.nii.gz: 2 GRE fieldmaps are linked .* ambiguous"):
        _plans(root)
    shutil.rmtree(root / "sub-01" / "ses-baseline" / "fmap")
    _fmap(root, "dir-PA_epi", IntendedFor=None, B0FieldIdentifier="b0map")
    _phasediff(root, IntendedFor=None, B0FieldIdentifier="b0map")
    _edit_sidecar(_dwi(root), B0FieldSource="b0map")
    with pytest.raises(InputError, match=r"B0FieldIdentifier 'b0map' groups EPI and GRE"):
        _plans(root)


def test_sdc_pepolar_without_a_reverse_pe_image_is_an_error(root):
    _phasediff(root)  # a GRE fieldmap does not count
    with pytest.raises(InputError, match=r"_dwi.nii.gz: --sdc pepolar but no reverse phase-enc"):
        _plans(root, sdc="pepolar")
    with pytest.raises(InputError, match=r"_dwi.nii.gz: --sdc fieldmap but no GRE fieldmap"):
        _plans(root, session="24h", sdc="fieldmap")


def test_sdc_none_ignores_broken_fieldmaps(root):
    _fmap(root, "dir-AP_epi", PhaseEncodingDirection="j-", TotalReadoutTime=None)
    _phasediff(root, EchoTime1=None)
    _edit_sidecar(_dwi(root), B0FieldSource="nothing", PhaseEncodingDirection=None)
    (plan,) = _plans(root, sdc="none")
    assert plan == fieldmaps.FieldmapInputs(str(_dwi(root)), "none")
    with pytest.raises(InputError):
        _plans(root)


def test_only_the_kinds_sdc_uses_are_checked(root):
    _fmap(root, "dir-AP_epi", PhaseEncodingDirection="j-")  # broken, but not a GRE
    _phasediff(root)
    (plan,) = _plans(root, sdc="fieldmap")
    assert plan.method == "fieldmap"


def test_other_participants_are_unaffected_and_the_plan_is_logged(root, tmp_path, caplog):
    from ketamine_dti.config import Config
    from ketamine_dti.preflight import run_preflight

    _fmap(root, "dir-AP_epi", PhaseEncodingDirection="j-")  # sub-01: refused
    _fmap(root, "dir-PA_epi", subject="02")  # sub-02: pepolar at baseline
    config = Config(bids_dir=root, output_dir=tmp_path / "out", analysis_level="participant")
    with caplog.at_level(logging.INFO):
        result = run_preflight(config, ["01", "02"])
    assert list(result.errors) == ["01"] and "same phase-encoding direction" in result.errors["01"]
    sessions = result.ready["02"].sessions
    assert [s.fieldmaps[0].method for s in sessions] == ["pepolar", "none"]
    assert "sub-02 ses-baseline: distortion correction (--sdc auto): sub-02_ses-baseline_dwi" \
        in caplog.text  # fmt: skip
    assert "sub-02 ses-24h: distortion correction (--sdc auto): sub-02_ses-24h_dwi.nii.gz: none " \
        "(no fieldmap found)" in caplog.text  # fmt: skip
    assert "pepolar with sub-02_ses-baseline_dir-PA_epi.nii.gz (PE j, readout 50.0 ms); " \
        "applied" in caplog.text  # fmt: skip


# --------------------------------------------------------------------------- options
def test_command_line_options():
    from bids_app.parser import UsageError, build_parser, to_config

    def config(*options):
        return to_config(build_parser().parse_args(["in", "out", "participant", *options]))

    default = config()
    assert (default.sdc, default.use_syn_sdc) == ("auto", False)
    assert config("--sdc", "pepolar").sdc == "pepolar"
    assert config("--use-syn-sdc").use_syn_sdc
    with pytest.raises(UsageError, match="--use-syn-sdc is the fallback of --sdc auto"):
        config("--sdc", "none", "--use-syn-sdc")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["in", "out", "participant", "--sdc", "topup"])


@pytest.mark.skipif(not REALDATA.exists(), reason="the shared real scan is not here")
def test_the_real_scan_arrangement_gives_each_series_the_others_b0(tmp_path):
    from conftest import arrange_real_scan

    out = arrange_real_scan(tmp_path / "real")
    layout = bids.get_layout(out)
    participant = fieldmaps.attach_fieldmaps(layout, bids.collect_participant(layout, "M31"))
    for session, (dwi_pe, epi_pe, label) in zip(
        participant.sessions, (("j", "j-", "AP"), ("j-", "j", "PA")), strict=True
    ):
        (plan,) = session.fieldmaps
        assert plan.method == "pepolar" and plan.phase_encoding.direction == dwi_pe
        (epi,) = plan.reverse_pe
        assert Path(epi.path).name == f"sub-M31_ses-{session.session}_dir-{label}_epi.nii.gz"
        assert epi.phase_encoding == fieldmaps.PhaseEncoding(epi_pe, 0.0475693)
        assert nib.load(epi.path).ndim == 3
