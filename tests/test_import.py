"""The layering of DESIGN.md, checked in fresh interpreters: export → quant → runtime, and light imports."""

import subprocess
import sys

import pytest


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


HEAVY = {"torch", "transformers", "onnx", "optimum", "nncf", "openvino"}


def test_runtime_imports_without_torch_or_transformers():
    loaded = _loaded_after("import qrr.runtime, qrr.runtime.reranker, qrr.runtime.bench, qrr.runtime.pairs")
    assert not loaded & HEAVY and "qrr.export" not in loaded and "qrr.quant" not in loaded and "ray" not in loaded


def test_quant_does_not_import_export():
    loaded = _loaded_after("import qrr.quant")
    assert "qrr.export" not in loaded and "qrr.runtime" in loaded


def test_cli_and_export_package_are_light():
    # the CLI reads its choices from qrr.export.presets; `qrr --help` and `qrr rerank` never load torch (nor Ray)
    loaded = _loaded_after("import qrr.cli.main, qrr.export, qrr.export.presets, qrr.distributed")
    assert not loaded & {"torch", "transformers", "onnx", "optimum", "nncf", "ray", "pyarrow"}


@pytest.mark.parametrize("argv", [["--help"], ["rerank", "--help"]])
def test_help_runs_without_torch(argv):
    statement = f"from qrr.cli.main import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    loaded = _loaded_after(statement)
    assert "torch" not in loaded and "transformers" not in loaded


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
