"""``ketamine-dti BIDS_DIR OUTPUT_DIR group``: inputs -> change scores -> models -> FDR ->
permutation p-values -> attenuation-corrected slopes (with --reliability) -> files.

Everything is written to a temporary folder inside OUTPUT_DIR and then renamed to
``OUTPUT_DIR/group``, replacing an earlier ``group/`` as a whole; a failed run leaves the
earlier results untouched. Participant outputs are only read.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from ketamine_dti.config import Config
from ketamine_dti.group.changes import build_analysis_table
from ketamine_dti.group.figures import write_figures
from ketamine_dti.group.free_water_check import compare_spreads, load_plain_md
from ketamine_dti.group.inputs import load_inputs
from ketamine_dti.group.measurement_error import add_corrected_slopes
from ketamine_dti.group.models import fit_group_models
from ketamine_dti.group.multiple_comparisons import add_fdr
from ketamine_dti.group.permutation import add_permutation_p
from ketamine_dti.group.report import write_report
from ketamine_dti.group.tables import (
    EXCLUSIONS_SIDECAR,
    analysis_table_sidecar,
    exclusions_frame,
    free_water_table,
    models_line,
    stats_columns,
    stats_sidecar,
    summary_markdown,
    summary_tables,
    write_tsv,
)

LOGGER = logging.getLogger(__name__)

GROUP_DIR = "group"


def run_group_level(config: Config, *, make_figures: bool = True) -> Path:
    """Run the group analysis; return ``OUTPUT_DIR/group``.

    ``make_figures=False`` skips the PNGs (the many-trial validation); everything else,
    including reading the TSVs, is the same path as the CLI's.
    """
    start = time.perf_counter()
    inputs = load_inputs(config)
    table = build_analysis_table(inputs, config)
    stats = add_fdr(fit_group_models(table, config, inputs.rois))
    stats = add_permutation_p(stats, table, config, inputs.rois, inputs.blocks)
    stats = add_corrected_slopes(stats, table, config, inputs.rois, inputs.reliability)
    stats = stats[list(stats_columns(config))]
    exclusions = exclusions_frame(inputs.exclusions)

    output_dir = Path(config.output_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{GROUP_DIR}-new-", dir=output_dir))
    try:
        write_tsv(stats, staging / "stats.tsv", stats_sidecar(config))
        write_tsv(
            table,
            staging / "analysis_table.tsv",
            analysis_table_sidecar(table, config, inputs.rois),
        )
        write_tsv(exclusions, staging / "exclusions.tsv", EXCLUSIONS_SIDECAR)
        tables = summary_tables(stats, config, inputs.rois)
        if config.md_measure != "md":  # what the correction did, against plain MD
            plain = load_plain_md(config, inputs.md)
            tables.append(free_water_table(compare_spreads(inputs.md, plain, inputs.rois), config))
        n_participants = len(table)
        (staging / "summary.md").write_text(
            summary_markdown(tables, config, n_participants, len(exclusions))
        )
        figures = (
            write_figures(table, stats, config, inputs.rois, staging / "figures")
            if make_figures
            else []
        )
        counts = table["group"].value_counts()
        intro = (
            f"{n_participants} participants: {counts.get(config.treatment_arm, 0)} "
            f"{config.treatment_arm}, {counts.get(config.control_arm, 0)} {config.control_arm}; "
            f"scales {', '.join(config.scales)}; {len(inputs.rois)} ROIs."
        )
        write_report(
            staging / "group_report.html",
            tables,
            stats,
            intro,
            models_line(config),
            exclusions,
            figures,
            config,
        )
        staging.chmod(0o755)  # mkdtemp makes it owner-only
        destination = replace_directory(staging, output_dir / GROUP_DIR)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    LOGGER.info(
        "group level: %d participants, %d stats rows, %d exclusions, %.1f s -> %s",
        len(table),
        len(stats),
        len(exclusions),
        time.perf_counter() - start,
        destination,
    )
    return destination


def replace_directory(staging: Path, destination: Path) -> Path:
    """Put ``staging`` at ``destination``, replacing an existing folder as a whole.

    A directory cannot be renamed over a non-empty one, so the old folder is first renamed
    aside (one atomic rename), the new one renamed in (another), and only then the old one
    deleted. If the second rename fails the old folder is put back.
    """
    old = None
    if destination.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{destination.name}-old-", dir=destination.parent))
        old.rmdir()
        destination.rename(old)
    try:
        staging.rename(destination)
    except OSError:
        if old is not None:
            old.rename(destination)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return destination
