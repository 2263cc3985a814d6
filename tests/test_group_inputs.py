"""Group level, bad input: each case raises InputError naming the file, line and column."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ketamine_dti.config import Config
from ketamine_dti.errors import InputError
from ketamine_dti.group import run_group_level
from ketamine_dti.group.inputs import load_inputs
from ketamine_dti.simulate.validation import simulate_trial_files

N_PARTICIPANTS = 24


@pytest.fixture
def trial(tmp_path: Path) -> Config:
    config, _ = simulate_trial_files(tmp_path, N_PARTICIPANTS, "paper", np.random.default_rng(5))
    return config


def _edit_tsv(path: Path, row: int, column: str, value: str) -> None:
    """Set one cell (data row index from 0) of a TSV."""
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    cells = lines[row + 1].split("\t")
    cells[header.index(column)] = value
    lines[row + 1] = "\t".join(cells)
    path.write_text("\n".join(lines) + "\n")


def _drop_column(path: Path, column: str) -> None:
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    index = rows[0].index(column)
    path.write_text("\n".join("\t".join(r[:index] + r[index + 1 :]) for r in rows) + "\n")


def _error(config: Config) -> str:
    with pytest.raises(InputError) as info:
        run_group_level(config, make_figures=False)
    message = str(info.value)
    assert "\n" not in message, "messages are one line"
    assert not (config.output_dir / "group").exists(), "a failed run writes no group/"
    return message


def test_missing_participants_tsv(trial: Config) -> None:
    (trial.bids_dir / "participants.tsv").unlink()
    message = _error(trial)
    assert "participants.tsv: not found" in message and "'group'" in message


def test_missing_arm_column(trial: Config) -> None:
    message = _error(replace(trial, arm_column="arm"))
    assert re.search(r"participants\.tsv: column 'arm' missing", message)
    assert "--arm-column" in message


def test_unknown_arm_value_lists_values_found(trial: Config) -> None:
    _edit_tsv(trial.bids_dir / "participants.tsv", 4, "group", "placebo")
    message = _error(trial)
    assert "participants.tsv: line 6, column group: arm 'placebo'" in message
    assert "labels found: ketamine, placebo, saline" in message and "--contrast" in message


def test_only_one_arm(trial: Config) -> None:
    path = trial.bids_dir / "participants.tsv"
    path.write_text(path.read_text().replace("\tsaline\t", "\tketamine\t"))
    message = _error(trial)
    assert "participants.tsv: column group: only ketamine arm present" in message


def test_only_one_arm_after_participant_selection(trial: Config) -> None:
    text = (trial.bids_dir / "participants.tsv").read_text().splitlines()[1:]
    treated = [line.split("\t")[0] for line in text if "\tketamine\t" in line]
    message = _error(replace(trial, participant_labels=tuple(treated[:5])))
    assert "only ketamine arm present" in message


def test_missing_phenotype_file(trial: Config) -> None:
    (trial.bids_dir / "phenotype" / "qids_sr.tsv").unlink()
    message = _error(trial)
    assert "phenotype/qids_sr.tsv: not found" in message and "--scales" in message


def test_unknown_scale_without_file(trial: Config) -> None:
    message = _error(replace(trial, scales=("madrs", "hamd17")))
    assert "phenotype/hamd17.tsv: not found" in message


def test_score_outside_range(trial: Config) -> None:
    _edit_tsv(trial.bids_dir / "phenotype" / "madrs.tsv", 7, "madrs_total", "61")
    message = _error(trial)
    assert "madrs.tsv: line 9, column madrs_total: 61 is outside the madrs range 0-60" in message


def test_negative_qids_score(trial: Config) -> None:
    _edit_tsv(trial.bids_dir / "phenotype" / "qids_sr.tsv", 0, "qids_sr_total", "-1")
    assert "qids_sr.tsv: line 2, column qids_sr_total: -1 is outside" in _error(trial)


def test_non_numeric_score(trial: Config) -> None:
    _edit_tsv(trial.bids_dir / "phenotype" / "madrs.tsv", 2, "madrs_total", "severe")
    assert "madrs.tsv: line 4, column madrs_total: 'severe' is not a number" in _error(trial)


def test_duplicate_participant_session(trial: Config) -> None:
    path = trial.bids_dir / "phenotype" / "madrs.tsv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[3]]) + "\n")
    message = _error(trial)
    assert f"madrs.tsv: line {len(lines) + 1}, column participant_id/session_id" in message
    assert "duplicate row" in message and "also line 4" in message


def test_duplicate_participant_row(trial: Config) -> None:
    path = trial.bids_dir / "participants.tsv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[1]]) + "\n")
    assert "participants.tsv: line" in _error(trial)


def test_no_participant_outputs(trial: Config, tmp_path: Path) -> None:
    empty = tmp_path / "empty_out"
    empty.mkdir()
    message = _error(replace(trial, output_dir=empty))
    assert "no participant outputs" in message and "run the participant level first" in message


def test_fewer_participants_than_a_model_needs(trial: Config) -> None:
    lines = (trial.bids_dir / "participants.tsv").read_text().splitlines()[1:]
    treated = [line.split("\t")[0] for line in lines if "\tketamine\t" in line]
    control = [line.split("\t")[0] for line in lines if "\tsaline\t" in line]
    message = _error(replace(trial, participant_labels=(*treated[:4], *control[:3])))
    assert "arm_saline model" in message
    assert "3 participants with complete data" in message and "need at least 4" in message


def test_missing_covariate_column(trial: Config) -> None:
    message = _error(replace(trial, covariates=("age", "bmi")))
    assert "participants.tsv: column 'bmi' missing" in message


def test_bad_md_value(trial: Config) -> None:
    path = next(trial.output_dir.glob("sub-003/ses-24h/dwi/*_desc-roi_md.tsv"))
    _edit_tsv(path, 2, "md_mean", "-0.0008")
    message = _error(trial)
    assert f"{path}: line 4, column md_mean" in message and "not a positive MD" in message


def test_roi_table_without_md_mean(trial: Config) -> None:
    path = next(trial.output_dir.glob("sub-002/ses-baseline/dwi/*_desc-roi_md.tsv"))
    _drop_column(path, "md_mean")
    assert f"{path}: column 'md_mean' missing" in _error(trial)


def test_max_mean_fd_without_qc_tables(trial: Config) -> None:
    path = next(trial.output_dir.glob("sub-001/ses-24h/dwi/*_desc-qc_metrics.tsv"))
    path.unlink()
    message = _error(replace(trial, max_mean_fd=0.5))
    assert f"{path}: not found" in message and "--max-mean-fd" in message


def test_ragged_row(trial: Config) -> None:
    path = trial.bids_dir / "participants.tsv"
    lines = path.read_text().splitlines()
    lines[2] += "\textra"
    path.write_text("\n".join(lines) + "\n")
    assert "participants.tsv: line 3 has 5 cells, the header 4" in _error(trial)


def test_missing_values_exclude_instead_of_failing(trial: Config) -> None:
    """n/a is not bad input: the participant leaves the affected models, with a reason."""
    _edit_tsv(trial.bids_dir / "phenotype" / "madrs.tsv", 0, "madrs_total", "n/a")
    sub = trial.bids_dir.joinpath("participants.tsv").read_text().splitlines()[1].split("\t")[0]
    inputs = load_inputs(trial)
    reasons = [e for e in inputs.exclusions if e["participant_id"] == sub]
    assert reasons and reasons[0]["scale"] == "madrs"
    assert "no madrs score at ses-baseline" in reasons[0]["reason"]


def test_other_scale_takes_its_range_from_the_data_dictionary(trial: Config) -> None:
    phenotype = trial.bids_dir / "phenotype"
    text = (phenotype / "qids_sr.tsv").read_text().replace("qids_sr_total", "hamd17_total")
    (phenotype / "hamd17.tsv").write_text(text)
    (phenotype / "hamd17.json").write_text('{"hamd17_total": {"Minimum": 0, "Maximum": 52}}')
    config = replace(trial, scales=("hamd17",))
    assert set(load_inputs(config).scores) == {"hamd17"}
    _edit_tsv(phenotype / "hamd17.tsv", 1, "hamd17_total", "53")
    assert "hamd17.tsv: line 3, column hamd17_total: 53 is outside the hamd17 range 0-52" in (
        _error(config)
    )


def test_participant_without_arm_is_excluded_once(trial: Config) -> None:
    _edit_tsv(trial.bids_dir / "participants.tsv", 0, "group", "n/a")
    rows = [e for e in load_inputs(trial).exclusions if e["participant_id"] == "sub-001"]
    assert len(rows) == 1 and "no arm" in rows[0]["reason"]
