"""The participant benchmark's second truth: the planted MD over the App's own kept voxels.

``benchmarks/bench_participant.py`` averages the simulator's per-voxel true apparent MD
(``desc-truth_md``) over the voxels the App kept (``atlas_gm``), so that the App's measurement
is judged apart from how far its ROIs are from the true regions. Synthetic arrays and a
synthetic output tree: nothing is simulated or run here.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import load_script

from ketamine_dti.derivatives import spec_path
from ketamine_dti.resources import ATLAS
from ketamine_dti.rois import ROI_NAMES


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_participant.py")


def test_voxel_means_average_each_label_plainly_and_leave_absent_rois_nan(bench):
    labels = np.zeros((4, 4, 3), dtype=np.int16)
    labels[0, :2, 0] = 1  # two voxels of ROI 1
    labels[1:3, 0, 1] = 3  # two voxels of ROI 3; ROI 2 has none
    values = np.arange(labels.size, dtype=float).reshape(labels.shape)
    means = bench.voxel_means(values, labels, ROI_NAMES[:3])
    assert means[ROI_NAMES[0]] == pytest.approx(values[0, :2, 0].mean())
    assert np.isnan(means[ROI_NAMES[1]])
    assert means[ROI_NAMES[2]] == pytest.approx((values[1, 0, 1] + values[2, 0, 1]) / 2)
    with pytest.raises(ValueError, match="shape"):
        bench.voxel_means(values[..., :2], labels, ROI_NAMES[:3])


def _save(data: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)


def test_own_voxel_truth_separates_the_measurement_from_the_atlas(tmp_path, bench):
    """The App measures its own voxels 1% high, exactly tracking their planted change, while
    they lie half outside the true region (whose tissue MD changes differently): against its
    own voxels the slope is 1 and the error 1%; against the true region it is neither."""
    rng = np.random.default_rng(0)
    bids, out = tmp_path / "bids", tmp_path / "out"
    subjects, shape = ["001", "002", "003", "004"], (8, 8, 8)
    labels = np.zeros(shape, dtype=np.int16)
    for index in range(1, len(ROI_NAMES) + 1):
        labels[index - 1, :4, :4] = index  # 16 kept voxels per ROI
    truth_rows, table_rows = [], []
    for subject, session in itertools.product(subjects, bench.SESSIONS):
        stem = f"sub-{subject}/ses-{session}/sub-{subject}_ses-{session}"
        truth = rng.uniform(0.7e-3, 1.0e-3, shape)  # apparent MD: every voxel differs
        _save(
            truth.astype(np.float32),
            bids / f"sourcedata/ground_truth/{stem}_space-dwi_desc-truth_md.nii.gz",
        )
        measured = truth * 1.01
        _save(measured.astype(np.float32), spec_path(out, "md", subject, session))
        _save(labels, spec_path(out, "atlas_gm", subject, session, atlas=ATLAS))
        for index, roi in enumerate(ROI_NAMES, start=1):
            keys = {"participant_id": f"sub-{subject}", "session_id": f"ses-{session}", "roi": roi}
            table_rows.append(keys | {"md_mean": float(measured[labels == index].mean())})
            truth_rows.append(keys | {"md_true": rng.uniform(0.75e-3, 0.95e-3)})
    truth_dir = bids / "sourcedata/ground_truth"
    pd.DataFrame(truth_rows).to_csv(truth_dir / "roi_md.tsv", sep="\t", index=False)

    own = bench.own_voxel_truth(bids, out, subjects)
    assert len(own) == len(subjects) * len(bench.SESSIONS) * len(ROI_NAMES)
    np.testing.assert_allclose(own.md_map_voxel_mean, own.md_true_own * 1.01, rtol=1e-6)

    result = bench.two_truths(bids, out, pd.DataFrame(table_rows), subjects, "md_mean")
    mine, region = result["truth_over_app_voxels"], result["truth_over_true_region"]
    assert mine["median_abs_rel_error"] == pytest.approx(0.01, abs=1e-5)
    assert mine["slope_dmd"] == pytest.approx(1.0, abs=1e-4)
    assert mine["relative_dmd_correlation"] == pytest.approx(1.0, abs=1e-6)
    assert all(v == pytest.approx(1.0, abs=1e-3) for v in mine["per_roi_slope_dmd"].values())
    assert mine["n_pairs"] == len(subjects) * len(ROI_NAMES)
    assert mine["median_abs_rel_diff_md_mean_vs_voxel_mean"] < 1e-6  # one point per voxel here
    assert abs(region["slope_dmd"] - 1.0) > 0.1  # the true region's tissue changed otherwise
    assert region["median_abs_rel_error"] > 0.02

    text = "\n".join(bench.two_truths_markdown({"null_longitudinal": result}))
    assert "truth over the App's voxels" in text and "truth over the true region" in text
    for roi in ROI_NAMES:
        assert f"| {roi} |" in text


def _points_trial(tmp_path, bench, subjects, rng, error=None):
    """A synthetic finished run with the work folder's ROI samples: md_mean averages
    subject-template points, 1 to 8 per voxel, and one point per ROI fails its gray-matter
    rule. Each session's MD map is the truth 1% high, times ``1 + error[(subject, session)]``
    when given. Returns (bids, out, work, ROI table)."""
    bids, out, work = tmp_path / "bids", tmp_path / "out", tmp_path / "work"
    shape = (8, 8, 8)
    labels = np.zeros(shape, dtype=np.int16)
    for index in range(1, len(ROI_NAMES) + 1):
        labels[index - 1, :4, :4] = index
    voxels = np.flatnonzero(labels)
    per_voxel = rng.integers(1, 9, voxels.size)
    point_voxel = np.repeat(voxels, per_voxel)
    point_label = labels.ravel()[point_voxel]
    gm = np.ones(point_voxel.size, np.float32)
    gm[np.unique(point_label, return_index=True)[1]] = 0.2  # fails the rule: not averaged
    kept = gm >= 0.5
    truth_rows, table_rows = [], []
    for subject, session in itertools.product(subjects, bench.SESSIONS):
        stem = f"sub-{subject}/ses-{session}/sub-{subject}_ses-{session}"
        truth = rng.uniform(0.7e-3, 1.0e-3, shape)
        truth_file = bids / f"sourcedata/ground_truth/{stem}_space-dwi_desc-truth_md.nii.gz"
        _save(truth.astype(np.float32), truth_file)
        scale = 1.01 * (1 + (error or {}).get((subject, session), 0.0))
        measured = (truth * scale).astype(np.float32)
        _save(measured, spec_path(out, "md", subject, session))
        _save(labels, spec_path(out, "atlas_gm", subject, session, atlas=ATLAS))
        step = work / f"ketamine_dti_wf/sub_{subject}_wf/ses_{session}_wf/sample_rois"
        step.mkdir(parents=True)
        np.savez(
            step / "roi_samples.npz",
            label=point_label.astype(np.int16),
            voxel=point_voxel,
            gm=gm,
            csf=np.zeros_like(gm),
            in_brain=np.ones(gm.size, bool),
            md=measured.ravel()[point_voxel],
            dwi_shape=np.array(shape),
            dwi_affine=np.diag([2.0, 2.0, 2.0, 1.0]),
        )
        for index, roi in enumerate(ROI_NAMES, start=1):
            keys = {"participant_id": f"sub-{subject}", "session_id": f"ses-{session}", "roi": roi}
            chosen = point_voxel[kept & (point_label == index)]
            table_rows.append(keys | {"md_mean": float(measured.ravel()[chosen].mean())})
            truth_rows.append(keys | {"md_true": rng.uniform(0.8e-3, 0.9e-3)})
    pd.DataFrame(truth_rows).to_csv(
        bids / "sourcedata/ground_truth/roi_md.tsv", sep="\t", index=False
    )
    return bids, out, work, pd.DataFrame(table_rows)


def test_the_truth_over_the_apps_points_weights_voxels_as_md_mean_does(tmp_path, bench):
    """Against the truth read at md_mean's own points (from the run's sample_rois step) a
    measurement 1% high that tracks the truth exactly scores 1% and slope 1, while the plain
    voxel mean of the truth is another quantity (more than 1% off)."""
    subjects = ["001", "002", "003"]
    bids, out, work, table = _points_trial(tmp_path, bench, subjects, np.random.default_rng(2))
    result = bench.two_truths(bids, out, table, subjects, "md_mean", work)
    points, voxel_mean = result["truth_over_app_points"], result["truth_over_app_voxels"]
    assert points["median_abs_rel_error"] == pytest.approx(0.01, abs=1e-5)
    assert points["slope_dmd"] == pytest.approx(1.0, abs=1e-4)
    assert all(v == pytest.approx(1.0, abs=1e-3) for v in points["per_roi_slope_dmd"].values())
    assert abs(voxel_mean["median_abs_rel_error"] - 0.01) > 1e-3
    text = "\n".join(bench.two_truths_markdown({"null_longitudinal": result}))
    assert "truth over the App's points" in text
    # without the work folder (an older run): the voxel truths alone
    assert "truth_over_app_points" not in bench.two_truths(bids, out, table, subjects, "md_mean")


def _qc_table(out: Path, subject: str, session: str, verdict: str, mean_fd: float) -> None:
    path = spec_path(out, "qc_table", subject, session)
    path.parent.mkdir(parents=True, exist_ok=True)
    reasons = "n/a" if verdict == "pass" else "mean_fd 1.2 above 1 (head motion)"
    pd.DataFrame(
        [{"mean_fd": mean_fd, "outlier_fraction": mean_fd / 2, "qc_verdict": verdict,
          "qc_reasons": reasons}]
    ).to_csv(path, sep="\t", index=False)  # fmt: skip


def test_the_group_levels_participants_and_the_misses_follow_the_qc_tables(tmp_path, bench):
    """sub-003's follow-up failed QC and its measurement is 3% off there; sub-002's is 1% off:
    the group level's participants (its own rule) leave sub-003 out, over the others r is that
    of a smaller error, and per participant the measurement miss ranks with the motion QC
    while the voxel choice does not enter it."""
    subjects = ["001", "002", "003", "004"]
    error = {("002", bench.SESSIONS[1]): 0.01, ("003", bench.SESSIONS[1]): 0.03}
    bids, out, work, table = _points_trial(
        tmp_path, bench, subjects, np.random.default_rng(5), error
    )
    fd = {"001": 0.2, "002": 0.4, "003": 1.2, "004": 0.3}
    for subject, session in itertools.product(subjects, bench.SESSIONS):
        failed = subject == "003" and session == bench.SESSIONS[1]
        _qc_table(out, subject, session, "fail" if failed else "pass", fd[subject])

    found = bench.qc_kept_and_misses(
        out, bench.merged_truths(bids, out, table, subjects, work), subjects
    )
    assert found["qc_exclusions"]["sub-003"] == (
        f"QC failed at ses-{bench.SESSIONS[1]}: mean_fd 1.2 above 1 (head motion)"
    )
    assert {pid for pid, why in found["qc_exclusions"].items() if not why} == {
        "sub-001", "sub-002", "sub-004"
    }  # fmt: skip
    kept = found["group_level_kept"]["truth_over_app_points"]
    everyone = bench.two_truths(bids, out, table, subjects, "md_mean", work)
    assert kept["n_pairs"] == 3 * len(ROI_NAMES)
    assert (
        kept["relative_dmd_correlation"]
        > everyone["truth_over_app_points"]["relative_dmd_correlation"]
    )
    misses = found["participant_misses"]["per_participant"]
    assert misses["sub-001"]["measurement"] < 1e-5  # 1% high in both sessions: no dMD miss
    assert misses["sub-002"]["measurement"] == pytest.approx(0.01, rel=0.1)  # x T24/T0
    assert misses["sub-003"]["measurement"] == pytest.approx(0.03, rel=0.1)
    assert misses["sub-003"]["max_mean_fd"] == pytest.approx(1.2)
    rank = found["participant_misses"]["spearman_measurement_miss_vs"]
    assert rank["mean_mean_fd"] == pytest.approx(1.0)
    text = "\n".join(bench.two_truths_markdown({"paper_longitudinal": everyone | found}))
    assert "group level keeps by default (it leaves out sub-003: QC failed at ses-" in text
    assert "| sub-003 | 3.0" in text


def test_two_truths_keeps_the_region_truth_when_no_truth_map_was_written(tmp_path, bench):
    """A trial simulated before desc-truth_md existed: only the true-region figures."""
    bids = tmp_path / "bids"
    rows = [
        {"participant_id": "sub-001", "session_id": f"ses-{s}", "roi": roi, "md_true": 0.8e-3}
        for s in bench.SESSIONS
        for roi in ROI_NAMES
    ]
    (bids / "sourcedata/ground_truth").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(bids / "sourcedata/ground_truth/roi_md.tsv", sep="\t", index=False)
    table = pd.DataFrame(rows).drop(columns="md_true").assign(md_mean=0.81e-3)
    result = bench.two_truths(bids, tmp_path / "out", table, ["001"], "md_mean")
    assert set(result) == {"truth_over_true_region"}
    assert result["truth_over_true_region"]["median_abs_rel_error"] == pytest.approx(0.0125)


def test_each_slope_carries_the_ordinary_least_squares_standard_error(bench):
    """The slopes' standard errors equal statsmodels' OLS ones, pooled and per ROI; an ROI
    with a single pair has a slope but no error."""
    import statsmodels.api as sm

    rng = np.random.default_rng(3)
    index = pd.MultiIndex.from_tuples(
        [(f"sub-{i:03d}", roi) for roi in ("a", "b") for i in range(8)] + [("sub-001", "c")],
        names=["participant_id", "roi"],
    )
    planted = pd.Series(rng.normal(0, 0.02, len(index)), index=index)
    measured = 0.9 * planted + rng.normal(0, 0.005, len(index))
    result = bench.slopes(measured, planted)

    def ols(x, y):
        fit = sm.OLS(y.to_numpy(), sm.add_constant(x.to_numpy())).fit()
        return fit.params[1], fit.bse[1]

    assert (result["slope_dmd"], result["slope_dmd_se"]) == pytest.approx(ols(planted, measured))
    for roi in ("a", "b"):
        inside = planted.index.get_level_values("roi") == roi
        expected = ols(planted[inside], measured[inside])
        got = (result["per_roi_slope_dmd"][roi], result["per_roi_slope_dmd_se"][roi])
        assert got == pytest.approx(expected)
    assert np.isnan(result["per_roi_slope_dmd"]["c"])  # one pair: no spread, no slope
    value, se = result["per_roi_slope_dmd"]["a"], result["per_roi_slope_dmd_se"]["a"]
    assert bench.plus_minus(result, "per_roi_slope_dmd", ".2f", "a") == f"{value:.2f} +- {se:.2f}"
    assert bench.plus_minus({"slope_dmd": 0.5}, "slope_dmd", ".3f") == "0.500"  # no SE recorded


def _sleep_and_note(seconds, note):
    import time

    time.sleep(seconds / 2)
    with open(note, "a") as handle:
        handle.write(f"{time.time()}\n")
    time.sleep(seconds / 2)
    return note


def test_the_steps_running_at_a_memory_peak_are_read_from_nipypes_results(tmp_path, bench):
    """Two steps one after the other: at a moment inside each, only that step is named; before
    the run, none."""
    import time

    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe

    steps = []
    for name in ("first", "second"):
        step = pe.Node(
            Function(input_names=["seconds", "note"], output_names=["note"],
                     function=_sleep_and_note),
            name=name,
        )  # fmt: skip
        step.inputs.seconds = 0.6
        steps.append(step)
    steps[0].inputs.note = str(tmp_path / "moments.txt")
    workflow = pe.Workflow(name="peak", base_dir=str(tmp_path / "work"))
    workflow.connect(steps[0], "note", steps[1], "note")
    before = time.time()
    workflow.run(plugin="Linear")
    inside = [float(line) for line in (tmp_path / "moments.txt").read_text().split()]
    assert bench.nodes_running_at(tmp_path / "work", before) == []
    assert bench.nodes_running_at(tmp_path / "work", inside[0]) == ["peak/first"]
    assert bench.nodes_running_at(tmp_path / "work", inside[1]) == ["peak/second"]


def test_the_old_selection_attenuates_a_change_that_todays_voxel_set_keeps(tmp_path, bench):
    """The selection issue 13 replaced, emulated on the same maps: voxels whose own session's MD
    reaches rois.MD_CSF_MAX leave that session's mean, so a rise loses exactly the voxels that
    rose; against the truth over today's (fixed) voxels its slope falls well below today's 1."""
    rng = np.random.default_rng(1)
    bids, out = tmp_path / "bids", tmp_path / "out"
    subjects, shape = [f"{k:03d}" for k in range(1, 7)], (8, 8, 8)
    labels = np.zeros(shape, dtype=np.int16)
    for index in range(1, len(ROI_NAMES) + 1):
        labels[index - 1, :, :] = index  # 64 kept voxels per ROI
    base = rng.uniform(0.9e-3, 1.7e-3, shape)  # some voxels straddle the old MD gate
    truth_rows, table_rows = [], []
    for subject in subjects:
        change = np.ones(shape)
        for index in range(1, len(ROI_NAMES) + 1):
            change[labels == index] = 1 + rng.normal(0, 0.05)
        for session, factor in zip(bench.SESSIONS, (np.ones(shape), change), strict=True):
            stem = f"sub-{subject}/ses-{session}/sub-{subject}_ses-{session}"
            truth = base * factor
            _save(
                truth.astype(np.float32),
                bids / f"sourcedata/ground_truth/{stem}_space-dwi_desc-truth_md.nii.gz",
            )
            measured = truth * 1.01
            _save(measured.astype(np.float32), spec_path(out, "md", subject, session))
            _save(np.full(shape, 0.1, np.float32), spec_path(out, "fa", subject, session))
            _save(labels, spec_path(out, "atlas_gm", subject, session, atlas=ATLAS))
            for index, roi in enumerate(ROI_NAMES, start=1):
                keys = {"participant_id": f"sub-{subject}", "session_id": f"ses-{session}",
                        "roi": roi}  # fmt: skip
                table_rows.append(keys | {"md_mean": float(measured[labels == index].mean())})
                truth_rows.append(keys | {"md_true": float(truth[labels == index].mean())})
    truth_dir = bids / "sourcedata/ground_truth"
    pd.DataFrame(truth_rows).to_csv(truth_dir / "roi_md.tsv", sep="\t", index=False)

    old = bench.two_truths(bids, out, pd.DataFrame(table_rows), subjects, "md_mean")[
        "old_selection"
    ]
    assert old["today_same_averaging"]["slope_dmd"] == pytest.approx(1.0, abs=1e-4)
    assert old["old_vs_app_voxels"]["slope_dmd"] < 0.8
    assert old["old_vs_true_region"]["slope_dmd"] < 0.8  # here the true region is the set
    text = "\n".join(bench.old_selection_markdown("null_longitudinal", old))
    assert "per-session MD/FA gates" in text and text.count("| vacc |") == 1  # ROIs: columns
    assert text.count("\n| ") == 6  # header and five rows
