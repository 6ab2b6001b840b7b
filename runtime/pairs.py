"""The one reader of (query, document) pairs in JSON Lines, and the built-in evaluation set.

One object a line, either a pair or a query with its documents:

    {"query": "…", "document": "…", "label": 1, "instruction": "…", "qid": "…"}
    {"query": "…", "documents": ["…", "…"], "labels": [1, 0], "instruction": "…"}

`label(s)`, `instruction` and `qid` are optional. Lines of one query (same qid or text, same instruction)
are gathered in order. Validation, calibration, `qrr bench` and the stand-in trainer all read pairs here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import InputError

BUILTIN = "built-in"
BUILTIN_FILE = "eval_pairs.jsonl"
SHAPES = '{"query": …, "document": …} or {"query": …, "documents": […]}'


@dataclass
class Query:
    query: str
    instruction: str | None
    documents: list[str] = field(default_factory=list)
    labels: list[float | None] = field(default_factory=list)


def load_queries(path: str | Path | None = None) -> list[Query]:
    """The queries of a JSON Lines file, each with its documents (and labels); the built-in set when None."""
    if path is None:
        text, name = resources.files("qrr.runtime").joinpath(BUILTIN_FILE).read_text(encoding="utf-8"), BUILTIN
    else:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"pairs file not found: {p}")
        try:
            text, name = p.read_text(encoding="utf-8"), str(p)
        except UnicodeDecodeError:
            raise InputError(f"{p} is not UTF-8 text") from None
    groups: dict[tuple[object, str, str | None], Query] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{name}, line {number}: not valid JSON ({exc.msg})") from None
        where = f"{name}, line {number}"
        if not isinstance(row, dict) or not isinstance(row.get("query"), str):
            raise InputError(f"{where}: needs string fields 'query' and 'document'; expected {SHAPES}")
        docs, labels = _documents(row, where)
        instruction = row.get("instruction")
        if instruction is not None and not isinstance(instruction, str):
            raise InputError(f"{where}: 'instruction' must be a string")
        key = (row.get("qid") or row["query"], row["query"], instruction)
        group = groups.setdefault(key, Query(row["query"], instruction))
        group.documents += docs
        group.labels += labels
    if not groups:
        raise InputError(f"{name} holds no pairs")
    return list(groups.values())


def _documents(row: dict, where: str) -> tuple[list[str], list[float | None]]:
    if "documents" in row:
        docs = row["documents"]
        if not isinstance(docs, list) or not all(isinstance(d, str) for d in docs):
            raise InputError(f"{where}: 'documents' must be a list of strings")
        labels = row.get("labels", [None] * len(docs))
        if not isinstance(labels, list) or len(labels) != len(docs):
            raise InputError(f"{where}: 'labels' must be a list with one number per document")
    elif isinstance(row.get("document"), str):
        docs, labels = [row["document"]], [row.get("label")]
    else:
        raise InputError(f"{where}: needs string fields 'query' and 'document'; expected {SHAPES}")
    for label in labels:
        if label is not None and (not isinstance(label, (int, float)) or isinstance(label, bool)):
            raise InputError(f"{where}: labels must be numbers")
    return docs, labels


def flat_pairs(queries: list[Query]) -> list[tuple[str, str]]:
    """Every (query, document) pair, in file order."""
    return [(q.query, d) for q in queries for d in q.documents]
