"""Speed of the group level on a large simulated trial (issue 4: 1,000 participants < 30 s).

The trial's ROI tables, participants.tsv and phenotype TSVs are written to a temporary folder
on disk (not timed); then ``run_group_level`` runs exactly as the CLI calls it, figures and
HTML report included, with one BLAS thread. Repeats are timed separately; we report each.

Usage::

    python benchmarks/bench_group_speed.py                  # 1,000 participants, 3 repeats
    python benchmarks/bench_group_speed.py --participants 2000 --repeats 1 --mixed-model

Writes benchmarks/results/group_speed.{md,json}. Exit code 1 if the median exceeds the target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from ketamine_dti.group import run_group_level  # noqa: E402
from ketamine_dti.simulate.validation import simulate_trial_files  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_SECONDS = 30.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mixed-model", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="group-speed-") as tmp:
        start = time.perf_counter()
        config, _ = simulate_trial_files(
            Path(tmp), args.participants, "paper", np.random.default_rng(args.seed)
        )
        write_s = time.perf_counter() - start
        config = replace(config, mixed_model=args.mixed_model)
        with_figures, without_figures = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            group_dir = run_group_level(config)
            with_figures.append(time.perf_counter() - start)
            start = time.perf_counter()
            run_group_level(config, make_figures=False)
            without_figures.append(time.perf_counter() - start)
        run_group_level(config)  # the last run leaves the figures in place
        n_figures = len(list((group_dir / "figures").glob("*.png")))
        html_kb = (group_dir / "group_report.html").stat().st_size / 1024

    median = float(np.median(with_figures))
    # The target is for the default analysis; the optional mixed model is reported only.
    passed = median < TARGET_SECONDS or args.mixed_model
    load = os.getloadavg()
    result = {
        "passed": passed,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, load average {load[0]:.1f}",
        "participants": args.participants,
        "mixed_model": args.mixed_model,
        "target_s": TARGET_SECONDS,
        "with_figures_s": [round(t, 2) for t in with_figures],
        "without_figures_s": [round(t, 2) for t in without_figures],
        "median_with_figures_s": round(median, 2),
        "write_inputs_s": round(write_s, 2),
        "n_figures": n_figures,
        "report_kb": round(html_kb),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = "group_speed" + ("_mixed" if args.mixed_model else "")
    (args.results_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    command = f"python benchmarks/bench_group_speed.py --participants {args.participants} " + (
        f"--repeats {args.repeats}" + (" --mixed-model" if args.mixed_model else "")
    )
    report = "\n".join(
        [
            "# Group-level speed",
            "",
            f"Command: `{command}`",
            "",
            f"{result['date']}, {result['machine']} (shared machine: timings are noisy).",
            "",
            f"- {args.participants} participants x 2 sessions x 7 ROIs, 2 scales; "
            f"mixed model {'on' if args.mixed_model else 'off'}",
            f"- run_group_level with {n_figures} figures and the HTML report ({html_kb:.0f} kB): "
            + ", ".join(f"{t:.1f} s" for t in with_figures)
            + f" (median {median:.1f} s; target < {TARGET_SECONDS:.0f} s for the default "
            + "analysis: "
            + (
                "informational, mixed model on"
                if args.mixed_model
                else "PASS"
                if passed
                else "FAIL"
            )
            + ")",
            "- without figures: " + ", ".join(f"{t:.1f} s" for t in without_figures),
            f"- writing the inputs (not timed above): {write_s:.1f} s",
            "",
        ]
    )
    (args.results_dir / f"{stem}.md").write_text(report)
    print(report)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
