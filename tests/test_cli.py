"""The BIDS-Apps command line: every exit code of the BIDS execution spec; BIDS_DIR stays as is."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tree_checksum

from bids_app import exit_codes as ec
from bids_app.parser import build_parser, to_config
from bids_app.run import main
from ketamine_dti import __version__


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    exe = Path(sys.executable).parent / "ketamine-dti"
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert __version__ in proc.stdout


def test_participant_label_aliases_strip_prefix(tmp_path):
    parser = build_parser()
    for flag in ("--participant-label", "--participant_label"):
        args = parser.parse_args(
            [str(tmp_path), str(tmp_path / "o"), "participant", flag, "sub-01", "02"]
        )
        assert to_config(args).participant_labels == ("01", "02")


def test_usage_error_is_64(tmp_path):
    proc = run_cli(tmp_path, tmp_path / "out", "everything")
    assert proc.returncode == ec.EX_USAGE
    assert "invalid choice" in proc.stderr


def test_missing_bids_dir_is_66(tmp_path):
    proc = run_cli(tmp_path / "nope", tmp_path / "out", "participant")
    assert proc.returncode == ec.EX_NOINPUT
    assert "does not exist" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("inside", [".", "derivatives/ketamine-dti"])
def test_output_inside_bids_dir_is_64(tiny_trial, inside):
    before = tree_checksum(tiny_trial)
    proc = run_cli(tiny_trial, tiny_trial / inside, "participant")
    assert proc.returncode == ec.EX_USAGE
    assert "inside BIDS_DIR" in proc.stderr
    assert tree_checksum(tiny_trial) == before


def test_work_dir_inside_bids_dir_is_64(tiny_trial, tmp_path):
    proc = run_cli(tiny_trial, tmp_path / "out", "participant", "-w", tiny_trial / "work")
    assert proc.returncode == ec.EX_USAGE
    assert "-w" in proc.stderr


def test_unwritable_output_dir_is_73(tiny_trial, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = run_cli(tiny_trial, blocker / "out", "participant", "--skip-bids-validation")
    assert proc.returncode == ec.EX_CANTCREAT
    assert "cannot be created" in proc.stderr


def test_invalid_dataset_is_16(tiny_trial, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_trial, broken)
    subject = sorted(broken.glob("sub-*"))[0]
    (subject / "notes.txt").write_text("a file BIDS does not allow here")
    proc = run_cli(broken, tmp_path / "out", "participant")
    assert proc.returncode == ec.EX_VALIDATION
    assert "BIDS validator" in proc.stderr
    assert not (tmp_path / "out").exists(), "a failed run must leave no empty output folder"


def test_unknown_participant_is_18_and_lists_available(tiny_trial, tmp_path):
    before = tree_checksum(tiny_trial)
    proc = run_cli(tiny_trial, tmp_path / "out", "participant", "--participant-label", "sub-999")
    assert proc.returncode == ec.EX_NO_PARTICIPANTS
    first = sorted(p.name for p in tiny_trial.glob("sub-*"))[0][4:]
    assert "999" in proc.stderr and first in proc.stderr
    assert tree_checksum(tiny_trial) == before


def test_no_subject_folders_is_18(tmp_path):
    bids = tmp_path / "empty"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "e", "BIDSVersion": "1.9.0"})
    )
    code = main([str(bids), str(tmp_path / "out"), "group", "--skip-bids-validation"])
    assert code == ec.EX_NO_PARTICIPANTS


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--bids-filter-file", "missing.json"], "does not exist"),
        (["--baseline-session", "24h"], "must differ"),
        (["--nprocs", "0"], "must be positive"),
    ],
)
def test_bad_options_are_64(tiny_trial, tmp_path, extra, message):
    proc = run_cli(tiny_trial, tmp_path / "out", "participant", *extra)
    assert proc.returncode == ec.EX_USAGE
    assert message in proc.stderr


def test_group_without_participant_outputs_says_run_participant_first(tiny_trial, tmp_path):
    """A valid dataset gets past every check; the group stage then asks for participant outputs."""
    proc = run_cli(tiny_trial, tmp_path / "out", "group")
    assert proc.returncode == ec.EX_FAILURE
    assert "participant" in proc.stderr


def test_custom_atlas_needs_a_label(tmp_path):
    from bids_app.parser import UsageError

    parser = build_parser()
    unnamed = tmp_path / "my_dseg.nii.gz"
    named = tmp_path / "tpl-MNI152NLin6Asym_atlas-hoa_dseg.nii.gz"
    for path in (unnamed, named):
        path.write_bytes(b"")
    base = [str(tmp_path), str(tmp_path / "o"), "participant"]
    with pytest.raises(UsageError, match="--roi-atlas-label"):
        to_config(parser.parse_args([*base, "--roi-atlas", str(unnamed)]))
    labelled = [*base, "--roi-atlas", str(unnamed), "--roi-atlas-label", "mine"]
    assert to_config(parser.parse_args(labelled)).atlas_label == "mine"
    assert to_config(parser.parse_args([*base, "--roi-atlas", str(named)])).atlas_label == "hoa"
    assert to_config(parser.parse_args(base)).atlas_label == "ketamine7"


def test_session_pair_runs_and_b0_threshold_options(tmp_path):
    parser = build_parser()
    base = [str(tmp_path), str(tmp_path / "o"), "participant"]
    config = to_config(parser.parse_args([*base, "--sessions", "ses-pre", "post"]))
    assert (config.baseline_session, config.followup_session) == ("pre", "post")
    defaults = to_config(parser.parse_args(base))
    assert (defaults.dwi_runs, defaults.b0_threshold, defaults.check_only) == (
        "combine",
        50,
        False,
    )
    config = to_config(
        parser.parse_args([*base, "--dwi-runs", "first", "--b0-threshold", "10", "--check-only"])
    )
    assert (config.dwi_runs, config.b0_threshold, config.check_only) == ("first", 10, True)
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--sessions", "pre", "pre", "--dwi-runs", "all"])
    from bids_app.parser import UsageError

    with pytest.raises(UsageError, match="must differ"):
        to_config(parser.parse_args([*base, "--sessions", "pre", "pre"]))


def test_interpolation_option_reaches_the_resampling_node(tmp_path):
    from ketamine_dti.workflows.dwi import init_dwi_preproc_wf

    parser = build_parser()
    base = [str(tmp_path), str(tmp_path / "o"), "participant"]
    assert to_config(parser.parse_args(base)).interpolation == "trilinear"
    config = to_config(parser.parse_args([*base, "--interpolation", "cubic"]))
    assert config.interpolation == "cubic"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--interpolation", "sinc"])
    for choice, order, named in (
        ("trilinear", 1, "(trilinear)"),
        ("cubic", 3, "(cubic B-spline)"),
    ):
        workflow = init_dwi_preproc_wf(interpolation=choice)
        assert workflow.get_node("resample_dwi").inputs.order == order
        assert named in workflow.desc
    with pytest.raises(ValueError, match="interpolation"):
        init_dwi_preproc_wf(interpolation="sinc")
