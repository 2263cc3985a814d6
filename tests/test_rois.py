"""Regional MD statistics and the gray-matter rule, on phantoms."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ketamine_dti.rois import (
    CSF_PROB_MAX,
    FA_WM_MAX,
    GM_PROB_MIN,
    MD_CSF_MAX,
    ROI_MISSING,
    ROI_NAMES,
    ROI_OK,
    STAT_COLUMNS,
    GrayMatterRule,
    RetentionRule,
    gray_matter_mask,
    regional_statistics,
)

#: Tissue parameters of the phantom (mm^2/s), as in the simulator's tissue model.
GM_MD, WM_MD, CSF_MD = 0.8e-3, 0.72e-3, 3.0e-3
GM_FA, WM_FA = 0.12, 0.68
S0 = {"gm": 1.4, "wm": 1.0, "csf": 3.0}
BVAL = 1000.0


def test_roi_names_unchanged():
    assert ROI_NAMES == (
        "ba10_left",
        "ba10_right",
        "amygdala_left",
        "amygdala_right",
        "hippocampus_left",
        "hippocampus_right",
        "vacc",
    )


def test_regional_statistics_known_values():
    rng = np.random.default_rng(3)
    shape = (10, 10, 7)
    labels = np.zeros(shape, np.int16)
    md = rng.uniform(0.6e-3, 1.0e-3, shape)
    for index in range(1, 8):
        labels[:, :, index - 1] = index  # one slab of 100 voxels per ROI
    labels[0, 0, :] = 0  # one background voxel per slab
    table = regional_statistics(md, labels, rule=GrayMatterRule(None, None))
    assert list(table.columns) == list(STAT_COLUMNS)
    assert list(table.roi) == list(ROI_NAMES)
    for index in range(1, 8):
        values = md[labels == index]
        row = table.iloc[index - 1]
        assert row["index"] == index
        assert row.n_voxels == row.n_voxels_brain == row.n_voxels_atlas == 99
        assert row.fraction_kept == 1.0
        assert row.status == ROI_OK and row.reason is None
        assert row.md_mean == pytest.approx(values.mean())
        assert row.md_median == pytest.approx(np.median(values))
        assert row.md_std == pytest.approx(values.std(ddof=1))
        assert np.isnan(row.fa_mean)


def test_md_never_selects_and_failed_fits_are_not_averaged():
    labels = np.ones((4, 1, 1), int)
    md = np.array([0.8e-3, 2.0e-3, np.nan, -1e-4]).reshape(4, 1, 1)
    fa = np.array([0.1, 0.5, 0.1, 0.1]).reshape(4, 1, 1)
    no_retention_rule = RetentionRule(min_fraction=0.0, min_voxels=1)
    table = regional_statistics(md, labels, fa=fa, roi_names=("one",), retention=no_retention_rule)
    row = table.iloc[0]
    assert row.n_voxels_atlas == 4
    assert row.n_voxels == 2  # the CSF-like MD is averaged; the failed fits cannot be
    assert row.n_voxels_fit_failed == 2
    assert (row.n_voxels_md_csf, row.n_voxels_fa_wm) == (1, 1)  # counted, not dropped
    assert row.md_mean == pytest.approx(1.4e-3)
    assert row.fa_mean == pytest.approx(0.3)


def test_changing_the_dwi_values_never_changes_which_voxels_are_averaged():
    """Issue 13: the voxel set comes from anatomy alone. Raising MD by up to 3x (CSF-like) and
    FA to WM-like values in random voxels changes the means and the QC counts, never the set."""
    rng = np.random.default_rng(5)
    shape = (12, 12, 7)
    labels = np.repeat(np.arange(1, 8), 12 * 12).reshape(7, 12, 12).transpose(1, 2, 0)
    gm_prob, csf_prob = rng.uniform(0.2, 1, shape), rng.uniform(0, 0.07, shape)
    md, fa = rng.uniform(0.6e-3, 1.0e-3, shape), rng.uniform(0.05, 0.25, shape)
    rule = {"gm_prob": gm_prob, "csf_prob": csf_prob, "retention": RetentionRule(0.2, 10)}
    before = regional_statistics(md, labels, fa=fa, **rule)
    changed = rng.uniform(0, 1, shape) < 0.3
    md2, fa2 = np.where(changed, 3 * md, md), np.where(changed, 0.7, fa)
    after = regional_statistics(md2, labels, fa=fa2, **rule)
    assert after.n_voxels.tolist() == before.n_voxels.tolist()
    assert (after.n_voxels > 0).all() and (after.md_mean > before.md_mean).all()
    assert (after.n_voxels_md_csf > before.n_voxels_md_csf).all()
    assert (after.n_voxels_fa_wm > 0).all() and (before.n_voxels_fa_wm == 0).all()


def test_empty_roi_gives_nan_and_a_warning(caplog):
    labels = np.zeros((5, 5, 5), int)
    labels[:2] = 1
    labels[3:] = 2  # ROI 2 has voxels, all of them CSF on the T1w
    md = np.full(labels.shape, 0.8e-3)
    csf_prob = np.zeros(labels.shape)
    csf_prob[3:] = 1.0
    with caplog.at_level(logging.WARNING, logger="ketamine_dti.rois"):
        table = regional_statistics(md, labels, csf_prob=csf_prob, roi_names=("a", "b", "c"))
    assert table.n_voxels.tolist() == [50, 0, 0]
    assert table.n_voxels_atlas.tolist() == [50, 50, 0]
    assert table.loc[1, ["md_mean", "md_median", "md_std", "fa_mean"]].isna().all()
    assert table.status.tolist() == [ROI_OK, ROI_MISSING, ROI_MISSING]
    assert table.reason.tolist()[1:] == [
        "kept 0 of 50 atlas voxels (0.0% < 15%)",
        "no atlas voxel on the DWI grid",
    ]
    assert "ROI b is missing" in caplog.text and "ROI c is missing" in caplog.text


@pytest.mark.parametrize(
    ("n_kept", "n_atlas", "reason"),
    [
        (1, 180, "kept 1 of 180 atlas voxels (0.6% < 15%)"),
        (26, 180, "kept 26 of 180 atlas voxels (14.4% < 15%)"),
        (27, 180, None),  # exactly 15%: kept
        (9, 20, "kept 9 of 20 atlas voxels (9 < 10 voxels)"),
        (10, 20, None),
        (0, 0, "no atlas voxel on the DWI grid"),
    ],
)
def test_retention_rule_known_answers(n_kept, n_atlas, reason):
    assert RetentionRule().missing_reason(n_kept, n_atlas) == reason


def test_an_roi_that_lost_most_voxels_is_missing_never_a_number():
    """An ROI mostly outside the brain mask or dropped by the GM rule reports n/a and why."""
    labels = np.zeros((20, 10, 2), int)
    labels[:, :, 0] = 1  # 200 voxels
    labels[:, :, 1] = 2  # 200 voxels
    md = np.full(labels.shape, 0.8e-3)
    csf_prob = np.zeros(labels.shape)
    csf_prob[:18, :, 0] = 1.0  # ROI 1: 180 CSF voxels dropped, 20 kept (10%)
    brain = np.ones(labels.shape, bool)
    brain[:5, :, 1] = False  # ROI 2: 50 outside the brain, 150 kept (75%)
    table = regional_statistics(
        md, labels, csf_prob=csf_prob, brain_mask=brain, roi_names=("one", "two")
    )
    one, two = table.itertuples(index=False)
    assert (one.status, one.n_voxels, one.n_voxels_brain, one.n_voxels_atlas) == (
        ROI_MISSING,
        20,
        200,
        200,
    )
    assert one.reason == "kept 20 of 200 atlas voxels (10.0% < 15%)"
    assert np.isnan([one.md_mean, one.md_median, one.md_std, one.fa_mean]).all()
    assert (two.status, two.n_voxels, two.n_voxels_brain, two.fraction_kept) == (
        ROI_OK,
        150,
        150,
        0.75,
    )
    assert two.md_mean == pytest.approx(0.8e-3)
    lenient = regional_statistics(
        md,
        labels,
        csf_prob=csf_prob,
        brain_mask=brain,
        retention=RetentionRule(0.1, 10),
        roi_names=("a", "b"),
    )
    assert lenient.status.tolist() == [ROI_OK, ROI_OK]


def _mixture(gm: float, wm: float, csf: float) -> tuple[float, float]:
    """Apparent MD and FA of a voxel mixing isotropic-ish GM, WM and CSF (mono-exponential)."""
    weights = np.array([S0["gm"] * gm, S0["wm"] * wm, S0["csf"] * csf])
    # WM tensor along x; GM nearly isotropic; CSF isotropic: diffusion-weighted along x, y, z
    gm_eig = GM_MD * np.array([1.14, 0.93, 0.93])
    wm_eig = np.array([1.40e-3, 0.38e-3, 0.38e-3])
    csf_eig = np.full(3, CSF_MD)
    signal_b = np.array(
        [
            weights @ np.exp(-BVAL * np.array([g, w, c]))
            for g, w, c in zip(gm_eig, wm_eig, csf_eig, strict=True)
        ]
    )
    eig = np.log(weights.sum() / signal_b) / BVAL
    md = eig.mean()
    fa = np.sqrt(1.5 * ((eig - md) ** 2).sum() / (eig**2).sum())
    return md, fa


def test_gray_matter_rule_on_tissue_fraction_phantom():
    """Known fractions -> known mixture MD/FA -> which voxels the documented rule keeps."""
    fractions = [  # (gm, wm, csf)
        (1.0, 0.0, 0.0),  # pure GM: kept
        (0.8, 0.2, 0.0),  # GM with some WM: MD hardly changes, FA stays low: kept
        (0.0, 1.0, 0.0),  # WM: FA 0.68, GM fraction 0
        (0.3, 0.7, 0.0),  # mostly WM
        (0.6, 0.0, 0.4),  # heavy CSF partial volume: MD above 1.5e-3
        (0.85, 0.0, 0.15),  # mild CSF: MD below 1.5e-3 but biased; only the T1w rule sees it
        (0.0, 0.0, 1.0),  # CSF
    ]
    md, fa = np.array([_mixture(*f) for f in fractions]).T.reshape(2, -1, 1, 1)
    gm_prob, _, csf_prob = np.array(fractions).T.reshape(3, -1, 1, 1)
    assert md[0, 0, 0] == pytest.approx(GM_MD, rel=0.02)
    assert md[5, 0, 0] > 1.15 * GM_MD  # 15% CSF biases MD by more than 15%
    # the T1w fractions alone choose: GM majority and no more than 5% CSF
    keep = gray_matter_mask(gm_prob, csf_prob)
    assert keep.ravel().tolist() == [True, True, False, False, False, False, False]
    only_gm = GrayMatterRule(csf_prob_max=None)
    assert gray_matter_mask(gm_prob, csf_prob, only_gm).ravel().tolist() == [
        True,
        True,
        False,
        False,
        True,
        True,
        False,
    ]
    # MD and FA flag what the T1w rule let through only as QC counts: the heavy-CSF voxel
    # (MD above 1.5e-3) and the WM voxels (FA above 0.3)
    assert (md.ravel() >= MD_CSF_MAX).tolist() == [False] * 4 + [True, False, True]
    assert (fa.ravel() >= FA_WM_MAX).tolist() == [False, False, True, True, False, False, False]


def test_rule_defaults_are_the_documented_constants():
    rule = GrayMatterRule()
    assert (rule.gm_prob_min, rule.csf_prob_max) == (GM_PROB_MIN, CSF_PROB_MAX)
    with pytest.raises(ValueError, match="shape"):
        gray_matter_mask(np.zeros((1, 1, 1)), np.zeros((2, 1, 1)))


def test_free_water_means_follow_the_md_voxels_and_the_missing_rule():
    """Without free-water maps the columns are n/a; a missing ROI has n/a free-water means."""
    shape = (10, 10, 7)
    labels = np.zeros(shape, np.int16)
    for index in range(1, 8):
        labels[:, :, index - 1] = index
    md = np.full(shape, 0.8e-3)
    brain = np.ones(shape, bool)
    brain[:, :, 0] = False  # ROI 1 has no voxel in the brain: missing
    plain = regional_statistics(md, labels, brain_mask=brain, rule=GrayMatterRule(None, None))
    free_water_columns = [
        "md_fwcorr_mean", "md_fwcorr_median", "fw_fraction_mean", "n_voxels_fw_no_tissue"
    ]  # fmt: skip
    assert plain[free_water_columns].isna().all().all()
    fw_md, fwf = np.full(shape, 0.7e-3), np.full(shape, 0.1)
    md[5, 5, 1] = np.nan  # failed tensor fit: left out of md_mean and of the free-water means
    fw_md[5, 5, 1], fwf[5, 5, 1] = 5.0, 5.0
    table = regional_statistics(
        md, labels, fw_md=fw_md, fw_fraction=fwf, brain_mask=brain,
        rule=GrayMatterRule(None, None),
    )  # fmt: skip
    assert table.status.iloc[0] == ROI_MISSING and np.isnan(table.md_fwcorr_mean.iloc[0])
    assert np.allclose(table.md_fwcorr_mean.iloc[1:], 0.7e-3)
    assert np.allclose(table.md_fwcorr_median.iloc[1:], 0.7e-3)
    assert np.isnan(table.md_fwcorr_median.iloc[0])
    assert np.allclose(table.fw_fraction_mean.iloc[1:], 0.1)
    assert (table.n_voxels_fw_no_tissue.iloc[1:] == 0).all()
    with pytest.raises(ValueError, match="fw_md"):
        regional_statistics(md, labels, fw_md=fw_md[:5])


def _session_samples(rng, n_points: int, md_scale: float = 1.0) -> dict[str, np.ndarray]:
    """One session's reading of the same template points: 7 ROIs, 2 points per DWI voxel."""
    label = np.repeat(np.arange(1, 8), n_points // 7)
    return {
        "label": label,
        "gm": np.full(label.size, 0.9),
        "csf": np.zeros(label.size),
        "voxel": np.arange(label.size) // 2,
        "in_brain": np.ones(label.size, bool),
        "md": md_scale * rng.uniform(0.7e-3, 0.9e-3, label.size),
        "fa": rng.uniform(0.05, 0.2, label.size),
    }


def test_one_voxel_set_for_every_session():
    """Issue 13: a point lost in one session (outside its mask, failed fit) leaves every
    session's mean, so both sessions average the same tissue; the GM rule is the template's."""
    from ketamine_dti.rois import longitudinal_statistics

    rng = np.random.default_rng(11)
    baseline, later = _session_samples(rng, 700), _session_samples(rng, 700)
    later["in_brain"][:20] = False  # ROI 1: the 24 h mask (or field of view) lost 20 points
    baseline["md"][120] = np.nan  # ROI 2: one failed fit at baseline
    baseline["csf"][300:310] = 0.5  # ROI 4: CSF-contaminated in the template
    later["csf"] = baseline["csf"]
    retention = RetentionRule(0.2, 5)
    tables, kept = longitudinal_statistics([baseline, later], retention, ROI_NAMES)
    assert np.array_equal(kept[0], kept[1])
    assert kept[0].sum() == 700 - 20 - 1 - 10
    first, second = tables
    assert first.n_voxels.tolist() == second.n_voxels.tolist() == [40, 50, 50, 45, 50, 50, 50]
    assert first.n_voxels_fit_failed.tolist()[1] == second.n_voxels_fit_failed.tolist()[1] == 1
    for table, session in zip(tables, (baseline, later), strict=True):
        roi_one = kept[0] & (session["label"] == 1)
        assert table.md_mean[0] == pytest.approx(session["md"][roi_one].mean())
    # the values never choose: tripling MD at 24 h changes the means, not the set
    tripled = later | {"md": 3 * later["md"]}
    again, kept_again = longitudinal_statistics([baseline, tripled], retention, ROI_NAMES)
    assert np.array_equal(kept_again[1], kept[1])
    assert again[1].n_voxels.tolist() == second.n_voxels.tolist()
    assert (again[1].md_mean > second.md_mean).all()
    with pytest.raises(ValueError, match="different ROI points"):
        longitudinal_statistics([baseline, _session_samples(rng, 350)], retention, ROI_NAMES)


def test_volume_fraction_decides_retention_with_weighted_samples():
    """Samples that share DWI voxels: the retention rule reads the kept share of the ROI's
    points (its volume), the minimum count reads distinct DWI voxels."""
    labels = np.ones(40, int)
    voxel = np.arange(40) // 4  # 10 DWI voxels of 4 points each
    brain = np.ones(40, bool)
    brain[:36] = False  # 10% of the volume kept, in 1 voxel (the last 4 points: voxel 9)
    table = regional_statistics(
        np.full(40, 0.8e-3), labels, brain_mask=brain, voxel=voxel, roi_names=("one",)
    )
    row = table.iloc[0]
    assert (row.n_voxels, row.n_voxels_atlas, row.fraction_kept) == (1, 10, 0.1)
    assert row.reason == "kept 1 of 10 atlas voxels (10.0% of its volume < 15%)"
    enough_volume = RetentionRule(min_fraction=0.05, min_voxels=2)
    row = regional_statistics(
        np.full(40, 0.8e-3), labels, brain_mask=brain, voxel=voxel, retention=enough_volume
    ).iloc[0]
    assert row.reason == "kept 1 of 10 atlas voxels (1 < 2 voxels)"


def test_each_roi_takes_the_strictest_csf_cap_that_keeps_it_in_every_session():
    """Session 46's ladder: ROI 1 is CSF-free, ROI 2 keeps 10% (< 15%) of its points CSF-free
    and the rest under 1% CSF, ROI 3 lies 3% from CSF: they take the caps 0, 0.01 and 0.05 in
    both sessions, whatever their MD; the 24 h mask lost most of ROI 4's CSF-free points, so it
    takes 0.01 in both sessions."""
    from ketamine_dti.rois import longitudinal_statistics

    rng = np.random.default_rng(3)
    baseline = _session_samples(rng, 700)
    baseline["voxel"] = np.arange(700)
    baseline["csf"][100:190] = 0.005
    baseline["csf"][200:300] = 0.03
    baseline["csf"][330:400] = 0.008
    baseline["csf"][400:] = 0.5  # ROIs 5-7: missing under every cap
    later = baseline | {"md": 3 * baseline["md"], "in_brain": np.ones(700, bool)}
    later["in_brain"][300:320] = False
    tables, kept = longitudinal_statistics([baseline, later], RetentionRule(), ROI_NAMES)
    for table in tables:
        assert table.csf_fraction_max.tolist() == [0.0, 0.01, 0.05, 0.01, 0.05, 0.05, 0.05]
        assert table.n_voxels.tolist()[:4] == [100, 100, 100, 80]
        assert (table.status.iloc[4:] == ROI_MISSING).all()
    assert np.array_equal(kept[0], kept[1]) and kept[0].sum() == 380
    assert tables[1].md_mean.iloc[1] == pytest.approx(later["md"][100:200].mean())
    one_cap = GrayMatterRule(csf_prob_stricter=())
    single, _ = longitudinal_statistics([baseline, later], RetentionRule(), ROI_NAMES, one_cap)
    assert single[0].csf_fraction_max.tolist() == [0.05] * 7
    assert single[0].n_voxels.tolist()[:4] == [100, 100, 100, 80]
