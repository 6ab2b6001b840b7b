"""Writing a benchmark's results: the JSON beside a Markdown table, the table also printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save(out: Path, stem: str, result: dict[str, Any], header: list[str], rows: list[list[str]]) -> None:
    """`out/stem.json` holds `result`; `out/stem.md` the table of `rows` under `header` (first column left)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    align = ["---"] + ["---:"] * (len(header) - 1)
    table = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    (out / f"{stem}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
