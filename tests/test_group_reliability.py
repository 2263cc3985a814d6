"""--reliability: attenuation-corrected dMD slopes (regression calibration, issue 14 item 3).

The correction is checked against the truth (a trial with known measurement error added to
dMD: the corrected slopes land nearer the planted ones than the observed slopes, over several
draws of the error), against a direct numpy computation (slope / conditional reliability), and
its bad inputs through the CLI with their exit code.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import statsmodels.api as sm
from conftest import read_tsv

from bids_app import exit_codes as ec
from bids_app.run import main
from ketamine_dti.config import Config
from ketamine_dti.errors import InputError
from ketamine_dti.group import run_group_level
from ketamine_dti.group.measurement_error import RC_COLUMNS
from ketamine_dti.group.tables import STATS_COLUMNS
from ketamine_dti.rois import ROI_NAMES
from ketamine_dti.simulate.clinical import MD_CHANGE_SD, simulate_clinical
from ketamine_dti.simulate.validation import MEASUREMENT_NOISE

#: Extra per-session measurement noise added to the follow-up ROI MD (fraction of MD): with
#: the simulator's own 0.75% per session, dMD's reliability drops from ~0.85 to ~0.75.
ADDED_NOISE = 0.01
#: Draws of the added error, each analysed once.
N_DRAWS = 6
#: (scale, ROI) with a planted slope in the ketamine arm and none in the saline arm.
COUPLED = (("madrs", "ba10_left"), ("madrs", "amygdala_left"),
           ("qids_sr", "ba10_left"), ("qids_sr", "amygdala_left"))  # fmt: skip


def _reliability_file(folder: Path, value: float, rois=ROI_NAMES) -> Path:
    path = folder / "reliability.tsv"
    path.write_text("roi\treliability\n" + "".join(f"{roi}\t{value}\n" for roi in rois))
    return path


def _true_reliability() -> float:
    """var(true dMD) / var(measured dMD), dMD in percent: the true change has SD
    100 MD_CHANGE_SD; each session adds independent relative noise, the follow-up ADDED_NOISE
    more (to first order, the percent change carries both sessions' errors)."""
    true_variance = (100 * MD_CHANGE_SD) ** 2
    error_variance = 2 * (100 * MEASUREMENT_NOISE) ** 2 + (100 * ADDED_NOISE) ** 2
    return true_variance / (true_variance + error_variance)


def _add_followup_noise(config: Config, rng: np.random.Generator) -> None:
    for path in sorted(config.output_dir.glob("sub-*/ses-24h/dwi/*_desc-roi_md.tsv")):
        table = read_tsv(path)
        table["md_mean"] *= 1.0 + ADDED_NOISE * rng.standard_normal(len(table))
        table.to_csv(path, sep="\t", index=False, na_rep="n/a", lineterminator="\n")


def test_corrected_slopes_are_nearer_the_planted_ones(group_trial: Config, tmp_path) -> None:
    planted = simulate_clinical(2, "paper").planted["coupling_slope_points_per_percent_md"]
    pristine = {path: path.read_bytes() for path in group_trial.output_dir.rglob("*.tsv")}
    config = replace(
        group_trial,
        delta_md="percent",  # the planted slopes are points per 1% MD change
        reliability=_reliability_file(tmp_path, round(_true_reliability(), 3)),
    )
    errors = {"estimate": [], "estimate_rc": []}
    for draw in range(N_DRAWS):
        for path, content in pristine.items():
            path.write_bytes(content)
        _add_followup_noise(config, np.random.default_rng(100 + draw))
        stats = read_tsv(run_group_level(config, make_figures=False) / "stats.tsv")
        for scale, roi in COUPLED:
            truth = planted["ketamine"][scale][roi] - planted["saline"][scale][roi]
            for model, term, target in (
                ("interaction", "group:delta_md", truth),
                ("arm_ketamine", "delta_md", planted["ketamine"][scale][roi]),
            ):
                row = stats.set_index(["scale", "roi", "model", "term"]).loc[
                    (scale, roi, model, term)
                ]
                for column in errors:
                    errors[column].append(row[column] - target)
    bias = {column: float(np.mean(values)) for column, values in errors.items()}
    assert bias["estimate"] < 0, bias  # attenuated: the observed slopes fall short
    assert abs(bias["estimate_rc"]) < abs(bias["estimate"]), bias


def test_single_dmd_column_is_slope_over_conditional_reliability(
    group_trial: Config, tmp_path
) -> None:
    """pooled: estimate_rc = estimate / lambda_c, lambda_c = 1 - n sigma_u^2 / r'r with r the
    residual of dMD on the other columns; reliability 1 gives the estimate and its HC1 SE."""
    reliability = 0.7
    config = replace(group_trial, reliability=_reliability_file(tmp_path, reliability))
    group_dir = run_group_level(config, make_figures=False)
    stats = read_tsv(group_dir / "stats.tsv")
    assert tuple(stats.columns) == STATS_COLUMNS + RC_COLUMNS
    table = read_tsv(group_dir / "analysis_table.tsv")
    roi = "amygdala_left"
    dmd = table[f"delta_md_{roi}"].to_numpy()
    others = np.column_stack(
        [np.ones(len(table)), table.group == "ketamine", table.madrs_baseline]
    ).astype(float)
    pooled = sm.OLS(table.delta_madrs, np.column_stack([others, dmd])).fit(cov_type="HC1")
    residual = dmd - others @ np.linalg.lstsq(others, dmd, rcond=None)[0]
    error_variance = (1 - reliability) * dmd.var(ddof=1)
    conditional = 1 - len(dmd) * error_variance / (residual @ residual)
    row = stats.set_index(["scale", "roi", "model", "term"]).loc[
        ("madrs", roi, "pooled", "delta_md")
    ]
    assert row.reliability == reliability
    assert row.estimate_rc == pytest.approx(row.estimate / conditional, rel=1e-10)
    corrected = stats.dropna(subset=["estimate_rc"])
    assert set(corrected.term) == {"delta_md", "group:delta_md"}
    assert set(corrected.model) == {"interaction", "pooled", "arm_ketamine", "arm_saline"}
    assert len(corrected) == 2 * len(ROI_NAMES) * 5  # 2 scales x 7 ROIs x 5 dMD terms
    assert stats.loc[stats.estimate_rc.isna(), "reliability"].isna().all()
    sidecar = json.loads((group_dir / "stats.json").read_text())
    assert "Sensitivity analysis" in sidecar["reliability"]["Description"]
    assert "delta method" in sidecar["se_rc"]["Description"]
    for name in ("summary.md", "group_report.html"):
        assert "attenuation-corrected dMD slopes (sensitivity analysis" in (
            (group_dir / name).read_text()
        )

    config = replace(config, reliability=_reliability_file(tmp_path, 1))
    stats = read_tsv(run_group_level(config, make_figures=False) / "stats.tsv")
    corrected = stats.dropna(subset=["estimate_rc"])
    np.testing.assert_allclose(corrected.estimate_rc, corrected.estimate, rtol=1e-9)
    row = stats.set_index(["scale", "roi", "model", "term"]).loc[
        ("madrs", roi, "pooled", "delta_md")
    ]
    assert row.se_rc == pytest.approx(pooled.bse.iloc[-1], rel=1e-9)  # statsmodels' HC1


def _cli(config: Config, reliability: Path) -> int:
    for pid in read_tsv(config.bids_dir / "participants.tsv").participant_id:
        sessions = config.bids_dir / pid / f"{pid}_sessions.tsv"  # the CLI selects participants
        sessions.parent.mkdir(exist_ok=True)  # from the sub-* folders that hold a file
        sessions.write_text("session_id\nses-baseline\nses-24h\n")
    base = [str(config.bids_dir), str(config.output_dir), "group", "--skip-bids-validation"]
    return main([*base, "--permutations", "0", "--reliability", str(reliability)])


BAD_FILES = {
    "above_one": ("roi\treliability\n" + "".join(f"{r}\t1.5\n" for r in ROI_NAMES),
                  r"line 2, column reliability: 1.5 is outside \(0, 1\]"),
    "zero": ("roi\treliability\n" + "".join(f"{r}\t0\n" for r in ROI_NAMES),
             r"line 2, column reliability: 0 is outside \(0, 1\]"),
    "missing_roi": ("roi\treliability\n" + "".join(f"{r}\t0.8\n" for r in ROI_NAMES[:-1]),
                    r"no row for ROI\(s\) vacc"),
    "not_a_number": ("roi\treliability\n" + "".join(f"{r}\thigh\n" for r in ROI_NAMES),
                     r"line 2, column reliability: 'high' is not a number"),
    "n/a": ("roi\treliability\n" + "".join(f"{r}\tn/a\n" for r in ROI_NAMES),
            r"'n/a' is not a number"),
    "duplicate": ("roi\treliability\nvacc\t0.8\n" + "".join(f"{r}\t0.8\n" for r in ROI_NAMES),
                  r"duplicate row for vacc"),
    "no_column": ("roi\ticc\n" + "".join(f"{r}\t0.8\n" for r in ROI_NAMES),
                  r"column 'reliability' missing"),
    "empty": ("", r"empty file"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_reliability_file_is_an_input_error(group_trial: Config, tmp_path, case) -> None:
    text, message = BAD_FILES[case]
    path = tmp_path / "reliability.tsv"
    path.write_text(text)
    with pytest.raises(InputError, match=f"^{path}: .*{message}"):
        run_group_level(replace(group_trial, reliability=path), make_figures=False)


@pytest.mark.parametrize("content", [None, b"\xff\xfe\x00roi"], ids=["missing", "binary"])
def test_unreadable_reliability_file_exits_1(group_trial: Config, tmp_path, capsys, content):
    path = tmp_path / "reliability.tsv"
    if content is not None:
        path.write_bytes(content)
    assert _cli(group_trial, path) == ec.EX_FAILURE
    error = capsys.readouterr().err
    assert str(path) in error
    assert ("not found" if content is None else "unreadable") in error
    assert not (group_trial.output_dir / "group").exists()


def test_out_of_range_reliability_exits_1_through_the_cli(group_trial: Config, tmp_path, capsys):
    path = _reliability_file(tmp_path, 1.2)
    assert _cli(group_trial, path) == ec.EX_FAILURE
    assert f"{path}: line 2, column reliability: 1.2 is outside (0, 1]" in capsys.readouterr().err
