import subprocess
import sys


def test_runtime_imports_without_torch_or_transformers():
    code = (
        "import sys, qrr.runtime, qrr.runtime.reranker, qrr.cli.main\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnx', 'optimum', 'openvino') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_onnx_artifacts_leave_openvino_unimported(fp32_artifact):
    """The session table imports a backend only for its own format."""
    code = (
        "import sys\n"
        "from qrr.runtime import Reranker\n"
        f"Reranker({str(fp32_artifact)!r}, threads=1).score('q', ['d'])\n"
        "loaded = [m for m in ('openvino', 'qrr.runtime.openvino') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
