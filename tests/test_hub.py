"""Artifacts as hub model repos: the model card, and from_pretrained / `qrr rerank org/repo` against a fake hub
(a loopback HTTP server answering the hub API calls huggingface_hub's snapshot_download makes)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DOCS, QUERY, FakeServer

from qrr.runtime import ArtifactError, Reranker
from qrr.runtime.hub import HUB_EXTRA

REPO = "qrr-test/tiny-fp32"
SHA = "0123456789abcdef0123456789abcdef01234567"


def fake_hub(folder: Path) -> FakeServer:
    """The files of `folder` as one model repo at one commit: repo info, the file tree, and each file (HEAD, GET)."""
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    api, resolve = f"/api/models/{REPO}/", f"/{REPO}/resolve/"

    def respond(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if path.startswith(api + "revision/"):
            info = {"id": REPO, "sha": SHA, "siblings": [{"rfilename": name} for name in files]}
            return 200, {"X-Repo-Commit": SHA}, json.dumps(info).encode()
        if path.startswith(api + "tree/"):
            tree = [{"type": "file", "path": n, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                    for n, d in files.items()]
            return 200, {"X-Repo-Commit": SHA}, json.dumps(tree).encode()
        name = path[len(resolve):].split("/", 1)[-1] if path.startswith(resolve) else None
        if name in files:
            return 200, {"X-Repo-Commit": SHA, "ETag": f'"{hashlib.sha1(files[name]).hexdigest()}"'}, files[name]
        return 404, {"X-Error-Code": "RepoNotFound"}, b""

    return FakeServer(respond)


@pytest.fixture
def published(tmp_path, fp32_artifact):
    """The fp32 artifact as uploaded to a repo, with a file the artifact does not list."""
    repo = Path(shutil.copytree(fp32_artifact, tmp_path / "repo"))
    (repo / "unrelated.bin").write_bytes(b"not part of the artifact" * 100)
    return repo


def run(code: str, hf_home: Path, endpoint: str | None = None, offline: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1,localhost",
               HF_ENDPOINT=endpoint or "http://127.0.0.1:9", HF_HUB_OFFLINE="1" if offline else "0")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def test_from_pretrained_downloads_only_the_artifact_then_works_offline(published, tmp_path, fp32_artifact):
    pytest.importorskip("huggingface_hub")
    expected = Reranker(fp32_artifact, threads=1).score(QUERY, DOCS)
    code = ("import json\nfrom qrr.runtime import Reranker\n"
            f"rr = Reranker.from_pretrained({REPO!r}, threads=1)\n"
            f"print(json.dumps({{'path': str(rr.path), 'scores': rr.score({QUERY!r}, {DOCS!r})}}))")
    hub = fake_hub(published)
    with hub as endpoint:
        online = run(code, tmp_path / "hf", endpoint)
    assert online.returncode == 0, online.stderr
    out = json.loads(online.stdout.splitlines()[-1])
    assert out["scores"] == pytest.approx(expected, abs=1e-6)
    folder = Path(out["path"])
    assert folder.name == SHA and folder.is_relative_to(tmp_path / "hf")
    manifest = json.loads((fp32_artifact / "qrr.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == sorted({"qrr.json", "README.md", *manifest["files"]})
    fetched = {r.rsplit("/", 1)[1] for r in hub.requests if r.startswith("GET") and "/resolve/" in r}
    assert fetched == {"qrr.json", "README.md", *manifest["files"]}  # never unrelated.bin

    # the hub is gone: offline mode loads from the cache, the CLI too
    offline = run(code, tmp_path / "hf", offline=True)
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout.splitlines()[-1])["scores"] == pytest.approx(expected, abs=1e-6)
    docs = tmp_path / "docs.txt"
    docs.write_text("The capital of China is Beijing.\nGravity is a force.\n", encoding="utf-8")
    cli = run(f"from qrr.cli.main import main; raise SystemExit(main(['rerank', {REPO!r}, '--query', {QUERY!r}, "
              f"'--docs', {str(docs)!r}, '--json', '--threads', '1']))", tmp_path / "hf", offline=True)
    assert cli.returncode == 0, cli.stderr
    assert [r["index"] for r in json.loads(cli.stdout)["results"]] == [
        r.index for r in Reranker(fp32_artifact, threads=1).rerank(QUERY, docs.read_text().splitlines())]


def test_hub_errors_are_one_line(published, tmp_path):
    pytest.importorskip("huggingface_hub")
    (published / "model.onnx.data").write_bytes(b"truncated")  # a damaged upload fails the size check
    with fake_hub(published) as endpoint:
        damaged = run(f"from qrr.cli.main import main; raise SystemExit(main(['rerank', {REPO!r}, '--query', 'q', "
                      "'--docs', '-']))", tmp_path / "hf", endpoint)
        missing = run("from qrr.cli.main import main; raise SystemExit(main(['rerank', 'qrr-test/nothing', "
                      "'--query', 'q', '--docs', '-']))", tmp_path / "hf", endpoint)
    assert damaged.returncode == 2 and "corrupted" in damaged.stderr and "model.onnx.data" in damaged.stderr
    assert missing.returncode == 2 and "cannot download qrr-test/nothing" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    offline = run(f"from qrr.runtime import Reranker; Reranker.from_pretrained({REPO!r}, revision='v9')",
                  tmp_path / "empty", offline=True)
    assert "cannot download" in offline.stderr and "HF_HUB_OFFLINE" in offline.stderr


def test_without_huggingface_hub_the_error_names_the_extra(tmp_path):
    blocked = ("import importlib.abc, sys\n"
               "class NoHub(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path, target=None):\n"
               "        if name.split('.')[0] == 'huggingface_hub':\n"
               "            raise ImportError(name)\n"
               "sys.meta_path.insert(0, NoHub())\n"
               "from qrr.cli.main import main\n"
               "raise SystemExit(main(['rerank', 'org/name', '--query', 'q', '--docs', '-']))")
    result = run(blocked, tmp_path / "hf", offline=True)
    assert result.returncode == 2 and HUB_EXTRA in result.stderr


def test_local_folders_load_as_before(fp32_artifact):
    assert Reranker.from_pretrained(fp32_artifact, threads=1).path == fp32_artifact
    with pytest.raises(ArtifactError, match="revision applies to repo ids only"):
        Reranker.from_pretrained(fp32_artifact, revision="main")
    with pytest.raises(ArtifactError, match="artifact folder not found"):
        Reranker.from_pretrained("/no/such/artifact")


def test_model_card(fp32_artifact, tmp_path):
    from qrr.export.card import model_card

    card = (fp32_artifact / "README.md").read_text(encoding="utf-8")
    front = card.split("---\n")[1]
    assert "library_name: qrr" in front and "pipeline_tag: text-ranking" in front
    assert "- onnx" in front and "- fp32" in front
    assert "base_model" not in front  # a local checkpoint folder is no hub id
    assert "Not validated yet" in card and "Reranker.from_pretrained" in card
    manifest = json.loads((fp32_artifact / "qrr.json").read_text())
    assert "README.md" not in manifest["files"]  # editing the card on the hub must not break the size check
    manifest["source"]["checkpoint"] = "Qwen/Qwen3-Reranker-0.6B"
    manifest["precision"] = "int8"
    manifest["validation"] = {"passed": False, "max_drop": 0.03, "data": "built-in", "max_abs_dp": 0.05,
                              "mean_abs_dp": 0.004, "spearman_mean": 0.99, "top1_agreement": 0.97,
                              "ms_per_pair": 12.0, "reference_ms_per_pair": 30.0}
    card = model_card(manifest)
    front = card.split("---\n")[1]
    assert "base_model: Qwen/Qwen3-Reranker-0.6B" in front and "base_model_relation: quantized" in front
    assert "| max \\|ΔP(yes)\\| | 0.05 (allowed 0.03: FAILED) |" in card
