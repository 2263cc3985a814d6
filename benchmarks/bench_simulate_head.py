"""Brain extraction on the simulator's whole head (issue 10 item 5): volume and Dice vs truth.

Simulates one ``standard`` participant with the whole head (``--head full``), then runs N4 and
``ketamine_dti.anat.brain.extract_brain`` of whichever ketamine-dti is importable on the
baseline T1w, and compares the mask with the simulator's true brain mask
(``sourcedata/ground_truth/.../*_space-T1w_desc-brain_mask.nii.gz``). To measure an older tree's
extraction on the same head, simulate with this tree and extract with the other::

    python benchmarks/bench_simulate_head.py --simulate /tmp/head            # this tree
    PYTHONPATH=/path/to/old/tree python benchmarks/bench_simulate_head.py --extract /tmp/head

Roles of the images: the simulated head is ICBM152 2009a (nilearn) inside a modelled head; the
extraction's template is whatever that tree bundles (MNI152NLin6Asym brain before issue 10,
Colin27 whole head after). Colin27 is never used by the simulator.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

PARTICIPANT, SESSION = "sub-001", "ses-baseline"


def simulate(root: Path, seed: int) -> None:
    """One standard participant (two sessions) with the whole head; the ground truth too."""
    from ketamine_dti.simulate import bids_writer
    from ketamine_dti.simulate.clinical import simulate_clinical

    options = bids_writer.make_options(root, n_participants=3, preset="standard", seed=seed)
    trial = simulate_clinical(3, seed=options.seed, sessions=options.sessions)
    root.mkdir(parents=True, exist_ok=True)
    bids_writer.write_top_level(options, trial)
    result = bids_writer.simulate_participant(options, trial, 0)
    bids_writer.write_ground_truth(options, trial, [result])


def extract(root: Path, out: Path) -> dict:
    """N4 + extract_brain on the baseline T1w; volume (ml) and Dice against the true mask."""
    from ketamine_dti.anat import brain

    stem = f"{PARTICIPANT}_{SESSION}"
    t1w = root / PARTICIPANT / SESSION / "anat" / f"{stem}_T1w.nii.gz"
    truth = (
        root / "sourcedata" / "ground_truth" / PARTICIPANT / SESSION
        / f"{stem}_space-T1w_desc-brain_mask.nii.gz"
    )  # fmt: skip
    start = time.perf_counter()
    corrected = brain.bias_correct(t1w, out)
    extraction = brain.extract_brain(corrected, out, n_threads=1)
    found = np.asarray(nib.load(extraction.mask_file).dataobj) > 0
    true = np.asarray(nib.load(truth).dataobj) > 0
    ml = float(np.prod(nib.load(truth).header.get_zooms()[:3])) / 1000.0
    return {
        "code": str(Path(brain.__file__).resolve()),
        "mask_ml": float(found.sum() * ml),
        "true_ml": float(true.sum() * ml),
        "dice": float(2.0 * (found & true).sum() / (found.sum() + true.sum())),
        "qc": extraction.qc,
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="simulated dataset folder")
    parser.add_argument("--simulate", action="store_true", help="simulate into root first")
    parser.add_argument("--extract", action="store_true", help="run the extraction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="extraction folder")
    args = parser.parse_args(argv)
    if args.simulate:
        simulate(args.root, args.seed)
    if args.extract:
        result = extract(args.root, args.work or args.root.parent / "extraction")
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
