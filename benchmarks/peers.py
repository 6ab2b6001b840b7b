"""The peers of benchmarks/throughput.py, each as `load(name, args) -> score(pairs) -> P(yes) per pair`.

Every peer gets the model card's prompt and default instruction, so all engines score the same token ids;
pairs are grouped by query, as each peer's API takes one query and its documents. How the peer models are
made is in benchmarks/peers.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from qrr.runtime.prompt import DEFAULT_INSTRUCTION, PREFIX, SUFFIX

Pair = tuple[str, str]
NO_ID, YES_ID = 2152, 9693
BATCH = 8  # peers that compute full-vocabulary logits hold [batch, length, 151669] floats: keep it the recipe's 8


class Skip(Exception):
    """This engine cannot run here; the message says why (benchmarks/throughput.py reports it)."""


def by_query(pairs: Sequence[Pair], score_query: Callable[[str, list[str]], list[float]]) -> list[float]:
    out = [0.0] * len(pairs)
    groups: dict[str, list[int]] = {}
    for i, (q, _) in enumerate(pairs):
        groups.setdefault(q, []).append(i)
    for q, idx in groups.items():
        for i, s in zip(idx, score_query(q, [pairs[i][1] for i in idx])):
            out[i] = s
    return out


def _need(path: Path | None, flag: str) -> Path:
    if path is None:
        raise Skip(f"no model given ({flag}; benchmarks/peers.md says how to make it)")
    if not path.exists():
        raise Skip(f"{path} not found")
    return path


def load(name: str, args) -> Callable[[Sequence[Pair]], list[float]]:
    if name in ("optimum-fp32", "optimum-int8"):
        folder = _need(args.optimum_onnx if name == "optimum-fp32" else args.optimum_int8,
                       "--optimum-onnx" if name == "optimum-fp32" else "--optimum-int8")
        return optimum(folder, args.checkpoint / "tokenizer.json", args.threads)
    if name in ("genai-fp32", "genai-int8"):
        folder = _need(args.genai if name == "genai-fp32" else args.genai_int8,
                       "--genai" if name == "genai-fp32" else "--genai-int8")
        return genai(folder, args.threads)
    if name == "llamacpp-q8_0":
        return llamacpp(_need(args.gguf, "--gguf"), args.threads)
    raise ValueError(name)


def optimum(folder: Path, tokenizer_file: Path, threads: int):
    """`optimum-cli export onnx --task text-generation`: full logits [B, T, vocab], left padding, batch 8."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    tok = Tokenizer.from_file(str(tokenizer_file))
    prefix = tok.encode(PREFIX, add_special_tokens=False).ids
    suffix = tok.encode(SUFFIX, add_special_tokens=False).ids
    pad = tok.token_to_id("<|endoftext|>") or 0

    def run(seqs: list[list[int]]) -> list[float]:
        width = max(map(len, seqs))
        ids = np.full((len(seqs), width), pad, dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, s in enumerate(seqs):
            ids[r, width - len(s):], mask[r, width - len(s):] = s, 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "position_ids" in names:
            feed["position_ids"] = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        logits = session.run(["logits"], feed)[0][:, -1, [NO_ID, YES_ID]].astype(np.float64)
        return (1 / (1 + np.exp(logits[:, 0] - logits[:, 1]))).tolist()

    def score_query(query: str, docs: list[str]) -> list[float]:
        texts = [f"<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: {query}\n<Document>: {d}" for d in docs]
        seqs = [prefix + e.ids + suffix for e in tok.encode_batch(texts, add_special_tokens=False)]
        return [s for i in range(0, len(seqs), BATCH) for s in run(seqs[i : i + BATCH])]

    return lambda pairs: by_query(pairs, score_query)


def genai(folder: Path, threads: int):
    """openvino_genai.TextRerankPipeline: for a qwen3 model it scores query + document as one string with
    no template of its own, so the model card's prompt is split between the two; it returns P(yes). The
    CPU plugin's defaults are kept (bf16 compute on CPUs that have it), as a user of the pipeline gets."""
    try:
        import openvino_genai as ov_genai
    except ImportError:
        raise Skip("openvino-genai is not installed") from None
    config = ov_genai.TextRerankPipeline.Config()
    config.top_n = 1 << 20  # every document back
    config.max_length = 8192
    config.padding_side = "left"
    pipe = ov_genai.TextRerankPipeline(str(folder), "CPU", config, INFERENCE_NUM_THREADS=threads,
                                       PERFORMANCE_HINT="LATENCY")

    def score_query(query: str, docs: list[str]) -> list[float]:
        head = f"{PREFIX}<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: {query}\n"
        out = [0.0] * len(docs)
        for start in range(0, len(docs), BATCH):
            chunk = [f"<Document>: {d}{SUFFIX}" for d in docs[start : start + BATCH]]
            for index, value in pipe.rerank(head, chunk):
                out[start + index] = float(value)
        return out

    return lambda pairs: by_query(pairs, score_query)


def llamacpp(gguf: Path, threads: int, n_ctx: int = 2048):
    """llama-cpp-python's low-level API as llama-server's /rerank uses it: the GGUF's `rerank` prompt
    template, rank pooling (the converter's [W_yes; W_no] head, softmax in the graph: P(yes)), one pair per
    decode. The high-level Llama.embed() cannot: it reads special tokens as text."""
    try:
        import ctypes

        import llama_cpp as L
    except ImportError:
        raise Skip("llama-cpp-python is not installed") from None
    quiet = L.llama_log_callback(lambda level, text, user: None)
    L.llama_log_set(quiet, ctypes.c_void_p(0))
    L.llama_backend_init()
    params = L.llama_model_default_params()
    params.n_gpu_layers = 0
    model = L.llama_model_load_from_file(str(gguf).encode(), params)
    if not model:
        raise Skip(f"llama.cpp cannot load {gguf}")
    vocab = L.llama_model_get_vocab(model)
    cp = L.llama_context_default_params()
    cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
    cp.n_seq_max = 1
    cp.n_threads = cp.n_threads_batch = threads
    cp.embeddings = True
    cp.pooling_type = L.LLAMA_POOLING_TYPE_RANK
    ctx = L.llama_init_from_model(model, cp)
    template = L.llama_model_chat_template(model, b"rerank")
    if not ctx or template is None:
        raise Skip(f"{gguf} is not a reranker GGUF (no rank pooling or no 'rerank' template)")
    template = template.decode()
    batch = L.llama_batch_init(n_ctx, 0, 1)

    def one(query: str, doc: str) -> float:
        text = template.replace("{query}", query).replace("{document}", doc).encode()
        buf = (L.llama_token * (len(text) + 16))()
        n = L.llama_tokenize(vocab, text, len(text), buf, len(buf), False, True)
        if not 0 < n <= n_ctx:
            raise ValueError(f"pair of {n} tokens does not fit n_ctx={n_ctx}")
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        batch.n_tokens = n
        for i in range(n):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = buf[i], i, 1, 1
            batch.seq_id[i][0] = 0
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return float(L.llama_get_embeddings_seq(ctx, 0)[0])

    keep = (quiet, model, ctx, batch)  # the callback and handles live as long as the scorer

    def score(pairs):
        assert keep
        return [one(q, d) for q, d in pairs]

    return score
