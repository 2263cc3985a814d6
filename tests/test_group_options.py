"""Group-level options of issues 13/14 through the real CLI: arms and --contrast, --qc-covariates,
--md-measure, the mixed model's within/between MD split (against a direct statsmodels fit),
and their bad inputs with their exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from conftest import GROUP_TRIAL_PARTICIPANTS, read_tsv

from bids_app import exit_codes as ec
from bids_app.run import main
from ketamine_dti.config import Config
from ketamine_dti.rois import ROI_NAMES

N_PARTICIPANTS = GROUP_TRIAL_PARTICIPANTS
NCT03237286 = ["ketamine=ketamine_asat,ketamine_sham", "saline=saline_sham"]


@pytest.fixture
def trial(group_trial: Config) -> Config:
    config = group_trial
    for pid in _read(config.bids_dir / "participants.tsv").participant_id:
        folder = config.bids_dir / pid  # the CLI selects participants from sub-* folders
        folder.mkdir()
        (folder / f"{pid}_sessions.tsv").write_text("session_id\nses-baseline\nses-24h\n")
    return config


_read = read_tsv


def _write(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a", lineterminator="\n")


def _cli(config: Config, *options: str) -> int:
    base = [str(config.bids_dir), str(config.output_dir), "group", "--skip-bids-validation"]
    return main([*base, "--permutations", "0", *options])


def _three_arms(config: Config) -> pd.DataFrame:
    """NCT03237286's design in an 'arm' column: ketamine + ASAT, ketamine + sham, saline + sham."""
    path = config.bids_dir / "participants.tsv"
    participants = _read(path)
    treated = participants.group == "ketamine"
    training = np.where(np.arange(len(participants)) % 2 == 0, "asat", "sham")
    participants["arm"] = np.where(treated, "ketamine_" + training, "saline_sham")
    _write(participants.drop(columns="group"), path)
    return participants


def _qc_tables(config: Config) -> list[Path]:
    return sorted(config.output_dir.glob("sub-*/ses-*/dwi/*_desc-qc_metrics.tsv"))


def _set_qc(path: Path, column: str, value) -> None:
    table = _read(path)
    table[column] = value
    _write(table, path)


def _vary_tsnr(config: Config) -> None:
    """The simulator writes tsnr 20 everywhere (constant); give each session its own."""
    rng = np.random.default_rng(3)
    for path in _qc_tables(config):
        _set_qc(path, "tsnr", float(rng.normal(20, 2)))


def test_contrast_maps_three_arms_to_ketamine_vs_saline(trial: Config) -> None:
    participants = _three_arms(trial)
    assert _cli(trial, "--arm-column", "arm", "--contrast", *NCT03237286) == ec.EX_OK
    group_dir = trial.output_dir / "group"
    stats = _read(group_dir / "stats.tsv")
    assert set(stats.model) == {"interaction", "pooled", "arm_ketamine", "arm_saline",
                                "treatment_md", "treatment_score"}  # fmt: skip
    arm_term = "arm[ketamine_sham]"
    for model in ("interaction", "pooled", "arm_ketamine"):
        assert arm_term in set(stats[stats.model == model].term), model
    assert arm_term not in set(stats[stats.model == "arm_saline"].term)
    sidecar = json.loads((group_dir / "stats.json").read_text())
    assert list(sidecar) == list(stats.columns)
    contrast = sidecar["model"]["Contrast"]
    assert "ketamine = ketamine_asat, ketamine_sham" in contrast and "'arm'" in contrast
    assert "arm_ketamine" in sidecar["model"]["Levels"]

    # group x dMD stays ketamine vs saline: the same fit written directly, with the indicator
    # centred within the ketamine side
    table = _read(group_dir / "analysis_table.tsv")
    assert (table.arm.to_numpy() == participants.arm.to_numpy()).all()
    ketamine = table.group == "ketamine"
    sham = (table.arm == "ketamine_sham").astype(float)
    frame = pd.DataFrame({
        "y": table.delta_madrs, "group": ketamine.astype(float), "dmd": table.delta_md_vacc,
        "baseline": table.madrs_baseline,
        "sham": np.where(ketamine, sham - sham[ketamine].mean(), 0),
    })  # fmt: skip
    direct = smf.ols("y ~ group * dmd + baseline + sham", frame).fit()
    row = stats[(stats.scale == "madrs") & (stats.roi == "vacc") & (stats.model == "interaction")]
    row = row.set_index("term")
    np.testing.assert_allclose(row.loc["group:delta_md", "estimate"], direct.params["group:dmd"])
    np.testing.assert_allclose(row.loc[arm_term, "p_value"], direct.pvalues["sham"])


def test_arm_label_outside_the_contrast_lists_the_labels(trial, capsys) -> None:
    _three_arms(trial)
    code = _cli(
        trial, "--arm-column", "arm", "--contrast", "ketamine=ketamine_asat", "saline=saline_sham"
    )
    assert code == ec.EX_FAILURE
    err = capsys.readouterr().err
    assert "arm 'ketamine_sham' is not in the contrast" in err
    assert "labels found: ketamine_asat, ketamine_sham, saline_sham" in err and "--contrast" in err


def test_arm_with_fewer_than_three_participants_has_its_own_exit_code(trial, capsys) -> None:
    participants = _three_arms(trial)
    participants.loc[participants.arm == "ketamine_sham", "arm"] = "ketamine_asat"
    participants.loc[participants.index[participants.arm == "ketamine_asat"][:2], "arm"] = (
        "ketamine_sham"
    )
    _write(participants.drop(columns="group"), trial.bids_dir / "participants.tsv")
    assert _cli(trial, "--arm-column", "arm", "--contrast", *NCT03237286) == ec.EX_DATAERR == 65
    err = capsys.readouterr().err
    assert "fewer than 3 selected participants: ketamine_sham (2)" in err
    assert not (trial.output_dir / "group").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--contrast", "ketamine", "saline=saline"], "NAME=LABEL"),
        (["--contrast", "ketamine=ketamine", "ketamine=saline"], "different names"),
        (["--contrast", "ketamine=ketamine,saline", "saline=saline"], "no arm label on both"),
        (["--md-measure", "fa"], "invalid choice"),
        (["--roi-statistic", "mode"], "invalid choice"),
    ],
)
def test_bad_contrast_syntax_is_a_usage_error(trial, capsys, options, message) -> None:
    with (
        pytest.raises(SystemExit)
        if options[0] in ("--md-measure", "--roi-statistic") or "=" not in options[1]
        else _null()
    ):
        assert _cli(trial, *options) == ec.EX_USAGE
    assert message in capsys.readouterr().err


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_qc_covariates_reach_stats_and_missing_values_are_excluded(trial: Config) -> None:
    _vary_tsnr(trial)
    qc = {path.parts[-4:-2]: path for path in _qc_tables(trial)}
    _set_qc(qc[("sub-003", "ses-24h")], "tsnr", "n/a")  # a value missing
    qc[("sub-004", "ses-baseline")].unlink()  # a QC table missing
    assert _cli(trial, "--qc-covariates") == ec.EX_OK
    group_dir = trial.output_dir / "group"
    stats = _read(group_dir / "stats.tsv")
    interaction = stats[stats.model == "interaction"]
    assert {"delta_mean_fd", "delta_tsnr"} <= set(interaction.term)
    assert not {"delta_mean_fd", "delta_tsnr"} & set(stats[stats.model == "treatment_md"].term)
    assert (interaction.n == N_PARTICIPANTS - 2).all()
    exclusions = _read(group_dir / "exclusions.tsv").set_index("participant_id")
    assert "QC covariate delta_tsnr: tsnr is n/a" in exclusions.loc["sub-003", "reason"]
    assert exclusions.loc["sub-003", "models"] == "covariate-adjusted"
    assert "no QC table at ses-baseline" in " ".join(exclusions.loc[["sub-004"], "reason"])
    table = _read(group_dir / "analysis_table.tsv").set_index("participant_id")
    before, after = (_read(qc[("sub-001", s)]).mean_fd[0] for s in ("ses-baseline", "ses-24h"))
    assert table.loc["sub-001", "delta_mean_fd"] == pytest.approx(after - before, rel=1e-12)
    sidecar = json.loads((group_dir / "stats.json").read_text())
    assert "delta_mean_fd, delta_tsnr" in sidecar["model"]["Covariates"]
    assert "delta_tsnr" in json.loads((group_dir / "analysis_table.json").read_text())


@pytest.mark.parametrize(
    "edit, options, message",
    [
        (None, ["--qc-covariates"], "delta_tsnr: one value (0)"),  # tsnr 20 at every session
        ("text", ["--qc-covariates", "tsnr"], "column tsnr: 'high' is not a number"),
        (None, ["--qc-covariates", "tsnr_b0"], "no QC table (*_desc-qc_metrics.tsv) has a column"),
        ("site", ["--covariates", "site"], "column site: one value ('A')"),
    ],
)
def test_bad_covariates_are_errors(trial, capsys, edit, options, message) -> None:
    if edit == "text":
        _vary_tsnr(trial)
        _set_qc(_qc_tables(trial)[5], "tsnr", "high")
    if edit == "site":
        participants = _read(trial.bids_dir / "participants.tsv")
        participants["site"] = "A"
        _write(participants, trial.bids_dir / "participants.tsv")
    assert _cli(trial, *options) == ec.EX_FAILURE
    assert message in capsys.readouterr().err


@pytest.mark.slow  # 11-17 s of the fast tier (session 9)
def test_md_measure_selects_the_free_water_corrected_column(trial: Config, capsys) -> None:
    rng = np.random.default_rng(8)
    tables = sorted(trial.output_dir.glob("sub-*/ses-*/dwi/*_desc-roi_md.tsv"))
    for path in tables:
        table = _read(path)
        table["md_fwcorr_mean"] = table.md_mean * rng.uniform(0.85, 0.95, len(table))
        _write(table, path)
    assert _cli(trial, "--md-measure", "md_fwcorr") == ec.EX_OK
    group_dir = trial.output_dir / "group"
    analysed = _read(group_dir / "analysis_table.tsv").set_index("participant_id")
    first = _read(tables[0]).set_index("roi")
    pid, session = tables[0].parts[-4], tables[0].parts[-3][len("ses-") :]
    for roi in ROI_NAMES:
        assert analysed.loc[pid, f"md_{roi}_{session}"] == first.loc[roi, "md_fwcorr_mean"]
    sidecar = json.loads((group_dir / "stats.json").read_text())
    assert sidecar["model"]["MDMeasure"].startswith("md_fwcorr_mean: free-water-corrected")
    assert "md_fwcorr_mean" in (group_dir / "summary.md").read_text()
    assert "md_fwcorr_mean" in json.loads((group_dir / "analysis_table.json").read_text())[
        f"md_{ROI_NAMES[0]}_{session}"]["Description"]  # fmt: skip
    # the free-water check: each ROI's spread of dMD/MD under both columns, from the tables
    long = pd.concat(
        _read(path).assign(who=path.parts[-4], when=path.parts[-3]) for path in tables
    )
    changes = {}
    for column in ("md_mean", "md_fwcorr_mean"):
        wide = long.pivot_table(index="who", columns=["roi", "when"], values=column)
        changes[column] = {
            roi: 100 * (wide[(roi, "ses-24h")] / wide[(roi, "ses-baseline")] - 1)
            for roi in ROI_NAMES
        }
    summary = (group_dir / "summary.md").read_text()
    assert "## Free-water correction: spread of dMD/MD, md_fwcorr_mean vs md_mean" in summary
    for roi in ROI_NAMES:
        corrected, plain = changes["md_fwcorr_mean"][roi], changes["md_mean"][roi]
        expected = (
            f"| {roi} | {corrected.std():.2f} | {plain.std():.2f} | "
            f"{corrected.std() / plain.std():.2f} | {corrected.corr(plain):.2f} | {len(plain)} |"
        )
        assert expected in summary
        assert corrected.std() > plain.std()  # independent 0.85-0.95 factors add spread
    assert "Free-water correction" in (group_dir / "group_report.html").read_text()
    # an ROI whose free-water fraction its anatomy cannot hold (the real AP series' BA10:
    # 0.754) leaves the md_fwcorr models with its reason; its plain MD is not judged
    table = _read(tables[0])
    table["fw_fraction_mean"] = 0.05
    table.loc[table.roi == ROI_NAMES[2], "fw_fraction_mean"] = 0.754
    _write(table, tables[0])
    assert _cli(trial, "--md-measure", "md_fwcorr") == ec.EX_OK
    analysed = _read(group_dir / "analysis_table.tsv").set_index("participant_id")
    assert np.isnan(analysed.loc[pid, f"md_{ROI_NAMES[2]}_{session}"])
    assert (
        analysed.loc[pid, f"md_{ROI_NAMES[1]}_{session}"]
        == first.loc[ROI_NAMES[1], "md_fwcorr_mean"]
    )
    excluded = _read(group_dir / "exclusions.tsv")
    row = excluded[(excluded.participant_id == pid) & (excluded.roi == ROI_NAMES[2])]
    assert len(row) == 1 and "fw_fraction_mean 0.754 > 0.3" in row.reason.iloc[0]

    # --roi-statistic median analyses md_median
    assert _cli(trial, "--roi-statistic", "median") == ec.EX_OK
    analysed = _read(group_dir / "analysis_table.tsv").set_index("participant_id")
    for roi in ROI_NAMES:
        assert analysed.loc[pid, f"md_{roi}_{session}"] == first.loc[roi, "md_median"]
    median = json.loads((group_dir / "stats.json").read_text())
    assert median["model"]["MDMeasure"].startswith("md_median: tensor MD, median over")

    # default: md_mean, and no free-water check; a table without the column is an input
    # error naming the file
    assert _cli(trial) == ec.EX_OK
    assert "Free-water correction" not in (group_dir / "summary.md").read_text()
    default = json.loads((group_dir / "stats.json").read_text())
    assert default["model"]["MDMeasure"].startswith(f"md_{Config.roi_statistic}: tensor MD")
    table = _read(tables[3]).drop(columns="md_fwcorr_mean")
    _write(table, tables[3])
    capsys.readouterr()
    assert _cli(trial, "--md-measure", "md_fwcorr") == ec.EX_FAILURE
    err = capsys.readouterr().err
    assert f"{tables[3]}: column 'md_fwcorr_mean' missing" in err and "--md-measure md" in err


def test_mixed_model_within_between_equals_a_direct_statsmodels_fit(trial: Config) -> None:
    assert _cli(trial, "--mixed-model", "--scales", "madrs") == ec.EX_OK
    group_dir = trial.output_dir / "group"
    stats = _read(group_dir / "stats.tsv")
    mixed = stats[stats.model == "mixed"]
    assert {"md_within", "md_between", "group:md_within", "group:md_between"} <= set(mixed.term)
    sidecar = json.loads((group_dir / "stats.json").read_text())
    assert "person-mean centring" in sidecar["model"]["MixedModelMD"]
    assert "md_within" in sidecar["model"]["Levels"]["mixed"]

    table = _read(group_dir / "analysis_table.tsv")
    for roi in ("vacc", "hippocampus_left"):
        long = pd.concat([
            pd.DataFrame({"participant_id": table.participant_id, "session": float(code),
                          "group": (table.group == "ketamine").astype(float),
                          "score": table[f"madrs_{label}"],
                          "md": table[f"md_{roi}_{label}"] / 1e-5})
            for code, label in ((0, "baseline"), (1, "24h"))
        ], ignore_index=True).dropna()  # fmt: skip
        person = long.groupby("participant_id").md.transform("mean")
        long["md_within"] = long.md - person
        long["md_between"] = person - long.groupby("participant_id").md.mean().mean()
        direct = smf.mixedlm(
            "score ~ session * group + group * md_within + group * md_between",
            long, groups=long.participant_id,
        ).fit(reml=True)  # fmt: skip
        rows = mixed[mixed.roi == roi].set_index("term")
        terms = [t for t in direct.fe_params.index if t != "Intercept"]
        np.testing.assert_allclose(rows.loc[terms, "estimate"], direct.fe_params[terms], rtol=1e-6)
        np.testing.assert_allclose(rows.loc[terms, "std_error"], direct.bse_fe[terms], rtol=1e-5)
        # two sessions: md_within is -dMD/2, +dMD/2, so it carries exactly the change
        paired = long.pivot(index="participant_id", columns="session", values="md_within")
        np.testing.assert_allclose(paired[1.0], -paired[0.0], atol=1e-9)
