"""`qrr rerank-batch`: score a file of (query, document) pairs on a pool of Ray actors, one Reranker each.

Input: JSON Lines or Parquet, rows {"query", "document"} or {"query", "documents": [...]}, optional "id"
(default: the row's 0-based number) and "instruction". Rows of one (query, instruction) are gathered into one
group so prefix reuse applies, groups are packed whole into parts, and each part is scored by one actor and
written by the driver as DIR/parts/part-NNNNN.{parquet,jsonl} (written to a temporary name, then renamed): a
part is in the output once or not at all. An actor that dies loses only its part in flight, which is given to
a new actor. `--resume` skips the parts already written. At the end DIR/ranked.{parquet,jsonl} holds every
input pair once, in input order: id, index (the document's place in a `documents` list, else 0), score and
rank (1 = best within its query and instruction).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from qrr.runtime.errors import InputError, QrrError
from qrr.runtime.manifest import load_manifest

PART_ROWS = 256  # pairs per part: the unit of scheduling, retry and resume
TRIES = 3  # actors a part may kill (or fail to start on) before the run stops
COLUMNS = ["id", "index", "score", "rank"]


@dataclass
class Group:
    query: str
    instruction: str | None
    rows: list[int]  # positions in the flat pair list
    documents: list[str]


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
    return rows


def plan(rows: list[dict[str, Any]], name: str) -> tuple[list[dict[str, Any]], list[Group]]:
    """The flat pairs (id, index, query) in input order, and their groups by (query, instruction)."""
    pairs: list[dict[str, Any]] = []
    groups: dict[tuple[str, str | None], Group] = {}
    for n, row in enumerate(rows):
        where = f"{name}, row {n}"
        if not isinstance(row, dict) or not isinstance(row.get("query"), str):
            raise InputError(f"{where}: needs a string 'query' and a 'document' or a 'documents' list")
        docs = row.get("documents")
        if docs is None:
            docs = [row.get("document")]
        if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
            raise InputError(f"{where}: 'document' must be a string, 'documents' a non-empty list of strings")
        instruction = row.get("instruction")
        if instruction is not None and not isinstance(instruction, str):
            raise InputError(f"{where}: 'instruction' must be a string")
        rid = row.get("id")
        group = groups.setdefault((row["query"], instruction), Group(row["query"], instruction, [], []))
        for j, doc in enumerate(docs):
            group.rows.append(len(pairs))
            group.documents.append(doc)
            pairs.append({"id": n if rid is None else rid, "index": j})
    if not pairs:
        raise InputError(f"{name} holds no pairs")
    return pairs, list(groups.values())


def pack(groups: list[Group], part_rows: int) -> list[list[Group]]:
    """Whole groups packed into parts of about `part_rows` pairs (a larger group is a part of its own)."""
    parts: list[list[Group]] = [[]]
    size = 0
    for g in groups:
        if size and size + len(g.rows) > part_rows:
            parts.append([])
            size = 0
        parts[-1].append(g)
        size += len(g.rows)
    return parts


@ray.remote
class Scorer:
    """One Reranker, its threads the actor's CPUs."""

    def __init__(self, artifact: str, threads: int, options: dict[str, Any]) -> None:
        from qrr.runtime import Reranker

        self.rr = Reranker(artifact, threads=threads, **options)

    def score(self, part: list[tuple[str, str | None, list[str]]]) -> list[list[float]]:
        return [self.rr.score_pairs([(q, d) for d in docs], instruction=instr) for q, instr, docs in part]


def write(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        pq.write_table(table, tmp)
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read(path: Path) -> pa.Table:
    return pq.read_table(path) if path.suffix == ".parquet" else pa.Table.from_pylist(read_rows(path))


def part_table(part: list[Group], scores: list[list[float]], pairs: list[dict[str, Any]]) -> pa.Table:
    out: dict[str, list] = {"row": [], "id": [], "index": [], "score": [], "rank": []}
    for g, s in zip(part, scores):
        order = sorted(range(len(s)), key=lambda i: (-s[i], i))
        rank = {i: r for r, i in enumerate(order, 1)}
        for i, row in enumerate(g.rows):
            out["row"].append(row)
            out["id"].append(pairs[row]["id"])
            out["index"].append(pairs[row]["index"])
            out["score"].append(s[i])
            out["rank"].append(rank[i])
    return pa.table(out)


def rerank_batch(artifact: str | os.PathLike[str], input: str | os.PathLike[str], output: str | os.PathLike[str], *,
                 workers: int = 1, cpus_per_worker: int = 1, output_format: str | None = None, resume: bool = False,
                 part_rows: int = PART_ROWS, options: dict[str, Any] | None = None,
                 progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Score `input` into `output`/ranked.{parquet,jsonl} on `workers` actors of the running Ray instance
    (ray.init first). Returns {"rows", "parts", "skipped", "retried", "path"}."""
    src, out = Path(input), Path(output)
    load_manifest(artifact)  # a missing or broken artifact is one error here, not actors failing to start
    pairs, groups = plan(read_rows(src), str(src))
    parts = pack(groups, part_rows)
    ext = output_format or ("parquet" if src.suffix == ".parquet" else "jsonl")
    if ext not in ("parquet", "jsonl"):
        raise InputError(f"output format must be parquet or jsonl, got {ext!r}")
    stamp = {"input": str(src.resolve()), "size": src.stat().st_size, "rows": len(pairs), "parts": len(parts),
             "part_rows": part_rows, "format": ext, "artifact": str(artifact)}
    (out / "parts").mkdir(parents=True, exist_ok=True)
    plan_file = out / "plan.json"
    if plan_file.exists():
        if not resume:
            raise InputError(f"{out} already holds a run; pass --resume to finish it or choose another --output")
        if json.loads(plan_file.read_text()) != stamp:
            raise InputError(f"{out} holds a run of another input, artifact or format; choose another --output")
    plan_file.write_text(json.dumps(stamp, indent=1))
    files = [out / "parts" / f"part-{i:05d}.{ext}" for i in range(len(parts))]
    todo = [i for i, f in enumerate(files) if not f.exists()]
    skipped = len(parts) - len(todo)
    done_rows = sum(len(g.rows) for i, f in enumerate(files) if f.exists() for g in parts[i])
    start_rows, start = done_rows, time.monotonic()

    def spawn(n: int):
        return Scorer.options(num_cpus=cpus_per_worker, name=f"qrr-rerank-{n}", namespace="qrr",
                              lifetime=None).remote(str(artifact), cpus_per_worker, options or {})

    actors = {n: spawn(n) for n in range(min(workers, len(todo)))}
    spawned, retried = len(actors), 0
    running: dict[Any, tuple[int, int]] = {}  # ref -> (actor number, part)
    failures: dict[int, int] = {}  # part -> actors lost with it

    def submit(n: int) -> None:
        i = todo.pop(0)
        running[actors[n].score.remote([(g.query, g.instruction, g.documents) for g in parts[i]])] = (n, i)

    for n in list(actors):
        if todo:
            submit(n)
    try:
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            n, i = running.pop(ready[0])
            try:
                scores = ray.get(ready[0])
            except ray.exceptions.RayActorError as exc:  # the actor died with the part: a new actor scores it again
                failures[i] = failures.get(i, 0) + 1
                if failures[i] >= TRIES:
                    raise QrrError(f"part {i} lost {TRIES} actors; the last: {str(exc).strip().splitlines()[-1]}") from None
                retried += 1
                todo.insert(0, i)
                ray.kill(actors[n], no_restart=True)
                actors[n] = spawn(spawned)
                spawned += 1
                submit(n)
                continue
            if todo:  # keep the actor busy while the driver writes
                submit(n)
            write(part_table(parts[i], scores, pairs), files[i])
            done_rows += sum(len(g.rows) for g in parts[i])
            if progress:
                progress(done_rows, len(pairs), (done_rows - start_rows) / max(time.monotonic() - start, 1e-9))
    finally:
        for a in actors.values():
            ray.kill(a, no_restart=True)
    table = pa.concat_tables([read(f) for f in files]).sort_by("row").select(COLUMNS)
    if table.num_rows != len(pairs):  # a part file edited or truncated between runs
        raise InputError(f"{out / 'parts'} holds {table.num_rows} rows for {len(pairs)} input pairs; remove it")
    final = out / f"ranked.{ext}"
    write(table, final)
    return {"rows": len(pairs), "parts": len(parts), "skipped": skipped, "retried": retried, "path": str(final)}


def print_progress(done: int, total: int, rate: float) -> None:
    eta = (total - done) / rate if rate > 0 else float("inf")
    print(f"qrr: {done}/{total} rows, {rate:.0f} rows/s, ETA {eta:.0f} s", file=sys.stderr, flush=True)
