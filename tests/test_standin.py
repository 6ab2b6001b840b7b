"""Stand-in checkpoints: the outlier rescale keeps the function and creates the outliers; the streamed bf16
writer of the 4B and 8B shapes writes what transformers writes and loads."""

from __future__ import annotations

import pytest
from conftest import needs_export

needs_export()

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from qrr.export.standin import (  # noqa: E402
    SHAPES,
    make_standin,
    qwen3_tensor_shapes,
    write_streamed_standin,
)
from qrr.runtime.errors import QrrError  # noqa: E402


@pytest.mark.slow
def test_outliers_preserve_the_function_and_create_outliers(tmp_path):
    plain = make_standin(tmp_path / "plain", seed=3, init_std=0.2)
    spiky = make_standin(tmp_path / "spiky", seed=3, init_std=0.2, outliers=100.0)
    a = AutoModelForCausalLM.from_pretrained(plain, dtype=torch.float32).eval()
    b = AutoModelForCausalLM.from_pretrained(spiky, dtype=torch.float32).eval()
    ids = torch.randint(0, 500, (2, 24))
    seen = {}
    def keep_input(module, inputs, output):
        seen.setdefault("x", inputs[0])  # a forward hook that returns something replaces the output

    hook = b.model.layers[0].self_attn.q_proj.register_forward_hook(keep_input)
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=ids).logits, b(input_ids=ids).logits, atol=2e-4, rtol=1e-4)
    hook.remove()
    magnitude = seen["x"].abs().amax(dim=(0, 1))
    assert magnitude.max() / magnitude.median() > 30


# int8 and int4 against the quantization targets on an outlier checkpoint: tests/test_quant.py
@pytest.mark.slow
@pytest.mark.parametrize("quant, tolerance", [("fp16", 0.01)])
def test_fp16_survives_outliers(outlier_standin, tmp_path, quant, tolerance):
    from qrr.export import export_onnx, validate_artifact
    from qrr.export.progress import Progress

    out = tmp_path / quant
    export_onnx(str(outlier_standin), out, quant=quant, validate=False, progress=Progress(enabled=False))
    report = validate_artifact(out, str(outlier_standin), max_drop=tolerance)
    assert report["metrics"]["max_abs_dp"] < tolerance
    assert report["metrics"]["top1_agreement"] >= 0.95


def test_streamed_standin_is_a_sharded_bf16_checkpoint_transformers_loads(tmp_path):
    import json

    from safetensors import safe_open

    out = write_streamed_standin(tmp_path / "streamed", shape="tiny", seed=5, max_shard_bytes=100_000)
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    size = 0
    for shard in shards:
        with safe_open(out / shard, framework="pt") as f:
            for name in f.keys():
                assert index["weight_map"][name] == shard
                tensor = f.get_tensor(name)
                assert tensor.dtype == torch.bfloat16
                size += tensor.numel() * 2
    assert index["metadata"]["total_size"] == size

    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    assert model.dtype == torch.bfloat16
    for key, value in SHAPES["tiny"].items():
        assert getattr(model.config, key) == value, key
    assert model.config.rms_norm_eps == 1e-6 and model.config.max_position_embeddings == 40960
    weights = model.state_dict()
    assert weights["model.layers.1.self_attn.k_norm.weight"].eq(1).all()
    assert abs(weights["model.layers.0.mlp.up_proj.weight"].float().std().item() - 0.02) < 0.002

    # seeded per tensor: the same weights whatever the shard size
    single = write_streamed_standin(tmp_path / "single", shape="tiny", seed=5)
    assert (single / "model.safetensors").is_file() and not (single / "model.safetensors.index.json").exists()
    again = AutoModelForCausalLM.from_pretrained(single).state_dict()
    assert all(torch.equal(weights[name], again[name]) for name in weights)


@pytest.mark.parametrize("shape", ["4b", "8b"])
def test_streamed_tensor_names_and_shapes_are_transformers_own(shape):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**SHAPES[shape])
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:  # saved once, as embed_tokens
        del expected["lm_head.weight"]
    assert {name: shape for name, shape, _ in qwen3_tensor_shapes(config)} == expected


def test_streamed_shapes_refuse_training_and_outliers(tmp_path):
    with pytest.raises(QrrError, match="whole model in memory"):
        make_standin(tmp_path / "8b", shape="8b", train_steps=10)
    with pytest.raises(QrrError, match="outliers"):
        make_standin(tmp_path / "tiny", shape="tiny", streamed=True, outliers=100.0)
    assert not (tmp_path / "8b").exists()
