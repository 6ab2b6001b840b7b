"""The streamed reference: the recipe's scores, one decoder layer in memory at a time; validation with it."""

from __future__ import annotations

import inspect
import json
import shutil
import weakref

import numpy as np
import pytest
from conftest import DOCS, QUERY, needs_export

needs_export()

from qrr.export import export_onnx, export_openvino, validate_artifact  # noqa: E402
from qrr.export.checkpoint import resolve  # noqa: E402
from qrr.export.reference import ReferenceScorer  # noqa: E402
from qrr.export.report import format_report  # noqa: E402
from qrr.export.streamed_reference import StreamedReference  # noqa: E402
from qrr.export.validate import first_pairs, reference_cache_path  # noqa: E402
from qrr.runtime import QrrError  # noqa: E402
from qrr.runtime.pairs import load_queries  # noqa: E402
from qrr.runtime.prompt import pair_text  # noqa: E402

pytestmark = pytest.mark.slow

# 11 pairs: a batch of 8 left padded to its longest (the empty document, the long one) and a batch of 3
PAIRS = [(QUERY, d) for d in [*DOCS, "Beijing.", "Shanghai is a city.", "no"]]
TOL = 1e-6


def max_dp(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_streamed_equals_the_recipe_in_fp32(standin, reference):
    streamed = StreamedReference(resolve(str(standin)))
    assert streamed.config._attn_implementation == reference.model.config._attn_implementation
    first = streamed.process_inputs([pair_text(q, d, None) for q, d in PAIRS[:8]])["attention_mask"]
    assert len(set(first.sum(1).tolist())) > 2 and (first[:, 0] == 0).any()  # left padding of several lengths
    assert max_dp(streamed.score_pairs(PAIRS), reference.score_pairs(PAIRS)) <= TOL


def test_streamed_equals_the_recipe_on_truncated_pairs(standin):
    checkpoint = resolve(str(standin))
    streamed = StreamedReference(checkpoint, max_length=150)  # the pairs are 119-958 tokens: the longest are cut
    lengths = streamed.process_inputs([pair_text(q, d, None) for q, d in PAIRS])["attention_mask"].sum(1).tolist()
    assert max(lengths) == 150 and min(lengths) < 140
    ours = streamed.score_pairs(PAIRS)
    assert len(set(ours)) > 5  # the documents are still told apart
    assert max_dp(ours, ReferenceScorer(checkpoint, max_length=150).score_pairs(PAIRS)) <= TOL


def test_streamed_bf16_equals_the_recipe_loaded_in_bf16(standin):
    import torch

    checkpoint = resolve(str(standin))
    recipe = ReferenceScorer(checkpoint, dtype="bfloat16")
    assert recipe.model.dtype == torch.bfloat16
    streamed = StreamedReference(checkpoint, dtype="bfloat16")
    ours, theirs = streamed.score_pairs(PAIRS), recipe.score_pairs(PAIRS)
    assert max_dp(ours, theirs) <= TOL
    # and bf16 is a different reference from fp32: its P(yes) moves by bf16's resolution
    assert max_dp(ours, StreamedReference(checkpoint).score_pairs(PAIRS)) > TOL


def test_bf16_sharded_checkpoint_is_read_lazily_and_upcast(standin, tmp_path, monkeypatch):
    """Published checkpoints are bf16 in shards: the streamed fp32 reference upcasts them as from_pretrained does,
    reads each layer once, in order, and holds one decoder layer at a time."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.models.qwen3 import modeling_qwen3

    sharded = shutil.copytree(standin, tmp_path / "bf16")
    (sharded / "model.safetensors").unlink()
    model = AutoModelForCausalLM.from_pretrained(standin, dtype=torch.bfloat16)
    model.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    checkpoint = resolve(str(sharded))

    alive: list[weakref.ref] = []

    class OneAtATime(modeling_qwen3.Qwen3DecoderLayer):
        def __init__(self, config, layer_idx):
            assert not [r for r in alive if r() is not None], "a decoder layer was built while another was alive"
            super().__init__(config, layer_idx)
            alive.append(weakref.ref(self))

    recipe = ReferenceScorer(checkpoint).score_pairs(PAIRS)
    streamed = StreamedReference(checkpoint)
    monkeypatch.setattr(modeling_qwen3, "Qwen3DecoderLayer", OneAtATime)  # the layers the streamed pass builds
    ours = streamed.score_pairs(PAIRS)
    assert len(alive) == model.config.num_hidden_layers
    assert max_dp(ours, recipe) <= TOL

    reads = streamed.weights.reads
    layers = [int(name.split(".")[2]) for name in reads if name.startswith("model.layers.")]
    assert layers == sorted(layers) and len(layers) == 11 * model.config.num_hidden_layers  # each tensor once
    assert reads[0] == "model.embed_tokens.weight" and reads[-2:] == ["model.norm.weight", "model.embed_tokens.weight"]


def test_embedding_rows_are_gathered_not_loaded(standin):
    import torch
    from safetensors import safe_open

    weights = StreamedReference(resolve(str(standin))).weights
    ids = torch.tensor([7, 3, 7, 1500, 0])
    with safe_open(standin / "model.safetensors", framework="pt") as f:
        table = f.get_tensor("model.embed_tokens.weight")
    assert torch.equal(weights.rows("model.embed_tokens.weight", ids), table[ids])


def test_cache_key_differs_per_dtype_and_streaming(standin):
    queries = load_queries()
    paths = {reference_cache_path(standin, queries, (8192, 2, dtype, streamed))
             for dtype in ("float32", "bfloat16") for streamed in (False, True)}
    assert len(paths) == 4


def test_first_pairs_in_data_order():
    queries = load_queries()
    subset = first_pairs(queries, 10)
    flat = [(q.query, d) for q in subset for d in q.documents]
    assert flat == [(q.query, d) for q in queries for d in q.documents][:10]
    assert [len(q.labels) for q in subset] == [len(q.documents) for q in subset]
    with pytest.raises(QrrError, match="max_pairs must be a positive integer"):
        first_pairs(queries, 0)


def test_validation_with_the_streamed_reference(artifact_copy, standin):
    report = validate_artifact(artifact_copy, str(standin), streamed=True, max_pairs=12)
    ref = report["reference"]
    assert ref["streamed"] is True and ref["dtype"] == "float32" and not ref["cached"]
    assert "layer-by-layer" in ref["timing"] and report["latency"]["speedup"] is None
    assert report["subset"]["pairs"] == report["metrics"]["pairs"] == 12 and report["subset"]["of"] == 252
    assert report["passed"] and report["metrics"]["max_abs_dp"] < 1e-4
    text = format_report(report)
    assert "streamed layer by layer" in text and "speed-up             n/a" in text
    stored = json.loads((artifact_copy / "qrr.json").read_text())["validation"]
    assert stored["reference_streamed"] is True and stored["subset"].startswith("the first 12 pairs")
    assert "streamed layer by layer" in (artifact_copy / "README.md").read_text()

    again = validate_artifact(artifact_copy, str(standin), streamed=True, max_pairs=12, write=False)
    assert again["reference"]["cached"] and again["scores"]["reference"] == report["scores"]["reference"]
    # the recipe itself is another cache entry: its timing is a latency, the streamed pass's is not
    recipe = validate_artifact(artifact_copy, str(standin), streamed=False, max_pairs=12, write=False)
    assert not recipe["reference"]["cached"] and recipe["reference"]["streamed"] is False
    assert recipe["latency"]["speedup"] > 0
    assert max_dp(recipe["scores"]["reference"], report["scores"]["reference"]) <= TOL


def test_bad_reference_options(artifact_copy, standin, tmp_path):
    with pytest.raises(QrrError, match="unknown reference dtype 'float16'"):
        validate_artifact(artifact_copy, str(standin), reference_dtype="float16", write=False)
    with pytest.raises(QrrError, match="max_pairs must be a positive integer"):
        validate_artifact(artifact_copy, str(standin), max_pairs=0, write=False)
    with pytest.raises(QrrError, match="max_pairs must be a positive integer"):  # before the export, not after it
        export_onnx(str(standin), tmp_path / "out", max_pairs=0)
    assert not (tmp_path / "out").exists()


def test_export_entry_points_take_the_same_keywords_in_the_same_order():
    onnx_only = {"accuracy_level", "kernel", "rounding", "attention", "two_pass"}
    onnx = [p for p in inspect.signature(export_onnx).parameters if p not in onnx_only]
    assert onnx == list(inspect.signature(export_openvino).parameters)
