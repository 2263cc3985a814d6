"""Speed, memory and noiseless accuracy of the trial simulator (issue 2, "Validity and speed").

Targets: the ``tiny`` preset with 12 participants written in < 2 min on 2 cores; one ``standard``
participant with two sessions in < 1 min; peak memory < 4 GB. Accuracy: on noiseless data,
DIPY's tensor MD averaged in each ground-truth ROI mask is within 1% of ``md_true``.

Every run simulates the whole head (``--head full``, the default since issue 10: face, eyes,
neck, T1w field of view to the neck); the standard participant is also timed with ``--head
brain`` (the brain-only T1w of before) to show what the head costs.

Each measurement runs in a fresh child process (imports, template and atlas loading included),
which reports its own wall time and peak RSS. Timings are noisy when the machine is shared; the
load average is recorded with the results.

    python benchmarks/bench_simulate.py            # writes benchmarks/results/simulate.{md,json}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_TINY_S = 120.0
TARGET_STANDARD_PARTICIPANT_S = 60.0
TARGET_PEAK_GB = 4.0
NOISELESS_TOLERANCE = 0.01

_CHILD_PREAMBLE = """
import json, os, resource, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "1")
start = time.perf_counter()
"""
_CHILD_REPORT = """
usage = resource.getrusage(resource.RUSAGE_SELF)
children = resource.getrusage(resource.RUSAGE_CHILDREN)
peak_gb = max(usage.ru_maxrss, children.ru_maxrss) / 1024**2
cpu_s = usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime
result = {"wall_s": time.perf_counter() - start, "cpu_s": cpu_s, "peak_gb": peak_gb, **extra}
print("RESULT " + json.dumps(result))
"""


def run_child(body: str) -> dict:
    """Run ``body`` in a fresh Python; it must define a dict ``extra``."""
    code = _CHILD_PREAMBLE + textwrap.dedent(body) + _CHILD_REPORT
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def bench_tiny_trial(out: Path, n_participants: int, noiseless: bool, n_procs: int = 1) -> dict:
    flags = ["--noiseless"] if noiseless else []
    argv = [str(out), "--preset", "tiny", "--n-participants", str(n_participants), *flags]
    argv += ["--n-procs", str(n_procs)]
    return run_child(
        f"""
        from ketamine_dti.simulate.cli import main
        code = main({argv!r})
        extra = {{"exit_code": code}}
        """
    )


def bench_standard_participant(out: Path, noiseless: bool, head: str = "full") -> dict:
    """One standard participant, two sessions, written as the CLI writes it (incl. loading).

    Noiseless runs check the signal model against the truth masks of the undistorted grid, so
    they plant no susceptibility distortion (the standard preset's default is ``typical``,
    which displaces the amygdalae by millimetres: +4.7% MD error in those masks)."""
    distortion = "none" if noiseless else None
    return run_child(
        f"""
        from pathlib import Path
        from ketamine_dti.simulate import bids_writer
        from ketamine_dti.simulate.clinical import simulate_clinical
        options = bids_writer.make_options(
            {str(out)!r}, n_participants=3, preset="standard", noiseless={noiseless},
            head={head!r}, distortion={distortion!r},
        )
        trial = simulate_clinical(3, seed=options.seed, sessions=options.sessions)
        Path({str(out)!r}).mkdir(parents=True, exist_ok=True)
        bids_writer.write_top_level(options, trial)
        before = time.perf_counter()
        result = bids_writer.simulate_participant(options, trial, 0)
        bids_writer.write_ground_truth(options, trial, [result])
        extra = {{"participant_only_s": time.perf_counter() - before}}
        """
    )


def noiseless_errors(root: Path) -> list[dict]:
    """Relative error of DIPY's ROI-mean MD against md_true, per participant, session, ROI."""
    import nibabel as nib
    import numpy as np
    import pandas as pd
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    from ketamine_dti.rois import ROI_NAMES

    truth = root / "sourcedata" / "ground_truth"
    roi_md = pd.read_csv(truth / "roi_md.tsv", sep="\t").set_index(
        ["participant_id", "session_id", "roi"]
    )
    planted = json.loads((truth / "planted_effects.json").read_text())
    rules = planted["imaging"]["truth_mask_rule_used"]
    rows = []
    for dwi in sorted(root.glob("sub-*/ses-*/dwi/*_dwi.nii.gz")):
        participant, ses = dwi.parts[-4], dwi.parts[-3]
        stem = str(dwi)[: -len(".nii.gz")]
        gtab = gradient_table(np.loadtxt(stem + ".bval"), bvecs=np.loadtxt(stem + ".bvec").T)
        mask = truth / participant / ses / f"{participant}_{ses}_space-dwi_desc-truth_dseg.nii.gz"
        dseg = np.asarray(nib.load(mask).dataobj)
        fit = TensorModel(gtab).fit(np.asarray(nib.load(dwi).dataobj, float), mask=dseg > 0)
        for index, roi in enumerate(ROI_NAMES, start=1):
            inside = dseg == index
            expected = roi_md.loc[(participant, ses, roi), "md_true"]
            rows.append(
                {
                    "participant_id": participant,
                    "session_id": ses,
                    "roi": roi,
                    "n_voxels": int(inside.sum()),
                    "rule": rules[participant][ses][roi],
                    "relative_error": float(fit.md[inside].mean() / expected - 1),
                }
            )
    return rows


def summarise_errors(rows: list[dict]) -> dict:
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame["abs_error"] = frame.relative_error.abs()
    summary = frame.groupby("roi", sort=False).agg(
        mean_error=("relative_error", "mean"),
        max_abs_error=("abs_error", "max"),
        mean_voxels=("n_voxels", "mean"),
        fallback_sessions=("rule", lambda r: int((r != "pure").sum())),
        sessions=("rule", "size"),
    )
    return summary.reset_index().to_dict(orient="records")


def markdown(results: dict) -> str:
    lines = [
        "# Simulator benchmark",
        "",
        f"Machine: {results['machine']['cpus']} CPUs, load average before the run "
        f"{results['machine']['load_before']:.1f} (shared: timings are upper bounds).",
        "",
        "CPU time is user + system time of the process and its workers: on an idle machine a",
        "single-process run takes about that long; wall time here includes waiting for the CPU.",
        "Peak memory is the largest single process (workers each hold their own copy).",
        "",
        "| measurement | wall time (s) | CPU time (s) | peak memory (GB) | target |",
        "|---|---|---|---|---|",
    ]
    tiny_target = f"< {TARGET_TINY_S:.0f} s, < {TARGET_PEAK_GB:.0f} GB"
    standard_target = f"< {TARGET_STANDARD_PARTICIPANT_S:.0f} s, < {TARGET_PEAK_GB:.0f} GB"
    for key, title, target in (
        ("tiny_12", "tiny, 12 participants x 2 sessions (CLI, 1 process)", tiny_target),
        ("tiny_12_2procs", "tiny, 12 participants x 2 sessions (CLI, --n-procs 2)", tiny_target),
        ("standard_1", "standard, 1 participant x 2 sessions (incl. start-up)", standard_target),
        (
            "standard_1_brain",
            "standard, 1 participant, --head brain (before issue 10)",
            standard_target,
        ),
    ):
        row = results[key]
        lines.append(
            f"| {title} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | {row['peak_gb']:.2f} | "
            f"{target} |"
        )
    lines.append(
        f"| standard, the participant alone (template loaded) | "
        f"{results['standard_1']['participant_only_s']:.1f} | | | |"
    )
    for key, title in (
        ("noiseless_tiny", "tiny (4 mm), 12 participants x 2 sessions"),
        ("noiseless_standard", "standard (2 mm), 1 participant x 2 sessions"),
    ):
        lines += [
            "",
            f"## Noiseless accuracy, {title}",
            "",
            "DIPY TensorModel (WLS) MD averaged in each truth mask vs md_true.",
            "",
            "| ROI | mean error | max abs error | mean voxels | fallback sessions |",
            "|---|---|---|---|---|",
        ]
        for row in results[key]:
            lines.append(
                f"| {row['roi']} | {100 * row['mean_error']:+.2f}% | "
                f"{100 * row['max_abs_error']:.2f}% | {row['mean_voxels']:.1f} | "
                f"{row['fallback_sessions']}/{row['sessions']} |"
            )
    lines += ["", f"All within {100 * NOISELESS_TOLERANCE:.0f}%: {results['noiseless_ok']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0]},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["tiny_12"] = bench_tiny_trial(work / "tiny", 12, noiseless=False)
        print("tiny 12:", results["tiny_12"], flush=True)
        results["tiny_12_2procs"] = bench_tiny_trial(work / "tiny2", 12, False, n_procs=2)
        print("tiny 12, 2 processes:", results["tiny_12_2procs"], flush=True)
        results["standard_1"] = bench_standard_participant(work / "standard", noiseless=False)
        print("standard 1:", results["standard_1"], flush=True)
        results["standard_1_brain"] = bench_standard_participant(
            work / "standard_brain", noiseless=False, head="brain"
        )
        print("standard 1, brain only:", results["standard_1_brain"], flush=True)
        bench_tiny_trial(work / "tiny_noiseless", 12, noiseless=True)
        results["noiseless_tiny"] = summarise_errors(noiseless_errors(work / "tiny_noiseless"))
        bench_standard_participant(work / "standard_noiseless", noiseless=True)
        results["noiseless_standard"] = summarise_errors(
            noiseless_errors(work / "standard_noiseless")
        )
    worst = max(
        row["max_abs_error"] for row in results["noiseless_tiny"] + results["noiseless_standard"]
    )
    results["noiseless_ok"] = bool(worst < NOISELESS_TOLERANCE)
    results["machine"]["load_after"] = os.getloadavg()[0]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "simulate.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.results / "simulate.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
