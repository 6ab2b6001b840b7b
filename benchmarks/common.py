"""What every benchmark script shares: the stand-in and artifacts made when missing, and the results writer.

Run the scripts from the repository root inside the project's venv (`python benchmarks/NAME.py …`); this
folder is on sys.path then, so `from common import …` works.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def ensure_standin(path: Path, **options: Any) -> Path:
    """The stand-in checkpoint at `path`, made with qrr.export.standin.make_standin(**options) if missing."""
    if not (path / "config.json").is_file():
        from qrr.export.standin import make_standin

        make_standin(path, **options)
    return path


def ensure_artifact(checkpoint: Path, artifact: Path, *, format: str = "onnx", precision: str = "fp32",
                    **options: Any) -> Path:
    """The artifact at `artifact`, exported from `checkpoint` without validation if missing."""
    if not (artifact / "qrr.json").is_file():
        from qrr.export import export_onnx, export_openvino
        from qrr.export.progress import Progress

        export = export_openvino if format == "openvino" else export_onnx
        export(str(checkpoint), artifact, quant=precision, validate=False, progress=Progress(), **options)
    return artifact


def save(out: Path, stem: str, result: dict[str, Any], header: list[str], rows: list[list[str]]) -> None:
    """`out/stem.json` holds `result` (with the machine and package versions added when missing);
    `out/stem.md` the table of `rows` under `header` (first column left). The table is also printed."""
    from qrr.runtime.machine import machine_info, versions

    result = {**result, "machine": result.get("machine") or machine_info(), "versions": result.get("versions") or versions()}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    align = ["---"] + ["---:"] * (len(header) - 1)
    table = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    (out / f"{stem}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
