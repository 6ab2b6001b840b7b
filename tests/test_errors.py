"""Bad input and bad artifacts end in one clear QrrError, never a deep traceback or silent garbage."""

from __future__ import annotations

import json

import pytest
from conftest import DOCS, QUERY, rewrite_in_place

from qrr.runtime import ArtifactError, DeviceError, InputError, Reranker
from qrr.runtime.manifest import FORMAT_VERSION


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and text
    return text


def test_missing_folder(tmp_path):
    with pytest.raises(ArtifactError) as e:
        Reranker(tmp_path / "nope")
    assert "not found" in one_line(e)


def test_folder_without_manifest(tmp_path):
    with pytest.raises(ArtifactError) as e:
        Reranker(tmp_path)
    assert "qrr.json" in one_line(e)


def test_corrupted_manifest(artifact_copy):
    (artifact_copy / "qrr.json").write_text("{not json")
    with pytest.raises(ArtifactError) as e:
        Reranker(artifact_copy)
    assert "corrupted" in one_line(e)


def test_newer_manifest_version(artifact_copy):
    path = artifact_copy / "qrr.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as e:
        Reranker(artifact_copy)
    assert "newer qrr" in one_line(e) and "upgrade" in one_line(e)


def test_manifest_missing_keys(artifact_copy):
    path = artifact_copy / "qrr.json"
    manifest = json.loads(path.read_text())
    del manifest["prompt"]["suffix"], manifest["pad_token_id"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as e:
        Reranker(artifact_copy)
    assert "pad_token_id" in one_line(e) and "prompt.suffix" in one_line(e)


def test_missing_model_file(artifact_copy):
    (artifact_copy / "model.onnx.data").unlink()
    with pytest.raises(ArtifactError) as e:
        Reranker(artifact_copy)
    assert "missing" in one_line(e)


def test_truncated_weights(artifact_copy):
    data = artifact_copy / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(ArtifactError) as e:
        Reranker(artifact_copy)
    assert "corrupted" in one_line(e)


def test_garbage_graph_of_the_right_size(artifact_copy):
    graph = artifact_copy / "model.onnx"
    graph.write_bytes(b"\x07" * graph.stat().st_size)
    with pytest.raises(ArtifactError) as e:
        Reranker(artifact_copy)
    assert "onnxruntime cannot load" in one_line(e)


def test_corrupted_tokenizer(artifact_copy):
    tok = artifact_copy / "tokenizer.json"
    size = tok.stat().st_size
    tok.write_bytes(b"{" + b" " * (size - 1))
    with pytest.raises(ArtifactError) as e:
        Reranker(artifact_copy)
    assert "tokenizer" in one_line(e)


@pytest.fixture(scope="module")
def rr(fp32_artifact):
    return Reranker(fp32_artifact)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda rr: rr.score(42, DOCS), "query must be a string"),
        (lambda rr: rr.score(QUERY, "just one string"), "single string"),
        (lambda rr: rr.score(QUERY, ["ok", None]), "documents[1] must be a string, got NoneType"),
        (lambda rr: rr.score(QUERY, 7), "documents must be a list"),
        (lambda rr: rr.score_pairs([(QUERY,)]), "pairs[0] must be a (query, document)"),
        (lambda rr: rr.score_pairs([(QUERY, b"bytes")]), "pairs[0][1] (document) must be a string"),
        (lambda rr: rr.score(QUERY, DOCS, instruction=3), "instruction must be a string"),
        (lambda rr: rr.rerank(QUERY, DOCS, top_k=-1), "top_k"),
        # lone surrogates (JSON allows "\ud800"; Python strings hold them) are refused, never replaced
        (lambda rr: rr.score("q\ud800", DOCS), "query holds a lone surrogate (U+D800 at character 1)"),
        (lambda rr: rr.score(QUERY, ["ok", "x\udcff"]), "documents[1] holds a lone surrogate (U+DCFF"),
        (lambda rr: rr.score(QUERY, DOCS, instruction="\udfff"), "instruction holds a lone surrogate"),
        (lambda rr: rr.score_pairs([(QUERY, "\ud83d")]), "pairs[0][1] (document) holds a lone surrogate"),
        (lambda rr: rr.truncation(QUERY, ["\ud800"]), "documents[0] holds a lone surrogate"),
    ],
)
def test_bad_inputs(rr, call, message):
    with pytest.raises(InputError) as e:
        call(rr)
    assert message in one_line(e)


def test_bad_options(fp32_artifact):
    with pytest.raises(InputError, match="unknown device"):
        Reranker(fp32_artifact, device="tpu")
    with pytest.raises(InputError, match="threads"):
        Reranker(fp32_artifact, threads=0)
    with pytest.raises(InputError, match="no room for a document"):
        Reranker(fp32_artifact, max_length=10)


def test_missing_provider_names_the_install(fp32_artifact):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(DeviceError) as e:
        Reranker(fp32_artifact, device="cuda:0")
    assert "onnxruntime-gpu" in one_line(e) and "CPUExecutionProvider" in one_line(e)


def test_older_manifest_version(artifact_copy):
    path = artifact_copy / "qrr.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = FORMAT_VERSION - 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as e:
        Reranker(artifact_copy)
    assert "older qrr" in one_line(e) and "re-export" in one_line(e)


def test_session_table_refuses_an_unknown_format(tmp_path):
    from qrr.runtime.session import BACKENDS, SessionSpec, open_session

    with pytest.raises(ArtifactError) as e:
        open_session(tmp_path / "model.tflite", "tflite", SessionSpec("cpu", 1, ("score_logit", "present")))
    assert "'tflite'" in one_line(e) and all(name in one_line(e) for name in BACKENDS)


def test_session_table_names_a_session_class_per_format():
    import importlib

    from qrr.runtime.manifest import FORMATS
    from qrr.runtime.session import BACKENDS

    assert set(BACKENDS) == set(FORMATS)  # every format the manifest accepts has a backend
    for module, name in BACKENDS.values():
        backend = getattr(importlib.import_module(f"qrr.runtime.{module}"), name)
        assert callable(backend.run)


def test_files_changed_under_a_loaded_reranker(artifact_copy):
    """With copy_weights (as `qrr serve` runs) the weights are read into memory: rewriting the artifact in place
    (cp, a re-export) does not touch a running scorer (memory-mapped weights died of SIGBUS here), nor does
    removing it."""
    rr = Reranker(artifact_copy, copy_weights=True)
    assert rr.session.__dict__.get("_weights") is not None
    before = rr.score(QUERY, DOCS)
    rewrite_in_place(artifact_copy)
    assert rr.score(QUERY, DOCS) == before
    for path in artifact_copy.iterdir():
        path.unlink()
    assert rr.score(QUERY, DOCS) == before


def test_gqa_artifact_on_an_onnxruntime_that_cannot_run_it(artifact_copy, monkeypatch):
    """onnxruntime before 1.32 (onnxruntime-gpu's newest is 1.31.1) has no query_seqlens input: its own error
    would call the artifact invalid; the runtime says which version runs it and what else to do."""
    import onnxruntime as ort

    manifest = artifact_copy / "qrr.json"
    m = json.loads(manifest.read_text())
    m["attention"] = "GroupQueryAttention (com.microsoft)"
    manifest.write_text(json.dumps(m))
    monkeypatch.setattr(ort, "__version__", "1.31.1")
    with pytest.raises(DeviceError) as e:
        Reranker(artifact_copy)
    text = one_line(e)
    assert "onnxruntime 1.32" in text and "1.31.1" in text and "--attention ops" in text
    monkeypatch.setattr(ort, "__version__", "1.32.0.dev20261101+cu13")
    assert len(Reranker(artifact_copy).score(QUERY, DOCS)) == len(DOCS)
