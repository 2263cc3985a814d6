"""Node construction shared by the workflow factories."""

from __future__ import annotations

from nipype.pipeline import engine as pe


def threaded_node(interface, name: str, n_threads: int, mem_gb: float | None = None) -> pe.Node:
    """A node whose interface runs `n_threads` threads, so Nipype's scheduler reserves them
    (and `mem_gb`, when a step holds large images)."""
    extra = {} if mem_gb is None else {"mem_gb": mem_gb}
    return pe.Node(interface, name=name, n_procs=n_threads, **extra)
