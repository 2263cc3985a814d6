"""The simulated BIDS trial as written to disk: clinical files, sidecars, validator, ground truth,
determinism, and the noiseless agreement of DIPY's tensor fit with the true ROI MD."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_PARTICIPANTS, tree_checksum

from ketamine_dti.rois import ROI_NAMES
from ketamine_dti.simulate.cli import main as simulate

SESSIONS = ("ses-baseline", "ses-24h")
DWI_KEYS = (
    "PhaseEncodingDirection",
    "TotalReadoutTime",
    "EchoTime",
    "RepetitionTime",
    "EffectiveEchoSpacing",
    "SliceTiming",
    "MagneticFieldStrength",
)
T1W_KEYS = ("RepetitionTime", "EchoTime", "InversionTime", "FlipAngle")
#: Acceptance: DIPY's noiseless ROI-mean MD within 1% of the truth.
NOISELESS_TOLERANCE = 0.01


def _truth_mask(truth: Path, participant: str, ses: str) -> Path:
    return truth / participant / ses / f"{participant}_{ses}_space-dwi_desc-truth_dseg.nii.gz"


def _read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"participant_id": str, "session_id": str})


def test_allocation_is_two_to_one(tiny_trial):
    participants = _read_tsv(tiny_trial / "participants.tsv")
    assert list(participants.columns[:4]) == ["participant_id", "group", "age", "sex"]
    counts = participants.group.value_counts()
    # Permuted blocks of 3 or 6: a multiple of 3 participants is split exactly 2:1.
    assert TINY_PARTICIPANTS % 3 == 0
    assert counts.to_dict() == {
        "ketamine": 2 * TINY_PARTICIPANTS // 3,
        "saline": TINY_PARTICIPANTS // 3,
    }
    folders = sorted(p.name for p in tiny_trial.glob("sub-*") if p.is_dir())
    assert folders == sorted(participants.participant_id)


@pytest.mark.parametrize(("scale", "low", "high"), [("madrs", 0, 60), ("qids_sr", 0, 27)])
def test_scores_are_integers_in_range_for_every_session(tiny_trial, scale, low, high):
    table = _read_tsv(tiny_trial / "phenotype" / f"{scale}.tsv")
    column = f"{scale}_total"
    assert list(table.columns) == ["participant_id", "session_id", column]
    assert pd.api.types.is_integer_dtype(table[column])
    assert table[column].between(low, high).all()
    assert len(table) == 2 * TINY_PARTICIPANTS
    assert set(table.session_id) == set(SESSIONS)
    assert not table.duplicated(["participant_id", "session_id"]).any()
    dictionary = json.loads((tiny_trial / "phenotype" / f"{scale}.json").read_text())
    assert {"participant_id", "session_id", column} <= set(dictionary)


def test_every_tsv_has_a_data_dictionary(tiny_trial):
    for name in ("participants", "phenotype/madrs", "phenotype/qids_sr"):
        columns = _read_tsv(tiny_trial / f"{name}.tsv").columns
        dictionary = json.loads((tiny_trial / f"{name}.json").read_text())
        assert set(columns) <= set(dictionary), name
    sessions = json.loads((tiny_trial / "sessions.json").read_text())
    for table in tiny_trial.glob("sub-*/sub-*_sessions.tsv"):
        assert set(_read_tsv(table).columns) <= set(sessions)


def test_sidecars_and_gradients_match_the_images(tiny_trial):
    dwis = sorted(tiny_trial.glob("sub-*/ses-*/dwi/*_dwi.nii.gz"))
    assert len(dwis) == 2 * TINY_PARTICIPANTS
    for dwi in dwis:
        stem = str(dwi)[: -len(".nii.gz")]
        sidecar = json.loads(Path(stem + ".json").read_text())
        assert set(DWI_KEYS) <= set(sidecar), dwi.name
        assert sidecar["PhaseEncodingDirection"] in ("i", "i-", "j", "j-", "k", "k-")
        assert 0 < sidecar["TotalReadoutTime"] < 0.2
        image = nib.load(dwi)
        assert image.ndim == 4
        bvals = np.loadtxt(stem + ".bval")
        bvecs = np.loadtxt(stem + ".bvec")
        assert bvals.shape == (image.shape[3],) and bvecs.shape == (3, image.shape[3])
        norms = np.linalg.norm(bvecs[:, bvals > 0], axis=0)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        assert len(sidecar["SliceTiming"]) == image.shape[2]
        assert max(sidecar["SliceTiming"]) < sidecar["RepetitionTime"]
        t1w = Path(stem.replace("/dwi/", "/anat/").replace("_dwi", "_T1w"))
        assert set(T1W_KEYS) <= set(json.loads(Path(str(t1w) + ".json").read_text()))
        assert nib.load(str(t1w) + ".nii.gz").ndim == 3


def test_bids_validator_reports_no_errors(tiny_trial):
    from ketamine_dti.validator import find_validator, validate

    if find_validator() is None:
        pytest.fail("bids-validator-deno is not installed; pip install bids-validator-deno")
    result = validate(tiny_trial)
    assert result.ok, result.summary("error")


def test_ground_truth_is_complete(tiny_trial):
    truth = tiny_trial / "sourcedata" / "ground_truth"
    roi_md = _read_tsv(truth / "roi_md.tsv")
    assert list(roi_md.columns) == [
        "participant_id",
        "session_id",
        "roi",
        "md_true",
        "csf_fraction_change",
    ]
    assert np.all(roi_md.csf_fraction_change == 0)  # only csf_shift changes the CSF
    assert len(roi_md) == TINY_PARTICIPANTS * 2 * len(ROI_NAMES)
    assert roi_md.md_true.between(0.5e-3, 1.2e-3).all()  # plausible GM MD, mm^2/s
    planted = json.loads((truth / "planted_effects.json").read_text())
    assert planted["scenario"] == "paper"
    assert planted["imaging"]["snr"] > 0
    for participant in roi_md.participant_id.unique():
        for ses in SESSIONS:
            path = _truth_mask(truth, participant, ses)
            dwi = tiny_trial / participant / ses / "dwi" / f"{participant}_{ses}_dwi.nii.gz"
            mask, image = nib.load(path), nib.load(dwi)
            assert mask.shape == image.shape[:3]
            np.testing.assert_allclose(mask.affine, image.affine)
            labels = set(np.unique(np.asarray(mask.dataobj)))
            assert labels == set(range(len(ROI_NAMES) + 1)), (participant, ses)


@pytest.mark.slow
def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    args = ["--preset", "tiny", "--n-participants", "3"]
    for name, seed in (("a", "11"), ("b", "11"), ("c", "12")):
        assert simulate([str(tmp_path / name), *args, "--seed", seed]) == 0
    assert tree_checksum(tmp_path / "a") == tree_checksum(tmp_path / "b")
    dwi = "sub-001/ses-baseline/dwi/sub-001_ses-baseline_dwi.nii.gz"
    assert (tmp_path / "a" / dwi).read_bytes() != (tmp_path / "c" / dwi).read_bytes()


@pytest.fixture(scope="module")
def noiseless_trial(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("noiseless") / "bids"
    code = simulate(
        [str(out), "--preset", "tiny", "--n-participants", "4", "--seed", "3", "--noiseless"]
    )
    assert code == 0
    return out


@pytest.mark.slow
def test_noiseless_dipy_tensor_reproduces_true_roi_md(noiseless_trial):
    """Acceptance: DIPY's tensor MD, averaged in each truth mask, is within 1% of md_true."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    truth = noiseless_trial / "sourcedata" / "ground_truth"
    roi_md = _read_tsv(truth / "roi_md.tsv").set_index(["participant_id", "session_id", "roi"])
    errors = []
    for dwi_path in sorted(noiseless_trial.glob("sub-*/ses-*/dwi/*_dwi.nii.gz")):
        participant, ses = dwi_path.parts[-4], dwi_path.parts[-3]
        stem = str(dwi_path)[: -len(".nii.gz")]
        gtab = gradient_table(np.loadtxt(stem + ".bval"), bvecs=np.loadtxt(stem + ".bvec").T)
        mask_path = _truth_mask(truth, participant, ses)
        dseg = np.asarray(nib.load(mask_path).dataobj)
        data = np.asarray(nib.load(dwi_path).dataobj, dtype=np.float64)
        fit = TensorModel(gtab).fit(data, mask=dseg > 0)
        for index, roi in enumerate(ROI_NAMES, start=1):
            measured = fit.md[dseg == index].mean()
            expected = roi_md.loc[(participant, ses, roi), "md_true"]
            errors.append((participant, ses, roi, measured / expected - 1))
    worst = max(errors, key=lambda e: abs(e[3]))
    assert abs(worst[3]) < NOISELESS_TOLERANCE, worst


def test_dwi_truth_masks_land_on_gray_matter_of_the_same_session_t1w(tiny_trial):
    """World geometry is consistent: ROI voxels of the DWI grid fall on T1w gray matter."""
    from scipy import ndimage

    from ketamine_dti.simulate.session import T1W_RELATIVE, T1W_WM_SIGNAL

    truth = tiny_trial / "sourcedata" / "ground_truth"
    planted = json.loads((truth / "planted_effects.json").read_text())
    # A prescan-normalised participant: no receive-coil gain on the T1w (planted "head").
    shapes = planted["head"]["head_shape"]
    participant = next(p for p, shape in sorted(shapes.items()) if shape["coil_amplitude"] == 0)
    scaling = planted["head"]["t1w_scaling"][participant]
    for ses in SESSIONS:
        mask = nib.load(_truth_mask(truth, participant, ses))
        t1w = nib.load(tiny_trial / participant / ses / "anat" / f"{participant}_{ses}_T1w.nii.gz")
        ijk = np.argwhere(np.asarray(mask.dataobj) > 0)
        world = ijk @ mask.affine[:3, :3].T + mask.affine[:3, 3]
        t1w_index = (world - t1w.affine[:3, 3]) @ np.linalg.inv(t1w.affine[:3, :3]).T
        values = ndimage.map_coordinates(np.asarray(t1w.dataobj, float), t1w_index.T, order=1)
        # The stored T1w is scaled per participant (planted_effects.json "head").
        gm_level = T1W_RELATIVE["gm"] * T1W_WM_SIGNAL * scaling["scale"] + scaling["offset"]
        # Pure-GM voxels read GM intensity (+-15%: bias field and noise). WM is 60% brighter
        # and CSF 65% darker: a 4 mm misplacement drops this share to about 0.85 or less.
        on_gray_matter = np.mean(np.abs(values / gm_level - 1) < 0.15)
        assert on_gray_matter > 0.9, (ses, on_gray_matter)
