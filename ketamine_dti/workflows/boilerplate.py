"""Methods boilerplate (logs/CITATION.md), built from the workflow that runs.

Each factory builds a :class:`LiterateWorkflow` carrying the sentences that describe it (as
niworkflows' LiterateWorkflow); :func:`methods_text` collects them in execution order and lists
only the references those sentences cite, so a step that is switched off is never cited.
"""

from __future__ import annotations

import re

import networkx as nx
from nipype.pipeline import engine as pe

from ketamine_dti import __version__

REFERENCES = {
    "nipype": "Gorgolewski K. et al. (2011) Nipype: a flexible, lightweight and extensible "
    "neuroimaging data processing framework in Python. Front Neuroinform 5:13.",
    "dipy": "Garyfallidis E. et al. (2014) DIPY, a library for the analysis of diffusion MRI "
    "data. Front Neuroinform 8:8.",
    "ants": "Avants B.B. et al. (2008) Symmetric diffeomorphic image registration with "
    "cross-correlation. Med Image Anal 12:26-41.",
    "n4": "Tustison N.J. et al. (2010) N4ITK: improved N3 bias correction. IEEE TMI 29:1310-20.",
    "colin27": "Holmes C.J. et al. (1998) Enhancement of MR images using registration for signal "
    "averaging. J Comput Assist Tomogr 22:324-33 (Colin27, whole-head brain-extraction prior).",
    "atropos": "Avants B.B. et al. (2011) An open source multivariate framework for n-tissue "
    "segmentation with evaluation on public data. Neuroinformatics 9:381-400.",
    "mppca": "Veraart J. et al. (2016) Denoising of diffusion MRI using random matrix theory. "
    "NeuroImage 142:394-406.",
    "gibbs": "Kellner E. et al. (2016) Gibbs-ringing artifact removal based on local subvoxel-"
    "shifts. Magn Reson Med 76:1574-81.",
    "ic_gn": "Baker S., Matthews I. (2004) Lucas-Kanade 20 years on: a unifying framework. "
    "Int J Comput Vis 56:221-55.",
    "bbr": "Greve D.N., Fischl B. (2009) Accurate and robust brain image alignment using "
    "boundary-based registration. NeuroImage 48(1):63-72.",
    "mattes": "Mattes D. et al. (2003) PET-CT image registration in the chest using free-form "
    "deformations. IEEE Trans Med Imaging 22:120-8.",
    "bvec_rotation": "Leemans A., Jones D.K. (2009) The B-matrix must be rotated when "
    "correcting for subject motion in DTI data. Magn Reson Med 61:1336-49.",
    "fd": "Power J.D. et al. (2012) Spurious but systematic correlations in functional "
    "connectivity MRI networks arise from subject motion. NeuroImage 59:2142-54.",
    "wls": "Chung S. et al. (2006) Comparison of bootstrap approaches for estimation of "
    "uncertainties of DTI parameters. NeuroImage 33:531-41.",
    "repol": "Andersson J.L.R. et al. (2016) Incorporating outlier detection and replacement "
    "into a non-parametric framework for movement and distortion correction of diffusion MR "
    "images. NeuroImage 141:556-72.",
    "restore": "Chang L.-C., Jones D.K., Pierpaoli C. (2005) RESTORE: robust estimation of "
    "tensors by outlier rejection. Magn Reson Med 53:1088-95.",
    "sh_laplace_beltrami": "Descoteaux M. et al. (2007) Regularized, fast, and robust "
    "analytical Q-ball imaging. Magn Reson Med 58:497-510.",
    "free_water": "Pasternak O. et al. (2009) Free water elimination and mapping from "
    "diffusion MRI. Magn Reson Med 62:717-30.",
    "free_water_multishell": "Hoy A.R. et al. (2014) Optimization of a free water elimination "
    "two-compartment model for diffusion tensor imaging. NeuroImage 103:323-33.",
    "free_water_init": "Golub M. et al. (2021) Free-water DTI estimates from single b-value data "
    "might seem plausible but must be interpreted with care. Magn Reson Med 85:2173-84.",
    "topup": "Andersson J.L.R., Skare S., Ashburner J. (2003) How to correct susceptibility "
    "distortions in spin-echo echo-planar images: application to diffusion tensor imaging. "
    "NeuroImage 20:870-88",
    "hysco": "Ruthotto L. et al. (2012) Diffeomorphic susceptibility artifact correction of "
    "diffusion-weighted magnetic resonance images. Phys Med Biol 57:5715-31",
    "syn_sdc": "Treiber J.M. et al. (2016) Characterization and correction of geometric "
    "distortions in 814 diffusion weighted images. PLoS ONE 11:e0152472; as implemented in "
    "sdcflows (Esteban O. et al., SDCFlows: susceptibility distortion correction workflows, "
    "https://www.nipreps.org/sdcflows)",
    "halfway": "Reuter M. et al. (2012) Within-subject template estimation for unbiased "
    "longitudinal image analysis. NeuroImage 61:1402-18.",
    "mni": "Evans A.C. et al. (2012) Brain templates and atlases. NeuroImage 62:911-22 "
    "(MNI152NLin6Asym, via TemplateFlow: Ciric R. et al. (2022) Nat Methods 19:1568-71).",
    "harvard_oxford": "Desikan R.S. et al. (2006) An automated labeling system for subdividing "
    "the human cerebral cortex on MRI scans. NeuroImage 31:968-80 (Harvard-Oxford atlas).",
    "talairach": "Lancaster J.L. et al. (2000) Automated Talairach atlas labels for functional "
    "brain mapping. Hum Brain Mapp 10:120-31.",
    "bids_derivatives": "Gorgolewski K.J. et al. (2016) The brain imaging data structure. "
    "Sci Data 3:160044.",
}


#: A citation: reference keys in brackets, e.g. [harvard_oxford, talairach].
_CITATION = re.compile(r"\[([a-z0-9_]+(?:, [a-z0-9_]+)*)\]")


class LiterateWorkflow(pe.Workflow):
    """A Workflow with its methods text: ``desc`` comes before its sub-workflows' text,
    ``postdesc`` after it. Keys in brackets cite REFERENCES."""

    def __init__(self, name: str, desc: str = "", postdesc: str = "", base_dir=None):
        super().__init__(name, base_dir=base_dir)
        self.desc = desc
        self.postdesc = postdesc


def describe(workflow: pe.Workflow) -> list[str]:
    """The paragraphs of a workflow and its sub-workflows, in execution (topological) order."""
    paragraphs = [getattr(workflow, "desc", "")]
    for node in nx.topological_sort(workflow._graph):
        if isinstance(node, pe.Workflow):
            paragraphs += describe(node)
    paragraphs.append(getattr(workflow, "postdesc", ""))
    return [paragraph for paragraph in paragraphs if paragraph]


def cited_keys(text: str) -> list[str]:
    """Reference keys cited in `text`, in REFERENCES order; unknown keys raise KeyError."""
    cited = {key for group in _CITATION.findall(text) for key in group.split(", ")}
    unknown = cited - set(REFERENCES)
    if unknown:
        raise KeyError(f"methods text cites unknown references {sorted(unknown)}")
    return [key for key in REFERENCES if key in cited]


def methods_text(workflow: pe.Workflow) -> str:
    """Markdown methods of the steps in `workflow` (sessions share paragraphs), then the
    references they cite."""
    paragraphs = list(dict.fromkeys(describe(workflow)))
    text = "\n\n".join(paragraphs)
    references = "\n".join(f"- [{key}] {REFERENCES[key]}" for key in cited_keys(text))
    return (
        f"# Methods (generated by ketamine-dti {__version__})\n\n{text}\n\n"
        f"## References\n{references}\n"
    )
