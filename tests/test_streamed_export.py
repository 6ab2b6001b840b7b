"""The streamed export (qrr.export.streamed_export) builds the same graph as the whole-model path, one layer at
a time: the same scores, bit for bit, at every precision."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import needs_export

needs_export()

from qrr.export import export_onnx  # noqa: E402
from qrr.export.checkpoint import CheckpointError  # noqa: E402
from qrr.export.progress import Progress  # noqa: E402
from qrr.runtime import Reranker  # noqa: E402
from qrr.runtime.pairs import load_queries  # noqa: E402


def _scores(artifact) -> np.ndarray:
    rr = Reranker(artifact)
    return np.concatenate([rr.score_pairs([(q.query, d) for d in q.documents], instruction=q.instruction)
                           for q in load_queries(None)[:8]])


@pytest.fixture(scope="module")
def deep_standin(tmp_path_factory):
    """Three layers, so that a layer reads a layer other than the first (the tiny shape has two)."""
    from qrr.export.standin import make_standin

    path = make_standin(tmp_path_factory.mktemp("deep") / "ckpt", shape="tiny", seed=3, train_steps=20)
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    # a third layer: copy layer 1's weights under layer 2's names (any weights will do; the paths must agree)
    from safetensors.torch import load_file, save_file

    weights = load_file(path / "model.safetensors")
    weights.update({k.replace("layers.1.", "layers.2."): v.clone() * 0.5 for k, v in weights.items() if "layers.1." in k})
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    config["num_hidden_layers"] = 3
    config.pop("layer_types", None)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("quant", ["fp32", "int8", "int4"])
def test_streamed_export_equals_the_whole_model_path(standin, deep_standin, tmp_path, quant):
    for checkpoint in (standin, deep_standin):
        artifacts, linear = {}, {}
        for stream in (False, True):
            out = tmp_path / f"{checkpoint.parent.name}-{stream}"
            manifest = export_onnx(str(checkpoint), out, quant=quant, validate=False, stream=stream,
                                   progress=Progress(enabled=False))
            assert manifest["streamed"] is stream
            artifacts[stream] = _scores(out)
            linear[stream] = (manifest["quantization"] or {}).get("linear")
        assert np.array_equal(artifacts[False], artifacts[True]), np.abs(artifacts[False] - artifacts[True]).max()
        assert linear[False] == linear[True]  # the counts too, which the streamed path sums over its layers


def test_streamed_export_reads_one_layer_at_a_time(standin, tmp_path, monkeypatch):
    from qrr.export import checkpoint

    reads = []
    original = checkpoint.SafetensorsWeights.tensor

    def tensor(self, name):
        reads.append(name)
        return original(self, name)

    monkeypatch.setattr(checkpoint.SafetensorsWeights, "tensor", tensor)
    export_onnx(str(standin), tmp_path / "a", quant="int8", validate=False, stream=True,
                progress=Progress(enabled=False))
    layers = [int(n.split(".")[2]) for n in reads if n.startswith("model.layers.")]
    assert layers == sorted(layers) and set(layers) == {0, 1}  # layer by layer, each read once, in order
    layer_reads = [n for n in reads if n.startswith("model.layers.")]
    assert len(layer_reads) == len(set(layer_reads)) == 2 * 11  # each of a layer's 11 tensors once
    assert "model.embed_tokens.weight" not in reads  # the table is read in row chunks, never whole


def test_streamed_export_needs_safetensors(standin, tmp_path):
    ckpt = tmp_path / "bin"
    shutil.copytree(standin, ckpt)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="safetensors"):
        export_onnx(str(ckpt), tmp_path / "out", quant="int8", validate=False, stream=True,
                    progress=Progress(enabled=False))
    assert not (tmp_path / "out").exists()


def test_fp16_is_not_streamed(standin, tmp_path):
    from qrr.export.streamed_export import StreamError

    with pytest.raises(StreamError, match="fp16"):
        export_onnx(str(standin), tmp_path / "out", quant="fp16", validate=False, stream=True,
                    progress=Progress(enabled=False))


def test_skeleton_saved_with_external_data_is_read_the_same(standin, tmp_path):
    """Over 2 GB (the 8B's skeleton) the exporter writes every tensor, constants included, to its own file."""
    import onnx

    from qrr.export.streamed_export import Skeleton, load_small_tensors, trace_skeleton

    config = json.loads((standin / "config.json").read_text())
    inline = trace_skeleton(config, tmp_path)
    ext = tmp_path / "ext"
    ext.mkdir()
    proto = onnx.load(str(tmp_path / "skeleton.onnx"))
    onnx.save_model(proto, str(ext / "skeleton.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0, convert_attribute=True)
    proto = onnx.load(str(ext / "skeleton.onnx"), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    load_small_tensors(proto, ext, limit=256)
    external = Skeleton(proto, inline.params, inline.types, ext)
    assert external.holds == inline.holds
    assert external.repeat.slots.keys() == inline.repeat.slots.keys()
    assert external.fan_in == inline.fan_in and external.last == inline.last


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_streamed_openvino_export_passes_its_gate(standin, tmp_path, quant):
    pytest.importorskip("openvino")
    from qrr.export import export_openvino

    manifest = export_openvino(str(standin), tmp_path / "ov", quant=quant, stream=True, max_pairs=24,
                               progress=Progress(enabled=False))
    assert manifest["streamed"] is True and manifest["quantization"]["streamed"] is True
    assert manifest["validation"]["passed"]


def test_streamed_export_equals_the_whole_model_path_with_an_untied_head(standin, tmp_path):
    """The 8B's head is its own tensor (lm_head), not the embedding."""
    import torch
    from transformers import AutoModelForCausalLM

    ckpt = tmp_path / "untied"
    model = AutoModelForCausalLM.from_pretrained(standin)
    model.config.tie_word_embeddings = False
    table = model.model.embed_tokens.weight.detach()
    noise = torch.randn(table.shape, generator=torch.Generator().manual_seed(0))
    model.lm_head.weight = torch.nn.Parameter(table + 0.01 * noise)
    model.save_pretrained(ckpt)
    for f in standin.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, ckpt / f.name)
    scores = {}
    for stream in (False, True):
        export_onnx(str(ckpt), tmp_path / f"a{stream}", quant="int4", validate=False, stream=stream,
                    progress=Progress(enabled=False))
        scores[stream] = _scores(tmp_path / f"a{stream}")
    assert np.array_equal(scores[False], scores[True])
