"""OpenVINO artifacts: export at each precision, parity with PyTorch, devices up to the device call."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DOCS, QUERY, needs_export, rewrite_in_place

needs_export()
pytest.importorskip("openvino")
pytest.importorskip("nncf")

from qrr.cli.main import export_main  # noqa: E402
from qrr.export import export_openvino, validate_artifact  # noqa: E402
from qrr.export.progress import Progress  # noqa: E402
from qrr.runtime import Reranker, load_manifest  # noqa: E402
from qrr.runtime.errors import ArtifactError, DeviceError, InputError, QrrError  # noqa: E402
from qrr.runtime.openvino import parse_openvino_device  # noqa: E402

QUIET = Progress(enabled=False)
pytestmark = pytest.mark.slow
TARGETS = {  # the quantization issue's targets, as for ONNX (tests/test_quant.py)
    "int8": {"max_abs_dp": 0.02, "spearman_mean": 0.99, "top1_agreement": 0.95},
    "int4": {"spearman_mean": 0.97, "top1_agreement": 0.90},
}


def _export(folder, checkpoint, quant):
    export_openvino(str(checkpoint), folder, quant=quant, validate=False, progress=QUIET)
    return folder


@pytest.fixture(scope="module")
def ov_fp32(tmp_path_factory, standin):
    return _export(tmp_path_factory.mktemp("ov") / "fp32", standin, "fp32")


def test_manifest_and_files(ov_fp32):
    m = load_manifest(ov_fp32)
    assert m["format"] == "openvino" and m["precision"] == "fp32" and m["model_file"] == "model.xml"
    assert set(m["files"]) == {"model.xml", "model.bin", "tokenizer.json"}
    props = m["openvino"]["properties"]
    assert props["INFERENCE_PRECISION_HINT"] == "f32" and props["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "0"
    rr = Reranker(ov_fp32)
    # the properties that change numbers are what the artifact asked for, not the plugin's defaults
    assert "f32" in rr.session.properties["INFERENCE_PRECISION_HINT"].lower().replace("float32", "f32")
    assert rr.session.properties["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "0"


def test_fp32_matches_pytorch_and_onnx(ov_fp32, fp32_artifact, reference):
    ov = Reranker(ov_fp32).score(QUERY, DOCS)
    theirs = reference.score_pairs([(QUERY, d) for d in DOCS])
    assert np.max(np.abs(np.array(ov) - np.array(theirs))) < 1e-4
    onnx_scores = Reranker(fp32_artifact).score(QUERY, DOCS)
    assert np.max(np.abs(np.array(ov) - np.array(onnx_scores))) < 1e-5


def test_prefix_reuse_and_chunks_are_exact_on_openvino(ov_fp32):
    whole = Reranker(ov_fp32, prefix_reuse=False).score(QUERY, DOCS)
    chunked = Reranker(ov_fp32, performance_hint="throughput")
    chunked.chunk_tokens = 9
    np.testing.assert_allclose(chunked.score(QUERY, DOCS), whole, atol=2e-6)


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_meet_the_targets_on_the_outlier_checkpoint(outlier_standin, tmp_path, quant):
    out = _export(tmp_path / quant, outlier_standin, quant)
    m = load_manifest(out)
    assert m["precision"] == quant and m["quantization"]["linear"]["bits"] == int(quant[3:])
    assert m["openvino"]["properties"]["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "32"
    if quant == "int4":  # q/k/v and the embedding at 8 bits (the preset), the rest at 4
        q = m["quantization"]
        assert q["linear"]["eight_bit"]["projections"] == ["q_proj", "k_proj", "v_proj"] and q["embedding"]["bits"] == 8
        assert _weight_types(out) == {"u8": 2 * 3 + 1, "u4": 2 * 4}
    # int8 activations are quantized per token: reuse and batching still give every pair's own score
    whole = Reranker(out, prefix_reuse=False).score(QUERY, DOCS)
    np.testing.assert_allclose(Reranker(out).score(QUERY, DOCS), whole, atol=1e-5)
    np.testing.assert_allclose([Reranker(out).score(QUERY, [d])[0] for d in DOCS], whole, atol=1e-5)
    metrics = validate_artifact(out, str(outlier_standin), max_drop=1.0)["metrics"]
    for key, bound in TARGETS[quant].items():
        ok = metrics[key] <= bound if key == "max_abs_dp" else metrics[key] >= bound
        assert ok, f"openvino {quant} {key} = {metrics[key]:.4f}, target {bound}"
    size = sum(m["files"][f] for f in ("model.xml", "model.bin"))
    assert size < 0.45 * (2 * 2**20), "compressed weights should be well under the fp32 size"


def _weight_types(artifact) -> dict[str, int]:
    """How many compressed weight tensors of each element type (u8, u4) the IR holds: the 2-D (int8) or
    3-D (grouped int4) integer constants, zero points and scales aside."""
    import openvino as ov

    counts: dict[str, int] = {}
    for op in ov.Core().read_model(str(artifact / "model.xml")).get_ops():
        shape = list(op.get_output_partial_shape(0).to_shape()) if op.get_type_name() == "Constant" else []
        kind = op.get_output_element_type(0).get_type_name() if shape else ""
        if kind in ("u8", "u4") and len(shape) >= 2 and shape[-1] > 1:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def test_options_that_are_onnx_only(standin, tmp_path, capsys):
    with pytest.raises(QrrError, match="ONNX option"):
        export_openvino(str(standin), tmp_path / "a", quant="fp16", progress=QUIET)
    assert export_main([str(standin), "-o", str(tmp_path / "b"), "--format", "openvino", "--quant", "int8",
                        "--accuracy-level", "4"]) == 2
    assert "accuracy-level" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_main([str(standin), "-o", str(tmp_path / "c"), "--format", "tflite"])
    assert not any(tmp_path.iterdir())


def test_export_command_makes_an_openvino_artifact(standin, tmp_path, capsys):
    out = tmp_path / "ov"
    assert export_main([str(standin), "-o", str(out), "--format", "openvino", "--quant", "none", "-q"]) == 0
    m = load_manifest(out)
    assert m["format"] == "openvino" and m["precision"] == "fp32" and m["validation"]["passed"]
    assert Reranker(out).score(QUERY, DOCS[:2])


def test_device_names():
    assert parse_openvino_device("cpu", ["CPU"]) == "CPU"
    assert parse_openvino_device("Gpu.1", ["CPU", "GPU.0", "GPU.1"]) == "GPU.1"
    assert parse_openvino_device("GPU", ["CPU", "GPU.0"]) == "GPU"
    assert parse_openvino_device("auto", ["CPU"]) == "AUTO"
    with pytest.raises(DeviceError, match="no NPU device"):
        parse_openvino_device("NPU", ["CPU"])
    with pytest.raises(InputError, match="unknown OpenVINO device"):
        parse_openvino_device("cuda", ["CPU"])


def test_gpu_is_asked_for_by_name(ov_fp32, monkeypatch):
    """Up to the device call: the GPU plugin gets the model, with the hint and without CPU-only properties."""
    import openvino as ov

    seen = {}
    real = ov.Core

    class FakeCore(real):
        @property
        def available_devices(self):
            return ["CPU", "GPU.0"]

        def compile_model(self, model, device, config):
            seen["device"], seen["config"] = device, dict(config)
            return super().compile_model(model, "CPU", {})

    monkeypatch.setattr(ov, "Core", FakeCore)
    rr = Reranker(ov_fp32, device="gpu", performance_hint="throughput")
    assert "CACHE_DIR" in seen["config"]  # GPU kernels compile slowly: the load cache keeps them
    del seen["config"]["CACHE_DIR"]
    assert seen == {"device": "GPU", "config": {"PERFORMANCE_HINT": "THROUGHPUT"}}
    assert rr.device_kind == "GPU" and len(rr.score(QUERY, DOCS[:2])) == 2
    with pytest.raises(DeviceError, match="no GPU device"):
        monkeypatch.setattr(ov, "Core", real)
        Reranker(ov_fp32, device="GPU")


def test_cpu_keeps_no_executors_per_shape(ov_fp32, tmp_path, monkeypatch):
    """Exported artifacts ask the CPU plugin to keep no per-shape executors (their memory grew with every input
    length); the property is write-only, so it is not read back. An older artifact without it keeps the default."""
    import shutil

    import openvino as ov

    seen = {}
    real = ov.Core

    class RecordingCore(real):
        def compile_model(self, model, device, config):
            seen.clear()
            seen.update(config)
            return super().compile_model(model, device, config)

    monkeypatch.setattr(ov, "Core", RecordingCore)
    assert load_manifest(ov_fp32)["openvino"]["properties"]["CPU_RUNTIME_CACHE_CAPACITY"] == "0"
    rr = Reranker(ov_fp32, load_cache=False)
    assert seen["CPU_RUNTIME_CACHE_CAPACITY"] == "0" and "CPU_RUNTIME_CACHE_CAPACITY" not in rr.session.properties
    assert len(rr.score(QUERY, DOCS[:2])) == 2
    older = shutil.copytree(ov_fp32, tmp_path / "older")
    manifest = json.loads((older / "qrr.json").read_text())
    del manifest["openvino"]["properties"]["CPU_RUNTIME_CACHE_CAPACITY"]
    (older / "qrr.json").write_text(json.dumps(manifest))
    Reranker(older, load_cache=False)
    assert "CPU_RUNTIME_CACHE_CAPACITY" not in seen


def test_missing_extra_is_named(ov_fp32, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_openvino(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and (name == "openvino" or name.startswith("openvino.")):
            raise ImportError(name)
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(ArtifactError, match=r"pip install -e '\.\[openvino\]' in the qrr clone"):
        Reranker(ov_fp32)


def test_corrupted_weights_are_refused(ov_fp32, tmp_path):
    import shutil

    broken = shutil.copytree(ov_fp32, tmp_path / "broken")
    data = (broken / "model.bin").read_bytes()
    (broken / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupted"):
        Reranker(broken)
    # same size, damaged graph: OpenVINO's own reader refuses it, in one line
    (broken / "model.bin").write_bytes(data)
    xml = (broken / "model.xml").read_text()
    (broken / "model.xml").write_text(xml.replace("<layers>", "<layers><oops", 1)[: len(xml)])
    manifest = json.loads((broken / "qrr.json").read_text())
    manifest["files"]["model.xml"] = (broken / "model.xml").stat().st_size
    (broken / "qrr.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="OpenVINO cannot read"):
        Reranker(broken)


def test_files_changed_under_a_loaded_reranker(ov_fp32, tmp_path):
    """With copy_weights the weights are read, not memory-mapped: rewriting the artifact in place does not kill
    a running scorer."""
    import shutil

    copy = shutil.copytree(ov_fp32, tmp_path / "copy")
    rr = Reranker(copy, copy_weights=True)
    before = rr.score(QUERY, DOCS[:3])
    rewrite_in_place(copy)
    assert rr.score(QUERY, DOCS[:3]) == before


def test_load_cache_is_used_and_follows_the_files(ov_fp32, tmp_path, monkeypatch):
    """The compiled model is imported from the load cache on the second load, with the same scores; OpenVINO's
    own blob names ignore the files' contents, so a rewritten artifact must get a new entry, and a damaged
    blob costs a warning and a compile, never the load."""
    import os
    import shutil
    import warnings

    from qrr.runtime.errors import LoadCacheWarning

    monkeypatch.setenv("QRR_CACHE", str(tmp_path / "cache"))
    copy = shutil.copytree(ov_fp32, tmp_path / "copy")
    expected = Reranker(copy, load_cache=False).score(QUERY, DOCS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoadCacheWarning)
        first, second = Reranker(copy), Reranker(copy)
    assert (first.session.load_cache, second.session.load_cache) == ("written", "used")
    assert first.score(QUERY, DOCS) == second.score(QUERY, DOCS) == expected
    (entry,) = (tmp_path / "cache").glob("load/*/*")
    (blob,) = entry.glob("*.blob")
    weights = copy / "model.bin"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert Reranker(copy).session.load_cache == "written"
    assert not entry.exists()  # the old version's entry is gone
    (entry,) = (tmp_path / "cache").glob("load/*/*")
    (blob,) = entry.glob("*.blob")
    blob.chmod(0o644)
    blob.write_bytes(b"\7" * blob.stat().st_size)
    with pytest.warns(LoadCacheWarning, match="unusable"):
        damaged = Reranker(copy)
    assert damaged.score(QUERY, DOCS) == expected
    assert Reranker(copy).session.load_cache == "written"
