#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install ketamine-dti with the given extras, e.g. "test".
# Everything comes from PyPI; nothing is downloaded at run time afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "ketamine-dti needs Python >= 3.11; $("$PY" --version 2>&1) found (set PYTHON=...)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
spec="."
[ -n "$extras" ] && spec=".[$extras]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
# compile the JIT kernels once into numba's cache, as the container build does: otherwise
# every first process of a run (each Nipype worker) compiles the ones it needs (~15-40 s a step)
.venv/bin/python -m ketamine_dti.warmup
