"""The Boutiques descriptor shipped in bids_app/ matches the CLI it describes."""

import json
import os
import shlex
import sys
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    return load_script("scripts/make_boutiques.py")


def test_descriptor_is_up_to_date():
    shipped = json.loads((ROOT / "bids_app" / "descriptor.json").read_text())
    assert shipped == _generator().build_descriptor(), "run python scripts/make_boutiques.py"


def test_descriptor_covers_the_bids_app_contract():
    inputs = {i["id"]: i for i in _generator().build_descriptor()["inputs"]}
    assert inputs["analysis_level"]["value-choices"] == ["participant", "group"]
    assert inputs["participant_label"]["command-line-flag"] == "--participant-label"
    assert not inputs["bids_dir"]["optional"] and inputs["participant_label"]["optional"]


# ---------------------------------------------------------------------- the real bosh tool
DESCRIPTOR = ROOT / "bids_app" / "descriptor.json"


def test_bosh_validates_the_descriptor_as_a_bids_app():
    import boutiques

    boutiques.validate(str(DESCRIPTOR), "--bids")  # raises DescriptorValidationError


def _simulate(invocation: dict, folder: Path) -> str:
    """The command line ``bosh exec simulate`` makes of an invocation, once ``bosh
    invocation`` has found it valid."""
    import boutiques

    path = folder / "invocation.json"
    path.write_text(json.dumps(invocation))
    boutiques.invocation(str(DESCRIPTOR), "-i", str(path))  # raises InvocationValidationError
    return boutiques.execute("simulate", str(DESCRIPTOR), "-i", str(path)).stdout


def test_bosh_simulates_the_command_line_the_cli_reads(tmp_path):
    from bids_app.parser import build_parser

    invocation = {
        "bids_dir": "/data/bids",
        "output_dir_name": "/data/derivatives/ketamine-dti",
        "analysis_level": "group",
        "participant_label": ["001", "002"],
        "sessions": ["baseline", "24h"],
        "work_dir": "/scratch/work",
        "nprocs": 2,
        "mem_gb": 3.5,
        "verbose": True,
        "gibbs": "--gibbs",
        "roi_atlas": "/atlases/my_dseg.nii.gz",
        "contrast": ["ketamine=ketamine_asat,ketamine_sham", "saline=saline_sham"],
        "qc_covariates": ["mean_fd", "tsnr"],
        "permutations": 100,
        "fwer": "maxt",
    }
    setup, _, command = _simulate(invocation, tmp_path).partition("; ")
    assert setup == "mkdir -p /data/derivatives/ketamine-dti"
    program, *argv = shlex.split(command)
    assert program == "ketamine-dti"
    args = vars(build_parser().parse_args(argv))
    expected = {
        "bids_dir": Path("/data/bids"),
        "output_dir": Path("/data/derivatives/ketamine-dti"),
        "analysis_level": "group",
        "participant_label": ["001", "002"],
        "sessions": ["baseline", "24h"],
        "work_dir": Path("/scratch/work"),
        "nprocs": 2,
        "mem_gb": 3.5,
        "verbose": 1,
        "gibbs": True,
        "roi_atlas": Path("/atlases/my_dseg.nii.gz"),
        "contrast": [
            ("ketamine", ("ketamine_asat", "ketamine_sham")),
            ("saline", ("saline_sham",)),
        ],
        "qc_covariates": ["mean_fd", "tsnr"],
        "permutations": 100,
        "fwer": "maxt",
    }
    assert {key: args[key] for key in expected} == expected


def test_bosh_generates_a_valid_invocation_of_every_input(tmp_path):
    """``bosh exec simulate -c`` fills every input (one of the two OUTPUT_DIR forms): the
    invocation is valid and each input's flag appears in its command line."""
    import random

    import boutiques

    random.seed(0)  # bosh draws its values with Python's random
    generated = boutiques.execute("simulate", str(DESCRIPTOR), "-j", "-c").stdout
    invocation = json.loads(generated)
    inputs = {i["id"]: i for i in json.loads(DESCRIPTOR.read_text())["inputs"]}
    output_dir = {"output_dir_name", "participant_level_analysis_dir"}
    assert set(inputs) - set(invocation) <= output_dir and len(output_dir & set(invocation)) == 1
    command = _simulate(invocation, tmp_path)
    for ident in invocation:
        flag = inputs[ident].get("command-line-flag")
        assert flag is None or f" {flag} " in f"{command} ", ident


def _launch(invocation: dict, folder: Path, monkeypatch):
    """``bosh exec launch --no-container`` of an invocation, with the App's console script
    on PATH (the descriptor's command runs on the host as it does in the container)."""
    import boutiques

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(folder)
    path = folder / "invocation.json"
    path.write_text(json.dumps(invocation))
    return boutiques.execute(
        "launch", str(DESCRIPTOR), str(path), "--no-container", "--skip-data-collection"
    )


def test_bosh_launch_returns_the_apps_exit_code(tmp_path, monkeypatch):
    from bids_app.exit_codes import EX_NOINPUT

    invocation = {
        "bids_dir": str(tmp_path / "missing"),
        "output_dir_name": str(tmp_path / "out"),
        "analysis_level": "participant",
    }
    result = _launch(invocation, tmp_path, monkeypatch)
    assert result.exit_code == EX_NOINPUT, result.stderr
    assert f"BIDS_DIR {tmp_path / 'missing'} does not exist" in result.stderr


@pytest.mark.slow
def test_bosh_launch_checks_a_participant_of_the_tiny_trial(tiny_trial, tmp_path, monkeypatch):
    invocation = {
        "bids_dir": str(tiny_trial),
        "output_dir_name": str(tmp_path / "out"),
        "analysis_level": "participant",
        "participant_label": ["001"],
        "skip_bids_validation": True,
        "check_only": True,
        "work_dir": str(tmp_path / "work"),
    }
    result = _launch(invocation, tmp_path, monkeypatch)
    assert result.exit_code == 0, result.stderr
    assert "input checks: 1 participant(s) ready, 0 not" in result.stderr
    assert [f.file_name for f in result.output_files] == [str(tmp_path / "out")]
    assert result.missing_files == []
