import subprocess
import sys


def test_runtime_imports_without_torch_or_transformers():
    code = (
        "import sys, qrr.runtime, qrr.runtime.reranker, qrr.cli.main\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnx', 'optimum') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
