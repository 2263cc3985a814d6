"""BIDS inputs (checks with clear errors) and derivative names."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ketamine_dti import bids
from ketamine_dti.errors import InputError

N_VOLUMES = 8


def _write_session(root: Path, subject: str, session: str, rng) -> dict[str, Path]:
    prefix = f"sub-{subject}_ses-{session}"
    dwi_dir = root / f"sub-{subject}" / f"ses-{session}" / "dwi"
    anat_dir = root / f"sub-{subject}" / f"ses-{session}" / "anat"
    dwi_dir.mkdir(parents=True)
    anat_dir.mkdir(parents=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    dwi = dwi_dir / f"{prefix}_dwi.nii.gz"
    nib.save(
        nib.Nifti1Image(rng.uniform(50, 100, (6, 6, 6, N_VOLUMES)).astype(np.float32), affine), dwi
    )
    bvals = np.r_[0, np.full(N_VOLUMES - 2, 1000), 0]
    directions = rng.normal(size=(N_VOLUMES, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    directions[bvals == 0] = 0
    (dwi_dir / f"{prefix}_dwi.bval").write_text(" ".join(map(str, bvals)) + "\n")
    (dwi_dir / f"{prefix}_dwi.bvec").write_text(
        "\n".join(" ".join(f"{v:.6f}" for v in row) for row in directions.T) + "\n"
    )
    (dwi_dir / f"{prefix}_dwi.json").write_text(
        json.dumps(
            {
                "PhaseEncodingDirection": "j-",
                "TotalReadoutTime": 0.05,
                "EchoTime": 0.08,
                "RepetitionTime": 8.0,
            }
        )
    )
    t1w = anat_dir / f"{prefix}_T1w.nii.gz"
    nib.save(nib.Nifti1Image(rng.uniform(0, 100, (8, 8, 8)).astype(np.float32), affine), t1w)
    return {
        "dwi": dwi,
        "bval": dwi.with_name(f"{prefix}_dwi.bval"),
        "bvec": dwi.with_name(f"{prefix}_dwi.bvec"),
        "t1w": t1w,
    }


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "test", "BIDSVersion": "1.10.0"})
    )
    files = {}
    for subject in ("01", "02"):
        for session in ("24h", "baseline"):
            files[subject, session] = _write_session(root, subject, session, rng)
    return root, files


def _collect(root, subject="01", session="baseline"):
    return bids.collect_session(bids.get_layout(root), subject, session)


def test_collect_participant_orders_baseline_first(dataset):
    root, files = dataset
    participant = bids.collect_participant(bids.get_layout(root), "01")
    assert [s.session for s in participant.sessions] == ["baseline", "24h"]
    first = participant.sessions[0]
    assert Path(first.dwi) == files["01", "baseline"]["dwi"]
    assert Path(first.bval) == files["01", "baseline"]["bval"]
    assert Path(first.t1w) == files["01", "baseline"]["t1w"]
    assert first.dwi_metadata["PhaseEncodingDirection"] == "j-"
    assert not participant.single_session


def test_single_session_is_processed_and_flagged(dataset):
    root, _ = dataset
    participant = bids.collect_participant(bids.get_layout(root), "02", session_labels=("24h",))
    assert participant.single_session
    assert participant.sessions[0].session == "24h"


def test_unknown_participant_lists_existing(dataset):
    root, _ = dataset
    folders = bids.participant_folders(root)
    assert folders == ["01", "02"]
    with pytest.raises(InputError, match="not found; available: 01, 02"):
        bids.select_participants(folders, ["sub-99"])
    assert bids.select_participants(folders, ["sub-02"]) == ["02"]
    assert bids.select_participants(folders) == ["01", "02"]
    # labels from other sources (participants.tsv) may carry the prefix
    assert bids.select_participants(["sub-02", "sub-01"], ["01", "sub-01"]) == ["01"]
    with pytest.raises(InputError, match="no participant"):
        bids.select_participants([], (), where=root)


def test_missing_bval(dataset):
    root, files = dataset
    files["01", "baseline"]["bval"].unlink()
    with pytest.raises(InputError, match=r"sub-01_ses-baseline_dwi.nii.gz: no .bval file"):
        _collect(root)


def test_count_mismatch(dataset):
    root, files = dataset
    files["01", "baseline"]["bval"].write_text("0 1000 1000 0\n")
    with pytest.raises(InputError, match=r"sub-01_ses-baseline_dwi.bval: 4 b-values for 8"):
        _collect(root)


def test_three_d_dwi(dataset):
    root, files = dataset
    nib.save(
        nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)), files["01", "baseline"]["dwi"]
    )
    with pytest.raises(InputError, match=r"_dwi.nii.gz: DWI is 3-D"):
        _collect(root)


def test_no_b0(dataset):
    root, files = dataset
    files["01", "baseline"]["bval"].write_text(" ".join(["1000"] * N_VOLUMES) + "\n")
    with pytest.raises(InputError, match=r"_dwi.bval: no b0 volume"):
        _collect(root)


def test_nan_voxels_are_noted_not_fatal(dataset):
    root, files = dataset
    data = np.ones((6, 6, 6, N_VOLUMES), np.float32)
    data[2, 2, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), files["01", "baseline"]["dwi"])
    notes = []
    bids.collect_session(bids.get_layout(root), "01", "baseline", notes=notes)
    assert any("_dwi.nii.gz: 1 voxels hold NaN/Inf; they are zeroed" in n for n in notes)


def test_truncated_nifti(dataset):
    root, files = dataset
    path = files["01", "baseline"]["dwi"]
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(InputError, match=r"_dwi.nii.gz: unreadable or truncated NIfTI"):
        _collect(root)


def test_missing_t1w_uses_the_other_sessions(dataset):
    root, files = dataset
    files["01", "baseline"]["t1w"].unlink()
    notes = []
    participant = bids.collect_participant(bids.get_layout(root), "01", notes=notes)
    assert [Path(s.t1w) for s in participant.sessions] == [files["01", "24h"]["t1w"]] * 2
    assert any("ses-baseline: no T1w; using sub-01_ses-24h_T1w.nii.gz" in n for n in notes)
    files["01", "24h"]["t1w"].unlink()
    with pytest.raises(InputError, match=r"sub-01: no T1w image in any analysed session"):
        bids.collect_participant(bids.get_layout(root), "01")


def test_extra_sessions_are_ignored_and_pair_is_chosen(dataset):
    root, files = dataset
    _write_session(root, "01", "1week", np.random.default_rng(3))
    notes = []
    participant = bids.collect_participant(bids.get_layout(root), "01", notes=notes)
    assert [s.session for s in participant.sessions] == ["baseline", "24h"]
    assert any("sessions 1week ignored" in n for n in notes)
    chosen = bids.collect_participant(bids.get_layout(root), "01", (), "baseline", "1week")
    assert [s.session for s in chosen.sessions] == ["baseline", "1week"]
    with pytest.raises(InputError, match="--sessions BASELINE FOLLOWUP"):
        bids.collect_participant(bids.get_layout(root), "01", (), "pre", "post")


def test_sidecars_are_read_by_inheritance_and_bad_json_is_named(dataset):
    root, files = dataset
    (root / "dwi.json").write_text(json.dumps({"EchoTime": 0.1, "Manufacturer": "Siemens"}))
    metadata = bids.read_sidecar(files["01", "baseline"]["dwi"], root)
    assert metadata["Manufacturer"] == "Siemens" and metadata["EchoTime"] == 0.08  # nearest wins
    broken = files["02", "baseline"]["dwi"].with_name("sub-02_ses-baseline_dwi.json")
    broken.write_text("{not json")
    # the layout still indexes; only sub-02 is affected
    layout = bids.get_layout(root)
    assert bids.collect_participant(layout, "01").subject == "01"
    with pytest.raises(InputError, match="sub-02_ses-baseline_dwi.json: unreadable JSON"):
        bids.collect_participant(layout, "02")


def test_filters_select_by_entity(dataset):
    root, files = dataset
    with pytest.raises(InputError, match="no DWI series"):
        bids.collect_session(
            bids.get_layout(root), "01", "baseline", {"dwi": {"acquisition": "other"}}
        )


def test_derivative_names_known_answers(tmp_path):
    md = bids.derivative_path(
        tmp_path,
        "dwi",
        "dwimap",
        ".nii.gz",
        sub="01",
        ses="24h",
        space="dwi",
        model="tensor",
        param="md",
    )
    assert (
        md
        == tmp_path
        / "sub-01/ses-24h/dwi/sub-01_ses-24h_space-dwi_model-tensor_param-md_dwimap.nii.gz"
    )
    assert (
        bids.derivative_name(
            "xfm", ".mat", sub="01", ses="baseline", from_="dwi", to="T1w", mode="image"
        )
        == "sub-01_ses-baseline_from-dwi_to-T1w_mode-image_xfm.mat"
    )
    assert (
        bids.derivative_name("md", "tsv", desc="roi", ses="b", sub="1")
        == "sub-1_ses-b_desc-roi_md.tsv"
    )
    with pytest.raises(ValueError, match="unknown BIDS entities"):
        bids.derivative_name("dwi", ".nii.gz", sub="01", colour="red")


def test_dataset_description_and_bidsignore(tmp_path):
    description = json.loads(
        bids.write_dataset_description(tmp_path / "out", tmp_path).read_text()
    )
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "ketamine-dti"
    assert description["GeneratedBy"][0]["Version"]
    ignore = bids.write_bidsignore(tmp_path / "out").read_text().splitlines()
    assert "*_dwimap.nii.gz" in ignore and "sub-*/log" in ignore


def test_container_is_recorded_in_generated_by(tmp_path, monkeypatch):
    assert bids.container_info({}) is None
    assert bids.container_info({"KETAMINE_DTI_IMAGE": "ketamine-dti:0.1.0"}) == {
        "Type": "docker",
        "Tag": "ketamine-dti:0.1.0",
    }
    sif = tmp_path / "ketamine-dti.sif"
    info = bids.container_info(
        {"APPTAINER_CONTAINER": str(sif), "KETAMINE_DTI_IMAGE": "ketamine-dti:0.1.0"}
    )
    assert info == {"Type": "apptainer", "URI": sif.as_uri(), "Tag": "ketamine-dti:0.1.0"}
    monkeypatch.setenv("SINGULARITY_CONTAINER", str(sif))
    bids.init_derivatives(tmp_path / "out", tmp_path)
    description = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Container"]["Type"] == "singularity"
    assert "ROI table" in (tmp_path / "out" / "README").read_text()
    assert (tmp_path / "out" / ".bidsignore").exists()
    # the image sets the variable that names it
    dockerfile = (Path(__file__).parents[1] / "Dockerfile").read_text()
    assert f"{bids.IMAGE_TAG_VARIABLE}=" in dockerfile


def test_sink_writes_bids_name_sidecar_and_compresses(tmp_path):
    from ketamine_dti.interfaces.bids import DerivativesSink

    work = tmp_path / "work"
    work.mkdir()
    image = nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4))
    nib.save(image, work / "md.nii")  # work files are uncompressed
    sink = DerivativesSink(
        output_dir=str(tmp_path / "out"),
        in_file=str(work / "md.nii"),
        entities={"sub": "01", "ses": "24h", "space": "dwi", "model": "tensor", "param": "md"},
        datatype="dwi",
        suffix="dwimap",
        metadata={"Units": "mm^2/s"},
    )
    first = sink.run(cwd=str(work)).outputs.out_file
    expected = (
        bids.staging_root(tmp_path / "out")
        / "sub-01/ses-24h/dwi/sub-01_ses-24h_space-dwi_model-tensor_param-md_dwimap"
    )
    assert first == str(expected) + ".nii.gz"
    assert np.array_equal(nib.load(first).get_fdata(), image.get_fdata())
    assert json.loads(Path(str(expected) + ".json").read_text()) == {"Units": "mm^2/s"}
    before = Path(first).read_bytes()
    assert not before[3] & 0x08  # gzip FNAME flag unset: no file name in the header
    sink.run(cwd=str(work))
    assert Path(first).read_bytes() == before  # reruns are byte-identical
    assert not list(Path(first).parent.glob(".*.tmp"))  # written under a temporary name
    final = bids.promote_staged(tmp_path / "out", "01")
    assert (final / "ses-24h/dwi" / Path(first).name).read_bytes() == before
    assert not bids.staging_root(tmp_path / "out").exists()


def test_a_sink_result_reads_back_after_its_file_was_promoted(tmp_path):
    """Nipype reads a node's result back (resume, the run's compute-time summary) after the
    participant's staging folder has moved into OUTPUT_DIR: the staged path must not be
    validated as an existing file then (it made 50 of 97 result files unreadable)."""
    from nipype.pipeline import engine as pe
    from nipype.pipeline.engine.utils import load_resultfile

    from ketamine_dti.interfaces.bids import DerivativesSink

    work = tmp_path / "work"
    work.mkdir()
    nib.save(nib.Nifti1Image(np.ones((2, 3, 4), np.float32), np.eye(4)), work / "md.nii")
    node = pe.Node(
        DerivativesSink(
            output_dir=str(tmp_path / "out"),
            in_file=str(work / "md.nii"),
            entities={"sub": "01", "ses": "24h", "space": "dwi", "param": "md"},
            datatype="dwi",
            suffix="dwimap",
        ),
        name="ds_md",
        base_dir=str(work),
    )
    staged = Path(node.run().outputs.out_file)
    bids.promote_staged(tmp_path / "out", "01")
    assert not staged.exists()
    result = load_resultfile(str(work / "ds_md" / "result_ds_md.pklz"))
    assert result.outputs.out_file == str(staged)
    assert result.runtime.duration >= 0


def test_promotion_replaces_previous_outputs_and_keeps_the_log(tmp_path):
    """Staged outputs replace the previous run's by folder renames; the log goes with them."""
    out = tmp_path / "out"
    old = out / "sub-01" / "ses-24h" / "dwi" / "old.tsv"
    old.parent.mkdir(parents=True)
    old.write_text("previous run")
    (out / "sub-01" / "log").mkdir()
    (out / "sub-01" / "log" / "crash-x.txt").write_text("crash")
    bids.atomic_write_text(bids.staging_root(out) / "sub-01" / "ses-24h" / "dwi" / "new.tsv", "n")
    bids.promote_staged(out, "01")
    assert not old.exists() and (old.parent / "new.tsv").read_text() == "n"
    assert (out / "sub-01" / "log" / "crash-x.txt").read_text() == "crash"
    assert not bids.staging_root(out).exists()
    bids.atomic_write_text(bids.staging_root(out) / "sub-01" / "half.tsv", "x")
    bids.discard_staged(out, "01")  # an interrupted run's leftovers
    assert not (bids.staging_root(out) / "sub-01").exists()
