#!/usr/bin/env python
"""The demo's wall time after install (issue 16: a 12-participant tiny trial in <= 8 min).

Runs what ``scripts/demo.sh`` runs after its install step, with the installed console scripts:
the simulator (tiny preset, paper scenario), the participant level over every participant (one
App run, ``--nprocs`` cores) and the group level. Each stage's wall time and exit code go to
``benchmarks/results/demo_speed[_label].{json,md}``.

Usage::

    python benchmarks/bench_demo.py OUT_DIR [--seed 1] [--label session14]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_participant import derivative_megabytes, machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MIN = 8.0


def stage(name: str, command: list[str], log: Path) -> dict:
    """Run one stage, its output to ``log``; wall seconds and exit code."""
    started = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode
    row = {"stage": name, "wall_s": round(time.perf_counter() - started, 1), "exit_code": code}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=1, help="the demo's seed (scripts/demo.sh)")
    parser.add_argument("--nprocs", type=int, default=None, help="default: the App's (all cores)")
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    out = args.out_dir.absolute()
    out.mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    bids, derivatives = out / "bids", out / "derivatives" / "ketamine-dti"
    extra = ["--nprocs", str(args.nprocs)] if args.nprocs else []
    # as scripts/demo.sh: the simulator's participants on every core (`nproc`)
    simulate = [str(bindir / "ketamine-dti-simulate"), str(bids), "--preset", "tiny",
                "--scenario", "paper", "--seed", str(args.seed), "--overwrite",
                "--n-procs", str(args.nprocs or len(os.sched_getaffinity(0)))]  # fmt: skip
    app = [str(bindir / "ketamine-dti"), str(bids), str(derivatives)]
    rows = [stage("simulate", simulate, out / "simulate.log")]
    rows.append(stage("participant", app + ["participant", "-w", str(out / "work")] + extra,
                      out / "participant.log"))  # fmt: skip
    rows.append(stage("group", app + ["group"] + extra, out / "group.log"))
    participants = sorted(p.name for p in bids.glob("sub-*") if p.is_dir())
    total = sum(row["wall_s"] for row in rows)
    sizes = [derivative_megabytes(derivatives / p)["total"] for p in participants]
    results = {
        "machine": machine(),
        "seed": args.seed,
        "seed_note": "the demo's own trial (scripts/demo.sh); nothing is tuned on it",
        "n_participants": len(participants),
        "stages": rows,
        "total_min": round(total / 60, 2),
        "target_min": TARGET_MIN,
        "derivatives_mb_per_participant_median": round(sorted(sizes)[len(sizes) // 2], 1)
        if sizes
        else None,
    }
    write(results, args.label)
    return 0 if all(row["exit_code"] == 0 for row in rows) else 1


def write(results: dict, label: str) -> None:
    suffix = f"_{label}" if label else ""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"demo_speed{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# Demo after install ({results['n_participants']} tiny participants, seed "
        f"{results['seed']})",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores. "
        f"Command: `python benchmarks/bench_demo.py OUT_DIR --seed {results['seed']}`.",
        "",
        "| stage | wall (s) | exit code |",
        "|---|---|---|",
    ]
    lines += [f"| {r['stage']} | {r['wall_s']} | {r['exit_code']} |" for r in results["stages"]]
    lines += [
        "",
        f"Total {results['total_min']} min (issue 16 target <= {results['target_min']:g} min). "
        f"Derivatives per participant (median): "
        f"{results['derivatives_mb_per_participant_median']} MB.",
        "",
    ]
    (RESULTS / f"demo_speed{suffix}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
