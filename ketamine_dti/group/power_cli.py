"""``ketamine-dti-power OUT_DIR``: power of the group x dMD interaction, or n for a target power.

The CLI only parses and checks options (one-line errors, nothing written on refusal), then
calls :func:`ketamine_dti.group.power.power_table` or :func:`~ketamine_dti.group.power.solve_n`
and writes OUT_DIR/power.tsv, power_tests.tsv (with JSON sidecars) and power.png.

Exit codes: 0 ok; 1 the target power is not reached by ``--max-n``; 64 bad options (allocation
not positive, partial r outside (-1, 1) or larger than the model can plant, reliability outside
(0, 1], n too small for the model); 73 OUT_DIR cannot be created or written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from ketamine_dti import __version__
from ketamine_dti.group.models import ALPHA
from ketamine_dti.group.power import (
    DEFAULT_MAX_N,
    DEFAULT_N_SIMS,
    PowerTable,
    TargetNotReached,
    design_for_effect,
    power_table,
    solve_n,
    write_power_outputs,
)
from ketamine_dti.simulate.cli import EX_CANTCREAT, EX_OK, EX_USAGE, OneLineParser, UsageError
from ketamine_dti.simulate.clinical import SCALES
from ketamine_dti.simulate.validation import REALISTIC_PARTIAL_R, REALISTIC_RELIABILITY

EX_NOT_REACHED = 1
PROG = "ketamine-dti-power"
#: The paper's trial: 98 participants.
PAPER_N = 98


def parse_allocation(text: str) -> tuple[int, int]:
    """'2:1' -> (2, 1); UsageError unless two positive whole numbers."""
    parts = text.split(":")
    try:
        allocation = tuple(int(part) for part in parts)
    except ValueError:
        allocation = ()
    if len(allocation) != 2 or min(allocation) < 1:
        raise UsageError(
            f"--allocation {text!r}: give two positive whole numbers, treatment:control, e.g. 2:1"
        )
    return allocation


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description="Power of the App's group x dMD interaction test (BH-FDR over the 7 ROIs) by "
        "Monte Carlo over the simulator's clinical model, or the n that reaches a target power.",
    )
    parser.add_argument("out_dir", type=Path, help="folder for power.tsv, power_tests.tsv, .png")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument(
        "--n", type=int, nargs="+", default=[PAPER_N], help=f"trial sizes (default {PAPER_N})"
    )
    sizes.add_argument(
        "--target-power",
        type=float,
        default=None,
        help="find the smallest n whose power (mean over the planted interactions) reaches this",
    )
    parser.add_argument(
        "--max-n",
        type=int,
        default=DEFAULT_MAX_N,
        help=f"largest n the search tries (default {DEFAULT_MAX_N})",
    )
    parser.add_argument(
        "--allocation", default="2:1", help="treatment:control allocation (default 2:1)"
    )
    effect = parser.add_mutually_exclusive_group()
    effect.add_argument(
        "--partial-r",
        type=float,
        default=None,
        help="partial r of group x dMD with error-free dMD, in (-1, 1) "
        f"(default {REALISTIC_PARTIAL_R}, what the paper's p-values imply)",
    )
    effect.add_argument(
        "--slope",
        type=float,
        default=None,
        help="the interaction slope instead: score points per 1%% true MD change, ketamine "
        "minus saline (the App reports it with --delta-md percent)",
    )
    parser.add_argument(
        "--slope-scale",
        choices=SCALES,
        default="madrs",
        help="scale of --slope (default madrs)",
    )
    parser.add_argument(
        "--reliability",
        type=float,
        default=REALISTIC_RELIABILITY,
        help="retest reliability of dMD in (0, 1] (default "
        f"{REALISTIC_RELIABILITY:.3f}, this pipeline's from its retest benchmark)",
    )
    parser.add_argument("--alpha", type=float, default=ALPHA, help=f"default {ALPHA}")
    parser.add_argument(
        "--fdr",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Benjamini-Hochberg over the 7 ROIs of each scale, as the App's p_fdr "
        "(default; --no-fdr: uncorrected p)",
    )
    parser.add_argument(
        "--n-sims",
        type=int,
        default=DEFAULT_N_SIMS,
        help=f"Monte-Carlo replicates per n (default {DEFAULT_N_SIMS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each n evaluated")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def format_table(table: PowerTable) -> str:
    """The summary as printed: one row per n."""
    summary = table.summary.copy()
    if table.solution is not None:
        summary["solution"] = (summary["n"] == table.solution).map({True: "<-", False: ""})
    formats = {"n": "{:d}".format, "n_treatment": "{:.1f}".format, "n_control": "{:.1f}".format}
    return summary.to_string(
        index=False,
        formatters={
            column: formats.get(column, "{:.3f}".format)
            for column in summary.columns
            if pd.api.types.is_numeric_dtype(summary[column])
        },
    )


def main(argv: list[str] | None = None) -> int:
    """Run the planner; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        partial_r = args.partial_r
        if partial_r is None and args.slope is None:
            partial_r = REALISTIC_PARTIAL_R
        design = design_for_effect(
            partial_r=partial_r,
            slope=args.slope,
            slope_scale=args.slope_scale,
            allocation=parse_allocation(args.allocation),
            reliability=args.reliability,
            alpha=args.alpha,
            fdr=args.fdr,
            n_sims=args.n_sims,
            seed=args.seed,
        )
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        )
        if args.target_power is None:
            table = power_table(args.n, design)
        else:
            table = solve_n(args.target_power, design, args.max_n)
    except (UsageError, ValueError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EX_USAGE
    except TargetNotReached as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EX_NOT_REACHED
    try:
        paths = write_power_outputs(table, args.out_dir)
    except OSError as error:
        where = error.filename or args.out_dir
        print(
            f"{PROG}: error: {where}: cannot write there ({error.strerror or error}); "
            "choose a writable OUT_DIR",
            file=sys.stderr,
        )
        return EX_CANTCREAT
    print(format_table(table))
    if table.solution is not None:
        row = table.summary.set_index("n").loc[table.solution]
        print(
            f"n = {table.solution} reaches power {table.target_power:g} "
            f"({row['power']:.3f} +/- {row['power_se']:.3f})"
        )
    print(f"{PROG}: wrote {', '.join(str(p) for p in paths)} in {table.seconds:.0f} s")
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
