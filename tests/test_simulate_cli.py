"""ketamine-dti-simulate: refusals are one line, change nothing, and --overwrite replaces."""

from __future__ import annotations

import pytest
from conftest import tree_checksum

from ketamine_dti.simulate.cli import EX_CANTCREAT, EX_USAGE, main


@pytest.mark.parametrize(
    ("arguments", "phrase"),
    [
        (["--n-participants", "1"], "--n-participants 1"),
        (["--n-participants", "2"], "at least 3"),
        (["--snr", "-5"], "--snr -5"),
        (["--snr", "0"], "positive"),
        (["--snr", "nan"], "positive"),
        (["--noiseless", "--snr", "20"], "contradict"),
        (["--preset", "huge"], "invalid choice"),
        (["--scenario", "maybe"], "invalid choice"),
        (["--sessions", "baseline", "baseline"], "two different"),
        (["--sessions", "base_line", "24h"], "letters and digits"),
        (["--seed", "-1"], "non-negative"),
        (["--n-procs", "0"], "at least 1"),
        (["--n-participants", "three"], "invalid int"),
    ],
)
def test_impossible_options_are_refused_in_one_line(tmp_path, capsys, arguments, phrase):
    out = tmp_path / "bids"
    assert main([str(out), *arguments]) == EX_USAGE
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert phrase in error
    assert not out.exists()


def test_non_empty_out_dir_is_refused_and_untouched(tmp_path, capsys):
    out = tmp_path / "bids"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    before = tree_checksum(out)
    assert main([str(out), "--n-participants", "3"]) == EX_USAGE
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--overwrite" in error
    assert tree_checksum(out) == before


def test_out_dir_that_is_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "bids"
    out.write_text("not a folder")
    assert main([str(out), "--n-participants", "3"]) == EX_USAGE
    assert "not a folder" in capsys.readouterr().err
    assert out.read_text() == "not a folder"


def test_out_dir_that_cannot_be_created_gives_73(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder should be")
    assert main([str(blocker / "bids"), "--n-participants", "3"]) == EX_CANTCREAT
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "cannot write" in error
    assert blocker.read_text() == "a file where a folder should be"


@pytest.mark.slow
def test_overwrite_replaces_a_previous_simulation(tmp_path):
    out = tmp_path / "bids"
    assert main([str(out), "--n-participants", "4", "--seed", "1"]) == 0
    (out / "derivatives").mkdir()
    (out / "derivatives" / "keep.txt").write_text("user output")
    assert main([str(out), "--n-participants", "3", "--seed", "2", "--overwrite"]) == 0
    subjects = sorted(p.name for p in out.glob("sub-*"))
    assert subjects == ["sub-001", "sub-002", "sub-003"]  # no stale sub-004
    truth = sorted(p.name for p in (out / "sourcedata" / "ground_truth").glob("sub-*"))
    assert truth == subjects
    assert (out / "derivatives" / "keep.txt").read_text() == "user output"
