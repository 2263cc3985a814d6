"""Run progress: counts per participant from Nipype's node events, shown as a terminal line or
as log lines. Driven by the real participant graph of the tiny trial (built, not run) and by a
small real Nipype run with a MapNode."""

from __future__ import annotations

import copy
import io
import logging
import pickle
import re
from pathlib import Path

import networkx as nx
import pytest

from ketamine_dti.workflows.progress import (
    LONG_STEPS,
    ProgressReporter,
    RunProgress,
    node_path,
    progress_reporter,
    reports_status,
    run_steps,
    stage_of,
)

PROGRESS_LOGGER = "ketamine_dti.workflows.progress"


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def graph(tiny_trial, tmp_path_factory):
    """sub-001's real workflow in the run workflow, and the nodes Nipype would execute (its
    execution graph, in topological order)."""
    from nipype.pipeline.engine.utils import generate_expanded_graph

    from ketamine_dti import bids
    from ketamine_dti.config import Config
    from ketamine_dti.preflight import check_participant
    from ketamine_dti.workflows.base import RUN_WORKFLOW, init_participant_wf
    from ketamine_dti.workflows.boilerplate import LiterateWorkflow

    root = tmp_path_factory.mktemp("progress")
    config = Config(
        bids_dir=tiny_trial, output_dir=root / "out", analysis_level="participant",
        work_dir=root / "work",
    )  # fmt: skip
    participant = check_participant(config, bids.get_layout(tiny_trial), "001", [])
    workflow = init_participant_wf(participant, config)
    run = LiterateWorkflow(RUN_WORKFLOW)
    run.base_dir = str(config.work_dir)
    run.add_nodes([workflow])
    executed = generate_expanded_graph(copy.deepcopy(run._create_flat_graph()))
    return workflow, list(nx.topological_sort(executed))


def _drive(reporter, nodes):
    for node in nodes:
        reporter(node, "start")
        reporter(node, "end")


def test_the_steps_counted_are_the_nodes_nipype_runs(graph):
    workflow, nodes = graph
    prefix = f"ketamine_dti_wf.{workflow.name}."
    assert sorted(run_steps(workflow)) == sorted(n.fullname.removeprefix(prefix) for n in nodes)


def test_every_step_has_a_stage_a_user_recognises(graph):
    workflow, _ = graph
    stages = {stage_of(tuple(step.split("."))) for step in run_steps(workflow)}
    assert stages == {"anatomy", "ses-baseline", "ses-24h", ""}


def test_a_run_of_the_real_graph_counts_every_step_and_names_the_stages(graph, caplog):
    workflow, nodes = graph
    total = len(run_steps(workflow))
    progress = RunProgress({workflow.name: ("sub-001", run_steps(workflow))})
    seen = []
    for node in nodes:
        path, subjob = node_path(node)
        assert not subjob
        seen += progress.update(path, "start")
        if node.name == "extract_brain":
            assert "sub-001" in progress.line() and "anatomy: extract_brain" in progress.line()
        if node.name == "motion_correct" and "ses_24h_wf" in path:
            assert "ses-24h: motion_correct" in progress.line()
        seen += progress.update(path, "end")
    long_steps = [n for n in nodes if n.name in LONG_STEPS]
    assert len(seen) == len(long_steps) + 1  # one line per started long step, one at the end
    assert re.fullmatch(r"sub-001: anatomy: extract_brain started \(\d+/\d+ steps done\)",
                        next(line for line in seen if "extract_brain" in line))  # fmt: skip
    assert any(line.startswith("sub-001: ses-baseline: denoise started") for line in seen)
    assert seen[-1] == f"sub-001: all {total} steps done"
    assert progress.line() == "1/1 participants done"


def test_plain_output_is_log_lines_without_carriage_returns(graph, caplog):
    workflow, nodes = graph
    stream = io.StringIO()
    reporter = ProgressReporter(RunProgress({workflow.name: ("sub-001", run_steps(workflow))}),
                                stream=stream)  # fmt: skip
    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER), reporter:
        _drive(reporter, nodes)
    lines = [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]
    assert stream.getvalue() == ""
    assert lines and all("\r" not in line and "\n" not in line for line in lines)
    assert lines[-1] == f"sub-001: all {len(run_steps(workflow))} steps done"


def test_a_terminal_gets_one_rate_limited_line_cut_to_its_width(graph, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    workflow, nodes = graph
    terminal = Terminal()
    now = [0.0]
    progress = RunProgress({workflow.name: ("sub-001", run_steps(workflow))})
    reporter = ProgressReporter(progress, stream=terminal, clock=lambda: now[0])
    # the clock stands still: only the long steps' starts and the end redraw the line
    _drive(reporter, nodes)
    drawn = [d.removesuffix("\x1b[K") for d in terminal.getvalue().split("\r")[1:]]
    assert "\n" not in terminal.getvalue()
    assert all(len(line) <= 59 for line in drawn)
    long_steps = sum(n.name in LONG_STEPS for n in nodes)
    assert 1 < len(drawn) <= long_steps + 2  # and the first event
    assert any(line.startswith("0/1 participants done | sub-001 ") for line in drawn)
    assert drawn[-1] == "1/1 participants done"
    # with time passing every event may redraw, at most once every REDRAW_SECONDS
    terminal.seek(0), terminal.truncate()
    reporter.progress = RunProgress({workflow.name: ("sub-001", run_steps(workflow))})
    for node in nodes:
        now[0] += 0.125
        reporter(node, "start")
        reporter(node, "end")
    redraws = terminal.getvalue().count("\r")
    assert len(nodes) / 2 - 1 <= redraws <= len(nodes) / 2 + long_steps + 2
    reporter.close()
    assert terminal.getvalue().endswith("\r\x1b[K")


def test_a_log_record_clears_the_terminal_line_first(graph):
    workflow, nodes = graph
    terminal = Terminal()
    handler = logging.StreamHandler(terminal)
    logging.getLogger().addHandler(handler)
    try:
        progress = RunProgress({workflow.name: ("sub-001", run_steps(workflow))})
        reporter = ProgressReporter(progress, stream=terminal)
        reporter(nodes[0], "start")
        logging.getLogger("ketamine_dti.test").warning("a record")
        reporter.close()
        logging.getLogger("ketamine_dti.test").warning("after the run")
    finally:
        logging.getLogger().removeHandler(handler)
    text = terminal.getvalue()
    assert re.search(r"\r0/1 participants done \| sub-001 [^\r]*\x1b\[K\r\x1b\[Ka record\n", text)
    assert text.endswith("a record\nafter the run\n")  # the filter went with close()


def test_the_display_never_stops_the_run(caplog):
    reporter = ProgressReporter(RunProgress({}), stream=io.StringIO())
    with caplog.at_level(logging.WARNING, logger=PROGRESS_LOGGER):
        reporter(object(), "start")  # not a node: the display turns itself off
        reporter(object(), "end")
    assert [r.getMessage() for r in caplog.records].count(
        "progress display off (AttributeError: 'object' object has no attribute 'fullname'); "
        "the run goes on"
    ) == 1


def test_copies_are_the_reporter_and_pickles_nothing():
    reporter = ProgressReporter(RunProgress({}), stream=io.StringIO())
    assert copy.deepcopy({"status_callback": reporter})["status_callback"] is reporter
    assert pickle.loads(pickle.dumps(reporter)) is None


def test_which_plugins_report_status():
    assert all(map(reports_status, ["MultiProc", "Linear", "SLURM"]))
    assert not reports_status("SLURMGraph") and not reports_status("NoSuchPlugin")


def _step(item, after=None):
    return item


@pytest.mark.parametrize("plugin", ["CriticalPath", "Linear"])
def test_a_real_run_counts_a_mapnode_once(tmp_path, caplog, plugin):
    """A participant whose anatomy has a MapNode of two jobs, run by the App's scheduler (one
    process: MapNode jobs are separate jobs, the reporter is deep-copied and pickled with the
    MapNode) and by Linear (the MapNode runs its jobs inside)."""
    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe

    from ketamine_dti.workflows.scheduling import POLL_SECONDS, CriticalPathPlugin

    def node(name, mapped=False):
        interface = Function(input_names=["item", "after"], function=_step)
        made = (
            pe.MapNode(interface, iterfield=["item"], name=name)
            if mapped
            else pe.Node(interface, name=name)
        )
        made.inputs.item = [1, 2] if mapped else 0
        return made

    anat = pe.Workflow(name="anat_wf")
    anat.connect(node("bias_correct", mapped=True), "out", node("extract_brain"), "after")
    participant = pe.Workflow(name="sub_x_wf")
    participant.connect(anat, "extract_brain.out", node("roi_statistics"), "after")
    run = pe.Workflow(name="ketamine_dti_wf", base_dir=str(tmp_path))
    run.add_nodes([participant])
    run.config["execution"] = {"poll_sleep_duration": POLL_SECONDS}  # as the App runs
    reporter = progress_reporter({"sub-x": participant})
    args = {"n_procs": 1, "status_callback": reporter}
    runner = CriticalPathPlugin(plugin_args=args) if plugin == "CriticalPath" else plugin
    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER), reporter:
        run.run(plugin=runner, plugin_args=args)
    lines = [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]
    assert lines[0] == "sub-x: anatomy: bias_correct started (0/3 steps done)"
    assert lines[1:] == ["sub-x: anatomy: extract_brain started (1/3 steps done)",
                         "sub-x: all 3 steps done"]  # fmt: skip
    assert not reporter.progress.participants["sub_x_wf"].running
    jobs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[Job ")]
    assert any("(_bias_correct1)" in job for job in jobs) == (plugin == "CriticalPath")
    mapflow = list(Path(tmp_path).rglob("mapflow"))
    assert len(mapflow) == 1 and "bias_correct" in mapflow[0].parts
