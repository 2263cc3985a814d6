"""Derivatives workflows: one DerivativesSink per output of the specification (derivatives.py).

Each workflow's inputnode fields are the output keys, so the session and anatomy workflows
only say which result is which output; names, entities and sidecars come from the table.
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ketamine_dti.bids import ParticipantInputs, SessionInputs
from ketamine_dti.config import Config
from ketamine_dti.derivatives import (
    ANAT_OUTPUTS,
    OUTPUTS,
    SidecarContext,
    input_fields,
    session_output_keys,
    sidecar,
    spec_entities,
    storage_sources,
)
from ketamine_dti.fieldmaps import corrects, session_plan
from ketamine_dti.interfaces.anat import CompositeTransform
from ketamine_dti.interfaces.bids import DerivativesSink


def init_derivatives_wf(keys: tuple[str, ...], context: SidecarContext, name: str) -> pe.Workflow:
    """Sinks for `keys`; its inputnode has one field per key (and companions, e.g. bval/bvec).

    The sinks run in the main process (a file copy, or a conversion taking a fraction of a
    second), except those storing a series by its noise (seconds each), which would hold up
    the scheduler meanwhile.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=list(input_fields(keys))), name="inputnode")
    session = context.session.session if context.session is not None else None
    for key in keys:
        spec = OUTPUTS[key]
        sink = pe.Node(
            DerivativesSink(
                output_dir=str(context.output_dir),
                entities=spec_entities(key, context.subject, session, context.config.atlas_label),
                datatype=spec.datatype,
                suffix=spec.suffix,
                extension=spec.extension,
                metadata=sidecar(key, context),
                storage=spec.storage or "",
                quantum_from=storage_sources(key, context),
            ),
            name=f"ds_{key}",
            run_without_submitting=spec.storage != "noise",
        )
        workflow.connect(inputnode, key, sink, "in_file")
        for field in spec.companions:
            workflow.connect(inputnode, field, sink, field)
        if spec.runtime_metadata is not None:
            workflow.connect(inputnode, spec.runtime_metadata, sink, "metadata_file")
    return workflow


def init_session_derivatives_wf(
    session: SessionInputs,
    config: Config,
    name: str = "ds_session_wf",
    exclude: tuple[str, ...] = (),
) -> pe.Workflow:
    """Publish one session's outputs (``derivatives.SESSION_OUTPUTS``, less ``exclude``,
    published elsewhere) under sub-X/ses-Y/."""
    context = SidecarContext(config, session.subject, session=session)
    keys = session_output_keys(config.denoise, corrects(session_plan(session)))
    return init_derivatives_wf(tuple(k for k in keys if k not in exclude), context, name)


def init_anat_derivatives_wf(
    participant: ParticipantInputs, config: Config, name: str = "ds_anat_wf"
) -> pe.Workflow:
    """Publish the participant's anatomy (``derivatives.ANAT_OUTPUTS``) under sub-X/anat/.

    "T1w" space is the subject template, as in fMRIPrep's longitudinal mode. The inputs
    ``xfm_t1w_mni``/``xfm_mni_t1w`` are transform lists, written as one ITK composite each.
    """
    raw_t1w = tuple(session.t1w for session in participant.sessions)
    context = SidecarContext(config, participant.subject, raw_t1w=raw_t1w)
    inner = init_derivatives_wf(tuple(ANAT_OUTPUTS), context, "sinks")
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=list(ANAT_OUTPUTS)), name="inputnode")
    composite = ("xfm_t1w_mni", "xfm_mni_t1w")
    for key in ANAT_OUTPUTS:
        if key in composite:
            node = pe.Node(CompositeTransform(), name=f"composite_{key}")
            workflow.connect([
                (inputnode, node, [(key, "transforms")]),
                (node, inner, [("out_file", f"inputnode.{key}")]),
            ])  # fmt: skip
        else:
            workflow.connect(inputnode, key, inner, f"inputnode.{key}")
    return workflow
