"""``ketamine-dti BIDS_DIR OUTPUT_DIR {participant,group}``: check, then hand over to a stage.

This layer only parses, checks paths and data selection, and maps outcomes to the exit codes of
the BIDS execution spec. The science lives in ``ketamine_dti``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from ketamine_dti import __version__
from ketamine_dti.bids import participant_folders, select_participants
from ketamine_dti.config import Config
from ketamine_dti.errors import ArmTooSmallError, InputError, KetamineDTIError

from . import exit_codes as ec
from .parser import UsageError, build_parser, to_config

LOGGER = logging.getLogger("ketamine_dti.cli")


class CliError(Exception):
    """A check failed: carries the exit code and a one-line message saying what to do."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _is_within(path: Path, parent: Path) -> bool:
    path, parent = path.resolve(), parent.resolve()
    return path == parent or parent in path.parents


def check_paths(config: Config) -> None:
    """BIDS_DIR must exist; OUTPUT_DIR and the work dir must lie outside it."""
    bids_dir = config.bids_dir
    if not bids_dir.is_dir():
        raise CliError(
            ec.EX_NOINPUT,
            f"BIDS_DIR {bids_dir} does not exist or is not a folder; give the root of a BIDS "
            "dataset (the folder holding dataset_description.json)",
        )
    suggestion = bids_dir.resolve().parent / "derivatives" / "ketamine-dti"
    if _is_within(config.output_dir, bids_dir):
        raise CliError(
            ec.EX_USAGE,
            f"OUTPUT_DIR {config.output_dir} is inside BIDS_DIR, which is never written to; "
            f"use a folder outside it, e.g. {suggestion}",
        )
    if _is_within(config.work_dir, bids_dir):
        raise CliError(
            ec.EX_USAGE,
            f"the work dir {config.work_dir} is inside BIDS_DIR, which is never written to; "
            "pass -w with a folder outside it",
        )


def ensure_output_dir(output_dir: Path) -> bool:
    """Create OUTPUT_DIR if needed and prove it writable; return True if we created it."""
    created = not output_dir.exists()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".ketamine-dti-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise CliError(
            ec.EX_CANTCREAT,
            f"OUTPUT_DIR {output_dir} cannot be created or written ({err.strerror or err}); "
            "choose a writable location",
        ) from None
    return created


def validate_bids_dir(bids_dir: Path) -> None:
    from ketamine_dti.validator import validate

    try:
        result = validate(bids_dir)
    except RuntimeError as err:
        raise CliError(ec.EX_VALIDATION, f"{err}") from None
    if not result.ok:
        raise CliError(
            ec.EX_VALIDATION,
            f"BIDS_DIR {bids_dir} fails the BIDS validator with {len(result.errors)} error(s): "
            f"{result.summary('error')}; fix them (run 'bids-validator-deno {bids_dir}') "
            "or pass --skip-bids-validation",
        )
    LOGGER.info("BIDS validation passed (%d warning(s))", len(result.warnings))


def check_participants(config: Config) -> list[str]:
    """The participants the run selects (bids.select_participants over BIDS_DIR's sub-*
    folders); exit code 18 if there are none or a requested label does not exist."""
    try:
        return select_participants(participant_folders(config.bids_dir), config.participant_labels,
                                   f"BIDS_DIR {config.bids_dir}")  # fmt: skip
    except InputError as err:
        raise CliError(ec.EX_NO_PARTICIPANTS, str(err)) from None


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * min(verbosity + 1, 2)  # default INFO, -v DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s [%(name)s] %(levelname)s: %(message)s", datefmt="%H:%M:%S"
    )


def _run_stage(config: Config) -> int:
    """Hand over to the requested stage; return the exit code."""
    start = time.monotonic()
    if config.analysis_level == "participant":
        from ketamine_dti.workflows.base import run_participant_level

        failures = run_participant_level(config)
        if failures:
            what = "failed the input checks" if config.check_only else "failed"
            print(f"ketamine-dti: {len(failures)} participant(s) {what}:", file=sys.stderr)
            for label, reason in failures:
                print(f"  sub-{label}: {reason}", file=sys.stderr)
            return ec.EX_FAILURE
    else:
        from ketamine_dti.group import run_group_level

        group_dir = run_group_level(config)
        LOGGER.info("Group results in %s", group_dir)
    LOGGER.info("%s level finished in %.1f s", config.analysis_level, time.monotonic() - start)
    return ec.EX_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    created_output = False
    config = None
    try:
        config = to_config(args)
        check_paths(config)
        created_output = ensure_output_dir(config.output_dir)
        if not config.skip_bids_validation:
            validate_bids_dir(config.bids_dir)
        # the stages select again, with the same function (the group level also reports the
        # participants with outputs that it leaves out), so the labels stay as given
        labels = check_participants(config)
        LOGGER.info(
            "ketamine-dti %s, %s level, %d participant(s)",
            __version__,
            config.analysis_level,
            len(labels),
        )
        code = _run_stage(config)
    except UsageError as err:
        parser.print_usage(sys.stderr)
        print(f"ketamine-dti: error: {err}", file=sys.stderr)
        code = ec.EX_USAGE
    except CliError as err:
        print(f"ketamine-dti: error: {err}", file=sys.stderr)
        code = err.code
    except ArmTooSmallError as err:
        print(f"ketamine-dti: error: {err}", file=sys.stderr)
        code = ec.EX_DATAERR
    except KetamineDTIError as err:
        print(f"ketamine-dti: error: {err}", file=sys.stderr)
        code = ec.EX_FAILURE
    if created_output and config is not None and not any(config.output_dir.iterdir()):
        config.output_dir.rmdir()  # leave no trace of a run that did nothing
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
