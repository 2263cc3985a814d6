"""The work directory's cache is reused only by the code that made it (ketamine_dti.work_cache)."""

from __future__ import annotations

import json

from ketamine_dti.work_cache import STAMP_SUFFIX, claim_cache, code_fingerprint


def _package(root, text="x = 1\n"):
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "a.py").write_text("y = 2\n")
    (root / "sub" / "b.py").write_text(text)
    return root


def test_the_fingerprint_follows_the_sources_and_the_libraries(tmp_path):
    package = _package(tmp_path / "pkg")
    first = code_fingerprint(package, libraries=("numpy",))
    assert code_fingerprint(package, libraries=("numpy",)) == first
    (package / "notes.txt").write_text("not code")
    assert code_fingerprint(package, libraries=("numpy",)) == first
    _package(package, text="x = 2\n")
    edited = code_fingerprint(package, libraries=("numpy",))
    assert edited != first
    assert code_fingerprint(package, libraries=("numpy", "scipy")) != edited
    # the App's own fingerprint is the same from call to call
    assert code_fingerprint() == code_fingerprint()


def test_a_cache_of_other_code_is_removed_and_one_of_this_code_kept(tmp_path):
    cache = tmp_path / "work" / "ketamine_dti_wf"
    stamp = cache.with_name(cache.name + STAMP_SUFFIX)
    assert claim_cache(cache, "aaa") is False  # a fresh work directory
    assert json.loads(stamp.read_text())["fingerprint"] == "aaa"
    (cache / "node").mkdir(parents=True)
    (cache / "node" / "result.pklz").write_bytes(b"cached")
    assert claim_cache(cache, "aaa") is False  # same code: resumed
    assert (cache / "node" / "result.pklz").read_bytes() == b"cached"
    assert claim_cache(cache, "bbb") is True  # other code: nothing is reused
    assert not (cache / "node").exists()
    assert json.loads(stamp.read_text())["fingerprint"] == "bbb"


def test_an_unstamped_cache_counts_as_other_code(tmp_path):
    cache = tmp_path / "ketamine_dti_wf"
    (cache / "node").mkdir(parents=True)  # left by a version that did not stamp its cache
    assert claim_cache(cache, "aaa") is True
    assert not (cache / "node").exists()
    stamp = cache.with_name(cache.name + STAMP_SUFFIX)
    stamp.write_text("{not json")  # a damaged stamp: the same
    (cache / "node").mkdir(parents=True)
    assert claim_cache(cache, "aaa") is True
