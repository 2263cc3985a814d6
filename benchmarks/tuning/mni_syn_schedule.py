#!/usr/bin/env python
"""Tuning: rerun a finished participant with another MNI SyN schedule and score its ROIs.

The participant's work directory is reused: the MNI node and everything downstream of it
(segmentation priors, ROIs, sinks) rerun, the DWI steps come from the cache. The score is the
Dice of the App's ROIs (DWI grid) with the simulator's true regions (``bench_participant``'s
``roi_dice``). Training seeds only; the schedule chosen is then reported by
``bench_participant.py`` on a held-out seed.

Usage (ROOT from ``bench_participant.py ROOT --scenarios paper --seed 7 --tuning``)::

    python benchmarks/tuning/mni_syn_schedule.py ROOT NAME 60x30x10 [--moving-mm 2] \
        [--rows rows.jsonl]

Session 14's study: ``benchmarks/results/mni_syn_session14.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench_participant

SUBJECT = "001"


def scheduled_register_to_mni(iterations: tuple[int, ...], moving_mm: float):
    """``register_to_mni`` with the given SyN iterations (and a coarse moving copy), recording
    its CPU seconds in ``cpu.txt`` of its folder."""
    import ketamine_dti.anat.registration as registration
    from ketamine_dti.ants_backend import coarse_copy_file

    original = registration.register_to_mni

    def wrapped(brain_file, mask_file, out_dir, **kwargs):
        if moving_mm > 1:
            brain_file = coarse_copy_file(brain_file, moving_mm, Path(out_dir) / "moving.nii.gz")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        kwargs["syn_iterations"] = iterations
        result = original(brain_file, mask_file, out_dir, **kwargs)
        used = resource.getrusage(resource.RUSAGE_SELF).ru_utime - before
        Path(out_dir, "cpu.txt").write_text(f"{used:.1f}")
        return result

    return wrapped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="bench_participant's output folder")
    parser.add_argument("name")
    parser.add_argument("iterations", help="SyN iterations per level, e.g. 60x30x10")
    parser.add_argument("--moving-mm", type=float, default=1.0)
    parser.add_argument("--rows", type=Path, default=Path("mni_syn_schedule.jsonl"))
    args = parser.parse_args(argv)
    iterations = tuple(int(x) for x in args.iterations.split("x"))

    import ketamine_dti.anat.registration as registration

    # Nipype's MultiProc workers fork from this process, so they run the wrapped function
    registration.register_to_mni = scheduled_register_to_mni(iterations, args.moving_mm)
    from bench_participant import roi_dice

    from ketamine_dti import bids
    from ketamine_dti.config import Config
    from ketamine_dti.workflows.base import run_participant

    bids_dir, work = args.root / "paper_bids", args.root / "paper_longitudinal_work"
    out = args.root / f"mni_{args.name}" / "out"
    shutil.rmtree(out.parent, ignore_errors=True)
    out.mkdir(parents=True)
    node = work / f"ketamine_dti_wf/sub_{SUBJECT}_wf/anat_wf/register_to_mni"
    shutil.rmtree(node, ignore_errors=True)
    config = Config(bids_dir=bids_dir, output_dir=out, analysis_level="participant",
                    work_dir=work, nprocs=2, omp_nthreads=1, mem_gb=4.0, gibbs=False)  # fmt: skip
    bids.init_derivatives(out, bids_dir)
    run_participant(config, bids.get_layout(bids_dir), SUBJECT, independent_anatomy=False)
    scores = roi_dice(bids_dir, out, [SUBJECT])
    row = {
        "variant": args.name,
        "iterations": iterations,
        "moving_mm": args.moving_mm,
        "mni_cpu_s": float((node / "cpu.txt").read_text()),
        "dice": {k: round(v, 3) for k, v in scores["per_roi_median_dice"].items()},
    }
    print(json.dumps(row))
    with args.rows.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
