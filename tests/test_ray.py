"""Ray: `qrr rerank-batch` on a pool of actors (one killed mid-run) and `qrr serve --ray` (the same app on Ray
Serve), on a local Ray instance started here with 2 CPUs. Skipped without the ray extra."""

from __future__ import annotations

import json
import random
import sys

import pytest
from conftest import DOCS, QUERY

from qrr.cli.main import main
from qrr.runtime import Reranker
from qrr.runtime.errors import InputError, QrrError


def test_a_missing_ray_extra_is_one_line_naming_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["rerank-batch", str(tmp_path), "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ray extra" in err[0] and ".[ray]" in err[0], err


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def write_pairs(path, n: int = 300, seed: int = 0) -> list[dict]:
    """`n` pairs over 12 queries and 2 instructions, shuffled, ids of mixed order; one row a documents list."""
    rng = random.Random(seed)
    words = "capital china beijing gravity force river paris france code model ranking search".split()
    rows = [{"id": f"r{n - i}", "query": f"query {rng.randrange(12)} about {rng.choice(words)}",
             "document": " ".join(rng.choices(words, k=rng.randint(1, 30)))} for i in range(n)]
    for row in rows[::7]:
        row["instruction"] = "Find code"
    rows.insert(5, {"id": "list", "query": QUERY, "documents": DOCS[:4]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def expected(rows: list[dict], rr: Reranker) -> list[tuple]:
    """(id, index, score) per pair in input order, each row scored alone by the plain Reranker."""
    out = []
    for row in rows:
        docs = row.get("documents") or [row["document"]]
        scores = rr.score_pairs([(row["query"], d) for d in docs], instruction=row.get("instruction"))
        out += [(row["id"], j, s) for j, s in enumerate(scores)]
    return out


@pytest.mark.slow
def test_rerank_batch_matches_the_reranker_and_survives_a_killed_actor(ray_local, fp32_artifact, tmp_path):
    from qrr.distributed.batch import read, rerank_batch

    rows = write_pairs(tmp_path / "in.jsonl")
    want = expected(rows, Reranker(fp32_artifact, threads=1))
    killed = []

    def kill_one(done, total, rate):  # after the first part, kill an actor that holds a part in flight
        if not killed:
            killed.append(done)
            ray_local.kill(ray_local.get_actor("qrr-rerank-0", namespace="qrr"), no_restart=True)

    result = rerank_batch(fp32_artifact, tmp_path / "in.jsonl", tmp_path / "out", workers=2, part_rows=24,
                          progress=kill_one)
    assert killed and killed[0] < len(want) and result["retried"] >= 1, result
    got = read(tmp_path / "out" / "ranked.jsonl").to_pylist()
    assert [(g["id"], g["index"]) for g in got] == [(i, j) for i, j, _ in want]  # every row once, in input order
    assert [g["score"] for g in got] == pytest.approx([s for *_, s in want], abs=1e-5)
    by_query: dict = {}
    for row, g in zip([r for r in rows for _ in (r.get("documents") or [0])], got):
        by_query.setdefault((row["query"], row.get("instruction")), []).append(g)
    for group in by_query.values():  # rank 1 = best within its query and instruction
        assert sorted(g["rank"] for g in group) == list(range(1, len(group) + 1))
        assert [g["rank"] for g in sorted(group, key=lambda g: -g["score"])] == list(range(1, len(group) + 1))


@pytest.mark.slow
def test_rerank_batch_parquet_and_resume(ray_local, fp32_artifact, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from qrr.distributed.batch import read, rerank_batch

    rows = write_pairs(tmp_path / "in.jsonl", n=120, seed=1)
    pq.write_table(pa.Table.from_pylist([{**r, "document": r.get("document"), "documents": r.get("documents"),
                                          "instruction": r.get("instruction")} for r in rows]), tmp_path / "in.parquet")
    first = rerank_batch(fp32_artifact, tmp_path / "in.parquet", tmp_path / "out", workers=2, part_rows=30)
    assert first["path"].endswith("ranked.parquet") and first["skipped"] == 0
    before = read(tmp_path / "out" / "ranked.parquet")
    with pytest.raises(InputError, match="--resume"):
        rerank_batch(fp32_artifact, tmp_path / "in.parquet", tmp_path / "out", workers=2, part_rows=30)
    parts = sorted((tmp_path / "out" / "parts").iterdir())
    parts[1].unlink()
    again = rerank_batch(fp32_artifact, tmp_path / "in.parquet", tmp_path / "out", workers=1, part_rows=30,
                         resume=True)
    assert again["skipped"] == len(parts) - 1 and again["rows"] == first["rows"] == 124
    assert read(tmp_path / "out" / "ranked.parquet").equals(before)
    with pytest.raises(InputError, match="another input"):
        rerank_batch(fp32_artifact, tmp_path / "in.jsonl", tmp_path / "out", workers=1, part_rows=30, resume=True)


BAD = [  # (path, body): bad input the served app must refuse the same way on Ray Serve
    ("/v1/rerank", {"query": QUERY}),
    ("/v1/rerank", {"query": QUERY, "documents": DOCS[:5]}),  # over max_documents
    ("/v1/rerank", {"query": QUERY, "documents": DOCS[:2], "model": "other"}),
    ("/v1/rerank", {"query": QUERY, "documents": ["word " * 600]}),  # over max_body_bytes
    ("/v1/rerank", {"query": QUERY, "documents": DOCS[:2], "top_n": 0}),
    ("/rerank", {"query": QUERY, "texts": DOCS[:2], "truncation_direction": "Left"}),
    ("/v1/score", {"pairs": [{"query": QUERY}]}),
    ("/v1/nothing", {}),
]


@pytest.mark.slow
def test_serve_app_on_ray_answers_as_qrr_serve(ray_local, fp32_artifact):
    httpx = pytest.importorskip("httpx")
    from ray import serve
    from serving import Server, free_port

    from qrr.distributed.serve import build_app
    from qrr.server import ServerConfig, create_app

    config = ServerConfig(max_documents=4, max_body_bytes=2000)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(fp32_artifact, replicas=2, config=config), name="qrr", route_prefix="/")
        ray_url = f"http://127.0.0.1:{port}"
        rr = Reranker(fp32_artifact, threads=1)
        with Server(create_app(rr, config)) as url:
            for path, body in BAD:
                plain, on_ray = (httpx.post(u + path, json=body, timeout=60) for u in (url, ray_url))
                assert on_ray.status_code == plain.status_code >= 400, (path, body, on_ray.text)
                assert on_ray.json() == plain.json()
        want = rr.score(QUERY, DOCS[:4])

        def ask(i: int) -> list[float]:
            r = httpx.post(ray_url + "/v1/rerank", json={"query": QUERY, "documents": DOCS[:4]}, timeout=60)
            assert r.status_code == 200, r.text
            return [x["relevance_score"] for x in sorted(r.json()["results"], key=lambda x: x["index"])]

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:  # 16 concurrent clients on 2 replicas
            for got in pool.map(ask, range(16)):
                assert got == pytest.approx(want, abs=1e-5)
        replicas = [a for a in ray_local.util.list_named_actors(all_namespaces=True) if "qrr-rerank" in a["name"]]
        assert len(replicas) == 2, replicas
        ray_local.kill(ray_local.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]))
        with ThreadPoolExecutor(16) as pool:  # the other replica answers, and Serve starts a new one
            for got in pool.map(ask, range(16)):
                assert got == pytest.approx(want, abs=1e-5)
    finally:
        serve.shutdown()


@pytest.mark.parametrize("flags, words", [(["--replicas", "2"], "need --ray"),
                                          (["--ray", "--replicas", "2", "--max-replicas", "3"], "not both")])
def test_serve_ray_flags_are_checked_first(tmp_path, capsys, flags, words):
    assert main(["serve", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


@pytest.mark.slow
def test_rerank_batch_stops_on_an_actor_that_cannot_start(ray_local, fp32_artifact, tmp_path):
    from qrr.distributed.batch import rerank_batch

    write_pairs(tmp_path / "in.jsonl", n=20)
    with pytest.raises(QrrError, match="not found"):  # checked before any actor starts
        rerank_batch(tmp_path / "nothing", tmp_path / "in.jsonl", tmp_path / "out0")
    with pytest.raises(QrrError, match="lost 3 actors.*max_length"):  # each new actor fails to start: the run stops
        rerank_batch(fp32_artifact, tmp_path / "in.jsonl", tmp_path / "out", options={"max_length": 0})
    assert not list((tmp_path / "out" / "parts").iterdir())


@pytest.mark.slow
def test_rerank_batch_command_reports_progress(ray_local, fp32_artifact, tmp_path, capsys):
    write_pairs(tmp_path / "in.jsonl", n=60)
    argv = ["rerank-batch", str(fp32_artifact), "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o"),
            "--workers", "2", "--part-rows", "16", "--format", "parquet"]
    assert main(argv) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert all(" rows/s, ETA " in line for line in err[:-1]) and "64/64 rows" in err[-2], err
    assert err[-1].startswith("qrr: 64 rows in ") and err[-1].endswith("ranked.parquet")
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0 and "(4 already written, 0 retried)" in capsys.readouterr().err
