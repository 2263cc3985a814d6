"""The image's pinned versions (scripts/image_constraints.txt): every direct dependency is
pinned, within setup.cfg's range, and the build uses the file."""

from __future__ import annotations

import configparser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "scripts/image_constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def _install_requires() -> list[Requirement]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def test_every_direct_dependency_is_pinned_within_its_range():
    pins = _pins()
    for requirement in _install_requires():
        version = pins.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is not pinned for the image"
        assert requirement.specifier.contains(version), f"{requirement.name}=={version}"


def test_the_image_build_installs_with_the_pins():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "-c /src/ketamine-dti/scripts/image_constraints.txt" in dockerfile
    assert "!scripts/image_constraints.txt" in (ROOT / ".dockerignore").read_text().splitlines()
