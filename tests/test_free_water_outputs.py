"""Free water in the participant outputs: the interface on a small phantom, the published maps'
names and sidecars (the derivatives specification), and the ROI means over the MD voxels."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ketamine_dti import bids
from ketamine_dti.bids import SessionInputs
from ketamine_dti.config import Config
from ketamine_dti.derivatives import SidecarContext, sidecar, spec_entities, spec_path
from ketamine_dti.dwi.free_water import SINGLE_SHELL_MIN_F

SHAPE = (12, 12, 8)
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
WATER_DIFFUSIVITY = 3.0e-3  # mm^2/s
TISSUE_MD = 0.8e-3  # mm^2/s
S0_TISSUE, S0_WATER = 1000.0, 2500.0  # water is brighter at b0 (longer T2)


def _phantom(folder: Path, shells: tuple[float, ...]) -> dict[str, str]:
    """A brain of tissue with free water rising towards a central CSF blob (f = 1), 2 b0s and
    12 directions per shell; no noise but a little jitter so the noise SD is not zero."""
    rng = np.random.default_rng(1)
    grid = np.indices(SHAPE).astype(float)
    centre = (np.array(SHAPE) - 1) / 2
    radius = np.sqrt(sum(((grid[i] - centre[i]) / (0.45 * SHAPE[i])) ** 2 for i in range(3)))
    brain = radius < 1
    f = np.clip(0.45 - 0.5 * radius, 0.0, None)  # tissue with some free water ...
    f[radius < 0.35] = 1.0  # ... around a CSF core
    directions = rng.normal(size=(12, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    bvals = np.concatenate([[0.0, 0.0], *[np.full(12, b) for b in shells]])
    bvecs = np.vstack([np.zeros((2, 3)), *[directions for _ in shells]])
    evals = TISSUE_MD * np.array([1.2, 1.0, 0.8])
    adc = (bvecs**2) @ evals  # tissue tensor aligned with the axes
    volume = f * S0_TISSUE / ((1 - f) * S0_WATER + f * S0_TISSUE)
    s0 = (1 - volume) * S0_TISSUE + volume * S0_WATER
    water = np.exp(-bvals * WATER_DIFFUSIVITY)
    signal = s0[..., None] * ((1 - f[..., None]) * np.exp(-bvals * adc) + f[..., None] * water)
    signal = brain[..., None] * signal * (1 + 0.002 * rng.standard_normal(signal.shape))
    (folder / "dwi.bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    (folder / "dwi.bvec").write_text("\n".join(" ".join(map(str, r)) for r in bvecs.T) + "\n")
    nib.save(nib.Nifti1Image(signal.astype(np.float32), AFFINE), folder / "dwi.nii")
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), AFFINE), folder / "mask.nii.gz")
    names = {"in_file": "dwi.nii", "bval_file": "dwi.bval", "bvec_file": "dwi.bvec",
             "mask_file": "mask.nii.gz"}  # fmt: skip
    return {key: str(folder / name) for key, name in names.items()}


@pytest.mark.parametrize("shells", [(1000.0,), (1000.0, 2000.0)], ids=["single", "multi"])
def test_interface_writes_both_maps_and_the_fit_record(tmp_path, shells):
    from ketamine_dti.interfaces.dwi import FreeWaterElimination

    inputs = _phantom(tmp_path, shells)
    (tmp_path / "node").mkdir()
    out = FreeWaterElimination(**inputs, n_threads=1).run(cwd=str(tmp_path / "node")).outputs
    mask = nib.load(inputs["mask_file"]).get_fdata() > 0
    md, fwf = nib.load(out.md_file), nib.load(out.fwf_file)
    assert md.shape == fwf.shape == SHAPE and np.allclose(md.affine, AFFINE)
    md, fwf = md.get_fdata(), fwf.get_fdata()
    assert np.isnan(md[~mask]).all() and np.isnan(fwf[~mask]).all()
    lowest = SINGLE_SHELL_MIN_F if len(shells) == 1 else 0.0  # single shell: below its reference
    assert np.nanmin(fwf) >= lowest and np.nanmax(fwf) <= 1
    tissue = mask & np.isfinite(md)
    assert tissue.sum() > 0.5 * mask.sum()
    assert np.median(md[tissue]) == pytest.approx(TISSUE_MD, rel=0.1)  # free water removed
    record = json.loads(Path(out.metadata_file).read_text())["Model"]
    assert record["Shells"] == list(shells) and record["FailedVoxels"] == 0
    assert out.single_shell == (len(shells) == 1)
    if len(shells) == 1:
        assert record["FitMethod"] == "single-shell"
        prior = record["SingleShellPrior"]
        assert prior["B0PriorUsed"] and prior["B0ReferenceTissue"] < prior["B0ReferenceWater"]
        assert prior["NoiseSD"] > 0
        low, high = prior["B0ReceiveFieldRange"]  # the phantom has no shading to speak of
        assert 0.9 < low <= 1.0 <= high < 1.1
    else:
        assert record["FitMethod"] == "multi-shell" and "SingleShellPrior" not in record


def test_maps_are_published_under_bep016_names_with_model_sidecars(tmp_path):
    """Both maps through the sink, as the session's derivatives workflow wires them."""
    from ketamine_dti.interfaces.bids import DerivativesSink
    from ketamine_dti.interfaces.dwi import FreeWaterElimination

    inputs = _phantom(tmp_path, (1000.0,))
    (tmp_path / "node").mkdir()
    fit = FreeWaterElimination(**inputs).run(cwd=str(tmp_path / "node")).outputs
    raw = tmp_path / "bids" / "sub-01" / "ses-24h" / "dwi" / "sub-01_ses-24h_dwi.nii.gz"
    session = SessionInputs("01", "24h", str(raw), "", "", str(raw), {})
    config = Config(tmp_path / "bids", tmp_path / "out", "participant")
    context = SidecarContext(config, "01", session=session)
    for key, work_file, param, units in (
        ("fw_md", fit.md_file, "md", "mm^2/s"),
        ("fw_fraction", fit.fwf_file, "fwf", "arbitrary"),
    ):
        name = f"sub-01_ses-24h_space-dwi_model-fwdti_param-{param}_dwimap.nii.gz"
        assert spec_path(config.output_dir, key, "01", "24h").name == name
        written = DerivativesSink(
            output_dir=str(config.output_dir), in_file=work_file, datatype="dwi",
            suffix="dwimap", entities=spec_entities(key, "01", "24h"),
            metadata=sidecar(key, context), metadata_file=fit.metadata_file,
        ).run(cwd=str(tmp_path / "node")).outputs.out_file  # fmt: skip
        assert Path(written) == bids.staging_root(config.output_dir) / "sub-01/ses-24h/dwi" / name
        meta = json.loads(Path(written.replace(".nii.gz", ".json")).read_text())
        assert meta["Units"] == units
        assert meta["Sources"][0].endswith("_space-dwi_desc-preproc_dwi.nii.gz")
        model = meta["Model"]  # static description and the fit as run, merged
        assert "free water" in model["Description"].lower()
        assert set(model["FitMethods"]) == {"single-shell", "multi-shell"}
        assert model["FitMethod"] == "single-shell" and model["SingleShellPrior"]["B0PriorUsed"]
        assert [ref.split()[0] for ref in model["References"]] == ["Pasternak", "Hoy", "Golub"]
    # the tensor maps keep their names and model
    assert spec_path(config.output_dir, "md", "01", "24h").name == (
        "sub-01_ses-24h_space-dwi_model-tensor_param-md_dwimap.nii.gz"
    )


def test_roi_table_averages_free_water_over_the_md_voxels(tmp_path):
    """The ROI statistics with the free-water maps: their means use exactly the voxels
    md_mean uses; a map on another grid is refused."""
    from conftest import measure_rois

    from ketamine_dti.rois import ROI_COLUMN_DESCRIPTIONS

    shape = (8, 8, 7)
    rng = np.random.default_rng(0)
    labels = np.zeros(shape, np.int16)
    for index in range(1, 8):
        labels[:, :, index - 1] = index
    csf = np.zeros(shape)
    csf[:4] = 0.5  # half of every ROI is dropped by the anatomy rule
    md = rng.uniform(0.7e-3, 0.9e-3, shape)
    fw_md = rng.uniform(0.6e-3, 0.8e-3, shape)
    fw_md[:4] = 2e-3  # dropped voxels: would move the mean if they were used
    fw_md[4, 0, :] = np.nan  # one kept voxel per ROI is free water for the fit
    fwf = rng.uniform(0.0, 0.2, shape)
    fwf[:4] = 0.9
    fwf[4, 0, :] = 1.0
    files = {}
    for name, array in (("md", md), ("fa", np.full(shape, 0.1)), ("atlas", labels),
                        ("gm", np.ones(shape)), ("csf", csf), ("mask", np.ones(shape, np.uint8)),
                        ("fw_md", fw_md), ("fw_fraction", fwf)):  # fmt: skip
        files[name] = str(tmp_path / f"{name}.nii.gz")
        image = nib.Nifti1Image(np.asarray(array, dtype=np.float32), AFFINE)
        nib.save(image, files[name])
    roi = measure_rois(tmp_path / "rois", [files], [f"r{i}" for i in range(7)])
    table = pd.read_csv(roi.out_files[0], sep="\t")
    assert set(table.columns) == set(ROI_COLUMN_DESCRIPTIONS)
    for index in range(7):
        row = table.iloc[index]
        kept = (labels == index + 1) & (csf <= 0.05)
        assert row.n_voxels == kept.sum() == 32
        assert row.md_mean == pytest.approx(md[kept].astype(np.float32).mean(), rel=1e-5)
        assert row.md_fwcorr_mean == pytest.approx(
            np.nanmean(fw_md[kept].astype(np.float32)), rel=1e-5
        )
        assert row.md_fwcorr_median == pytest.approx(
            np.nanmedian(fw_md[kept].astype(np.float32)), rel=1e-5
        )
        assert row.fw_fraction_mean == pytest.approx(fwf[kept].astype(np.float32).mean(), rel=1e-5)
        assert row.n_voxels_fw_no_tissue == 1
    moved = AFFINE.copy()
    moved[0, 3] = 2.0
    nib.save(nib.Nifti1Image(fw_md.astype(np.float32), moved), files["fw_md"])
    with pytest.raises(Exception, match="not on the MD map's grid"):
        measure_rois(tmp_path / "again", [files], [f"r{i}" for i in range(7)])


def test_the_gray_matter_reference_follows_the_dwi_to_template_transform(tmp_path):
    """GrayMatterReference marks the DWI voxels whose centre, mapped by the published
    from-DWI_to-template .mat, reads >= REFERENCE_MIN_GM_SHARE gray matter and <=
    REFERENCE_MAX_CSF_SHARE CSF in the template: a template 10 mm higher is found only
    through the transform, and gray matter holding CSF is left out."""
    from ketamine_dti.ants_backend import matrix_to_affine
    from ketamine_dti.interfaces.anat import GrayMatterReference

    gm, csf = np.zeros((40, 40, 40), np.float32), np.zeros((40, 40, 40), np.float32)
    gm[10:30, 10:30, 20:36] = 1.0
    csf[10:15, 10:30, 20:36] = 0.5  # gray matter beside CSF: not a reference
    files = {}
    for name, data, zoom in (("gm", gm, 1.0), ("csf", csf, 1.0),
                             ("mask", np.ones((20, 20, 20), np.uint8), 2.0)):  # fmt: skip
        files[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(data, np.diag([zoom] * 3 + [1.0])), files[name])
    down = np.eye(4)
    down[2, 3] = -10.0  # template points -> DWI points: 10 mm down (S = +z in LPS)
    found = {}
    for label, matrix in (("right", down), ("identity", np.eye(4))):
        node = GrayMatterReference(
            gm_file=files["gm"], csf_file=files["csf"], mask_file=files["mask"],
            from_dwi_to_template=matrix_to_affine(matrix, tmp_path / f"{label}.mat"),
        )  # fmt: skip
        (tmp_path / label).mkdir()
        result = node.run(cwd=str(tmp_path / label)).outputs
        found[label] = np.asarray(nib.load(result.out_file).dataobj)
    right = found["right"]
    assert right[10, 10, 8] == 1  # template (20, 20, 26): gray matter
    assert right[10, 10, 2] == 0  # template z 14: below it
    assert right[6, 10, 8] == 0  # template x 12: gray matter with half CSF
    assert right[8:14, 6:14, 6:12].all()  # the interior, x >= 16 mm (past the CSF, its blur)
    assert found["identity"][10, 10, 8] == 0  # without the transform: template z 16, no GM


def test_interface_takes_the_tissue_reference_from_the_gray_matter_it_is_given(tmp_path):
    """Given a gray-matter mask, the single-shell tissue b0 reference is read there, and the
    sidecar says so: "gray matter" holding ~9% water by volume (f 0.2, b0 ~14% brighter than the
    water-free rim the DTI rule picks) raises the reference by about that much. A mask on
    another grid is refused."""
    from ketamine_dti.dwi.free_water import TISSUE_FROM_GRAY_MATTER, TISSUE_FROM_LOWEST_MD
    from ketamine_dti.interfaces.dwi import FreeWaterElimination

    inputs = _phantom(tmp_path, (1000.0,))
    grid = np.indices(SHAPE).astype(float)
    centre = (np.array(SHAPE) - 1) / 2
    radius = np.sqrt(sum(((grid[i] - centre[i]) / (0.45 * SHAPE[i])) ** 2 for i in range(3)))
    band = (np.abs(0.45 - 0.5 * radius - 0.2) < 0.03) & (radius < 1)  # f ~ 0.2 there
    nib.save(nib.Nifti1Image(band.astype(np.uint8), AFFINE), tmp_path / "gray.nii.gz")
    priors = {}
    for label, extra in (
        ("dti", {}),
        ("gray", {"gray_matter_file": str(tmp_path / "gray.nii.gz")}),
    ):
        (tmp_path / label).mkdir()
        out = FreeWaterElimination(**inputs, **extra, n_threads=1).run(cwd=str(tmp_path / label))
        priors[label] = json.loads(Path(out.outputs.metadata_file).read_text())["Model"][
            "SingleShellPrior"
        ]
    assert priors["dti"]["B0ReferenceTissueVoxels"] == TISSUE_FROM_LOWEST_MD
    assert priors["gray"]["B0ReferenceTissueVoxels"] == TISSUE_FROM_GRAY_MATTER
    raised = priors["gray"]["B0ReferenceTissue"] / priors["dti"]["B0ReferenceTissue"]
    assert 1.05 < raised < 1.2  # 1.136 in the phantom's units, 1.084 after its receive field
    nib.save(nib.Nifti1Image(band[:, :, :4].astype(np.uint8), AFFINE), tmp_path / "other.nii.gz")
    with pytest.raises(ValueError, match="not on the DWI's grid"):
        FreeWaterElimination(
            **inputs, gray_matter_file=str(tmp_path / "other.nii.gz"), n_threads=1
        ).run(cwd=str(tmp_path / "gray"))


def test_the_fit_record_names_no_tissue_voxels_when_there_is_no_b0_prior():
    """Gray matter found but no CSF bright enough (the real PA series): no b0 prior, so the
    record must not say which voxels gave a reference that was not used."""
    from ketamine_dti.dwi.free_water import (
        TISSUE_FROM_GRAY_MATTER,
        FreeWaterFit,
        SingleShellPrior,
        estimate_b0_references,
    )
    from ketamine_dti.interfaces.dwi import _free_water_record

    s0 = np.full(200, 1000.0) + np.arange(200)
    md = np.full(200, 0.8e-3)  # no voxel reaches the water MD
    s0_tissue, s0_water, source = estimate_b0_references(s0, md, gray_matter=np.ones(200, bool))
    assert np.isnan(s0_tissue) and np.isnan(s0_water) and source == TISSUE_FROM_GRAY_MATTER
    maps = np.zeros((1, 1, 1))
    fit = FreeWaterFit(
        md=maps, fa=maps, f_water=maps, tissue_evals=np.zeros((1, 1, 1, 3)),
        tissue_evecs=np.zeros((1, 1, 1, 3, 3)), s0=maps, failed=maps.astype(bool),
        single_shell=True, prior=SingleShellPrior(s0_tissue, s0_water, 5.0, None, source),
    )  # fmt: skip
    record = _free_water_record(fit, np.array([1000.0]))["SingleShellPrior"]
    assert record["B0PriorUsed"] is False
    assert record["B0ReferenceTissue"] is None and record["B0ReferenceTissueVoxels"] is None
