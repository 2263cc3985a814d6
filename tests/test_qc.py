"""QC verdict rules on the QC values of real and simulated sessions (docs/qc.md)."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ketamine_dti import qc
from ketamine_dti.derivatives import spec_path
from ketamine_dti.qc import FAIL, PASS, THRESHOLDS, WARN, Threshold, session_verdict

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REALDATA  # noqa: E402

#: QC of a tiny simulated participant (sub-001, seed 7, ses-24h), as written by the App.
SIMULATED_TINY = {
    "mean_fd": 0.445072,
    "outlier_fraction": 5 / 14,
    "tensor_residual": 0.00535183,
    "brain_volume_ml": 1885.12,
    "t1w_brain_volume_ml": 1920.59,
    "reg_dwi_t1w_dice": 0.960189,
    "reg_dwi_t1w_bbr_cost": 0.28311,  # session 41, sub-001 ses-baseline
    "reg_ventricle_coverage": 0.775,  # session 9, whole-head simulator
    "reg_session_halfway_ncc": 0.984721,
    "reg_t1w_mni_ncc": 0.932011,
    "reg_t1w_mni_dice": 0.990117,
    "roi_missing_fraction": 0.0,
    # the standard preset's (session 40, paper trial, seed 13: max 0.023-0.045, min -0.033
    # to -0.006 over 16 sessions)
    "fw_fraction_roi_max": 0.045,
    "fw_fraction_roi_min": -0.033,
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
        if rule.fail is not None:  # None: the rule only warns
            assert (
                (rule.fail <= rule.warn) if rule.bad_when == "below" else (rule.fail >= rule.warn)
            )
        assert rule.what and rule.why


def test_docs_tabulate_every_threshold():
    """docs/qc.md's table gives each rule's warn and fail values as qc.py applies them."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "qc.md").read_text()
    rows = {line.split("|")[1].strip(" `").split("`")[0]: line for line in docs.splitlines()
            if line.startswith("| `")}  # fmt: skip
    for rule in THRESHOLDS:
        assert rule.metric in rows, rule.metric
        cells = [cell.strip() for cell in rows[rule.metric].split("|")[2:4]]
        for cell, limit in zip(cells, (rule.warn, rule.fail), strict=True):
            expected = "never" if limit is None else f"{rule.sign} {limit:g}"
            assert expected in cell.replace(",", ""), (rule.metric, cell)


def test_free_water_rules_only_warn():
    """An ROI whose free-water fraction contradicts its anatomy (the real AP series: 0.75 in
    BA10, -0.23 in a hippocampus) warns with the reason; plain MD is unaffected, so however
    far off, it never fails the session."""
    good = {rule.metric: (rule.warn - 1 if rule.bad_when == "above" else rule.warn + 1)
            for rule in THRESHOLDS}  # fmt: skip
    good |= {"fw_fraction_roi_max": 0.05, "fw_fraction_roi_min": -0.02}
    assert session_verdict(good) == (PASS, [])
    verdict, reasons = session_verdict(good | {"fw_fraction_roi_max": 0.754})
    assert verdict == WARN and reasons == [
        "fw_fraction_roi_max 0.754 > 0.3 (warn: an ROI's free-water fraction contradicts its "
        "anatomy: md_fwcorr is not usable)"
    ]
    verdict, reasons = session_verdict(
        good | {"fw_fraction_roi_max": 1.0, "fw_fraction_roi_min": -0.5}
    )
    assert (
        verdict == WARN
        and len(reasons) == 2
        and reasons[1].startswith("fw_fraction_roi_min -0.5 < -0.15")
    )
    rule = next(rule for rule in THRESHOLDS if rule.metric == "fw_fraction_roi_max")
    assert rule.describe() == "fw_fraction_roi_max > 0.3 warns, never fails"
    # one ROI's fraction, judged by the same limits (the group level's md_fwcorr rule)
    assert qc.free_water_implausible(0.05) is None and qc.free_water_implausible(math.nan) is None
    assert qc.free_water_implausible(0.3) is None and qc.free_water_implausible(-0.15) is None
    assert qc.free_water_implausible(0.754).startswith("fw_fraction_mean 0.754 > 0.3 (")
    assert qc.free_water_implausible(-0.229).startswith("fw_fraction_mean -0.229 < -0.15 (")


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


# ------------------------------------------------------------------ a T1w of another person
#: The real scan (conftest.REALDATA): its whole-head MPRAGE is the "other person" of the test.
REAL_SCAN = REALDATA
MISMATCHED = "001"


@pytest.fixture(scope="module")
def mismatched_run(tiny_trial, tmp_path_factory):
    """Simulated participant sub-001 whose T1w (both sessions) is the real volunteer's MPRAGE,
    run through the real CLI in its own process (the test process has run numba's OpenMP
    kernels, and MultiProc must not fork from it); the other participants are not run."""
    if not (REAL_SCAN / "sub-M31_T1w.nii.gz").exists():
        pytest.skip(f"{REAL_SCAN}: the real scan is not on this machine")
    root = tmp_path_factory.mktemp("mismatch")
    bids_dir, out = root / "bids", root / "out"
    shutil.copytree(tiny_trial, bids_dir)
    for t1w in bids_dir.glob(f"sub-{MISMATCHED}/ses-*/anat/*_T1w.nii.gz"):
        shutil.copyfile(REAL_SCAN / "sub-M31_T1w.nii.gz", t1w)
    arguments = [str(bids_dir), str(out), "participant", "--participant-label", MISMATCHED,
                 "-w", str(root / "work"), "--nprocs", "2", "--skip-bids-validation"]  # fmt: skip
    command = [sys.executable, "-c", "import sys; from bids_app.run import main; sys.exit(main())"]
    code = subprocess.run([*command, *arguments], capture_output=True, text=True).returncode
    return code, out


def _qc_rows(out: Path) -> pd.DataFrame:
    tables = sorted(out.glob(f"sub-{MISMATCHED}/ses-*/dwi/*_desc-qc_metrics.tsv"))
    return pd.concat([pd.read_csv(path, sep="\t") for path in tables], ignore_index=True)


@pytest.mark.slow
def test_a_t1w_of_another_person_fails_qc_loudly(mismatched_run, caplog):
    code, out = mismatched_run
    assert code == 0, "a QC failure is a result, not a crash"
    rows = _qc_rows(out)
    print(rows.T.to_string())  # the figures of docs/qc.md
    assert len(rows) == 2
    # both sessions fail, and for the reason that does not depend on registration luck: the
    # DWI's ventricles are not where this T1w has its CSF (docs/qc.md)
    assert (rows.qc_verdict == FAIL).all(), rows.qc_reasons.tolist()
    assert (rows.reg_ventricle_coverage < 0.55).all(), rows.reg_ventricle_coverage.tolist()
    assert all("reg_ventricle_coverage" in reasons for reasons in rows.qc_reasons)
    report = (out / f"sub-{MISMATCHED}.html").read_text()
    assert "verdict-failed" in report and "do not use this participant's MD" in report


@pytest.mark.slow
def test_the_group_level_excludes_the_mismatched_participant(mismatched_run, tmp_path):
    from ketamine_dti.group import run_group_level
    from ketamine_dti.simulate.validation import simulate_trial_files

    _, out = mismatched_run
    config, _ = simulate_trial_files(tmp_path, 24, "paper", np.random.default_rng(5))
    # the mismatched participant's real outputs replace sub-001's simulated tables
    for session in ("baseline", "24h"):
        for key in ("qc_table", "roi_table"):
            source = spec_path(out, key, MISMATCHED, session)
            shutil.copyfile(source, spec_path(config.output_dir, key, "001", session))
    failed = _qc_rows(out)
    failed = failed[failed.qc_verdict == FAIL]
    group_dir = run_group_level(config, make_figures=False)
    exclusions = pd.read_csv(group_dir / "exclusions.tsv", sep="\t")
    qc_rows = exclusions[exclusions.reason.str.startswith("QC failed")]
    assert set(qc_rows.participant_id) == {"sub-001"}
    assert set(qc_rows.session_id) == set(failed.session_id)
    table = pd.read_csv(group_dir / "analysis_table.tsv", sep="\t").set_index("participant_id")
    assert table.filter(like="md_").loc["sub-001"].isna().all()


def test_the_log_names_a_failed_session_and_its_reasons(tmp_path, caplog):
    """The session summary logs an ERROR line for fail (WARNING for warn), then the summary."""
    import logging

    from ketamine_dti.config import Config
    from ketamine_dti.workflows.base import session_summary

    config = Config(tmp_path / "bids", tmp_path / "out", "participant")
    reasons = {"fail": "reg_dwi_t1w_dice 0.378 < 0.8 (fail: b0 and T1w brains do not overlap)"}
    for session, verdict in (("baseline", FAIL), ("24h", WARN), ("other", PASS)):
        qc_file = spec_path(config.output_dir, "qc_table", "01", session)
        qc_file.parent.mkdir(parents=True)
        pd.DataFrame(
            [{"mean_fd": 0.4, "max_fd": 0.8, "tsnr": 20.0, "qc_verdict": verdict,
              "qc_reasons": reasons.get(verdict, "outlier_fraction 0.357 > 0.3 (warn)")}]
        ).to_csv(qc_file, sep="\t", index=False)  # fmt: skip
        rois = pd.DataFrame({"roi": ["vacc"], "n_voxels": [4]})
        rois.to_csv(spec_path(config.output_dir, "roi_table", "01", session), sep="\t")
    with caplog.at_level(logging.INFO, logger="ketamine_dti.workflows.base"):
        lines = [session_summary(config, "01", s, 1.0) for s in ("baseline", "24h", "other")]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert errors == [f"sub-01 ses-baseline: QC FAIL: {reasons['fail']}"]
    assert warnings == ["sub-01 ses-24h: QC WARN: outlier_fraction 0.357 > 0.3 (warn)"]
    assert [line.rsplit("; ", 1)[-1] for line in lines] == ["QC fail", "QC warn", "QC pass"]
