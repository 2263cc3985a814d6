"""Speed of the group level's permutation inference (issue 14: 5,000 Freedman-Lane permutations
of every OLS term; 98 participants <= 20 s and 1,000 participants <= 2 min on 2 cores).

For each trial size a simulated trial's TSVs are written to a temporary folder (not timed).
Then, with the analysis table and the statsmodels fits already done, the permutation step
(``add_permutation_p``: designs, permutations, all statistics, p_perm, FDR and max-T) is timed
on its own, and the whole ``run_group_level`` (without figures) with and without it.

Usage::

    python benchmarks/bench_permutation.py                      # 98 and 1,000, 3 repeats
    python benchmarks/bench_permutation.py --participants 98 --repeats 1 --robust-se

Writes benchmarks/results/permutation_speed.{md,json}. Exit code 1 if a median is over target.
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


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, nargs="+", default=[98, 1000])
    parser.add_argument("--permutations", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads (the target: 2)")
    parser.add_argument("--robust-se", action="store_true", help="HC3 t (informational)")
    parser.add_argument("--fwer", choices=["none", "maxt"], default="maxt")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    return parser.parse_args(argv)


ARGS = _parse(None if __name__ == "__main__" else [])
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, str(ARGS.threads))  # before numpy is imported

import numpy as np  # noqa: E402

from ketamine_dti.group import run_group_level  # noqa: E402
from ketamine_dti.group.changes import build_analysis_table  # noqa: E402
from ketamine_dti.group.inputs import load_inputs  # noqa: E402
from ketamine_dti.group.models import fit_group_models  # noqa: E402
from ketamine_dti.group.multiple_comparisons import add_fdr  # noqa: E402
from ketamine_dti.group.permutation import add_permutation_p  # noqa: E402

#: Targets of issue 14, seconds, by number of participants (the permutation step).
TARGETS_S = {98: 20.0, 1000: 120.0}


def _time_size(n_participants: int, args: argparse.Namespace) -> dict:
    from ketamine_dti.simulate.validation import simulate_trial_files

    with tempfile.TemporaryDirectory(prefix="permutation-speed-") as tmp:
        config, _ = simulate_trial_files(
            Path(tmp), n_participants, "paper", np.random.default_rng(args.seed)
        )
        config = replace(config, robust_se=args.robust_se, fwer=args.fwer)
        permuted = replace(config, permutations=args.permutations)
        inputs = load_inputs(permuted)
        table = build_analysis_table(inputs, permuted)
        stats = add_fdr(fit_group_models(table, permuted, inputs.rois))
        step, with_perm, without_perm = [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = add_permutation_p(stats, table, permuted, inputs.rois, inputs.blocks)
            step.append(time.perf_counter() - start)
            start = time.perf_counter()
            run_group_level(permuted, make_figures=False)
            with_perm.append(time.perf_counter() - start)
            start = time.perf_counter()
            run_group_level(config, make_figures=False)
            without_perm.append(time.perf_counter() - start)
    n_tests = int(out["p_perm"].notna().sum())
    target = TARGETS_S.get(n_participants)
    median = float(np.median(step))
    return {
        "participants": n_participants,
        "tests": n_tests,
        "fits": int(out[out["p_perm"].notna()].groupby(["scale", "roi", "model"]).ngroups),
        "permutation_step_s": [round(t, 2) for t in step],
        "median_permutation_step_s": round(median, 2),
        "group_level_with_permutations_s": [round(t, 2) for t in with_perm],
        "group_level_without_permutations_s": [round(t, 2) for t in without_perm],
        "target_s": target,
        "passed": None if target is None else median <= target,
    }


def main() -> int:
    args = ARGS
    sizes = [_time_size(n, args) for n in args.participants]
    passed = all(size["passed"] is not False for size in sizes)
    load = os.getloadavg()
    result = {
        "passed": passed,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, load average {load[0]:.1f}",
        "blas_threads": args.threads,
        "permutations": args.permutations,
        "statistic": "HC3 t" if args.robust_se else "OLS t",
        "fwer": args.fwer,
        "sizes": sizes,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = "permutation_speed" + ("_hc3" if args.robust_se else "")
    (args.results_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    command = (
        "python benchmarks/bench_permutation.py --participants "
        + " ".join(map(str, args.participants))
        + f" --permutations {args.permutations} --repeats {args.repeats} --threads {args.threads}"
        + f" --fwer {args.fwer}"
        + (" --robust-se" if args.robust_se else "")
    )
    lines = [
        "# Permutation inference speed",
        "",
        f"Command: `{command}`",
        "",
        f"{result['date']}, {result['machine']}, {args.threads} BLAS thread(s) (shared machine: "
        "timings are noisy).",
        "",
        f"{args.permutations} Freedman-Lane permutations ({result['statistic']}, --fwer "
        f"{args.fwer}) of every non-intercept term of every OLS fit (2 scales x 7 ROIs: "
        "interaction, pooled, both arms; treatment_md per ROI; treatment_score per scale).",
        "",
        "| participants | fits | tests | permutation step (s) | median (s) | target (s) | "
        "group level with / without permutations (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        verdict = (
            "n/a"
            if size["target_s"] is None
            else f"<= {size['target_s']:g}: {'PASS' if size['passed'] else 'FAIL'}"
        )
        lines.append(
            f"| {size['participants']} | {size['fits']} | {size['tests']} | "
            + ", ".join(f"{t:.2f}" for t in size["permutation_step_s"])
            + f" | {size['median_permutation_step_s']:.2f} | {verdict} | "
            + ", ".join(f"{t:.1f}" for t in size["group_level_with_permutations_s"])
            + " / "
            + ", ".join(f"{t:.1f}" for t in size["group_level_without_permutations_s"])
            + " |"
        )
    lines += [
        "",
        "The permutation step: the designs of every fit, one (B x n) permutation table within "
        "blocks, restricted per set of participants, all t statistics by batched products with "
        "[Q, r], p_perm, p_perm_fdr and max-T. Inputs were written before timing.",
        "",
    ]
    report = "\n".join(lines)
    (args.results_dir / f"{stem}.md").write_text(report)
    print(report)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
