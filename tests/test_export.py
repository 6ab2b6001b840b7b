"""export/: checkpoint checks, the hub path up to the network call, the graph, the manifest, validation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import needs_export, needs_gqa

needs_export()

import onnx  # noqa: E402

from qrr.export import CheckpointError, ValidationError, export_onnx, validate_artifact  # noqa: E402
from qrr.export import checkpoint as ckpt  # noqa: E402
from qrr.export.progress import Progress  # noqa: E402
from qrr.runtime import InputError, QrrError, load_manifest  # noqa: E402

pytestmark = pytest.mark.slow

QUIET = Progress(enabled=False)


def test_manifest_records_what_the_runtime_needs(fp32_artifact, standin):
    m = load_manifest(fp32_artifact)
    assert m["format"] == "onnx" and m["precision"] == "fp32" and m["quantization"] is None
    assert m["inputs"] == ["input_ids", "attention_mask", "past_key_values", "present_length"]
    assert m["outputs"] == ["score_logit", "present"]
    vocab = json.loads((standin / "tokenizer.json").read_text())["model"]["vocab"]
    assert (m["yes_token_id"], m["no_token_id"]) == (vocab["yes"], vocab["no"])
    assert m["prompt"]["template"] == "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
    assert m["max_length"] == 8192 and m["source"]["checkpoint"] == str(standin)
    assert set(m["files"]) == {"model.onnx", "model.onnx.data", "tokenizer.json"}


def test_graph_outputs_one_logit_per_sequence(fp32_artifact):
    graph = onnx.load(str(fp32_artifact / "model.onnx"), load_external_data=False).graph

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    shapes = {v.name: dims(v) for v in [*graph.input, *graph.output]}
    assert shapes["score_logit"] == ["batch"]
    assert shapes["input_ids"] == shapes["attention_mask"] == ["batch", "sequence"]
    # tiny shape: 2 layers, (keys, values), 2 key/value heads, head_dim 16; one past shared by the batch
    assert shapes["past_key_values"] == [2, 2, 2, "past_sequence", 16] and shapes["present_length"] == []
    assert shapes["present"] == [2, 2, 2, "present_sequence", 16]


@needs_gqa
def test_gqa_attention_equals_the_standard_ops(standin, tmp_path):
    """The CPU graph's GroupQueryAttention node computes what the standard ops compute (OpenVINO's and fp16's
    graph): scores and present keys/values, with and without a shared past, ragged batches included."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForCausalLM

    from qrr.export.graph import trace

    model = AutoModelForCausalLM.from_pretrained(standin, dtype=torch.float32).eval()
    sessions = {}
    for attention in ("ops", "gqa"):
        trace(model, 5, 6, tmp_path / f"{attention}.onnx", attention=attention)
        ops = {n.op_type for n in onnx.load(str(tmp_path / f"{attention}.onnx")).graph.node}
        assert ("GroupQueryAttention" in ops) == (attention == "gqa")
        sessions[attention] = ort.InferenceSession(str(tmp_path / f"{attention}.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    cfg = model.config
    for batch, length, past in [(1, 1, 0), (1, 9, 0), (3, 17, 0), (3, 17, 5), (2, 40, 31)]:
        mask = np.ones((batch, length), np.int64)
        for b in range(1, batch):
            mask[b, length - 3 * b:] = 0  # right padding
        feeds = {
            "input_ids": rng.integers(0, cfg.vocab_size, (batch, length)),
            "attention_mask": mask,
            "past_key_values": rng.normal(0, 1, (cfg.num_hidden_layers, 2, cfg.num_key_value_heads, past,
                                                 cfg.head_dim)).astype(np.float32),
            "present_length": np.array(min(length, 4), np.int64),
        }
        ops, gqa = (sessions[a].run(None, feeds) for a in ("ops", "gqa"))
        assert gqa[1].shape == ops[1].shape
        np.testing.assert_allclose(gqa[0], ops[0], atol=1e-5)
        np.testing.assert_allclose(gqa[1], ops[1], atol=1e-5)


def test_gqa_is_refused_before_the_work_where_onnxruntime_cannot_run_it(standin, tmp_path, monkeypatch):
    import onnxruntime as ort

    from qrr.runtime import DeviceError

    monkeypatch.setattr(ort, "__version__", "1.31.1")
    with pytest.raises(DeviceError, match="onnxruntime 1.32 or newer"):
        export_onnx(standin, tmp_path / "gqa", quant="int8", attention="gqa", validate=False,
                    progress=Progress(enabled=False))
    assert not (tmp_path / "gqa").exists()


def test_attention_is_the_standard_ops_unless_gqa_is_asked_for(fp32_artifact, gqa_artifact, reference):
    m = load_manifest(fp32_artifact)
    assert m["attention"] == "standard ONNX ops"
    ops = [n.op_type for n in onnx.load(str(fp32_artifact / "model.onnx"), load_external_data=False).graph.node]
    assert "GroupQueryAttention" not in ops and "Softmax" in ops
    m = load_manifest(gqa_artifact)
    assert m["attention"] == "GroupQueryAttention (com.microsoft)"
    ops = [n.op_type for n in onnx.load(str(gqa_artifact / "model.onnx"), load_external_data=False).graph.node]
    assert ops.count("GroupQueryAttention") == 2 and "Softmax" not in ops  # one per layer of the tiny stand-in
    from conftest import DOCS, QUERY

    from qrr.runtime import Reranker

    # identical documents too: they share a past up to their last token, one new token per row
    pairs = [(QUERY, d) for d in DOCS] + [(QUERY, DOCS[0])] * 4
    got = Reranker(gqa_artifact).score_pairs(pairs)
    assert np.abs(np.asarray(got) - np.asarray(reference.score_pairs(pairs))).max() < 0.03  # the int8 gate
    with pytest.raises(QrrError, match="unknown attention 'flash'; choose one of gqa, ops"):
        export_onnx(str(fp32_artifact), fp32_artifact.parent / "never", attention="flash", progress=QUIET)


def test_int8_graph_keeps_the_head_in_fp32(int8_artifact):
    m = load_manifest(int8_artifact)
    assert m["precision"] == "int8"
    assert m["quantization"]["linear"]["op"] == "MatMulIntegerToFloat" and m["quantization"]["linear"]["bits"] == 8
    model = onnx.load(str(int8_artifact / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "MatMulIntegerToFloat" in ops
    inits = {t.name: t for t in model.graph.initializer}
    # no float MatMul keeps a constant weight; the score head is Mul + ReduceSum with a 1-D fp32 direction
    assert not [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    heads = [n for n in model.graph.node if n.op_type == "Mul" and "direction" in n.input]
    assert len(heads) == 1 and inits["direction"].data_type == onnx.TensorProto.FLOAT
    assert len(inits["direction"].dims) == 1
    # the embedding: 8-bit values in blocks of 32, each block with its own scale
    gather = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(gather) == 1 and {a.name: a.i for a in gather[0].attribute}["bits"] == 8
    table, scales = inits[gather[0].input[0]], inits[gather[0].input[2]]
    assert table.data_type == onnx.TensorProto.UINT8 and list(scales.dims) == [table.dims[0], table.dims[1] // 32]


def test_int8_artifact_is_smaller(fp32_artifact, int8_artifact):
    size = lambda a: sum(load_manifest(a)["files"].values())  # noqa: E731
    assert size(int8_artifact) < 0.6 * size(fp32_artifact)


def test_not_qwen3(tmp_path, standin):
    bad = shutil.copytree(standin, tmp_path / "llama")
    config = json.loads((bad / "config.json").read_text())
    config["model_type"], config["architectures"] = "llama", ["LlamaForCausalLM"]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not a Qwen3 causal LM"):
        export_onnx(str(bad), tmp_path / "out", progress=QUIET)
    assert not (tmp_path / "out").exists()


def test_tokenizer_without_yes_no(tmp_path, standin):
    bad = shutil.copytree(standin, tmp_path / "noyes")
    tok = json.loads((bad / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["yes_"] = vocab.pop("yes")
    merges = [m.split(" ") if isinstance(m, str) else m for m in tok["model"]["merges"]]
    tok["model"]["merges"] = [m for m in merges if "yes" not in (m[0], m[1], m[0] + m[1])]
    (bad / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(CheckpointError, match="no 'yes' token"):
        export_onnx(str(bad), tmp_path / "out", progress=QUIET)


def test_missing_source_and_bad_output(tmp_path, standin):
    with pytest.raises(CheckpointError, match="neither a local folder nor a hub id"):
        export_onnx(str(tmp_path / "no" / "such" / "dir"), tmp_path / "out", progress=QUIET)
    with pytest.raises(CheckpointError, match="no config.json"):
        export_onnx(str(tmp_path), tmp_path / "out", progress=QUIET)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(QrrError, match="not empty"):
        export_onnx(str(standin), busy, progress=QUIET)
    with pytest.raises(QrrError, match="unknown quant"):
        export_onnx(str(standin), tmp_path / "q", quant="int3", progress=QUIET)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_full_disk_is_refused_before_the_work(monkeypatch, tmp_path, standin, fmt):
    """The disk check runs before any tracing, with the sizes of this checkpoint, and leaves no folder behind."""
    from collections import namedtuple

    from qrr.export import pipeline

    usage = namedtuple("usage", "total used free")
    seen = []

    def tiny_disk(path):
        seen.append(path)
        return usage(10**9, 10**9 - 1000, 1000)

    monkeypatch.setattr(pipeline.shutil, "disk_usage", tiny_disk)
    if fmt == "openvino":
        pytest.importorskip("openvino")
        from qrr.export import export_openvino as export
    else:
        export = export_onnx
    out = tmp_path / "new" / "artifact"
    with pytest.raises(QrrError, match=r"not enough disk space: the int8 export .* 0\.0 GB free; free some space"):
        export(str(standin), out, quant="int8", progress=QUIET)
    assert seen == [tmp_path] and not out.exists()
    # with room, the same export runs (the estimate is of this checkpoint, not a fixed size)
    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: usage(10**12, 0, 10**12))
    export(str(standin), out, quant="int8", validate=False, progress=QUIET)
    assert (out / "qrr.json").is_file()


def test_hub_id_is_downloaded_with_the_hub_client(monkeypatch, standin, tmp_path):
    calls = []
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--Qwen--Qwen3-Reranker-0.6B" / "snapshots" / commit  # the hub cache's layout
    shutil.copytree(standin, snapshot)

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **hub_options):
        calls.append((repo_id, revision, allow_patterns))
        return str(snapshot)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    found = ckpt.resolve("Qwen/Qwen3-Reranker-0.6B", "main")
    assert calls == [("Qwen/Qwen3-Reranker-0.6B", "main", ckpt.HUB_FILES)]
    # the manifest records the commit the branch resolved to, not the branch name typed
    assert found.path == snapshot and found.revision == commit and found.config["model_type"] == "qwen3"


def test_hub_failure_is_one_clear_line(monkeypatch):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nmore details")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError) as e:
        ckpt.resolve("Qwen/Qwen3-Reranker-0.6B")
    assert "\n" not in str(e.value) and "cannot download Qwen/Qwen3-Reranker-0.6B" in str(e.value)


def test_validation_report_and_gate(artifact_copy, standin):
    report = validate_artifact(artifact_copy, str(standin))
    m = report["metrics"]
    assert report["passed"] and m["max_abs_dp"] < 1e-4 and m["top1_agreement"] == 1.0
    assert m["pairs"] == 252 and m["queries"] == 36 and "labelled" in m
    assert abs(m["labelled"]["ndcg10_drop_points"]) < 1e-6
    for side in ("artifact", "reference"):
        assert report["latency"][side]["ms_per_pair"] > 0 and report["latency"][side]["peak_rss_mib"] > 0
    stored = load_manifest(artifact_copy)["validation"]
    assert stored["passed"] and stored["max_abs_dp"] == m["max_abs_dp"]
    assert json.loads((artifact_copy / "validation.json").read_text())["metrics"] == m

    again = validate_artifact(artifact_copy, str(standin))
    assert again["reference"]["cached"] and again["scores"]["reference"] == report["scores"]["reference"]
    fresh = validate_artifact(artifact_copy, str(standin), use_cache=False)
    assert not fresh["reference"]["cached"]
    np.testing.assert_allclose(fresh["scores"]["reference"], report["scores"]["reference"], atol=1e-6)

    with pytest.raises(ValidationError, match="fails validation"):
        validate_artifact(artifact_copy, str(standin), max_drop=1e-12)
    assert load_manifest(artifact_copy)["validation"]["passed"] is False


def test_export_with_validation_and_user_data(tmp_path, standin):
    data = tmp_path / "pairs.jsonl"
    rows = [
        {"query": "capital of France", "document": "Paris is the capital of France.", "label": 1},
        {"query": "capital of France", "document": "Bananas are yellow.", "label": 0},
        {"query": "wer schrieb Faust?", "document": "Goethe schrieb den Faust.", "label": 1},
        {"query": "wer schrieb Faust?", "document": "Der Rhein fließt durch Köln.", "label": 0},
    ]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    manifest = export_onnx(str(standin), tmp_path / "art", quant="int8", data=data, progress=QUIET)
    assert manifest["validation"]["passed"] and manifest["validation"]["data"] == str(data)
    report = json.loads((tmp_path / "art" / "validation.json").read_text())
    assert report["metrics"]["pairs"] == 4 and report["metrics"]["labelled"]["queries"] == 2


def test_bad_evaluation_data(tmp_path, fp32_artifact, standin):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "document": "d"}\n{"query": "q"}\n')
    with pytest.raises(InputError, match="line 2: needs string fields"):
        validate_artifact(fp32_artifact, str(standin), data=bad, write=False)


def test_graph_is_fused_offline_and_the_manifest_says_how(fp32_artifact, int8_artifact):
    for artifact in (fp32_artifact, int8_artifact):
        graph = load_manifest(artifact)["graph"]
        assert "ORT_ENABLE_EXTENDED" in graph["optimization"] and graph["nodes"]["after"] < graph["nodes"]["before"]
        ops = [n.op_type for n in onnx.load(str(artifact / "model.onnx"), load_external_data=False).graph.node]
        # tiny shape, 2 layers: 2 RMSNorms per layer, q_norm and k_norm, and the final norm
        assert ops.count("SimplifiedLayerNormalization") == graph["fused_ops"]["SimplifiedLayerNormalization"] == 9
        assert "ReduceMean" not in ops and "Pow" not in ops  # nothing left of an unfused RMSNorm
