"""Write scripts/image_constraints.txt: the exact versions of ketamine-dti's runtime
dependencies (the closure of setup.cfg's install_requires, not the test extras) as installed in
the environment that ran the test suite, for the container build (``pip install -c``).

The image is then rebuilt from the same versions the suite passed with, whatever PyPI holds by
then; setup.cfg keeps ranges, so ``scripts/install.sh`` on a newer Python still resolves.
Run it with the environment's Python after a green suite, and commit the file::

    .venv/bin/python scripts/pin_image.py
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

OUT = Path(__file__).resolve().parent / "image_constraints.txt"


def runtime_closure(root: str = "ketamine-dti") -> dict[str, str]:
    """{canonical name: installed version} of every package ``root`` needs at run time."""
    versions: dict[str, str] = {}
    pending = [root]
    while pending:
        name = pending.pop()
        key = canonicalize_name(name)
        if key in versions:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement of another platform or Python
        versions[key] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    versions.pop(canonicalize_name(root), None)
    return versions


def main() -> int:
    versions = runtime_closure()
    lines = [
        "# Written by scripts/pin_image.py from the environment the test suite passed in",
        f"# (Python {sys.version.split()[0]}); the Dockerfile installs with -c this file.",
        *(f"{name}=={version}" for name, version in sorted(versions.items())),
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT} ({len(versions)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
