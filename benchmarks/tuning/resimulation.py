"""Re-run the simulator of a finished benchmark trial with some of its functions wrapped.

Why: the ground truth stores what a benchmark scores against, not every intermediate the
simulator draws (the receive fields, each session's noiseless mixture). An analysis that needs
one re-runs the simulator CLI with the benchmark's arguments in this process, a wrapper in
place of the function that makes it, and checks that the DWI files come out byte-identical to
the trial's, so the capture belongs to the data the App saw.
"""

from __future__ import annotations

import argparse
import filecmp
import runpy
import sys
import tempfile
from pathlib import Path

SCENARIO = "csf_shift"


def add_trial_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of an analysis that re-simulates a finished trial: its output folder and
    the simulator's seed, participant count and realism (as the benchmark ran it)."""
    parser.add_argument("root", type=Path, help="bench_participant's output folder")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--n-participants", type=int, required=True)
    parser.add_argument("--realism", default="typical")


def rerun_simulator(
    seed: int,
    n_participants: int,
    realism: str,
    wrappers: dict[tuple[object, str], object],
    bids: Path | None = None,
    scenario: str = SCENARIO,
    preset: str = "standard",
) -> tuple[int, ...]:
    """Simulate the ``preset`` ``scenario`` trial again with ``module.name`` replaced by each
    wrapper (``{(module, name): replacement}``, restored afterwards); with ``bids`` (the
    trial's folder) raise if a DWI file differs from it. Returns the DWI grid's shape."""
    import nibabel as nib

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "bids"
        argv = [
            "ketamine-dti-simulate", str(out), "--preset", preset, "--scenario", scenario,
            "--n-participants", str(n_participants), "--seed", str(seed), "--realism", realism,
            "--n-procs", "1",
        ]  # fmt: skip
        saved = {key: getattr(*key) for key in wrappers}
        saved_argv, sys.argv = sys.argv, argv
        for (module, name), replacement in wrappers.items():
            setattr(module, name, replacement)
        try:
            runpy.run_module("ketamine_dti.simulate.cli", run_name="__main__")
        except SystemExit as stop:  # the CLI exits when done
            if stop.code not in (0, None):
                raise
        finally:
            sys.argv = saved_argv
            for (module, name), original in saved.items():
                setattr(module, name, original)
        again = sorted(out.glob("sub-*/ses-*/dwi/*_dwi.nii.gz"))
        if bids is not None:
            for path in again:
                original = bids / path.relative_to(out)
                if not filecmp.cmp(path, original, shallow=False):
                    raise RuntimeError(f"{original}: the re-simulation differs; wrong arguments?")
        return tuple(nib.load(again[0]).shape[:3])
