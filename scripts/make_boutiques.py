"""Write bids_app/descriptor.json, the Boutiques descriptor, from the CLI's own argument parser.

Run after changing bids_app/parser.py; tests/test_boutiques.py fails while the two disagree.
The descriptor follows Boutiques' BIDS-app template, so ``bosh validate --bids`` accepts it: the
command creates OUTPUT_DIR first, and OUTPUT_DIR is either a new folder's name (participant
level) or an existing folder of participant outputs (group level).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bids_app.parser import build_parser  # noqa: E402
from ketamine_dti import __version__  # noqa: E402

DESCRIPTOR = Path(__file__).resolve().parents[1] / "bids_app" / "descriptor.json"


def _input_type(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "Flag"
    if action.type in (int, float):
        return "Number"
    if action.type is Path:
        return "File"
    return "String"


def _output_dir_inputs(action: argparse.Action) -> list[dict]:
    """OUTPUT_DIR as the BIDS-app template has it: a name (String) or a folder (File)."""
    common = {"value-key": "[OUTPUT_DIR]", "optional": True}
    return [
        {"id": "output_dir_name", "name": "output dir name", "type": "String", **common,
         "description": f"{action.help} (participant level: created if missing)"},
        {"id": "participant_level_analysis_dir", "name": "participant level analysis dir",
         "type": "File", **common,
         "description": f"{action.help} (group level: holds the participant level's outputs)"},
    ]  # fmt: skip


def build_descriptor() -> dict:
    parser = build_parser()
    inputs = []
    template = ["mkdir -p [OUTPUT_DIR];", "ketamine-dti"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        ident = action.dest
        key = f"[{ident.upper()}]"
        template.append(key)
        if ident == "output_dir":
            inputs += _output_dir_inputs(action)
            continue
        entry = {
            "id": ident,
            "name": ident.replace("_", " "),
            "type": _input_type(action),
            "value-key": key,
            "optional": not (action.required or not action.option_strings),
            "description": (action.help or "").replace("%(default)s", str(action.default)),
        }
        if action.option_strings:
            entry["command-line-flag"] = action.option_strings[0]
        if action.choices:
            entry["value-choices"] = list(action.choices)
        if action.nargs in ("+", "*"):
            entry["list"] = True
        elif isinstance(action.nargs, int) and action.nargs > 1:  # e.g. --sessions A B
            entry.update({"list": True, "min-list-entries": action.nargs,
                          "max-list-entries": action.nargs})  # fmt: skip
        if action.type is int:
            entry["integer"] = True
        if isinstance(action, argparse.BooleanOptionalAction):
            entry["type"] = "String"
            entry["value-choices"] = list(action.option_strings)
            entry.pop("command-line-flag")
        inputs.append(entry)
    return {
        "name": "ketamine-dti",
        "tool-version": __version__,
        "schema-version": "0.5",
        "description": parser.description,
        "command-line": " ".join(template),
        "container-image": {"type": "docker", "image": f"ketamine-dti:{__version__}"},
        "inputs": inputs,
        "groups": [
            {
                "id": "output_directory",
                "name": "output directory",
                "description": "OUTPUT_DIR: a folder name to create, or an existing folder",
                "members": ["output_dir_name", "participant_level_analysis_dir"],
                "mutually-exclusive": True,
                "one-is-required": True,
            }
        ],
        "output-files": [
            {
                "id": "output_dir",
                "name": "BIDS-Derivatives output",
                "path-template": "[OUTPUT_DIR]",
                "optional": False,
            }
        ],
        "suggested-resources": {"cpu-cores": 2, "ram": 8, "walltime-estimate": 1200},
    }


def main() -> None:
    DESCRIPTOR.write_text(json.dumps(build_descriptor(), indent=2) + "\n")
    print(f"wrote {DESCRIPTOR}")


if __name__ == "__main__":
    main()
