"""QC verdict rules on the QC values of real and simulated sessions (docs/qc.md)."""

from __future__ import annotations

import math

import pytest

from ketamine_dti import qc
from ketamine_dti.qc import FAIL, PASS, THRESHOLDS, WARN, Threshold, session_verdict

#: QC of a tiny simulated participant (sub-001, seed 7, ses-24h), as written by the App.
SIMULATED_TINY = {
    "mean_fd": 0.445072,
    "outlier_fraction": 5 / 14,
    "tensor_residual": 0.00535183,
    "brain_volume_ml": 1885.12,
    "t1w_brain_volume_ml": 1920.59,
    "reg_dwi_t1w_dice": 0.960189,
    "reg_session_halfway_ncc": 0.984721,
    "reg_t1w_mni_ncc": 0.932011,
    "reg_t1w_mni_dice": 0.990117,
    "roi_missing_fraction": 0.0,
}
#: QC of the real Siemens Prisma scan (ses-baseline, PA) before the issue-10 fixes: brain
#: extraction, b0->T1w registration and motion correction all failed on it.
REAL_BEFORE = {
    "mean_fd": 1.04815,
    "outlier_fraction": 19 / 21,
    "tensor_residual": 0.00855767,
    "brain_volume_ml": 1326.35,
    "t1w_brain_volume_ml": 1689.79,
    "reg_dwi_t1w_dice": 0.761284,
    "reg_session_halfway_ncc": 0.999999,
    "reg_t1w_mni_ncc": 0.201819,
    "reg_t1w_mni_dice": 0.973669,
    "roi_missing_fraction": 7 / 7,
}


def test_the_failed_real_session_fails_naming_each_breach():
    verdict, reasons = session_verdict(REAL_BEFORE)
    assert verdict == FAIL
    assert "reg_t1w_mni_ncc 0.202 < 0.5 (fail: T1w to MNI registration failed)" in reasons
    assert "reg_dwi_t1w_dice 0.761 < 0.8 (fail: b0 and T1w brains do not overlap)" in reasons
    assert "mean_fd 1.05 > 1 (fail: head motion)" in reasons
    assert any(reason.startswith("outlier_fraction 0.905 > 0.5 (fail") for reason in reasons)
    assert any(reason.startswith("roi_missing_fraction 1 > 0.5 (fail") for reason in reasons)
    assert not any("brain_volume_ml" in reason for reason in reasons)


def test_the_simulated_session_is_not_failed():
    verdict, reasons = session_verdict(SIMULATED_TINY)
    assert verdict == WARN  # 5 of 14 volumes above the FD cut: the simulator's planted motion
    assert reasons == [
        "outlier_fraction 0.357 > 0.3 (warn: volumes with FD above the outlier cut)"
    ]
    assert session_verdict(SIMULATED_TINY | {"outlier_fraction": 3 / 14}) == (PASS, [])


def test_the_issue_whole_head_brain_mask_fails():
    verdict, reasons = session_verdict(SIMULATED_TINY | {"t1w_brain_volume_ml": 2737.0})
    assert verdict == FAIL
    assert any(reason.startswith("t1w_brain_volume_ml 2.74e+03 > 2400") for reason in reasons)


def test_an_unknown_metric_warns_and_never_passes():
    metrics = dict(SIMULATED_TINY, outlier_fraction=0.0)
    del metrics["reg_dwi_t1w_dice"]
    assert session_verdict(metrics) == (
        WARN,
        ["reg_dwi_t1w_dice is n/a (warn: cannot be checked)"],
    )
    metrics["t1w_brain_volume_ml"] = math.nan  # two rules, one reason
    verdict, reasons = session_verdict(metrics)
    assert verdict == WARN and sum("t1w_brain_volume_ml" in r for r in reasons) == 1


@pytest.mark.parametrize(
    ("value", "expected"), [(0.9, PASS), (0.85, PASS), (0.84, WARN), (0.80, WARN), (0.79, FAIL)]
)
def test_threshold_edges_below(value, expected):
    rule = Threshold("x", warn=0.85, fail=0.80, bad_when="below", what="w", why="y")
    assert rule.verdict(value) == expected


@pytest.mark.parametrize(("value", "expected"), [(0.5, PASS), (0.51, WARN), (1.01, FAIL)])
def test_threshold_edges_above(value, expected):
    rule = Threshold("x", warn=0.5, fail=1.0, bad_when="above", what="w", why="y")
    assert rule.verdict(value) == expected


def test_thresholds_are_ordered_and_documented():
    for rule in THRESHOLDS:
        assert rule.bad_when in ("below", "above")
        assert (rule.fail <= rule.warn) if rule.bad_when == "below" else (rule.fail >= rule.warn)
        assert rule.what and rule.why


def test_derived_metrics():
    assert qc.outlier_fraction(3, 21) == pytest.approx(1 / 7)
    assert math.isnan(qc.outlier_fraction(0, 0))
    retention = qc.roi_retention(["ok", "missing", "ok"], [0.5, 0.1, math.nan])
    assert retention == {
        "roi_min_fraction": 0.1,
        "n_rois_missing": 1,
        "roi_missing_fraction": pytest.approx(1 / 3),
    }
    assert qc.worst(PASS, FAIL, WARN) == FAIL
    assert qc.format_reasons([]) == "n/a" and qc.format_reasons(["a", "b"]) == "a; b"
