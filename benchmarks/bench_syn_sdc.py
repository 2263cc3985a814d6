"""Fieldmap-less SyN-SDC field recovery on simulated sessions, per session.

Usage:

    python benchmarks/bench_syn_sdc.py OUT_DIR [--n-participants 3] [--seed 7] [--preset tiny]

Simulates a trial with ``typical`` distortion (the simulator's dipole model shares no code with
the estimator), then for every session: the mean raw b0, the App's rigid b0 -> T1w
registration to the T1w brain (the true T1w brain mask), and ``EstimateSynField``, as
``tests/test_syn_sdc.py`` does for one session. Prints, per session, the median and 90th
percentile of |estimated - true| inside the T1w brain mask on the b0 grid, as % of the true
field's 99th percentile there, for the SyN field and for no correction (a zero field), and the
seconds of the SyN estimate. Results also go to OUT_DIR/bench_syn_sdc.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from test_syn_sdc import field_errors, session_inputs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from ketamine_dti.interfaces.fieldmap import EstimateSynField
    from ketamine_dti.simulate.cli import main as simulate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-participants", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args(argv)
    root = args.out_dir / "bids"
    if not root.exists():
        simulate([str(root), "--preset", args.preset, "--n-participants",
                  str(args.n_participants), "--seed", str(args.seed), "--distortion",
                  "typical"])  # fmt: skip
    rows = []
    for folder in sorted(root.glob("sub-*/ses-*")):
        subject, session = folder.parent.name[4:], folder.name[4:]
        work = args.out_dir / "work" / f"{subject}_{session}"
        work.mkdir(parents=True, exist_ok=True)
        inputs, truth = session_inputs(root, work, subject, session)
        started = time.perf_counter()
        result = EstimateSynField(**inputs).run(cwd=str(work))
        seconds = time.perf_counter() - started
        field = nib.load(result.outputs.field_file).get_fdata()
        inside = nib.load(work / "t1w_mask_on_b0.nii.gz").get_fdata() > 0
        syn, zero = field_errors(field, truth, inside), field_errors(0 * truth, truth, inside)
        rows.append({
            "session": f"sub-{subject}_ses-{session}",
            "p99_hz": float(np.percentile(np.abs(truth[inside]), 99)),
            "syn_median_pct": 100 * syn[0], "syn_p90_pct": 100 * syn[1],
            "zero_median_pct": 100 * zero[0], "zero_p90_pct": 100 * zero[1],
            "seconds": seconds,
        })  # fmt: skip
        print(" ".join(f"{k} {v:.1f}" if isinstance(v, float) else v for k, v in rows[-1].items()))
    (args.out_dir / "bench_syn_sdc.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
