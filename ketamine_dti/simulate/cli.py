"""``ketamine-dti-simulate OUT_DIR``: write a simulated 2:1 ketamine trial as a BIDS dataset.

The CLI only parses and checks options (one-line errors, nothing written on refusal), then
calls :func:`ketamine_dti.simulate.bids_writer.simulate_trial`.

Exit codes: 0 ok; 64 bad options or a non-empty OUT_DIR without ``--overwrite``; 73 OUT_DIR
cannot be created or written.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ketamine_dti import __version__
from ketamine_dti.allocator import keep_freed_memory
from ketamine_dti.simulate.bids_writer import HEAD_MODES, make_options, simulate_trial
from ketamine_dti.simulate.clinical import SCENARIOS, SESSIONS
from ketamine_dti.simulate.presets import PRESETS
from ketamine_dti.simulate.realism import REALISM_ITEMS, REALISM_LEVELS
from ketamine_dti.simulate.susceptibility import DISTORTION_CHOICES

LOGGER = logging.getLogger(__name__)

EX_OK = 0
EX_USAGE = 64
EX_CANTCREAT = 73
PROG = "ketamine-dti-simulate"


class UsageError(Exception):
    """A bad command line: the message is one line that says what to do."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one UsageError line naming ``--help``."""

    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UsageError(f"{message}; see {self.prog} --help")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Simulate a 2:1 ketamine:saline trial (DWI + T1w at two sessions, MADRS, "
        "QIDS-SR) as a BIDS dataset, with the ground truth under sourcedata/ground_truth.",
    )
    parser.add_argument("out_dir", type=Path, help="output folder (absent or empty)")
    parser.add_argument(
        "--n-participants",
        type=int,
        default=None,
        help="participants (default: 12 for tiny and slab, 98 for standard; at least 3)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="tiny",
        help="tiny: 4 mm DWI, 12 dirs + 2 b0, T1w 2 mm; standard: 2 mm, 64 dirs + 6 b0, "
        "T1w 1 mm; slab: the real Prisma pair's protocol, a 3 mm slab above the lower brain, "
        "20 dirs at b=2500 + 1 b0, T1w 1 mm (default tiny)",
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="paper", help="planted effects")
    parser.add_argument(
        "--sessions",
        nargs=2,
        metavar=("BASELINE", "FOLLOWUP"),
        default=SESSIONS,
        help="session labels (default: baseline 24h)",
    )
    parser.add_argument(
        "--snr",
        type=float,
        default=None,
        help="mean white-matter b0 signal / noise SD (default: 25 standard, 40 tiny and slab)",
    )
    parser.add_argument(
        "--noiseless",
        action="store_true",
        help="an ideal acquisition: no noise, no head motion, no eddy distortion",
    )
    parser.add_argument(
        "--head",
        choices=HEAD_MODES,
        default="full",
        help="full: the whole head (face, eyes, neck, fat, muscle; field of view to the neck; "
        "T1w scaling and storage vary per participant); brain: the brain in a thin synthetic "
        "shell, as before issue 10 (default full)",
    )
    parser.add_argument(
        "--distortion",
        choices=DISTORTION_CHOICES,
        default=None,
        help="EPI susceptibility distortion from the head's air and bone (3 T), with reverse "
        "phase-encoded b0 fieldmaps in fmap/ and the true field in sourcedata/ground_truth "
        "(needs --head full). typical: second-order shim, GRAPPA 2: 99th percentile ~3-4 mm "
        "over the brain, up to ~10-14 mm at its edge above the frontal sinus and beside the "
        "temporal bone; unaccelerated: second-order shim, no GRAPPA (the real Prisma pair), twice "
        "that; strong: linear shim, no GRAPPA, over twice that; none: no distortion, no "
        "fieldmaps (default: typical for standard, unaccelerated for slab, none for tiny; "
        "--head brain: none)",
    )
    parser.add_argument(
        "--realism",
        choices=sorted(REALISM_LEVELS),
        default=None,
        help="what real scans do that the pipeline's models do not assume (issue 12), each "
        "recorded in sourcedata/ground_truth. typical: all items: second-order eddy currents "
        "with the Jacobian intensity change (eddy), motion within a few volumes, slice by "
        "slice (slice_motion), whole-slice signal loss in ~10%% of the diffusion volumes, "
        "inferior slices most (dropouts), Gibbs ringing from k-space truncation with 6/8 "
        "partial Fourier (gibbs), per-participant T1w GM/WM contrast with a non-linear "
        "partial-volume mix (t1w_contrast), a stronger T1w bias field (t1w_bias), "
        "correlated T1w noise (t1w_noise), locally enlarged ventricles and sulci "
        "(local_anatomy); ideal: none of them (default: typical for standard and slab, ideal for "
        "tiny and with --noiseless)",
    )
    parser.add_argument(
        "--realism-off",
        nargs="+",
        default=(),
        choices=REALISM_ITEMS,
        metavar="ITEM",
        help=f"switch these realism items off (any of: {' '.join(REALISM_ITEMS)})",
    )
    parser.add_argument("--n-procs", type=int, default=1, help="participants in parallel")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty OUT_DIR, replacing a previous simulation's files",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each participant")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the simulator; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        options = make_options(
            args.out_dir,
            n_participants=args.n_participants,
            seed=args.seed,
            preset=args.preset,
            scenario=args.scenario,
            sessions=tuple(args.sessions),
            snr=args.snr,
            noiseless=args.noiseless,
            n_procs=args.n_procs,
            head=args.head,
            distortion=args.distortion,
            realism_level=args.realism,
            realism_off=tuple(args.realism_off),
        )
    except (UsageError, ValueError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EX_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    keep_freed_memory()  # its participants' worker processes are forked from here
    start = time.perf_counter()
    try:
        results = simulate_trial(options, overwrite=args.overwrite)
    except FileExistsError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EX_USAGE
    except OSError as error:  # cannot create or write OUT_DIR (permissions, a file in the way)
        where = error.filename or options.out_dir
        print(
            f"{PROG}: error: {where}: cannot write there ({error.strerror or error}); "
            "choose a writable OUT_DIR",
            file=sys.stderr,
        )
        return EX_CANTCREAT
    print(
        f"{PROG}: wrote {len(results)} participants x {len(options.sessions)} sessions "
        f"({options.preset.name}, {options.scenario}) to {options.out_dir} "
        f"in {time.perf_counter() - start:.0f} s"
    )
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
