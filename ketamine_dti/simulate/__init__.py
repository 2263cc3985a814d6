"""The simulated 2:1 ketamine trial: anatomy, DWI signal, clinical scores and BIDS writer.

Public API:

- :func:`simulate_benchmark_session`: one realistic DWI session as arrays (kernel benchmarks);
- :func:`make_options` + :func:`simulate_trial`: write a whole BIDS dataset, as
  ``ketamine-dti-simulate OUT_DIR`` does;
- :func:`simulate_clinical`: the clinical and true-MD model alone;
- :data:`PRESETS` / :func:`get_preset`: the ``tiny`` and ``standard`` acquisition protocols.

:mod:`ketamine_dti.simulate.validation` (the group level's Monte-Carlo harness) runs the App's
group stage on simulated ROI tables; it is not imported here, so the simulator stays light.
"""

from ketamine_dti.simulate.bids_writer import TrialOptions, make_options, simulate_trial
from ketamine_dti.simulate.clinical import ClinicalTrial, simulate_clinical
from ketamine_dti.simulate.presets import PRESETS, Preset, get_preset
from ketamine_dti.simulate.session import DwiSession, simulate_benchmark_session

__all__ = [
    "PRESETS",
    "ClinicalTrial",
    "DwiSession",
    "Preset",
    "TrialOptions",
    "get_preset",
    "make_options",
    "simulate_benchmark_session",
    "simulate_clinical",
    "simulate_trial",
]
