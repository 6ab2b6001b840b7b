"""int8 and int4: the graph they produce, and their accuracy on stand-ins with activation outliers."""

from __future__ import annotations

import json

import pytest
from conftest import needs_export

needs_export()

import onnx  # noqa: E402
import torch  # noqa: E402

from qrr.export import export_onnx, validate_artifact  # noqa: E402
from qrr.export.progress import Progress  # noqa: E402
from qrr.quant.smooth import fake_quant, fold  # noqa: E402
from qrr.runtime import QrrError, load_manifest  # noqa: E402

pytestmark = pytest.mark.slow

QUIET = Progress(enabled=False)
# The targets of the quantization issue, on the built-in set (README, "Quantization").
TARGETS = {
    "int8": {"max_abs_dp": 0.02, "spearman_mean": 0.99, "top1_agreement": 0.95},
    "int4": {"spearman_mean": 0.97, "top1_agreement": 0.90},
}


@pytest.fixture(scope="module")
def trained(outlier_standin):
    return outlier_standin


@pytest.fixture(scope="module")
def int4_artifact(tmp_path_factory, trained):
    out = tmp_path_factory.mktemp("int4") / "artifact"
    export_onnx(str(trained), out, quant="int4", validate=False, progress=QUIET)
    return out


def test_int4_graph(int4_artifact):
    m = load_manifest(int4_artifact)
    q = m["quantization"]
    assert m["precision"] == "int4" and q["linear"]["bits"] == 4 and q["method"] == "awq"
    assert q["embedding"]["op"] == "GatherBlockQuantized" and q["smoothing"]["calibration"]["pairs"] > 0
    assert q["linear"]["eight_bit"] == {"projections": ["q_proj", "k_proj", "v_proj"], "block_size": 128,
                                        "count": 2 * 3, "rounding": "rtn"}
    assert q["linear"]["count"] == 2 * 4 and q["embedding"]["bits"] == 8
    assert "(int4 weights; q_proj, k_proj, v_proj, the embedding at 8 bits)" in (int4_artifact / "README.md").read_text()
    model = onnx.load(str(int4_artifact / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "GatherBlockQuantized" in ops and ops.count("MatMulNBits") == 2 * 7
    grids = {n.name.split("/")[-2]: tuple(a.i for a in n.attribute if a.name in ("bits", "block_size"))
             for n in model.graph.node if n.op_type == "MatMulNBits"}
    wide, narrow = (128, 8), (32, 4)  # attributes in the order onnxruntime's quantizer writes them
    assert {k: sorted(v) for k, v in grids.items()} == {
        "q_proj": sorted(wide), "k_proj": sorted(wide), "v_proj": sorted(wide), "o_proj": sorted(narrow),
        "gate_proj": sorted(narrow), "up_proj": sorted(narrow), "down_proj": sorted(narrow)}
    gather = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    attrs = {a.name: a.i for a in gather.attribute}
    assert attrs["bits"] == 8 and attrs["block_size"] == 64  # the tiny stand-in's rows (64) are narrower than 128
    assert {t.name: t for t in model.graph.initializer}["direction"].data_type == onnx.TensorProto.FLOAT


def test_int4_at_8_bits_where_4_bits_move_the_scores_most(trained, int4_artifact, tmp_path):
    """q/k/v and the embedding at 8 bits (the preset) against 4 bits throughout (--eight-bit none): the
    mixed artifact's worst pair moves less, and it stays smaller than int8."""
    uniform = tmp_path / "uniform"
    export_onnx(str(trained), uniform, quant="int4", eight_bit=(), validate=False, progress=QUIET)
    q = load_manifest(uniform)["quantization"]
    assert "eight_bit" not in q["linear"] and q["embedding"]["bits"] == 4
    drift = {name: validate_artifact(art, str(trained), max_drop=1.0)["metrics"]["max_abs_dp"]
             for name, art in (("mixed", int4_artifact), ("uniform", uniform))}
    assert drift["mixed"] < drift["uniform"], drift


def test_eight_bit_parts_are_checked():
    from qrr.export.presets import parse_eight_bit, preset_for

    assert parse_eight_bit("k_proj, embedding,k_proj") == ("k_proj", "embedding")
    assert parse_eight_bit("none") == ()
    preset = preset_for("int4", eight_bit=("down_proj", "embedding"))
    assert preset.eight_bit == ("down_proj",) and preset.embedding_bits == 8 and preset.wide == (("down_proj",), 128)
    assert preset_for("int4", eight_bit=()).embedding_bits == 4 and preset_for("int4", eight_bit=()).wide == ((), 128)
    with pytest.raises(QrrError, match="unknown part 'lm_head'"):
        parse_eight_bit("q_proj,lm_head")
    with pytest.raises(QrrError, match="int8 is 8-bit throughout"):
        preset_for("int8", eight_bit=("q_proj",))
    with pytest.raises(QrrError, match="apply to int8 and int4"):
        preset_for("fp32", eight_bit=())


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_presets_meet_the_targets_on_the_outlier_checkpoint(trained, tmp_path, quant):
    out = tmp_path / quant
    export_onnx(str(trained), out, quant=quant, validate=False, progress=QUIET)
    metrics = validate_artifact(out, str(trained), max_drop=1.0)["metrics"]
    for key, bound in TARGETS[quant].items():
        ok = metrics[key] <= bound if key == "max_abs_dp" else metrics[key] >= bound
        assert ok, f"{quant} {key} = {metrics[key]:.4f}, target {bound}"


def test_plain_rounding_is_worse_than_smoothing_on_outliers(trained, tmp_path):
    drift = {}
    for method in ("rtn", "smoothquant"):
        out = tmp_path / method
        export_onnx(str(trained), out, quant="int8", method=method, kernel="matmulnbits", accuracy_level=0,
                    rotate=False, validate=False, progress=QUIET)
        drift[method] = validate_artifact(out, str(trained), max_drop=1.0)["metrics"]["mean_abs_dp"]
    assert drift["smoothquant"] < drift["rtn"]


@pytest.mark.parametrize("sites, tolerance", [(("attn", "mlp", "down"), 1e-3), (("vo",), 1e-4)])
def test_fold_preserves_the_function(trained, sites, tolerance):
    """Scales folded at each site leave the logits unchanged; "vo" is one scale per value channel, folded into
    v_proj rows and the o_proj columns of every query head of its group (grouped-query attention)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32).eval()
    ids = torch.randint(0, 400, (2, 20))
    widths = {"attn": model.config.hidden_size, "mlp": model.config.hidden_size,
              "down": model.config.intermediate_size, "vo": model.model.layers[0].self_attn.v_proj.out_features}
    with torch.no_grad():
        before = model(input_ids=ids).logits
        gen = torch.Generator().manual_seed(0)
        for layer in model.model.layers:
            for site in sites:
                fold(layer, site, torch.rand(widths[site], generator=gen) * 10 + 0.1)
        after = model(input_ids=ids).logits
    torch.testing.assert_close(before, after, atol=tolerance, rtol=tolerance)


def test_fake_quant_matches_the_grid():
    w = torch.randn(8, 64)
    q = fake_quant(w, bits=8, block=32, symmetric=True)
    scale = w.reshape(8, 2, 32).abs().amax(-1, keepdim=True) / 127
    steps = (q.reshape(8, 2, 32) / scale)
    assert torch.allclose(steps, steps.round(), atol=1e-4) and (q - w).abs().max() <= scale.max() / 2 + 1e-6


def test_the_alpha_search_rounds_as_the_rowwise_kernel_does():
    """The searched SmoothQuant α is chosen by kernel_matmul's output error: it must be the output of the rowwise
    graph onnxruntime runs (int8 per row × int8 per output column), not an idealised one."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from qrr.quant.onnx_quant import quantize_rowwise_int8
    from qrr.quant.smooth import kernel_matmul

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, 96, generator=gen)
    x[:, 5] *= 40  # an outlier channel: the row scales are set by it
    w = torch.randn(48, 96, generator=gen) * 0.05
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 48])],
        initializer=[numpy_helper.from_array(w.T.contiguous().numpy(), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    quantize_rowwise_int8(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ran = session.run(None, {"x": x.numpy()})[0]
    emulated = kernel_matmul(x, w, kernel="rowwise", bits=8, block=32, symmetric=True, accuracy_level=4).numpy()
    exact = (x @ w.T).numpy()
    np.testing.assert_allclose(ran, emulated, rtol=1e-4, atol=1e-4 * np.abs(exact).max())
    assert np.abs(ran - exact).max() > 100 * np.abs(ran - emulated).max()  # the rounding error is what it models


def test_searched_alpha_preserves_the_function_and_lowers_the_kernel_error(trained):
    """α searched per site (Preset.alpha None): the fp32 function is unchanged (a fold), and the folded layer's
    output as the rowwise kernel rounds it is far closer to the exact one than without smoothing when the site's
    input has outlier channels, and no worse when it has none."""
    from transformers import AutoModelForCausalLM

    from qrr.quant.smooth import SiteStats, kernel_matmul, smoothquant_layer

    def load_layer():
        return AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32).eval().model.layers[0]

    rounding = {"kernel": "rowwise", "bits": 8, "block": 32, "symmetric": True, "accuracy_level": 4}
    gen = torch.Generator().manual_seed(0)
    flat = torch.randn(256, load_layer().mlp.down_proj.in_features, generator=gen)
    spiky = flat.clone()
    spiky[:, :3] *= 300
    for name, x in (("flat", flat), ("spiky", spiky)):
        layer = load_layer()
        w = layer.mlp.down_proj.weight.detach().clone()
        exact = x @ w.T
        unsmoothed = (kernel_matmul(x, w, **rounding) - exact).pow(2).mean()
        h = torch.randn(2, 5, layer.mlp.gate_proj.in_features, generator=torch.Generator().manual_seed(1))
        before = layer.mlp(h)
        stats = {"down": SiteStats(x.abs().amax(0), x.abs().mean(0), x)}
        (alpha,) = smoothquant_layer(layer, stats, None, ("down",), **rounding)
        torch.testing.assert_close(before, layer.mlp(h), atol=1e-4, rtol=1e-4)
        scale = (layer.mlp.down_proj.weight / w)[0]  # the folded per-channel scale
        smoothed = (kernel_matmul(x / scale, layer.mlp.down_proj.weight, **rounding) - exact).pow(2).mean()
        if name == "spiky":
            assert smoothed < unsmoothed / 5, (alpha, smoothed, unsmoothed)
        else:
            assert smoothed <= unsmoothed * 1.05, (alpha, smoothed, unsmoothed)


def test_int4_is_smaller_than_int8(int4_artifact, int8_artifact):
    size = lambda a: sum(json.loads((a / "qrr.json").read_text())["files"].values())  # noqa: E731
    assert size(int4_artifact) < size(int8_artifact)


def test_options_only_for_int8_and_int4(trained, tmp_path):
    with pytest.raises(QrrError, match="apply to int8 and int4"):
        export_onnx(str(trained), tmp_path / "x", quant="none", method="awq", progress=QUIET)
    with pytest.raises(QrrError, match="unknown method"):
        export_onnx(str(trained), tmp_path / "y", quant="int4", method="gptq-ish", progress=QUIET)


def test_int4_embedding_equals_onnxruntimes_own_gather_quantizer():
    """Our 4-bit GatherBlockQuantized dequantizes exactly as onnxruntime's quantizer does (asymmetric blocks of 32),
    blocks of one sign included (their range is stretched to 0, so the zero point stays in 0..15)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    from qrr.quant.onnx_quant import quantize_embedding_blocks

    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 64)).astype(np.float32)
    table[3, 5] = 9.0  # an outlier decides only its own block's step
    table[7, :32] = np.abs(table[7, :32]) + 0.5  # a block that holds no negative value

    def model():
        graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["out"], name="embed", axis=0)], "g",
                                  [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
                                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 64])],
                                  [numpy_helper.from_array(table, "table")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    ours = model()
    assert quantize_embedding_blocks(ours, 32)["op"] == "GatherBlockQuantized"
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False, bits=4, op_types_to_quantize=("Gather",),
                                          quant_axes=(("Gather", 1),))
    quantizer = MatMulNBitsQuantizer(model(), algo_config=config, op_types_to_quantize=("Gather",))
    quantizer.process()
    ids = np.arange(50, dtype=np.int64)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]

    got, theirs = run(ours), run(quantizer.model.model)
    np.testing.assert_array_equal(got, theirs)
    assert np.abs(got[7] - table[7]).max() < 0.2  # the one-sign block is not clipped
    assert np.abs(got[3] - table[3])[32:].max() < np.abs(got[3] - table[3])[:32].max()


def test_rotation_preserves_the_function(trained):
    """The rotated scoring module gives the unrotated one's P(yes) within 1e-5, whatever the seed."""
    import copy

    from transformers import AutoModelForCausalLM

    from qrr.export.graph import ScoringModule
    from qrr.quant.rotate import hadamard, rotate

    model = AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32, attn_implementation="eager").eval()
    ids = torch.randint(0, 400, (3, 24))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    past = torch.zeros(model.config.num_hidden_layers, 2, model.config.num_key_value_heads, 0, 16)
    keep = torch.tensor(0)
    with torch.no_grad():
        before = torch.sigmoid(ScoringModule(model, 5, 6)(ids, mask, past, keep)[0])
        for seed, values in ((0, False), (7, True)):
            rotated = copy.deepcopy(model)
            info = rotate(rotated, seed=seed, values=values)
            after = torch.sigmoid(ScoringModule(rotated, 5, 6)(ids, mask, past, keep)[0])
            torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
            assert all(torch.equal(layer.input_layernorm.weight, torch.ones(64)) for layer in rotated.model.layers)
            assert "Hadamard" in info["residual"]
    for n in (64, 48):  # a power of two, and not
        q = hadamard(n, seed=3)
        torch.testing.assert_close(q @ q.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)


def test_rowwise_int8_graph_and_neighbour_independence(int8_artifact):
    """The default int8 artifact runs the integer GEMM with per-row scales: a pair's score is the same alone,
    in a batch, in another order and in another batch plan (fp32 rounding of the attention sums aside)."""
    import numpy as np

    from qrr.runtime import Reranker
    from conftest import DOCS, QUERY

    m = load_manifest(int8_artifact)
    assert m["quantization"]["linear"]["op"] == "MatMulIntegerToFloat"
    assert m["quantization"]["smoothing"]["rounding"]["method"] == "gptq"
    assert m["quantization"]["embedding"]["op"] == "GatherBlockQuantized" and m["quantization"]["embedding"]["bits"] == 8
    assert m["quantization"]["linear"]["two_pass"]["count"] == 2 * 2  # k_proj and v_proj of each layer
    ops = [n.op_type for n in onnx.load(str(int8_artifact / "model.onnx"), load_external_data=False).graph.node]
    assert "MatMulNBits" not in ops and "DynamicQuantizeLinear" not in ops
    assert ops.count("MatMulIntegerToFloat") == 2 * (7 + 2)  # a second GEMM for k and v's residuals
    docs = [d for d in DOCS if d]
    together = np.array(Reranker(int8_artifact).score(QUERY, docs))
    alone = np.array([Reranker(int8_artifact).score(QUERY, [d])[0] for d in docs])
    small = Reranker(int8_artifact, batch_tokens=16)
    order = np.random.default_rng(0).permutation(len(docs))
    shuffled = np.empty(len(docs))
    shuffled[order] = small.score(QUERY, [docs[i] for i in order])
    assert np.abs(together - alone).max() < 1e-6 and np.abs(together - shuffled).max() < 1e-6


def test_two_pass_activations_run_as_emulated_and_stay_row_independent():
    """A projection read in two int8 passes (the row, then its rounding residual at a step 254 times finer)
    computes what the ablation emulates, is far closer to the exact product than one pass, and a row's result is
    bit for bit the same alone and in a batch."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from qrr.quant.onnx_quant import quantize_linear

    gen = torch.Generator().manual_seed(8)
    x = torch.randn(29, 96, generator=gen)
    w = torch.randn(40, 96, generator=gen) * 0.05

    def session(two_pass):
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"], name="/layers.0/self_attn/k_proj/MatMul")], "one",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 96])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 40])],
            initializer=[numpy_helper.from_array(w.T.contiguous().numpy(), "w")])
        model, scheme = quantize_linear(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                                        bits=8, block_size=32, symmetric=True, accuracy_level=4, method="rtn",
                                        kernel="rowwise", two_pass=two_pass)
        assert ("two_pass" in scheme) == bool(two_pass)
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    two, one = session(("k_proj",)), session(())
    ran, ran_one = (s.run(None, {"x": x.numpy()})[0] for s in (two, one))
    step = x.abs().amax(-1, keepdim=True) / 127
    first = (x / step).round() * step
    emulated = first + ((x - first) / (step / 254)).round() * (step / 254)
    w_step = w.abs().amax(-1, keepdim=True) / 127
    expected = (emulated @ ((w / w_step).round() * w_step).T).numpy()
    exact = (x @ w.T).numpy()
    np.testing.assert_allclose(ran, expected, rtol=1e-5, atol=1e-5 * np.abs(exact).max())
    weights_only = (x @ ((w / w_step).round() * w_step).T).numpy()  # what is left is the weights' rounding
    assert np.abs(ran - weights_only).max() < np.abs(ran_one - weights_only).max() / 50
    alone = np.concatenate([two.run(None, {"x": x[i:i + 1].numpy()})[0] for i in range(len(x))])
    assert np.array_equal(alone, ran)
    with pytest.raises(QrrError, match="no MatMul of v_proj"):
        session(("v_proj",))


def test_two_pass_projections_are_checked():
    from qrr.export.presets import parse_two_pass, preset_for

    assert preset_for("int8").two_pass == ("k_proj", "v_proj")
    assert parse_two_pass("q_proj, k_proj,q_proj") == ("q_proj", "k_proj") and parse_two_pass("none") == ()
    assert preset_for("int8", two_pass=()).two_pass == ()
    assert preset_for("int8", kernel="matmulnbits").two_pass == ()  # MatMulNBits quantizes activations in blocks
    with pytest.raises(QrrError, match="unknown projection 'embedding' for two-pass"):
        parse_two_pass("k_proj,embedding")
    with pytest.raises(QrrError, match="rowwise int8 kernel's"):
        preset_for("int8", kernel="matmulnbits", two_pass=("k_proj",))
    with pytest.raises(QrrError, match="rowwise int8 kernel's"):
        preset_for("int4", two_pass=("k_proj",))
    with pytest.raises(QrrError, match="apply to int8 and int4"):
        preset_for("fp32", two_pass=())


def test_two_pass_moves_the_scores_less_than_one_pass(trained, tmp_path):
    """k and v read in two int8 passes (the preset) against one pass everywhere (--two-pass none), on the
    outlier stand-in: the worst pair moves less."""
    one = tmp_path / "one-pass"
    export_onnx(str(trained), one, quant="int8", two_pass=(), validate=False, progress=QUIET)
    assert "two_pass" not in load_manifest(one)["quantization"]["linear"]
    two = tmp_path / "two-pass"
    export_onnx(str(trained), two, quant="int8", validate=False, progress=QUIET)
    drift = {name: validate_artifact(art, str(trained), max_drop=1.0)["metrics"]["max_abs_dp"]
             for name, art in (("two", two), ("one", one))}
    assert drift["two"] < drift["one"], drift


def _correlated_inputs(rows: int, width: int, seed: int = 0) -> torch.Tensor:
    """Inputs whose channels are correlated and of unequal size, as a layer's real inputs are: one distribution
    (the mixing matrix), samples drawn by `seed`."""
    mix = torch.randn(width, width, generator=torch.Generator().manual_seed(width)) * torch.logspace(0, -1.5, width)
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed)) @ mix.T


def _grid(kind: str, weight):
    from qrr.quant.gptq import nbits_grid, rowwise_grid

    return rowwise_grid(weight) if kind == "rowwise" else nbits_grid(weight, 4, 32)


@pytest.mark.parametrize("kind", ["rowwise", "int4"])
def test_gptq_rounding_lies_on_the_grid_and_lowers_the_output_error(kind):
    """GPTQ's weights are grid values of the kernel's format (the weights that fix each block's range kept as
    they are), and on inputs like its calibration ones the layer's output moves less than with
    round-to-nearest, by a wide margin."""
    from qrr.quant.gptq import gptq_round

    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(96, 64, generator=gen) * 0.05
    calibration, held_out = _correlated_inputs(2048, 64, seed=2), _correlated_inputs(512, 64, seed=3)
    grid = _grid(kind, weight)
    rounded = gptq_round(weight, calibration.double().T @ calibration.double(), grid)
    assert torch.equal(rounded[grid.keep], weight[grid.keep])
    blocks = torch.arange(64) // grid.block
    scale, zero = grid.scale[:, blocks], grid.zero[:, blocks]
    codes = rounded / scale + zero
    assert ((codes - codes.round()).abs()[~grid.keep]).max() < 1e-3
    assert (codes.round() >= grid.codes[0]).all() and (codes.round() <= grid.codes[1]).all()
    nearest = (torch.clamp(torch.round(weight / scale + zero), *grid.codes) - zero) * scale
    exact = held_out @ weight.T
    gptq_err = (held_out @ rounded.T - exact).pow(2).mean()
    nearest_err = (held_out @ nearest.T - exact).pow(2).mean()
    assert gptq_err < 0.6 * nearest_err, (gptq_err, nearest_err)


@pytest.mark.parametrize("kind", ["rowwise", "int4"])
def test_the_quantizers_store_gptq_weights_exactly(kind):
    """The ONNX quantizers, which derive their scales and zero points from the weights they are given, keep
    every value GPTQ chose: the graph multiplies by exactly the GPTQ weight (the weights that fix the ranges
    rounded as round-to-nearest would)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from qrr.quant.gptq import gptq_round
    from qrr.quant.onnx_quant import quantize_linear

    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(48, 64, generator=gen)
    x = _correlated_inputs(1024, 64, seed=5).double()
    grid = _grid(kind, weight)
    rounded = gptq_round(weight, x.T @ x, grid)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 48])],
                              initializer=[numpy_helper.from_array(np.ascontiguousarray(rounded.numpy().T), "w")])
    model, _ = quantize_linear(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), bits=8 if
                               kind == "rowwise" else 4, block_size=32, symmetric=kind == "rowwise", accuracy_level=0,
                               method="rtn", kernel="rowwise" if kind == "rowwise" else "matmulnbits")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    stored = torch.from_numpy(session.run(None, {"x": np.eye(64, dtype=np.float32)})[0]).T  # [48, 64]
    blocks = torch.arange(64) // grid.block
    scale, zero = grid.scale[:, blocks], grid.zero[:, blocks]
    expected = torch.where(grid.keep, (torch.clamp(torch.round(weight / scale + zero), *grid.codes) - zero) * scale,
                           rounded)
    torch.testing.assert_close(stored, expected, rtol=1e-6, atol=0)


def test_int8_rounds_by_gptq_unless_told_otherwise(trained, tmp_path):
    from qrr.export.presets import preset_for

    assert preset_for("int8").rounding == "gptq"
    assert preset_for("int8", kernel="matmulnbits").rounding == "nearest"
    assert preset_for("int8", method="rtn").rounding == "nearest"
    assert preset_for("int8", method="rtn", rounding="gptq", calibration="pairs.jsonl").rounding == "gptq"
    assert preset_for("int4").rounding == "nearest"
    assert preset_for("int4", rounding="gptq").nbits == (4, 32)
    with pytest.raises(QrrError, match="rowwise kernel's grid"):
        preset_for("int8", kernel="matmulnbits", rounding="gptq")  # the int8 preset's blocks are symmetric
    with pytest.raises(QrrError, match="unknown rounding"):
        preset_for("int8", rounding="stochastic")
    with pytest.raises(QrrError, match="uses none"):
        preset_for("int8", method="rtn", calibration="pairs.jsonl")


def test_gptq_rounds_each_projection_onto_its_own_grid():
    """With 8-bit projections in a 4-bit preset, GPTQ rounds q/k/v (one input, one H) onto the 8-bit grid in its
    own blocks and the rest onto the 4-bit one, as the quantizer will store them."""
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

    from qrr.quant.gptq import nbits_grid, round_layer

    config = Qwen3Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, num_hidden_layers=1)
    torch.manual_seed(0)
    layer = Qwen3DecoderLayer(config, 0).eval()
    before = {n: m.weight.detach().clone() for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    wide = _correlated_inputs(1024, 128, seed=6)
    narrow = _correlated_inputs(1024, 64, seed=7)
    covariances = {site: (x.T @ x).float() for site, x in
                   (("attn", narrow), ("vo", narrow), ("mlp", narrow), ("down", wide))}
    with torch.no_grad():
        round_layer(layer, covariances, (4, 32), eight_bit=(("q_proj", "k_proj", "v_proj"), 64))

    def on_grid(name, weight, bits):
        block = 64 if bits == 8 else 32
        grid = nbits_grid(before[name], bits, block)
        blocks = torch.arange(weight.shape[1]) // block
        codes = weight / grid.scale[:, blocks] + grid.zero[:, blocks]
        return bool(((codes - codes.round()).abs()[~grid.keep]).max() < 1e-3)

    for name, module in layer.named_modules():
        if isinstance(module, torch.nn.Linear):
            eight = name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj")
            assert on_grid(name, module.weight, 8 if eight else 4), name
            assert on_grid(name, module.weight, 4) != eight, name  # 8-bit values mostly fall between 4-bit ones
