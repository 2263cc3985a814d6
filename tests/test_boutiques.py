"""The Boutiques descriptor shipped in bids_app/ matches the CLI it describes."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location(
        "make_boutiques", ROOT / "scripts/make_boutiques.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_descriptor_is_up_to_date():
    shipped = json.loads((ROOT / "bids_app" / "descriptor.json").read_text())
    assert shipped == _generator().build_descriptor(), "run python scripts/make_boutiques.py"


def test_descriptor_covers_the_bids_app_contract():
    inputs = {i["id"]: i for i in _generator().build_descriptor()["inputs"]}
    assert inputs["analysis_level"]["value-choices"] == ["participant", "group"]
    assert inputs["participant_label"]["command-line-flag"] == "--participant-label"
    assert not inputs["bids_dir"]["optional"] and inputs["participant_label"]["optional"]
