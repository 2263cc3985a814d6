"""The power planner: its OLS against the reference, the partial r mapping against a large
draw, calibration under no effect, monotone power, solve-for-n, and the CLI."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from ketamine_dti.group.changes import delta_md
from ketamine_dti.group.power import (
    PowerDesign,
    design_for_effect,
    interaction_t,
    minimum_n,
    planted_tests,
    power_table,
    solve_n,
)
from ketamine_dti.group.power_cli import EX_NOT_REACHED, main
from ketamine_dti.rois import ROI_NAMES
from ketamine_dti.simulate.cli import EX_USAGE
from ketamine_dti.simulate.clinical import (
    SCALES,
    TREATMENT_ARM,
    allocate_arms,
    coupling_for_partial_r,
    coupling_for_slope,
    draw_age,
    draw_outcomes,
    interaction_partial_r,
    planted_interactions,
    slope_per_percent_md,
    treated_counts,
)
from ketamine_dti.simulate.validation import (
    REALISTIC_RELIABILITY,
    interaction_design,
    lstsq_ols,
    measure_md,
    reliability_for_session_noise,
    session_noise_for_reliability,
)

#: Monte-Carlo results may differ from their expectation by this many standard errors.
SE_TOLERANCE = 4.0
ALPHA = 0.05


def _binomial_bound(rate: float, trials: int) -> float:
    return SE_TOLERANCE * np.sqrt(rate * (1.0 - rate) / trials)


def test_batched_t_matches_the_reference_ols_on_the_participants_each_fit_uses() -> None:
    rng = np.random.default_rng(0)
    replicates, n = 4, 40
    columns = {
        "group": (np.arange(n) < 26).astype(float),
        "delta_md": rng.standard_normal((replicates, n)),
        "baseline_score": rng.normal(32.0, 5.0, (replicates, n)),
    }
    y = rng.normal(-10.0, 8.0, (replicates, n))
    weights = np.ones((replicates, n))
    weights[1, 30:] = 0.0
    weights[2, :4] = 0.0
    design_matrix = interaction_design(columns)
    t = interaction_t(design_matrix, y, weights)
    for replicate in range(replicates):
        used = weights[replicate] > 0
        reference = lstsq_ols(y[replicate, used], design_matrix[replicate, used])
        assert t[replicate] == pytest.approx(reference["statistic"][3], rel=1e-9)


@pytest.mark.parametrize("reliability", [1.0, 0.6])
def test_partial_r_formula_matches_a_large_draw_from_the_clinical_model(reliability) -> None:
    """The model's interaction partial r, measured on 60,000 participants (SE ~0.004)."""
    n, design = 60_000, design_for_effect(partial_r=0.25, reliability=reliability)
    rng = np.random.default_rng(3)
    is_treated = np.arange(n) < 2 * n // 3
    drawn = draw_outcomes(draw_age(n, rng), is_treated, rng, "paper", design.coupling_strength)
    noise = session_noise_for_reliability(reliability)
    expected = planted_tests(design).set_index(["scale", "roi"])["partial_r_measured"]
    for scale, roi in expected.index:  # planted and not
        measured = [measure_md(md, noise, rng) for md in drawn.md[roi]]
        frame = {
            "group": is_treated.astype(float),
            "delta_md": delta_md(*measured, "absolute"),
            "baseline_score": drawn.baseline[scale],
        }
        y = drawn.followup[scale] - drawn.baseline[scale]
        t = lstsq_ols(y, interaction_design(frame))["statistic"][3]
        sample_r = t / np.sqrt(t**2 + n - 5)
        assert sample_r == pytest.approx(expected[(scale, roi)], abs=0.02), (scale, roi)
    if reliability < 1.0:  # measurement error attenuates
        assert abs(expected["madrs", "ba10_left"]) < 0.25


def test_effect_mappings_invert() -> None:
    strength = coupling_for_partial_r(0.2)
    planted = planted_interactions()[("madrs", "ba10_left")]
    assert interaction_partial_r(tuple(strength * rho for rho in planted)) == pytest.approx(0.2)
    assert coupling_for_partial_r(-0.2) == pytest.approx(-strength)
    slope = slope_per_percent_md("madrs", strength * (planted[0] - planted[1]))
    assert coupling_for_slope(slope, "madrs") == pytest.approx(strength)
    with pytest.raises(ValueError, match="largest is 0.500"):
        coupling_for_partial_r(0.6)  # 2:1, full coupling of the ketamine arm
    noise = session_noise_for_reliability(REALISTIC_RELIABILITY)
    assert reliability_for_session_noise(noise) == pytest.approx(REALISTIC_RELIABILITY)


@pytest.mark.parametrize(("n", "allocation"), [(98, (2, 1)), (23, (3, 1)), (7, (1, 1))])
def test_treated_counts_have_the_distribution_of_the_block_allocation(n, allocation) -> None:
    trials = 2000
    rng = np.random.default_rng(1)
    blocks = Counter(
        int(np.sum(allocate_arms(n, rng, allocation) == TREATMENT_ARM)) for _ in range(trials)
    )
    direct = Counter(treated_counts(n, trials, np.random.default_rng(2), allocation).tolist())
    assert set(blocks) == set(direct)
    for count in blocks:
        rate = blocks[count] / trials
        assert direct[count] / trials == pytest.approx(rate, abs=2 * _binomial_bound(0.5, trials))


def test_without_an_effect_rejections_are_at_alpha() -> None:
    """partial r = 0: each test rejects at alpha; with BH over 7 ROIs, each family at alpha."""
    n_sims = 3000
    uncorrected = power_table([30], design_for_effect(partial_r=0.0, n_sims=n_sims, fdr=False))
    rates = uncorrected.tests["rejection_rate"]
    assert rates.mean() == pytest.approx(ALPHA, abs=_binomial_bound(ALPHA, n_sims))
    assert rates.between(ALPHA - 0.02, ALPHA + 0.02).all()
    corrected = power_table([30], design_for_effect(partial_r=0.0, n_sims=n_sims, seed=1))
    summary = corrected.summary.iloc[0]
    for scale in SCALES:  # under the global null BH controls the family-wise rate at alpha
        assert summary[f"any_{scale}"] == pytest.approx(ALPHA, abs=_binomial_bound(ALPHA, n_sims))
    assert summary["power"] < ALPHA  # FDR-adjusted single tests reject less often


def test_power_rises_with_n_and_with_reliability() -> None:
    design = design_for_effect(partial_r=0.3, reliability=0.9, n_sims=600)
    by_n = power_table([30, 60, 120], design).summary["power"].to_numpy()
    assert np.all(np.diff(by_n) > 0.05), by_n
    by_reliability = [
        power_table([60], design_for_effect(partial_r=0.3, reliability=r, n_sims=600))
        .summary["power"]
        .iloc[0]
        for r in (0.3, 0.6, 1.0)
    ]
    assert np.all(np.diff(by_reliability) > 0.03), by_reliability


def test_common_random_numbers_make_an_n_independent_of_the_others_asked() -> None:
    design = design_for_effect(partial_r=0.3, n_sims=300, seed=4)
    alone = power_table([45], design).summary
    together = power_table([20, 45, 70], design).summary
    pd.testing.assert_frame_equal(alone, together[together["n"] == 45].reset_index(drop=True))


def test_solve_n_inverts_the_power_curve() -> None:
    design = design_for_effect(partial_r=0.35, n_sims=400, seed=2)
    solved = solve_n(0.5, design)
    n = solved.solution
    curve = power_table([n - 1, n], design).summary.set_index("n")["power"]
    assert curve[n - 1] < 0.5 <= curve[n]
    assert set(solved.summary["n"]) >= {n - 1, n}
    assert minimum_n() < n < 200


def test_minimum_n_gives_every_arm_three_participants() -> None:
    assert minimum_n((2, 1)) == 9
    assert minimum_n((1, 1)) == 6
    with pytest.raises(ValueError, match="too small for the model"):
        power_table([8], PowerDesign(n_sims=10))


def test_cli_writes_the_table_and_the_plot(tmp_path, capsys) -> None:
    out = tmp_path / "plan"
    code = main([str(out), "--n", "30", "60", "--partial-r", "0.3", "--n-sims", "200"])
    assert code == 0
    table = pd.read_csv(out / "power.tsv", sep="\t")
    assert table["n"].tolist() == [30, 60]
    assert table["power"].between(0, 1).all()
    tests = pd.read_csv(out / "power_tests.tsv", sep="\t")
    assert len(tests) == 2 * len(SCALES) * len(ROI_NAMES)
    assert (out / "power.json").is_file() and (out / "power_tests.json").is_file()
    assert (out / "power.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "power_madrs" in printed and "wrote" in printed


def test_cli_solves_for_n(tmp_path, capsys) -> None:
    code = main(
        [str(tmp_path), "--target-power", "0.5", "--slope", "2.0", "--n-sims", "200"]
        + ["--reliability", "1"]
    )
    assert code == 0
    table = pd.read_csv(tmp_path / "power.tsv", sep="\t")
    assert table["solution"].sum() == 1
    assert "reaches power 0.5" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--allocation", "0:1"], "two positive whole numbers"),
        (["--allocation", "2"], "two positive whole numbers"),
        (["--partial-r", "1.2"], r"in \(-1, 1\)"),
        (["--partial-r", "0.7"], "cannot be planted"),
        (["--reliability", "0"], r"in \(0, 1\]"),
        (["--reliability", "1.5"], r"in \(0, 1\]"),
        (["--n", "5"], "too small for the model"),
        (["--n-sims", "0"], "at least 1"),
        (["--partial-r", "0.2", "--slope", "1"], "not allowed with"),
        (["--n", "98", "--target-power", "0.8"], "not allowed with"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys, options, message) -> None:
    out = tmp_path / "plan"
    assert main([str(out), *options]) == EX_USAGE
    error = capsys.readouterr().err
    assert error.startswith("ketamine-dti-power: error: ") and "Traceback" not in error
    assert len(error.strip().splitlines()) == 1
    assert pd.Series([error]).str.contains(message).all(), error
    assert not out.exists()


def test_cli_says_when_the_target_is_out_of_reach(tmp_path, capsys) -> None:
    options = ["--target-power", "0.95", "--partial-r", "0.1", "--max-n", "40", "--n-sims", "50"]
    assert main([str(tmp_path / "plan"), *options]) == EX_NOT_REACHED
    assert "raise --max-n" in capsys.readouterr().err


@pytest.mark.slow
def test_the_papers_design_is_answered(tmp_path) -> None:
    """n = 98, 2:1, realistic effect, default replicates, as the README example runs it (its
    one-minute target is timed by benchmarks/bench_power.py, not here: tests run under load)."""
    assert main([str(tmp_path), "--n", "98", "--allocation", "2:1", "--partial-r", "0.2"]) == 0
    table = pd.read_csv(tmp_path / "power.tsv", sep="\t")
    assert 0.1 < table["power"].iloc[0] < 0.6
