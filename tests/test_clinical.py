"""Simulated clinical and MD model: allocation, ranges, determinism, planted effects."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ketamine_dti.rois import ROI_NAMES
from ketamine_dti.simulate.clinical import (
    SCORE_RANGES,
    ClinicalTrial,
    allocate_arms,
    simulate_clinical,
)

#: Large enough that sample correlations are within a few hundredths of the planted value.
N_LARGE = 9000
#: Sample correlations may deviate from the planted value by this many standard errors.
CORRELATION_SE_TOLERANCE = 4.0


def _tolerance(n: int) -> float:
    """Bound on |sample - planted| correlation for n participants (SE about 1/sqrt(n))."""
    return CORRELATION_SE_TOLERANCE / np.sqrt(n)


def _changes(trial: ClinicalTrial) -> pd.DataFrame:
    """One row per participant: arm, dScore per scale, fractional dMD per ROI."""
    scores = trial.scores.pivot(index="participant_id", columns="session_id")
    md = trial.gm_md.pivot_table(
        index="participant_id", columns=["roi", "session_id"], values="md_true"
    )
    out = trial.participants.set_index("participant_id")[["group"]].copy()
    for scale in SCORE_RANGES:
        col = f"{scale}_total"
        out[f"d_{scale}"] = scores[(col, "ses-24h")] - scores[(col, "ses-baseline")]
    for roi in ROI_NAMES:
        out[f"d_{roi}"] = md[(roi, "ses-24h")] / md[(roi, "ses-baseline")] - 1.0
    return out


@pytest.fixture(scope="module")
def paper_large() -> ClinicalTrial:
    return simulate_clinical(N_LARGE, "paper", seed=11)


@pytest.fixture(scope="module")
def null_large() -> ClinicalTrial:
    return simulate_clinical(N_LARGE, "null", seed=12)


@pytest.mark.parametrize("n", [2, 5, 12, 98, 1000])
def test_allocation_is_two_to_one_within_a_block(n: int) -> None:
    rng = np.random.default_rng(n)
    arms = allocate_arms(n, rng)
    n_treated = int(np.sum(arms == "ketamine"))
    assert set(arms) <= {"ketamine", "saline"}
    # Permuted blocks of 3 or 6: the running imbalance never exceeds 4/3 of a participant.
    assert abs(n_treated - 2 * n / 3) <= 4 / 3 + 1e-12
    running = np.cumsum(arms == "ketamine") - 2 * np.arange(1, n + 1) / 3
    assert np.all(np.abs(running) <= 4 / 3 + 1e-12)
    if n % 3 == 0:
        assert n_treated == 2 * n // 3


def test_allocation_varies_between_seeds() -> None:
    orders = {tuple(allocate_arms(24, np.random.default_rng(seed))) for seed in range(10)}
    assert len(orders) > 5


def test_tables_have_the_contract_columns_and_valid_ranges() -> None:
    trial = simulate_clinical(98, "paper", seed=3)
    p = trial.participants
    assert list(p.columns) == ["participant_id", "group", "age", "sex"]
    assert p.participant_id.tolist() == [f"sub-{i:03d}" for i in range(1, 99)]
    assert p.age.dtype.kind == "i" and p.age.between(18, 65).all()
    assert set(p.sex) <= {"M", "F"}
    assert 60 <= (p.group == "ketamine").sum() <= 70

    s = trial.scores
    assert list(s.columns) == ["participant_id", "session_id", "madrs_total", "qids_sr_total"]
    assert len(s) == 2 * 98 and not s.duplicated(["participant_id", "session_id"]).any()
    assert set(s.session_id) == {"ses-baseline", "ses-24h"}
    for scale, (low, high) in SCORE_RANGES.items():
        col = s[f"{scale}_total"]
        assert col.dtype.kind == "i" and col.between(low, high).all()
    baseline = s[s.session_id == "ses-baseline"]
    assert 28 <= baseline.madrs_total.mean() <= 36
    assert 13 <= baseline.qids_sr_total.mean() <= 19

    md = trial.gm_md
    assert list(md.columns) == [
        "participant_id",
        "session_id",
        "roi",
        "md_true",
        "csf_fraction_change",
    ]
    assert len(md) == 98 * 2 * len(ROI_NAMES)
    assert md.md_true.between(0.6e-3, 1.1e-3).all()
    by_roi = md[md.session_id == "ses-baseline"].groupby("roi").md_true.mean()
    assert by_roi["hippocampus_left"] > by_roi["ba10_left"]
    assert by_roi["amygdala_right"] > by_roi["ba10_right"]

    json.dumps(trial.planted)  # JSON-serialisable
    assert trial.planted["scenario"] == "paper"


def test_md_changes_are_of_a_plausible_size(paper_large: ClinicalTrial) -> None:
    changes = _changes(paper_large)
    typical = changes[[f"d_{roi}" for roi in ROI_NAMES]].abs().median()
    assert ((typical > 0.01) & (typical < 0.03)).all(), typical


def test_same_seed_same_trial_other_seed_other_trial() -> None:
    first = simulate_clinical(30, "paper", seed=7)
    second = simulate_clinical(30, "paper", seed=np.random.default_rng(7))
    other = simulate_clinical(30, "paper", seed=8)
    for name in ("participants", "scores", "gm_md"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))
    assert first.planted == second.planted
    assert not first.gm_md.md_true.equals(other.gm_md.md_true)


def test_retest_has_no_true_change_and_shares_the_null_draws() -> None:
    retest = simulate_clinical(30, "retest", seed=5)
    null = simulate_clinical(30, "null", seed=5)
    wide = retest.gm_md.pivot_table(
        index=["participant_id", "roi"], columns="session_id", values="md_true"
    )
    assert np.array_equal(wide["ses-baseline"], wide["ses-24h"])
    baseline = retest.gm_md[retest.gm_md.session_id == "ses-baseline"].reset_index(drop=True)
    null_baseline = null.gm_md[null.gm_md.session_id == "ses-baseline"].reset_index(drop=True)
    assert baseline.md_true.equals(null_baseline.md_true)
    assert retest.scores.equals(null.scores)
    assert retest.planted["md_change_sd"] == 0.0


def test_custom_session_labels() -> None:
    trial = simulate_clinical(6, "null", seed=0, sessions=("pre", "post"))
    assert set(trial.scores.session_id) == {"ses-pre", "ses-post"}
    assert set(trial.gm_md.session_id) == {"ses-pre", "ses-post"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_participants": 1}, "at least"),
        ({"n_participants": 10, "scenario": "bogus"}, "unknown scenario"),
        ({"n_participants": 10, "sessions": ("a", "a")}, "two different"),
    ],
)
def test_impossible_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        simulate_clinical(**kwargs)


def test_null_has_no_coupling_and_no_md_treatment_effect(null_large: ClinicalTrial) -> None:
    changes = _changes(null_large)
    for arm, rows in changes.groupby("group"):
        bound = _tolerance(len(rows))
        corr = rows.drop(columns="group").corr()
        for scale in SCORE_RANGES:
            for roi in ROI_NAMES:
                assert abs(corr.loc[f"d_{scale}", f"d_{roi}"]) < bound, (arm, scale, roi)
    md_columns = [f"d_{roi}" for roi in ROI_NAMES]
    # Treatment effect on MD: difference of arm means within 4 standard errors of zero.
    means = changes.groupby("group")[md_columns].mean()
    sds = changes.groupby("group")[md_columns].std()
    counts = changes.groupby("group").size()
    se = np.sqrt((sds**2).div(counts, axis=0).sum())
    assert (np.abs(means.loc["ketamine"] - means.loc["saline"]) < 4 * se).all()
    assert null_large.planted["coupling_strength"] == 0.0


def test_paper_plants_the_abstract_pattern(paper_large: ClinicalTrial) -> None:
    changes = _changes(paper_large)
    planted = paper_large.planted["coupling_correlation"]
    for arm, rows in changes.groupby("group"):
        bound = _tolerance(len(rows))
        corr = rows.drop(columns="group").corr()
        for scale in SCORE_RANGES:
            for roi in ROI_NAMES:
                observed = corr.loc[f"d_{scale}", f"d_{roi}"]
                # Rounding and clipping of scores attenuate slightly; the planted value is for
                # the unrounded latent change.
                expected = planted[arm][scale][roi]
                assert abs(observed - expected) < bound + 0.05 * abs(expected), (
                    arm,
                    scale,
                    roi,
                    observed,
                    expected,
                )
    ket = planted["ketamine"]
    sal = planted["saline"]
    for scale in SCORE_RANGES:
        assert ket[scale]["ba10_left"] > 0.5 and ket[scale]["amygdala_left"] > 0.5
        assert sal[scale]["ba10_left"] == 0 and sal[scale]["amygdala_left"] == 0
        assert ket[scale]["ba10_right"] > 0.5 and sal[scale]["ba10_right"] > 0.5
        assert ket[scale]["vacc"] == 0 and sal[scale]["vacc"] == 0
    assert ket["madrs"]["hippocampus_left"] < -0.5 and ket["madrs"]["hippocampus_right"] < -0.5
    assert abs(ket["qids_sr"]["hippocampus_left"]) < 1e-12

    d_madrs = changes.groupby("group").d_madrs.mean()
    assert d_madrs["ketamine"] < d_madrs["saline"] - 4


def test_vacc_is_independent_of_every_other_roi(paper_large: ClinicalTrial) -> None:
    changes = _changes(paper_large)
    for _, rows in changes.groupby("group"):
        corr = rows[[f"d_{roi}" for roi in ROI_NAMES]].corr()["d_vacc"].drop("d_vacc")
        assert (corr.abs() < _tolerance(len(rows))).all(), corr
