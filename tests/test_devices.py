"""Device selection, the GPU code path up to the provider call, and fp16 artifacts on the CPU provider.

Set QRR_TEST_DEVICE=cuda (benchmarks/gpu_check.sh does) to run the parity tests on a real GPU as well.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import DOCS, QUERY

from qrr.runtime import DeviceError, InputError, Reranker
from qrr.runtime.onnxruntime import parse_device
from qrr.runtime.planner import DEFAULT_BATCH_TOKENS, GPU_BATCH_TOKENS, default_batch_tokens

CPU = ["CPUExecutionProvider"]
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
DML = ["DmlExecutionProvider", "CPUExecutionProvider"]
TEST_DEVICE = os.environ.get("QRR_TEST_DEVICE", "cpu")


@pytest.mark.parametrize(
    "device, available, expected",
    [
        ("cpu", CPU, ("cpu", 0)),
        ("auto", CPU, ("cpu", 0)),
        ("auto", CUDA, ("cuda", 0)),
        ("auto", DML, ("dml", 0)),
        ("cuda", CUDA, ("cuda", 0)),
        ("CUDA:1", CUDA, ("cuda", 1)),
        ("dml:2", DML, ("dml", 2)),
    ],
)
def test_parse_device(device, available, expected):
    assert parse_device(device, available) == expected


@pytest.mark.parametrize(
    "device, install",
    [("cuda", "onnxruntime-gpu"), ("cuda:0", "pip uninstall -y onnxruntime onnxruntime-gpu"), ("dml", "onnxruntime-directml")],
)
def test_missing_provider_names_what_to_install(device, install):
    with pytest.raises(DeviceError) as e:
        parse_device(device, CPU)
    assert install in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("device", ["gpu", "cpu:0", "cuda:x", 3])
def test_unknown_devices(device):
    with pytest.raises(InputError):
        parse_device(device, CUDA)


class FakeSession:
    """Stands in for onnxruntime.InferenceSession; records what the runtime asked for."""

    def __init__(self, path, sess_options=None, providers=None, started=None):
        self.providers = providers
        self.started = started or [p[0] if isinstance(p, tuple) else p for p in providers]

    def get_providers(self):
        return self.started

    def get_inputs(self):
        class I:
            def __init__(self, name, shape=("batch", "sequence"), type="tensor(int64)"):
                self.name, self.shape, self.type = name, shape, type

        past = I("past_key_values", (2, 2, 2, "past_sequence", 16), "tensor(float)")
        return [I("input_ids"), I("attention_mask"), past, I("present_length", ())]


def test_cuda_session_is_asked_for_the_device(fp32_artifact, monkeypatch):
    import onnxruntime as ort

    seen = {}

    def fake(path, sess_options=None, providers=None):
        seen["providers"] = providers
        return FakeSession(path, sess_options, providers)

    monkeypatch.setattr(ort, "get_available_providers", lambda: CUDA)
    monkeypatch.setattr(ort, "InferenceSession", fake)
    rr = Reranker(fp32_artifact, device="cuda:1")
    assert seen["providers"] == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert rr.session.io_device == ("cuda", 1) and rr.session.device == rr.device_kind == "cuda"
    # a GPU batches many documents per run (4x on workload A, H100); the CPU keeps small batches; asked is kept
    assert rr.batch_tokens == GPU_BATCH_TOKENS > DEFAULT_BATCH_TOKENS
    assert Reranker(fp32_artifact, device="cuda:1", batch_tokens=700).batch_tokens == 700
    assert Reranker(fp32_artifact).batch_tokens == DEFAULT_BATCH_TOKENS
    assert [default_batch_tokens(k) for k in ("CPU", "GPU.1", "NPU", "dml", "AUTO")] == [512, 16384, 512, 16384, 512]
    # a CPU batch holds as many activations for a wider model: the 0.6B, 4B and 8B widths
    assert [default_batch_tokens("cpu", h) for h in (1024, 2560, 4096, 64)] == [512, 204, 128, 512]
    assert default_batch_tokens("cuda", 4096) == GPU_BATCH_TOKENS


def test_gqa_on_a_gpu_warns_that_it_runs_on_the_cpu(gqa_artifact, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: CUDA)
    monkeypatch.setattr(ort, "InferenceSession", lambda p, sess_options=None, providers=None: FakeSession(p, None, providers))
    # an artifact that attends with GroupQueryAttention in int8 runs those nodes on the CPU: the user is told
    with pytest.warns(RuntimeWarning, match="GroupQueryAttention in int8, which the cuda provider does not run"):
        Reranker(gqa_artifact, device="cuda:1")


def test_no_silent_fallback_to_cpu(fp32_artifact, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: CUDA)
    monkeypatch.setattr(ort, "InferenceSession", lambda p, sess_options=None, providers=None: FakeSession(p, None, providers, CPU))
    with pytest.raises(DeviceError, match="could not start CUDAExecutionProvider"):
        Reranker(fp32_artifact, device="cuda")


def test_io_binding_path_gives_the_same_scores(fp32_artifact):
    plain = Reranker(fp32_artifact)
    bound = Reranker(fp32_artifact)
    assert bound.session.io_device is None  # the CPU device runs without binding
    bound.session.io_device = ("cpu", 0)  # the GPU path's binding code, on the CPU device
    calls = []
    run_bound = bound.session._run_bound
    bound.session._run_bound = lambda feeds: calls.append(1) or run_bound(feeds)
    np.testing.assert_allclose(bound.score(QUERY, DOCS), plain.score(QUERY, DOCS), atol=1e-7)
    assert calls, "the binding path did not run"


@pytest.fixture(scope="module")
def fp16_artifact(tmp_path_factory, standin):
    from qrr.export import export_onnx
    from qrr.export.progress import Progress

    out = tmp_path_factory.mktemp("fp16") / "artifact"
    export_onnx(str(standin), out, quant="fp16", validate=False, progress=Progress(enabled=False))
    return out


def test_fp16_artifact_matches_reference(fp16_artifact, reference):
    import onnx

    from qrr.runtime import load_manifest

    m = load_manifest(fp16_artifact)
    assert m["precision"] == "fp16"
    graph = onnx.load(str(fp16_artifact / "model.onnx"))
    inits = {t.name: t for t in graph.graph.initializer}
    assert inits["direction"].data_type == onnx.TensorProto.FLOAT  # the head stays fp32
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in inits.values()) > 10
    ours = Reranker(fp16_artifact, device=TEST_DEVICE).score(QUERY, DOCS)
    theirs = reference.score_pairs([(QUERY, d) for d in DOCS])
    assert np.max(np.abs(np.array(ours) - np.array(theirs))) < 0.01


def test_fp32_on_test_device(fp32_artifact, reference):
    ours = Reranker(fp32_artifact, device=TEST_DEVICE).score(QUERY, DOCS)
    theirs = reference.score_pairs([(QUERY, d) for d in DOCS])
    assert np.max(np.abs(np.array(ours) - np.array(theirs))) < (1e-4 if TEST_DEVICE == "cpu" else 2e-3)


def test_auto_device_runs(fp32_artifact):
    assert len(Reranker(fp32_artifact, device="auto").score(QUERY, DOCS[:2])) == 2



def test_validation_runs_the_artifact_on_the_chosen_device(artifact_copy, standin):
    from qrr.export import validate_artifact

    report = validate_artifact(artifact_copy, str(standin), device=TEST_DEVICE)
    assert report["device"] == TEST_DEVICE and report["passed"]
