"""Group models: a second implementation (numpy lstsq + t distribution) agrees to 1e-8.

The reference is built from the simulated trial's own frames (not from the App's analysis
table), so it also checks the reading, change scores and dMD scaling of the App.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

from ketamine_dti.config import Config
from ketamine_dti.group import run_group_level
from ketamine_dti.group.changes import MD_REPORT_UNIT, stacked_roi_frame
from ketamine_dti.group.models import fit_ols
from ketamine_dti.group.multiple_comparisons import benjamini_hochberg
from ketamine_dti.group.validation import observe_roi_md, write_trial
from ketamine_dti.rois import ROI_NAMES
from ketamine_dti.simulate.clinical import simulate_clinical

TOLERANCE = 1e-8
N_PARTICIPANTS = 98


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory):
    """One trial at the real size, written as TSVs, plus the frames it was written from."""
    folder = tmp_path_factory.mktemp("crosscheck")
    rng = np.random.default_rng(2024)
    trial = simulate_clinical(N_PARTICIPANTS, "paper", seed=rng)
    roi_md = observe_roi_md(trial, rng)
    write_trial(trial, roi_md, folder / "bids", folder / "out", rng)
    config = Config(bids_dir=folder / "bids", output_dir=folder / "out", analysis_level="group")
    return config, trial, roi_md


def _reference_frame(trial, roi_md, scale: str, roi: str, percent: bool) -> pd.DataFrame:
    """dScore, dMD and baseline per participant, computed independently of the App."""
    md = roi_md[roi_md.roi == roi].pivot(
        index="participant_id", columns="session_id", values="md_mean"
    )
    if percent:
        delta = 100 * (md["ses-24h"] - md["ses-baseline"]) / md["ses-baseline"]
    else:
        delta = (md["ses-24h"] - md["ses-baseline"]) / MD_REPORT_UNIT
    scores = trial.scores.pivot(
        index="participant_id", columns="session_id", values=f"{scale}_total"
    )
    participants = trial.participants.set_index("participant_id")
    return pd.DataFrame(
        {
            "group": (participants.group == "ketamine").astype(float),
            "delta_md": delta,
            "baseline_score": scores["ses-baseline"].astype(float),
            "delta_score": (scores["ses-24h"] - scores["ses-baseline"]).astype(float),
            "age": participants.age.astype(float),
        }
    )


def _lstsq(y: np.ndarray, x: np.ndarray, robust: bool) -> dict[str, np.ndarray]:
    """OLS by numpy lstsq; classical or HC3 covariance; t tests with n - p df."""
    n, p = x.shape
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ beta
    xtx_inv = np.linalg.inv(x.T @ x)
    if robust:
        leverage = np.einsum("ij,jk,ik->i", x, xtx_inv, x)
        meat = x.T @ (x * (residual / (1 - leverage))[:, None] ** 2)
        cov = xtx_inv @ meat @ xtx_inv
    else:
        cov = xtx_inv * (residual @ residual) / (n - p)
    se = np.sqrt(np.diag(cov))
    t = beta / se
    p_value = 2 * scipy_stats.t.sf(np.abs(t), n - p)
    half = scipy_stats.t.ppf(0.975, n - p) * se
    return {
        "estimate": beta,
        "std_error": se,
        "statistic": t,
        "p_value": p_value,
        "ci_low": beta - half,
        "ci_high": beta + half,
    }


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
    terms = ["group", "delta_md", "group:delta_md", "baseline_score"]
    for scale in ("madrs", "qids_sr"):
        for roi in ROI_NAMES:
            frame = _reference_frame(trial, roi_md, scale, roi, percent)
            x = np.column_stack(
                [
                    np.ones(len(frame)),
                    frame.group,
                    frame.delta_md,
                    frame.group * frame.delta_md,
                    frame.baseline_score,
                ]
            )
            reference = _lstsq(frame.delta_score.to_numpy(), x, robust)
            _compare(stats, reference, terms, {"scale": scale, "roi": roi, "model": "interaction"})
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
    frame = _reference_frame(trial, roi_md, scale, roi, percent=False)
    saline = frame[frame.group == 0]
    x = np.column_stack([np.ones(len(saline)), saline.delta_md, saline.baseline_score, saline.age])
    reference = _lstsq(saline.delta_score.to_numpy(), x, robust=False)
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
    reference = _lstsq(frame.delta_md.to_numpy(), x, robust=False)
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
    assert "session:group:md" in set(mixed.term)
    assert (mixed.n == N_PARTICIPANTS).all()
    assert np.isfinite(mixed[["estimate", "std_error", "p_value"]].to_numpy(float)).all()
    # FDR is applied to the mixed rows too, within scale x term across the ROIs.
    assert mixed.groupby(["scale", "term"]).size().eq(len(ROI_NAMES)).all()
