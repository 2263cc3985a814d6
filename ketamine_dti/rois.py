"""The seven gray-matter regions of Kopelman et al. (2023), and regional MD statistics."""

from __future__ import annotations

#: ROI names, in atlas index order (index = position + 1). The group stage relies on them.
ROI_NAMES: tuple[str, ...] = (
    "ba10_left",
    "ba10_right",
    "amygdala_left",
    "amygdala_right",
    "hippocampus_left",
    "hippocampus_right",
    "vacc",
)
