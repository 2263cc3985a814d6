"""Participant level: build one Nipype workflow per participant and run them all as one graph.

``run_participant_level(config)`` is the entry point called by the CLI. Every participant's
workflow is a sub-workflow of ``RUN_WORKFLOW`` (base_dir = config.work_dir, so a rerun resumes
from Nipype's cache); a failing participant is recorded and the others go on.
"""

from __future__ import annotations

import getpass
import logging
import os
import time
from pathlib import Path

import pandas as pd
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ketamine_dti import __version__, bids
from ketamine_dti.allocator import keep_freed_memory
from ketamine_dti.config import Config
from ketamine_dti.derivatives import spec_path
from ketamine_dti.errors import InputError
from ketamine_dti.interfaces.inputs import PrepareT1w
from ketamine_dti.interfaces.rois import RegionalStatistics, TemplateRegions
from ketamine_dti.preflight import check_participant, run_preflight
from ketamine_dti.qc import FAIL, WARN
from ketamine_dti.rois import ROI_NAMES
from ketamine_dti.threads import pin_itk_threads
from ketamine_dti.work_cache import claim_cache
from ketamine_dti.workflows.anat import PUBLISHED_OUTPUTS, init_anat_wf
from ketamine_dti.workflows.boilerplate import LiterateWorkflow, methods_text
from ketamine_dti.workflows.nodes import threaded_node
from ketamine_dti.workflows.outputs import init_anat_derivatives_wf
from ketamine_dti.workflows.progress import progress_reporter, reports_status
from ketamine_dti.workflows.scheduling import POLL_SECONDS, CriticalPathPlugin
from ketamine_dti.workflows.session import (
    ANAT_FIELDS,
    QC_FIELDS,
    REGION_FIELDS,
    init_session_measures_wf,
    init_session_wf,
)

LOGGER = logging.getLogger(__name__)

#: Resolution (mm) of the bundled atlas used for the transfer: 1 mm gives finer label
#: fractions on a 2 mm DWI grid than the 2 mm copy.
ATLAS_RESOLUTION = 1

INTRODUCTION = f"""Data were processed with ketamine-dti {__version__}, built on Nipype [nipype],
DIPY [dipy] and ANTs [ants] (antspyx)."""
CLOSING = "Outputs follow BIDS-Derivatives [bids_derivatives] and BEP016 names."


# ------------------------------------------------------------------------------- building
def resolve_atlas(config: Config) -> tuple[Path, tuple[str, ...]]:
    """The atlas dseg (template space) and its ROI names in index order."""
    from ketamine_dti.resources import get_atlas, read_atlas_labels

    if config.roi_atlas is None:
        atlas, _ = get_atlas(resolution=ATLAS_RESOLUTION)
        return Path(atlas), ROI_NAMES
    atlas = Path(config.roi_atlas)
    if not atlas.exists():
        raise InputError(f"{atlas}: ROI atlas not found; give a dseg NIfTI in MNI152NLin6Asym")
    table = Path(str(atlas).replace(".nii.gz", ".tsv").replace(".nii", ".tsv"))
    if not table.exists():
        raise InputError(f"{table}: missing; a custom atlas needs a TSV with index and name")
    labels = read_atlas_labels(table)
    if sorted(labels) != list(range(1, len(labels) + 1)):
        raise InputError(f"{table}: indices must be 1..N without gaps")
    return atlas, tuple(labels[index] for index in sorted(labels))


def init_participant_wf(
    participant: bids.ParticipantInputs,
    config: Config,
    name: str | None = None,
    independent_anatomy: bool = False,
) -> pe.Workflow:
    """All sessions of one participant, sharing one longitudinal anatomy.

    The anatomy workflow takes every session's T1w (baseline first) and feeds each session's
    workflow with the same subject template, tissue maps and MNI registration.
    ``independent_anatomy`` (benchmarks only) instead gives each session its own anatomy and
    template registration, the design the longitudinal one is compared against.
    """
    workflow = LiterateWorkflow(
        name or f"sub_{participant.subject}_wf", desc=INTRODUCTION, postdesc=CLOSING
    )
    atlas_file, roi_names = resolve_atlas(config)
    if independent_anatomy:
        groups = []
        for session in participant.sessions:
            anat_wf = init_anat_wf(
                omp_nthreads=config.omp_nthreads,
                dwi_files=_dwi_files([session]),
                name=f"anat_ses_{session.session}_wf",
            )
            _feed_t1w(workflow, anat_wf, [session.t1w], f"prepare_t1w_{session.session}")
            groups.append((anat_wf, [session], f"_{session.session}"))
    else:
        anat_wf = init_anat_wf(
            omp_nthreads=config.omp_nthreads,
            dwi_files=_dwi_files(participant.sessions),
        )
        _feed_t1w(workflow, anat_wf, [session.t1w for session in participant.sessions])
        derivatives = init_anat_derivatives_wf(participant, config)
        workflow.connect([
            (anat_wf, derivatives, [(f"outputnode.{field}", f"inputnode.{key}")
                                    for key, field in PUBLISHED_OUTPUTS.items()]),
        ])  # fmt: skip
        groups = [(anat_wf, list(participant.sessions), "")]
    for anat_wf, sessions, suffix in groups:
        regions = threaded_node(
            TemplateRegions(
                atlas_file=str(atlas_file),
                dwi_files=_dwi_files(sessions),
                n_threads=config.omp_nthreads,
            ),
            f"template_rois{suffix}",
            config.omp_nthreads,
        )
        workflow.connect([
            (anat_wf, regions, [("outputnode.tissue_dseg_file", "tissue_dseg_file"),
                                ("outputnode.from_mni_to_template", "from_mni_to_template")]),
        ])  # fmt: skip
        session_wfs = []
        for session in sessions:
            session_wf = init_session_wf(
                session,
                session_index=0 if independent_anatomy else participant.sessions.index(session),
                config=config,
            )
            workflow.connect([
                (anat_wf, session_wf, [(f"outputnode.{f}", f"inputnode.{f}")
                                       for f in ANAT_FIELDS]),
                (regions, session_wf, [(out, f"inputnode.{field}")
                                       for field, out in REGION_FIELDS.items()]),
            ])  # fmt: skip
            session_wfs.append(session_wf)
        _connect_measures(workflow, session_wfs, sessions, participant, config, roi_names, suffix)
    return workflow


def _connect_measures(workflow, session_wfs, sessions, participant, config, roi_names, suffix):
    """The ROI statistics over the points every session measured, then each session's QC."""
    merge = pe.Node(niu.Merge(len(sessions)), name=f"merge_roi_samples{suffix}")
    statistics = pe.Node(
        RegionalStatistics(
            roi_names=list(roi_names),
            min_fraction=config.roi_min_fraction,
            min_voxels=config.roi_min_voxels,
        ),
        name=f"roi_statistics{suffix}",
    )
    workflow.connect(merge, "out", statistics, "samples_files")
    for position, (session, session_wf) in enumerate(zip(sessions, session_wfs, strict=True)):
        measures = init_session_measures_wf(session, len(participant.sessions), config)
        workflow.connect([
            (session_wf, merge, [("outputnode.samples_file", f"in{position + 1}")]),
            (session_wf, measures, [(f"outputnode.{f}", f"inputnode.{f}") for f in QC_FIELDS]),
            (statistics, measures, [(("out_files", _item, position), "inputnode.roi_file"),
                                    (("kept_dseg_files", _item, position),
                                     "inputnode.kept_dseg_file")]),
        ])  # fmt: skip


def _item(items, index):
    return items[index]


def _feed_t1w(workflow, anat_wf, t1w_files: list[str], name: str = "prepare_t1w") -> None:
    """Raw T1w files -> 3-D finite images (a singleton 4th dimension squeezed) -> anatomy."""
    prepare = pe.Node(PrepareT1w(in_files=t1w_files), name=name)
    workflow.connect(prepare, "out_files", anat_wf, "inputnode.t1w_files")


# -------------------------------------------------------------------------------- running
def _plugin_args(config: Config) -> dict:
    if config.plugin.upper().startswith("SLURM"):
        # Nipype's SLURM plugin names jobs after $LOGNAME, which batch shells and CI may not set
        os.environ.setdefault("LOGNAME", getpass.getuser())
    args = dict(config.plugin_args or {})
    if config.plugin == "MultiProc":
        args.setdefault("n_procs", config.nprocs)
        args.setdefault("memory_gb", config.mem_gb)
        args.setdefault("raise_insufficient", False)
    return args


def _plugin(config: Config, plugin_args: dict):
    """MultiProc runs as ``CriticalPathPlugin`` (the long anatomy chain starts first); other
    plugins by name."""
    if config.plugin == "MultiProc":
        return CriticalPathPlugin(plugin_args=plugin_args)
    return config.plugin


def _crash_reason(log_dir: Path, since: float) -> str | None:
    """The last exception line of the newest crash file written after `since`."""
    from ketamine_dti.crashes import read_crash_files

    for crash in read_crash_files(log_dir, since):
        if crash.error:
            return f"{crash.error} (node {crash.node}; see {crash.path})"
    return None


def compute_seconds(workflow_dir: Path) -> float:
    """Seconds of computation recorded by Nipype for every node under a workflow folder."""
    from nipype.pipeline.engine.utils import load_resultfile

    total = 0.0
    for result_file in Path(workflow_dir).rglob("result_*.pklz"):
        try:
            total += float(load_resultfile(str(result_file)).runtime.duration)
        except Exception:  # a node without runtime information (e.g. a map-node parent)
            continue
    return total


def session_summary(config: Config, subject: str, session: str, elapsed: float) -> str:
    """The one-line progress summary of a finished session (time, FD, voxels per ROI, QC
    verdict); a failed (warned) verdict is also logged as an ERROR (WARNING) with its reasons.

    ``elapsed`` is the session's own compute time (its nodes, not the shared anatomy).
    """
    qc = pd.read_csv(spec_path(config.output_dir, "qc_table", subject, session), sep="\t")
    rois = pd.read_csv(spec_path(config.output_dir, "roi_table", subject, session), sep="\t")
    qc = qc.iloc[0]
    voxels = ", ".join(f"{r.roi}={int(r.n_voxels)}" for r in rois.itertuples())
    verdict = qc["qc_verdict"]
    if verdict in (WARN, FAIL):
        LOGGER.log(
            logging.ERROR if verdict == FAIL else logging.WARNING,
            "sub-%s ses-%s: QC %s: %s",
            subject, session, verdict.upper(), qc["qc_reasons"],
        )  # fmt: skip
    return (
        f"sub-{subject} ses-{session}: done ({elapsed:.0f} s of session steps); "
        f"mean FD {qc['mean_fd']:.2f} mm (max {qc['max_fd']:.2f}); "
        f"tSNR {_tsnr_text(qc['tsnr'])}; voxels per ROI: {voxels}; QC {verdict}"
    )


def _tsnr_text(tsnr: float) -> str:
    """tSNR across b0 volumes, or why there is none."""
    return "n/a (fewer than 2 b0 volumes)" if pd.isna(tsnr) else f"{tsnr:.1f}"


def _configure_nipype(config: Config, log_dir: Path) -> dict:
    level = "DEBUG" if config.verbosity >= 2 else "INFO"
    return {
        "execution": {
            "crashdump_dir": str(log_dir),
            "crashfile_format": "txt",
            "stop_on_first_crash": config.stop_on_first_crash,
            "remove_unnecessary_outputs": False,
            "poll_sleep_duration": POLL_SECONDS if config.plugin == "MultiProc" else 0.5,
        },
        "logging": {"workflow_level": level, "interface_level": level},
    }


#: The workflow that holds every participant of a run (work dir: WORK_DIR/<name>/sub_<label>_wf).
RUN_WORKFLOW = "ketamine_dti_wf"


def participant_work_dir(config: Config, subject: str) -> Path:
    """Where Nipype keeps a participant's nodes (its cache, for resuming and for benchmarks)."""
    return Path(config.work_dir).absolute() / RUN_WORKFLOW / f"sub_{subject}_wf"


def run_participants(
    config: Config,
    participants: dict[str, bids.ParticipantInputs],
    independent_anatomy: bool = False,
) -> list[tuple[str, str]]:
    """Build every participant's workflow and run them as one graph; return (label, reason)
    for each that failed.

    One graph, as fMRIPrep runs its participants: a participant's serial anatomy chain leaves a
    core idle that another participant's steps fill (a 12-participant tiny trial took 102 s a
    participant one after another, with a core idle much of it). Each participant keeps its own
    crash folder (``sub-<label>/log``); its derivatives are staged and moved into place only if
    none of its nodes failed, so a failure leaves no final derivatives, and the others' go on
    unless ``config.stop_on_first_crash``.
    """
    started = time.time()
    # here, not in the CLI: every caller (the CLI, benchmarks, tests) runs the steps alike
    keep_freed_memory()  # MultiProc passes it on to each step's process
    run = LiterateWorkflow(RUN_WORKFLOW)
    run.base_dir = str(Path(config.work_dir).absolute())
    claim_cache(Path(run.base_dir) / RUN_WORKFLOW)  # no step reused from other code
    run.config.update(_configure_nipype(config, Path(config.output_dir) / "logs"))
    workflows = {}
    for subject, participant in participants.items():
        workflow = init_participant_wf(
            participant, config, independent_anatomy=independent_anatomy
        )
        # the methods of the steps that run (the same text for every participant of a run)
        bids.atomic_write_text(
            Path(config.output_dir) / "logs" / "CITATION.md", methods_text(workflow)
        )
        log_dir = _log_dir(config, subject)
        log_dir.mkdir(parents=True, exist_ok=True)
        for node in workflow._get_all_nodes():  # a participant's crashes go to its own log
            node.config = {"execution": {"crashdump_dir": str(log_dir)}}
        bids.discard_staged(config.output_dir, subject)
        run.add_nodes([workflow])
        workflows[f"sub-{subject}"] = workflow
    if config.write_graph:
        try:
            run.write_graph(graph2use="colored", format="svg", simple_form=True)
        except Exception as exc:  # graphviz may be missing; the graph is optional
            LOGGER.warning("could not write the workflow graph (%s)", exc)
    error = None
    with progress_reporter(workflows) as progress:
        try:
            plugin_args = _plugin_args(config)
            if reports_status(config.plugin):
                plugin_args["status_callback"] = progress
            run.run(plugin=_plugin(config, plugin_args), plugin_args=plugin_args)
        except Exception as exc:  # which participants failed is read from their crash files
            error = f"{type(exc).__name__}: {exc}"
    failures, reports = [], []
    for subject, participant in participants.items():
        reason = _crash_reason(_log_dir(config, subject), started)
        if reason is None and error is not None and not _finished(config, subject, participant):
            reason = error  # stopped before it finished (e.g. another participant crashed)
        if reason is not None:
            bids.discard_staged(config.output_dir, subject)
            LOGGER.error("sub-%s: failed: %s", subject, reason)
            failures.append((subject, reason))
            reports.append((participant, reason))
            continue
        bids.promote_staged(config.output_dir, subject)
        for session in participant.sessions:
            seconds = compute_seconds(
                participant_work_dir(config, subject) / f"ses_{session.session}_wf"
            )
            LOGGER.info(session_summary(config, subject, session.session, seconds))
        reports.append((participant, None))
    _write_reports(config, reports)
    LOGGER.info(
        "%d participant(s) finished in %.0f s", len(participants) - len(failures),
        time.time() - started,
    )  # fmt: skip
    return failures


def run_participant(
    config: Config,
    layout,
    subject: str,
    independent_anatomy: bool = False,
    participant: bids.ParticipantInputs | None = None,
) -> None:
    """Check (unless ``participant`` is given, already checked) and run one participant;
    raise RuntimeError with the reason when it fails (benchmarks and tests)."""
    if participant is None:
        participant = check_participant(config, layout, subject, [])
    failures = run_participants(config, {subject: participant}, independent_anatomy)
    if failures:
        raise RuntimeError(failures[0][1])


def _dwi_files(sessions) -> list[str]:
    """The DWI series of ``sessions``, every run (the grids the ROIs are read in)."""
    return [run[0] for session in sessions for run in session.dwi_runs]


def _log_dir(config: Config, subject: str) -> Path:
    return Path(config.output_dir) / f"sub-{subject}" / "log"


def _finished(config: Config, subject: str, participant: bids.ParticipantInputs) -> bool:
    """Whether every session of a participant has its staged QC table (written last)."""
    output_dir = Path(config.output_dir)
    return all(
        (
            bids.staging_root(output_dir)
            / spec_path(output_dir, "qc_table", subject, s.session).relative_to(output_dir)
        ).exists()
        for s in participant.sessions
    )


def _write_reports(
    config: Config, reports: list[tuple[bids.ParticipantInputs, str | None]]
) -> None:
    """Per-participant HTML reports (participant, why it failed or None), ``config.nprocs`` at
    a time once the graph is done (~5 s each, which one after another left a core idle at the
    end of a run). A failed participant's report gives its verdict and crash files. Spawned,
    not forked: this process has run ITK and OpenMP threads. A report that fails never fails
    the participant; why it failed is logged here."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    participants = [participant for participant, _ in reports]
    failures = [failure for _, failure in reports]
    if sum(failure is None for failure in failures) < 2 or config.nprocs < 2:
        problems = list(map(_write_report, [config] * len(reports), participants, failures))
    else:
        context = multiprocessing.get_context("spawn")
        workers = min(config.nprocs, len(reports))
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            problems = list(
                pool.map(_write_report, [config] * len(reports), participants, failures)
            )
    for participant, problem in zip(participants, problems, strict=True):
        if problem:
            LOGGER.warning("sub-%s: report not written (%s)", participant.subject, problem)


def _write_report(
    config: Config, participant: bids.ParticipantInputs, failure: str | None = None
) -> str | None:
    """One participant's HTML report; None, or why there is none."""
    from ketamine_dti.reports.participant import write_participant_report

    try:
        write_participant_report(config, participant, failure)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run_participant_level(config: Config) -> list[tuple[str, str]]:
    """Check every selected participant, then run those that passed; return (label, reason)
    for each that failed a check or a step.

    Unknown participant labels raise InputError (listing those that exist) before anything
    runs. BIDS_DIR is only read (pybids keeps its index in memory). With
    ``config.check_only`` nothing runs after the checks.
    """
    pin_itk_threads(config.omp_nthreads)
    subjects = bids.select_participants(
        bids.participant_folders(config.bids_dir), config.participant_labels, config.bids_dir
    )
    layout = bids.get_layout(config.bids_dir)
    checked = run_preflight(config, subjects, layout)
    failures = [(label, reason) for label, reason in checked.errors.items()]
    if config.check_only or not checked.ready:
        return failures
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    bids.init_derivatives(output_dir, config.bids_dir)
    LOGGER.info(
        "running %d participant(s) as one graph: %s", len(checked.ready),
        ", ".join(f"sub-{label}" for label in checked.ready),
    )  # fmt: skip
    failures += run_participants(config, checked.ready)
    if failures:
        LOGGER.error(
            "%d of %d participants failed: %s",
            len(failures),
            len(subjects),
            "; ".join(f"sub-{label}: {reason}" for label, reason in failures),
        )
    return failures
