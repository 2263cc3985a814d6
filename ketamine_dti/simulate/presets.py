"""Acquisition presets of the simulated trial: grids, gradient schemes and scanner timing.

``standard`` is a typical clinical research DWI protocol (2 mm, 64 directions at b=1000 s/mm^2
plus 6 b0, T1w at 1 mm). ``tiny`` keeps the same field of view at 4 mm with 12 directions and a
2 mm T1w, so that a whole 12-participant trial is written in well under two minutes for CI.
``slab`` is the protocol of the real Prisma pair (``../shared/realdata``): a 3 mm slab of 39
slices that stops above the lower brain, one b0 and 20 directions at b=2500, TR 3.5 s (a b0
with little CSF contrast), no in-plane acceleration (the ``unaccelerated`` distortion level:
twice the standard protocol's displacements) and a 64-channel coil's strong shading (dark in
the middle of the head). Its b0 is what the b0 -> T1w coregistration has to work with on real
scans: mutual information was 7 mm off on the real pair (session 41), which the full-brain 2 mm
b=1000 b0s of ``standard`` never showed, and the slab shows once the shading is in (session 42).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Field of view of the DWI slab (mm, x y z): a 192 mm axial EPI field, 136 mm of slices.
DWI_FOV_MM: tuple[float, float, float] = (192.0, 192.0, 136.0)
#: The real Prisma pair's field of view (72 x 72 x 39 voxels of 3 mm).
PRISMA_SLAB_FOV_MM: tuple[float, float, float] = (216.0, 216.0, 117.0)
#: mm: the slab's centre above the brain's (scanner z). The Prisma pair's slab holds 93% of the
#: T1w brain (``dwi_fov_fraction`` 0.93): it covers the vertex and stops in the temporal poles
#: and cerebellum, as slabs placed on the cortex do.
PRISMA_SLAB_SUPERIOR_MM = 12.0
#: The real pair's b0 shading by its 64-channel head coil: the App's N4 receive field of each
#: series (``dwi.free_water.b0_receive_field``) spans 0.66-0.68 to 1.22-1.29 (2nd-98th
#: percentiles in the brain) against 0.94-1.09 on the standard simulator's; a least-squares fit
#: of its log to linear + quadratic terms (R^2 0.84-0.89) gave linear (-0.03, -0.11..-0.16,
#: +0.42..+0.45) and quadratic (0.72..0.83, 0.36..0.53, 0.42..0.46): dark in the middle of the
#: head, bright towards the coil and the vertex. Rounded means:
PRISMA_RECEIVE_LINEAR: tuple[float, float, float] = (0.0, -0.1, 0.45)
PRISMA_RECEIVE_QUADRATIC: tuple[float, float, float] = (0.75, 0.45, 0.45)
#: Field of view of the brain-only T1w (mm, ``--head brain``): the brain and its thin shell.
T1W_FOV_MM: tuple[float, float, float] = (176.0, 216.0, 176.0)
#: Field of view of the whole-head T1w (mm, ``--head full``), as a sagittal MPRAGE: 256 mm
#: anterior-posterior (nose to occiput) and superior-inferior, centred T1W_HEAD_CENTRE_OFFSET_MM
#: (scanner x y z) from the brain centre, so it runs from the vertex to ~8 cm below the
#: cerebellum (the neck).
T1W_HEAD_FOV_MM: tuple[float, float, float] = (176.0, 256.0, 256.0)
T1W_HEAD_CENTRE_OFFSET_MM: tuple[float, float, float] = (0.0, 8.0, -34.0)
#: EPI effective echo spacing (s), GRAPPA 2 (PARALLEL_REDUCTION_FACTOR) on a modern 3 T scanner.
EFFECTIVE_ECHO_SPACING_S = 0.00034
PARALLEL_REDUCTION_FACTOR = 2
#: Anterior-to-posterior phase encoding: k-space is traversed along -j, the image's second axis
#: (+j points anterior in our LAS images); eddy and susceptibility distortions displace along j.
PHASE_ENCODING_DIRECTION = "j-"


@dataclass(frozen=True)
class Preset:
    """One acquisition protocol; voxel sizes in mm, times in s, b-values in s/mm^2."""

    name: str
    dwi_voxel_mm: float
    n_directions: int
    n_b0: int
    bval: float
    t1w_voxel_mm: float
    default_n_participants: int
    #: Default SNR = mean b0 signal in white matter / Gaussian noise SD (see signal.py).
    default_snr: float
    dwi_echo_time_s: float
    dwi_repetition_time_s: float
    #: ``--distortion`` when not given (simulate.susceptibility): "typical" for the standard
    #: protocol, whose data the App now corrects from the reverse-PE fieldmaps; "none" for
    #: tiny, whose 4 mm test data check the rest of the pipeline.
    default_distortion: str = "none"
    #: ``--realism`` when not given (simulate.realism, issue 12): "typical" for the standard
    #: protocol; "ideal" for tiny, whose small test trials check the pipeline's plumbing with
    #: tolerances set on artefact-free data.
    default_realism: str = "ideal"
    #: DWI field of view (mm, x y z) and its centre's offset from the brain's (mm, scanner
    #: x y z), before the radiographer's centring error.
    dwi_fov_mm: tuple[float, float, float] = DWI_FOV_MM
    dwi_fov_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: Whether the b0's tissue contrast is T1-saturated at ``dwi_repetition_time_s``
    #: (``signal.b0_contrast``). Off for standard and tiny, whose benchmarks were all made on
    #: the fully relaxed contrast; on for slab, whose short TR is the real pair's.
    b0_t1_saturation: bool = False
    #: The receive coil's own shading of the DWI (``signal.bias_field``'s coefficient means;
    #: grid-centred position in units of 100 mm): none for standard and tiny, whose mild random
    #: field (SD 0.06 linear, 0.04 quadratic) all their benchmarks were made on.
    receive_linear_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    receive_quadratic_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def b0_repetition_time_s(self) -> float | None:
        """The TR that saturates the b0's contrast, or None (fully relaxed)."""
        return self.dwi_repetition_time_s if self.b0_t1_saturation else None

    @property
    def dwi_shape(self) -> tuple[int, int, int]:
        return tuple(int(round(fov / self.dwi_voxel_mm)) for fov in self.dwi_fov_mm)

    @property
    def t1w_shape(self) -> tuple[int, int, int]:
        return tuple(int(round(fov / self.t1w_voxel_mm)) for fov in T1W_FOV_MM)

    @property
    def t1w_head_shape(self) -> tuple[int, int, int]:
        return tuple(int(round(fov / self.t1w_voxel_mm)) for fov in T1W_HEAD_FOV_MM)

    @property
    def n_volumes(self) -> int:
        return self.n_directions + self.n_b0

    @property
    def total_readout_time_s(self) -> float:
        """EPI total readout time (s): effective echo spacing x (phase-encode lines - 1)."""
        return EFFECTIVE_ECHO_SPACING_S * (self.dwi_shape[1] - 1)


PRESETS: dict[str, Preset] = {
    "standard": Preset(
        name="standard",
        dwi_voxel_mm=2.0,
        n_directions=64,
        n_b0=6,
        bval=1000.0,
        t1w_voxel_mm=1.0,
        default_n_participants=98,
        default_snr=25.0,  # typical 2 mm single-shell b0 SNR in white matter at 3 T
        dwi_echo_time_s=0.089,
        dwi_repetition_time_s=8.4,
        default_distortion="typical",
        default_realism="typical",
    ),
    "tiny": Preset(
        name="tiny",
        dwi_voxel_mm=4.0,
        n_directions=12,
        n_b0=2,
        bval=1000.0,
        t1w_voxel_mm=2.0,
        default_n_participants=12,
        # 4 mm voxels hold 8x the spins of 2 mm ones; we keep SNR modest so that the pipeline
        # is still tested on noisy data.
        default_snr=40.0,
        dwi_echo_time_s=0.075,
        dwi_repetition_time_s=4.2,
    ),
    "slab": Preset(
        name="slab",
        dwi_voxel_mm=3.0,
        n_directions=20,
        n_b0=1,
        bval=2500.0,
        t1w_voxel_mm=1.0,
        default_n_participants=12,
        # 3.4x the spins of a 2 mm voxel, one average. The real pair's white-matter b0 reads
        # ~60-110 (noise SD from the DTI residual / MP-PCA); 40 keeps the benchmark on the
        # noisy side
        default_snr=40.0,
        dwi_echo_time_s=0.068,
        dwi_repetition_time_s=3.5,
        default_distortion="unaccelerated",
        default_realism="typical",
        dwi_fov_mm=PRISMA_SLAB_FOV_MM,
        dwi_fov_offset_mm=(0.0, 0.0, PRISMA_SLAB_SUPERIOR_MM),
        b0_t1_saturation=True,
        receive_linear_mean=PRISMA_RECEIVE_LINEAR,
        receive_quadratic_mean=PRISMA_RECEIVE_QUADRATIC,
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ValueError names the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}") from None
