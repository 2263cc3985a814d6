"""Thin Nipype interfaces that give the susceptibility field (Hz) on the DWI b0 grid, ready
for ``ResampleDWI``: from reverse phase-encoded b0 images (``dwi.pepolar``), from a GRE
fieldmap (``dwi.gre_fieldmap``) or, with no fieldmap, from the T1w (``dwi.syn_sdc``)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ketamine_dti.interfaces.dwi import _save, b0_volume_indices
from ketamine_dti.threads import limited_by_n_threads

#: mm; affines of a fieldmap and its magnitude that differ by less than this are one grid
#: (header rounding), else the magnitude is resampled onto the fieldmap's grid.
SAME_GRID_TOLERANCE_MM = 1e-3


class _DistortedB0InputSpec(BaseInterfaceInputSpec):
    """The distorted b0 whose field is estimated, and how it was read out."""

    b0_file = File(exists=True, mandatory=True, desc="the DWI's b0 reference (distorted)")
    pe_direction = traits.Str(mandatory=True, desc="the DWI's BIDS PhaseEncodingDirection")
    readout = traits.Float(mandatory=True, desc="the DWI's TotalReadoutTime (s)")
    n_threads = traits.Int(1, usedefault=True)


class _EstimateFieldInputSpec(_DistortedB0InputSpec):
    bval_file = File(
        exists=True, desc="with it, b0_file is the acquired DWI series and its first b0 volume "
        "(the one that defines the reference frame) is used",
    )  # fmt: skip
    reverse_files = traits.List(File(exists=True), mandatory=True, desc="reverse-PE images")
    reverse_bvals = traits.List(
        traits.Str, mandatory=True, desc="per reverse image: its .bval (a DWI series: its b0 "
        "volumes are used) or '' (an fmap EPI: every volume is a b0)",
    )  # fmt: skip
    reverse_pe_direction = traits.Str(mandatory=True)
    reverse_readout = traits.Float(mandatory=True, desc="s")
    b0_threshold = traits.Float(mandatory=True, desc="s/mm^2; b <= this is a b0")


class _EstimateFieldOutputSpec(TraitedSpec):
    field_file = File(exists=True, desc="off-resonance field (Hz) on the b0 reference grid")
    reverse_b0_file = File(exists=True, desc="the reverse-PE b0, aligned onto the b0 grid")


class EstimateSusceptibilityField(SimpleInterface):
    """Susceptibility field from reverse phase-encoded b0 images (``dwi.pepolar``)."""

    input_spec = _EstimateFieldInputSpec
    output_spec = _EstimateFieldOutputSpec

    @limited_by_n_threads
    def _run_interface(self, runtime):
        from ketamine_dti.dwi import pepolar

        image = nib.load(self.inputs.b0_file)
        bval_file = self.inputs.bval_file if isdefined(self.inputs.bval_file) else ""
        b0 = _volume(image, b0_volume_indices(image, bval_file, self.inputs.b0_threshold)[0])
        reverse = []
        for path, bval in zip(self.inputs.reverse_files, self.inputs.reverse_bvals, strict=True):
            reverse.append(_mean_b0(path, bval, self.inputs.b0_threshold))
        result = pepolar.estimate_pepolar(
            b0, image.affine, self.inputs.pe_direction,
            self.inputs.readout, reverse, self.inputs.reverse_pe_direction,
            self.inputs.reverse_readout,
        )  # fmt: skip
        cwd = Path(runtime.cwd)
        self._results["field_file"] = _save(result.field_hz, image, str(cwd / "field_hz.nii.gz"))
        self._results["reverse_b0_file"] = _save(
            result.reverse_b0, image, str(cwd / "reverse_b0.nii.gz")
        )
        return runtime


def _volume(image: nib.Nifti1Image, index: int) -> np.ndarray:
    """One volume (float32, non-finite -> 0), read alone from the file."""
    data = image.dataobj[..., int(index)] if len(image.shape) == 4 else image.dataobj[...]
    return np.nan_to_num(np.asarray(data, dtype=np.float32))


def _mean_b0(path: str, bval_file: str, b0_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean b0 volume, affine) of a reverse-PE image (``b0_volume_indices``)."""
    image = nib.load(path)
    indices = b0_volume_indices(image, bval_file, b0_threshold)
    volumes = [_volume(image, index) for index in indices]
    return np.mean(volumes, axis=0), image.affine


class _GreFieldToB0InputSpec(BaseInterfaceInputSpec):
    b0_file = File(exists=True, mandatory=True, desc="the DWI's b0 reference (distorted)")
    fieldmap_file = File(exists=True, mandatory=True, desc="phasediff or fieldmap image")
    kind = traits.Enum("phasediff", "fieldmap", mandatory=True, desc="BIDS suffix")
    magnitude_file = File(exists=True, mandatory=True, desc="magnitude(1) image of the GRE")
    echo_times = traits.List(
        traits.Float, minlen=2, maxlen=2, desc="EchoTime1, EchoTime2 (s), for a phasediff"
    )
    units = traits.Enum("Hz", "rad/s", "T", desc="Units of a fieldmap image")
    n_threads = traits.Int(1, usedefault=True)


class _GreFieldToB0OutputSpec(TraitedSpec):
    field_file = File(exists=True, desc="off-resonance field (Hz) on the b0 reference grid")
    to_fieldmap_file = File(exists=True, desc="4x4 RAS+ map, b0 points -> GRE points (text)")


def _first_volume(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(3-D data, affine) of an image; a 4-D one gives its first volume (magnitude1 of a file
    holding both echoes, the one volume of a 4-D fieldmap)."""
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32)
    return (data[..., 0] if data.ndim == 4 else data), image.affine


class GreFieldToB0(SimpleInterface):
    """The field (Hz) of a GRE fieldmap on the DWI b0 grid (``dwi.gre_fieldmap``): phasediff
    unwrapped or fieldmap converted, registered through its magnitude, continued beyond the
    head, smoothed and resampled."""

    input_spec = _GreFieldToB0InputSpec
    output_spec = _GreFieldToB0OutputSpec

    @limited_by_n_threads
    def _run_interface(self, runtime):
        from ketamine_dti.dwi import gre_fieldmap
        from ketamine_dti.dwi.pepolar import to_grid

        fieldmap, field_affine = _first_volume(self.inputs.fieldmap_file)
        magnitude, magnitude_affine = _first_volume(self.inputs.magnitude_file)
        if not np.allclose(magnitude_affine, field_affine, atol=SAME_GRID_TOLERANCE_MM):
            magnitude = to_grid(magnitude, magnitude_affine, fieldmap.shape, field_affine)
        mask = gre_fieldmap.head_mask(magnitude)
        if self.inputs.kind == "phasediff":
            if not isdefined(self.inputs.echo_times):
                raise ValueError(f"{self.inputs.fieldmap_file}: a phasediff needs echo_times")
            field = gre_fieldmap.field_from_phasediff(
                fieldmap, self.inputs.echo_times, magnitude=magnitude, mask=mask
            )
        else:
            if not isdefined(self.inputs.units):
                raise ValueError(f"{self.inputs.fieldmap_file}: a fieldmap needs its units")
            field = gre_fieldmap.field_from_fieldmap(fieldmap, self.inputs.units)
        b0 = nib.load(self.inputs.b0_file)
        on_grid, to_fieldmap = gre_fieldmap.field_on_b0_grid(
            field, field_affine, magnitude, b0.get_fdata(dtype=np.float32), b0.affine, mask=mask
        )
        cwd = Path(runtime.cwd)
        self._results["field_file"] = _save(on_grid, b0, str(cwd / "field_hz.nii.gz"))
        np.savetxt(cwd / "to_fieldmap.txt", to_fieldmap)
        self._results["to_fieldmap_file"] = str((cwd / "to_fieldmap.txt").resolve())
        return runtime


class _EstimateSynFieldInputSpec(_DistortedB0InputSpec):
    t1w_brain_file = File(exists=True, mandatory=True, desc="the session's T1w brain")
    t1w_mask_file = File(exists=True, mandatory=True, desc="the session's T1w brain mask")
    from_t1w_to_dwi = traits.List(
        traits.Str, mandatory=True, desc="rigid T1w -> b0 map (ANTs files, from-X_to-Y)"
    )


class _EstimateSynFieldOutputSpec(TraitedSpec):
    field_file = File(exists=True, desc="off-resonance field (Hz) on the b0 reference grid")
    b0_like_file = File(exists=True, desc="the inverted T1w brain on the b0 grid")


class EstimateSynField(SimpleInterface):
    """Fieldmap-less field (``dwi.syn_sdc``): the T1w brain moved rigidly onto the b0 grid,
    then SyN restricted to phase encoding."""

    input_spec = _EstimateSynFieldInputSpec
    output_spec = _EstimateSynFieldOutputSpec

    @limited_by_n_threads
    def _run_interface(self, runtime):
        from ketamine_dti.ants_backend import apply_transforms
        from ketamine_dti.dwi import syn_sdc

        cwd = Path(runtime.cwd)
        image = nib.load(self.inputs.b0_file)
        transforms = list(self.inputs.from_t1w_to_dwi)
        n_threads = self.inputs.n_threads

        def on_b0(in_file, name, interpolation):
            path = apply_transforms(in_file, self.inputs.b0_file, transforms, cwd / name,
                                    interpolation=interpolation, n_threads=n_threads)  # fmt: skip
            return nib.load(path).get_fdata(dtype=np.float32)

        t1w = on_b0(self.inputs.t1w_brain_file, "t1w_brain_on_b0.nii.gz", "linear")
        mask = on_b0(self.inputs.t1w_mask_file, "t1w_mask_on_b0.nii.gz", "nearestNeighbor") > 0
        result = syn_sdc.estimate_syn_field(
            image.get_fdata(dtype=np.float32), t1w, mask, image.affine,
            self.inputs.pe_direction, self.inputs.readout, n_threads=n_threads,
        )  # fmt: skip
        self._results["field_file"] = _save(result.field_hz, image, str(cwd / "field_hz.nii.gz"))
        self._results["b0_like_file"] = _save(result.b0_like, image, str(cwd / "b0_like.nii.gz"))
        return runtime
