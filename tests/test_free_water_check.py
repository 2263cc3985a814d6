"""The group level's free-water check (``group.free_water_check.compare_spreads``): the spread
of dMD/MD under free-water-corrected and plain MD, per ROI, over the same participants."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ketamine_dti.group.free_water_check import compare_spreads


def _md(baseline: np.ndarray, followup: np.ndarray, roi: str = "vacc") -> pd.DataFrame:
    names = ["roi", "session"]
    columns = pd.MultiIndex.from_product([[roi], ["baseline", "followup"]], names=names)
    index = [f"sub-{i:02d}" for i in range(len(baseline))]
    return pd.DataFrame(np.c_[baseline, followup], index=index, columns=columns)


def test_spreads_ratio_and_correlation_follow_the_changes():
    rng = np.random.default_rng(4)
    baseline = rng.uniform(0.8e-3, 0.9e-3, 30)
    plain_change = rng.normal(0.0, 0.02, 30)  # 2% SD of dMD/MD
    plain = _md(baseline, baseline * (1 + plain_change))
    # a correction that scales each session by its own factor keeps nothing of the plain spread
    # but the same shape: identical relative changes -> ratio 1, r 1
    scaled = _md(0.9 * baseline, 0.9 * baseline * (1 + plain_change))
    same = compare_spreads(scaled, plain, ("vacc",)).iloc[0]
    assert same.n == 30
    assert np.isclose(same.sd_plain_pct, 100 * np.std(plain_change, ddof=1))
    assert np.isclose(same.sd_ratio, 1.0) and np.isclose(same.r, 1.0)
    # independent noise of the correction (the b0 prior's) adds spread and lowers r
    noisy_change = plain_change + rng.normal(0.0, 0.02, 30)
    noisy = compare_spreads(_md(baseline, baseline * (1 + noisy_change)), plain, ("vacc",))
    assert 1.2 < noisy.sd_ratio.iloc[0] < 1.8 and 0.4 < noisy.r.iloc[0] < 0.9
    # removing half of a CSF-driven change removes spread: ratio ~0.5
    halved = compare_spreads(_md(baseline, baseline * (1 + plain_change / 2)), plain, ("vacc",))
    assert np.isclose(halved.sd_ratio.iloc[0], 0.5, atol=0.01)


def test_participants_missing_a_session_or_a_measure_are_left_out():
    baseline = np.full(5, 0.8e-3)
    plain = _md(baseline, baseline * np.array([1.01, 0.99, 1.02, 0.98, 1.0]))
    corrected = plain.copy()
    corrected.iloc[0, 1] = np.nan  # follow-up corrected MD missing
    plain.iloc[1, 0] = np.nan  # baseline plain MD missing
    row = compare_spreads(corrected, plain, ("vacc",)).iloc[0]
    assert row.n == 3
    few = compare_spreads(corrected.iloc[:3], plain.iloc[:3], ("vacc",)).iloc[0]
    assert few.n == 1 and np.isnan(few.sd_ratio) and np.isnan(few.r)
