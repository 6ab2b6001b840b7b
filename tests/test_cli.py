"""The `qrr` and `qrr-export` commands, driven through main(argv)."""

from __future__ import annotations

import io
import json

import pytest
from conftest import DOCS, QUERY

from qrr.cli.main import export_main, main
from qrr.runtime import Reranker


@pytest.fixture
def docs_file(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(d.replace("\n", " ") for d in DOCS if d) + "\n", encoding="utf-8")
    return path


def test_rerank_table(fp32_artifact, docs_file, capsys):
    assert main(["rerank", str(fp32_artifact), "--query", QUERY, "--docs", str(docs_file), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "index", "document"] and len(lines) == 4


def test_rerank_json_from_stdin_jsonl(fp32_artifact, monkeypatch, capsys):
    docs = ["The capital of China is Beijing.", "Gravity is a force."]
    stdin = "\n".join(json.dumps({"text": d}) for d in docs)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(["rerank", str(fp32_artifact), "--query", QUERY, "--docs", "-", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = Reranker(fp32_artifact).score(QUERY, docs)
    by_index = {r["index"]: r["score"] for r in out["results"]}
    assert by_index == pytest.approx(dict(enumerate(expected)), abs=1e-9)
    assert [r["score"] for r in out["results"]] == sorted(by_index.values(), reverse=True)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["rerank", "/no/such/artifact", "--query", "q", "--docs", "-"], "artifact folder not found"),
        (["rerank", "ARTIFACT", "--query", "q", "--docs", "/no/such/file"], "documents file not found"),
        (["rerank", "ARTIFACT", "--query", "q", "--docs", "-", "--device", "quantum"], "unknown device"),
    ],
)
def test_user_errors_are_one_line(fp32_artifact, argv, message, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("a doc\n"))
    argv = [str(fp32_artifact) if a == "ARTIFACT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qrr: error:") and message in err and "\n" not in err


def test_bad_jsonl_line(fp32_artifact, tmp_path, capsys):
    bad = tmp_path / "docs.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": broken}\n')
    assert main(["rerank", str(fp32_artifact), "--query", "q", "--docs", str(bad)]) == 2
    assert "line 2" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["SRC", "-o", "out", "--quant", "int3"],
        ["SRC", "-o", "out", "--format", "tflite"],
        ["SRC", "--quant", "int8"],
        ["SRC", "-o", "out", "--max-drop", "-1"],
        ["SRC", "-o", "out", "--max-length", "zero"],
        ["SRC", "-o", "out", "--colour"],
        ["SRC", "-o", "out", "--quant", "int4", "--method", "gptq"],
        ["SRC", "-o", "out", "--quant", "int4", "--block-size", "48"],
        ["SRC", "-o", "out", "--quant", "int8", "--accuracy-level", "2"],
        ["SRC", "-o", "out", "--reference-dtype", "float16"],
        ["SRC", "-o", "out", "--max-pairs", "0"],
        ["SRC", "-o", "out", "--quant", "int8", "--rounding", "stochastic"],
    ],
)
def test_export_parser_refuses_unknown_values(argv, capsys):
    with pytest.raises(SystemExit) as e:
        export_main(argv)
    assert e.value.code == 2
    assert "usage: qrr-export" in capsys.readouterr().err


@pytest.mark.parametrize("fmt, entry", [("onnx", "export_onnx"), ("openvino", "export_openvino")])
def test_reference_options_reach_the_exporters(fmt, entry, monkeypatch):
    pytest.importorskip("torch")
    import qrr.export

    calls = []
    monkeypatch.setattr(qrr.export, entry, lambda source, out, **options: calls.append(options))
    assert export_main(["SRC", "-o", "out", "--format", fmt, "--reference-dtype", "bfloat16", "--max-pairs", "32"]) == 0
    assert calls[0]["reference_dtype"] == "bfloat16" and calls[0]["max_pairs"] == 32
    assert export_main(["SRC", "-o", "out", "--format", fmt]) == 0
    assert calls[1]["reference_dtype"] == "float32" and calls[1]["max_pairs"] is None


def test_validate_parses_the_reference_options():
    from qrr.cli.main import build_parser

    args = build_parser().parse_args(["validate", "art", "--reference", "ckpt", "--reference-dtype", "bfloat16",
                                      "--max-pairs", "32"])
    assert (args.reference_dtype, args.max_pairs) == ("bfloat16", 32)
    args = build_parser().parse_args(["validate", "art", "--reference", "ckpt"])
    assert (args.reference_dtype, args.max_pairs) == ("float32", None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["validate", "art", "--reference", "ckpt", "--reference-dtype", "int8"])


@pytest.mark.slow
def test_export_and_validate_commands(standin, tmp_path, capsys):
    out = tmp_path / "art"
    assert export_main([str(standin), "-o", str(out), "--quant", "int8"]) == 0
    err = capsys.readouterr().err
    for step in ("loading the checkpoint", "tracing", "quantizing", "validating", "max |ΔP|", "total"):
        assert step in err
    assert main(["validate", str(out), "--reference", str(standin), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["precision"] == "int8"
    assert main(["export", str(standin), "-o", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_validation_gate_exit_code(standin, fp32_artifact, tmp_path, capsys):
    import shutil

    art = shutil.copytree(fp32_artifact, tmp_path / "a")
    page = tmp_path / "report.html"
    assert main(["validate", str(art), "--reference", str(standin), "--max-drop", "1e-15", "--html", str(page)]) == 1
    assert "fails validation" in capsys.readouterr().err
    text = page.read_text()
    assert "FAIL" in text and text.count("data:image/png;base64,") == 3
    # it opens with the verdict in words and the artifact-vs-reference plot, the figures after them
    assert text.index('class="verdict"') < text.index("<img") < text.index("<table>")
    assert "pairs moved more than the allowed" in text


def test_bench_workloads_and_own_data(fp32_artifact, tmp_path, capsys):
    assert main(["bench", str(fp32_artifact), "--workloads", "A", "C", "--repeat", "1", "--warmup", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "onnx" and out["prefix_reuse"] is True and out["cold_start_s"] > 0
    assert out["load_cache"] in ("written", "used")  # written by the first load of the session's artifact
    rows = {r["workload"]: r for r in out["rows"]}
    assert rows["A"]["pairs"] == 32 and rows["C"]["pairs"] == 64
    # A: one query, documents of ~200 tokens each (prompt included, the pairs are longer)
    assert 200 * 32 < rows["A"]["tokens"] < 400 * 32
    assert all(r["pairs_per_s"] > 0 and r["peak_rss_mib"] > 0 for r in rows.values())
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"query": QUERY, "documents": DOCS[:3]}) + "\n" + json.dumps({"query": "q", "document": "d"}))
    argv = ["bench", str(fp32_artifact), "--data", str(data), "--repeat", "1", "--no-prefix-reuse", "--no-load-cache"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "prefix reuse off" in table and "load cache off" in table and "data" in table.splitlines()[-1]


def test_bench_rejects_bad_data(fp32_artifact, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "x"}\n')
    assert main(["bench", str(fp32_artifact), "--data", str(data)]) == 2
    assert "expected" in capsys.readouterr().err


def test_score_digits_tell_different_scores_apart():
    from qrr.cli.main import score_digits

    assert score_digits([0.5, 0.25]) == 5
    assert score_digits([0.12345671, 0.12345674]) == 8
    assert score_digits([0.3, 0.3]) == 5  # equal scores need no more digits


@pytest.mark.slow
def test_standin_command(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "standin"
    assert main(["standin", "-o", str(out), "--shape", "tiny", "--train-steps", "2", "--seed", "4"]) == 0
    assert "trained 2 steps" in capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["num_hidden_layers"] == 2
    assert json.loads((out / "qrr-standin.json").read_text())["train_steps"] == 2
    assert main(["standin", "-o", str(out)]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err


def test_standin_command_streams_4b_and_8b_and_refuses_training(tmp_path, capsys):
    pytest.importorskip("torch")
    assert main(["standin", "-o", str(tmp_path / "8b"), "--shape", "8b", "--train-steps", "5"]) == 2
    assert "whole model in memory" in capsys.readouterr().err
    out = tmp_path / "tiny"
    assert main(["standin", "-o", str(out), "--shape", "tiny", "--streamed", "--seed", "2"]) == 0
    assert "bf16 shards" in capsys.readouterr().err
    assert json.loads((out / "qrr-standin.json").read_text())["streamed"] is True
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_serve_command_starts_and_answers(fp32_artifact):
    pytest.importorskip("uvicorn")
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = "import sys; from qrr.cli.main import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", str(fp32_artifact), "--port", str(port), "--threads", "1"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert json.loads(r.read()) == {"status": "ok"}
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "qrr serve did not answer /health within 60 s"
                time.sleep(0.2)
        body = json.dumps({"query": QUERY, "documents": ["The capital of China is Beijing.", "Gravity."]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/rerank", body, {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            results = json.loads(r.read())["results"]
        expected = Reranker(fp32_artifact).score(QUERY, ["The capital of China is Beijing.", "Gravity."])
        assert {x["index"]: x["relevance_score"] for x in results} == pytest.approx(dict(enumerate(expected)), abs=1e-6)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_command_refuses_a_missing_artifact(capsys):
    assert main(["serve", "/no/such/artifact"]) == 2
    assert "artifact folder not found" in capsys.readouterr().err


def test_bench_compare_ranks_validated_artifacts_first(fp32_artifact, tmp_path, capsys):
    import shutil

    validated = shutil.copytree(fp32_artifact, tmp_path / "validated")
    manifest = json.loads((validated / "qrr.json").read_text())
    manifest["validation"] = {"passed": True, "max_abs_dp": 1e-7, "spearman_mean": 1.0}
    (validated / "qrr.json").write_text(json.dumps(manifest))
    argv = ["bench", str(fp32_artifact), "--compare", str(validated), "--workloads", "A", "--repeat", "1",
            "--warmup", "0", "--threads", "1"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["artifact"] for r in out["ranked"]] == [str(validated), str(fp32_artifact)]
    assert out["recommended"] == str(validated) and all(r["rows"][0]["pairs"] == 32 for r in out["ranked"])
    assert main(["bench", str(fp32_artifact), "--compare", str(tmp_path / "missing")]) == 2
    assert "artifact folder not found" in capsys.readouterr().err


def test_rank_artifacts_by_speed_among_the_validated():
    from qrr.cli.main import rank_artifacts

    def result(name, rate, passed):
        return {"artifact": name, "load_peak_rss_mib": 1, "rows": [{"pairs_per_s": rate, "peak_rss_mib": 2}],
                "validation": None if passed is None else {"passed": passed}}

    ranked = rank_artifacts([result("slow", 1.0, True), result("fast", 3.0, True), result("fastest", 9.0, False),
                             result("unvalidated", 5.0, None)])
    assert [r["artifact"] for r in ranked] == ["fast", "slow", "fastest", "unvalidated"]


def test_rerank_refuses_text_that_is_not_unicode(fp32_artifact, docs_file, tmp_path, monkeypatch, capsys):
    """A lone surrogate (an undecodable byte in argv arrives as one) is one line and exit 2, naming the field."""
    assert main(["rerank", str(fp32_artifact), "--query", "capital\udcff", "--docs", str(docs_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qrr: error: query holds a lone surrogate (U+DCFF") and "\n" not in err
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "fine"}\n{"text": "bad \\ud800"}\n')
    assert main(["rerank", str(fp32_artifact), "--query", QUERY, "--docs", str(jsonl)]) == 2
    assert "documents[1] holds a lone surrogate" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9\n"), encoding="utf-8"))
    assert main(["rerank", str(fp32_artifact), "--query", QUERY, "--docs", "-"]) == 2
    assert "standard input is not UTF-8" in capsys.readouterr().err


def test_rerank_warns_when_documents_are_truncated_away(fp32_artifact, docs_file, capsys):
    argv = ["rerank", str(fp32_artifact), "--docs", str(docs_file), "--max-length", "160", "--json"]
    assert main(argv + ["--query", QUERY]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and not any(r["truncated"] for r in json.loads(captured.out)["results"])
    assert main(argv + ["--query", "Beijing " * 40]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if line.startswith("qrr: warning:")]
    assert len(warning) == 1 and "kept fewer than 8" in warning[0]
    assert all(r["truncated"] for r in json.loads(captured.out)["results"])


def test_rounding_reaches_the_onnx_exporter_and_openvino_refuses_it(monkeypatch, capsys):
    pytest.importorskip("torch")
    import qrr.export

    calls = []
    monkeypatch.setattr(qrr.export, "export_onnx", lambda source, out, **options: calls.append(options))
    assert export_main(["SRC", "-o", "out", "--quant", "int8", "--rounding", "nearest"]) == 0
    assert calls[0]["rounding"] == "nearest"
    assert export_main(["SRC", "-o", "out", "--format", "openvino", "--quant", "int8", "--rounding", "gptq"]) == 2
    assert "--rounding is an onnxruntime setting" in capsys.readouterr().err


def test_two_pass_reaches_the_onnx_exporter_and_openvino_refuses_it(monkeypatch, capsys):
    pytest.importorskip("torch")
    import qrr.export

    calls = []
    monkeypatch.setattr(qrr.export, "export_onnx", lambda source, out, **options: calls.append(options))
    assert export_main(["SRC", "-o", "out", "--quant", "int8", "--two-pass", "q_proj,k_proj,v_proj"]) == 0
    assert export_main(["SRC", "-o", "out", "--quant", "int8", "--two-pass", "none"]) == 0
    assert export_main(["SRC", "-o", "out", "--quant", "int8"]) == 0
    assert [c["two_pass"] for c in calls] == [("q_proj", "k_proj", "v_proj"), (), None]
    with pytest.raises(SystemExit):
        export_main(["SRC", "-o", "out", "--quant", "int8", "--two-pass", "lm_head"])
    assert "unknown projection 'lm_head' for two-pass activations" in capsys.readouterr().err
    assert export_main(["SRC", "-o", "out", "--format", "openvino", "--quant", "int8", "--two-pass", "none"]) == 2
    assert "--two-pass is an onnxruntime setting" in capsys.readouterr().err
