"""Per-participant progress of a run: which stage is running and how many steps are done.

Nipype calls a plugin's ``status_callback`` with (node, 'start' | 'end' | 'exception') for
every job it runs. ``RunProgress`` turns those events into counts per participant (pure, no
I/O); ``ProgressReporter`` is the callback that shows them: one updating line when stderr is a
terminal, log lines otherwise (a long step starting, a participant finished or failed).
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ketamine_dti.workflows.scheduling import STEP_SECONDS

LOGGER = logging.getLogger(__name__)

Step = tuple[str, ...]  # a node's workflow names below its participant's, then its own name

#: The steps worth a log line when they start: the long ones the scheduler ranks by.
LONG_STEPS = frozenset(STEP_SECONDS)
#: s between two redraws of the terminal line: a line redrawn more often only flickers.
REDRAW_SECONDS = 0.2
_SESSION = re.compile(r"ses_([A-Za-z0-9]+)_")  # BIDS labels are alphanumeric


# ------------------------------------------------------------------------------ pure core
def stage_of(step: Step) -> str:
    """The stage a step belongs to: 'anatomy', 'ses-<label>', or '' for the steps of the
    participant's own workflow (T1w preparation, ROI statistics)."""
    if len(step) < 2:
        return ""
    if "anat" in step[0]:
        return "anatomy"
    session = _SESSION.match(step[0])
    return f"ses-{session.group(1)}" if session else step[0].removesuffix("_wf")


def describe(step: Step) -> str:
    """'<stage>: <step>', e.g. 'ses-24h: motion_correct'."""
    stage = stage_of(step)
    return f"{stage}: {step[-1]}" if stage else step[-1]


@dataclass
class ParticipantProgress:
    """One participant's steps (those that run), those done, those running now (a MapNode's
    step once per running job), those that failed, and the long ones logged as started."""

    label: str
    steps: frozenset[Step]
    done: set[Step] = field(default_factory=set)
    running: Counter = field(default_factory=Counter)
    failed: list[Step] = field(default_factory=list)
    announced: set[Step] = field(default_factory=set)  # long steps whose start was logged

    @property
    def count(self) -> str:
        return f"{len(self.done)}/{len(self.steps)} steps"

    @property
    def finished(self) -> bool:
        return self.done >= self.steps

    def segment(self) -> str:
        """'sub-001 12/87 steps anatomy: extract_brain' for the terminal line."""
        words = [self.label, self.count]
        if self.failed:
            words.append("(failed)")
        words += [", ".join(describe(step) for step in sorted(self.running))]
        return " ".join(word for word in words if word)


class RunProgress:
    """The progress of every participant of one run, from Nipype's node events."""

    def __init__(self, participants: Mapping[str, tuple[str, Iterable[str]]]):
        """``participants``: participant workflow name -> (label, dotted names of its steps
        below that workflow, as ``run_steps`` gives them)."""
        self.participants = {
            name: ParticipantProgress(label, frozenset(tuple(s.split(".")) for s in steps))
            for name, (label, steps) in participants.items()
        }

    def update(self, path: Sequence[str], status: str, subjob: bool = False) -> list[str]:
        """Record one event of the node at ``path`` (its workflows' names from any level
        above the participant's, then its own); return the lines worth a log entry.

        ``subjob``: the event is one job of the MapNode at ``path``; its step is done only
        when the MapNode's own event says so (Nipype collects the jobs in the MapNode).
        """
        found = [i for i, name in enumerate(path) if name in self.participants]
        if not found:
            return []
        participant = self.participants[path[found[-1]]]
        step = tuple(path[found[-1] + 1 :])
        if status == "start":
            participant.running[step] += 1
            if step[-1] not in LONG_STEPS or step in participant.announced:
                return []  # a MapNode's step is announced by its first job
            participant.announced.add(step)
            return [f"{participant.label}: {describe(step)} started ({participant.count} done)"]
        participant.running[step] -= 1
        if participant.running[step] <= 0:
            del participant.running[step]
        if status == "exception":
            if step in participant.failed:
                return []  # another job of the same MapNode
            participant.failed.append(step)
            return [f"{participant.label}: {describe(step)} failed ({participant.count} done)"]
        if subjob or step not in participant.steps or step in participant.failed:
            return []
        was_finished = participant.finished
        participant.done.add(step)
        if participant.finished and not was_finished:
            return [f"{participant.label}: all {len(participant.steps)} steps done"]
        return []

    def line(self) -> str:
        """'2/12 participants done | sub-003 40/87 steps ses-24h: denoise | ...': the
        participants under way (started, not finished, and not failed with nothing running)."""
        people = list(self.participants.values())
        finished = sum(p.finished for p in people)
        failed = sum(bool(p.failed) for p in people)
        head = f"{finished}/{len(people)} participants done" + (
            f", {failed} failed" if failed else ""
        )
        busy = [
            p.segment()
            for p in sorted(people, key=lambda p: p.label)
            if not p.finished and (p.running or (p.done and not p.failed))
        ]
        return " | ".join([head, *busy])


# ----------------------------------------------------------------------------- Nipype side
def run_steps(workflow) -> list[str]:
    """The dotted names (below ``workflow``) of the nodes that run: Nipype leaves the
    IdentityInterface nodes (the workflows' input and output ports) out of the run."""
    from nipype.interfaces.utility import IdentityInterface

    return [
        name
        for name in workflow.list_node_names()
        if not isinstance(workflow.get_node(name).interface, IdentityInterface)
    ]


def node_path(node) -> tuple[Step, bool]:
    """A job's place in the run and whether it is one job of a MapNode: Nipype names those
    ``_<mapnode><i>``, without a hierarchy, in their MapNode's ``mapflow`` folder, whose path
    ends with the MapNode's workflows and name."""
    if "." in node.fullname:
        return tuple(node.fullname.split(".")), False
    return Path(node.base_dir).parent.parts, True


def reports_status(plugin: str) -> bool:
    """Whether the Nipype plugin of this name calls ``status_callback`` (the graph-submission
    plugins, e.g. SLURMGraph, do not and warn about it)."""
    from nipype.pipeline import plugins
    from nipype.pipeline.plugins.base import GraphPluginBase

    found = getattr(plugins, f"{plugin}Plugin", None)
    return isinstance(found, type) and not issubclass(found, GraphPluginBase)


def _detached() -> None:
    """What a pickled reporter becomes: nothing (see ``ProgressReporter.__reduce__``)."""
    return None


class ProgressReporter:
    """Nipype's ``status_callback``: feeds ``RunProgress`` and shows it. It never raises (a
    failure turns the display off with one warning; the run goes on).

    On a terminal the line is redrawn at most every REDRAW_SECONDS, at once when a long step
    starts or a participant ends, and cleared by ``close``. The terminal's log handlers clear
    the line before each record so the two do not mix; Nipype's worker processes, forked after
    the handlers got that filter, clear it too (the cursor only stands mid-line after this
    line, so clearing is always safe).
    """

    def __init__(
        self,
        progress: RunProgress,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.progress = progress
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._clock = clock
        self._drawn_at = -math.inf  # when the line was last drawn; -inf: not on the terminal
        self._off = False
        self._handlers = [
            handler
            for logger in (logging.getLogger(), logging.getLogger("nipype"))
            for handler in logger.handlers
            if self.tty and _is_terminal(getattr(handler, "stream", None))
        ]
        for handler in self._handlers:
            handler.addFilter(self._clear_for_record)

    def __call__(self, node, status: str) -> None:
        if self._off:
            return
        try:
            path, subjob = node_path(node)
            lines = self.progress.update(path, status, subjob)
            if self.tty:
                self._draw(force=bool(lines))
            else:
                for line in lines:
                    LOGGER.info(line)
        except Exception as exc:  # the display must never stop the scheduler
            self._off = True
            LOGGER.warning(
                "progress display off (%s: %s); the run goes on", type(exc).__name__, exc
            )

    def _draw(self, force: bool) -> None:
        now = self._clock()
        if force or now - self._drawn_at >= REDRAW_SECONDS:
            width = shutil.get_terminal_size().columns
            text = self.progress.line()[: max(width - 1, 0)]  # the last column would wrap
            self.stream.write(f"\r{text}\x1b[K")
            self.stream.flush()
            self._drawn_at = now

    def clear(self) -> None:
        """Take the line off the terminal; the next event draws it again."""
        self.stream.write("\r\x1b[K")
        self.stream.flush()
        self._drawn_at = -math.inf

    def _clear_for_record(self, record: logging.LogRecord) -> bool:
        try:
            self.clear()
        except Exception:  # a closed stream: the record still goes out
            pass
        return True

    def close(self) -> None:
        """Clear the line and stop watching the log handlers."""
        for handler in self._handlers:
            handler.removeFilter(self._clear_for_record)
        self._handlers = []
        if self.tty and self._drawn_at > -math.inf:
            self.clear()

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # Nipype keeps the plugin arguments on every MapNode, which it deep-copies and pickles
    # (into its worker processes and _node.pklz files): a copy is this reporter, a pickle
    # nothing (the stream cannot be pickled, and only the scheduler's process reports).
    def __deepcopy__(self, memo) -> ProgressReporter:
        return self

    def __reduce__(self):
        return (_detached, ())


def _is_terminal(stream) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_reporter(workflows: Mapping[str, object]) -> ProgressReporter:
    """The reporter of a run of these participant workflows (label -> workflow, e.g.
    'sub-001'), each counted from its nodes before the run."""
    return ProgressReporter(
        RunProgress({wf.name: (label, run_steps(wf)) for label, wf in workflows.items()})
    )
