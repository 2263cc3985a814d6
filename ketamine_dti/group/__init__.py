"""Group level: does the 24 h gray-matter MD change track symptom change, more so with ketamine?

Modules, in the order the analysis runs: ``inputs`` (read and check), ``changes`` (dScore,
dMD, analysis table), ``models`` (statsmodels formulas), ``multiple_comparisons`` (BH-FDR,
max-T), ``permutation`` (Freedman-Lane p-values), ``tables`` (TSVs, sidecars, summary),
``figures``, ``report``; ``run`` wires them.
"""

from ketamine_dti.group.run import run_group_level

__all__ = ["run_group_level"]
