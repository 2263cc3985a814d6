#!/usr/bin/env python
"""Analysis: would leaving out the ROI points that susceptibility distortion compressed or
stretched severely, in every session alike, bring two scans of one brain closer?

Why: on the real Prisma pair (``bench_realscan.py``: the PA series as one session, the AP
series as the other) md_mean disagrees by 2.5% (median ROI) and by 8.4% in BA10 left, where
12-13% of the ROI's points have a susceptibility Jacobian |J - 1| > ``rois.SEVERE_JACOBIAN``.
A compressed voxel's signal comes from a longer stretch of tissue along the phase-encoding axis
(a blur the correction cannot undo) and a stretched one's from fewer acquired voxels, and the
two series are compressed in opposite places. The ROI table reports that share
(``sdc_severe_fraction``) but averages those points. A rule that drops a point in every session
when any session's Jacobian there is severe keeps one point set for all sessions and never
looks at MD.

This reads a finished run's ``sample_rois`` step (each session's ROI points with their MD,
Jacobian and the App's rule) and recomputes md_mean with ``rois.longitudinal_statistics``, the
App's own function, as it is and with the rule at several thresholds (the App's 0.5 first; the
others are a sensitivity check, not a choice: this is one scan pair). Per ROI: the points
averaged and the disagreement between the sessions, 100 * |b / a - 1|.

Usage (OUT from ``bench_realscan.py OUT``, or any run whose work folder is kept)::

    python benchmarks/tuning/severe_distortion.py OUT/work [--thresholds 0.5 0.3 0.2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_participant import load_samples  # noqa: E402


def session_samples(work: Path) -> dict[str, list[dict]]:
    """Per participant (workflow name), its sessions' ROI samples in session order (the npz of
    each ``sample_rois`` step, as the App saved them)."""
    found: dict[str, dict[str, dict]] = {}
    for path in sorted(work.rglob("sample_rois/roi_samples.npz")):
        session, participant = path.parts[-3], path.parts[-4]
        found.setdefault(participant, {})[session] = load_samples(path)
    return {who: [sessions[s] for s in sorted(sessions)] for who, sessions in found.items()}


def without_severe(samples: list[dict], threshold: float | None) -> list[dict]:
    """The sessions' samples with every point whose Jacobian is off 1 by more than
    ``threshold`` in any session taken out of the brain mask of all (None: unchanged)."""
    if threshold is None:
        return samples
    severe = np.logical_or.reduce(
        [np.abs(np.nan_to_num(s["jacobian"], nan=1.0) - 1.0) > threshold for s in samples]
    )
    return [s | {"in_brain": s["in_brain"] & ~severe} for s in samples]


def main(argv=None) -> int:
    from ketamine_dti.rois import SEVERE_JACOBIAN, longitudinal_statistics

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="the run's work folder")
    parser.add_argument("--thresholds", type=float, nargs="*", default=[SEVERE_JACOBIAN, 0.3])
    args = parser.parse_args(argv)
    rows = []
    for participant, samples in session_samples(args.work).items():
        if len(samples) != 2 or "jacobian" not in samples[0]:
            print(f"{participant}: {len(samples)} sessions or no Jacobian; skipped")
            continue
        for threshold in [None, *args.thresholds]:
            tables, averaged = longitudinal_statistics(without_severe(samples, threshold))
            first, second = (table.set_index("roi") for table in tables)
            for roi in first.index:
                label = first.loc[roi, "index"]
                change = second.loc[roi, "md_mean"] / first.loc[roi, "md_mean"] - 1
                rows.append({
                    "participant": participant,
                    "rule": "as the App" if threshold is None else f"J within 1 +- {threshold:g}",
                    "roi": roi,
                    "points": int((averaged[0] & (samples[0]["label"] == label)).sum()),
                    "disagreement_pct": 100 * abs(change),
                })  # fmt: skip
    table = pd.DataFrame(rows)
    if table.empty:
        print("no participant with two sessions and a Jacobian")
        return 1
    for participant, part in table.groupby("participant"):
        cells = part.assign(
            cell=[
                f"{p} ({d:.2f}%)" for p, d in zip(part.points, part.disagreement_pct, strict=True)
            ]
        )
        print(f"\n{participant}: per ROI, points averaged (disagreement between the sessions)")
        print(cells.pivot(index="roi", columns="rule", values="cell").to_markdown())
        median = part.groupby("rule").disagreement_pct.median().round(2)
        print("median disagreement over the ROIs (%): " + ", ".join(
            f"{rule} {value}" for rule, value in median.items()
        ))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
