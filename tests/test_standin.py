"""Stand-in checkpoints: the outlier rescale keeps the function and creates the outliers."""

from __future__ import annotations

import pytest
from conftest import needs_export

needs_export()

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from qrr.export.standin import make_standin  # noqa: E402

pytestmark = pytest.mark.slow


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
@pytest.mark.parametrize("quant, tolerance", [("fp16", 0.01)])
def test_fp16_survives_outliers(outlier_standin, tmp_path, quant, tolerance):
    from qrr.export import export_onnx, validate_artifact
    from qrr.export.progress import Progress

    out = tmp_path / quant
    export_onnx(str(outlier_standin), out, quant=quant, validate=False, progress=Progress(enabled=False))
    report = validate_artifact(out, str(outlier_standin), max_drop=tolerance)
    assert report["metrics"]["max_abs_dp"] < tolerance
    assert report["metrics"]["top1_agreement"] >= 0.95
