"""Permutation inference of the group level: the vectorised Freedman-Lane statistics against a
statsmodels refit per permutation, blocks, max-T, seeds, and the options through the real CLI."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from conftest import GROUP_TRIAL_PARTICIPANTS, read_tsv
from statsmodels.stats.multitest import multipletests

from bids_app import exit_codes as ec
from bids_app.run import main
from ketamine_dti.config import Config
from ketamine_dti.errors import InputError
from ketamine_dti.group import run_group_level
from ketamine_dti.group.changes import build_analysis_table
from ketamine_dti.group.inputs import load_inputs
from ketamine_dti.group.models import INTERCEPT, ols_designs
from ketamine_dti.group.multiple_comparisons import max_t_adjusted
from ketamine_dti.group.permutation import (
    TIE_TOLERANCE,
    freedman_lane_t,
    permutation_indices,
    permutation_p,
    restrict_permutations,
)
from ketamine_dti.group.tables import STATS_COLUMNS
from ketamine_dti.rois import ROI_NAMES

N_PARTICIPANTS = GROUP_TRIAL_PARTICIPANTS
FORMULA = "delta_score ~ group * delta_md + baseline_score"


@pytest.fixture
def trial(group_trial: Config) -> Config:
    return group_trial


_read = read_tsv


def _fixed_dataset(n: int = 40) -> pd.DataFrame:
    """A small trial-like frame with a modest interaction (p-values away from 0 and 1)."""
    rng = np.random.default_rng(20240514)
    frame = pd.DataFrame(
        {
            "group": (np.arange(n) % 3 != 0).astype(float),
            "delta_md": rng.normal(0, 1.5, n),
            "baseline_score": rng.normal(30, 5, n),
        }
    )
    frame["delta_score"] = (
        -8 * frame.group
        + 2.5 * frame.group * frame.delta_md
        - 0.2 * frame.baseline_score
        + rng.standard_t(5, n) * 4
    )
    return frame


def _loop_null(frame: pd.DataFrame, permutations: np.ndarray, robust: bool) -> np.ndarray:
    """The straightforward Freedman-Lane: for each term and permutation, refit with statsmodels."""
    design = smf.ols(FORMULA, frame)
    y, x = design.endog, design.exog
    fit_kwargs = {"cov_type": "HC3"} if robust else {}
    null = np.empty((len(permutations), x.shape[1] - 1))
    for k, column in enumerate(range(1, x.shape[1])):
        reduced = sm.OLS(y, np.delete(x, column, axis=1)).fit()
        fitted, residuals = reduced.fittedvalues, reduced.resid
        for b, rows in enumerate(permutations):
            refit = sm.OLS(fitted + residuals[rows], x).fit(**fit_kwargs)
            null[b, k] = refit.tvalues[column]
    return null


@pytest.mark.parametrize("robust", [False, True])
def test_vectorised_statistics_equal_a_statsmodels_refit_per_permutation(robust: bool) -> None:
    frame = _fixed_dataset()
    design = smf.ols(FORMULA, frame)
    permutations = permutation_indices(500, np.zeros(len(frame)), np.random.default_rng(1))
    columns = list(range(1, design.exog.shape[1]))
    observed, null = freedman_lane_t(design.endog, design.exog, columns, permutations, robust)

    full = design.fit(**({"cov_type": "HC3"} if robust else {}))
    np.testing.assert_allclose(observed, full.tvalues.to_numpy()[1:], rtol=1e-10)
    np.testing.assert_allclose(null, _loop_null(frame, permutations, robust), rtol=1e-9, atol=1e-9)


def test_p_values_agree_with_an_independent_loop_within_monte_carlo_error() -> None:
    """Different permutations (the loop draws its own): p agrees within 4 Monte-Carlo SEs."""
    frame = _fixed_dataset()
    design = smf.ols(FORMULA, frame)
    columns = list(range(1, design.exog.shape[1]))
    n_vectorised, n_loop = 5000, 500
    permutations = permutation_indices(
        n_vectorised, np.zeros(len(frame)), np.random.default_rng(2)
    )
    observed, null = freedman_lane_t(design.endog, design.exog, columns, permutations)
    p_vectorised = permutation_p(observed, null)

    rng = np.random.default_rng(3)
    loop_permutations = np.array([rng.permutation(len(frame)) for _ in range(n_loop)])
    loop_null = _loop_null(frame, loop_permutations, robust=False)
    p_loop = (1 + (np.abs(loop_null) >= np.abs(observed)).sum(axis=0)) / (n_loop + 1)

    se = np.sqrt(p_vectorised * (1 - p_vectorised) * (1 / n_vectorised + 1 / n_loop))
    assert (np.abs(p_vectorised - p_loop) <= 4 * se + 2 / n_loop).all(), (p_vectorised, p_loop)
    assert 0.001 < p_vectorised[design.exog_names.index("group:delta_md") - 1] < 0.5


def test_permutations_stay_within_blocks_and_are_uniform() -> None:
    rng = np.random.default_rng(0)
    blocks = np.array(list("aabbbcccca"))
    permutations = permutation_indices(2000, blocks, rng)
    assert (blocks[permutations] == blocks).all(), "a participant moved across blocks"
    assert (np.sort(permutations, axis=1) == np.arange(blocks.size)).all()

    members = np.array([0, 2, 3, 5, 6, 9])  # a fit that lacks some participants
    restricted = restrict_permutations(permutations, members)
    assert (np.sort(restricted, axis=1) == np.arange(members.size)).all()
    assert (blocks[members][restricted] == blocks[members]).all()

    # Restricting a uniform permutation gives a uniform one: 3 members of one block of 4.
    block_c = np.flatnonzero(blocks == "c")
    counts = pd.Series(map(tuple, restrict_permutations(permutations, block_c[:3]))).value_counts()
    assert set(counts.index) == set(itertools.permutations(range(3)))
    expected = len(permutations) / 6
    assert (np.abs(counts - expected) < 5 * np.sqrt(expected)).all()


def test_max_t_is_the_family_maximum_and_never_below_p_perm() -> None:
    rng = np.random.default_rng(4)
    null = rng.standard_normal((999, 7))
    observed = np.array([0.1, 1.0, 2.0, 2.5, 3.0, 3.5, 4.0])
    adjusted = max_t_adjusted(np.abs(observed), np.abs(null), TIE_TOLERANCE)
    maxima = np.abs(null).max(axis=1)
    direct = [(1 + (maxima >= value).sum()) / 1000 for value in observed]
    np.testing.assert_allclose(adjusted, direct)
    assert (adjusted >= permutation_p(observed, null) - 1e-15).all()


def test_design_arrays_reproduce_the_stats_statistics(trial: Config) -> None:
    """The designs the permutations use are the fits of stats.tsv (same rows and columns)."""
    config = replace(trial, covariates=("age", "sex"))
    stats = _read(run_group_level(config, make_figures=False) / "stats.tsv").fillna("")
    inputs = load_inputs(config)
    table = build_analysis_table(inputs, config)
    designs = ols_designs(table, config, inputs.rois)
    assert len(designs) == len(config.scales) * len(ROI_NAMES) * 4 + len(ROI_NAMES) + 2
    statistic = stats.set_index(["scale", "roi", "model", "term"])["statistic"]
    for design in designs:
        columns = [j for j, term in enumerate(design.terms) if term != INTERCEPT]
        observed, _ = freedman_lane_t(design.y, design.x, columns, np.empty((0, len(design.y))))
        expected = [statistic[(design.scale, design.roi, design.model, design.terms[j])]
                    for j in columns]  # fmt: skip
        np.testing.assert_allclose(observed, expected, rtol=1e-8, err_msg=design.model)


def test_seed_reproduces_p_perm_and_fdr_and_fwer_columns(trial: Config) -> None:
    config = replace(trial, permutations=300, permutation_seed=5, fwer="maxt")
    group_dir = run_group_level(config, make_figures=False)
    first = (group_dir / "stats.tsv").read_bytes()
    stats = _read(group_dir / "stats.tsv")
    assert tuple(stats.columns) == (*STATS_COLUMNS, "p_perm", "p_perm_fdr", "p_perm_fwer")
    assert stats[["p_perm", "p_perm_fdr", "p_perm_fwer"]].notna().all().all()
    assert ((stats.p_perm >= 1 / 301 - 1e-12) & (stats.p_perm <= 1)).all()
    assert (stats.p_perm_fwer >= stats.p_perm - 1e-12).all()
    for (scale, model, term), rows in stats.fillna({"scale": "", "roi": ""}).groupby(
        ["scale", "model", "term"]
    ):
        expected = multipletests(rows.p_perm.to_numpy(), method="fdr_bh")[1]
        np.testing.assert_allclose(rows.p_perm_fdr, expected, err_msg=f"{scale} {model} {term}")
        if model == "treatment_score":
            np.testing.assert_allclose(rows.p_perm_fwer, rows.p_perm)

    assert (run_group_level(config, make_figures=False) / "stats.tsv").read_bytes() == first
    other = _read(run_group_level(replace(config, permutation_seed=6), make_figures=False)
                  / "stats.tsv")  # fmt: skip
    assert not np.array_equal(other.p_perm, stats.p_perm)
    np.testing.assert_array_equal(other.p_value, stats.p_value)


def test_blocks_missing_or_constant_column_is_an_input_error(trial: Config) -> None:
    config = replace(trial, permutations=50, exchangeability_column="site")
    with pytest.raises(InputError, match=r"column 'site' missing.*--exchangeability-column"):
        run_group_level(config, make_figures=False)
    path = trial.bids_dir / "participants.tsv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0] + "\tsite", *(line + "\tA" for line in lines[1:])]) + "\n")
    with pytest.raises(InputError, match=r"column site: one value \('A'\).*defines no"):
        run_group_level(config, make_figures=False)


def _bids_with_subject_folders(config: Config) -> None:
    """The CLI selects participants from BIDS_DIR's sub-* folders; give each one a file."""
    for pid in _read(config.bids_dir / "participants.tsv").participant_id:
        folder = config.bids_dir / pid
        folder.mkdir(exist_ok=True)
        (folder / f"{pid}_sessions.tsv").write_text("session_id\nses-baseline\nses-24h\n")


def test_options_reach_stats_and_sidecar_through_the_cli(trial: Config) -> None:
    _bids_with_subject_folders(trial)
    base = [str(trial.bids_dir), str(trial.output_dir), "group", "--skip-bids-validation"]
    options = ["--permutations", "200", "--permutation-seed", "11", "--fwer", "maxt"]
    assert main([*base, *options, "--exchangeability-column", "sex"]) == ec.EX_OK
    group_dir = trial.output_dir / "group"
    stats = _read(group_dir / "stats.tsv")
    assert {"p_perm", "p_perm_fdr", "p_perm_fwer"} <= set(stats.columns)
    sidecar = json.loads((group_dir / "stats.json").read_text())
    assert list(sidecar) == list(stats.columns)
    assert sidecar["p_perm"]["Permutations"] == 200 and sidecar["p_perm"]["Seed"] == 11
    assert "'sex'" in sidecar["p_perm"]["ExchangeabilityBlocks"]
    assert "Freedman-Lane" in (group_dir / "summary.md").read_text()

    # Within sex blocks the permutations differ from the unrestricted ones; --permutations 0
    # (the library default) writes no permutation column at all.
    config = replace(trial, permutations=200, permutation_seed=11, fwer="maxt")
    free = _read(run_group_level(config, make_figures=False) / "stats.tsv")
    assert not np.array_equal(free.p_perm, stats.p_perm)
    np.testing.assert_array_equal(free.p_value, stats.p_value)
    group_dir = run_group_level(replace(config, permutations=0, fwer="none"), make_figures=False)
    assert tuple(_read(group_dir / "stats.tsv").columns) == STATS_COLUMNS
    assert "p_perm" not in json.loads((group_dir / "stats.json").read_text())


def test_cli_errors(trial: Config, capsys: pytest.CaptureFixture) -> None:
    _bids_with_subject_folders(trial)
    base = [str(trial.bids_dir), str(trial.output_dir), "group", "--skip-bids-validation"]
    assert main([*base, "--permutations", "-1"]) == ec.EX_USAGE
    assert main([*base, "--permutations", "0", "--fwer", "maxt"]) == ec.EX_USAGE
    assert "--permutations > 0" in capsys.readouterr().err
    code = main([*base, "--permutations", "20", "--exchangeability-column", "site"])
    assert code == ec.EX_FAILURE
    assert "column 'site' missing" in capsys.readouterr().err
