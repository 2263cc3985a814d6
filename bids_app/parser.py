"""Command-line parsing for the BIDS App: arguments in, a validated Config out.

Follows the BIDS-Apps contract (``bids_dir output_dir {participant,group}``) and the NiPreps
conventions for options. Usage errors exit with code 64, as the BIDS execution spec asks.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ketamine_dti import __version__
from ketamine_dti.config import (
    DEFAULT_CONTRAST,
    DEFAULT_PERMUTATION_SEED,
    DEFAULT_PERMUTATIONS,
    DEFAULT_QC_COVARIATES,
    FWER_METHODS,
    MD_MEASURES,
    ROI_SUMMARY_STATISTICS,
    Config,
)
from ketamine_dti.dwi.resampling import INTERPOLATION_ORDERS
from ketamine_dti.errors import InputError
from ketamine_dti.fieldmaps import SDC_METHODS
from ketamine_dti.resources import ATLAS as BUNDLED_ATLAS
from ketamine_dti.rois import ROI_MIN_FRACTION, ROI_MIN_VOXELS

from .exit_codes import EX_USAGE


class UsageError(Exception):
    """A usage problem found after parsing; carries a one-line message."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.print_usage()
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def _label(value: str) -> str:
    """Participant/session labels may be given with or without their entity prefix."""
    for prefix in ("sub-", "ses-"):
        if value.startswith(prefix):
            return value[len(prefix) :]
    return value


def _contrast_side(value: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=LABEL[,LABEL...]`` -> (NAME, labels): one side of --contrast."""
    name, sep, labels = value.partition("=")
    parsed = tuple(label.strip() for label in labels.split(","))
    if not sep or not name.strip() or not all(parsed) or len(set(parsed)) < len(parsed):
        raise argparse.ArgumentTypeError(
            f"{value!r}: write NAME=LABEL[,LABEL...] with distinct arm labels of the "
            "participants.tsv arm column, e.g. ketamine=ketamine_asat,ketamine_sham"
        )
    if any('"' in label for label in (name, *parsed)):
        raise argparse.ArgumentTypeError(f"{value!r}: names and labels may not hold '\"'")
    return name.strip(), parsed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ketamine-dti",
        description=(
            "24-hour gray-matter mean diffusivity (MD) change and antidepressant response to "
            "ketamine. 'participant' preprocesses each participant's DWI at both sessions and "
            "writes regional MD in 7 ROIs; 'group' relates dMD to symptom change by arm."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="the root of the BIDS dataset (read only)")
    parser.add_argument(
        "output_dir", type=Path, help="where derivatives go; must be outside bids_dir"
    )
    parser.add_argument("analysis_level", choices=["participant", "group"])
    parser.add_argument("--version", action="version", version=f"ketamine-dti {__version__}")
    _add_selection_options(parser.add_argument_group("selecting data"))
    _add_execution_options(parser.add_argument_group("execution"))
    _add_method_options(parser.add_argument_group("methods (participant level)"))
    _add_group_options(parser.add_argument_group("group level"))
    return parser


def _add_selection_options(sel) -> None:
    sel.add_argument(
        "--participant-label",
        "--participant_label",
        dest="participant_label",
        nargs="+",
        type=_label,
        default=[],
        help="labels to process, with or without 'sub-' (default: all)",
    )
    sel.add_argument(
        "--session-label",
        "--session_label",
        dest="session_label",
        nargs="+",
        type=_label,
        default=[],
        help="sessions to process, with or without 'ses-' (default: all)",
    )
    sel.add_argument("--baseline-session", default="baseline", type=_label)
    sel.add_argument("--followup-session", default="24h", type=_label)
    sel.add_argument(
        "--sessions",
        nargs=2,
        type=_label,
        metavar=("BASELINE", "FOLLOWUP"),
        help="the analysed pair of sessions (sets --baseline-session and --followup-session); "
        "any other session is ignored with a log line",
    )
    sel.add_argument(
        "--dwi-runs",
        choices=["combine", "first", "error"],
        default="combine",
        help="several DWI runs in a session: concatenate them (one grid), take the first, or "
        "stop with an error",
    )
    sel.add_argument(
        "--bids-filter-file",
        type=Path,
        help='JSON of pybids filters per data type, e.g. {"dwi": {"acquisition": "hardi"}}',
    )
    sel.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validation",
        dest="skip_bids_validation",
        action="store_true",
        help="do not run bids-validator-deno on bids_dir",
    )
    sel.add_argument(
        "--check-only",
        action="store_true",
        help="run the input checks (headers, sidecars, gradient tables) for every selected "
        "participant, print the summary and stop",
    )


def _add_execution_options(exe) -> None:
    exe.add_argument(
        "-w",
        "--work-dir",
        type=Path,
        default=Path("work"),
        help="Nipype work dir; reuse to resume (a cache made by other code is removed)",
    )
    exe.add_argument("--nprocs", "--n-cpus", dest="nprocs", type=int, default=os.cpu_count() or 1)
    exe.add_argument("--omp-nthreads", type=int, default=1, help="threads per process")
    exe.add_argument("--mem-gb", type=float, default=8.0, help="memory available to the run")
    exe.add_argument(
        "--plugin",
        default="MultiProc",
        help="Nipype execution plugin: Linear, MultiProc, SLURM, SLURMGraph, ...",
    )
    exe.add_argument("--plugin-config", type=Path, help="YAML of Nipype plugin arguments")
    exe.add_argument("--stop-on-first-crash", action="store_true")
    exe.add_argument("--write-graph", action="store_true", help="write the workflow graph")
    exe.add_argument("-v", "--verbose", dest="verbose", action="count", default=0)


def _add_method_options(met) -> None:
    met.add_argument(
        "--denoise", choices=["mppca", "none"], default="mppca", help="MP-PCA denoising"
    )
    met.add_argument(
        "--gibbs",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Gibbs-ringing removal (Kellner et al. 2016); off by default, as in QSIPrep, "
        "because it adds ~40 s per standard session and 24-hour MD change is a within-scan "
        "contrast",
    )
    met.add_argument(
        "--tensor-fit",
        choices=["wls", "ols", "nlls", "restore"],
        default="wls",
        help="tensor estimator; restore (Chang et al. 2005) leaves out samples beyond 3 noise "
        "SDs of a robust fit, using the MP-PCA noise map when --denoise mppca",
    )
    met.add_argument(
        "--interpolation",
        choices=list(INTERPOLATION_ORDERS),
        default="trilinear",
        help="the one interpolation of the DWI (motion, eddy currents and distortion at once): "
        "trilinear, or a cubic B-spline as FSL eddy's (sharper, but on a real PA/AP pair its "
        "MD disagreed 4.1%% against 1.7%%: benchmarks/results/realscan_session19_cubic.md)",
    )
    met.add_argument(
        "--slice-outliers",
        choices=["replace", "none"],
        default="replace",
        help="slice dropouts (a slice's brain signal > 4 SD below the tensor prediction from "
        "the other volumes): replace them by the prediction before the fits, as eddy --repol "
        "does, or only count them in the confounds and QC tables",
    )
    met.add_argument(
        "--b0-threshold",
        type=float,
        default=50.0,
        help="b-values (s/mm^2) at or below this are b0 volumes (scanners write b=5..50)",
    )
    met.add_argument(
        "--roi-atlas",
        type=Path,
        help="a dseg NIfTI in MNI152NLin6Asym with a TSV (index, name) beside it "
        f"(default: the bundled {BUNDLED_ATLAS} atlas)",
    )
    met.add_argument(
        "--roi-atlas-label",
        help="the atlas-<label> of the published atlas files for --roi-atlas (default: the "
        "atlas-<label> entity of its file name)",
    )
    met.add_argument(
        "--roi-min-fraction",
        type=float,
        default=ROI_MIN_FRACTION,
        help="an ROI that keeps less than this fraction of its atlas volume (brain mask and "
        "gray-matter rule, in every session) is reported missing, its MD n/a",
    )
    met.add_argument(
        "--roi-min-voxels",
        type=int,
        default=ROI_MIN_VOXELS,
        help="an ROI that keeps fewer DWI voxels is reported missing, its MD n/a",
    )
    met.add_argument(
        "--sdc",
        choices=SDC_METHODS,
        default="auto",
        help="susceptibility distortion correction: 'auto' uses what each DWI series has (EPI "
        "fieldmaps or a second DWI series with the opposite phase encoding first, then a GRE "
        "fieldmap; see docs/fieldmaps.md) and logs the method per session; 'pepolar' and "
        "'fieldmap' require that kind (a session without it fails its checks); 'none' ignores "
        "fieldmaps. The field (from reverse phase-encoded images, or a GRE fieldmap registered "
        "through its magnitude) is applied in the same single interpolation as motion; the log "
        "and the report say which method ran",
    )
    met.add_argument(
        "--use-syn-sdc",
        action="store_true",
        help="fieldmap-less distortion correction for DWI series where --sdc auto finds no "
        "fieldmap (SyN-SDC, as sdcflows): the b0 is registered rigidly, then with ANTs SyN "
        "restricted to the phase-encode axis, to the session's T1w (inverted inside the brain "
        "for a b0-like contrast); the displacement gives a smoothed field in Hz, applied in the "
        "same single interpolation as motion. Less accurate than a fieldmap; a series with a "
        "fieldmap never uses it",
    )


def _add_group_options(grp) -> None:
    grp.add_argument(
        "--arm-column",
        "--group-column",
        dest="arm_column",
        default="group",
        help="participants.tsv column of each participant's arm (any number of arms)",
    )
    grp.add_argument(
        "--contrast",
        nargs=2,
        type=_contrast_side,
        metavar=("TREATMENT=LABEL[,LABEL...]", "CONTROL=LABEL[,LABEL...]"),
        default=[f"{side}={','.join(labels)}" for side, labels in DEFAULT_CONTRAST],
        help="the two sides of the group contrast and the arm labels each pools, treatment "
        "first, e.g. for NCT03237286 'ketamine=ketamine_asat,ketamine_sham saline=saline_sham'; "
        "every arm label in the arm column must be listed; a side of several arms gets centred "
        "arm indicators as covariates",
    )
    grp.add_argument("--covariates", nargs="+", default=[], help="participants.tsv columns")
    grp.add_argument(
        "--qc-covariates",
        nargs="*",
        metavar="QC_COLUMN",
        help="add the change (follow-up - baseline) of these columns of the sessions' QC tables "
        "as covariates, named delta_<column>; given alone: "
        + " ".join(DEFAULT_QC_COVARIATES)
        + ". A participant missing a value is excluded from the adjusted models "
        "(exclusions.tsv)",
    )
    grp.add_argument(
        "--md-measure",
        choices=MD_MEASURES,
        default="md",
        help="the ROI-table MD analysed: md (tensor MD) or md_fwcorr (free-water-corrected "
        "MD; summary.md then compares its dMD spread per ROI with plain MD's)",
    )
    grp.add_argument(
        "--roi-statistic",
        choices=ROI_SUMMARY_STATISTICS,
        default=Config.roi_statistic,
        help="how each ROI's voxels are summarised: the column <md-measure>_<statistic> of the "
        "ROI tables is analysed (default: %(default)s)",
    )
    grp.add_argument(
        "--scales", nargs="+", default=["madrs", "qids_sr"], help="phenotype/<scale>.tsv files"
    )
    grp.add_argument("--delta-md", choices=["absolute", "percent"], default="absolute")
    grp.add_argument("--robust-se", action="store_true", help="HC3 standard errors")
    grp.add_argument(
        "--mixed-model", action="store_true", help="add a MixedLM sensitivity analysis"
    )
    grp.add_argument(
        "--max-mean-fd",
        type=float,
        help="drop sessions with a higher mean framewise displacement (mm)",
    )
    grp.add_argument(
        "--include-failed-qc",
        action="store_true",
        help="keep participants with a session whose qc_verdict is fail (by default they are "
        "excluded and listed in exclusions.tsv)",
    )
    grp.add_argument(
        "--permutations",
        type=int,
        default=DEFAULT_PERMUTATIONS,
        help="Freedman-Lane permutations for every OLS term (p_perm, p_perm_fdr in stats.tsv); "
        "0 turns permutation inference off",
    )
    grp.add_argument(
        "--permutation-seed",
        type=int,
        default=DEFAULT_PERMUTATION_SEED,
        help="seed of the permutations (written to stats.json); the same seed gives the same "
        "p_perm",
    )
    grp.add_argument(
        "--exchangeability-column",
        metavar="COLUMN",
        help="participants.tsv column of exchangeability blocks (e.g. site): participants are "
        "permuted only within their block",
    )
    grp.add_argument(
        "--fwer",
        choices=FWER_METHODS,
        default="none",
        help="family-wise error control of the permutation p-values: 'maxt' adds p_perm_fwer, "
        "max-T across the ROIs of each scale x model x term",
    )
    grp.add_argument(
        "--reliability",
        type=Path,
        metavar="FILE",
        help="TSV with columns roi and reliability: the retest reliability of dMD per analysed "
        "ROI, in (0, 1], for every scale; adds attenuation-corrected dMD slopes (regression "
        "calibration: reliability, estimate_rc, se_rc in stats.tsv) as a sensitivity analysis",
    )


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{what} {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path} must hold a JSON object")
    return data


def _read_plugin_config(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UsageError(f"--plugin-config {path} does not exist") from None
    except yaml.YAMLError as err:
        raise UsageError(f"--plugin-config {path} is not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--plugin-config {path} must hold a mapping of plugin arguments")
    return data.get("plugin_args", data)


def to_config(args: argparse.Namespace) -> Config:
    """Turn parsed arguments into the frozen run Config (path checks happen in run.py)."""
    if args.nprocs < 1 or args.omp_nthreads < 1 or args.mem_gb <= 0:
        raise UsageError("--nprocs, --omp-nthreads and --mem-gb must be positive")
    if args.sessions:
        args.baseline_session, args.followup_session = args.sessions
    if args.baseline_session == args.followup_session:
        raise UsageError("the baseline and follow-up sessions must differ")
    if args.b0_threshold < 0:
        raise UsageError("--b0-threshold must be >= 0 s/mm^2")
    if args.max_mean_fd is not None and args.max_mean_fd <= 0:
        raise UsageError("--max-mean-fd must be a positive number of millimetres")
    if args.permutations < 0 or args.permutation_seed < 0:
        raise UsageError("--permutations and --permutation-seed must be >= 0")
    if args.permutations == 0 and (args.fwer != "none" or args.exchangeability_column):
        raise UsageError(
            "--fwer and --exchangeability-column apply to permutation inference; give "
            "--permutations > 0 or drop them"
        )
    contrast = tuple(  # the default arrives as strings, given values already parsed
        _contrast_side(side) if isinstance(side, str) else side for side in args.contrast
    )
    labels = [label for _, side_labels in contrast for label in side_labels]
    if contrast[0][0] == contrast[1][0] or len(set(labels)) < len(labels):
        raise UsageError(
            "--contrast: the two sides need different names and no arm label on both sides"
        )
    qc_covariates = args.qc_covariates
    if qc_covariates is not None and not qc_covariates:
        qc_covariates = DEFAULT_QC_COVARIATES
    if not 0 <= args.roi_min_fraction <= 1 or args.roi_min_voxels < 0:
        raise UsageError("--roi-min-fraction must lie in 0..1 and --roi-min-voxels be >= 0")
    filters = (
        _read_json(args.bids_filter_file, "--bids-filter-file") if args.bids_filter_file else {}
    )
    plugin_args = _read_plugin_config(args.plugin_config) if args.plugin_config else {}
    if args.roi_atlas is not None and not args.roi_atlas.exists():
        raise UsageError(f"--roi-atlas {args.roi_atlas} does not exist")
    if args.roi_atlas_label is not None and args.roi_atlas is None:
        raise UsageError("--roi-atlas-label names a custom atlas; give --roi-atlas too")
    if args.use_syn_sdc and args.sdc != "auto":
        raise UsageError(
            "--use-syn-sdc is the fallback of --sdc auto where no fieldmap is found; drop it, or "
            "use --sdc auto"
        )
    config = Config(
        bids_dir=args.bids_dir.absolute(),
        output_dir=args.output_dir.absolute(),
        analysis_level=args.analysis_level,
        participant_labels=tuple(dict.fromkeys(args.participant_label)),
        session_labels=tuple(dict.fromkeys(args.session_label)),
        baseline_session=args.baseline_session,
        followup_session=args.followup_session,
        bids_filters=filters,
        dwi_runs=args.dwi_runs,
        check_only=args.check_only,
        work_dir=args.work_dir.absolute(),
        skip_bids_validation=args.skip_bids_validation,
        nprocs=args.nprocs,
        omp_nthreads=args.omp_nthreads,
        mem_gb=args.mem_gb,
        plugin=args.plugin,
        plugin_args=plugin_args,
        stop_on_first_crash=args.stop_on_first_crash,
        write_graph=args.write_graph,
        verbosity=args.verbose,
        denoise=args.denoise,
        gibbs=args.gibbs,
        tensor_fit=args.tensor_fit,
        slice_outliers=args.slice_outliers,
        interpolation=args.interpolation,
        b0_threshold=args.b0_threshold,
        roi_atlas=args.roi_atlas.absolute() if args.roi_atlas else None,
        roi_atlas_label=args.roi_atlas_label,
        roi_min_fraction=args.roi_min_fraction,
        roi_min_voxels=args.roi_min_voxels,
        sdc=args.sdc,
        use_syn_sdc=args.use_syn_sdc,
        arm_column=args.arm_column,
        contrast=contrast,
        covariates=tuple(args.covariates),
        qc_covariates=tuple(dict.fromkeys(qc_covariates or ())),
        md_measure=args.md_measure,
        roi_statistic=args.roi_statistic,
        scales=tuple(args.scales),
        delta_md=args.delta_md,
        robust_se=args.robust_se,
        mixed_model=args.mixed_model,
        max_mean_fd=args.max_mean_fd,
        include_failed_qc=args.include_failed_qc,
        permutations=args.permutations,
        permutation_seed=args.permutation_seed,
        exchangeability_column=args.exchangeability_column,
        fwer=args.fwer,
        reliability=args.reliability.absolute() if args.reliability else None,
    )
    try:
        config.atlas_label  # noqa: B018 - a custom atlas must have a label to publish under
    except InputError as err:
        raise UsageError(str(err)) from None
    return config
