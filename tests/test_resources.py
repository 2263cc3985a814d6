"""Bundled resources through TemplateFlow: user's home first, bundle second, never the network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ketamine_dti import resources
from ketamine_dti.errors import KetamineDTIError
from ketamine_dti.resources import (
    ResourceNotFound,
    citations,
    get_atlas,
    get_template,
    read_atlas_labels,
    templateflow_home,
)

TPL = "tpl-MNI152NLin6Asym"
BUNDLED_FILES = {
    (1, "T1w"): f"{TPL}_res-01_desc-brain_T1w.nii.gz",
    (1, "mask"): f"{TPL}_res-01_desc-brain_mask.nii.gz",
    (2, "T1w"): f"{TPL}_res-02_desc-brain_T1w.nii.gz",
    (2, "mask"): f"{TPL}_res-02_desc-brain_mask.nii.gz",
}


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


def _write_nifti(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.full((4, 4, 4), value, np.int16), np.eye(4)).to_filename(path)
    return path


def _skeleton_home(root: Path) -> Path:
    """A home like the one templateflow plants: zero-byte placeholders for our files."""
    folder = root / TPL
    folder.mkdir(parents=True)
    (folder / "template_description.json").write_text(json.dumps({"Identifier": TPL[4:]}))
    for name in BUNDLED_FILES.values():
        (folder / name).touch()
    (folder / f"{TPL}_res-02_atlas-ketamine7_dseg.nii.gz").touch()
    # a saved S3 error body, as older templateflow versions left behind
    (folder / f"{TPL}_res-01_atlas-ketamine7_dseg.nii.gz").write_bytes(
        b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>"
    )
    return root


@pytest.fixture
def user_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "user_templateflow"
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    return home


@pytest.fixture
def no_network(monkeypatch) -> list[tuple]:
    """Make the network unreachable; every attempt is recorded (and fails)."""
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args and isinstance(args[0], socket.socket) else args)
        raise OSError("network unreachable (blocked by test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.mark.parametrize(("resolution", "suffix"), list(BUNDLED_FILES))
def test_empty_user_home_gives_bundled_template(user_home, resolution, suffix):
    path = get_template(resolution=resolution, suffix=suffix)
    assert path == templateflow_home() / TPL / BUNDLED_FILES[resolution, suffix]
    assert not user_home.exists()  # nothing was planted in the user's home


@pytest.mark.parametrize("resolution", [1, 2])
def test_atlas_comes_from_the_bundle_with_its_table(user_home, resolution):
    dseg, tsv = get_atlas(resolution=resolution)
    folder = templateflow_home() / TPL
    assert dseg == folder / f"{TPL}_res-0{resolution}_atlas-ketamine7_dseg.nii.gz"
    assert tsv == folder / f"{TPL}_atlas-ketamine7_dseg.tsv"


def test_user_home_with_other_content_is_honoured(user_home):
    own_t1w = _write_nifti(user_home / TPL / BUNDLED_FILES[2, "T1w"], 7)
    other = _write_nifti(user_home / "tpl-Custom" / "tpl-Custom_res-01_T1w.nii.gz", 3)
    (user_home / TPL / "template_description.json").write_text("{}")
    (user_home / "tpl-Custom" / "template_description.json").write_text("{}")
    before = _tree(user_home)

    assert get_template(resolution=2) == own_t1w  # the user's copy wins
    assert get_template(resolution=1) == templateflow_home() / TPL / BUNDLED_FILES[1, "T1w"]
    assert get_template(resolution=2, suffix="mask").is_relative_to(templateflow_home())
    assert get_atlas(resolution=2)[0].is_relative_to(templateflow_home())
    assert get_template(resolution=1, desc=None, template="Custom") == other
    assert _tree(user_home) == before  # read, never written


def test_atlas_image_and_table_come_from_one_home(user_home):
    folder = user_home / TPL
    own = _write_nifti(folder / f"{TPL}_res-02_atlas-ketamine7_dseg.nii.gz", 1)
    (folder / "template_description.json").write_text("{}")
    assert get_atlas(resolution=2)[0].is_relative_to(templateflow_home())  # no table: skipped
    table = folder / f"{TPL}_atlas-ketamine7_dseg.tsv"
    table.write_text("index\tname\n1\tmine\n")
    assert get_atlas(resolution=2) == (own, table)
    assert read_atlas_labels(table) == {1: "mine"}


def test_placeholders_in_user_home_never_trigger_a_download(user_home, no_network):
    _skeleton_home(user_home)
    before = _tree(user_home)
    for (resolution, suffix), name in BUNDLED_FILES.items():
        assert (
            get_template(resolution=resolution, suffix=suffix) == templateflow_home() / TPL / name
        )
    for resolution in (1, 2):
        assert get_atlas(resolution=resolution)[0].is_relative_to(templateflow_home())
    assert no_network == []
    assert _tree(user_home) == before  # not even the S3 error body was truncated


def test_fresh_process_without_network_writes_nothing(tmp_path):
    """Import-time behaviour: templateflow must not plant a skeleton in an empty home."""
    empty_home = tmp_path / "empty"
    empty_home.mkdir()
    code = """
import socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("network unreachable (blocked by test)")
socket.socket.connect = socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse
from ketamine_dti.resources import get_atlas, get_template
get_template(resolution=2), get_template(resolution=1, suffix="mask"), get_atlas(resolution=1)
import templateflow.api
print(len(attempts), "templateflow" in sys.modules)
"""
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(empty_home), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "True"]
    assert list(empty_home.iterdir()) == []


def test_missing_resolution_is_a_clear_error(user_home):
    with pytest.raises(ResourceNotFound, match=r"res.*3.*bundled home"):
        get_template(resolution=3)
    with pytest.raises(ResourceNotFound, match="atlas=nosuchatlas"):
        get_atlas(atlas="nosuchatlas")


def test_label_table_without_its_columns_is_rejected(tmp_path):
    table = tmp_path / "labels.tsv"
    table.write_text("id\tlabel\n1\tx\n")
    with pytest.raises(KetamineDTIError, match="'index' and 'name'"):
        read_atlas_labels(table)


def test_citations_cover_every_bundled_source():
    everything = " ".join(citations())
    for needle in ("10.1016/j.neuroimage.2012.01.024", "Desikan", "Talairach", "Ciric"):
        assert needle in everything
    assert citations(("Talairach",)) == list(resources.CITATIONS["Talairach"])
    with pytest.raises(KeyError):
        citations(("AAL",))
