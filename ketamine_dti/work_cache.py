"""The work directory's Nipype cache is only reused by the code that made it.

Nipype reruns a step when its inputs change, not when the code behind it does: after an upgrade
(or any edit of the App) a resumed run would mix steps of the old code with steps of the new,
silently. The cache is therefore stamped with a fingerprint of the App's sources and of the
libraries that compute its results; a run whose fingerprint differs removes the stale cache and
starts afresh (a run of the same code resumes as before).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from importlib import metadata
from pathlib import Path

from ketamine_dti import __version__
from ketamine_dti.bids import atomic_write_text

LOGGER = logging.getLogger(__name__)

#: The App's own sources.
PACKAGE_DIR = Path(__file__).resolve().parent
#: Libraries whose version changes the results of cached steps.
LIBRARIES = ("antspyx", "dipy", "nibabel", "nipype", "numba", "numpy", "scipy")
#: The stamp, beside the run workflow's cache folder: written (atomically) before Nipype makes
#: the folder, so a run starting at the same time (array jobs on one work directory) finds
#: either no cache or a complete stamp.
STAMP_SUFFIX = ".code.json"


def code_fingerprint(package_dir: Path = PACKAGE_DIR, libraries=LIBRARIES) -> str:
    """SHA-256 of every ``.py`` under ``package_dir`` (path and bytes) and the libraries'
    versions."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    for name in libraries:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{name}=={version}\0".encode())
    return digest.hexdigest()


def claim_cache(cache_dir: Path, fingerprint: str | None = None) -> bool:
    """Make ``cache_dir`` (a run workflow's folder in the work directory) this code's: remove
    it if it holds a cache stamped with another ``fingerprint`` (or not stamped), then stamp
    it. Returns True if a stale cache was removed."""
    fingerprint = fingerprint or code_fingerprint()
    cache_dir = Path(cache_dir)
    stamp = cache_dir.with_name(cache_dir.name + STAMP_SUFFIX)
    try:
        found = json.loads(stamp.read_text()).get("fingerprint")
    except (OSError, ValueError):
        found = None
    if found == fingerprint:
        return False
    removed = cache_dir.exists()
    if removed:
        LOGGER.warning(
            "%s was made by other code (%s); removing it so that no step is reused from it: "
            "the run starts afresh",
            cache_dir,
            f"fingerprint {found[:12]}" if found else "no fingerprint",
        )
        shutil.rmtree(cache_dir, ignore_errors=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, json.dumps({"fingerprint": fingerprint, "version": __version__}))
    return removed
