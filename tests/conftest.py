"""Shared fixtures: one simulated tiny trial per test session, reused read-only by every test."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

# Tests must never touch the network or oversubscribe the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

TINY_PARTICIPANTS = 12  # the tiny default: 8:4, enough for every group model after one failure


def built_once_per_run(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` run once for the whole test run and its folder returned.

    Without pytest-xdist this is a fresh ``mktemp(name)``. Under xdist (``-n 2``) every worker
    is a separate session, so the folder lives in the run's shared base temp directory and
    the first worker to ask builds it under a file lock; the others wait and reuse it
    (read-only, as every user of a session fixture already must)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    from filelock import FileLock  # a dependency of nipype

    shared = tmp_path_factory.getbasetemp().parent
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed mid-build
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_trial(tmp_path_factory) -> Path:
    """A `tiny` preset, `paper` scenario trial written by the real simulator CLI."""
    from ketamine_dti.simulate.cli import main as simulate

    def build(folder: Path) -> None:
        args = ["--preset", "tiny", "--n-participants", str(TINY_PARTICIPANTS), "--seed", "7"]
        assert simulate([str(folder / "bids"), *args]) == 0

    return built_once_per_run(tmp_path_factory, "trial", build) / "bids"


def tree_checksum(root: Path) -> str:
    """Hash of every file's relative path and bytes: proves a tree was not modified."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


#: Participants of the simulated trial the group-level tests share (``group_trial``).
GROUP_TRIAL_PARTICIPANTS = 24


@pytest.fixture
def group_trial(tmp_path: Path):
    """A fresh 24-participant ``paper`` trial's group-level inputs (seed 9) and its Config."""
    import numpy as np

    from ketamine_dti.simulate.validation import simulate_trial_files

    config, _ = simulate_trial_files(
        tmp_path, GROUP_TRIAL_PARTICIPANTS, "paper", np.random.default_rng(9)
    )
    return config


def read_tsv(path: Path):
    """A TSV output as BIDS writes it ("n/a" is missing, nothing else is)."""
    import pandas as pd

    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["n/a"])


#: The shared real scan (../shared/realdata), never copied into the repository;
#: KETAMINE_DTI_REAL_SCAN points to it from a checkout elsewhere (e.g. a fresh clone in /tmp).
REALDATA = Path(
    os.environ.get(
        "KETAMINE_DTI_REAL_SCAN",
        Path(__file__).resolve().parents[2] / "shared" / "realdata" / "siemens_prisma_xa30_subM31",
    )
)


def load_script(relative: str):
    """A repository script (``scripts/``, ``benchmarks/``: not a package) as a module, named
    after its file, so tests call its functions."""
    import importlib.util

    path = Path(__file__).parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: ``scripts/arrange_realdata.py``: the one definition of the real scan's BIDS layout (subject
#: label, which series each session holds).
REAL_SCAN_ARRANGEMENT = load_script("scripts/arrange_realdata.py")


def arrange_real_scan(out: Path) -> Path:
    """The real scan arranged as BIDS by the committed ``scripts/arrange_realdata.py``."""
    return REAL_SCAN_ARRANGEMENT.arrange(out, REALDATA)


def measure_rois(work: Path, sessions: list[dict[str, str]], roi_names: list[str]):
    """The ROI statistics as the workflow runs them (SampleRegions per session, then
    RegionalStatistics over all), on maps whose grid is also the subject template (identity
    transforms). Each session's files: ``atlas``/``gm``/``csf`` (template) and the maps
    (``md``, ``fa``, ``mask``, optional ``fw_md``, ``fw_fraction``). Returns the outputs."""
    from ketamine_dti.ants_backend import identity_file
    from ketamine_dti.interfaces.rois import RegionalStatistics, SampleRegions

    identity = [identity_file(work / "identity")]
    samples = []
    for index, files in enumerate(sessions):
        folder = work / f"sample_{index}"
        folder.mkdir(parents=True, exist_ok=True)
        inputs = {f"{name}_file": path for name, path in files.items()}
        sampled = SampleRegions(
            **inputs, from_template_to_session=identity, from_t1w_to_dwi=identity
        ).run(cwd=str(folder))
        samples.append(sampled.outputs.samples_file)
    (work / "statistics").mkdir(exist_ok=True)
    return (
        RegionalStatistics(samples_files=samples, roi_names=roi_names)
        .run(cwd=str(work / "statistics"))
        .outputs
    )
