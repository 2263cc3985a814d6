"""The gray-matter rule analysis (benchmarks/tuning/gray_matter_rule.py): its distortion rule
leaves a point out of both sessions when either session stretched or compressed its voxel."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def rule():
    return load_script("benchmarks/tuning/gray_matter_rule.py")


def test_distorted_points_leave_both_sessions_and_nothing_else_changes(rule):
    label = np.array([1, 1, 2, 2, 3], np.int16)
    baseline = {"label": label, "in_brain": np.array([1, 1, 1, 1, 0], bool),
                "jacobian": np.array([1.0, 1.3, 1.0, 1.0, 1.0])}  # fmt: skip
    followup = {"label": label, "in_brain": np.ones(5, bool),
                "jacobian": np.array([1.0, 1.0, 0.8, np.nan, 1.05])}  # fmt: skip
    kept = rule.without_distorted([baseline, followup], 0.1)
    # point 1 stretched at baseline, 2 compressed at follow-up, 3 without a Jacobian there;
    # point 4 stays out of the brain at baseline only, as the App had it
    assert kept[0]["in_brain"].tolist() == [True, False, False, False, False]
    assert kept[1]["in_brain"].tolist() == [True, False, False, False, True]
    assert kept[0]["jacobian"] is baseline["jacobian"]  # only in_brain is replaced
    assert rule.without_distorted([baseline, followup], None)[1] is followup
    without_sdc = [{k: v for k, v in s.items() if k != "jacobian"} for s in (baseline, followup)]
    assert rule.without_distorted(without_sdc, 0.1) == without_sdc
    assert rule.variant_name(("hard", 0.5, 0.05, 0.1)) == "hard: gm>=0.5, csf<=0.05, |ln J|<=0.1"
    assert rule.variant_name(rule.VARIANTS[1]) == "hard: gm>=0.5, csf<=0.05"


def test_retest_scores_the_sessions_disagreement_and_the_rois_lost(rule):
    import pandas as pd

    rows = []
    for session, md in (("ses-baseline", 1.00e-3), ("ses-24h", 1.02e-3)):
        for roi in rule.ROI_NAMES:
            lost = roi == "vacc" and session == "ses-24h"
            rows.append({"session_id": session, "roi": roi, "md_mean": md, "n_points": 40,
                         "status": "missing" if lost else "ok"})  # fmt: skip
    scored = rule.score_retest(pd.DataFrame(rows))
    assert scored["missing_roi_sessions"] == 1
    assert scored["per_roi_disagreement"]["vacc"] is None
    assert scored["per_roi_disagreement"]["ba10_left"] == pytest.approx(0.02 / 1.01)
    assert scored["median_disagreement"] == pytest.approx(0.02 / 1.01)
    nothing = rule.score_retest(pd.DataFrame(rows).assign(status="missing"))
    assert nothing["median_disagreement"] is None and nothing["median_points"] == 0.0


def test_score_gives_the_slope_against_the_truth_over_the_points(rule):
    import pandas as pd

    rng = np.random.default_rng(0)
    rows, truth = [], []
    for participant in range(4):
        for roi in rule.ROI_NAMES:
            change = rng.normal(0, 0.02)
            for session, factor in (("ses-baseline", 1.0), ("ses-24h", 1.0 + change)):
                key = {"participant_id": f"sub-{participant}", "session_id": session, "roi": roi}
                # the App halves the change at its points; the region moved the other way
                rows.append(key | {"status": "ok", "n_points": 50, "truth_points": 1e-3 * factor,
                                   "md_mean": 1e-3 * (1 + (factor - 1) / 2)})  # fmt: skip
                truth.append(key | {"md_true": 1e-3 * (2 - factor)})
    scored = rule.score(pd.DataFrame(rows), pd.DataFrame(truth))
    assert scored["slope_app_vs_points_truth"] == pytest.approx(0.5, rel=1e-6)
    per_roi = scored["per_roi_slope_app_vs_points_truth"]
    assert per_roi == pytest.approx(dict.fromkeys(rule.ROI_NAMES, 0.5))
    assert scored["r_app_vs_points_truth"] == pytest.approx(1.0)
    assert scored["r_app_vs_region"] == pytest.approx(-1.0)
    # per ROI: the measurement misses half the change, the voxel choice twice of it
    region = scored["per_roi_sd_region_change"]
    assert set(region) == set(rule.ROI_NAMES) and min(region.values()) > 0
    for roi in rule.ROI_NAMES:
        assert scored["per_roi_sd_measurement_miss"][roi] == pytest.approx(region[roi] / 2)
        assert scored["per_roi_sd_voxel_choice_miss"][roi] == pytest.approx(2 * region[roi])


def test_the_rules_are_the_apps_own_with_their_csf_caps(rule):
    app = rule.rule_of(*rule.VARIANTS[0][1:3])
    assert app == rule.GrayMatterRule()  # the first variant is the App's rule
    assert app.csf_caps() == (0.0, 0.01, 0.05)
    assert rule.rule_of(0.5, 0.02).csf_caps() == (0.02,)
    assert rule.variant_name(rule.VARIANTS[0]) == "hard: gm>=0.5, csf<=0|0.01|0.05"
