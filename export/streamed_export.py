"""The streamed export: the scoring graph of a checkpoint of any depth, built one layer at a time, so that
memory holds about one layer's weights and never the model (4B and 8B checkpoints on a 16–32 GB machine).

1. The skeleton: the scoring module (graph.py) of a three-layer model with the checkpoint's exact
   configuration, a small vocabulary and random weights, traced by the same exporter as the whole-model path.
   Its layers are templates (graph.ScoringLayer gives each its own /layers.N/ scope): layer 0 holds the
   nodes the exporter shares between layers; comparing layers 1 and 2 tells which inputs are the layer
   before's output, which is the layer index, and which initializer is which weight (the skeleton's random
   weights are recognised by value).
2. Each layer of the checkpoint: its weights read from the safetensors files, rotated, its scales calibrated
   on the calibration activations carried from the layer before (the same statistics as the whole-model
   pass), then put into a copy of its template; that one-layer graph goes through the same quantizers as the
   whole graph, and its weights are appended to the external data file.
3. The embedding table (read and quantized a chunk of rows at a time), the final norm and the head direction
   (two rows of the head) complete the skeleton's top level.

The result is the graph of the whole-model path (export/to_onnx.py) with the same numbers: tests compare
their scores on the tiny shape. Needs a depth of at least 2 and safetensors weights.
"""

from __future__ import annotations

import copy
import gc
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qrr.runtime.errors import QrrError

from .checkpoint import SafetensorsWeights
from .graph import trace
from .pipeline import Source, calibration_batches, calibration_info
from .presets import Preset
from .progress import Progress

SKELETON_LAYERS = 3
SKELETON_VOCAB = 64
FINGERPRINT = 64  # leading values that identify a random tensor
INLINE_BYTES = 1024  # smaller tensors stay in the graph file, as qrr.quant.save_model keeps them
ALIGN = 4096


class StreamError(QrrError):
    """The streamed export met a graph or checkpoint it cannot build layer by layer."""


@dataclass
class Slot:
    """What one input of a template node reads, beyond the template's own tensors."""

    kind: str  # "weight", "index" or "previous"
    value: Any  # weight: (suffix, transposed); index: the template's TensorProto; previous: names


@dataclass
class Template:
    scope: str  # "/layers.0/" or "/layers.1/"
    nodes: list[onnx.NodeProto]
    weights: dict[str, tuple[str, bool]]  # initializer → (parameter suffix within the layer, transposed)
    constants: list[TensorProto]  # the layer's own small initializers
    slots: dict[tuple[int, int], Slot] = field(default_factory=dict)  # (node, input) → slot (layers ≥ 1)
    outputs: list[str] = field(default_factory=list)  # tensors read outside the layer


class Skeleton:
    """The traced three-layer graph, taken apart into the top level and the two layer templates."""

    def __init__(self, model: onnx.ModelProto, params: dict[tuple, tuple[str, bool]], types: dict[str, Any],
                 folder: Path):
        self.model = model
        self.types, self.params = types, params
        graph = model.graph
        self.inits = {t.name: t for t in graph.initializer}
        # which parameter each initializer holds, recognised by its values (read now: the folder is temporary)
        prints = {t.name: fingerprint(t, folder) for t in graph.initializer}
        self.holds = {name: params[p] for name, p in prints.items() if p in params}
        scoped = {j: [n for n in graph.node if n.name.startswith(f"/layers.{j}/")] for j in range(SKELETON_LAYERS)}
        self.top = [n for n in graph.node if not any(n.name.startswith(f"/layers.{j}/") for j in scoped)]
        self.produced = {j: {o for n in nodes for o in n.output} for j, nodes in scoped.items()}
        self.first = self._template(0, scoped[0])
        self.repeat = self._template(1, scoped[1])
        self._compare(scoped[1], scoped[2])
        consumers = Counter(i for n in graph.node for i in n.input)
        for j, template in ((0, self.first), (1, self.repeat)):
            inside = Counter(i for n in scoped[j] for i in n.input)
            template.outputs = sorted(o for o in self.produced[j] if consumers[o] > inside[o])
        if any(not o.startswith("/layers.1/") for o in self.repeat.outputs):
            raise StreamError("a traced layer's output is not named by its scope; cannot stream this graph")
        self._top_links()

    def _weight(self, name: str, layer: int | None) -> tuple[str, bool] | None:
        match = self.holds.get(name)
        if match is None:
            return None
        pname, transposed = match
        prefix = f"model.layers.{layer}."
        if layer is not None and not pname.startswith(prefix):
            raise StreamError(f"layer {layer} of the traced graph reads {pname}; cannot stream this graph")
        return (pname[len(prefix):] if layer is not None else pname), transposed

    def _template(self, j: int, nodes: list[onnx.NodeProto]) -> Template:
        weights, constants = {}, []
        for node in nodes:
            for name in node.input:
                if name in self.inits and name not in weights:
                    w = self._weight(name, j)
                    if w is not None:
                        weights[name] = w
                    elif self.inits[name].data_location == TensorProto.EXTERNAL:
                        raise StreamError(f"layer {j} reads {name}, which is not a known weight; cannot stream this graph")
                    else:
                        constants.append(self.inits[name])
        template = Template(f"/layers.{j}/", nodes, weights, list({t.name: t for t in constants}.values()))
        return template

    def _compare(self, one: list[onnx.NodeProto], two: list[onnx.NodeProto]) -> None:
        """Align layers 1 and 2 node by node; record how layer 1's inputs generalise to any layer i ≥ 1."""
        if [n.op_type for n in one] != [n.op_type for n in two]:
            raise StreamError("the traced layers 1 and 2 differ in their operators; cannot stream this graph")
        for k, (a, b) in enumerate(zip(one, two)):
            if _attributes(a) != _attributes(b):
                if a.op_type == "Constant" and _scalar(a.attribute[0].t) == 1 and _scalar(b.attribute[0].t) == 2:
                    self.repeat.slots[(k, -1)] = Slot("index", a.attribute[0].t)
                    continue
                raise StreamError(f"the traced layers differ at {a.name} ({a.op_type}); cannot stream this graph")
            for m, (x, y) in enumerate(zip(a.input, b.input)):
                if x == y or x.replace("/layers.1/", "/layers.2/") == y:
                    if x in self.repeat.weights:  # a weight shared by layers 1 and 2: the exporter merged it
                        raise StreamError(f"layers 1 and 2 share the weight {x}; cannot stream this graph")
                    continue
                if x in self.produced[0] and y == x.replace("/layers.0/", "/layers.1/") or (
                    x in self.produced[0] and y in self.produced[1]
                ):
                    self.repeat.slots[(k, m)] = Slot("previous", (x, y))
                    continue
                wx, wy = self._weight(x, 1), self._weight(y, 2)
                if wx is not None and wx == wy:
                    continue  # layer 1's weight: self.repeat.weights already maps it
                vx, vy = self._constant(x), self._constant(y)
                if vx is not None and vy is not None and _scalar(vx) == 1 and _scalar(vy) == 2:
                    self.repeat.slots[(k, m)] = Slot("index", vx)
                    continue
                if vx is not None and vy is not None and np.array_equal(numpy_helper.to_array(vx),
                                                                         numpy_helper.to_array(vy)):
                    continue
                raise StreamError(f"the traced layers differ at input {m} of {a.name}; cannot stream this graph")

    def _constant(self, name: str) -> TensorProto | None:
        if name in self.inits and self.inits[name].data_location != TensorProto.EXTERNAL:
            return self.inits[name]
        for n in self.top:
            if n.op_type == "Constant" and n.output[0] == name and n.attribute[0].name == "value":
                return n.attribute[0].t
        return None

    def _top_links(self) -> None:
        """The top level's reads of layer tensors: the fan-in of every layer's `present`, and the last hidden."""
        self.fan_in: dict[int, tuple[int, int]] = {}  # top node → (position of layer 0's input, count)
        self.last: dict[tuple[int, int], str] = {}  # (top node, input) → layer 2's tensor
        for t, node in enumerate(self.top):
            layers = [next((j for j in self.produced if i in self.produced[j]), None) for i in node.input]
            if layers == [None] * len(layers):
                continue
            run = [j for j in layers if j is not None]
            if run == list(range(SKELETON_LAYERS)) and node.op_type == "Concat":
                self.fan_in[t] = layers.index(0), SKELETON_LAYERS
            elif run == [SKELETON_LAYERS - 1]:
                m = layers.index(SKELETON_LAYERS - 1)
                self.last[(t, m)] = node.input[m]
            else:
                raise StreamError(f"the top-level node {node.name} reads layers {run}; cannot stream this graph")


def fingerprint(tensor: TensorProto | np.ndarray, folder: Path | None = None) -> tuple:
    """Shape and leading values of a tensor (an initializer, possibly external, or an array)."""
    if isinstance(tensor, np.ndarray):
        return tuple(tensor.shape), np.asarray(tensor.flat[:FINGERPRINT], dtype=np.float32).tobytes()
    if tensor.data_type != TensorProto.FLOAT:
        return (), b""
    if tensor.data_location == TensorProto.EXTERNAL:
        info = {e.key: e.value for e in tensor.external_data}
        values = np.fromfile(folder / info["location"], dtype=np.float32, count=FINGERPRINT,
                             offset=int(info.get("offset", 0)))
    else:
        values = numpy_helper.to_array(tensor).reshape(-1)[:FINGERPRINT]
    return tuple(tensor.dims), values.astype(np.float32).tobytes()


def _attributes(node: onnx.NodeProto) -> list[tuple]:
    """A node's attributes by value (a tensor by its dtype, shape and values, wherever it is stored)."""
    out = []
    for a in node.attribute:
        if a.HasField("t"):
            value = numpy_helper.to_array(a.t)
            out.append((a.name, str(value.dtype), value.shape, value.tobytes()))
        else:
            out.append((a.name, a.SerializeToString()))
    return out


def _scalar(t: TensorProto) -> float | None:
    if t.data_type not in (TensorProto.INT64, TensorProto.INT32) or np.prod(t.dims, dtype=np.int64) != 1:
        return None
    return float(numpy_helper.to_array(t).reshape(-1)[0])


def small_config(config: dict[str, Any], layers: int, **overrides):
    """The checkpoint's Qwen3Config with `layers` layers and a small vocabulary (the skeleton, the layer runner)."""
    from transformers import Qwen3Config

    cfg = {k: v for k, v in config.items() if k not in ("architectures", "auto_map", "dtype", "torch_dtype")}
    cfg.update(num_hidden_layers=layers, vocab_size=SKELETON_VOCAB, layer_types=None, bos_token_id=None,
               eos_token_id=None, pad_token_id=None, **overrides)
    return Qwen3Config(**cfg)


def trace_skeleton(config: dict[str, Any], folder: Path, attention: str = "ops") -> Skeleton:
    """Trace the scoring graph of a SKELETON_LAYERS-layer model of `config` into `folder`; take it apart."""
    import torch
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM(small_config(config, SKELETON_LAYERS, tie_word_embeddings=False)).eval()
    gen = torch.Generator().manual_seed(0)
    params: dict[tuple, tuple[str, bool]] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
            a = p.detach().numpy()
            params[fingerprint(a)] = (name, False)
            if a.ndim == 2:
                params[fingerprint(a.T)] = (name, True)
        head = model.lm_head.weight
        direction = (head[1].double() - head[2].double()).float().numpy()
        params[fingerprint(direction)] = ("direction", False)
    path = folder / "skeleton.onnx"
    trace(model, 1, 2, path, attention=attention)
    del model
    gc.collect()
    proto = onnx.load(str(path), load_external_data=False)
    if not any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer):
        # under 2 GB the exporter keeps the weights in the graph: move them out, so that the skeleton held
        # through the export is light (1.2 GB for the 4B)
        onnx.save_model(proto, str(folder / "light.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="light.onnx.data", size_threshold=1024)
        del proto
        proto = onnx.load(str(folder / "light.onnx"), load_external_data=False)
    load_small_tensors(proto, folder)
    types = {v.name: v.type for v in onnx.shape_inference.infer_shapes(proto).graph.value_info}
    types.update({v.name: v.type for v in [*proto.graph.input, *proto.graph.output]})
    return Skeleton(proto, params, types, folder)


def load_small_tensors(proto: onnx.ModelProto, folder: Path, limit: int = 1 << 20) -> None:
    """Bring the small external tensors (constants) of a graph saved with external data into the graph.

    Over 2 GB the exporter saves every tensor, Constant nodes' values included, to its own file; the skeleton
    compares constants by value and copies them into each layer, so they must be inline. Weights stay outside.
    """
    from onnx.external_data_helper import load_external_data_for_tensor

    tensors = [*proto.graph.initializer, *(a.t for n in proto.graph.node for a in n.attribute if a.HasField("t"))]
    for t in tensors:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        size = int(info["length"]) if "length" in info else (folder / info["location"]).stat().st_size
        if size <= limit:
            load_external_data_for_tensor(t, str(folder))
            t.data_location = TensorProto.DEFAULT
            del t.external_data[:]


class DataWriter:
    """Appends tensors to one external data file; returns the initializers that point into it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "wb")
        self.offset = 0

    def add(self, name: str, array: np.ndarray) -> TensorProto:
        array = np.asarray(array, order="C")  # not ascontiguousarray: that makes scalars 1-D
        if array.nbytes < INLINE_BYTES:
            return numpy_helper.from_array(array, name)
        return self.add_rows(name, array.shape, array.dtype, [array])

    def add_rows(self, name: str, shape: tuple[int, ...], dtype, chunks) -> TensorProto:
        """A large tensor written a chunk of rows at a time."""
        pad = (-self.offset) % ALIGN
        self.file.write(b"\0" * pad)
        start = self.offset = self.offset + pad
        for chunk in chunks:
            chunk = np.asarray(chunk, dtype=dtype, order="C")
            self.file.write(memoryview(chunk).cast("B"))
            self.offset += chunk.nbytes
        length = self.offset - start
        if length != int(np.prod(shape)) * np.dtype(dtype).itemsize:
            raise StreamError(f"{name}: wrote {length} bytes for a {shape} tensor")
        return self._external(name, shape, dtype, start, length)

    def _external(self, name: str, shape, dtype, offset: int, length: int) -> TensorProto:
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims=shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        return tensor

    def close(self) -> None:
        self.file.close()


class LayerRunner:
    """Runs one transformers Qwen3 decoder layer as Qwen3Model.forward would (its mask, positions and rotary
    embedding, eager attention), by putting the layer into a one-layer model without embedding or norm."""

    def __init__(self, config: dict[str, Any]) -> None:
        import torch
        from transformers.models.qwen3.modeling_qwen3 import Qwen3Model

        self.config = small_config(config, 1)
        self.config._attn_implementation = "eager"
        self.shell = Qwen3Model(self.config).eval()
        self.shell.norm = torch.nn.Identity()

    def new_layer(self, weights: dict[str, Any]):
        """A decoder layer holding `weights` (names within the layer), in fp32."""
        import torch
        from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

        with torch.device("meta"):
            layer = Qwen3DecoderLayer(self.config, 0)
        layer.load_state_dict(weights, assign=True, strict=True)
        return layer.eval()

    def run(self, layer, hidden, attention_mask):
        import torch

        self.shell.layers[0] = layer
        with torch.no_grad():
            return self.shell(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False).last_hidden_state


def export_streamed(
    src: Source,
    out_file: Path,
    *,
    preset: Preset | None,
    calibration: str | Path | None,
    max_length: int,
    progress: Progress,
    attention: str = "ops",
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Write the scoring graph of `src` to `out_file` (weights in out_file.data) one layer at a time; returns
    the quantization scheme (None for fp32) and what was folded (rotation, scales). `attention` is
    graph.ScoringModule's."""
    config = src.checkpoint.config
    depth = int(config["num_hidden_layers"])
    if depth < 2:
        raise StreamError(f"the streamed export needs at least 2 layers; {src.checkpoint.source} has {depth}")
    reader = SafetensorsWeights(src.checkpoint)
    tied = bool(config.get("tie_word_embeddings")) or "lm_head.weight" not in reader.files
    head_name = "model.embed_tokens.weight" if tied else "lm_head.weight"
    rotate = preset is not None and preset.rotate
    scaling = preset is not None and preset.scaling
    gptq = preset is not None and preset.gptq
    folded: dict[str, Any] = {}
    q = None
    if rotate:
        from qrr.quant import rotate as rot

        q, _ = rot.matrices(_Config(config))
        folded["rotation"] = rot.description(_Config(config), 0, False)

    with tempfile.TemporaryDirectory(dir=out_file.parent, prefix=".skeleton-") as tmp:
        with progress.step(f"tracing a {SKELETON_LAYERS}-layer skeleton of the graph"):
            sk = trace_skeleton(config, Path(tmp), attention)
    writer = DataWriter(out_file.with_name(out_file.name + ".data"))
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    linear_infos: list[dict[str, Any]] = []
    alphas: list[float] = []
    try:
        runner = LayerRunner(config)
        batches = hidden = None
        if scaling or gptq:
            batches = calibration_batches(src.tokenizer, calibration, max_length)
            with progress.step("embedding the calibration pairs"):
                hidden = [_embed(reader, b["input_ids"], q) for b in batches]
        with progress.step(f"streaming {depth} layers", total=depth) as step:
            for i in range(depth):
                prefix = f"model.layers.{i}."
                names = [n[len(prefix):] for n in reader.files if n.startswith(prefix)]
                layer = runner.new_layer({n: reader.tensor(prefix + n).float() for n in names})
                if rotate:
                    from qrr.quant.rotate import rotate_layer

                    rotate_layer(layer, q)
                if scaling or gptq:
                    hidden, info = calibrate_layer(runner, layer, i, hidden, batches, preset)
                    alphas += info
                params = {n: p.detach() for n, p in layer.state_dict().items()}
                del layer
                layer_nodes, layer_inits, info = _layer_graph(sk, i, params, preset)
                del params
                nodes += layer_nodes
                inits += [writer.add(t.name, numpy_helper.to_array(t)) for t in layer_inits]
                del layer_inits
                progress.log(f"layer {i + 1}/{depth} written")
                if info:
                    linear_infos.append(info)
                step.update(1)
        with progress.step("embedding table, final norm and head direction"):
            top_nodes, top_inits, embedding = _top_level(sk, depth, reader, head_name, config, q, preset, writer,
                                                         src.yes_id, src.no_id)
    finally:
        writer.close()
    del hidden
    graph = helper.make_graph(_toposort([*top_nodes, *nodes]), sk.model.graph.name or "qrr",
                              _io(sk.model.graph.input, depth), _io(sk.model.graph.output, depth),
                              initializer=[*top_inits, *inits])
    model = helper.make_model(graph, opset_imports=list(sk.model.opset_import), producer_name="qrr (streamed)")
    model.ir_version = sk.model.ir_version
    if preset is not None and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save_model(model, str(out_file))
    if preset is None:
        return None, None
    if scaling or gptq:
        folded.update(calibration_summary(preset, alphas, calibration, batches))
    linear = dict(linear_infos[0])
    linear["count"] = sum(x["count"] for x in linear_infos)
    for part in ("eight_bit", "two_pass"):  # counted per layer too
        if part in linear:
            linear[part] = {**linear[part], "count": sum(x[part]["count"] for x in linear_infos)}
    return {"linear": linear, "embedding": embedding, "head": "fp32"}, folded or None


class _Config:
    """Attribute access to a config.json dict (what qrr.quant.rotate reads)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.__dict__.update(config)


def should_stream(checkpoint) -> bool:
    """Whether the whole-model path would not fit: it holds the model in fp32 about three times over (the
    weights, the traced graph, the quantizer's copy); stream when that exceeds the available memory."""
    import psutil

    return 3 * SafetensorsWeights(checkpoint).nbytes(4) > psutil.virtual_memory().available


def _embed(reader: SafetensorsWeights, ids, q):
    """Embedding rows of `ids` (rotated by q when given), as the whole model computes them."""
    rows = reader.rows("model.embed_tokens.weight", ids.reshape(-1)).float()
    if q is not None:
        from qrr.quant.rotate import rotate_rows

        rows = rotate_rows(rows, q)
    return rows.reshape(*ids.shape, -1)


def _recorded(runner: LayerRunner, layer, hidden, batches, recorders: list) -> tuple[list, list]:
    """The layer's outputs on the calibration activations `hidden`, with the `recorders`' hooks watching its
    inputs (the real tokens of each batch); then what each recorder gathered."""
    out = []
    try:
        for h, batch in zip(hidden, batches):
            for r in recorders:
                r.mask = batch["attention_mask"]
            out.append(runner.run(layer, h, batch["attention_mask"]))
    finally:
        gathered = [r.close() for r in recorders]
    return out, gathered


def calibrate_layer(runner: LayerRunner, layer, index: int, hidden, batches, preset: Preset):
    """One decoder layer's calibration, as both export paths do it. One run over the calibration activations
    `hidden` records the scales' statistics (qrr.quant.smooth) and, for GPTQ, the second moments of the
    linear layers' inputs (qrr.quant.gptq); the scales are folded, the second moments rescaled to the scaled
    inputs, then the weights rounded by GPTQ. Returns the layer's outputs from that run (the next layer's
    inputs) and the α used at each site."""
    from qrr.quant import gptq, smooth

    recorders = ([smooth.LayerRecorder(layer, index)] if preset.scaling else []) + \
        ([gptq.CovarianceRecorder(layer)] if preset.gptq else [])
    out, gathered = _recorded(runner, layer, hidden, batches, recorders)
    alphas: list[float] = []
    applied: dict[str, Any] = {}  # site → the per-input-channel scale its activations were divided by
    if preset.method == "smoothquant":
        alphas = smooth.smoothquant_layer(layer, gathered[0], preset.alpha, preset.sites, applied=applied,
                                          **preset.grid)
    elif preset.scaling:
        alphas = smooth.awq_layer(layer, gathered[0], bits=preset.bits, block=preset.block_size,
                                  symmetric=preset.symmetric, sites=preset.sites, applied=applied)
    if preset.gptq:
        covariances = gathered[-1]
        for site, scale in applied.items():  # x / s per channel: xᵀx / (s_i s_j)
            s = scale.double()
            covariances[site] /= s[:, None] * s[None, :]
        gptq.round_layer(layer, covariances, preset.nbits, eight_bit=preset.wide)
    return out, alphas


def calibrate_model(model, config: dict[str, Any], batches, preset: Preset, step=None) -> list[float]:
    """Calibrate every decoder layer of the (rotated) transformers `model` in place, one layer at a time as the
    streamed export does (calibrate_layer), from the calibration `batches`; the α used at each site. `step`
    (a progress step) is told of each layer done."""
    import torch

    runner = LayerRunner(config)
    with torch.no_grad():
        hidden = [model.model.embed_tokens(b["input_ids"]) for b in batches]
    alphas: list[float] = []
    for i, layer in enumerate(model.model.layers):
        hidden, chosen = calibrate_layer(runner, layer, i, hidden, batches, preset)
        alphas += chosen
        if step is not None:
            step.update(1)
    return alphas


def calibration_summary(preset: Preset, alphas: list[float], calibration, batches) -> dict[str, Any]:
    """What calibration did, for the manifest: the scales' method and α, the rounding, the pairs."""
    from qrr.quant import gptq, smooth

    info: dict[str, Any] = {}
    if preset.method == "smoothquant":
        info.update(smooth.smoothquant_info(preset.alpha, alphas, preset.sites))
    elif preset.scaling:
        info.update(smooth.awq_info(alphas, preset.bits, preset.block_size, preset.sites))
    if preset.gptq:
        info["rounding"] = gptq.description(preset.nbits, eight_bit=preset.wide)
    info["calibration"] = calibration_info(calibration, batches)
    return info


def _rename(name: str, scope: str, i: int) -> str:
    """A layer template's own name as layer i's: its scope replaced, or a layer prefix on anonymous names."""
    if scope in name:
        return name.replace(scope, f"/layers.{i}/")
    return f"layers.{i}/{name}"


def _layer_graph(sk: Skeleton, i: int, params: dict[str, Any], preset: Preset | None):
    """Layer i's nodes and initializers, quantized as `preset` asks; and the quantizer's scheme."""
    template = sk.first if i == 0 else sk.repeat
    own = sk.produced[0 if i == 0 else 1] | {t.name for t in template.constants} | set(template.weights)
    if i == 0:
        own -= set(template.outputs)  # later layers read these by their layer-0 names
    renamed = {name: _rename(name, template.scope, i) for name in own}
    nodes = [copy.deepcopy(n) for n in template.nodes]
    for n in nodes:
        n.name = _rename(n.name, template.scope, i)
        n.input[:] = [renamed.get(x, x) for x in n.input]
        n.output[:] = [renamed.get(x, x) for x in n.output]
    extra: list[TensorProto] = []
    for (k, m), slot in template.slots.items():
        if slot.kind == "previous":
            x, y = slot.value
            nodes[k].input[m] = x if i == 1 else y.replace("/layers.1/", f"/layers.{i - 1}/")
        elif slot.kind == "index":
            value = numpy_helper.to_array(slot.value).copy()
            value.reshape(-1)[0] = i
            if m < 0:
                nodes[k].attribute[0].t.CopyFrom(numpy_helper.from_array(value))
            else:
                name = f"layers.{i}/qrr_layer_index"
                extra.append(numpy_helper.from_array(value, name))
                nodes[k].input[m] = name
    weights = []
    for name, (suffix, transposed) in template.weights.items():
        w = params[suffix].numpy()
        weights.append(numpy_helper.from_array(np.ascontiguousarray(w.T if transposed else w), renamed[name]))
    constants = []
    for t in template.constants:
        t = copy.deepcopy(t)
        t.name = renamed[t.name]
        constants.append(t)
    produced = {o for n in nodes for o in n.output}
    stored = {t.name for t in [*weights, *constants, *extra]}
    inputs = sorted({x for n in nodes for x in n.input if x and x not in produced and x not in stored})
    outputs = [renamed.get(o, o) for o in template.outputs]
    sub = helper.make_graph(nodes, f"layer{i}", [_typed(sk, x) for x in inputs], [_typed(sk, o) for o in outputs],
                            initializer=[*weights, *constants, *extra])
    model = helper.make_model(sub, opset_imports=list(sk.model.opset_import))
    model.ir_version = sk.model.ir_version
    info = None
    if preset is not None:
        from qrr.quant.onnx_quant import quantize_linear

        rounding = "hqq" if preset.method == "hqq" else "rtn"
        before = produced | stored | set(inputs)
        model, info = quantize_linear(model, bits=preset.bits, block_size=preset.block_size,
                                      symmetric=preset.symmetric, accuracy_level=preset.accuracy_level,
                                      method=rounding, kernel=preset.kernel, eight_bit=preset.wide,
                                      two_pass=preset.two_pass)
        # the quantizer's own names (rq0_…, rq_tiny) repeat in every layer: give them the layer's prefix
        fresh = {x for n in model.graph.node for x in [*n.input, *n.output]} | {t.name for t in model.graph.initializer}
        fresh = {x: f"layers.{i}/{x}" for x in fresh - before if x}
        for n in model.graph.node:
            n.input[:] = [fresh.get(x, x) for x in n.input]
            n.output[:] = [fresh.get(x, x) for x in n.output]
            if not n.name.startswith(("/layers.", "layers.")):
                n.name = f"layers.{i}/{n.name}"
        for t in model.graph.initializer:
            t.name = fresh.get(t.name, t.name)
    # fresh copies: an element of a protobuf message keeps the whole message alive (its arena holds every
    # weight of the layer, float and quantized), which made the export grow by a layer's size per layer
    return [_copy(n, onnx.NodeProto) for n in model.graph.node], list(model.graph.initializer), info


def _copy(message, kind):
    fresh = kind()
    fresh.CopyFrom(message)
    return fresh


def _typed(sk: Skeleton, name: str):
    t = sk.types.get(name) or sk.types.get(re.sub(r"^/layers\.\d+/", "/layers.1/", name))
    if t is None:
        return helper.make_empty_tensor_value_info(name)
    v = onnx.ValueInfoProto(name=name)
    v.type.tensor_type.elem_type = t.tensor_type.elem_type
    return v


def _top_level(sk: Skeleton, depth: int, reader: SafetensorsWeights, head_name: str, config: dict[str, Any], q,
               preset: Preset | None, writer: DataWriter, yes_id: int, no_id: int):
    """The skeleton's top-level nodes for `depth` layers, with the real embedding, final norm and direction."""
    import torch

    last = depth - 1
    nodes = [copy.deepcopy(n) for n in sk.top]
    for t, (start, count) in sk.fan_in.items():
        names = list(nodes[t].input[start : start + count])
        layer1 = names[1]
        nodes[t].input[start : start + count] = [names[0]] + [
            layer1.replace("/layers.1/", f"/layers.{i}/") if i > 1 else layer1 for i in range(1, depth)
        ]
    for (t, m), name in sk.last.items():
        layer1 = name.replace("/layers.2/", "/layers.1/")
        nodes[t].input[m] = layer1.replace("/layers.1/", f"/layers.{last}/") if last > 1 else layer1
    used = {x for n in nodes for x in n.input}
    inits: list[TensorProto] = []
    embedding_info = None
    table = None
    for name in sorted(used & set(sk.inits)):
        init = sk.inits[name]
        match = sk._weight(name, None)
        if match is None:
            if init.data_location == TensorProto.EXTERNAL:
                raise StreamError(f"the top-level initializer {name} is not a known weight; cannot stream this graph")
            inits.append(init)
            continue
        pname, transposed = match
        if pname == "model.embed_tokens.weight":
            table = name
            continue
        if pname == "model.norm.weight":
            value = torch.ones(config["hidden_size"]) if q is not None else reader.tensor(pname).float()
        elif pname == "direction":
            value = _direction(reader, head_name, yes_id, no_id, q)
        else:
            raise StreamError(f"the top level reads {pname}; cannot stream this graph")
        inits.append(writer.add(name, value.numpy()))
    if table is None:
        raise StreamError("the traced graph has no embedding table")
    rows, width = reader.shape("model.embed_tokens.weight")

    def rows_of(start: int, stop: int) -> np.ndarray:
        chunk = reader.rows("model.embed_tokens.weight", torch.arange(start, stop)).float()
        if q is not None:
            from qrr.quant.rotate import rotate_rows

            chunk = rotate_rows(chunk, q)
        return chunk.numpy()

    if preset is not None and preset.embedding_bits is not None:
        from qrr.quant.onnx_quant import quantize_embedding_blocks

        gather = next(n for n in nodes if n.op_type == "Gather" and n.input[0] == table)
        placeholder = TensorProto(name=table, data_type=TensorProto.FLOAT, dims=[rows, width])
        sub = helper.make_model(helper.make_graph([gather], "embedding", [], [], initializer=[placeholder]))
        if preset.embedding_bits == 4 or preset.embedding_block:
            embedding_info = quantize_embedding_blocks(sub, preset.embedding_block or 32, preset.embedding_bits,
                                                       rows_of=rows_of)
        else:
            raise StreamError("the streamed export quantizes the embedding in blocks; per-row int8 is not streamed")
        new = _copy(sub.graph.node[0], onnx.NodeProto)
        nodes[nodes.index(gather)] = new
        inits += [writer.add(t.name, numpy_helper.to_array(t)) for t in sub.graph.initializer]
    else:
        chunks = (rows_of(s, min(s + 8192, rows)) for s in range(0, rows, 8192))
        inits.append(writer.add_rows(table, (rows, width), np.float32, chunks))
    return nodes, inits, embedding_info


def _direction(reader: SafetensorsWeights, head_name: str, yes_id: int, no_id: int, q):
    """h · direction is the score logit: W[yes] − W[no] of the head (its rotated rows when rotated)."""
    import torch

    rows = list(reader.rows(head_name, torch.tensor([yes_id, no_id])).float())
    if q is not None:
        from qrr.quant.rotate import rotate_rows

        gain = reader.tensor("model.norm.weight").float()
        rows = list(rotate_rows(torch.stack(rows), q, gain))
    return (rows[0].double() - rows[1].double()).float()


def _io(values, depth: int) -> list[onnx.ValueInfoProto]:
    """Graph inputs/outputs of the skeleton with the layer count of the real model."""
    out = []
    for v in values:
        v = copy.deepcopy(v)
        if v.name in ("past_key_values", "present"):
            dim = v.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_value = depth
        out.append(v)
    return out


def _toposort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Kahn's order: each node after the nodes whose outputs it reads."""
    produced_by: dict[str, int] = {}
    for k, n in enumerate(nodes):
        for o in n.output:
            if o in produced_by:
                raise StreamError(f"two nodes of the assembled graph write {o}")
            produced_by[o] = k
    waiting = [len({produced_by[x] for x in n.input if x in produced_by}) for n in nodes]
    readers: dict[int, list[int]] = {}
    for k, n in enumerate(nodes):
        for d in {produced_by[x] for x in n.input if x in produced_by}:
            readers.setdefault(d, []).append(k)
    ready = [k for k, w in enumerate(waiting) if w == 0]
    order = []
    while ready:
        k = ready.pop()
        order.append(nodes[k])
        for r in readers.get(k, []):
            waiting[r] -= 1
            if waiting[r] == 0:
                ready.append(r)
    if len(order) != len(nodes):
        stuck = [n for k, n in enumerate(nodes) if waiting[k]]
        blocked = [f"{n.name} ({x})" for n in stuck for x in n.input if x in produced_by
                   and nodes[produced_by[x]] not in stuck][:1]
        raise StreamError(f"the assembled graph has a cycle: {len(stuck)} nodes wait, e.g. {stuck[0].name}; {blocked}")
    return order


__all__ = ["StreamError", "export_streamed", "should_stream"]
