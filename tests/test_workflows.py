"""Workflow factories: wiring reflects the options, sessions share one anatomy."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketamine_dti.bids import ParticipantInputs, SessionInputs
from ketamine_dti.config import Config
from ketamine_dti.workflows.base import init_participant_wf, resolve_atlas
from ketamine_dti.workflows.dwi import init_dwi_preproc_wf


def _node_names(workflow):
    return {node.fullname.split(".")[-1] for node in workflow._graph.nodes()}


def _flat_names(workflow):
    return {name.split(".")[-1] for name in workflow.list_node_names()}


@pytest.mark.parametrize(
    ("denoise", "gibbs", "present", "absent"),
    [
        ("mppca", True, {"denoise", "unring"}, set()),
        ("none", True, {"unring"}, {"denoise"}),
        ("mppca", False, {"denoise"}, {"unring"}),
    ],
)
def test_dwi_preproc_options(denoise, gibbs, present, absent):
    workflow = init_dwi_preproc_wf(denoise=denoise, gibbs=gibbs)
    names = _node_names(workflow)
    assert {"check_dwi", "motion_correct", "brain_mask", "tensor_fit"} <= names
    assert present <= names
    assert not (absent & names)


def test_dwi_preproc_rejects_unknown_denoiser():
    with pytest.raises(ValueError, match="denoise"):
        init_dwi_preproc_wf(denoise="nlmeans")


def _participant(tmp_path: Path, sessions=("baseline", "24h")) -> ParticipantInputs:
    files = []
    for session in sessions:
        stem = tmp_path / f"sub-01_ses-{session}"
        for ext in ("_dwi.nii.gz", "_dwi.bval", "_dwi.bvec", "_T1w.nii.gz"):
            Path(f"{stem}{ext}").write_text("x")
        files.append(
            SessionInputs(
                subject="01",
                session=session,
                dwi=f"{stem}_dwi.nii.gz",
                bval=f"{stem}_dwi.bval",
                bvec=f"{stem}_dwi.bvec",
                t1w=f"{stem}_T1w.nii.gz",
            )
        )
    return ParticipantInputs(subject="01", sessions=tuple(files))


def test_participant_shares_one_anatomy(tmp_path):
    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant")
    workflow = init_participant_wf(_participant(tmp_path), config)
    names = workflow.list_node_names()
    # one template registration for the participant, one DWI chain per session
    assert sum(name.endswith("register_to_mni") for name in names) == 1
    assert sum(name.endswith("subject_template") for name in names) == 1
    assert sum(name.endswith("motion_correct") for name in names) == 2
    assert {"ses_baseline_wf", "ses_24h_wf", "anat_wf"} <= {n.split(".")[0] for n in names}
    sinks = [n for n in names if n.split(".")[-1].startswith("ds_")]
    assert any(n.endswith("ds_roi") for n in sinks) and any(n.endswith("ds_qc") for n in sinks)


def test_single_session_participant_builds(tmp_path):
    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant")
    workflow = init_participant_wf(_participant(tmp_path, ("24h",)), config)
    assert sum(n.endswith("motion_correct") for n in workflow.list_node_names()) == 1


def test_resolve_atlas_bundled_and_custom(tmp_path):
    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant")
    atlas, names = resolve_atlas(config)
    assert atlas.exists() and len(names) == 7
    custom = tmp_path / "my_dseg.nii.gz"
    custom.write_bytes(atlas.read_bytes())
    (tmp_path / "my_dseg.tsv").write_text("index\tname\n1\tleft\n2\tright\n")
    from dataclasses import replace

    _, custom_names = resolve_atlas(replace(config, roi_atlas=custom))
    assert custom_names == ("left", "right")


def test_independent_anatomy_has_one_registration_per_session(tmp_path):
    """The benchmark's comparison design: per-session template registrations."""
    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant")
    workflow = init_participant_wf(_participant(tmp_path), config, independent_anatomy=True)
    names = workflow.list_node_names()
    assert sum(name.endswith("register_to_mni") for name in names) == 2


def test_run_participant_level_reports_each_broken_participant(tmp_path):
    """Bad inputs fail per participant with the file named; the run itself carries on."""
    import json

    import nibabel as nib
    import numpy as np

    from ketamine_dti.workflows.base import run_participant_level

    bids_dir = tmp_path / "bids"
    (bids_dir).mkdir()
    (bids_dir / "dataset_description.json").write_text(
        json.dumps({"Name": "broken", "BIDSVersion": "1.10.0"})
    )
    for subject in ("01", "02"):
        for folder in ("dwi", "anat"):
            (bids_dir / f"sub-{subject}/ses-baseline/{folder}").mkdir(parents=True)
        prefix = bids_dir / f"sub-{subject}/ses-baseline"
        shape = (4, 4, 4, 3) if subject == "01" else (4, 4, 4)  # sub-02: a 3-D "DWI"
        nib.save(
            nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)),
            prefix / f"dwi/sub-{subject}_ses-baseline_dwi.nii.gz",
        )
        nib.save(
            nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)),
            prefix / f"anat/sub-{subject}_ses-baseline_T1w.nii.gz",
        )
        (prefix / f"dwi/sub-{subject}_ses-baseline_dwi.bvec").write_text("0 1 0\n0 0 1\n0 0 0\n")
        if subject == "02":
            (prefix / f"dwi/sub-{subject}_ses-baseline_dwi.bval").write_text("0 1000 1000\n")
    config = Config(
        bids_dir=bids_dir,
        output_dir=tmp_path / "out",
        analysis_level="participant",
        work_dir=tmp_path / "work",
    )
    failures = dict(run_participant_level(config))
    assert set(failures) == {"01", "02"}
    assert "sub-01_ses-baseline_dwi.nii.gz: no .bval file found" in failures["01"]
    assert "sub-02_ses-baseline_dwi.nii.gz: DWI is 3-D" in failures["02"]
    assert (tmp_path / "out" / "dataset_description.json").exists()
