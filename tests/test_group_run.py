"""Group level end to end on written TSVs: output schema, exclusions, atomic rerun."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import GROUP_TRIAL_PARTICIPANTS, read_tsv

from ketamine_dti.config import Config
from ketamine_dti.errors import InputError
from ketamine_dti.group import run_group_level
from ketamine_dti.group.tables import STATS_COLUMNS
from ketamine_dti.rois import ROI_NAMES

N_PARTICIPANTS = GROUP_TRIAL_PARTICIPANTS
TERMS = {"group", "delta_md", "group:delta_md", "baseline_score", "baseline_md"}


@pytest.fixture
def trial(group_trial: Config) -> Config:
    return group_trial


_read = read_tsv


def _participant_outputs(config: Config) -> dict[str, str]:
    return {
        str(path.relative_to(config.output_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(config.output_dir.glob("sub-*/**/*"))
        if path.is_file()
    }


def _set_cell(path: Path, match: str, column: str, value: str) -> None:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    for i, line in enumerate(lines[1:], start=1):
        if line.startswith(match):
            cells = line.split("\t")
            cells[header.index(column)] = value
            lines[i] = "\t".join(cells)
    path.write_text("\n".join(lines) + "\n")


def test_outputs_schema_sidecars_figures_and_report(trial: Config) -> None:
    group_dir = run_group_level(trial)
    assert group_dir == trial.output_dir / "group"

    stats = _read(group_dir / "stats.tsv")
    assert tuple(stats.columns) == STATS_COLUMNS
    assert set(stats.term) == TERMS
    assert set(stats.model) == {
        "interaction",
        "pooled",
        "arm_ketamine",
        "arm_saline",
        "treatment_md",
        "treatment_score",
    }
    assert (stats.loc[stats.model == "treatment_md", "scale"] == "").all()  # empty cell
    assert (stats.loc[stats.model == "treatment_score", "roi"] == "").all()
    assert set(stats.loc[stats.model == "interaction", "roi"]) == set(ROI_NAMES)
    assert (
        stats[["estimate", "std_error", "p_value", "p_fdr", "ci_low", "ci_high"]]
        .notna()
        .all()
        .all()
    )
    assert ((stats.p_fdr >= stats.p_value - 1e-15) & (stats.p_fdr <= 1)).all()
    assert (stats.ci_low < stats.estimate).all() and (stats.estimate < stats.ci_high).all()

    table = _read(group_dir / "analysis_table.tsv")
    assert len(table) == N_PARTICIPANTS and table.participant_id.is_unique
    for roi in ROI_NAMES:
        assert {f"md_{roi}_baseline", f"md_{roi}_24h", f"delta_md_{roi}"} <= set(table.columns)
    assert {"madrs_baseline", "madrs_24h", "delta_madrs", "delta_qids_sr"} <= set(table.columns)
    np.testing.assert_allclose(
        table.delta_md_vacc, (table.md_vacc_24h - table.md_vacc_baseline) / 1e-5, rtol=1e-9
    )

    for name in ("stats", "analysis_table", "exclusions"):
        sidecar = json.loads((group_dir / f"{name}.json").read_text())
        header = (group_dir / f"{name}.tsv").read_text().splitlines()[0].split("\t")
        assert list(sidecar) == header, name
        assert all(entry.get("Description") for entry in sidecar.values())
    assert (
        "1e-05 mm^2/s"
        in json.loads((group_dir / "stats.json").read_text())["estimate"]["Description"]
    )

    figures = sorted((group_dir / "figures").glob("*.png"))
    assert len(figures) == 2 + 2 * len(ROI_NAMES)
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in figures)

    html = (group_dir / "group_report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figures)
    # self-contained: images embedded; links only within the page or to participants' reports
    assert not re.search(r"""src=["'](?!data:)""", html), "report must embed its images"
    assert not re.search(r"""href=["'](?!#|\.\./sub-[^/"']+\.html)""", html)
    summary = (group_dir / "summary.md").read_text()
    for text in (summary, html):
        assert "Models:" in text and "hippocampus_left" in text and "Clinical effect" in text


def test_exclusions_and_n(trial: Config) -> None:
    out, bids = trial.output_dir, trial.bids_dir
    # sub-002: no follow-up session at all (participant level failed).
    for path in (out / "sub-002" / "ses-24h" / "dwi").iterdir():
        path.unlink()
    # sub-003: MADRS missing at follow-up -> leaves the MADRS models only.
    _set_cell(bids / "phenotype" / "madrs.tsv", "sub-003\tses-24h", "madrs_total", "n/a")
    # sub-004: no vACC value at baseline -> leaves the vACC models only.
    roi_table = next((out / "sub-004" / "ses-baseline" / "dwi").glob("*_desc-roi_md.tsv"))
    _set_cell(roi_table, "vacc", "md_mean", "n/a")
    # sub-005: too much motion at follow-up.
    qc_table = next((out / "sub-005" / "ses-24h" / "dwi").glob("*_desc-qc_metrics.tsv"))
    _set_cell(qc_table, "", "mean_fd", "2.5")
    before = _participant_outputs(trial)

    group_dir = run_group_level(replace(trial, max_mean_fd=1.0), make_figures=False)
    assert _participant_outputs(trial) == before, "participant outputs are never modified"

    exclusions = _read(group_dir / "exclusions.tsv")
    by_participant = {pid: rows for pid, rows in exclusions.groupby("participant_id")}
    assert set(by_participant) == {"sub-002", "sub-003", "sub-004", "sub-005"}
    assert "no ROI MD table for ses-24h" in by_participant["sub-002"].reason.iloc[0]
    assert by_participant["sub-003"].scale.iloc[0] == "madrs"
    assert by_participant["sub-004"].roi.iloc[0] == "vacc"
    assert "mean FD 2.5 mm above --max-mean-fd 1" in by_participant["sub-005"].reason.iloc[0]

    stats = _read(group_dir / "stats.tsv")

    def n(scale: str, roi: str, model: str = "interaction") -> int:
        rows = stats[(stats.scale == scale) & (stats.roi == roi) & (stats.model == model)]
        return int(rows.n.iloc[0])

    full = N_PARTICIPANTS - 2  # sub-002 and sub-005 lack a follow-up MD
    assert n("qids_sr", "ba10_left") == full
    assert n("madrs", "ba10_left") == full - 1  # and sub-003 lacks MADRS
    assert n("qids_sr", "vacc") == full - 1  # and sub-004 lacks vACC
    assert n("madrs", "vacc") == full - 2
    assert (
        int(stats[(stats.model == "treatment_score") & (stats.scale == "madrs")].n.iloc[0])
        == N_PARTICIPANTS - 1
    )
    table = _read(group_dir / "analysis_table.tsv").set_index("participant_id")
    assert np.isnan(table.loc["sub-005", "md_vacc_24h"]) and np.isnan(
        table.loc["sub-004", "delta_md_vacc"]
    )


def test_covariates_and_percent_change(trial: Config) -> None:
    config = replace(trial, covariates=("age", "sex"), delta_md="percent", robust_se=True)
    stats = _read(run_group_level(config, make_figures=False) / "stats.tsv")
    interaction = stats[stats.model == "interaction"]
    assert {"age", "sex[T.M]"} <= set(interaction.term)
    assert not {"age", "sex[T.M]"} & set(stats[stats.model == "treatment_md"].term)
    sidecar = json.loads((trial.output_dir / "group" / "stats.json").read_text())
    assert "percent of baseline MD" in sidecar["estimate"]["Description"]
    assert "HC3" in sidecar["model"]["Description"]


def test_rerun_replaces_group_atomically_and_failure_keeps_the_old(trial: Config) -> None:
    before = _participant_outputs(trial)
    group_dir = run_group_level(trial, make_figures=False)
    (group_dir / "stale.txt").write_text("from an earlier run")
    first_stats = (group_dir / "stats.tsv").read_text()

    run_group_level(replace(trial, robust_se=True), make_figures=False)
    assert not (group_dir / "stale.txt").exists(), "group/ is replaced as a whole"
    assert (group_dir / "stats.tsv").read_text() != first_stats
    leftovers = [p.name for p in trial.output_dir.iterdir() if p.name.startswith(".group")]
    assert leftovers == []

    second = {p.name: p.read_bytes() for p in group_dir.iterdir() if p.is_file()}
    _set_cell(trial.bids_dir / "phenotype" / "madrs.tsv", "sub-001\tses-24h", "madrs_total", "99")
    with pytest.raises(InputError):
        run_group_level(trial, make_figures=False)
    assert {p.name: p.read_bytes() for p in group_dir.iterdir() if p.is_file()} == second
    assert [p.name for p in trial.output_dir.iterdir() if p.name.startswith(".group")] == []
    assert _participant_outputs(trial) == before


def test_group_level_reads_no_ground_truth(trial: Config) -> None:
    """A ground-truth folder in BIDS_DIR/sourcedata must not change anything."""
    first = (run_group_level(trial, make_figures=False) / "stats.tsv").read_text()
    truth = trial.bids_dir / "sourcedata" / "ground_truth"
    truth.mkdir(parents=True)
    (truth / "roi_md.tsv").write_text("participant_id\tsession_id\troi\tmd_true\nbroken\n")
    assert (run_group_level(trial, make_figures=False) / "stats.tsv").read_text() == first


def _add_columns(path: Path, values: dict[str, str]) -> None:
    """Append columns (one value for every row) to a TSV, as the participant level writes them."""
    lines = path.read_text().splitlines()
    lines[0] += "".join(f"\t{column}" for column in values)
    lines[1:] = [line + "".join(f"\t{v}" for v in values.values()) for line in lines[1:]]
    path.write_text("\n".join(lines) + "\n")


def test_failed_qc_and_missing_rois_are_excluded_with_their_reasons(trial: Config) -> None:
    out = trial.output_dir
    for path in out.glob("sub-*/ses-*/dwi/*_desc-qc_metrics.tsv"):
        _add_columns(path, {"qc_verdict": "pass", "qc_reasons": "n/a"})
    for path in out.glob("sub-*/ses-*/dwi/*_desc-roi_md.tsv"):
        _add_columns(path, {"status": "ok", "reason": "n/a"})
    # sub-006: a failed registration at follow-up -> the whole participant leaves
    failed = next((out / "sub-006" / "ses-24h" / "dwi").glob("*_desc-qc_metrics.tsv"))
    reasons = "reg_t1w_mni_ncc 0.202 < 0.5 (fail: T1w to MNI registration failed)"
    _set_cell(failed, "", "qc_verdict", "fail")
    _set_cell(failed, "", "qc_reasons", reasons)
    # sub-007: a warning only -> kept
    warned = next((out / "sub-007" / "ses-baseline" / "dwi").glob("*_desc-qc_metrics.tsv"))
    _set_cell(warned, "", "qc_verdict", "warn")
    # sub-008: vACC missing at baseline; its md_mean (left as a number) must not be used
    roi_table = next((out / "sub-008" / "ses-baseline" / "dwi").glob("*_desc-roi_md.tsv"))
    _set_cell(roi_table, "vacc", "status", "missing")
    _set_cell(roi_table, "vacc", "reason", "kept 4 of 188 atlas voxels (2.1% < 30%)")

    group_dir = run_group_level(trial, make_figures=False)
    exclusions = _read(group_dir / "exclusions.tsv")
    assert set(exclusions.participant_id) == {"sub-006", "sub-008"}
    sub006 = exclusions[exclusions.participant_id == "sub-006"].iloc[0]
    assert (sub006.session_id, sub006.roi, sub006.models) == ("ses-24h", "all", "all")
    assert sub006.reason == f"QC failed at ses-24h: {reasons}"
    sub008 = exclusions[exclusions.participant_id == "sub-008"].iloc[0]
    assert (sub008.session_id, sub008.roi) == ("ses-baseline", "vacc")
    assert sub008.reason == "vacc missing at ses-baseline: kept 4 of 188 atlas voxels (2.1% < 30%)"
    table = _read(group_dir / "analysis_table.tsv").set_index("participant_id")
    md_columns = [column for column in table.columns if column.startswith(("md_", "delta_md_"))]
    assert table.loc["sub-006", md_columns].isna().all(), "no MD of a failed participant"
    assert table.loc["sub-007", md_columns].notna().all(), "a warning does not exclude"
    assert np.isnan(table.loc["sub-008", "md_vacc_baseline"])
    assert not np.isnan(table.loc["sub-008", "md_ba10_left_baseline"])
    stats = _read(group_dir / "stats.tsv")
    interaction = stats[(stats.model == "interaction") & (stats.scale == "madrs")]
    n = dict(zip(interaction.roi, interaction.n, strict=False))
    assert n["ba10_left"] == N_PARTICIPANTS - 1 and n["vacc"] == N_PARTICIPANTS - 2

    kept = run_group_level(replace(trial, include_failed_qc=True), make_figures=False)
    exclusions = _read(kept / "exclusions.tsv")
    assert set(exclusions.participant_id) == {"sub-008"}
    kept_table = _read(kept / "analysis_table.tsv").set_index("participant_id")
    assert kept_table.loc["sub-006", md_columns].notna().all()


def test_all_participants_failing_qc_says_so(trial: Config) -> None:
    for path in trial.output_dir.glob("sub-*/ses-baseline/dwi/*_desc-qc_metrics.tsv"):
        _add_columns(path, {"qc_verdict": "fail", "qc_reasons": "mean_fd 2 > 1 (fail)"})
    with pytest.raises(InputError, match="every one failed QC.*--include-failed-qc"):
        run_group_level(trial, make_figures=False)


def test_unknown_qc_verdict_is_an_input_error(trial: Config) -> None:
    path = next(trial.output_dir.glob("sub-001/ses-24h/dwi/*_desc-qc_metrics.tsv"))
    _add_columns(path, {"qc_verdict": "maybe", "qc_reasons": "n/a"})
    with pytest.raises(InputError, match=r"column qc_verdict: 'maybe' is not one of pass"):
        run_group_level(trial, make_figures=False)


def test_an_roi_too_few_participants_have_leaves_only_its_fits_na(trial: Config) -> None:
    """The container CI's failure: one arm's model has too few participants in one ROI. That
    fit is n/a (with n), listed in summary.md and the report's verdict; every other fit stands,
    and its FDR and max-T families hold the remaining ROIs."""
    out = trial.output_dir
    participants = _read(trial.bids_dir / "participants.tsv")
    saline = participants.loc[participants.group == "saline", "participant_id"].tolist()
    for participant in saline[3:]:  # 3 saline participants keep vACC; arm_saline needs 4
        table = next((out / participant / "ses-baseline" / "dwi").glob("*_desc-roi_md.tsv"))
        _set_cell(table, "vacc", "md_mean", "n/a")
    for participant in participants.participant_id:  # nobody keeps hippocampus_left
        table = next((out / participant / "ses-24h" / "dwi").glob("*_desc-roi_md.tsv"))
        _set_cell(table, "hippocampus_left", "md_mean", "n/a")
    config = replace(trial, permutations=199, fwer="maxt")

    group_dir = run_group_level(config)
    stats = _read(group_dir / "stats.tsv")
    empty = stats.roi == "hippocampus_left"
    saline_vacc = (stats.model == "arm_saline") & (stats.roi == "vacc")
    na = stats.estimate.isna()
    assert (na == (empty | saline_vacc)).all(), "exactly those fits are n/a"
    assert (stats.loc[saline_vacc, "n"] == 3).all() and (stats.loc[empty, "n"] == 0).all()
    assert set(stats.loc[empty, "model"]) == {
        "interaction", "pooled", "arm_ketamine", "arm_saline", "treatment_md"
    }  # fmt: skip
    for column in ("p_value", "p_fdr", "ci_low", "p_perm", "p_perm_fdr", "p_perm_fwer"):
        assert (stats[column].isna() == na).all(), column
    interaction = stats[(stats.model == "interaction") & (stats.roi == "vacc")]
    assert (interaction.n == N_PARTICIPANTS - (len(saline) - 3)).all()
    # the saline slopes' FDR family: the 5 ROIs left
    from ketamine_dti.group.multiple_comparisons import benjamini_hochberg

    family = stats[(stats.model == "arm_saline") & (stats.term == "delta_md")]
    family = family[(family.scale == "madrs") & family.p_value.notna()]
    assert len(family) == len(ROI_NAMES) - 2
    np.testing.assert_allclose(family.p_fdr, benjamini_hochberg(family.p_value.to_numpy()))

    summary = (group_dir / "summary.md").read_text()
    assert "## Fits not estimable (n/a in stats.tsv)" in summary
    assert "| arm_saline | madrs | vacc | 3 |" in summary
    assert "| interaction | qids_sr | hippocampus_left | 0 |" in summary
    html = (group_dir / "group_report.html").read_text()
    n_missing = 2 * 4 + 1 + 2  # per scale: 4 models of the empty ROI, arm_saline of vACC
    assert f"{n_missing} fit(s) not estimable" in html
    assert len(list((group_dir / "figures").glob("*.png"))) == 2 + 2 * len(ROI_NAMES)
