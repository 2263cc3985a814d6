"""Validate the group statistics on many simulated trials (issue 4, "Validation").

Each trial (98 participants, 2:1) is drawn from the simulator's clinical and true-MD model,
measured with 0.75% per-session ROI MD noise, written as participants.tsv, phenotype TSVs and
per-session ROI tables, and analysed by ``run_group_level`` from those files (figures off, the
only difference from the CLI). Checks:

- null scenario: false-positive rate of ``group:delta_md`` (p < .05) in [0.03, 0.07] for every
  ROI x scale;
- paper scenario: planted interactions (left BA10 and left amygdala on both scales;
  hippocampi on MADRS, opposite sign) found with the planted sign in >= 85% of trials; right
  BA10 found in the ``pooled`` model (delta_md, positive) in >= 85%; vACC interaction at the
  nominal rate (99% binomial interval contains 0.05);
- one trial's interaction estimates, SEs, t and p agree with numpy lstsq + t distribution to
  1e-8 (relative);
- realistic setting (the paper pattern at partial r 0.2, dMD measured at our pipeline's retest
  reliability; ``validation.effect_setting("realistic")``): the power of each planted
  interaction (p < .05 and p_fdr < .05, planted sign) agrees with the power planner's
  (``ketamine_dti.group.power``) within Monte-Carlo error.

Usage::

    python benchmarks/bench_group_validation.py     # 500 null + 300 paper + 200 realistic trials
    python benchmarks/bench_group_validation.py --null-trials 100 --paper-trials 60

Writes benchmarks/results/group_validation.{md,json}. Exit code 1 if a check fails.
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
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats as scipy_stats  # noqa: E402

from ketamine_dti.group import run_group_level  # noqa: E402
from ketamine_dti.group.power import PowerDesign, power_table  # noqa: E402
from ketamine_dti.simulate.clinical import SCALES  # noqa: E402
from ketamine_dti.simulate.validation import (  # noqa: E402
    MEASUREMENT_NOISE,
    REALISTIC_PARTIAL_R,
    REALISTIC_RELIABILITY,
    crosscheck_interaction,
    effect_setting,
    fast_temp_root,
    planted_rejection_rates,
    rejection_rates,
    run_trials,
    simulate_observed_trial,
    with_options,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
N_PARTICIPANTS = 98
ALPHA = 0.05
NULL_RATE_BOUNDS = (0.03, 0.07)
POWER_MIN = 0.85
#: Confidence of the binomial interval used for "vACC at the nominal rate".
NOMINAL_CONFIDENCE = 0.99
CROSSCHECK_TOLERANCE = 1e-8
#: Realistic setting: the App's power and the planner's may differ by this many standard errors.
REALISTIC_SE_TOLERANCE = 4.0
#: Planner replicates behind the realistic comparison.
PLANNER_SIMS = 10_000
#: (scale, roi, planted sign of group:delta_md) in the paper scenario.
PLANTED_INTERACTIONS = (
    ("madrs", "ba10_left", +1),
    ("madrs", "amygdala_left", +1),
    ("madrs", "hippocampus_left", -1),
    ("madrs", "hippocampus_right", -1),
    ("qids_sr", "ba10_left", +1),
    ("qids_sr", "amygdala_left", +1),
)


def binomial_interval(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Clopper-Pearson interval of a rate."""
    tail = (1 - confidence) / 2
    low = scipy_stats.beta.ppf(tail, successes, trials - successes + 1) if successes else 0.0
    high = (
        scipy_stats.beta.ppf(1 - tail, successes + 1, trials - successes)
        if successes < trials
        else 1.0
    )
    return float(low), float(high)


def check_null(stats: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    rates = rejection_rates(stats, "interaction", "group:delta_md", ALPHA)
    low, high = NULL_RATE_BOUNDS
    rates["pass"] = rates["rate"].between(low, high)
    pooled = rejection_rates(stats, "pooled", "delta_md", ALPHA)
    rates["pooled_delta_md_rate"] = pooled["rate"].to_numpy()
    return rates, bool(rates["pass"].all())


def check_paper(stats: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    interaction = rejection_rates(stats, "interaction", "group:delta_md", ALPHA).set_index(
        ["scale", "roi"]
    )
    pooled = rejection_rates(stats, "pooled", "delta_md", ALPHA).set_index(["scale", "roi"])
    rows = []
    for scale, roi, sign in PLANTED_INTERACTIONS:
        row = interaction.loc[(scale, roi)]
        found = row["rate_positive"] if sign > 0 else row["rate_negative"]
        rows.append(
            {
                "check": "planted interaction, planted sign",
                "scale": scale,
                "roi": roi,
                "rate": found,
                "wrong_sign_rate": row["rate_negative"] if sign > 0 else row["rate_positive"],
                "criterion": f">= {POWER_MIN}",
                "pass": found >= POWER_MIN,
            }
        )
    for scale in SCALES:
        row = pooled.loc[(scale, "ba10_right")]
        rows.append(
            {
                "check": "right BA10 in pooled (delta_md > 0)",
                "scale": scale,
                "roi": "ba10_right",
                "rate": row["rate_positive"],
                "wrong_sign_rate": row["rate_negative"],
                "criterion": f">= {POWER_MIN}",
                "pass": row["rate_positive"] >= POWER_MIN,
            }
        )
        row = interaction.loc[(scale, "vacc")]
        hits = round(row["rate"] * row["n_trials"])
        low, high = binomial_interval(hits, int(row["n_trials"]), NOMINAL_CONFIDENCE)
        rows.append(
            {
                "check": "vACC interaction at nominal rate",
                "scale": scale,
                "roi": "vacc",
                "rate": row["rate"],
                "wrong_sign_rate": float("nan"),
                "criterion": f"{NOMINAL_CONFIDENCE:.0%} CI [{low:.3f}, {high:.3f}] "
                f"contains {ALPHA}",
                "pass": low <= ALPHA <= high,
            }
        )
    table = pd.DataFrame(rows)
    return table, bool(table["pass"].all())


def check_realistic(stats: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, bool]:
    """Power of each planted interaction in the App's realistic trials against the planner's
    prediction for the same design (n, 2:1, coupling, reliability), with and without BH-FDR."""
    setting = effect_setting("realistic")
    rows = []
    for column, fdr in (("p_value", False), ("p_fdr", True)):
        app = planted_rejection_rates(stats, setting, ALPHA, column)
        design = PowerDesign(
            coupling_strength=setting.coupling_strength,
            reliability=REALISTIC_RELIABILITY,
            alpha=ALPHA,
            fdr=fdr,
            n_sims=PLANNER_SIMS,
            seed=seed,
        )
        planner = power_table([N_PARTICIPANTS], design).tests.set_index(["scale", "roi"])
        for row in app.itertuples(index=False):
            predicted = planner.loc[(row.scale, row.roi)]
            se = np.sqrt(
                predicted["power"] * (1 - predicted["power"]) / row.n_trials
                + predicted["power_se"] ** 2
            )
            rows.append(
                {
                    "p": column,
                    "scale": row.scale,
                    "roi": row.roi,
                    "app_power": row.power,
                    "planner_power": predicted["power"],
                    "difference_in_se": (row.power - predicted["power"]) / se,
                    "pass": abs(row.power - predicted["power"]) <= REALISTIC_SE_TOLERANCE * se,
                }
            )
    table = pd.DataFrame(rows)
    return table, bool(table["pass"].all())


def realistic_section(table: pd.DataFrame, ok: bool, n_trials: int) -> list[str]:
    """Markdown lines of the realistic comparison."""
    return [
        f"## Realistic setting, {n_trials} trials: power of the planted interactions, App vs "
        f"planner: {'PASS' if ok else 'FAIL'}",
        "",
        f"Partial r {REALISTIC_PARTIAL_R} (error-free dMD), dMD reliability "
        f"{REALISTIC_RELIABILITY:.3f} (per-session ROI MD noise "
        f"{effect_setting('realistic').noise:.2%}); power = share of trials with p < {ALPHA} "
        f"and the planted sign. Planner: {PLANNER_SIMS} replicates of the same design; "
        f"criterion |App - planner| <= {REALISTIC_SE_TOLERANCE:g} SE.",
        "",
        markdown_table(table),
        "",
    ]


def crosscheck(seed: int) -> dict[str, float]:
    """One trial through the App vs numpy lstsq + t distribution."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(dir=fast_temp_root()) as tmp:
        config, trial, roi_md = simulate_observed_trial(Path(tmp), N_PARTICIPANTS, "paper", rng)
        group_dir = run_group_level(config, make_figures=False)
        stats = pd.read_csv(group_dir / "stats.tsv", sep="\t", keep_default_na=False)
    return crosscheck_interaction(trial, roi_md, stats)


def markdown_table(frame: pd.DataFrame) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return "n/a" if np.isnan(value) else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--null-trials", type=int, default=500)
    parser.add_argument("--paper-trials", type=int, default=300)
    parser.add_argument("--realistic-trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20240524)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--robust-se", action="store_true", help="HC3 standard errors")
    args = parser.parse_args(argv)
    configure = with_options(robust_se=True) if args.robust_se else None
    stem = "group_validation" + ("_hc3" if args.robust_se else "")

    timings = {}
    cpu_start = time.process_time()
    start = time.perf_counter()
    null_stats = run_trials(args.null_trials, "null", seed=args.seed, configure=configure)
    timings["null_s"] = time.perf_counter() - start
    start = time.perf_counter()
    paper_stats = run_trials(args.paper_trials, "paper", seed=args.seed + 1, configure=configure)
    timings["paper_s"] = time.perf_counter() - start
    start = time.perf_counter()
    realistic_stats = run_trials(
        args.realistic_trials, "realistic", seed=args.seed + 3, configure=configure
    )
    timings["realistic_s"] = time.perf_counter() - start
    start = time.perf_counter()
    differences = crosscheck(args.seed + 2)
    timings["crosscheck_s"] = time.perf_counter() - start
    timings["cpu_s"] = time.process_time() - cpu_start

    null_table, null_ok = check_null(null_stats)
    paper_table, paper_ok = check_paper(paper_stats)
    realistic_table, realistic_ok = check_realistic(realistic_stats, args.seed + 4)
    cross_ok = max(differences.values()) <= CROSSCHECK_TOLERANCE
    passed = null_ok and paper_ok and cross_ok and realistic_ok

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    n_trials = args.null_trials + args.paper_trials + args.realistic_trials
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, load average {load[0]:.1f}",
        "python": sys.version.split()[0],
        "n_participants": N_PARTICIPANTS,
        "measurement_noise_per_session": MEASUREMENT_NOISE,
        "null_trials": args.null_trials,
        "paper_trials": args.paper_trials,
        "realistic_trials": args.realistic_trials,
        "seed": args.seed,
        "standard_errors": "HC3" if args.robust_se else "OLS",
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "seconds_per_trial": round(
            (timings["null_s"] + timings["paper_s"] + timings["realistic_s"]) / n_trials, 3
        ),
        "cpu_seconds_per_trial": round(timings["cpu_s"] / (n_trials + 1), 3),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "passed": passed,
        "meta": meta,
        "null": {"passed": null_ok, "rates": null_table.to_dict(orient="records")},
        "paper": {"passed": paper_ok, "checks": paper_table.to_dict(orient="records")},
        "realistic": {
            "passed": realistic_ok,
            "partial_r": REALISTIC_PARTIAL_R,
            "reliability": REALISTIC_RELIABILITY,
            "planner_sims": PLANNER_SIMS,
            "power": realistic_table.to_dict(orient="records"),
        },
        "crosscheck": {
            "passed": cross_ok,
            "max_relative_difference": differences,
            "tolerance": CROSSCHECK_TOLERANCE,
        },
    }
    (args.results_dir / f"{stem}.json").write_text(
        json.dumps(result, indent=2, default=float) + "\n"
    )
    report = [
        "# Group-level statistical validation",
        "",
        f"Command: `python benchmarks/bench_group_validation.py --null-trials {args.null_trials} "
        f"--paper-trials {args.paper_trials} --realistic-trials {args.realistic_trials} "
        f"--seed {args.seed}" + (" --robust-se`" if args.robust_se else "`"),
        "",
        f"{meta['date']}, {meta['machine']} (shared machine: timings are noisy). "
        f"{N_PARTICIPANTS} participants per trial (2:1), ROI MD measurement noise "
        f"{MEASUREMENT_NOISE:.2%} per session; every trial analysed by run_group_level from its "
        f"TSV files (figures off); {meta['standard_errors']} standard errors. Time: null "
        f"{timings['null_s']:.0f} s, paper "
        f"{timings['paper_s']:.0f} s, realistic {timings['realistic_s']:.0f} s "
        f"({meta['seconds_per_trial']} s per trial wall, "
        f"{meta['cpu_seconds_per_trial']} s CPU).",
        "",
        f"**Overall: {'PASS' if passed else 'FAIL'}**",
        "",
        f"## Null scenario, {args.null_trials} trials: FPR of group:delta_md at alpha = {ALPHA} "
        f"(criterion {NULL_RATE_BOUNDS[0]}-{NULL_RATE_BOUNDS[1]}): "
        f"{'PASS' if null_ok else 'FAIL'}",
        "",
        markdown_table(null_table),
        "",
        f"## Paper scenario, {args.paper_trials} trials: {'PASS' if paper_ok else 'FAIL'}",
        "",
        markdown_table(paper_table),
        "",
        *realistic_section(realistic_table, realistic_ok, args.realistic_trials),
        f"## Cross-check (numpy lstsq + t distribution), one trial: "
        f"{'PASS' if cross_ok else 'FAIL'}",
        "",
        "Largest relative difference over the 14 interaction models: "
        + ", ".join(f"{k} {v:.1e}" for k, v in differences.items())
        + f" (tolerance {CROSSCHECK_TOLERANCE:g}).",
        "",
    ]
    (args.results_dir / f"{stem}.md").write_text("\n".join(report))
    print("\n".join(report))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
