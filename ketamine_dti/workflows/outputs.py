"""Wiring helpers for the derivatives sink: entities and JSON sidecar content per output."""

from __future__ import annotations

from pathlib import Path

from nipype.pipeline import engine as pe

from ketamine_dti import bids
from ketamine_dti.interfaces.bids import DerivativesSink

#: Raw DWI sidecar keys carried over to the preprocessed DWI's sidecar.
DWI_METADATA_KEYS = (
    "PhaseEncodingDirection",
    "TotalReadoutTime",
    "EffectiveEchoSpacing",
    "EchoTime",
    "RepetitionTime",
    "MagneticFieldStrength",
    "Manufacturer",
    "SliceEncodingDirection",
)
MD_UNITS = "mm^2/s"


def add_sink(
    workflow: pe.Workflow,
    source: pe.Node,
    field: str | tuple,
    output_dir: Path,
    name: str,
    suffix: str,
    entities: dict,
    datatype: str = "dwi",
    metadata: dict | None = None,
    extra: dict | None = None,
) -> pe.Node:
    """Connect `source.field` (or a (field, function) pair) to a DerivativesSink named `name`.

    The sink runs in the main process (a file copy).

    `extra`: {"bval_file": (node, field), ...} files written next to the main one.
    """
    sink = pe.Node(
        DerivativesSink(
            output_dir=str(output_dir),
            entities=entities,
            datatype=datatype,
            suffix=suffix,
            metadata=metadata or {},
        ),
        name=name,
        run_without_submitting=True,
    )
    workflow.connect(source, field, sink, "in_file")
    for sink_field, (node, node_field) in (extra or {}).items():
        workflow.connect(node, node_field, sink, sink_field)
    return sink


def uri(output_dir: Path, suffix: str, extension: str, datatype: str = "dwi", **entities) -> str:
    """BIDS URI of a derivative of this dataset (for Sources / SpatialReference)."""
    path = bids.derivative_path(output_dir, datatype, suffix, extension, **entities)
    return bids.bids_uri(output_dir, path)
