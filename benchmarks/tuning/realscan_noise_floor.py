#!/usr/bin/env python
"""Analysis: how much of the real pair's PA vs AP disagreement is thermal noise?

Why: the PA and AP series of the real Prisma pair image the same brain minutes apart, so their
per-ROI md_mean disagreement (``bench_realscan.py``: median 2.3% with BBR, session 41) is the
App's error. But part of any error is the scan's own noise, which no pipeline removes: 20
directions at b = 2500 with one b0, 3 mm voxels, ROIs of 80-290 voxels. Only the rest is
something to correct (distortion, registration, partial volume).

Each run adds fresh noise of the scan's own size to both DWI series and reruns the App as
``bench_realscan.py`` does:

- sigma: the App's MP-PCA estimate (``dwi.denoise.mppca``, patch radius 2) on each series,
  voxelwise in its nonzero voxels (the scanner zeroed the background), median-filtered;
- the magnitude stays Rician: ``M' = sqrt((M + sigma n1)^2 + (sigma n2)^2)`` with n1, n2
  standard normal (seeded), rounded to the stored integers; zeros stay zero;
- the change of each ROI's md_mean from the unperturbed run then has the SD of that ROI's
  noise at the scan's noise level (the original noise is common to both runs); its mean over
  seeds is the bias of adding Rician noise, which is removed before the SD is taken.

Two series with per-ROI noise SDs s_PA and s_AP disagree by noise alone with a median
|difference| of 0.674 x sqrt(s_PA^2 + s_AP^2) (a normal difference). That is compared per ROI
with the observed disagreement.

Usage::

    python benchmarks/tuning/realscan_noise_floor.py OUT --source DIR --reference BENCH_OUT
        [--seeds 1 2 3 4]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_realscan import SESSIONS, figures, run  # noqa: E402
from numerical_stability import perturbed_source, session_tables  # noqa: E402

from ketamine_dti.dwi.denoise import mppca  # noqa: E402

#: Median filter (voxels) of the MP-PCA sigma map: its patch estimates scatter.
SIGMA_SMOOTHING_VOXELS = 5
#: Median |N(0, 1)|: the median absolute value of a normal difference, in its SDs.
MEDIAN_ABS_NORMAL = 0.6745


def noise_maps(source: Path) -> dict[str, np.ndarray]:
    """Per DWI series (file name): the voxelwise noise SD of its stored values."""
    maps = {}
    for path in sorted(source.glob("*_dwi.nii.gz")):
        raw = np.asanyarray(nib.load(path).dataobj).astype(np.float32)
        inside = raw.min(axis=3) > 0
        _, sigma = mppca(raw, inside)
        sigma = np.where(np.isfinite(sigma), sigma, np.nanmedian(sigma))
        maps[path.name] = ndimage.median_filter(sigma, size=SIGMA_SMOOTHING_VOXELS)
    return maps


def rician_noise(seed: int, sigmas: dict[str, np.ndarray]):
    """A perturbation adding Rician noise of ``sigmas[name]`` to each series' magnitude."""
    rng = np.random.default_rng(seed)

    def perturb(raw: np.ndarray, name: str) -> np.ndarray:
        sigma = sigmas[name][..., None]
        real = raw + sigma * rng.standard_normal(raw.shape)
        imaginary = sigma * rng.standard_normal(raw.shape)
        noisy = np.rint(np.hypot(real, imaginary))
        noisy = np.clip(noisy, 0, np.iinfo(raw.dtype).max)
        return np.where(raw > 0, noisy, 0).astype(raw.dtype)

    return perturb


def summary(reference: Path, runs: dict[int, Path]) -> dict:
    """Per session and ROI the noise SD (%) of md_mean; per ROI the disagreement it implies."""
    ref_tables = session_tables(reference)
    tables = [session_tables(out) for out in runs.values()]
    changes = {
        session: np.array(
            [100 * (t[session]["md_mean"] / ref_tables[session]["md_mean"] - 1) for t in tables]
        )
        for session in SESSIONS
    }
    rois = list(ref_tables["baseline"].index)
    result: dict = {"rois": {}, "seeds": sorted(runs)}
    observed = figures(reference)["rois"]
    for index, roi in enumerate(rois):
        entry = {}
        for session in SESSIONS:
            values = changes[session][:, index]
            entry[f"bias_pct_{session}"] = float(np.mean(values))
            entry[f"noise_sd_pct_{session}"] = float(np.std(values, ddof=1))
        spread = np.hypot(entry["noise_sd_pct_baseline"], entry["noise_sd_pct_24h"])
        entry["noise_median_disagreement_pct"] = float(MEDIAN_ABS_NORMAL * spread)
        disagreement = observed[roi]["disagreement"]
        entry["observed_disagreement_pct"] = None if disagreement is None else 100 * disagreement
        result["rois"][roi] = entry
    expected = [e["noise_median_disagreement_pct"] for e in result["rois"].values()]
    seen = [e["observed_disagreement_pct"] for e in result["rois"].values()]
    result["median_noise_disagreement_pct"] = float(np.median(expected))
    result["median_observed_disagreement_pct"] = float(
        np.median([value for value in seen if value is not None])
    )
    return result


def markdown(result: dict) -> str:
    lines = [
        "# The real Prisma pair: PA vs AP disagreement against the scan's own noise",
        "",
        f"Seeds of the added noise: {result['seeds']}. Per ROI: the SD (over seeds, its mean "
        "removed) of md_mean's change when noise of the scan's own size is added to a series; "
        "the median |PA - AP| that noise alone gives; the disagreement observed.",
        "",
        "| ROI | noise SD PA | noise SD AP | bias PA / AP | noise alone: median disagreement "
        "| observed |",
        "|---|---|---|---|---|---|",
    ]
    for roi, e in result["rois"].items():
        observed = e["observed_disagreement_pct"]
        lines.append(
            f"| {roi} | {e['noise_sd_pct_baseline']:.2f}% | {e['noise_sd_pct_24h']:.2f}% | "
            f"{e['bias_pct_baseline']:+.2f} / {e['bias_pct_24h']:+.2f}% | "
            f"{e['noise_median_disagreement_pct']:.2f}% | "
            + ("n/a" if observed is None else f"{observed:.2f}%")
            + " |"
        )
    lines += [
        "",
        f"Median over ROIs: noise alone {result['median_noise_disagreement_pct']:.2f}%, observed "
        f"{result['median_observed_disagreement_pct']:.2f}%.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--source", type=Path, required=True, help="the real-scan folder")
    parser.add_argument("--reference", type=Path, required=True, help="bench_realscan OUT")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--nprocs", type=int, default=2)
    args = parser.parse_args(argv)
    out_dir = args.out_dir.absolute()
    sigmas = noise_maps(args.source.absolute())
    runs = {}
    for seed in args.seeds:
        run_dir = out_dir / f"seed{seed}"
        if not (run_dir / "out").exists():
            source = perturbed_source(
                args.source.absolute(), out_dir / f"source_seed{seed}", rician_noise(seed, sigmas)
            )
            status = run(run_dir, source, args.nprocs, "auto", None)
            if status["exit_code"] != 0:
                raise SystemExit(f"seed {seed}: the App exited {status['exit_code']}")
        runs[seed] = run_dir / "out"
    result = summary(args.reference / "out", runs)
    result["sigma_median"] = {name: float(np.median(m)) for name, m in sigmas.items()}
    text = markdown(result) + "\nMP-PCA sigma, median: " + json.dumps(result["sigma_median"])
    (out_dir / "realscan_noise_floor.json").write_text(json.dumps(result, indent=2))
    (out_dir / "realscan_noise_floor.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
