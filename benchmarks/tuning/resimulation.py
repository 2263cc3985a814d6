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
import itertools
import runpy
import sys
import tempfile
from dataclasses import dataclass
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


#: DWI sessions the simulator CLI writes per participant (baseline, 24h), in this order.
SESSIONS_PER_PARTICIPANT = 2


@dataclass(frozen=True)
class SessionMaps:
    """What placed one simulated DWI session: the template, the participant's warp and scale,
    the session's head pose, the preset, the planted GM MD per label and the true regions."""

    template: object
    participant: object
    pose: object
    preset: object
    label_md: object
    true_atlas: object


def each_dwi_session(
    seed: int,
    n_participants: int,
    realism: str,
    visit,
    bids: Path | None = None,
    scenario: str = SCENARIO,
    preset: str = "standard",
) -> tuple[int, ...]:
    """Re-simulate the trial (``rerun_simulator``) and call ``visit(key, dwi, maps)`` after each
    DWI session: ``key`` = (participant index, session index) in the CLI's order, ``dwi`` the
    session, ``maps`` its :class:`SessionMaps`."""
    from ketamine_dti.simulate import session

    simulate_dwi = session.simulate_dwi
    calls = itertools.count()  # the CLI simulates participant by participant, session by session

    def capture(template, participant, pose, chosen, rng, label_md, true_atlas, *args, **kwargs):
        dwi = simulate_dwi(
            template, participant, pose, chosen, rng, label_md, true_atlas, *args, **kwargs
        )
        maps = SessionMaps(template, participant, pose, chosen, label_md, true_atlas)
        visit(divmod(next(calls), SESSIONS_PER_PARTICIPANT), dwi, maps)
        return dwi

    return rerun_simulator(
        seed, n_participants, realism, {(session, "simulate_dwi"): capture}, bids, scenario, preset
    )


def app_atlas():
    """The App's ``ketamine7`` atlas (1 mm) as the simulator's RoiAtlas, to carry it into a
    DWI grid by the simulator's own maps (:func:`tissue_on_grid`)."""
    import nibabel as nib
    import numpy as np

    from ketamine_dti.resources import get_atlas
    from ketamine_dti.rois import ROI_NAMES
    from ketamine_dti.simulate import anatomy

    atlas = nib.load(get_atlas(resolution=1)[0])
    return anatomy.RoiAtlas.from_labels(np.asarray(atlas.dataobj), atlas.affine, len(ROI_NAMES))


def tissue_on_grid(maps: SessionMaps, affine, atlas):
    """The session's true tissue fractions on its DWI grid (``affine``), with ``atlas``'s
    regions placed by the simulator's own warp and pose (no fibre field)."""
    from ketamine_dti.rois import ROI_NAMES
    from ketamine_dti.simulate import anatomy

    oversample = int(round(maps.preset.dwi_voxel_mm / abs(maps.template.affine[0, 0])))
    return anatomy.voxel_tissue(
        maps.template, maps.participant, maps.pose, affine, maps.preset.dwi_shape, oversample,
        atlas, len(ROI_NAMES), with_fibre=False,
    )  # fmt: skip
