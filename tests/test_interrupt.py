"""SIGKILL at random points of a participant run: never half-written results, same final outputs.

One tiny participant (sub-001 of a 3-participant trial, the simulator's smallest) runs once
uninterrupted (the reference). A second run is killed five times at random points of its
progress (after a random number of Nipype nodes have finished, the last draw at the very end,
where the sinks write and the staged outputs move into place), each time resumed with the same
work dir. After every kill OUTPUT_DIR/sub-<label> holds no derivatives (at most its log) or
exactly the reference's; the final run's outputs are byte-identical to the reference's.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SUBJECT = "001"
N_KILLS = 5
#: No run should take this long (a tiny participant takes 5-20 min on a loaded 2-core machine).
RUN_TIMEOUT_S = 3600


def _command(bids_dir: Path, out: Path, work: Path) -> list[str]:
    return [
        sys.executable, "-c", "import sys; from bids_app.run import main; sys.exit(main())",
        str(bids_dir), str(out), "participant", "--participant-label", SUBJECT, "-w", str(work),
        "--nprocs", "2", "--omp-nthreads", "1", "--skip-bids-validation",
    ]  # fmt: skip


def _digest(out: Path) -> dict[str, str]:
    """sha256 of the participant's derivatives (its log and crash files excluded)."""
    folder = out / f"sub-{SUBJECT}"
    return {
        str(path.relative_to(out)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "log" not in path.relative_to(folder).parts
    }


def _results(work: Path) -> int:
    """Nipype result files under the work dir (counted again if Nipype moves a folder)."""
    while True:
        try:
            return sum(1 for _ in work.rglob("result_*.pklz"))
        except FileNotFoundError:  # a node folder vanished mid-walk
            continue


@pytest.fixture(scope="module")
def trial(tmp_path_factory) -> Path:
    from ketamine_dti.simulate.cli import main as simulate

    out = tmp_path_factory.mktemp("interrupt") / "bids"
    assert simulate([str(out), "--preset", "tiny", "--n-participants", "3", "--seed", "7"]) == 0
    return out


def test_sigkill_at_random_points_leaves_nothing_or_everything(trial, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    reference_out, reference_work = tmp_path / "out_ref", tmp_path / "work_ref"
    done = subprocess.run(_command(trial, reference_out, reference_work), env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    reference = _digest(reference_out)
    n_nodes = _results(reference_work)
    draws = np.random.default_rng(10).choice(np.arange(1, n_nodes), N_KILLS - 1, replace=False)
    kill_points = [*sorted(int(k) for k in draws), n_nodes]  # the last: sinks and promotion
    out, work = tmp_path / "out", tmp_path / "work"
    outcomes = []
    for kill_after in kill_points:
        process = subprocess.Popen(
            _command(trial, out, work), env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while process.poll() is None and _results(work) < kill_after:
            assert time.monotonic() < deadline, "the run neither progressed nor ended"
            time.sleep(0.05)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        found = _digest(out) if (out / f"sub-{SUBJECT}").exists() else {}
        assert found in ({}, reference), f"kill after {kill_after} nodes left partial outputs"
        outcomes.append("complete" if found else "none")
    final = subprocess.run(_command(trial, out, work), env=env, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT_S)  # fmt: skip
    assert final.returncode == 0, final.stderr[-3000:]
    assert _digest(out) == reference
    assert not (out / ".ketamine-dti-staging").exists()
    print(f"kills after {kill_points} of {n_nodes} node results: {outcomes}")
