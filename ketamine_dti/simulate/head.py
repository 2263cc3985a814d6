"""The tissues of a simulated head outside the brain: scalp, skull, face, eyes and neck.

Why: a brain-only T1w inside a thin uniform shell let brain extraction pass the tests and fail on
a real whole-head MPRAGE (issue 10). Real anatomy is used where it exists offline: the brain, its
hull and the distance from it come from the ICBM152 2009a template (:mod:`anatomy`). There is no
whole head without a brain-extraction role (Colin27 is the App's template and must not be used
here), so everything outside the brain is modelled in template (MNI-like) mm:

- the skin surface is a smooth union of a superquadric cranium, a face, a nose, ears and an
  elliptic neck, with per-participant sizes; it is NOT a dilation of the brain (the brain only
  sets a minimum distance, so the skull and scalp never cross it);
- layers from the skin inward: skin, subcutaneous fat (bright on T1w); from the brain outward:
  extra-axial CSF, skull (inner and outer tables of dark cortical bone around fatty diploe), its
  thickness varying with position (thick occipital and frontal bone, thin temporal squama, a
  smooth per-participant variation);
- muscle fills the deep soft tissue (temporalis on the temporal fossa, face and neck), with
  orbits (fat, globes with vitreous and lens, optic nerves), frontal and maxillary sinuses, nasal
  cavity, mastoid air cells, mouth, tongue, mandible, cervical vertebrae with discs, spinal canal
  and cord, airway and neck vessels.

Every structure is a signed distance (mm, negative inside); a voxel of size v takes a structure
with weight ``clip(0.5 - d / v, 0, 1)`` painted over what lies under it, so layers meet with
partial volume. Tissue properties are composited per voxel (T1w intensity, DWI signal per
b-value), never stored per class, so a 1 mm whole head costs a few seconds.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import numpy as np
from scipy import ndimage

from ketamine_dti.simulate import anatomy

#: Tissues outside the brain: (T1w MPRAGE intensity relative to WM, DWI S0 relative to WM at
#: TE ~80-90 ms with fat suppression, isotropic diffusivity mm^2/s). On T1w fat > WM > GM >
#: muscle > CSF > bone/air. Extra-axial CSF has no DWI signal here: in the DWI the template's own
#: CSF fraction is the subarachnoid space, so the brain's DWI signal is exactly as before.
TISSUES: dict[str, tuple[float, float, float]] = {
    "air": (0.0, 0.0, 0.0),
    "skin": (0.55, 0.25, 1.0e-3),
    "fat": (1.20, 0.05, 0.02e-3),  # EPI fat suppression; lipid barely diffuses
    "muscle": (0.42, 0.30, 1.5e-3),  # short T2
    "bone": (0.04, 0.0, 0.0),  # cortical bone: no MR signal
    "marrow": (0.80, 0.05, 0.3e-3),  # fatty marrow (diploe, vertebral bodies)
    "csf": (0.22, 0.0, 3.0e-3),
    "vitreous": (0.15, 3.0, 3.0e-3),  # water: CSF-like
    "lens": (0.65, 0.30, 0.2e-3),
    "cord": (0.85, 1.0, 1.0e-3),  # spinal cord is mostly white matter
    "disc": (0.35, 0.80, 1.5e-3),
    "mucosa": (0.40, 1.2, 1.5e-3),  # T2-bright lining of sinuses and airway
    "vessel": (0.10, 0.0, 0.0),  # flow void
}
TISSUE_NAMES = tuple(TISSUES)
TISSUE_INDEX = {name: index for index, name in enumerate(TISSUE_NAMES)}

#: Extended box (template mm) of the brain-distance field: the neck reaches far below the
#: template's box (z -72); the field is kept on anatomy's 2 mm coarse grid.
FIELD_BOX_MM = ((-112.0, 112.0), (-156.0, 140.0), (-210.0, 124.0))
#: Distance (mm) given outside the field box.
FAR_MM = 1.0e3
#: Beyond this distance (mm) outside a structure's bounding box its exact distance is not
#: needed (layers and partial volume reach a few mm): a lower bound is used (fast).
BOUND_MARGIN_MM = 12.0
#: Chunk of grid slices evaluated at once (memory: ~30 float32 temporaries per point).
CHUNK_POINTS = 1_500_000

# ---- Shape (template mm; MNI-like: x right, y anterior, z superior; brain centre ~(0,-22,9)).
#: Cranium superquadric: centre and semi-axes (exponent: SHAPE_EXPONENTS per participant). The
#: template brain spans x +-72, y -107..73, z -72..82; the skin lies 10-16 mm outside it.
CRANIUM_CENTRE_MM = (0.0, -17.0, 6.0)
CRANIUM_RADII_MM = (84.0, 104.0, 92.0)
#: Face (forehead to chin), nose, ears, neck (elliptic cylinder below the skull base).
FACE_CENTRE_MM = (0.0, 42.0, -78.0)
FACE_RADII_MM = (60.0, 50.0, 62.0)
FACE_EXPONENT = 2.5
NOSE_CENTRE_MM = (0.0, 93.0, -62.0)
NOSE_RADII_MM = (13.0, 18.0, 26.0)
EAR_CENTRE_MM = (80.0, -20.0, -30.0)
EAR_RADII_MM = (6.0, 16.0, 30.0)
NECK_CENTRE_MM = (0.0, -36.0)
NECK_RADII_MM = (56.0, 60.0)
NECK_TOP_MM = -40.0
#: Smoothing (mm) of the unions of the skin surface (no creases at the jaw or nape).
SKIN_UNION_MM = 18.0
#: Layers: skin; subcutaneous fat (scalp, face, neck); minimum soft tissue over the skull.
SKIN_MM = 2.0
SCALP_FAT_MM = 4.0
MIN_SCALP_MM = 5.0
#: Extra-axial CSF outside the brain hull, and the skull: mean thickness, regional factors
#: (frontal, occipital thicker; temporal squama thinner), tables (fraction of the thickness,
#: at least TABLE_MIN_MM each) around the diploe.
CSF_MM = 2.0
SKULL_MM = 6.0
SKULL_FRONTAL_EXTRA = 0.25
SKULL_OCCIPITAL_EXTRA = 0.45
SKULL_TEMPORAL_THINNING = 0.5
TABLE_FRACTION = 0.3
TABLE_MIN_MM = 1.2
#: Temporalis muscle: thickness over the temporal fossa (|x| > TEMPORAL_X_MM, y and z ranges).
TEMPORALIS_MM = 9.0
TEMPORAL_X_MM = 45.0
TEMPORAL_Y_RANGE_MM = (-55.0, 35.0)
TEMPORAL_Z_RANGE_MM = (-45.0, 40.0)
#: Eyes: globe centre (x mirrored), radius, lens offset and radii, sclera, orbit fat ellipsoid,
#: optic nerve end (towards the optic canal) and radius. The globes sit below the orbitofrontal
#: cortex (z -18 at y 60), corneas ~15 mm behind the forehead skin.
GLOBE_CENTRE_MM = (32.0, 60.0, -40.0)
GLOBE_RADIUS_MM = 12.0
LENS_OFFSET_MM = 8.5
LENS_RADII_MM = (4.5, 2.0, 4.5)
SCLERA_MM = 1.0
ORBIT_CENTRE_MM = (31.0, 52.0, -40.0)
ORBIT_RADII_MM = (17.0, 24.0, 16.0)
OPTIC_NERVE_END_MM = (14.0, 28.0, -34.0)
OPTIC_NERVE_RADIUS_MM = 2.5
#: Bone kept between orbit/sinus and brain (orbital roof, sinus walls), mm.
ROOF_MM = 1.5
#: Sinuses and air cells (centre, radii; x mirrored where paired). The frontal sinus thickens
#: the frontal bone (pneumatisation) by FRONTAL_SINUS_BONE_MM.
FRONTAL_SINUS_CENTRE_MM = (0.0, 82.0, -8.0)
FRONTAL_SINUS_RADII_MM = (16.0, 6.0, 11.0)
FRONTAL_SINUS_BONE_MM = 8.0
MAXILLARY_CENTRE_MM = (28.0, 58.0, -66.0)
MAXILLARY_RADII_MM = (13.0, 17.0, 16.0)
NASAL_CENTRE_MM = (0.0, 68.0, -62.0)
NASAL_RADII_MM = (12.0, 26.0, 22.0)
#: Nasopharynx: joins the back of the nasal cavity to the pharynx.
NASOPHARYNX_CENTRE_MM = (0.0, 18.0, -72.0)
NASOPHARYNX_RADII_MM = (11.0, 28.0, 9.0)
SEPTUM_MM = 1.5
MASTOID_CENTRE_MM = (58.0, -38.0, -48.0)
MASTOID_RADII_MM = (10.0, 13.0, 14.0)
MASTOID_AIR = 0.6  # air cells are a foam: this share of the volume is air
#: External ear canals (meatus): an air-filled tube ~7 mm wide from the concha (outside the skin,
#: through the pinna) to the tympanic membrane, anterior to the mastoid air cells (x mirrored).
#: Painted only when ``HeadShape.ear_canals`` is set: the susceptibility field of issue 11 needs
#: them; without it the head is exactly as before (datasets without distortion are unchanged).
EAR_CANAL_INNER_MM = (50.0, -24.0, -44.0)
EAR_CANAL_OUTER_MM = (88.0, -20.0, -40.0)
EAR_CANAL_RADIUS_MM = 3.5
#: Mouth and jaw: tongue, oral cavity, mandible (body: an elliptic arch; its rami).
TONGUE_CENTRE_MM = (0.0, 55.0, -100.0)
TONGUE_RADII_MM = (24.0, 30.0, 14.0)
ORAL_CENTRE_MM = (0.0, 62.0, -110.0)
ORAL_RADII_MM = (22.0, 25.0, 2.5)
MANDIBLE_ARCH_MM = (46.0, 70.0)  # semi-axes of the arch (x, y) about y = MANDIBLE_Y0_MM
MANDIBLE_Y0_MM = 20.0
MANDIBLE_Z_RANGE_MM = (-140.0, -118.0)
MANDIBLE_HALF_WIDTH_MM = 5.0
RAMUS_CENTRE_MM = (47.0, 12.0, -95.0)
RAMUS_RADII_MM = (4.5, 12.0, 30.0)
#: Spine: the cord leaves the template's medulla (lowest brain voxels ~(0,-45,-71)) and runs
#: down with a slight anterior drift (cervical lordosis). Canal and cord radii (x, y); the
#: vertebral bodies lie anterior to the canal; bodies and discs alternate along z.
CORD_TOP_MM = (0.0, -45.0, -62.0)
CORD_DRIFT = 0.08  # mm anterior per mm down
CANAL_RADII_MM = (9.0, 7.5)
CORD_RADII_MM = (5.5, 4.0)
BODY_OFFSET_MM = 20.0
BODY_RADII_MM = (10.0, 8.5)
ARCH_RADII_MM = (13.0, 11.0)
SPINOUS_LENGTH_MM = 30.0
VERTEBRA_TOP_MM = -78.0
VERTEBRA_PERIOD_MM = 19.0
DISC_MM = 5.0
CORTEX_MM = 1.2
#: Airway (pharynx, trachea) anterior to the bodies; carotid and jugular vessels.
AIRWAY_OFFSET_MM = 40.0
AIRWAY_RADII_MM = (11.0, 7.0)
AIRWAY_TOP_MM = -70.0
VESSEL_OFFSETS_MM = ((24.0, 32.0), (30.0, 22.0))  # (x, y from the cord) carotid, jugular
VESSEL_RADIUS_MM = 4.0
#: Per-participant variation (SDs, relative unless mm).
SHAPE_RADII_SD = 0.04
SHAPE_EXPONENTS = (2.0, 2.5, 3.0)
SHAPE_FACE_SD = 0.05
FAT_MM_RANGE = (2.0, 8.0)
SKULL_SCALE_SD = 0.12
SKULL_WAVE_SD = 0.12
CSF_MM_RANGE = (1.5, 3.0)
EYE_JITTER_MM = 2.0
SINUS_SCALE_RANGE = (0.6, 1.3)
#: Receive-coil profile of the T1w (coil_gain): surface gain above the centre's, and fall-off
#: length (mm). A share of scans is prescan-normalised (amplitude 0), as sites differ.
COIL_AMPLITUDE_RANGE = (1.0, 3.5)
COIL_LENGTH_MM_RANGE = (10.0, 25.0)
PRESCAN_NORMALISED_FRACTION = 1.0 / 3.0


#: One line for the ground truth's planted_effects.json.
MODEL_SUMMARY = (
    "ICBM152 2009a brain (warped per participant) in a modelled head: superquadric cranium, "
    "face, nose, ears and neck (per-participant sizes); skin, subcutaneous fat; extra-axial CSF "
    "and a skull of position-dependent thickness (tables + diploe) from the brain-hull "
    "distance; temporalis and deep muscle; orbits (fat, globes with vitreous and lens, optic "
    "nerves); frontal, maxillary and mastoid air; nasal cavity, mouth, tongue, mandible; "
    "cervical vertebrae and discs, canal and cord, airway and vessels. Partial volume over one "
    "voxel at every boundary. DWI: isotropic signal per tissue (fat suppressed), none from "
    "extra-axial CSF (the brain's own CSF fraction stands for it). T1w: a receive-coil gain "
    "1 + A exp(-depth below skin / L) per participant (not prescan-normalised)"
)


def coil_gain(depth_mm: np.ndarray, amplitude: float, length_mm: float) -> np.ndarray:
    """Receive gain of a head array coil without intensity normalisation.

    Coil elements sit on the head: signal is ``1 + amplitude`` times brighter at the skin than
    deep inside, falling off over ``length_mm`` (the real Prisma MPRAGE of issue 10 has a scalp
    ~5x brighter than white matter).
    """
    return (1.0 + amplitude * np.exp(-depth_mm / length_mm)).astype(np.float32)


@dataclass(frozen=True)
class HeadShape:
    """A participant's head outside the brain (template mm): sizes, layers and skull waves."""

    cranium_radii_mm: np.ndarray
    cranium_exponent: float
    face_scale: np.ndarray
    neck_scale: float
    fat_mm: float
    skull_scale: float
    skull_waves: np.ndarray  # (3, 3): skull thickness varies as 1 + sum_k (u . w_k)
    csf_mm: float
    eye_shift_mm: np.ndarray
    sinus_scale: float
    coil_amplitude: float
    coil_length_mm: float
    ear_canals: bool = False  # paint the ear canals (set with --distortion, issue 11)


def random_head_shape(rng: np.random.Generator) -> HeadShape:
    """A participant's head: size, shape, fat, skull thickness pattern, sinus size."""
    return HeadShape(
        cranium_radii_mm=np.array(CRANIUM_RADII_MM) * (1.0 + rng.normal(0, SHAPE_RADII_SD, 3)),
        cranium_exponent=float(rng.choice(SHAPE_EXPONENTS)),
        face_scale=1.0 + rng.normal(0.0, SHAPE_FACE_SD, 3),
        neck_scale=float(1.0 + rng.normal(0.0, SHAPE_FACE_SD)),
        fat_mm=float(rng.uniform(*FAT_MM_RANGE)),
        skull_scale=float(np.clip(1.0 + rng.normal(0.0, SKULL_SCALE_SD), 0.7, 1.4)),
        skull_waves=rng.normal(0.0, SKULL_WAVE_SD / np.sqrt(3.0), (3, 3)),
        csf_mm=float(rng.uniform(*CSF_MM_RANGE)),
        eye_shift_mm=rng.normal(0.0, EYE_JITTER_MM, 3),
        sinus_scale=float(rng.uniform(*SINUS_SCALE_RANGE)),
        coil_amplitude=0.0
        if rng.random() < PRESCAN_NORMALISED_FRACTION
        else float(rng.uniform(*COIL_AMPLITUDE_RANGE)),
        coil_length_mm=float(rng.uniform(*COIL_LENGTH_MM_RANGE)),
    )


def shape_summary(shape: HeadShape) -> dict:
    """The head's parameters as JSON-ready numbers (rounded)."""
    return {
        "cranium_radii_mm": [round(float(r), 1) for r in shape.cranium_radii_mm],
        "cranium_exponent": shape.cranium_exponent,
        "subcutaneous_fat_mm": round(shape.fat_mm, 2),
        "skull_scale": round(shape.skull_scale, 3),
        "extra_axial_csf_mm": round(shape.csf_mm, 2),
        "sinus_scale": round(shape.sinus_scale, 3),
        "coil_amplitude": round(shape.coil_amplitude, 3),
        "coil_length_mm": round(shape.coil_length_mm, 2),
    }


@functools.lru_cache(maxsize=1)
def brain_distance_field() -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) from the template's smooth brain hull on an extended 2 mm grid, its affine.

    The hull is anatomy's (``shell_distance_mm == 0``); the box reaches the neck.
    """
    template = anatomy.load_template_anatomy()
    hull = template.shell_distance_mm == 0
    step = anatomy.COARSE_VOXEL_MM
    origin = template.coarse_affine[:3, 3]
    low = [int(np.ceil((origin[a] - FIELD_BOX_MM[a][0]) / step)) for a in range(3)]
    high = [
        int(np.ceil((FIELD_BOX_MM[a][1] - origin[a]) / step)) - hull.shape[a] + 1 for a in range(3)
    ]
    padded = np.pad(hull, [(lo, max(hi, 0)) for lo, hi in zip(low, high, strict=True)])
    distance = ndimage.distance_transform_edt(~padded, sampling=step).astype(np.float32)
    affine = template.coarse_affine.copy()
    affine[:3, 3] = origin - step * np.array(low)
    return distance, affine


# ---- Signed distances (mm, negative inside); p is (3, n) float32 template mm.


def ellipsoid(
    p: np.ndarray, centre, radii, exponent: float = 2.0, exact: bool = False
) -> np.ndarray:
    """Signed distance to a superquadric ``sum |q_i|^e = 1`` (first order: (k-1)/|grad k|).

    ``exponent`` is a multiple of 1/2 (2 = ellipsoid, larger = boxier). Farther than
    BOUND_MARGIN_MM outside the bounding box only a lower bound is returned (the distance to
    the box's farthest face plane) unless ``exact``: painting needs nothing more there.
    """
    if (2.0 * exponent) % 1.0 or exponent < 1.0:
        raise ValueError(f"superquadric exponent {exponent}: use a multiple of 0.5, >= 1")
    out = np.empty(p.shape[1], dtype=np.float32)
    margin = np.inf if exact else BOUND_MARGIN_MM
    centre = np.asarray(centre, dtype=np.float64)
    _superquadric(p, centre, np.asarray(radii, dtype=np.float64), float(exponent), 3, margin, out)
    return out


def elliptic_cylinder(
    p: np.ndarray, centre_xy, radii_xy, z_range, exact: bool = False
) -> np.ndarray:
    """Signed distance to a vertical elliptic cylinder between z_range[0] and z_range[1]."""
    out = np.empty(p.shape[1], dtype=np.float32)
    centre = np.array([centre_xy[0], centre_xy[1], 0.0])
    radii = np.array([radii_xy[0], radii_xy[1], 1.0])
    _superquadric(p, centre, radii, 2.0, 2, np.inf if exact else BOUND_MARGIN_MM, out)
    return np.maximum(out, np.maximum(z_range[0] - p[2], p[2] - z_range[1]))


@numba.njit(cache=True, nogil=True, fastmath=True)
def _superquadric(p, centre, radii, exponent, n_axes, margin, out):  # pragma: no cover
    """First-order signed distance to ``S = sum_i |q_i|^e = 1``, q = (p - c) / r.

    Ellipsoid (e = 2): (k - 1) / |grad k| with k = sqrt(S). Otherwise (S - 1) / |grad S|, within
    ~10% of the distance over the 10 mm below the surface that the skin layers use; e is a
    multiple of 1/2, so q^(e-1) is a product of q's and one square root (no logarithms).
    """
    inverse = 1.0 / radii
    whole = int(np.floor(exponent - 1.0))
    half = (exponent - 1.0 - whole) > 0.25
    ellipsoid = whole == 1 and not half
    for n in range(p.shape[1]):
        outside = -np.inf
        for a in range(n_axes):
            outside = max(outside, abs(p[a, n] - centre[a]) - radii[a])
        if outside > margin:
            out[n] = outside
            continue
        total = 0.0
        grad = 0.0
        for a in range(n_axes):
            q = abs(p[a, n] - centre[a]) * inverse[a]
            qe = np.sqrt(q) if half else 1.0
            for _ in range(whole):
                qe *= q
            total += qe * q
            g = qe * inverse[a]
            grad += g * g
        if ellipsoid:
            k = np.sqrt(total)
            out[n] = (k - 1.0) * k / max(np.sqrt(grad), 1e-9)
        else:
            out[n] = (total - 1.0) / max(exponent * np.sqrt(grad), 1e-9)


def capsule(p: np.ndarray, start, end, radius: float) -> np.ndarray:
    """Signed distance to a capsule (a rounded rod) from start to end."""
    a = np.asarray(start, dtype=np.float32).reshape(3, 1)
    axis = np.asarray(end, dtype=np.float32).reshape(3, 1) - a
    t = np.clip(((p - a) * axis).sum(axis=0) / float((axis**2).sum()), 0.0, 1.0)
    return np.sqrt(((p - a - axis * t) ** 2).sum(axis=0)) - radius


def smooth_union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: a union without a crease, blended over k mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def shell(distance: np.ndarray, inner: np.ndarray | float, outer: np.ndarray | float):
    """Signed distance to the layer ``inner <= distance <= outer`` of a distance field."""
    return np.maximum(inner - distance, distance - outer)


def mirrored(point) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """A paired structure's right and left centres (x mirrored)."""
    return (tuple(point), (-point[0], point[1], point[2]))


# ---- Painting.


class _Canvas:
    """Per-point composite of tissue properties (n_props, n) and the dominant tissue label."""

    def __init__(self, table: np.ndarray, n: int, voxel_mm: float) -> None:
        self.table = table
        self.values = np.zeros((table.shape[1], n), dtype=np.float32)
        self.values[:] = table[TISSUE_INDEX["air"]][:, None]
        self.label = np.full(n, TISSUE_INDEX["air"], dtype=np.int8)
        self.voxel_mm = voxel_mm

    def paint(self, distance: np.ndarray, tissue: str, weight: float = 1.0) -> None:
        """Cover the inside of ``distance`` with tissue (partial volume over one voxel)."""
        alpha = np.clip(0.5 - distance / self.voxel_mm, 0.0, 1.0) * weight
        where = np.nonzero(alpha > 0)[0]
        if where.size == 0:
            return
        a = alpha[where]
        index = TISSUE_INDEX[tissue]
        self.values[:, where] += a * (self.table[index][:, None] - self.values[:, where])
        self.label[where[a >= 0.5]] = index


def skin_distance(p: np.ndarray, brain: np.ndarray, skull: np.ndarray, shape: HeadShape):
    """Signed distance to the skin: cranium, face, nose, ears and neck, never near the brain."""
    radii = shape.cranium_radii_mm
    cranium = ellipsoid(p, CRANIUM_CENTRE_MM, radii, shape.cranium_exponent, exact=True)
    radii = np.array(FACE_RADII_MM) * shape.face_scale
    face = ellipsoid(p, FACE_CENTRE_MM, radii, FACE_EXPONENT, exact=True)
    head = smooth_union(cranium, face, SKIN_UNION_MM)
    neck_radii = np.array(NECK_RADII_MM) * shape.neck_scale
    neck = elliptic_cylinder(p, NECK_CENTRE_MM, neck_radii, (-FAR_MM, NECK_TOP_MM), exact=True)
    head = smooth_union(head, neck, SKIN_UNION_MM)
    head = np.minimum(head, ellipsoid(p, NOSE_CENTRE_MM, NOSE_RADII_MM))
    for centre in mirrored(EAR_CENTRE_MM):
        head = np.minimum(head, ellipsoid(p, centre, EAR_RADII_MM))
    minimum = shape.csf_mm + skull + temporalis_thickness(p) + MIN_SCALP_MM
    return np.minimum(head, brain - minimum)


def skull_thickness(p: np.ndarray, shape: HeadShape) -> np.ndarray:
    """Skull thickness (mm) at each point: regional pattern x participant scale and waves."""
    x, y, z = p
    frontal = SKULL_FRONTAL_EXTRA * np.clip((y - 20.0) / 40.0, 0.0, 1.0)
    occipital = SKULL_OCCIPITAL_EXTRA * np.clip((-70.0 - y) / 30.0, 0.0, 1.0)
    temporal = SKULL_TEMPORAL_THINNING * _temporal_weight(p)
    direction = p - np.array(CRANIUM_CENTRE_MM, dtype=np.float32).reshape(3, 1)
    direction /= np.maximum(np.sqrt((direction**2).sum(axis=0)), 1.0)
    waves = (shape.skull_waves.astype(np.float32) @ direction).sum(axis=0)
    thickness = SKULL_MM * shape.skull_scale * (1.0 + frontal + occipital - temporal + waves)
    sinus = ellipsoid(p, FRONTAL_SINUS_CENTRE_MM, np.array(FRONTAL_SINUS_RADII_MM) * 2.0)
    thickness += FRONTAL_SINUS_BONE_MM * shape.sinus_scale * np.clip(-sinus / 10.0, 0.0, 1.0)
    return np.maximum(thickness, 2.0 * TABLE_MIN_MM)


def _temporal_weight(p: np.ndarray) -> np.ndarray:
    """1 over the temporal fossa, fading to 0 over 10 mm outside it."""
    x, y, z = p

    def inside(values, low, high):
        return np.clip(np.minimum(values - low, high - values) / 10.0 + 0.5, 0.0, 1.0)

    return (
        np.clip((np.abs(x) - TEMPORAL_X_MM) / 10.0, 0.0, 1.0)
        * inside(y, *TEMPORAL_Y_RANGE_MM)
        * inside(z, *TEMPORAL_Z_RANGE_MM)
    )


def temporalis_thickness(p: np.ndarray) -> np.ndarray:
    return TEMPORALIS_MM * _temporal_weight(p)


def paint_cranium(canvas: _Canvas, p, brain, skin, skull, shape: HeadShape) -> None:
    """Muscle base, galea, temporalis, skull (tables, diploe), extra-axial CSF, sinuses."""
    canvas.paint(skin, "muscle")  # deep soft tissue of face and neck
    inner, outer = shape.csf_mm, shape.csf_mm + skull
    # Over the vault: the galea, a tendinous sheet (skin-like on T1w) between skull and fat.
    canvas.paint(np.maximum(shell(brain, outer, outer + MIN_SCALP_MM), skin), "skin")
    canvas.paint(shell(brain, outer, outer + temporalis_thickness(p)), "muscle")
    canvas.paint(shell(brain, inner, outer), "bone")
    table = np.maximum(TABLE_FRACTION * skull, TABLE_MIN_MM)
    canvas.paint(shell(brain, inner + table, outer - table), "marrow")
    canvas.paint(shell(brain, -FAR_MM, inner), "csf")
    behind_bone = np.maximum(shape.csf_mm + ROOF_MM - brain, -(brain - shape.csf_mm))
    sinus_radii = np.array(FRONTAL_SINUS_RADII_MM) * shape.sinus_scale
    frontal = ellipsoid(p, FRONTAL_SINUS_CENTRE_MM, sinus_radii)
    canvas.paint(np.maximum(frontal, behind_bone), "mucosa")
    canvas.paint(np.maximum(frontal + 1.0, behind_bone), "air")
    for centre in mirrored(MASTOID_CENTRE_MM):
        mastoid = np.maximum(ellipsoid(p, centre, MASTOID_RADII_MM), behind_bone)
        canvas.paint(mastoid, "air", weight=MASTOID_AIR)


def paint_face(canvas: _Canvas, p, brain, shape: HeadShape) -> None:
    """Orbits and eyes, nasal cavity, maxillary sinuses, mouth, tongue and mandible."""
    clear_of_brain = shape.csf_mm + ROOF_MM - brain  # keep a bony roof under the brain
    for side, centre in enumerate(mirrored(GLOBE_CENTRE_MM)):
        sign = 1.0 if side == 0 else -1.0
        globe = np.array(centre) + shape.eye_shift_mm * np.array([sign, 1.0, 1.0])
        orbit = np.array(mirrored(ORBIT_CENTRE_MM)[side]) + shape.eye_shift_mm
        canvas.paint(np.maximum(ellipsoid(p, orbit, ORBIT_RADII_MM), clear_of_brain), "fat")
        nerve_end = mirrored(OPTIC_NERVE_END_MM)[side]
        nerve = capsule(p, globe, nerve_end, OPTIC_NERVE_RADIUS_MM)
        canvas.paint(np.maximum(nerve, clear_of_brain), "muscle")
        distance = ellipsoid(p, globe, [GLOBE_RADIUS_MM] * 3)
        canvas.paint(distance, "skin")  # sclera
        canvas.paint(distance + SCLERA_MM, "vitreous")
        lens = globe + np.array([0.0, LENS_OFFSET_MM, 0.0])
        canvas.paint(ellipsoid(p, lens, LENS_RADII_MM), "lens")
    sinus_radii = np.array(MAXILLARY_RADII_MM) * shape.sinus_scale
    for centre in mirrored(MAXILLARY_CENTRE_MM):
        sinus = np.maximum(ellipsoid(p, centre, sinus_radii), clear_of_brain)
        canvas.paint(sinus, "mucosa")
        canvas.paint(sinus + 1.5, "air")
    nasal = np.maximum(ellipsoid(p, NASAL_CENTRE_MM, NASAL_RADII_MM), clear_of_brain)
    canvas.paint(nasal, "mucosa")
    canvas.paint(np.maximum(nasal + 1.5, SEPTUM_MM - np.abs(p[0])), "air")
    canvas.paint(ellipsoid(p, NASOPHARYNX_CENTRE_MM, NASOPHARYNX_RADII_MM), "air")
    canvas.paint(ellipsoid(p, TONGUE_CENTRE_MM, TONGUE_RADII_MM), "muscle")
    canvas.paint(ellipsoid(p, ORAL_CENTRE_MM, ORAL_RADII_MM), "air")
    paint_mandible(canvas, p)


def paint_ear_canals(canvas: _Canvas, p, brain, shape: HeadShape) -> None:
    """The external ear canals: air from the concha to the eardrum, a bony wall from the brain."""
    clear_of_brain = shape.csf_mm + ROOF_MM - brain
    for inner, outer in zip(
        mirrored(EAR_CANAL_INNER_MM), mirrored(EAR_CANAL_OUTER_MM), strict=True
    ):
        canal = capsule(p, inner, outer, EAR_CANAL_RADIUS_MM)
        canvas.paint(np.maximum(canal, clear_of_brain), "air")


def paint_mandible(canvas: _Canvas, p) -> None:
    """The mandible: a U-shaped arch of marrow in a cortical rim, and two rami."""
    x, y, z = p
    arch_y = np.maximum(y - MANDIBLE_Y0_MM, 0.0)
    ring = np.sqrt((x / MANDIBLE_ARCH_MM[0]) ** 2 + (arch_y / MANDIBLE_ARCH_MM[1]) ** 2)
    across = np.abs(ring - 1.0) * min(MANDIBLE_ARCH_MM) - MANDIBLE_HALF_WIDTH_MM
    low, high = MANDIBLE_Z_RANGE_MM
    body = np.maximum(np.maximum(across, low - z), z - high)
    body = np.maximum(body, MANDIBLE_Y0_MM - y)
    for centre in mirrored(RAMUS_CENTRE_MM):
        body = np.minimum(body, ellipsoid(p, centre, RAMUS_RADII_MM))
    canvas.paint(body, "bone")
    canvas.paint(body + CORTEX_MM, "marrow")


def paint_neck(canvas: _Canvas, p) -> None:
    """Cervical spine (bodies, discs, arches, spinous processes), canal, cord, airway, vessels."""
    x, y, z = p
    below = np.minimum(CORD_TOP_MM[2] - z, 0.0)  # <= 0 below the top of the cord
    cord_y = CORD_TOP_MM[1] - CORD_DRIFT * below
    local = np.array([x, y - cord_y, z])  # cord-centred: the spine is straight here
    period = np.mod(VERTEBRA_TOP_MM - z, VERTEBRA_PERIOD_MM)
    in_disc = np.abs(period - (VERTEBRA_PERIOD_MM - DISC_MM / 2.0)) - DISC_MM / 2.0
    column = (-FAR_MM, VERTEBRA_TOP_MM)
    body = elliptic_cylinder(local, (0.0, BODY_OFFSET_MM), BODY_RADII_MM, column)
    arch = elliptic_cylinder(local, (0.0, 0.0), ARCH_RADII_MM, column)
    spinous = np.maximum(np.abs(x) - 3.0, np.abs(local[1] + SPINOUS_LENGTH_MM / 2.0) - 15.0)
    spinous = np.maximum(spinous, np.maximum(z - VERTEBRA_TOP_MM, -in_disc - 2.0))
    bone = np.minimum(np.minimum(body, arch), spinous)
    canvas.paint(bone, "bone")
    canvas.paint(np.maximum(body + CORTEX_MM, -in_disc), "marrow")
    canvas.paint(np.maximum(body, in_disc), "disc")
    canal_top = CORD_TOP_MM[2] + 5.0
    canal = elliptic_cylinder(local, (0.0, 0.0), CANAL_RADII_MM, (-FAR_MM, canal_top))
    canvas.paint(canal, "csf")
    cord = elliptic_cylinder(local, (0.0, 0.0), CORD_RADII_MM, (-FAR_MM, canal_top))
    canvas.paint(cord, "cord")
    airway_range = (-FAR_MM, AIRWAY_TOP_MM)
    airway = elliptic_cylinder(local, (0.0, AIRWAY_OFFSET_MM), AIRWAY_RADII_MM, airway_range)
    canvas.paint(airway - 1.5, "mucosa")
    canvas.paint(airway, "air")
    for dx, dy in VESSEL_OFFSETS_MM:
        for sign in (1.0, -1.0):
            vessel = elliptic_cylinder(
                local, (sign * dx, dy), (VESSEL_RADIUS_MM,) * 2, (-FAR_MM, NECK_TOP_MM)
            )
            canvas.paint(vessel, "vessel")


def paint_head(
    p: np.ndarray,
    brain: np.ndarray,
    skull: np.ndarray,
    skin: np.ndarray,
    shape: HeadShape,
    canvas: _Canvas,
) -> None:
    """Every extracerebral tissue at points p (3, n): brain distance, skull and skin (n,)."""
    paint_cranium(canvas, p, brain, skin, skull, shape)
    paint_neck(canvas, p)
    fat_depth = -(skin + SKIN_MM + shape.fat_mm)
    canvas.paint(np.maximum(fat_depth, skin), "fat")
    canvas.paint(np.maximum(-(skin + SKIN_MM), skin), "skin")
    canvas.paint(ellipsoid(p, NOSE_CENTRE_MM, NOSE_RADII_MM), "skin")  # cartilage and skin
    paint_face(canvas, p, brain, shape)
    if shape.ear_canals:
        paint_ear_canals(canvas, p, brain, shape)
    canvas.paint(-skin, "air")  # outside the skin


def property_table(columns: dict[str, dict[str, float]]) -> np.ndarray:
    """(n_tissues, n_props) float32 from {prop: {tissue: value}}; missing tissues are 0."""
    table = np.zeros((len(TISSUE_NAMES), len(columns)), dtype=np.float32)
    for column, values in enumerate(columns.values()):
        for tissue, value in values.items():
            table[TISSUE_INDEX[tissue], column] = value
    return table


def t1w_table() -> np.ndarray:
    """One property: T1w intensity relative to WM."""
    return property_table({"t1w": {name: v[0] for name, v in TISSUES.items()}})


def dwi_table(bvals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DWI signal relative to WM S0 per unique b-value, and each volume's column index."""
    unique, column = np.unique(np.asarray(bvals, dtype=float), return_inverse=True)
    columns = {
        f"b{b:g}": {name: s0 * np.exp(-b * md) for name, (_, s0, md) in TISSUES.items()}
        for b in unique
    }
    return property_table(columns), column


def head_properties(
    template: anatomy.TemplateAnatomy,
    participant: anatomy.ParticipantAnatomy,
    pose: anatomy.HeadPose,
    shape: HeadShape,
    affine: np.ndarray,
    grid_shape: tuple[int, int, int],
    table: np.ndarray,
    brain_fraction: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Composite extracerebral properties (n_props, X, Y, Z), dominant tissue labels, depth.

    depth (X, Y, Z): mm below the skin (0 outside the head), for the receive-coil profile.

    Points map scanner -> subject -> template exactly as the brain does (same warp and size),
    so the head moves and deforms with the brain. Only voxels inside the skin that the brain
    does not fill (``brain_fraction`` < 1) are painted; evaluated in slabs to bound memory.
    """
    field, field_affine = brain_distance_field()
    template_to_field = np.linalg.inv(field_affine) @ template.affine
    voxel_mm = float(np.linalg.norm(affine[:3, :3], axis=0).mean())
    values = np.empty((table.shape[1], *grid_shape), dtype=np.float32)
    values[:] = table[TISSUE_INDEX["air"]].reshape(-1, 1, 1, 1)
    labels = np.full(grid_shape, TISSUE_INDEX["air"], dtype=np.int8)
    slab = max(1, CHUNK_POINTS // (grid_shape[0] * grid_shape[1]))
    depth = np.zeros(grid_shape, dtype=np.float32)
    for start in range(0, grid_shape[2], slab):
        stop = min(start + slab, grid_shape[2])
        shift = np.eye(4)
        shift[2, 3] = start
        sub_shape = (grid_shape[0], grid_shape[1], stop - start)
        index = anatomy.grid_template_index(template, participant, pose, affine @ shift, sub_shape)
        index = index.reshape(-1, 3)
        brain = anatomy.sample_channels(
            field[None], template_to_field, index.reshape(-1, 1, 1, 3), FAR_MM
        ).reshape(-1)
        p = np.ascontiguousarray(
            (index @ template.affine[:3, :3].T + template.affine[:3, 3]).T, dtype=np.float32
        )
        skull = skull_thickness(p, shape)
        skin = skin_distance(p, brain, skull, shape)
        depth[..., start:stop] = np.maximum(-skin, 0.0).reshape(sub_shape)
        needed = skin < voxel_mm
        if brain_fraction is not None:  # the brain fills these voxels: no head shows there
            needed &= brain_fraction[..., start:stop].reshape(-1) < 1.0
        inside = np.nonzero(needed)[0]
        canvas = _Canvas(table, inside.size, voxel_mm)
        paint_head(p[:, inside], brain[inside], skull[inside], skin[inside], shape, canvas)
        chunk_values = values[..., start:stop].reshape(table.shape[1], -1)
        chunk_values[:, inside] = canvas.values
        values[..., start:stop] = chunk_values.reshape(-1, *sub_shape)
        chunk_labels = labels[..., start:stop].reshape(-1)
        chunk_labels[inside] = canvas.label
        labels[..., start:stop] = chunk_labels.reshape(sub_shape)
    return values, labels, depth
