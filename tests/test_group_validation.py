"""Fast version of the many-trial validation (full one: benchmarks/bench_group_validation.py).

Trials are simulated from the clinical model, written as TSVs and analysed by run_group_level
(figures off). Fixed seeds; the tolerances are binomial, wide enough for 60 trials yet
tight enough that a miscalibrated test (e.g. a doubled false-positive rate) fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from ketamine_dti.simulate.validation import rejection_rates, run_trials

ALPHA = 0.05
N_NULL_TRIALS = 60
N_PAPER_TRIALS = 20
#: Per cell (scale x ROI): at most this many false positives in 60 trials; P(X >= 10) ~ 0.001
#: at the nominal rate.
MAX_FALSE_POSITIVES_PER_CELL = 9
#: Pooled over the 14 cells (840 tests), the rate must lie here (about +-3 SE around 0.05).
POOLED_RATE_BOUNDS = (0.03, 0.075)
#: Planted effects have power ~0.95; 14 of 20 or more (P(X < 14) < 0.001).
MIN_PLANTED_FOUND = 14


@pytest.mark.slow
def test_null_false_positive_rate_is_nominal() -> None:
    stats = run_trials(N_NULL_TRIALS, "null", seed=101)
    rates = rejection_rates(stats, "interaction", "group:delta_md", ALPHA)
    assert len(rates) == 14 and (rates.n_trials == N_NULL_TRIALS).all()
    assert (rates.rate * N_NULL_TRIALS).round().le(MAX_FALSE_POSITIVES_PER_CELL).all(), rates
    pooled = rates.rate.mean()
    assert POOLED_RATE_BOUNDS[0] <= pooled <= POOLED_RATE_BOUNDS[1], pooled
    # p-values under the null are uniform: Kolmogorov-Smirnov against U(0, 1).
    p = stats[(stats.model == "interaction") & (stats.term == "group:delta_md")].p_value
    assert scipy_stats.kstest(p.astype(float), "uniform").pvalue > 0.001


@pytest.mark.slow
def test_paper_planted_effects_are_found_with_their_sign() -> None:
    stats = run_trials(N_PAPER_TRIALS, "paper", seed=202)
    rates = rejection_rates(stats, "interaction", "group:delta_md", ALPHA).set_index(
        ["scale", "roi"]
    )
    found = (rates * N_PAPER_TRIALS).round()
    for scale, roi in [
        ("madrs", "ba10_left"),
        ("madrs", "amygdala_left"),
        ("qids_sr", "ba10_left"),
        ("qids_sr", "amygdala_left"),
    ]:
        assert found.loc[(scale, roi), "rate_positive"] >= MIN_PLANTED_FOUND, (scale, roi)
    for roi in ("hippocampus_left", "hippocampus_right"):
        assert found.loc[("madrs", roi), "rate_negative"] >= MIN_PLANTED_FOUND, roi
    pooled = rejection_rates(stats, "pooled", "delta_md", ALPHA).set_index(["scale", "roi"])
    assert (
        pooled.loc[(slice(None), "ba10_right"), "rate_positive"] * N_PAPER_TRIALS
        >= MIN_PLANTED_FOUND
    ).all()
    # Right BA10 is coupled in both arms, so it shows no group x dMD interaction.
    assert rates.loc[("madrs", "ba10_right"), "rate"] <= 0.25
    assert np.isfinite(stats.estimate.astype(float)).all()
