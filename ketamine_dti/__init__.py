"""ketamine-dti: does 24-hour gray-matter MD change track the response to ketamine?"""

import os

__version__ = "0.1.0"

# Nipype's version check (etelemetry) contacts GitHub when the first interface is created; the
# App never uses the network, so it is off for every entry point (CLI, workers, SLURM jobs).
os.environ.setdefault("NIPYPE_NO_ET", "1")
