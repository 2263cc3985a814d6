"""Participant selection is one function for the CLI, the participant and the group level; the
group level accounts for every participant with outputs that it does not analyse."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ketamine_dti.config import Config
from ketamine_dti.group import run_group_level
from ketamine_dti.group.inputs import NOT_LISTED, NOT_SELECTED, load_inputs
from ketamine_dti.simulate.validation import simulate_trial_files


@pytest.fixture
def trial(tmp_path: Path) -> Config:
    config, _ = simulate_trial_files(tmp_path, 12, "paper", np.random.default_rng(4))
    return config


def _copy_outputs(output_dir: Path, source: str, target: str) -> None:
    """Give `target` the participant outputs of `source`, under its own names."""
    for path in sorted((output_dir / source).rglob("*")):
        if path.is_file():
            moved = output_dir / str(path.relative_to(output_dir)).replace(source, target)
            moved.parent.mkdir(parents=True, exist_ok=True)
            moved.write_bytes(path.read_bytes())


def _reasons(config: Config) -> dict[str, set[str]]:
    reasons: dict[str, set[str]] = {}
    for row in load_inputs(config).exclusions:
        reasons.setdefault(row["participant_id"], set()).add(row["reason"])
    return reasons


def test_outputs_without_a_participants_row_are_excluded(trial: Config) -> None:
    _copy_outputs(trial.output_dir, "sub-001", "sub-999")
    assert NOT_LISTED in _reasons(trial)["sub-999"]
    # asked for by label (as the CLI passes them), it is still reported, not dropped
    labels = tuple(f"{i:03d}" for i in range(1, 13)) + ("999",)
    assert NOT_LISTED in _reasons(replace(trial, participant_labels=labels))["sub-999"]
    group_dir = run_group_level(trial, make_figures=False)
    exclusions = pd.read_csv(group_dir / "exclusions.tsv", sep="\t")
    assert NOT_LISTED in set(exclusions.loc[exclusions.participant_id == "sub-999", "reason"])


def test_outputs_left_out_by_participant_label_are_excluded(trial: Config) -> None:
    _copy_outputs(trial.output_dir, "sub-001", "sub-999")
    listed = pd.read_csv(trial.bids_dir / "participants.tsv", sep="\t")
    chosen = [pid for pid in listed.participant_id if pid != "sub-002"]
    reasons = _reasons(replace(trial, participant_labels=tuple(chosen)))
    assert reasons["sub-002"] == {NOT_SELECTED}
    assert reasons["sub-999"] == {NOT_SELECTED}


def test_unknown_label_at_the_group_level_lists_what_exists(trial: Config) -> None:
    from ketamine_dti.errors import InputError

    with pytest.raises(InputError, match="participant label.* 777 not found; available: 001"):
        load_inputs(replace(trial, participant_labels=("777",)))


def test_cli_checks_the_selection_and_passes_the_labels_unchanged(tmp_path, monkeypatch):
    import bids_app.run as cli

    bids_dir = tmp_path / "bids"
    for label in ("01", "02"):  # a participant is a sub-<label> folder holding a file
        (bids_dir / f"sub-{label}" / "anat").mkdir(parents=True)
        (bids_dir / f"sub-{label}" / "anat" / f"sub-{label}_T1w.json").write_text("{}")
    (bids_dir / "dataset_description.json").write_text(
        json.dumps({"Name": "x", "BIDSVersion": "1.10.0"})
    )
    seen = []
    monkeypatch.setattr(cli, "_run_stage", lambda config: seen.append(config) or 0)
    for extra, labels in (([], ()), (["--participant-label", "sub-02"], ("02",))):
        code = cli.main([str(bids_dir), str(tmp_path / "out"), "group",
                         "--skip-bids-validation", *extra])  # fmt: skip
        assert code == 0 and seen[-1].participant_labels == labels
    code = cli.main([str(bids_dir), str(tmp_path / "out"), "group", "--skip-bids-validation",
                     "--participant-label", "03"])  # fmt: skip
    assert code == 18
