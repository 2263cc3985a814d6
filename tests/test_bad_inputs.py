"""A catalogue of damaged and unusual inputs, each with the outcome the App must give.

Every case damages participant sub-001 of a small copy of one tiny simulated trial (3
participants), then runs the command line with ``--check-only`` (the checks that run before
any processing). For each case: the exit code; a message naming the file and the problem;
sub-002 and sub-003 unaffected; BIDS_DIR unchanged; no derivatives written.
``docs/bad_inputs.md`` is generated from CASES (``python tests/test_bad_inputs.py``), and a
test fails if it drifts.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tree_checksum  # noqa: E402

DOC = Path(__file__).parents[1] / "docs" / "bad_inputs.md"
SUB, SES = "sub-001", "ses-baseline"
OTHERS = ("sub-002", "sub-003")


# ------------------------------------------------------------------------------ helpers
def _stem(root: Path, session: str = SES, subject: str = SUB) -> Path:
    return root / subject / session / "dwi" / f"{subject}_{session}_dwi"


def _t1w(root: Path, session: str = SES) -> Path:
    return root / SUB / session / "anat" / f"{SUB}_{session}_T1w.nii.gz"


def _nifti(path: Path) -> Path:
    return Path(f"{path}.nii.gz")


def _load(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    image = nib.load(path)
    return np.asanyarray(image.dataobj), image


def _save(path: Path, data: np.ndarray, like: nib.Nifti1Image) -> None:
    nib.save(nib.Nifti1Image(data, like.affine), path)


def _bvals(root: Path) -> np.ndarray:
    return np.loadtxt(f"{_stem(root)}.bval")


def _bvecs(root: Path) -> np.ndarray:
    return np.loadtxt(f"{_stem(root)}.bvec")


def _write_bvals(root: Path, values) -> None:
    Path(f"{_stem(root)}.bval").write_text(" ".join(f"{v:g}" for v in values) + "\n")


def _write_bvecs(root: Path, rows) -> None:
    text = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in np.asarray(rows)) + "\n"
    Path(f"{_stem(root)}.bvec").write_text(text)


def _edit_dwi(root: Path, change: Callable[[np.ndarray], np.ndarray]) -> None:
    data, image = _load(_nifti(_stem(root)))
    _save(_nifti(_stem(root)), change(np.asarray(data, dtype=np.float32)), image)


def _edit_json(root: Path, change: Callable[[dict], dict]) -> None:
    path = Path(f"{_stem(root)}.json")
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _truncate_gzip(path: Path) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2], mtime=0))


def _add_run(root: Path, shape_change: bool = False) -> None:
    """A second DWI run (run-2) of ses-baseline; the first becomes run-1."""
    stem = _stem(root)
    for run in (1, 2):
        new = stem.with_name(f"{SUB}_{SES}_run-{run}_dwi")
        for extension in (".nii.gz", ".bval", ".bvec", ".json"):
            shutil.copyfile(f"{stem}{extension}", f"{new}{extension}")
    for extension in (".nii.gz", ".bval", ".bvec", ".json"):
        Path(f"{stem}{extension}").unlink()
    if shape_change:
        second = _nifti(stem.with_name(f"{SUB}_{SES}_run-2_dwi"))
        data, image = _load(second)
        _save(second, np.asarray(data[:-2], dtype=np.float32), image)


def _third_session(root: Path) -> None:
    shutil.copytree(root / SUB / SES, root / SUB / "ses-1week")
    for path in sorted((root / SUB / "ses-1week").rglob(f"*{SES}*")):
        path.rename(path.with_name(path.name.replace(SES, "ses-1week")))


def _rename_sessions(root: Path) -> None:
    for old, new in (("ses-baseline", "ses-pre"), ("ses-24h", "ses-post")):
        (root / SUB / old).rename(root / SUB / new)
        for path in sorted((root / SUB / new).rglob(f"*{old}*")):
            path.rename(path.with_name(path.name.replace(old, new)))
    (root / SUB / f"{SUB}_sessions.tsv").unlink(missing_ok=True)


def _collinear(root: Path) -> None:
    bvecs = _bvecs(root)
    weighted = np.linalg.norm(bvecs, axis=0) > 0
    bvecs[:, weighted] = np.array([[0.6], [0.8], [0.0]]) * np.where(
        np.arange(weighted.sum()) % 2, 1, -1
    )
    _write_bvecs(root, bvecs)


def _five_directions(root: Path) -> None:
    bvecs = _bvecs(root)
    weighted = np.flatnonzero(np.linalg.norm(bvecs, axis=0) > 0)
    for position, index in enumerate(weighted):
        bvecs[:, index] = bvecs[:, weighted[position % 5]]
    _write_bvecs(root, bvecs)


def _zero_volume(index_of: Callable[[np.ndarray], np.ndarray]):
    def damage(root: Path) -> None:
        volumes = index_of(_bvals(root))

        def change(data):
            data[..., volumes] = 0
            return data

        _edit_dwi(root, change)

    return damage


def _fmap(
    root: Path, name: str = "dir-PA_epi", subject: str = SUB, session: str = SES, **meta
) -> None:
    """fmap/<prefix>_<name> made of the DWI's first volume: by default a reverse-PE EPI (PE j,
    the DWI's readout) whose IntendedFor names the DWI; ``meta`` sets keys (None deletes)."""
    data, image = _load(_nifti(_stem(root, session, subject)))
    (root / subject / session / "fmap").mkdir(exist_ok=True)
    path = root / subject / session / "fmap" / f"{subject}_{session}_{name}"
    _save(_nifti(path), np.asarray(data[..., 0], dtype=np.float32), image)
    sidecar = {
        "PhaseEncodingDirection": "j",
        "TotalReadoutTime": 0.01598,
        "IntendedFor": [f"{session}/dwi/{subject}_{session}_dwi.nii.gz"],
    } | meta
    kept = {key: value for key, value in sidecar.items() if value is not None}
    Path(f"{path}.json").write_text(json.dumps(kept))


def _fmap_elsewhere(root: Path) -> None:
    """Every session but sub-001's ses-baseline gets a reverse-PE fieldmap."""
    for subject in (SUB, *OTHERS):
        for session in (SES, "ses-24h"):
            if (subject, session) != (SUB, SES):
                _fmap(root, subject=subject, session=session)


def _phasediff(root: Path, **meta) -> None:
    """A GRE phasediff (echo times 4.92/7.38 ms) and its magnitude1, linked to the DWI."""
    gre = {"PhaseEncodingDirection": None, "TotalReadoutTime": None}
    _fmap(root, "phasediff", **(gre | {"EchoTime1": 0.00492, "EchoTime2": 0.00738} | meta))
    _fmap(root, "magnitude1", **gre)


def _reverse_run(root: Path) -> None:
    """A second DWI run, phase-encoded j (the DWI's reverse): the first run's fieldmap."""
    _add_run(root)
    path = Path(f"{_stem(root).with_name(f'{SUB}_{SES}_run-2_dwi')}.json")
    path.write_text(json.dumps(json.loads(path.read_text()) | {"PhaseEncodingDirection": "j"}))


def _nan_voxels(data: np.ndarray) -> np.ndarray:
    data[10:12, 10:12, 10, 3] = np.nan
    data[20, 20, 20, 5] = np.inf
    return data


# ------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One damaged input: what is done, the expected exit code and message (regex)."""

    name: str
    input: str
    damage: Callable[[Path], None]
    exit_code: int
    message: str | None  # regex in stderr/log naming the file and the problem; None: silent
    args: tuple[str, ...] = ()
    failed: bool | None = None  # sub-001 listed as failing (default: exit_code == 1)


DWI = f"{SUB}_{SES}_dwi"
EPI = f"{SUB}_{SES}_dir-PA_epi"
SDC_PLAN = rf"{SUB} {SES}: distortion correction \(--sdc auto\): {DWI}.nii.gz"
CASES = [
    Case("missing_bval", "the .bval file is deleted", lambda r: Path(f"{_stem(r)}.bval").unlink(),
         1, rf"{DWI}.nii.gz: no .bval file found"),
    Case("missing_bvec", "the .bvec file is deleted", lambda r: Path(f"{_stem(r)}.bvec").unlink(),
         1, rf"{DWI}.nii.gz: no .bvec file found"),
    Case("bval_too_few", "one b-value fewer than volumes",
         lambda r: _write_bvals(r, _bvals(r)[:-1]), 1, rf"{DWI}.bval: 13 b-values for 14 DWI"),
    Case("bvec_too_few", "one b-vector fewer than volumes",
         lambda r: _write_bvecs(r, _bvecs(r)[:, :-1]), 1, rf"{DWI}.bvec: 13 b-vectors for 14"),
    Case("dwi_fewer_volumes", "the DWI lost its last volume (shapes disagree with the table)",
         lambda r: _edit_dwi(r, lambda d: d[..., :-1]), 1, rf"{DWI}.bval: 14 b-values for 13"),
    Case("bvec_nan", "a NaN in the .bvec",
         lambda r: Path(f"{_stem(r)}.bvec").write_text(
             Path(f"{_stem(r)}.bvec").read_text().replace("0.074713", "nan")),
         1, rf"{DWI}.bvec: NaN or Inf in the gradient table"),
    Case("bval_inf", "an Inf in the .bval",
         lambda r: _write_bvals(r, np.r_[_bvals(r)[:-1], np.inf]), 1, rf"{DWI}.bval: NaN or Inf"),
    Case("bval_negative", "a negative b-value",
         lambda r: _write_bvals(r, np.r_[_bvals(r)[:-1], -1000]), 1,
         rf"{DWI}.bval: negative b-values"),
    Case("bval_ms_per_um2", "b-values in ms/um^2 (1 instead of 1000)",
         lambda r: _write_bvals(r, _bvals(r) / 1000), 1, rf"{DWI}.bval: .*look like ms/um\^2"),
    Case("no_b0", "every b-value 1000", lambda r: _write_bvals(r, np.full(14, 1000)),
         1, rf"{DWI}.bval: no b0 volume"),
    Case("only_b0", "every b-value 0", lambda r: _write_bvals(r, np.zeros(14)),
         1, rf"{DWI}.bval: no diffusion-weighted volume"),
    Case("bval_text", "the .bval holds words",
         lambda r: Path(f"{_stem(r)}.bval").write_text("b0 b1000\n"), 1,
         rf"{DWI}.bval: cannot read b-values"),
    Case("bvec_two_rows", "the .bvec has 2 rows", lambda r: _write_bvecs(r, _bvecs(r)[:2]),
         1, rf"{DWI}.bvec: b-vectors have shape"),
    Case("bvec_zero_weighted", "a diffusion-weighted volume with a zero b-vector",
         lambda r: _write_bvecs(r, _bvecs(r) * (np.arange(14) != 3)), 1,
         rf"{DWI}.bvec: .*zero b-vector"),
    Case("bvec_collinear", "every direction along one axis (both signs)", _collinear,
         1, rf"{DWI}.bvec: .*6 non-collinear directions"),
    Case("five_directions", "only 5 distinct directions, repeated", _five_directions,
         1, rf"{DWI}.bvec: .*6 non-collinear directions"),
    Case("bvec_not_unit", "b-vectors of norm 0.5 (lower b encoded in the vector)",
         lambda r: _write_bvecs(r, _bvecs(r) * 0.5), 0,
         rf"{DWI}.bvec: 12 b-vectors are not unit length; b scaled"),
    Case("bval_column", "the .bval written as one column",
         lambda r: Path(f"{_stem(r)}.bval").write_text(
             "\n".join(f"{v:g}" for v in _bvals(r)) + "\n"), 0, None),
    Case("bvec_transposed", "the .bvec written as N rows of 3",
         lambda r: _write_bvecs(r, _bvecs(r).T), 0, None),
    Case("b0_at_b5", "b0 volumes written as b=5 (scanner style)",
         lambda r: _write_bvals(r, np.where(_bvals(r) == 0, 5, _bvals(r))), 0, None),
    Case("b0_at_b100", "b0 volumes written as b=100", lambda r: _write_bvals(
        r, np.where(_bvals(r) == 0, 100, _bvals(r))), 1, rf"{DWI}.bval: no b0 volume \(b <= 50"),
    Case("b0_at_b100_threshold", "b0 volumes written as b=100, --b0-threshold 150",
         lambda r: _write_bvals(r, np.where(_bvals(r) == 0, 100, _bvals(r))), 0, None,
         ("--b0-threshold", "150")),
    Case("dwi_3d", "the DWI is a single 3-D volume", lambda r: _edit_dwi(r, lambda d: d[..., 0]),
         1, rf"{DWI}.nii.gz: DWI is 3-D"),
    Case("dwi_zero_length", "the DWI file is empty (0 bytes)",
         lambda r: _nifti(_stem(r)).write_bytes(b""), 1, rf"{DWI}.nii.gz: empty file"),
    Case("dwi_gzip_truncated", "the DWI's gzip stream is cut in half",
         lambda r: _truncate_gzip(_nifti(_stem(r))), 1, rf"{DWI}.nii.gz: unreadable or truncated"),
    Case("dwi_not_nifti", "the DWI holds random bytes",
         lambda r: _nifti(_stem(r)).write_bytes(np.random.default_rng(0).bytes(4096)),
         1, rf"{DWI}.nii.gz: unreadable or truncated"),
    Case("dwi_nan_voxels", "NaN and Inf voxels in a float DWI",
         lambda r: _edit_dwi(r, _nan_voxels),
         0, rf"{DWI}.nii.gz: 5 voxels hold NaN/Inf; they are zeroed"),
    Case("dwi_zero_volume", "one diffusion-weighted volume all zero",
         _zero_volume(lambda b: [int(np.flatnonzero(b > 0)[2])]), 0,
         rf"{DWI}.nii.gz: volumes \[3\] are all zero; excluded"),
    Case("dwi_zero_b0s", "every b0 volume all zero", _zero_volume(lambda b: b == 0),
         1, rf"{DWI}.bval: no b0 volume"),
    Case("dwi_json_unreadable", "the DWI's JSON sidecar is not JSON",
         lambda r: Path(f"{_stem(r)}.json").write_text("{PhaseEncodingDirection: j-"),
         1, rf"{DWI}.json: unreadable JSON sidecar"),
    Case("dwi_json_list", "the DWI's JSON sidecar holds a list",
         lambda r: Path(f"{_stem(r)}.json").write_text("[1, 2]"), 1, rf"{DWI}.json: .*an object"),
    Case("no_phase_encoding", "PhaseEncodingDirection missing from the sidecar",
         lambda r: _edit_json(r, lambda m: {k: v for k, v in m.items()
                                            if k != "PhaseEncodingDirection"}),
         0, rf"{DWI}.nii.gz: no PhaseEncodingDirection"),
    Case("t1w_json_unreadable", "the T1w's JSON sidecar is not JSON (not needed)",
         lambda r: _t1w(r).with_name(f"{SUB}_{SES}_T1w.json").write_text("{"), 0, None),
    Case("t1w_gzip_truncated", "the T1w's gzip stream is cut in half",
         lambda r: _truncate_gzip(_t1w(r)), 1,
         rf"{SUB}_{SES}_T1w.nii.gz: unreadable or truncated"),
    Case("t1w_zero_length", "the T1w file is empty", lambda r: _t1w(r).write_bytes(b""),
         1, rf"{SUB}_{SES}_T1w.nii.gz: empty file"),
    Case("t1w_4d_singleton", "the T1w is 4-D with one volume",
         lambda r: _save(_t1w(r), _load(_t1w(r))[0][..., None], _load(_t1w(r))[1]),
         0, rf"{SUB}_{SES}_T1w.nii.gz: 4-D with a single volume; squeezed"),
    Case("t1w_4d_two", "the T1w is 4-D with two volumes",
         lambda r: _save(_t1w(r), np.stack([_load(_t1w(r))[0]] * 2, -1), _load(_t1w(r))[1]),
         1, rf"{SUB}_{SES}_T1w.nii.gz: T1w is 4-D"),
    Case("t1w_missing_one", "no T1w at ses-baseline", lambda r: _t1w(r).unlink(),
         0, rf"{SUB}/ses-baseline: no T1w; using {SUB}_ses-24h_T1w.nii.gz"),
    Case("t1w_missing_all", "no T1w at any session",
         lambda r: [_t1w(r, s).unlink() for s in (SES, "ses-24h")],
         1, rf"{SUB}: no T1w image in any analysed session"),
    Case("duplicate_runs", "two DWI runs in ses-baseline (combined)", _add_run, 0, None),
    Case("duplicate_runs_error", "two DWI runs, --dwi-runs error", _add_run, 1,
         rf"{SUB}/{SES}/dwi: 2 DWI series .*--dwi-runs", ("--dwi-runs", "error")),
    Case("duplicate_runs_first", "two DWI runs, --dwi-runs first", _add_run, 0,
         rf"{SUB}/{SES}/dwi: 2 DWI series; using {SUB}_{SES}_run-1_dwi", ("--dwi-runs", "first")),
    Case("runs_other_grid", "two DWI runs on different grids (combined)",
         lambda r: _add_run(r, shape_change=True), 1,
         rf"{SUB}_{SES}_run-2_dwi.nii.gz: grid .* differs"),
    Case("third_session", "a third session (ses-1week)", _third_session,
         0, rf"{SUB}: sessions 1week ignored"),
    Case("sessions_renamed", "sessions named ses-pre/ses-post", _rename_sessions,
         1, rf"{SUB}: found ses-post, ses-pre; .*--sessions BASELINE FOLLOWUP"),
    Case("sessions_renamed_chosen", "sessions ses-pre/ses-post, --sessions pre post",
         _rename_sessions, 0, None, ("--sessions", "pre", "post", "--participant-label", "001"),
         failed=False),
    Case("one_session", "ses-24h deleted", lambda r: shutil.rmtree(r / SUB / "ses-24h"),
         0, rf"{SUB}: only ses-baseline; flagged"),
    Case("no_session_folders", "files directly under sub-001/, no ses-*",
         lambda r: [shutil.rmtree(r / SUB / s) for s in (SES, "ses-24h")],
         1, rf"{SUB}: found no ses-\* folder"),
    Case("no_dwi_folder", "ses-baseline has no dwi/ folder",
         lambda r: shutil.rmtree(r / SUB / SES / "dwi"), 1, rf"{SUB}/{SES}/dwi: no DWI series"),
    Case("empty_subject_selected", "an empty sub-004/ selected by label",
         lambda r: (r / "sub-004").mkdir(), 18, r"participant label\(s\) 004 not found",
         ("--participant-label", "004"), failed=False),
    Case("empty_subject_ignored", "an empty sub-004/ folder, all participants",
         lambda r: (r / "sub-004").mkdir(), 0, None),
    Case("unknown_label", "a label that does not exist", lambda r: None, 18,
         r"participant label\(s\) 099 not found; available: 001, 002, 003",
         ("--participant-label", "099"), failed=False),
    Case("participants_tsv_comma", "participants.tsv written with commas",
         lambda r: (r / "participants.tsv").write_text(
             (r / "participants.tsv").read_text().replace("\t", ",")),
         0, r"participants.tsv: comma-separated, not tab-separated"),
    Case("participants_tsv_missing", "participants.tsv deleted",
         lambda r: (r / "participants.tsv").unlink(), 0, r"participants.tsv: missing"),
    Case("fmap_pepolar", "a reverse-PE EPI fieldmap (PE j; the DWI's is j-) with IntendedFor",
         _fmap, 0, rf"{SDC_PLAN} \(PE j-, readout 16.0 ms\): pepolar with {EPI}.nii.gz \(PE j"),
    Case("fmap_b0_field_identifier", "the EPI fieldmap linked by B0FieldIdentifier/Source",
         lambda r: [_fmap(r, IntendedFor=None, B0FieldIdentifier="pepolar0"),
                    _edit_json(r, lambda m: m | {"B0FieldSource": "pepolar0"})],
         0, rf"{SDC_PLAN} .*: pepolar with {EPI}.nii.gz"),
    Case("fmap_echo_spacing", "the EPI fieldmap has EffectiveEchoSpacing, no TotalReadoutTime",
         lambda r: _fmap(r, TotalReadoutTime=None, EffectiveEchoSpacing=0.00034), 0,
         rf"pepolar with {EPI}.nii.gz \(PE j, readout 16.0 ms\)"),
    Case("fmap_reverse_dwi_run", "a second DWI run phase-encoded j (its b0s: reverse PE)",
         _reverse_run, 0, rf"run-1_dwi.nii.gz .*: pepolar with {SUB}_{SES}_run-2_dwi.nii.gz"),
    Case("fmap_same_pe", "an EPI fieldmap with the DWI's PE direction (j-)",
         lambda r: _fmap(r, "dir-AP_epi", PhaseEncodingDirection="j-"), 1,
         rf"{SUB}_{SES}_dir-AP_epi.nii.gz: PhaseEncodingDirection j- is the same phase-encoding "
         r"direction as the DWI .*cannot estimate a field"),
    Case("fmap_same_pe_sdc_none", "an EPI fieldmap with the DWI's PE direction, --sdc none",
         lambda r: _fmap(r, "dir-AP_epi", PhaseEncodingDirection="j-"), 0, None,
         ("--sdc", "none")),
    Case("fmap_other_axis", "an EPI fieldmap phase-encoded along i",
         lambda r: _fmap(r, "dir-LR_epi", PhaseEncodingDirection="i"), 1,
         rf"{SUB}_{SES}_dir-LR_epi.nii.gz: PhaseEncodingDirection i is along another axis"),
    Case("fmap_no_readout_time", "the EPI fieldmap has no TotalReadoutTime nor echo spacing",
         lambda r: _fmap(r, TotalReadoutTime=None), 1,
         rf"{EPI}.nii.gz: neither TotalReadoutTime nor EffectiveEchoSpacing"),
    Case("fmap_dwi_no_phase_encoding", "PhaseEncodingDirection missing, an EPI fieldmap linked",
         lambda r: [_fmap(r), _edit_json(r, lambda m: {k: v for k, v in m.items()
                                                      if k != "PhaseEncodingDirection"})],
         1, rf"{DWI}.nii.gz: no PhaseEncodingDirection in the JSON sidecar; distortion"),
    Case("fmap_intended_for_missing", "the EPI fieldmap's IntendedFor names a missing DWI",
         lambda r: _fmap(r, IntendedFor=[f"{SES}/dwi/{SUB}_{SES}_acq-b1000_dwi.nii.gz"]), 1,
         rf"{EPI}.nii.gz: IntendedFor '{SES}/dwi/{SUB}_{SES}_acq-b1000_dwi.nii.gz' .* does not "
         "exist"),
    Case("fmap_b0_field_source_unmatched", "B0FieldSource in the DWI sidecar, no identifier",
         lambda r: _edit_json(r, lambda m: m | {"B0FieldSource": "pepolar0"}), 1,
         rf"{DWI}.nii.gz: B0FieldSource 'pepolar0' .* matches no B0FieldIdentifier"),
    Case("fmap_phasediff_no_echo_time", "a GRE phasediff without EchoTime2",
         lambda r: _phasediff(r, EchoTime2=None), 1,
         rf"{SUB}_{SES}_phasediff.nii.gz: no EchoTime2 in the JSON sidecar"),
    Case("sdc_pepolar_missing", "--sdc pepolar; only sub-001's ses-baseline has no fieldmap",
         _fmap_elsewhere, 1, rf"{DWI}.nii.gz: --sdc pepolar but no reverse phase-encoding image",
         ("--sdc", "pepolar")),
]  # fmt: skip


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def small_trial(tmp_path_factory) -> Path:
    """One tiny simulated trial of 3 participants, written once for the module."""
    from ketamine_dti.simulate.cli import main as simulate

    out = tmp_path_factory.mktemp("catalogue") / "bids"
    assert simulate([str(out), "--preset", "tiny", "--n-participants", "3", "--seed", "7"]) == 0
    return out


def _run(bids_dir: Path, out: Path, args: tuple[str, ...], capsys, caplog) -> tuple[int, str]:
    from bids_app.run import main

    with caplog.at_level(logging.INFO):
        code = main([str(bids_dir), str(out), "participant", "--check-only",
                     "--skip-bids-validation", *args])  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.err + captured.out + caplog.text


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: Case, small_trial, tmp_path, capsys, caplog):
    bids_dir = tmp_path / "bids"
    shutil.copytree(small_trial, bids_dir)
    case.damage(bids_dir)
    before = tree_checksum(bids_dir)
    code, text = _run(bids_dir, tmp_path / "out", case.args, capsys, caplog)
    assert code == case.exit_code, text
    if case.message is not None:
        assert any(re.search(case.message, line) for line in text.splitlines()), text
    failing = [line for line in text.splitlines() if line.startswith("  sub-")]
    failed = case.exit_code == 1 if case.failed is None else case.failed
    assert any(line.startswith(f"  {SUB}:") for line in failing) == failed, text
    assert not any(line.startswith(f"  {other}:") for other in OTHERS for line in failing)
    assert tree_checksum(bids_dir) == before  # BIDS_DIR is only read
    assert not (tmp_path / "out").exists()  # the checks write nothing


def test_catalogue_is_large_and_documented():
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)
    assert DOC.read_text() == catalogue_markdown(), (
        "docs/bad_inputs.md is out of date: run python tests/test_bad_inputs.py"
    )


def catalogue_markdown() -> str:
    """The table of docs/bad_inputs.md, from CASES."""
    lines = [
        "# Bad-input catalogue",
        "",
        "Generated from `tests/test_bad_inputs.py` (`python tests/test_bad_inputs.py`); the test "
        "fails if this file drifts. Each case damages sub-001 of a tiny simulated trial of 3 "
        "participants and runs `ketamine-dti BIDS_DIR OUT participant --check-only "
        "--skip-bids-validation [options]`. In every case sub-002 and sub-003 pass, BIDS_DIR is "
        "unchanged and nothing is written. Exit code 1: sub-001 fails the input checks (the "
        "others would run); 0: accepted, with the message as a log line; 18: no participant "
        "selected. The message is a regular expression found in the output.",
        "",
        "| case | input | options | exit code | message |",
        "|---|---|---|---|---|",
    ]
    for case in CASES:
        message = f"`{case.message}`" if case.message else "(none)"
        options = f"`{' '.join(case.args)}`" if case.args else ""
        lines.append(
            f"| {case.name} | {case.input} | {options} | {case.exit_code} | "
            f"{message.replace('|', '&#124;')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    DOC.write_text(catalogue_markdown())
    print(f"wrote {DOC} ({len(CASES)} cases)")
