"""The load cache (runtime/cache.py): written on the first load, used on the next, never stale, never fatal."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
from conftest import DOCS, QUERY

from qrr.runtime import Reranker
from qrr.runtime.cache import ENTRY_FILE, LoadCache
from qrr.runtime.errors import ArtifactError, LoadCacheWarning


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("QRR_CACHE", str(root))
    return root


@pytest.fixture(params=["fp32", "int8"])
def artifact(request, tmp_path) -> Path:
    """A per-test copy of the fp32 or the int8 artifact (int8: the weights onnxruntime pre-packs)."""
    return Path(shutil.copytree(request.getfixturevalue(f"{request.param}_artifact"), tmp_path / "artifact"))


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob("load/*/*") if not p.name.startswith("."))


def load(path: Path, **options) -> Reranker:
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoadCacheWarning)  # a test that expects one says so
        return Reranker(path, threads=1, **options)


def test_written_then_used_with_the_same_scores(artifact, cache):
    plain = load(artifact, load_cache=False)
    assert plain.session.load_cache == "off" and not cache.exists()
    expected = plain.score(QUERY, DOCS)
    first = load(artifact)
    assert first.session.load_cache == "written" and len(entries(cache)) == 1
    assert first.score(QUERY, DOCS) == expected
    second = load(artifact)
    assert second.session.load_cache == "used"
    assert second.score(QUERY, DOCS) == expected  # bit for bit: the same graph, the same packed weights
    record = json.loads((entries(cache)[0] / ENTRY_FILE).read_text())
    assert {"model.onnx", "model.onnx.data"} <= set(record["files"])


def test_a_changed_artifact_gets_a_new_entry_and_the_old_one_goes(artifact, cache):
    load(artifact)
    (old,) = entries(cache)
    data = artifact / "model.onnx.data"
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten: the same size, a new time
    again = load(artifact)
    assert again.session.load_cache == "written"
    (new,) = entries(cache)
    assert new != old and not old.exists()
    assert load(artifact).session.load_cache == "used"


def test_the_key_follows_files_and_manifest(artifact, tmp_path):
    files = ["model.onnx", "model.onnx.data", "tokenizer.json"]
    key = LoadCache.of(artifact, files, root=tmp_path)
    assert LoadCache.of(artifact, files, root=tmp_path) == key
    manifest = artifact / "qrr.json"
    st = manifest.stat()
    text = manifest.read_text()
    manifest.write_text(text.replace('"created": "', '"created": "1'))
    os.utime(manifest, ns=(st.st_atime_ns, st.st_mtime_ns))  # the bytes alone changed
    changed = LoadCache.of(artifact, files, root=tmp_path)
    assert changed.folder == key.folder and changed.artifact != key.artifact
    assert key.entry(backend="x", cpu="a") != key.entry(backend="x", cpu="b")


def test_a_damaged_entry_warns_and_loads_from_the_artifact(artifact, cache):
    expected = load(artifact, load_cache=False).score(QUERY, DOCS)
    load(artifact)
    (entry,) = entries(cache)
    graph = entry / "model.onnx"
    graph.write_bytes(b"\0garbage" * (graph.stat().st_size // 8) + b"\0" * (graph.stat().st_size % 8))  # same size
    with pytest.warns(LoadCacheWarning, match="unusable"):
        rr = Reranker(artifact, threads=1)
    assert rr.session.load_cache == "written"  # and written again
    assert rr.score(QUERY, DOCS) == expected
    assert load(artifact).session.load_cache == "used"


def test_a_truncated_entry_is_not_used(artifact, cache):
    load(artifact)
    (entry,) = entries(cache)
    with open(entry / "model.onnx.data", "r+b") as f:
        f.truncate(100)
    assert load(artifact).session.load_cache == "written"


def test_an_unwritable_cache_warns_and_loads(artifact, cache):
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("a file where the cache folder would be")
    expected = load(artifact, load_cache=False).score(QUERY, DOCS)
    with pytest.warns(LoadCacheWarning, match="could not write"):
        rr = Reranker(artifact, threads=1)
    assert rr.session.load_cache == "off" and rr.score(QUERY, DOCS) == expected


def test_a_full_disk_skips_the_entry_before_the_work(artifact, cache, monkeypatch):
    """Too little room for the entry (about twice the artifact): a warning that says so, one session built, not
    two (the backend's own write would fail only after optimizing the graph), and no entry left behind."""
    from collections import namedtuple

    import onnxruntime as ort

    from qrr.runtime import cache as cache_module

    expected = load(artifact, load_cache=False).score(QUERY, DOCS)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    built = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: built.append(1) or real(*a, **k))
    with pytest.warns(LoadCacheWarning, match=r"0\.0 GB free in .*the entry needs about .*set QRR_CACHE"):
        rr = Reranker(artifact, threads=1)
    assert rr.session.load_cache == "off" and len(built) == 1 and not entries(cache)
    assert rr.score(QUERY, DOCS) == expected


def test_the_entry_of_a_deleted_artifact_goes_with_the_next_write(artifact, cache, tmp_path):
    """An artifact folder that is deleted leaves its entry (about twice its size) behind until another entry is
    written; then it is removed, and the entries of artifacts that still exist stay."""
    kept = Path(shutil.copytree(artifact, tmp_path / "kept"))
    gone = Path(shutil.copytree(artifact, tmp_path / "gone"))
    later = Path(shutil.copytree(artifact, tmp_path / "later"))
    assert load(kept).session.load_cache == load(gone).session.load_cache == "written"
    assert len(entries(cache)) == 2
    shutil.rmtree(gone)
    assert load(later).session.load_cache == "written"
    sources = {json.loads((e / ENTRY_FILE).read_text())["source"] for e in entries(cache)}
    assert sources == {str(kept.resolve()), str(later.resolve())}
    assert load(kept).session.load_cache == "used"


def test_copied_weights_skip_the_cache(artifact, cache):
    assert load(artifact, copy_weights=True).session.load_cache == "off" and not cache.exists()


# -- the tokenizer loads while the backend does (session.open_session_while) ------------------------------


def test_onnxruntime_loads_inside_a_call_the_overlap_waits_for(int8_artifact):
    """The overlap rests on onnxruntime doing its load in a native call named in NATIVE_LOADS: if an upgrade
    renames it, the load would silently run in sequence again, so this fails instead."""
    import sys

    import onnxruntime as ort

    from qrr.runtime.session import NATIVE_LOADS

    calls: set[str] = set()

    def watch(frame, event, arg):
        if event == "c_call":
            calls.add(getattr(arg, "__name__", ""))

    sys.setprofile(watch)
    try:
        ort.InferenceSession(str(int8_artifact / "model.onnx"))
    finally:
        sys.setprofile(None)
    assert calls & NATIVE_LOADS


def fake_backend(monkeypatch, native_s: float, error: Exception | None = None) -> dict:
    """A backend whose load spends `native_s` in a native call (time.sleep, counted as one) and may fail."""
    import time

    from qrr.runtime import session

    seen: dict = {}

    class Slow:
        def __init__(self, model_file, spec):
            seen["load_start"] = time.perf_counter()
            time.sleep(native_s)
            seen["load_end"] = time.perf_counter()
            if error is not None:
                raise error

    monkeypatch.setattr(session, "backend_of", lambda model_file, format: Slow)
    monkeypatch.setattr(session, "NATIVE_LOADS", frozenset({"sleep"}))
    return seen


def test_work_runs_while_the_backend_is_in_its_native_load(monkeypatch, tmp_path):
    import time

    from qrr.runtime.session import SessionSpec, open_session_while

    seen = fake_backend(monkeypatch, 0.5)
    session, started = open_session_while(tmp_path / "model.onnx", "onnx", SessionSpec("cpu", 1, ("a", "b")),
                                          time.perf_counter)
    assert seen["load_start"] <= started < seen["load_end"]  # overlapped, not in sequence
    assert type(session).__name__ == "Slow"


def test_a_backend_without_a_native_load_runs_before_the_work(monkeypatch, tmp_path):
    import time

    from qrr.runtime import session

    seen = fake_backend(monkeypatch, 0.05)
    monkeypatch.setattr(session, "NATIVE_LOADS", frozenset({"no_such_call"}))
    _, started = session.open_session_while(tmp_path / "m", "onnx", session.SessionSpec("cpu", 1, ("a", "b")),
                                            time.perf_counter)
    assert started >= seen["load_end"]


def test_overlapped_errors_come_as_in_sequence(monkeypatch, tmp_path):
    """The work's error first (the tokenizer's, as before the overlap), then the load's; each is the original."""
    from qrr.runtime.errors import ArtifactError, InputError
    from qrr.runtime.session import SessionSpec, open_session_while

    spec = SessionSpec("cpu", 1, ("a", "b"))
    fake_backend(monkeypatch, 0.05, ArtifactError("the model is damaged"))

    def bad_work():
        raise InputError("max_length leaves no room")

    with pytest.raises(InputError, match="no room"):
        open_session_while(tmp_path / "m", "onnx", spec, bad_work)
    with pytest.raises(ArtifactError, match="damaged"):
        open_session_while(tmp_path / "m", "onnx", spec, lambda: 1)


def test_a_damaged_tokenizer_is_reported_after_an_overlapped_load(artifact):
    (artifact / "tokenizer.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="tokenizer"):
        Reranker(artifact, threads=1)
