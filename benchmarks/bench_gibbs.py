#!/usr/bin/env python
"""Benchmark Gibbs unringing (``dwi.gibbs.remove_gibbs``, ``--gibbs``) against MRtrix3's
``mrdegibbs`` on one standard simulated session with the simulator's Gibbs ringing.

Each contender runs in its own process with 2 threads, after an untimed warm-up call on a
small block (numba's cache load; FFT plans): ``kernel_s`` is the call on the whole series.
Both read the same float32 series. Accuracy: the RMS, in the brain, of each result minus the
noise-free series without ringing (the same session simulated with the ``gibbs`` item off:
each realism item draws from its own stream, so the rest is identical), against the input's
own RMS difference from it; and the RMS difference between the two tools.

Usage::

    python benchmarks/bench_gibbs.py OUT_STEM [--seed 0]

writes ``OUT_STEM.json`` and ``OUT_STEM.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THREADS = 2
THREAD_ENV = {key: str(THREADS) for key in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}


def prepare(work: Path, seed: int) -> dict:
    """The simulated session with ringing, as .npy (ours) and NIfTI (mrdegibbs), and its
    noise-free series without ringing."""
    import nibabel as nib

    from ketamine_dti.simulate import simulate_benchmark_session

    session = simulate_benchmark_session(preset="standard", seed=seed, realism="typical")
    unrung = simulate_benchmark_session(
        preset="standard", seed=seed, realism="typical", realism_off=("gibbs",)
    )
    data = np.ascontiguousarray(session.data, dtype=np.float32)
    np.save(work / "dwi.npy", data)
    np.save(work / "clean.npy", np.asarray(unrung.clean, dtype=np.float32))
    np.save(work / "mask.npy", np.asarray(session.brain_mask, dtype=bool))
    nib.save(nib.Nifti1Image(data, session.affine), work / "dwi.nii")
    return {"shape": list(data.shape)}


def worker_ours(work: Path) -> None:
    """Time remove_gibbs on the whole series (after a warm-up on a block); save the result."""
    from ketamine_dti.dwi.gibbs import remove_gibbs

    data = np.load(work / "dwi.npy")
    remove_gibbs(data[:16, :16, :4, :1], THREADS)
    start = time.perf_counter()
    out = remove_gibbs(data, THREADS)
    kernel = time.perf_counter() - start
    np.save(work / "ours.npy", out)
    print(json.dumps({"kernel_s": kernel}))


def run(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, **THREAD_ENV}, capture_output=True)
    return time.perf_counter() - start


def rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values, dtype=np.float64))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_stem", type=Path, nargs="?")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_ours(args.worker)
        return 0
    if args.out_stem is None:
        parser.error("give OUT_STEM")
    import nibabel as nib

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        info = prepare(work, args.seed)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, __file__, "--worker", str(work)],
            check=True, env={**os.environ, **THREAD_ENV}, capture_output=True, text=True,
        )  # fmt: skip
        timing = json.loads(done.stdout.strip().splitlines()[-1])
        ours = {"process_s": time.perf_counter() - start, **timing}
        mrtrix = None
        if shutil.which("mrdegibbs"):
            command = ["mrdegibbs", str(work / "dwi.nii"), str(work / "mrtrix.nii"),
                       "-nthreads", str(THREADS), "-quiet", "-datatype", "float32"]  # fmt: skip
            mrtrix = {"process_s": run(command)}
        data, clean = np.load(work / "dwi.npy"), np.load(work / "clean.npy")
        brain = np.load(work / "mask.npy")
        result = np.load(work / "ours.npy")
        accuracy = {
            "input_rms_vs_clean": rms((data - clean)[brain]),
            "ours_rms_vs_clean": rms((result - clean)[brain]),
        }
        if mrtrix is not None:
            theirs = np.asarray(nib.load(work / "mrtrix.nii").dataobj, dtype=np.float32)
            accuracy["mrdegibbs_rms_vs_clean"] = rms((theirs - clean)[brain])
            accuracy["ours_vs_mrdegibbs_rms"] = rms((result - theirs)[brain])
            accuracy["brain_mean_signal"] = float(data[brain].mean())
    report = {
        "machine": platform.processor() or platform.machine(),
        "threads": THREADS,
        "seed": args.seed,
        "session": info,
        "ours": ours,
        "mrdegibbs": mrtrix,
        "accuracy": accuracy,
    }
    args.out_stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        "# Gibbs unringing: ours (`dwi.gibbs.remove_gibbs`) against MRtrix3 `mrdegibbs`",
        "",
        f"Command: `python benchmarks/bench_gibbs.py OUT_STEM --seed {args.seed}`. One standard "
        f"simulated session (typical realism, its Gibbs ringing), shape {info['shape']}, "
        f"{THREADS} threads each.",
        "",
        "| contender | kernel (s) | process (s) | RMS vs noise- and ring-free, brain |",
        "|---|---|---|---|",
        f"| input (no unringing) | - | - | {accuracy['input_rms_vs_clean']:.2f} |",
        f"| ours | {ours['kernel_s']:.1f} | {ours['process_s']:.1f} | "
        f"{accuracy['ours_rms_vs_clean']:.2f} |",
    ]
    if mrtrix is not None:
        lines.append(
            f"| mrdegibbs | - | {mrtrix['process_s']:.1f} | "
            f"{accuracy['mrdegibbs_rms_vs_clean']:.2f} |"
        )
        lines += ["", f"RMS difference ours vs mrdegibbs in the brain: "
                  f"{accuracy['ours_vs_mrdegibbs_rms']:.2f} (brain mean signal "
                  f"{accuracy['brain_mean_signal']:.0f})."]  # fmt: skip
    args.out_stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
