"""The lean scorer: tokenizer → shared prefixes and length-sorted batches → session → P(yes)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cache import LoadCache
from .errors import ArtifactError, InputError
from .manifest import load_manifest
from .planner import CHUNK_TOKENS, default_batch_tokens, plan_batches, plan_prefixes
from .prompt import PromptTokenizer, Truncation, check_documents, check_text
from .scorer import CrossEncoderCalls, RerankResult, check_top_k, ranked
from .session import HINTS, SessionSpec, open_session_while


def physical_cores() -> int:
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
    except ImportError:
        cores = None
    return cores or os.cpu_count() or 1


class Reranker(CrossEncoderCalls):
    """Scores documents against a query with an exported qrr artifact.

    >>> rr = Reranker("qwen3-rr-0.6b-int8")           # or Reranker.from_pretrained("org/repo") for a published one
    >>> rr.score("what is the capital of China?", ["The capital of China is Beijing.", "Gravity is a force."])

    `device`: for ONNX artifacts 'cpu', 'cuda', 'cuda:N', 'dml', 'dml:N' or 'auto' (onnxruntime providers);
    for OpenVINO artifacts 'cpu', 'gpu', 'gpu.N', 'npu' or 'auto' (any case). A device that is not there is
    an error, never a silent fall-back to the CPU. `performance_hint` ('latency' or 'throughput') is
    OpenVINO's. `prefix_reuse=False` scores every pair whole (same scores, for comparison).
    `copy_weights=True` reads the weights into memory instead of memory-mapping them: the artifact's files may
    then be rewritten or removed under the running scorer (a mapped file rewritten in place kills the process
    with SIGBUS), at the cost of resident memory (0.6B int8: 1337 against 858 MiB peak on workload A).
    `qrr serve` sets it.
    `load_cache=True` keeps what loading derives from the artifact on this machine in the user's cache folder
    (onnxruntime on the CPU: the optimized graph with its pre-packed weights; OpenVINO: the compiled model), so
    that later loads skip that work; the scores are the same (README, "Load time and memory").
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "cpu",
        threads: int | None = None,
        *,
        max_length: int | None = None,
        batch_tokens: int | None = None,
        prefix_reuse: bool = True,
        performance_hint: str = "latency",
        copy_weights: bool = False,
        load_cache: bool = True,
    ) -> None:
        self.path = Path(path)
        self.manifest = load_manifest(self.path)
        m = self.manifest
        if max_length is None:
            max_length = int(m["max_length"])
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise InputError(f"max_length must be a positive integer, got {max_length!r}")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise InputError(f"threads must be a positive integer or None, got {threads!r}")
        if batch_tokens is not None and (not isinstance(batch_tokens, int) or isinstance(batch_tokens, bool)
                                         or batch_tokens < 1):
            raise InputError(f"batch_tokens must be a positive integer or None (the device's default), "
                             f"got {batch_tokens!r}")
        if performance_hint not in HINTS:  # checked for every format, so a typo never waits for an OpenVINO artifact
            raise InputError(f"performance_hint must be 'latency' or 'throughput', got {performance_hint!r}")
        self.max_length = max_length
        self.pad_token_id = int(m["pad_token_id"])
        self.device = device
        self.threads = threads or physical_cores()
        # a format's own manifest fields are under its name, e.g. "openvino": {"properties": {...}}
        properties = (m.get(m["format"]) or {}).get("properties")
        gqa = m["format"] == "onnx" and str(m.get("attention", "")).startswith("GroupQueryAttention")
        if gqa:
            from .onnxruntime import check_gqa_support

            check_gqa_support(str(self.path))  # before the load, whose own error would blame the artifact
        cache = LoadCache.of(self.path, list(m["files"])) if load_cache else None
        spec = SessionSpec(device, self.threads, tuple(m["outputs"]), properties, performance_hint, bool(copy_weights),
                           cache)
        prompt = m["prompt"]

        def tokenizer() -> PromptTokenizer:
            return PromptTokenizer(
                self.path / m["tokenizer_file"],
                prefix=prompt["prefix"],
                suffix=prompt["suffix"],
                template=prompt["template"],
                default_instruction=prompt["default_instruction"],
                max_length=max_length,
            )

        # the tokenizer loads while the backend compiles (README, "Load time and memory")
        self.session, self.tokenizer = open_session_while(self.path / m["model_file"], m["format"], spec, tokenizer)
        self.device_kind = self.session.device
        self.batch_tokens = batch_tokens or default_batch_tokens(self.device_kind,
                                                                 (m.get("source") or {}).get("hidden_size"))
        if gqa and self.device_kind != "cpu":
            warnings.warn(
                f"{self.path} computes attention with onnxruntime's GroupQueryAttention in {m['precision']}, which "
                f"the {self.device_kind} provider does not run in that precision: those nodes run on the CPU. "
                "For a GPU export --quant fp16, or pass --attention ops to qrr-export",
                RuntimeWarning, stacklevel=2)
        inputs = {i.name: i for i in self.session.inputs}
        expected = list(m["inputs"])
        if sorted(inputs) != sorted(expected):
            raise ArtifactError(
                f"{self.path}: the model's inputs {sorted(inputs)} differ from the manifest's {expected}; "
                "re-export the artifact"
            )
        past = inputs["past_key_values"]
        self._past_shape = tuple(0 if d is None else d for d in past.shape)
        self._past_dtype = np.float16 if past.type == "tensor(float16)" else np.float32
        self.prefix_reuse = bool(prefix_reuse)
        self.chunk_tokens = CHUNK_TOKENS

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        revision: str | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | bool | None = None,
        **options: Any,
    ) -> Reranker:
        """An artifact folder, or a published artifact's hub repo id ("org/name"), downloaded into the Hugging Face
        cache (only the files its manifest lists; HF_HUB_OFFLINE=1 uses the cache); `options` go to Reranker()."""
        from .hub import resolve_artifact

        return cls(resolve_artifact(name_or_path, revision, cache_dir=cache_dir, token=token), **options)

    # -- public API ---------------------------------------------------------------------------------------

    def score(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> list[float]:
        """P(yes) for each document, in input order."""
        check_text(query, "query")
        docs = check_documents(documents)
        return self.score_pairs([(query, d) for d in docs], instruction=instruction)

    def score_pairs(
        self, pairs: Iterable[tuple[str, str]], *, instruction: str | None = None
    ) -> list[float]:
        """P(yes) for each (query, document) pair, in input order; queries may differ."""
        if instruction is not None:
            check_text(instruction, "instruction")
        checked = []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InputError(f"pairs[{i}] must be a (query, document) tuple, got {type(pair).__name__}")
            checked.append((check_text(pair[0], f"pairs[{i}][0] (query)"), check_text(pair[1], f"pairs[{i}][1] (document)")))
        if not checked:
            return []
        ids = self.tokenizer.encode(checked, instruction)
        return self.score_ids(ids, group_keys=[q for q, _ in checked]).tolist()

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_k: int | None = None,
        instruction: str | None = None,
    ) -> list[RerankResult]:
        """Documents sorted by P(yes), best first; the first `top_k` when given."""
        check_top_k(top_k)
        docs = check_documents(documents)
        scores = self.score(query, docs, instruction=instruction)
        return [RerankResult(i, scores[i], docs[i]) for i in ranked(scores, top_k)]

    def truncation(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> list[Truncation]:
        """How many of each document's tokens the model sees (`.kept` of `.total`) in the pairs `score` runs;
        `.starved` marks documents cut to fewer than MIN_DOCUMENT_TOKENS, whose scores say little."""
        check_text(query, "query")
        if instruction is not None:
            check_text(instruction, "instruction")
        docs = check_documents(documents)
        return self.tokenizer.encode_report([(query, d) for d in docs], instruction)[1]

    def score_ids(
        self, sequences: list[list[int]], group_keys: Sequence[object] | None = None, *, raw: bool = False
    ) -> np.ndarray:
        """P(yes) for already tokenized prompts, in input order (`raw=True`: the logit, log P(yes)/P(no)).

        Sequences that share a token prefix share its computation (prefix reuse): the prefix common to all
        of them is run once, and so is each group's longer common prefix, where `group_keys` gives a key per
        sequence (e.g. the query); without `group_keys` only the prefix common to all is shared. The shared
        part is a prefix of the exact token ids, so the scores are those of scoring every sequence whole.
        """
        if group_keys is not None and len(group_keys) != len(sequences):
            raise InputError(
                f"group_keys has {len(group_keys)} keys for {len(sequences)} sequences; give one per sequence"
            )
        logits = np.empty(len(sequences), dtype=np.float32)
        if not sequences:
            return logits.astype(np.float64)
        if self.prefix_reuse:
            root, plan = plan_prefixes(sequences, group_keys)
        else:
            root, plan = 0, [(0, list(range(len(sequences))))]
        empty = np.zeros((*self._past_shape[:3], 0, self._past_shape[4]), dtype=self._past_dtype)
        root_past = self._extend(empty, sequences[0][:root])
        for shared, members in plan:
            past = root_past
            if shared > root:  # the group's own prefix, continued from the one every sequence shares
                past = self._extend(root_past, sequences[members[0]][root:shared])
            rest = [sequences[i][shared:] for i in members]
            long = [k for k, r in enumerate(rest) if self._chunked(len(r), past.shape[3])]
            for k in long:  # alone, chunk by chunk
                row = rest[k]
                cut = (len(row) - 1) // self.chunk_tokens * self.chunk_tokens
                logits[members[k]] = self._run([row[cut:]], self._extend(past, row[:cut]))[0][0]
            short = sorted(set(range(len(rest))) - set(long))
            lengths = [len(rest[k]) for k in short]
            for batch in plan_batches(lengths, self.batch_tokens, past=past.shape[3]):
                rows = [rest[short[b]] for b in batch]
                logits[[members[short[b]] for b in batch]] = self._run(rows, past)[0]
        return logits.astype(np.float64) if raw else sigmoid(logits)

    # -- internals -----------------------------------------------------------------------------------------

    def _chunked(self, tokens: int, past: int) -> bool:
        """Whether a row of `tokens` new tokens over `past` runs alone in chunks rather than whole: longer than a
        chunk, and its attention (tokens × (past + tokens) cells) over that of a whole row of twice the chunk
        (4 × chunk² cells: 4M at the default 1024, MAX_ATTENTION_CELLS). A chunk's keys and values must come
        back as the next chunk's past (fp32, 229 KiB a token on the 0.6B shape), which costs more memory than
        the attention it saves until rows reach about twice the chunk: workload B's one ~1125-token document
        peaked at 1139–1146 MiB whole against 1497–1501 MiB in chunks of 1024, and ran faster."""
        return tokens > self.chunk_tokens and tokens * (past + tokens) > 4 * self.chunk_tokens**2

    def _extend(self, past: np.ndarray, tokens: Sequence[int]) -> np.ndarray:
        """The past continued by `tokens` (one sequence), chunk by chunk."""
        for start in range(0, len(tokens), self.chunk_tokens):
            chunk = tokens[start : start + self.chunk_tokens]
            present = self._run([chunk], past, keep=len(chunk))[1]
            past = np.concatenate([past, present], axis=3)
        return past

    def _run(self, sequences: list[Sequence[int]], past: np.ndarray, keep: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """score logits of right-padded rows continuing `past`, and row 0's first `keep` keys and values."""
        width = max(len(s) for s in sequences)
        input_ids = np.full((len(sequences), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(sequences), width), dtype=np.int64)
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        feeds = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "past_key_values": past,
            "present_length": np.array(keep, dtype=np.int64),
        }
        logits, present = self.session.run(feeds)
        return logits.astype(np.float32).reshape(-1), present


def sigmoid(x: np.ndarray) -> np.ndarray:
    """P(yes) = softmax([logit_no, logit_yes])[1] = sigmoid(logit_yes - logit_no), overflow-free."""
    return np.exp(-np.logaddexp(0.0, -x.astype(np.float64)))
