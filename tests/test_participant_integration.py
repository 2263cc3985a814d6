"""End to end: the participant level on a simulated tiny trial, through the real CLI.

One broken participant (its baseline .bval removed; it comes first) and one good one run in
one call; the broken one must fail with a clear message while the other completes. The output
must pass the official validator, hold the ROI-table contract, agree coarsely with the
simulator's ground truth, leave BIDS_DIR untouched, and a rerun (also after a killed run)
gives the same outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import tree_checksum

from ketamine_dti.work_cache import STAMP_SUFFIX, code_fingerprint
from ketamine_dti.workflows.base import RUN_WORKFLOW

pytestmark = pytest.mark.slow

ROI_COLUMNS = [
    "roi",
    "md_mean",
    "md_median",
    "md_std",
    "n_voxels",
    "md_fwcorr_mean",
    "fw_fraction_mean",
]
#: tiny preset (4 mm voxels, 12 directions): ROI means are dominated by partial volume, so the
#: check is coarse; the accuracy targets are measured on the standard preset in benchmarks/.
TINY_MEDIAN_REL_ERROR_MAX = 0.15
#: At the tiny preset's 4 mm voxels both BA10s keep 24-25% of their atlas voxels (measured),
#: under the default 30% that reports an ROI missing; the group models of a 12-participant
#: trial cannot lose an ROI in a 4-participant arm, so these runs accept 20%.
TINY_ROI_RULE = ("--roi-min-fraction", "0.2")
#: good participants processed by the pipeline (plus the broken one); CI has 90 min in all
N_PROCESSED = 1
#: SIGKILLs of one participant run, each resumed with the same work dir
N_KILLS = 5
#: no single run of one tiny participant should take this long, even on a loaded machine
KILL_TIMEOUT_S = 3600


def _cli(*args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from bids_app.run import main; sys.exit(main())",
        *args,
    ]


def _outputs_digest(root: Path, subject: str) -> dict[str, str]:
    """sha256 of every data file of one participant (logs and crash files excluded)."""
    digests = {}
    for path in sorted((root / f"sub-{subject}").rglob("*")):
        if path.is_file() and "log" not in path.relative_to(root).parts:
            digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _node_results(work: Path) -> dict[Path, int]:
    """Nipype's own record of what ran: each node's result file and when it was written."""
    return {path.parent: path.stat().st_mtime_ns for path in work.rglob("result_*.pklz")}


def _interface_name(node_dir: Path) -> str:
    from nipype.utils.filemanip import loadpkl

    return type(loadpkl(node_dir / "_node.pklz").interface).__name__


@pytest.fixture(scope="module")
def run(tiny_trial, tmp_path_factory):
    root = tmp_path_factory.mktemp("participant_level")
    bids_dir = root / "bids"
    shutil.copytree(tiny_trial, bids_dir)
    subjects = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir())
    arms = pd.read_csv(bids_dir / "participants.tsv", sep="\t").set_index("participant_id")
    # the broken one and the processed one are ketamine participants: the 2:1 trial's saline arm
    # has 4, exactly what its 3-coefficient models need, so an ROI reported missing in a
    # processed saline participant would leave a saline model inestimable (the group level
    # then stops with an input error). The processed one moves less than the 0.5 mm outlier cut
    # (planted mean FD): seed 7's sub-003 truly moves 0.84-1.01 mm and rightly fails QC, and
    # the group-level test completes the cohort from the processed participant's tables (see
    # _complete_the_cohort). One participant runs the pipeline (~5 min).
    planted = json.loads((bids_dir / "sourcedata/ground_truth/planted_effects.json").read_text())
    fd = planted["imaging"]["mean_fd_mm"]
    ketamine = [s for s in subjects if arms.loc[f"sub-{s}", "group"] == "ketamine"]
    broken = ketamine[0]
    calm = [s for s in ketamine[1:] if max(fd[f"sub-{s}"].values()) < 0.5]
    good = calm[:N_PROCESSED]
    # one more passes every input check but crashes a step (blank T1ws): it runs in the same
    # graph as the good one, which must finish as if alone
    crashed = next(s for s in ketamine[1:] if s not in good)
    subjects = [broken, crashed, *good]
    (bids_dir / f"sub-{broken}/ses-baseline/dwi/sub-{broken}_ses-baseline_dwi.bval").unlink()
    for t1w in (bids_dir / f"sub-{crashed}").glob("ses-*/anat/*_T1w.nii.gz"):
        image = nib.load(t1w)
        nib.save(nib.Nifti1Image(np.zeros(image.shape, np.int16), image.affine), t1w)
    checksum = tree_checksum(bids_dir)
    out, work = root / "out", root / "work"
    args = [
        str(bids_dir),
        str(out),
        "participant",
        "--participant-label",
        *subjects,
        "-w",
        str(work),
        "--nprocs",
        "2",
        "--omp-nthreads",
        "1",
        "--skip-bids-validation",
        *TINY_ROI_RULE,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    first = subprocess.run(_cli(*args), capture_output=True, text=True, env=env)
    digests = {subject: _outputs_digest(out, subject) for subject in good}
    results_before = _node_results(work)
    second = subprocess.run(_cli(*args), capture_output=True, text=True, env=env)
    return SimpleNamespace(
        bids_dir=bids_dir,
        out=out,
        work=work,
        good=good,
        broken=broken,
        crashed=crashed,
        checksum=checksum,
        first=first,
        second=second,
        results_before=results_before,
        results_after=_node_results(work),
        digests=digests,
        root=root,
        env=env,
        tiny_trial=tiny_trial,
    )


def test_broken_participant_fails_alone_with_a_clear_message(run):
    assert run.first.returncode != 0, run.first.stderr[-3000:]
    assert f"sub-{run.broken}" in run.first.stderr
    assert "no .bval file found" in run.first.stderr
    for subject in run.good:
        assert f"sub-{subject}: failed" not in run.first.stderr + run.first.stdout


def test_a_participant_that_crashes_a_step_fails_alone(run):
    """Run in one graph with the good participant: it is listed as failed with its step's
    error, keeps its crash file in its own log folder and gets no derivatives; the good
    participant's outputs are complete (test_output_tree) and identical on the rerun."""
    listed = [line for line in run.first.stderr.splitlines() if f"sub-{run.crashed}:" in line]
    assert any("image is empty" in line or "node " in line for line in listed), listed
    folder = run.out / f"sub-{run.crashed}"
    assert [p.name for p in folder.iterdir()] == ["log"]
    crashes = list((folder / "log").glob("crash-*"))
    assert crashes and all(f"sub_{run.crashed}_wf" in c.read_text() for c in crashes)
    for subject in run.good:
        assert not list((run.out / f"sub-{subject}" / "log").glob("crash-*"))


def test_output_tree(run):
    out = run.out
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "ketamine-dti"
    assert (out / ".bidsignore").exists()
    assert "Veraart" in (out / "logs" / "CITATION.md").read_text()
    for subject in run.good:
        report = (out / f"sub-{subject}.html").read_text()
        assert report.count('alt="T1w to MNI registration: ') == 2  # before and after
        assert report.count('alt="DWI to T1w registration: ') == 2 * 2
        for session in ("baseline", "24h"):
            dwi = out / f"sub-{subject}" / f"ses-{session}" / "dwi"
            prefix = f"sub-{subject}_ses-{session}"
            for name in [
                *(
                    f"_space-dwi_model-tensor_param-{p}_dwimap.nii.gz"
                    for p in "md fa ad rd".split()
                ),
                *(
                    f"_space-dwi_model-fwdti_param-{p}_dwimap.{ext}"
                    for p in ("md", "fwf")
                    for ext in ("nii.gz", "json")
                ),
                "_space-dwi_desc-preproc_dwi.nii.gz",
                "_space-dwi_desc-preproc_dwi.bval",
                "_space-dwi_desc-preproc_dwi.bvec",
                "_space-dwi_desc-preproc_dwi.json",
                "_space-dwi_desc-brain_mask.nii.gz",
                "_space-dwi_model-mppca_param-sigma_dwimap.nii.gz",
                "_from-dwi_to-T1w_mode-image_xfm.mat",
                "_desc-roi_md.tsv",
                "_desc-roi_md.json",
                "_desc-qc_metrics.tsv",
                "_desc-confounds_timeseries.tsv",
            ]:
                assert (dwi / f"{prefix}{name}").exists(), name
            md_meta = json.loads(
                (dwi / f"{prefix}_space-dwi_model-tensor_param-md_dwimap.json").read_text()
            )
            assert md_meta["Units"] == "mm^2/s" and md_meta["Sources"]
            fw_meta = json.loads(
                (dwi / f"{prefix}_space-dwi_model-fwdti_param-md_dwimap.json").read_text()
            )
            # the tiny preset has one shell: the b0-prior fit, with its references recorded
            assert fw_meta["Model"]["FitMethod"] == "single-shell"
            assert fw_meta["Model"]["SingleShellPrior"]["NoiseSD"] > 0
            preproc = json.loads((dwi / f"{prefix}_space-dwi_desc-preproc_dwi.json").read_text())
            assert preproc["SkullStripped"] is False and "PhaseEncodingDirection" in preproc
            md = nib.load(dwi / f"{prefix}_space-dwi_model-tensor_param-md_dwimap.nii.gz")
            raw = nib.load(run.bids_dir / f"sub-{subject}/ses-{session}/dwi/{prefix}_dwi.nii.gz")
            assert md.shape == raw.shape[:3]  # MD on the native DWI grid
            qc = pd.read_csv(dwi / f"{prefix}_desc-qc_metrics.tsv", sep="\t")
            assert len(qc) == 1
            assert {"mean_fd", "max_fd", "n_outlier_volumes", "tsnr"} <= set(qc.columns)
            assert 0 <= qc["mean_fd"].iloc[0] < 5 and qc["tsnr"].iloc[0] > 1
            # free water in the ROIs' gray matter as its anatomy allows: no warning
            low, high = qc["fw_fraction_roi_min"].iloc[0], qc["fw_fraction_roi_max"].iloc[0]
            assert -0.15 <= low <= high <= 0.3, (low, high)
            assert "fw_fraction" not in str(qc["qc_reasons"].iloc[0])
            # the b0 -> T1w map is BBR's: the b0's gray/white contrast across the white
            # surface (tiny sessions 0.28), and MI had already been close on the simulator
            assert 0.0 <= qc["reg_dwi_t1w_bbr_cost"].iloc[0] < 0.5
            assert 0.0 <= qc["reg_dwi_t1w_bbr_shift_mm"].iloc[0] < 1.0
    for subject in run.good:
        anat = out / f"sub-{subject}" / "anat"
        for name in [
            "_desc-preproc_T1w.nii.gz",
            "_desc-preproc_T1w.json",
            "_desc-brain_mask.nii.gz",
            *(f"_label-{label}_probseg.nii.gz" for label in ("GM", "WM", "CSF")),
            "_space-MNI152NLin6Asym_res-2_desc-brain_T1w.nii.gz",
            "_from-T1w_to-MNI152NLin6Asym_mode-image_xfm.h5",
            "_from-MNI152NLin6Asym_to-T1w_mode-image_xfm.h5",
        ]:
            assert (anat / f"sub-{subject}{name}").exists(), name
        for session in ("baseline", "24h"):
            xfm = f"sub-{subject}_ses-{session}_from-orig_to-T1w_mode-image_xfm.mat"
            assert (out / f"sub-{subject}" / f"ses-{session}" / "anat" / xfm).exists()
    assert not (out / f"sub-{run.broken}" / "ses-24h" / "dwi").exists()


def test_published_transforms_chain_dwi_to_t1w_to_mni(run):
    """The published files alone take a session's DWI to the subject's T1w and on to MNI: the
    DWI brain mask lands on the T1w brain mask, and the .h5 reproduces the published MNI image.
    """
    from ketamine_dti.anat.registration import apply_transforms, dice

    subject = run.good[0]
    root = run.out / f"sub-{subject}"
    t1w = root / "anat" / f"sub-{subject}_desc-preproc_T1w.nii.gz"
    t1w_mask = root / "anat" / f"sub-{subject}_desc-brain_mask.nii.gz"
    for session in ("baseline", "24h"):
        prefix = root / f"ses-{session}" / "dwi" / f"sub-{subject}_ses-{session}"
        moved = apply_transforms(
            f"{prefix}_space-dwi_desc-brain_mask.nii.gz",
            t1w,
            [f"{prefix}_from-dwi_to-T1w_mode-image_xfm.mat"],
            run.root / f"dwi_mask_in_t1w_{session}.nii.gz",
            interpolation="nearestNeighbor",
        )
        overlap = dice(nib.load(moved).get_fdata() > 0, nib.load(t1w_mask).get_fdata() > 0)
        assert overlap > 0.8, (session, overlap)
    brain = nib.load(t1w)
    brain = nib.Nifti1Image(brain.get_fdata() * (nib.load(t1w_mask).get_fdata() > 0), brain.affine)
    nib.save(brain, run.root / "t1w_brain.nii.gz")
    published = root / "anat" / f"sub-{subject}_space-MNI152NLin6Asym_res-2_desc-brain_T1w.nii.gz"
    again = apply_transforms(
        run.root / "t1w_brain.nii.gz",
        published,
        [str(root / "anat" / f"sub-{subject}_from-T1w_to-MNI152NLin6Asym_mode-image_xfm.h5")],
        run.root / "t1w_in_mni.nii.gz",
    )
    a, b = nib.load(again).get_fdata().ravel(), nib.load(published).get_fdata().ravel()
    # the published MNI image is made from the brain-band N4 image (brain extraction's second
    # N4), not from the published desc-preproc T1w used here: same geometry, slightly other
    # intensities (r 0.983 measured); a wrong transform gives far less
    assert np.corrcoef(a, b)[0, 1] > 0.97


def test_validator_zero_errors(run):
    from ketamine_dti.validator import validate

    result = validate(run.out)
    assert result.ok, result.summary("error")


def test_roi_table_schema(run):
    from ketamine_dti.dwi.free_water import SINGLE_SHELL_MIN_F
    from ketamine_dti.rois import ROI_NAMES

    for subject in run.good:
        for session in ("baseline", "24h"):
            table = pd.read_csv(
                run.out
                / f"sub-{subject}/ses-{session}/dwi/sub-{subject}_ses-{session}_desc-roi_md.tsv",
                sep="\t",
            )
            assert set(ROI_COLUMNS) <= set(table.columns)
            assert tuple(table["roi"]) == ROI_NAMES
            present = table[table["status"] != "missing"]
            assert (present["n_voxels"] > 0).all()
            assert present["md_mean"].between(2e-4, 2e-3).all()  # mm^2/s, gray matter
            assert present["md_fwcorr_mean"].between(2e-4, 2e-3).all()
            # single shell: negative below the gray-matter b0 reference (SINGLE_SHELL_MIN_F)
            assert present["fw_fraction_mean"].between(SINGLE_SHELL_MIN_F, 1).all()
            missing = table[table["status"] == "missing"]
            assert missing["md_mean"].isna().all()
            assert (missing["reason"].astype(str).str.len() > 0).all()


def test_coarse_accuracy_against_ground_truth(run):
    truth = pd.read_csv(run.bids_dir / "sourcedata/ground_truth/roi_md.tsv", sep="\t")
    errors = []
    for subject in run.good:
        for session in ("baseline", "24h"):
            table = pd.read_csv(
                run.out
                / f"sub-{subject}/ses-{session}/dwi/sub-{subject}_ses-{session}_desc-roi_md.tsv",
                sep="\t",
            )
            true = truth[
                (truth.participant_id == f"sub-{subject}") & (truth.session_id == f"ses-{session}")
            ]
            merged = table[table["status"] != "missing"].merge(true, on="roi")
            errors += list((merged.md_mean / merged.md_true - 1).abs())
    # ROIs reported missing are not numbers; with TINY_ROI_RULE at most one may be missing
    assert len(errors) >= 6 * 2 * len(run.good)
    assert np.median(errors) < TINY_MEDIAN_REL_ERROR_MAX


def test_progress_is_plain_log_lines_when_not_on_a_terminal(run):
    """Captured stderr is no terminal: a line per started long step and per participant that
    finished (k/n steps) or failed, and no carriage returns."""
    log = run.first.stderr
    assert "\r" not in log
    for subject in run.good:
        assert re.search(rf"sub-{subject}: anatomy: extract_brain started \(\d+/\d+ steps", log)
        assert re.search(rf"sub-{subject}: ses-24h: motion_correct started \(\d+/\d+ steps", log)
        assert re.search(rf"sub-{subject}: all \d+ steps done", log)
        assert re.search(rf"sub-{subject}: all \d+ steps done", run.second.stderr)  # cached
    assert re.search(rf"sub-{run.crashed}: .+ failed \(\d+/\d+ steps done\)", log)


def test_bids_dir_unchanged(run):
    assert tree_checksum(run.bids_dir) == run.checksum


def test_rerun_resumes_and_gives_identical_outputs(run):
    assert run.second.returncode == run.first.returncode
    # served from Nipype's cache: no node wrote a new result, except the sinks (always_run)
    assert set(run.results_after) == set(run.results_before)
    crashed = f"sub_{run.crashed}_wf"  # its failed step runs again, as it should
    rerun = {
        d for d, mtime in run.results_after.items()
        if mtime != run.results_before[d] and crashed not in d.parts
    }  # fmt: skip
    assert {_interface_name(d) for d in rerun} <= {"DerivativesSink"}, sorted(rerun)
    assert len(rerun) < len(run.results_after)  # the computing nodes were all served cached
    # the cache is stamped with this code's fingerprint (ketamine_dti.work_cache)
    stamp = run.work / f"{RUN_WORKFLOW}{STAMP_SUFFIX}"
    assert json.loads(stamp.read_text())["fingerprint"] == code_fingerprint()
    for subject in run.good:
        assert _outputs_digest(run.out, subject) == run.digests[subject]


def _result_count(work: Path) -> int:
    """Nipype result files under a work dir (counted again if a node folder vanishes mid-walk)."""
    while True:
        try:
            return sum(1 for _ in work.rglob("result_*.pklz"))
        except FileNotFoundError:
            continue


def test_sigkill_at_random_points_leaves_nothing_or_everything(run):
    """SIGKILL a fresh run of one participant at five random points of its progress (after a
    random number of Nipype nodes finished; the last at the very end, where the sinks write and
    the staged outputs move into place), resuming each time with the same work dir. After every
    kill OUTPUT_DIR/sub-<label> holds no derivatives (at most its log) or exactly the
    uninterrupted run's; the final run's outputs are byte-identical to it."""
    subject = run.good[0]
    reference = run.digests[subject]
    n_nodes = _result_count(run.work / RUN_WORKFLOW / f"sub_{subject}_wf")
    draws = np.random.default_rng(10).choice(np.arange(1, n_nodes), N_KILLS - 1, replace=False)
    kill_points = [*sorted(int(k) for k in draws), n_nodes]
    out, work = run.root / "out_killed", run.root / "work_killed"
    args = [
        str(run.bids_dir), str(out), "participant", "--participant-label", subject,
        "-w", str(work), "--nprocs", "2", "--omp-nthreads", "1", "--skip-bids-validation",
        *TINY_ROI_RULE,
    ]  # fmt: skip
    outcomes = []
    for kill_after in kill_points:
        process = subprocess.Popen(
            _cli(*args), env=run.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while process.poll() is None and _result_count(work) < kill_after:
            assert time.monotonic() < deadline, "the run neither progressed nor ended"
            time.sleep(0.05)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        found = _outputs_digest(out, subject) if (out / f"sub-{subject}").exists() else {}
        assert found in ({}, reference), f"kill after {kill_after} nodes left partial outputs"
        outcomes.append("complete" if found else "none")
    resumed = subprocess.run(_cli(*args), capture_output=True, text=True, env=run.env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _outputs_digest(out, subject) == reference
    assert not (out / ".ketamine-dti-staging").exists()
    print(f"kills after {kill_points} of {n_nodes} node results: {outcomes}")


def _complete_the_cohort(run) -> list[str]:
    """The group models need the whole 2:1 trial; only N_PROCESSED participants ran the
    pipeline. The others get ROI tables with their true MD (ground truth) in the layout of a
    real participant's table, and that participant's QC row; returns every good label."""
    from ketamine_dti.derivatives import spec_path

    truth = pd.read_csv(run.bids_dir / "sourcedata/ground_truth/roi_md.tsv", sep="\t")
    labels = sorted(p.name[4:] for p in run.bids_dir.glob("sub-*") if p.is_dir())
    template = run.good[0]
    for subject in (s for s in labels if s not in (run.broken, run.crashed, *run.good)):
        for session in ("baseline", "24h"):
            table = pd.read_csv(spec_path(run.out, "roi_table", template, session), sep="\t")
            true = truth[(truth.participant_id == f"sub-{subject}")
                         & (truth.session_id == f"ses-{session}")].set_index("roi")  # fmt: skip
            table["md_mean"] = table["md_median"] = table["roi"].map(true["md_true"])
            table["status"], table["reason"] = "ok", "n/a"
            table["n_voxels"] = table["n_voxels"].clip(lower=10)
            qc = pd.read_csv(spec_path(run.out, "qc_table", template, session), sep="\t")
            qc["participant_id"] = f"sub-{subject}"
            for key, frame in (("roi_table", table), ("qc_table", qc)):
                path = spec_path(run.out, key, subject, session)
                path.parent.mkdir(parents=True, exist_ok=True)
                frame.to_csv(path, sep="\t", index=False, na_rep="n/a")
    return [s for s in labels if s not in (run.broken, run.crashed)]


@pytest.fixture(scope="module")
def group_run(run):
    """The group level on the participant run's outputs (the cohort completed first)."""
    analysed = _complete_the_cohort(run)
    group = subprocess.run(
        _cli(str(run.bids_dir), str(run.out), "group", "--skip-bids-validation"),
        capture_output=True,
        text=True,
        env=run.env,
    )
    return SimpleNamespace(analysed=analysed, result=group)


def test_group_level_end_to_end(run, group_run):
    """participant then group on the same trial: the schema and files of issue 4."""
    analysed, group = group_run.analysed, group_run.result
    assert group.returncode == 0, group.stderr[-3000:]
    out = run.out / "group"
    stats = pd.read_csv(out / "stats.tsv", sep="\t")
    assert list(stats.columns) == [
        "scale", "roi", "model", "term", "estimate", "std_error", "statistic",
        "p_value", "p_fdr", "ci_low", "ci_high", "n", "p_perm", "p_perm_fdr",
    ]  # fmt: skip
    interaction = stats[(stats.model == "interaction") & (stats.term == "group:delta_md")]
    assert len(interaction) == 7 * 2  # 7 ROIs x 2 scales
    # the broken participant left every model; an ROI reported missing leaves its own
    assert (interaction.n <= len(analysed)).all() and (interaction.n >= len(analysed) - 2).all()
    exclusions = pd.read_csv(out / "exclusions.tsv", sep="\t")
    assert f"sub-{run.broken}" in set(exclusions.participant_id)
    analysis = pd.read_csv(out / "analysis_table.tsv", sep="\t")
    assert len(analysis) >= len(analysed)
    for name in ("stats", "analysis_table", "exclusions"):
        assert (out / f"{name}.json").exists()
    assert (out / "summary.md").read_text().count("|") > 20
    assert len(list((out / "figures").glob("*.png"))) >= 7 * 2 + 2
    assert "<img" in (out / "group_report.html").read_text()


#: Where the browser test also saves its screenshots (docs/ holds the committed ones).
SCREENSHOT_DIR = os.environ.get("KETAMINE_DTI_SCREENSHOT_DIR")


def test_every_report_opens_in_a_browser(run, group_run, tmp_path):
    """Headless Chromium opens every report of the run (the good participant's, the crashed
    one's and the group's): no console error, every image decodes, every internal link
    resolves (the crashed participant's crash files, the group's links to reports), the
    before/after panels switch on a click, and a screenshot is taken."""
    from browser import Browser, chromium

    if chromium() is None:
        pytest.skip("Chromium is not installed (scripts/test.sh installs it as root)")
    assert group_run.result.returncode == 0, group_run.result.stderr[-3000:]
    good = run.good[0]
    reports = {
        "participant": run.out / f"sub-{good}.html",
        "failed": run.out / f"sub-{run.crashed}.html",
        "group": run.out / "group" / "group_report.html",
    }
    toggle = (
        "(() => { const box = document.querySelector('.compare input'); const shown = () =>"
        " getComputedStyle(box.nextElementSibling.querySelector('.before')).display;"
        " const before = shown(); box.click(); return [before, shown()]; })()"
    )
    with Browser(chromium()) as browser:
        checks = {
            name: browser.inspect_page(path, {"toggle": toggle} if name == "participant" else None)
            for name, path in reports.items()
        }
    for name, check in checks.items():
        assert check.problems == [], name
        assert check.screenshot[:8] == b"\x89PNG\r\n\x1a\n", name
        for word in ("Summary", "Methods", "Software", "nipype"):
            assert word in check.text, (name, word)
    participant, failed, group = checks["participant"], checks["failed"], checks["group"]
    # MNI and two sessions' registration, before and after; MD montage and motion x 2
    assert participant.n_images == 2 + 2 * 2 + 2 * 2
    assert participant.evaluated["toggle"] == ["none", "block"]
    assert "Veraart" in participant.text  # the methods boilerplate with its references
    assert "Greve" in participant.text and "BBR cost" in participant.text
    assert "Failed" in failed.text and "crash-" in failed.text
    assert any(
        link.startswith(f"sub-{run.crashed}/log/crash-") for link in _links(reports["failed"])
    )
    assert group.n_images == len(list((reports["group"].parent / "figures").glob("*.png")))
    assert f"sub-{run.broken}" in group.text  # its exclusion, with the reason
    if SCREENSHOT_DIR:
        for name in ("participant", "group"):
            Path(SCREENSHOT_DIR, f"report_{name}.png").write_bytes(checks[name].screenshot)


def _links(page: Path) -> list[str]:
    import re

    return re.findall(r'href="([^"#][^"]*)"', page.read_text())


def _slurm_available() -> bool:
    try:
        state = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "idle" in state.stdout or "mix" in state.stdout


def test_slurm_plugin_gives_the_same_outputs(run):
    """The same participant through Nipype's SLURM plugin (a real one-node cluster, started by
    scripts/start_slurm.sh) gives byte-identical outputs to the MultiProc run.

    It resumes the MultiProc run's work dir with one session's nodes deleted: that session's
    preprocessing, registration, ROI and QC nodes run as SLURM jobs (Nipype writes a batch
    script for each), its sinks in the submitting process (``run_without_submitting``), while
    the anatomy (half of a participant's CPU, already proven identical on a rerun) stays
    cached."""
    if not _slurm_available():
        if os.environ.get("CI"):
            pytest.fail("CI needs the SLURM cluster: scripts/start_slurm.sh did not bring it up")
        pytest.skip("no SLURM cluster here (run scripts/start_slurm.sh as root)")
    subject = run.good[0]
    session_dir = run.work / RUN_WORKFLOW / f"sub_{subject}_wf" / "ses_24h_wf"
    deleted = {path for path in _node_results(run.work) if session_dir in path.parents}
    assert len(deleted) > 5
    shutil.rmtree(session_dir)
    plugin_config = run.root / "slurm.yml"
    plugin_config.write_text("sbatch_args: --cpus-per-task=1 --mem=3000\nmax_jobs: 2\n")
    out = run.root / "out_slurm"
    proc = subprocess.run(
        _cli(
            str(run.bids_dir), str(out), "participant", "--participant-label", subject,
            "-w", str(run.work), "--plugin", "SLURM", "--plugin-config", str(plugin_config),
            "--skip-bids-validation", *TINY_ROI_RULE,
        ),
        capture_output=True,
        text=True,
        env=run.env,
        cwd=run.root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert deleted <= set(_node_results(run.work))  # the deleted session's nodes ran again
    computing = [d for d in deleted if _interface_name(d) != "DerivativesSink"]
    batch = {path.name for path in run.work.rglob("batchscript_*.sh")}
    for node_dir in computing:  # ... as SLURM jobs: one batch script per submitted node
        parts = node_dir.relative_to(run.work).parts
        suffix = ".".join(parts[:-1]) + "_" + parts[-1] + ".sh"
        assert any(name.endswith(suffix) for name in batch), f"{node_dir} ran outside SLURM"
    assert len(computing) >= 10
    assert _outputs_digest(out, subject) == run.digests[subject]
