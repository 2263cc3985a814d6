"""The clinical model's skewed symptom changes (``symptom_change="lognormal"``), used by the null
calibration benchmark: off by default, recorded in the truth, skewed towards improvement, and
otherwise the same trial (same draws, same correlations)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ketamine_dti.simulate.clinical import SCORE_CHANGE_CORRELATION, simulate_clinical

N_LARGE = 20_000


def _changes(trial, scale: str) -> np.ndarray:
    """Score change per participant, in participants.tsv order (pivot sorts ids as text)."""
    scores = trial.scores.pivot(index="participant_id", columns="session_id", values=scale)
    change = scores["ses-24h"] - scores["ses-baseline"]
    return change.loc[trial.participants.participant_id].to_numpy(dtype=float)


def test_default_is_normal_and_unchanged() -> None:
    default = simulate_clinical(30, "null", seed=3)
    normal = simulate_clinical(30, "null", seed=3, symptom_change="normal")
    assert default.scores.equals(normal.scores) and default.gm_md.equals(normal.gm_md)
    assert default.planted["symptom_change"]["distribution"] == "normal"


def test_lognormal_is_skewed_towards_improvement_with_the_same_moments() -> None:
    normal = simulate_clinical(N_LARGE, "null", seed=1)
    skewed = simulate_clinical(N_LARGE, "null", seed=1, symptom_change="lognormal")
    assert skewed.participants.equals(normal.participants)  # the same draws before the latent
    assert skewed.planted["symptom_change"]["distribution"] == "lognormal"
    treated = (skewed.participants.group == "ketamine").to_numpy()
    madrs, qids = _changes(skewed, "madrs_total"), _changes(skewed, "qids_sr_total")
    for change in (madrs, qids):
        assert stats.skew(change[treated]) < -0.5 and stats.skew(change[~treated]) < -0.5
        assert abs(stats.skew(_changes(normal, "madrs_total")[treated])) < 0.1
    reference = _changes(normal, "madrs_total")
    assert madrs.mean() == pytest.approx(reference.mean(), abs=0.3)  # points
    assert madrs.std() == pytest.approx(reference.std(), rel=0.1)  # less: clipping at 0
    # the latents keep their correlation; clipping the long tail at the scale floor lowers the
    # observed one (0.49 -> 0.38 within the ketamine arm)
    observed = np.corrcoef(madrs[treated], qids[treated])[0, 1]
    normal_qids = _changes(normal, "qids_sr_total")
    expected = np.corrcoef(reference[treated], normal_qids[treated])[0, 1]
    assert expected == pytest.approx(SCORE_CHANGE_CORRELATION, abs=0.03)
    assert expected - 0.15 < observed < expected


def test_unknown_symptom_change_is_an_error() -> None:
    with pytest.raises(ValueError, match="symptom_change='cauchy'; use one of normal, lognormal"):
        simulate_clinical(6, "null", symptom_change="cauchy")
