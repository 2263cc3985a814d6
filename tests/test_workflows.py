"""Workflow factories: wiring reflects the options, sessions share one anatomy."""

from __future__ import annotations

import platform
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.sparse

from ketamine_dti.bids import ParticipantInputs, SessionInputs
from ketamine_dti.config import Config
from ketamine_dti.workflows.base import init_participant_wf, resolve_atlas
from ketamine_dti.workflows.dwi import init_dwi_preproc_wf


def _node_names(workflow):
    return {node.fullname.split(".")[-1] for node in workflow._graph.nodes()}


def _flat_names(workflow):
    return {name.split(".")[-1] for name in workflow.list_node_names()}


@pytest.mark.parametrize(
    ("denoise", "gibbs", "present", "absent"),
    [
        ("mppca", True, {"denoise", "unring"}, set()),
        ("none", True, {"unring"}, {"denoise"}),
        ("mppca", False, {"denoise"}, {"unring"}),
    ],
)
def test_dwi_preproc_options(denoise, gibbs, present, absent):
    workflow = init_dwi_preproc_wf(denoise=denoise, gibbs=gibbs)
    names = _node_names(workflow)
    assert {"check_dwi", "motion_correct", "brain_mask", "tensor_fit"} <= names
    assert present <= names
    assert not (absent & names)


@pytest.mark.parametrize(("denoise", "wired"), [("mppca", True), ("none", False)])
def test_restore_reads_the_mppca_noise_map_when_there_is_one(denoise, wired):
    workflow = init_dwi_preproc_wf(denoise=denoise, tensor_fit="restore")
    tensor = workflow.get_node("tensor_fit")
    sources = {
        (source.name, edge["connect"][0][0])
        for source, _, edge in workflow._graph.in_edges(tensor, data=True)
    }
    assert (("denoise", "noise_file") in sources) is wired
    assert tensor.inputs.method == "restore"
    assert "RESTORE [restore]" in workflow.desc
    assert ("MP-PCA noise map" in workflow.desc) is wired


def _sources(workflow, node):
    """(source node, source field, target field) of every connection into ``node``."""
    return {
        (source.name, out_field, in_field)
        for source, _, edge in workflow._graph.in_edges(node, data=True)
        for out_field, in_field in edge["connect"]
    }


@pytest.mark.parametrize("mode", ["replace", "none"])
def test_the_fits_read_the_series_after_slice_outlier_replacement(mode):
    workflow = init_dwi_preproc_wf(slice_outliers=mode, slice_axis=1)
    repol = workflow.get_node("slice_outliers")
    assert repol.inputs.replace is (mode == "replace") and repol.inputs.slice_axis == 1
    assert ("slice_outliers", "out_file", "in_file") in _sources(
        workflow, workflow.get_node("tensor_fit")
    )
    into_repol = _sources(workflow, repol)
    assert ("resample_dwi", "out_file", "in_file") in into_repol
    assert ("brain_mask", "out_file", "mask_file") in into_repol
    outputs = _sources(workflow, workflow.get_node("outputnode"))
    assert ("slice_outliers", "confounds_file", "confounds_file") in outputs
    assert ("slice_outliers", "out_file", "dwi_file") in outputs
    assert ("replaced by the prediction" in workflow.desc) is (mode == "replace")
    with pytest.raises(ValueError, match="slice_outliers"):
        init_dwi_preproc_wf(slice_outliers="drop")


def test_dwi_preproc_rejects_unknown_denoiser():
    with pytest.raises(ValueError, match="denoise"):
        init_dwi_preproc_wf(denoise="nlmeans")


def _participant(tmp_path: Path, sessions=("baseline", "24h")) -> ParticipantInputs:
    files = []
    for session in sessions:
        stem = tmp_path / f"sub-01_ses-{session}"
        for ext in ("_dwi.nii.gz", "_dwi.bval", "_dwi.bvec", "_T1w.nii.gz"):
            Path(f"{stem}{ext}").write_text("x")
        files.append(
            SessionInputs(
                subject="01",
                session=session,
                dwi=f"{stem}_dwi.nii.gz",
                bval=f"{stem}_dwi.bval",
                bvec=f"{stem}_dwi.bvec",
                t1w=f"{stem}_T1w.nii.gz",
            )
        )
    return ParticipantInputs(subject="01", sessions=tuple(files))


def test_participant_shares_one_anatomy(tmp_path):
    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant")
    workflow = init_participant_wf(_participant(tmp_path), config)
    names = workflow.list_node_names()
    # one template registration for the participant, one DWI chain per session
    assert sum(name.endswith("register_to_mni") for name in names) == 1
    assert sum(name.endswith("subject_template") for name in names) == 1
    assert sum(name.endswith("motion_correct") for name in names) == 2
    assert {"ses_baseline_wf", "ses_24h_wf", "anat_wf"} <= {n.split(".")[0] for n in names}
    sinks = [n for n in names if n.split(".")[-1].startswith("ds_")]
    assert any(n.endswith("ds_roi_table") for n in sinks)
    assert any(n.endswith("ds_qc_table") for n in sinks)


def test_free_water_fits_the_preprocessed_series_with_a_gray_matter_reference(tmp_path):
    """Free water reads the series the tensor fit reads (after slice-outlier replacement) and
    its tissue b0 reference from the subject template's gray matter, mapped through the
    session's coregistration: so it runs in the session, after it."""
    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant")
    session = init_participant_wf(_participant(tmp_path), config).get_node("ses_baseline_wf")
    into_fw = _sources(session, session.get_node("free_water"))
    assert ("dwi_preproc_wf", "outputnode.dwi_file", "in_file") in into_fw
    assert ("gray_matter_reference", "out_file", "gray_matter_file") in into_fw
    into_reference = _sources(session, session.get_node("gray_matter_reference"))
    assert ("inputnode", "roi_gm_file", "gm_file") in into_reference
    assert ("dwi_to_template_xfm", "out_file", "from_dwi_to_template") in into_reference
    preproc = session.get_node("dwi_preproc_wf")
    assert ("slice_outliers", "out_file", "dwi_file") in _sources(
        preproc, preproc.get_node("outputnode")
    )
    assert ("free_water", "md_file", "fw_md_file") in _sources(
        session, session.get_node("sample_rois")
    )


def test_single_session_participant_builds(tmp_path):
    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant")
    workflow = init_participant_wf(_participant(tmp_path, ("24h",)), config)
    assert sum(n.endswith("motion_correct") for n in workflow.list_node_names()) == 1


def test_resolve_atlas_bundled_and_custom(tmp_path):
    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant")
    atlas, names = resolve_atlas(config)
    assert atlas.exists() and len(names) == 7
    custom = tmp_path / "my_dseg.nii.gz"
    custom.write_bytes(atlas.read_bytes())
    (tmp_path / "my_dseg.tsv").write_text("index\tname\n1\tleft\n2\tright\n")
    from dataclasses import replace

    _, custom_names = resolve_atlas(replace(config, roi_atlas=custom))
    assert custom_names == ("left", "right")


def test_independent_anatomy_has_one_registration_per_session(tmp_path):
    """The benchmark's comparison design: per-session template registrations."""
    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant")
    workflow = init_participant_wf(_participant(tmp_path), config, independent_anatomy=True)
    names = workflow.list_node_names()
    assert sum(name.endswith("register_to_mni") for name in names) == 2


def test_run_participant_level_reports_each_broken_participant(tmp_path):
    """Bad inputs fail per participant with the file named; the run itself carries on."""
    import json

    import nibabel as nib
    import numpy as np

    from ketamine_dti.workflows.base import run_participant_level

    bids_dir = tmp_path / "bids"
    (bids_dir).mkdir()
    (bids_dir / "dataset_description.json").write_text(
        json.dumps({"Name": "broken", "BIDSVersion": "1.10.0"})
    )
    for subject in ("01", "02"):
        for folder in ("dwi", "anat"):
            (bids_dir / f"sub-{subject}/ses-baseline/{folder}").mkdir(parents=True)
        prefix = bids_dir / f"sub-{subject}/ses-baseline"
        shape = (4, 4, 4, 3) if subject == "01" else (4, 4, 4)  # sub-02: a 3-D "DWI"
        nib.save(
            nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)),
            prefix / f"dwi/sub-{subject}_ses-baseline_dwi.nii.gz",
        )
        nib.save(
            nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)),
            prefix / f"anat/sub-{subject}_ses-baseline_T1w.nii.gz",
        )
        (prefix / f"dwi/sub-{subject}_ses-baseline_dwi.bvec").write_text("0 1 0\n0 0 1\n0 0 0\n")
        if subject == "02":
            (prefix / f"dwi/sub-{subject}_ses-baseline_dwi.bval").write_text("0 1000 1000\n")
    config = Config(
        bids_dir=bids_dir,
        output_dir=tmp_path / "out",
        analysis_level="participant",
        work_dir=tmp_path / "work",
    )
    failures = dict(run_participant_level(config))
    assert set(failures) == {"01", "02"}
    assert "sub-01_ses-baseline_dwi.nii.gz: no .bval file found" in failures["01"]
    assert "sub-02_ses-baseline_dwi.nii.gz: DWI is 3-D" in failures["02"]
    # both fail the checks that run before any processing, so nothing is written
    assert not (tmp_path / "out" / "dataset_description.json").exists()


def test_dwi_preproc_defaults_follow_the_config():
    names = _node_names(init_dwi_preproc_wf())
    assert ("unring" in names) == Config.gibbs
    assert ("denoise" in names) == (Config.denoise == "mppca")


def _config(tmp_path, **settings) -> Config:
    return Config(
        bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant", **settings
    )


def test_methods_cite_only_the_steps_that_run(tmp_path):
    from ketamine_dti.workflows.boilerplate import methods_text

    participant = _participant(tmp_path)
    lean = methods_text(init_participant_wf(participant, _config(tmp_path, denoise="none")))
    assert "Veraart" not in lean and "Kellner" not in lean
    assert "[mppca]" not in lean and "[gibbs]" not in lean
    assert "Marchenko" not in lean and "Gibbs" not in lean
    assert lean.count("**Diffusion.**") == 1, "sessions share their paragraphs"
    assert lean.index("**Anatomy.**") < lean.index("**Diffusion.**") < lean.index("**Regions.**")
    full = methods_text(init_participant_wf(participant, _config(tmp_path, gibbs=True)))
    assert "Veraart" in full and "Kellner" in full
    # every reference listed is cited in the text, and every citation is listed
    for text in (lean, full):
        body, references = text.split("## References")
        keys = [line.split("]")[0][3:] for line in references.strip().splitlines()]
        assert keys and all(f"[{key}" in body or f", {key}" in body for key in keys)


def _sinks(workflow) -> dict[str, object]:
    return {
        name.split(".")[-1]: workflow.get_node(name)
        for name in workflow.list_node_names()
        if name.split(".")[-1].startswith("ds_")
    }


def test_every_output_comes_from_the_specification(tmp_path):
    from ketamine_dti.derivatives import ANAT_OUTPUTS, session_output_keys

    for denoise in ("mppca", "none"):
        workflow = init_participant_wf(_participant(tmp_path), _config(tmp_path, denoise=denoise))
        sinks = _sinks(workflow)
        expected = {f"ds_{key}" for key in (*session_output_keys(denoise), *ANAT_OUTPUTS)}
        assert set(sinks) == expected
        assert ("ds_noise" in sinks) == (denoise == "mppca")
    names = workflow.list_node_names()
    assert sum(name.endswith(".ds_roi_table") for name in names) == 2  # one per session


def test_custom_atlas_is_published_under_its_own_label(tmp_path):
    from dataclasses import replace

    from ketamine_dti.errors import InputError

    config = _config(tmp_path)
    bundled, _ = resolve_atlas(config)
    custom = tmp_path / "tpl-MNI152NLin6Asym_atlas-hoa_dseg.nii.gz"
    custom.write_bytes(bundled.read_bytes())
    (tmp_path / "tpl-MNI152NLin6Asym_atlas-hoa_dseg.tsv").write_text("index\tname\n1\tleft\n")
    for settings, label in (
        ({}, "ketamine7"),
        ({"roi_atlas": custom}, "hoa"),
        ({"roi_atlas": custom, "roi_atlas_label": "mine"}, "mine"),
    ):
        workflow = init_participant_wf(_participant(tmp_path), replace(config, **settings))
        for name, sink in _sinks(workflow).items():
            if name.startswith("ds_atlas"):
                assert sink.inputs.entities["atlas"] == label
    unnamed = tmp_path / "my_dseg.nii.gz"
    with pytest.raises(InputError, match="--roi-atlas-label"):
        replace(config, roi_atlas=unnamed).atlas_label  # noqa: B018


def test_chain_seconds_is_each_nodes_longest_chain_to_the_end():
    import networkx as nx

    from ketamine_dti.workflows.scheduling import chain_seconds

    graph = nx.DiGraph([("a", "b"), ("b", "d"), ("a", "c"), ("c", "d"), ("e", "d")])
    order = ["e", "a", "c", "b", "d"]
    seconds = {"a": 1, "b": 5, "c": 2, "d": 10, "e": 3}.get
    assert chain_seconds(graph, order, seconds) == [13, 16, 12, 15, 10]


def test_every_expected_step_is_a_node_of_the_participant_workflow(tmp_path):
    """The scheduler ranks by node name: a renamed step must not silently lose its rank."""
    from ketamine_dti.fieldmaps import EpiImage, FieldmapInputs, PhaseEncoding
    from ketamine_dti.workflows.scheduling import STEP_SECONDS

    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant")
    names = _flat_names(init_participant_wf(_participant(tmp_path), config))
    (tmp_path / "epi.nii.gz").write_text("x")
    reverse = EpiImage(str(tmp_path / "epi.nii.gz"), PhaseEncoding("j", 0.05))
    pepolar = FieldmapInputs("dwi.nii.gz", "pepolar", PhaseEncoding("j-", 0.05), epi=(reverse,))
    names |= _flat_names(init_dwi_preproc_wf(fieldmap=pepolar))
    assert set(STEP_SECONDS) <= names, set(STEP_SECONDS) - names


@pytest.mark.parametrize("gibbs", [True, False])
def test_with_gibbs_the_reverse_pe_images_are_unrung_too(tmp_path, gibbs):
    """The pepolar pair must ring alike: the DWI's b0 is unrung, so the reverse images are."""
    from ketamine_dti.fieldmaps import EpiImage, FieldmapInputs, PhaseEncoding

    (tmp_path / "epi.nii.gz").write_text("x")
    reverse = EpiImage(str(tmp_path / "epi.nii.gz"), PhaseEncoding("j", 0.05))
    pepolar = FieldmapInputs("dwi.nii.gz", "pepolar", PhaseEncoding("j-", 0.05), epi=(reverse,))
    workflow = init_dwi_preproc_wf(gibbs=gibbs, fieldmap=pepolar)
    estimate = workflow.get_node("estimate_susceptibility")
    feeds = {
        (u.name, link[0]) for u, _, data in workflow._graph.in_edges(estimate, data=True)
        for link in data["connect"]
    }  # fmt: skip
    assert (("unring_reverse", "out_file") in feeds) is gibbs
    assert ("unring", "out_file") in feeds if gibbs else ("denoise", "out_file") in feeds
    if gibbs:
        unring = workflow.get_node("unring_reverse")
        assert unring.inputs.in_file == [str(tmp_path / "epi.nii.gz")]
        assert unring.inputs.b0_only_bval == [""]  # an fmap EPI: every volume


def test_a_reverse_dwi_series_has_only_its_b0s_unrung(tmp_path):
    """A reverse-PE DWI series serves the field through its b0s alone, so only they are
    unrung; the estimator then reads the unrung file's every volume."""
    from ketamine_dti.fieldmaps import EpiImage, FieldmapInputs, PhaseEncoding
    from ketamine_dti.interfaces.dwi import Unring

    rng = np.random.default_rng(3)
    series = rng.uniform(100, 200, (12, 12, 6, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(series, np.eye(4)), tmp_path / "dwi_pa.nii.gz")
    (tmp_path / "dwi_pa.bval").write_text("0 1000 5 1000 1000\n")
    reverse = EpiImage(str(tmp_path / "dwi_pa.nii.gz"), PhaseEncoding("j", 0.05),
                       bval=str(tmp_path / "dwi_pa.bval"))  # fmt: skip
    pepolar = FieldmapInputs("dwi.nii.gz", "pepolar", PhaseEncoding("j-", 0.05), epi=(reverse,))
    workflow = init_dwi_preproc_wf(gibbs=True, fieldmap=pepolar)
    unring = workflow.get_node("unring_reverse")
    assert unring.inputs.b0_only_bval == [str(tmp_path / "dwi_pa.bval")]
    assert workflow.get_node("estimate_susceptibility").inputs.reverse_bvals == [""]

    result = Unring(in_file=str(tmp_path / "dwi_pa.nii.gz"),
                    b0_only_bval=str(tmp_path / "dwi_pa.bval")).run(cwd=tmp_path)  # fmt: skip
    unrung = nib.load(result.outputs.out_file).get_fdata()
    assert unrung.shape == (12, 12, 6, 2)  # volumes 0 and 2 (b 0 and 5)
    (tmp_path / "all").mkdir()
    whole = Unring(in_file=str(tmp_path / "dwi_pa.nii.gz")).run(cwd=tmp_path / "all")
    np.testing.assert_allclose(
        unrung, nib.load(whole.outputs.out_file).get_fdata()[..., [0, 2]], rtol=1e-6
    )


def _record(name, log, after=None):
    with open(log, "a") as handle:
        handle.write(name + "\n")
    return name


def _free_a_block(megabytes):
    """Allocate and free a block; (pid, resident MB, this process's allocator setting)."""
    import os

    import numpy as np

    from ketamine_dti.allocator import kept_freed_bytes

    block = np.ones(megabytes * 125_000)
    del block
    with open("/proc/self/statm") as statm:
        resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    return os.getpid(), resident, kept_freed_bytes()


def _resident_mb(after):
    import os

    with open("/proc/self/statm") as statm:
        return os.getpid(), int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_each_step_runs_in_a_process_of_its_own_that_keeps_the_allocator_setting(tmp_path):
    """One worker: a step frees 600 MB, which its process keeps (the main process's
    allocator setting reached it); the next step runs in another process, without them."""
    import os

    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe

    from ketamine_dti.allocator import KEEP_FREE_BYTES, keep_freed_memory
    from ketamine_dti.workflows.scheduling import CriticalPathPlugin

    assert keep_freed_memory()  # as run_participants does before the graph runs
    free = pe.Node(
        Function(input_names=["megabytes"], output_names=["out"], function=_free_a_block),
        name="free",
    )
    free.inputs.megabytes = 600
    after = pe.Node(
        Function(input_names=["after"], output_names=["out"], function=_resident_mb),
        name="after",
    )
    workflow = pe.Workflow(name="fresh", base_dir=str(tmp_path))
    workflow.connect(free, "out", after, "after")
    graph = workflow.run(plugin=CriticalPathPlugin(plugin_args={"n_procs": 1}))
    (pid_free, held, kept), (pid_after, start) = (
        next(n for n in graph.nodes() if n.name == name).result.outputs.out
        for name in ("free", "after")
    )
    assert kept == KEEP_FREE_BYTES
    assert len({pid_free, pid_after, os.getpid()}) == 3
    assert held > 600 and held - start > 500


def _kernels_ready(x):
    """(compiled signatures of two App kernels, numba's threading layer) in this process."""
    import numba

    from ketamine_dti.dwi import series_registration, tensor

    compiled = (
        len(tensor._fit_kernel.signatures),
        len(series_registration._normal_terms.signatures),
    )
    return compiled, numba.config.THREADING_LAYER


def test_a_step_process_starts_with_the_kernels_its_server_loaded(tmp_path):
    """A MultiProc step's process finds the DWI kernels (a parallel and a serial one) already
    compiled, before it calls any, under the fork-safe threading layer the server ran them with."""
    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe

    from ketamine_dti.workflows.scheduling import CriticalPathPlugin

    node = pe.Node(
        Function(input_names=["x"], output_names=["out"], function=_kernels_ready), name="k"
    )
    node.inputs.x = 0
    workflow = pe.Workflow(name="kernels", base_dir=str(tmp_path))
    workflow.add_nodes([node])
    graph = workflow.run(plugin=CriticalPathPlugin(plugin_args={"n_procs": 1}))
    (tensor_signatures, registration_signatures), layer = next(
        iter(graph.nodes())
    ).result.outputs.out
    assert tensor_signatures > 0 and registration_signatures > 0
    assert layer == "workqueue"


def test_the_scheduler_starts_the_longest_chain_first(tmp_path):
    """One process and, ready at the start, a short job first in the graph's order and the
    head of a long chain (declared seconds): the long chain runs first, and a MapNode's jobs
    keep their MapNode's rank."""
    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe

    from ketamine_dti.workflows.scheduling import CriticalPathPlugin

    log = tmp_path / "order.txt"

    def node(name, mapped=False):
        interface = Function(input_names=["name", "log", "after"], function=_record)
        made = (
            pe.MapNode(interface, iterfield=["name"], name=name)
            if mapped
            else pe.Node(interface, name=name)
        )
        made.inputs.name = [f"{name}{i}" for i in range(2)] if mapped else name
        made.inputs.log = str(log)
        return made

    workflow = pe.Workflow(name="order", base_dir=str(tmp_path))
    workflow.add_nodes([node("short")])
    workflow.connect(node("long_a", mapped=True), "out", node("long_b"), "after")
    seconds = {"short": 1, "long_a": 100, "long_b": 100}
    passes = []

    class Checked(CriticalPathPlugin):
        """Every pass: the cached unfinished-input counts equal a fresh sum of the matrix."""

        def _send_procs_to_workers(self, updatehash=False, graph=None):
            fresh = scipy.sparse.lil_matrix(self.depidx).tocsr().sum(axis=0)
            passes.append(np.array_equal(self.depidx.sum(0), fresh))
            super()._send_procs_to_workers(updatehash=updatehash, graph=graph)

    workflow.run(plugin=Checked(plugin_args={"n_procs": 1, "step_seconds": seconds}))
    # first runs only: a MapNode's own job runs its subnodes again when it collects them
    started = list(dict.fromkeys(log.read_text().split()))
    assert started == ["long_a0", "long_a1", "long_b", "short"]
    assert len(passes) > 4 and all(passes)
