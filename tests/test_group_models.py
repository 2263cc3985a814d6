"""Group models: a second implementation (numpy lstsq + t distribution) agrees to 1e-8.

The reference (``simulate.validation.lstsq_ols``, the harness's one reference OLS) is built
from the simulated trial's own frames (not from the App's analysis table), so it also checks
the reading, change scores and dMD scaling of the App.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from statsmodels.stats.multitest import multipletests

from ketamine_dti.group import run_group_level
from ketamine_dti.group.changes import MD_REPORT_UNIT, stacked_roi_frame
from ketamine_dti.group.models import fit_ols
from ketamine_dti.group.multiple_comparisons import benjamini_hochberg
from ketamine_dti.rois import ROI_NAMES
from ketamine_dti.simulate.clinical import SCALES
from ketamine_dti.simulate.validation import (
    INTERACTION_TERMS,
    interaction_design,
    lstsq_ols,
    reference_frame,
    simulate_observed_trial,
)

TOLERANCE = 1e-8
N_PARTICIPANTS = 98


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory):
    """One trial at the real size, written as TSVs, plus the frames it was written from."""
    folder = tmp_path_factory.mktemp("crosscheck")
    return simulate_observed_trial(folder, N_PARTICIPANTS, "paper", np.random.default_rng(2024))


def _compare(stats: pd.DataFrame, reference: dict, terms: list[str], where: dict) -> None:
    rows = stats
    for column, value in where.items():
        rows = rows[rows[column] == value]
    rows = rows.set_index("term").loc[terms]
    for column, expected in reference.items():
        np.testing.assert_allclose(
            rows[column].to_numpy(float),
            expected[1:],
            rtol=TOLERANCE,
            atol=1e-12,
            err_msg=f"{where} {column}",
        )


@pytest.mark.parametrize(("robust", "percent"), [(False, False), (True, True)])
def test_interaction_agrees_with_lstsq(written, robust: bool, percent: bool) -> None:
    config, trial, roi_md = written
    config = replace(config, robust_se=robust, delta_md="percent" if percent else "absolute")
    group_dir = run_group_level(config, make_figures=False)
    stats = pd.read_csv(group_dir / "stats.tsv", sep="\t", keep_default_na=False)
    for scale in SCALES:
        for roi in ROI_NAMES:
            frame = reference_frame(trial, roi_md, scale, roi, percent)
            reference = lstsq_ols(frame.delta_score.to_numpy(), interaction_design(frame), robust)
            where = {"scale": scale, "roi": roi, "model": "interaction"}
            _compare(stats, reference, INTERACTION_TERMS, where)
            both_arms = stats[
                (stats.scale == scale) & (stats.roi == roi) & (stats.model != "arm_ketamine")
            ]
            both_arms = both_arms[both_arms.model != "arm_saline"]
            assert (both_arms.n == N_PARTICIPANTS).all()


def test_arm_and_treatment_models_agree_with_lstsq(written) -> None:
    config, trial, roi_md = written
    group_dir = run_group_level(replace(config, covariates=("age",)), make_figures=False)
    stats = pd.read_csv(group_dir / "stats.tsv", sep="\t", keep_default_na=False)
    roi, scale = "hippocampus_left", "madrs"
    frame = reference_frame(trial, roi_md, scale, roi)
    saline = frame[frame.group == 0]
    x = np.column_stack([np.ones(len(saline)), saline.delta_md, saline.baseline_score, saline.age])
    reference = lstsq_ols(saline.delta_score.to_numpy(), x)
    _compare(
        stats,
        reference,
        ["delta_md", "baseline_score", "age"],
        {"scale": scale, "roi": roi, "model": "arm_saline"},
    )

    md = roi_md[roi_md.roi == roi].pivot(
        index="participant_id", columns="session_id", values="md_mean"
    )
    x = np.column_stack([np.ones(len(frame)), frame.group, md["ses-baseline"] / MD_REPORT_UNIT])
    reference = lstsq_ols(frame.delta_md.to_numpy(), x)
    _compare(
        stats,
        reference,
        ["group", "baseline_md"],
        {"scale": "", "roi": roi, "model": "treatment_md"},
    )


def test_stacked_design_equals_one_formula_call_per_roi(written) -> None:
    """The speed-up (one design over all ROIs) gives the same fit as fitting each ROI alone."""
    config, *_ = written
    from ketamine_dti.group.changes import build_analysis_table
    from ketamine_dti.group.inputs import load_inputs

    config = replace(config, covariates=("age", "sex"))
    inputs = load_inputs(config)
    table = build_analysis_table(inputs, config)
    stacked = stacked_roi_frame(table, config, inputs.rois, "madrs")
    formula = 'delta_score ~ group * delta_md + baseline_score + Q("age") + Q("sex")'
    fast = fit_ols(formula, stacked, robust_se=False, by=("roi",))
    for roi in inputs.rois:
        alone = smf.ols(formula, data=stacked[stacked.roi == roi]).fit()
        rows = fast[fast.roi == roi].set_index("term")
        np.testing.assert_allclose(
            rows.estimate.to_numpy(), alone.params.to_numpy()[1:], rtol=1e-12
        )
        np.testing.assert_allclose(
            rows.p_value.to_numpy(), alone.pvalues.to_numpy()[1:], rtol=1e-10
        )
    assert "sex[T.M]" in set(fast.term) and "age" in set(fast.term)


def test_benjamini_hochberg_matches_statsmodels() -> None:
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 50):
        p = rng.uniform(size=size) ** 3
        expected = multipletests(p, method="fdr_bh")[1]
        np.testing.assert_allclose(benjamini_hochberg(p), expected, rtol=1e-12)
    with_nan = np.array([0.01, np.nan, 0.04, 0.03])
    adjusted = benjamini_hochberg(with_nan)
    assert np.isnan(adjusted[1])
    np.testing.assert_allclose(
        adjusted[[0, 2, 3]], multipletests([0.01, 0.04, 0.03], method="fdr_bh")[1]
    )


def test_fdr_family_is_the_rois_of_one_scale_model_term(written) -> None:
    config, *_ = written
    stats = pd.read_csv(
        run_group_level(config, make_figures=False) / "stats.tsv", sep="\t", keep_default_na=False
    )
    for (scale, model, term), rows in stats.groupby(["scale", "model", "term"]):
        expected = multipletests(rows.p_value.to_numpy(), method="fdr_bh")[1]
        np.testing.assert_allclose(
            rows.p_fdr.to_numpy(), expected, rtol=1e-10, err_msg=f"{scale} {model} {term}"
        )
        if model == "treatment_score":
            assert len(rows) == 1
        else:
            assert len(rows) == len(ROI_NAMES)


@pytest.mark.slow
def test_mixed_model_sensitivity_rows(written) -> None:
    config, *_ = written
    stats = pd.read_csv(
        run_group_level(replace(config, mixed_model=True), make_figures=False) / "stats.tsv",
        sep="\t",
        keep_default_na=False,
    )
    mixed = stats[stats.model == "mixed"]
    assert set(mixed.roi) == set(ROI_NAMES)
    assert {"group:md_within", "group:md_between"} <= set(mixed.term)
    assert (mixed.n == N_PARTICIPANTS).all()
    assert np.isfinite(mixed[["estimate", "std_error", "p_value"]].to_numpy(float)).all()
    # FDR is applied to the mixed rows too, within scale x term across the ROIs.
    assert mixed.groupby(["scale", "term"]).size().eq(len(ROI_NAMES)).all()
