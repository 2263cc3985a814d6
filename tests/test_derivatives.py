"""The derivatives specification: names, lookup, and TSV sidecars that match the real writers."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ketamine_dti import derivatives, storage
from ketamine_dti.bids import SessionInputs
from ketamine_dti.config import Config
from ketamine_dti.derivatives import SidecarContext, find_outputs, sidecar, spec_path

SHAPE = (14, 14, 12)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _save(array, path: Path) -> str:
    nib.save(nib.Nifti1Image(np.asarray(array), AFFINE), path)
    return str(path)


def _session_files(folder: Path) -> dict[str, str]:
    """A small smooth phantom DWI (2 b0 + 6 directions) and its maps, written to `folder`."""
    rng = np.random.default_rng(3)
    grid = np.indices(SHAPE).astype(float)
    centre = (np.array(SHAPE) - 1) / 2
    inside = sum(((grid[i] - centre[i]) / (0.4 * SHAPE[i])) ** 2 for i in range(3)) < 1
    b0 = inside * (400.0 + 40.0 * np.sin(grid[0] / 2) * np.cos(grid[1] / 3))
    bvals = np.array([0, 1000, 1000, 1000, 1000, 1000, 1000, 0])
    bvecs = np.zeros((8, 3))
    bvecs[1:7] = np.vstack([np.eye(3), np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]]) / np.sqrt(2)])
    volumes = [b0 * np.exp(-b * 0.8e-3) + rng.normal(0, 2, SHAPE) for b in bvals]
    labels = np.zeros(SHAPE, np.int16)
    for index in range(1, 8):
        labels[2 + index, 4:10, 3:9] = index
    (folder / "dwi.bval").write_text(" ".join(map(str, bvals)) + "\n")
    (folder / "dwi.bvec").write_text("\n".join(" ".join(map(str, row)) for row in bvecs.T) + "\n")
    return {
        "dwi": _save(np.stack(volumes, axis=-1).astype(np.float32), folder / "dwi.nii"),
        "bval": str(folder / "dwi.bval"),
        "bvec": str(folder / "dwi.bvec"),
        "mask": _save(inside.astype(np.uint8), folder / "mask.nii"),
        "md": _save(np.where(inside, 0.8e-3, 0).astype(np.float32), folder / "md.nii"),
        "fa": _save(np.where(inside, 0.15, 0).astype(np.float32), folder / "fa.nii"),
        "dseg": _save(labels, folder / "dseg.nii"),
        "gm": _save(np.full(SHAPE, 0.9, np.float32), folder / "gm.nii"),
        "csf": _save(np.zeros(SHAPE, np.float32), folder / "csf.nii"),
    }


def _columns(path: str) -> list[str]:
    return list(pd.read_csv(path, sep="\t", nrows=0).columns)


def _described(metadata: dict) -> set[str]:
    """The columns a TSV sidecar describes (column entries are objects; Sources etc. are not)."""
    return {key for key, value in metadata.items() if isinstance(value, dict)}


def test_tsv_sidecars_describe_exactly_the_columns_written(tmp_path):
    """Confounds (MotionCorrect, then SliceOutliers), ROI table (RegionalStatistics) and QC
    (SessionQC), run for real."""
    from conftest import measure_rois

    from ketamine_dti.interfaces.bids import SessionQC
    from ketamine_dti.interfaces.dwi import MotionCorrect, ResampleDWI, SliceOutliers

    work = tmp_path / "work"
    for step in ("motion", "resample", "repol", "rois", "qc"):
        (work / step).mkdir(parents=True)
    files = _session_files(work)
    gradients = {"bval_file": files["bval"], "bvec_file": files["bvec"]}
    motion = MotionCorrect(in_file=files["dwi"], **gradients)
    moved = motion.run(cwd=str(work / "motion")).outputs
    resampled = ResampleDWI(in_file=files["dwi"], affines_file=moved.affines_file, **gradients)
    resampled = resampled.run(cwd=str(work / "resample")).outputs
    repol = SliceOutliers(
        in_file=resampled.out_file, bval_file=moved.out_bval, bvec_file=moved.out_bvec,
        mask_file=files["mask"], confounds_file=moved.confounds_file,
    ).run(cwd=str(work / "repol")).outputs  # fmt: skip
    maps = {name: files[name] for name in ("md", "fa", "gm", "csf", "mask")}
    rois = measure_rois(work / "rois", [maps | {"atlas": files["dseg"]}], list("abcdefg"))
    roi_file = rois.out_files[0]
    qc = SessionQC(
        participant_id="01", session_id="24h", n_sessions=2, dwi_file=repol.out_file,
        bval_file=moved.out_bval, bvec_file=moved.out_bvec, mask_file=files["mask"],
        confounds_file=repol.confounds_file,
        outlier_volumes=0, residual_median=0.01, roi_file=roi_file,
    ).run(cwd=str(work / "qc")).outputs  # fmt: skip

    raw = tmp_path / "bids" / "sub-01" / "ses-24h" / "dwi" / "sub-01_ses-24h_dwi.nii.gz"
    session = SessionInputs("01", "24h", str(raw), "", "", str(raw), {})
    config = Config(tmp_path / "bids", tmp_path / "out", "participant")
    context = SidecarContext(config, "01", session=session)
    written = {"confounds": repol.confounds_file, "roi_table": roi_file,
               "qc_table": qc.out_file}  # fmt: skip
    tsv_outputs = {k for k, spec in derivatives.OUTPUTS.items() if spec.extension == ".tsv"}
    assert set(written) == tsv_outputs, "every TSV output is checked"
    for key, path in written.items():
        assert _described(sidecar(key, context)) == set(_columns(path)), key
        assert sidecar(key, context)["Sources"][0].startswith("bids:")


def test_spec_paths_known_answers(tmp_path):
    assert spec_path(tmp_path, "roi_table", "01", "24h") == (
        tmp_path / "sub-01/ses-24h/dwi/sub-01_ses-24h_desc-roi_md.tsv"
    )
    assert spec_path(tmp_path, "xfm_orig_t1w", "01", "baseline").relative_to(tmp_path) == Path(
        "sub-01/ses-baseline/anat/sub-01_ses-baseline_from-orig_to-T1w_mode-image_xfm.mat"
    )
    assert spec_path(tmp_path, "atlas_gm", "01", "24h", atlas="hoa").name == (
        "sub-01_ses-24h_space-dwi_atlas-hoa_desc-graymatter_dseg.nii.gz"
    )
    assert spec_path(tmp_path, "t1w_mni", "01").name == (
        "sub-01_space-MNI152NLin6Asym_res-2_desc-brain_T1w.nii.gz"
    )
    with pytest.raises(ValueError, match="give ses"):
        spec_path(tmp_path, "roi_table", "01")
    with pytest.raises(ValueError, match="give atlas"):
        spec_path(tmp_path, "atlas_dseg", "01", "24h")


def test_find_outputs_takes_only_the_exact_names(tmp_path):
    wanted = spec_path(tmp_path, "roi_table", "02", "baseline")
    wanted.parent.mkdir(parents=True)
    wanted.write_text("roi\tmd_mean\n")
    (wanted.parent / "sub-02_ses-baseline_desc-roi2_md.tsv").write_text("x")
    (wanted.parent / "sub-03_ses-baseline_desc-roi_md.tsv").write_text("x")  # wrong folder
    assert find_outputs(tmp_path, "roi_table") == {("02", "baseline"): wanted}


def test_find_outputs_finds_outputs_named_after_the_atlas(tmp_path):
    wanted = spec_path(tmp_path, "atlas_dseg", "02", "24h", atlas="ketamine7")
    wanted.parent.mkdir(parents=True)
    wanted.write_bytes(b"")
    other = spec_path(tmp_path, "atlas_dseg", "02", "baseline", atlas="other")
    other.parent.mkdir(parents=True)
    other.write_bytes(b"")
    assert find_outputs(tmp_path, "atlas_dseg", atlas="ketamine7") == {("02", "24h"): wanted}
    with pytest.raises(ValueError, match="give atlas"):
        find_outputs(tmp_path, "atlas_dseg")


def test_dwi_sidecar_records_the_steps_and_raw_metadata(tmp_path):
    raw = tmp_path / "bids" / "sub-01" / "ses-24h" / "dwi" / "sub-01_ses-24h_dwi.nii.gz"
    raw.parent.mkdir(parents=True)
    _save(np.zeros((4, 4, 4, 3), np.int16), raw)  # as scanners store it: int16, unscaled
    metadata = {"PhaseEncodingDirection": "j-", "SeriesDescription": "not carried"}
    session = SessionInputs("01", "24h", str(raw), "", "", str(raw), metadata)
    config = Config(tmp_path / "bids", tmp_path / "out", "participant", denoise="none")
    context = SidecarContext(config, "01", session=session)
    dwi = sidecar("dwi_preproc", context)
    assert dwi["PhaseEncodingDirection"] == "j-" and "SeriesDescription" not in dwi
    assert "MP-PCA" not in dwi["Description"]
    assert dwi["Sources"] == ["bids:raw:sub-01/ses-24h/dwi/sub-01_ses-24h_dwi.nii.gz"]
    assert dwi["SpatialReference"].endswith("_space-dwi_desc-preproc_dwi.nii.gz")
    assert dwi["Storage"] == storage.DESCRIPTIONS["noise"]
    assert storage.raw_step(derivatives.storage_sources("dwi_preproc", context)) == 1.0
    assert json.dumps(dwi)  # JSON-serialisable


def test_large_images_are_stored_as_int16_at_the_raw_step(tmp_path):
    """A float DWI whose noise is finer than the raw series' step (0.5 here) is published as
    int16 in that step: within half a step of the computed values; a range too wide for that
    step widens it; NaN becomes 0."""
    from ketamine_dti.interfaces.bids import DerivativesSink

    rng = np.random.default_rng(0)
    data = rng.normal(500, 0.3, (6, 6, 4, 3)).astype(np.float32)
    data[0, 0, 0, 0] = np.nan
    source = _save(data, tmp_path / "dwi.nii")
    raw = tmp_path / "raw.nii.gz"
    scaled = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), AFFINE)
    scaled.header.set_slope_inter(0.5, 0)
    nib.save(scaled, raw)
    session = SessionInputs("01", "24h", str(raw), "", "", str(raw), {})
    context = SidecarContext(Config(tmp_path, tmp_path / "out", "participant"), "01", session)
    assert storage.raw_step(derivatives.storage_sources("dwi_preproc", context)) == 0.5
    assert derivatives.storage_sources("md", context) == []  # no raw step bounds it
    assert derivatives.OUTPUTS["md"].storage is None  # NaN marks voxels without a fit
    sink = DerivativesSink(
        output_dir=str(tmp_path / "out"), in_file=source, suffix="dwi", datatype="dwi",
        entities={"sub": "01", "ses": "24h", "desc": "preproc"}, storage="noise",
        quantum_from=[str(raw)],
    )  # fmt: skip
    written = nib.load(sink.run().outputs.out_file)
    assert written.get_data_dtype() == np.int16
    assert np.asarray(written.dataobj).dtype.kind == "f"  # read back scaled
    values = written.get_fdata()
    assert values[0, 0, 0, 0] == 0
    finite = np.isfinite(data)
    assert np.abs(values[finite] - data[finite]).max() <= 0.25 + 1e-6
    assert set(np.unique(np.round(values / 0.5, 6) % 1)) == {0.0}  # multiples of the step
    wide = _save(np.array([0.0, 40000.0, -1.0, 3.0]).reshape(1, 1, 1, 4), tmp_path / "w.nii")
    step = 40000.0 / 32767
    stored = _read_back(storage.as_int16(wide, 0.5))
    assert stored.dataobj.slope == pytest.approx(step, rel=1e-6)
    assert stored.get_fdata().max() == pytest.approx(40000.0, rel=1e-4)


def test_noise_storage_steps_by_a_quarter_of_the_images_own_noise(tmp_path):
    """On a smooth image plus white noise of SD 20, the "noise" rule's step is a quarter of
    that SD (the edges of the structure barely move the estimate); the rounding error is
    uniform within half a step, 0.5% of the noise variance, far finer than the raw step 1."""
    rng = np.random.default_rng(3)
    x = np.linspace(0, 2 * np.pi, 40)
    structure = 1000 + 400 * np.sin(x)[:, None, None] * np.cos(x)[None, :, None]
    structure = np.broadcast_to(structure, (40, 40, 20))[..., None] * np.ones(5)
    structure[10:20, 10:20] += 800  # a sharp-edged block
    data = (structure + rng.normal(0, 20, structure.shape)).astype(np.float32)
    path = _save(data, tmp_path / "series.nii")
    step = float(_read_back(storage.as_int16(path, 1.0, storage.NOISE_FRACTION)).dataobj.slope)
    assert step == pytest.approx(0.25 * 20, rel=0.05)
    raw = _save(np.zeros((2, 2, 2), np.int16), tmp_path / "raw.nii")  # unscaled: step 1
    error = _read_back(storage.stored(path, "noise", [raw])).get_fdata() - data
    assert np.abs(error).max() <= step / 2 + 1e-3
    assert error.var() / 20**2 == pytest.approx(storage.NOISE_FRACTION**2 / 12, rel=0.05)
    # a volume larger than NOISE_SAMPLE is read on every stride-th line: the same estimate
    large = 1000 + rng.normal(0, 20, (160, 160, 64))
    assert large.size > storage.NOISE_SAMPLE
    assert storage.noise_sd(large) == pytest.approx(20, rel=0.03)
    # noise finer than the raw step: the raw step wins
    quiet = _save(structure.astype(np.float32), tmp_path / "quiet.nii")
    assert _read_back(storage.as_int16(quiet, 1.0, storage.NOISE_FRACTION)).dataobj.slope == 1.0


def test_probabilities_and_ranges_are_stored_within_their_steps(tmp_path):
    """Probability maps become uint8 in steps of 1/255; NaN-free maps int16 in steps of
    max |value| / 32767; both read back within half a step."""
    rng = np.random.default_rng(4)
    probability = rng.uniform(0, 1, (8, 8, 8)).astype(np.float32)
    probability[0, 0, 0] = 0.0
    back = _read_back(storage.stored(_save(probability, tmp_path / "p.nii"), "probability"))
    assert back.get_data_dtype() == np.uint8
    assert np.abs(back.get_fdata() - probability).max() <= 0.5 / 255 + 1e-7
    assert back.get_fdata()[0, 0, 0] == 0
    field = rng.normal(0, 50, (8, 8, 8)).astype(np.float32)
    back = _read_back(storage.stored(_save(field, tmp_path / "f.nii"), "range"))
    step = np.abs(field).max() / 32767
    assert back.get_data_dtype() == np.int16
    assert np.abs(back.get_fdata() - field).max() <= step / 2 * (1 + 1e-4)
    with pytest.raises(ValueError, match="unknown storage rule"):
        storage.stored(str(tmp_path / "f.nii"), "float16")


def _read_back(image):
    """The stored image read back from bytes (as a user would read the file)."""
    return nib.Nifti1Image.from_bytes(image.to_bytes())
