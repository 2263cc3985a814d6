#!/usr/bin/env bash
# Install everything into .venv and run the whole test suite (slow tests included).
# As root it also installs apt packages: a one-node SLURM cluster (started, for the --plugin SLURM
# test), mricron-data (for the test that rebuilds the truth regions) and chromium (browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
if [ "$(id -u)" = 0 ]; then
  bash scripts/start_slurm.sh || echo "SLURM could not start: its test will be skipped" >&2
  # Debian's mricron-data (AAL, Colin27) lets a test rebuild the simulator's truth regions.
  if [ ! -e /usr/share/mricron/templates/aal.nii.gz ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mricron-data >/dev/null; } \
      || echo "mricron-data could not be installed: its test will be skipped" >&2
  fi
  # Debian's headless Chromium opens the HTML reports in the browser tests.
  if ! command -v chromium >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || echo "chromium could not be installed: the browser tests will be skipped" >&2
  fi
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Two pytest-xdist workers, one test file each at a time (a module's fixtures are built once);
# the session fixture tiny_trial is built once for both (tests/conftest.py). "-n 0" turns it off.
exec .venv/bin/python -m pytest -ra --durations=25 -n 2 --dist loadfile "$@"
