"""Stand-in checkpoints: the exact Qwen3 architecture with random weights, in the Hugging Face layout.

Real Qwen3-Reranker weights need the hub; a stand-in lets the whole pipeline (export, quantization,
validation, runtime) run offline on the real loading code. Scores of a stand-in mean nothing; the
agreement between an artifact and the reference on it is what is measured.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

from qrr.export.progress import Progress
from qrr.runtime.errors import QrrError
from qrr.runtime.pairs import BUILTIN_FILE, load_queries
from qrr.runtime.prompt import PREFIX, SUFFIX, pair_text

# Published Qwen3-Reranker shapes (config.json of each checkpoint); "tiny" is for tests.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, tie_word_embeddings=True),
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, vocab_size=151669),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, vocab_size=151669),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, tie_word_embeddings=False, vocab_size=151669),
}
# Shapes whose fp32 model would not fit a user's machine: written tensor by tensor in bf16, as published.
STREAMED_SHAPES = ("4b", "8b")
ROPE_THETA = 1_000_000.0
MAX_SHARD_BYTES = 4 * 2**30  # the published checkpoints' shards are about 4 GB
INIT_CHUNK = 1 << 24  # values drawn at a time (64 MB of fp32)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED = ["<think>", "</think>"]
# Qwen2/Qwen3's pre-tokenizer split.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_tokenizer(vocab_size: int = 2000):
    """A small byte-level BPE shaped like Qwen3's (same split, NFC, ChatML and think tokens, 'yes'/'no')."""
    from importlib import resources

    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    data = resources.files("qrr.runtime").joinpath(BUILTIN_FILE).read_text(encoding="utf-8")
    corpus = [PREFIX, SUFFIX, "yes\nno\nyes no Yes No", *data.splitlines()] * 2
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in ADDED])
    vocab = tok.get_vocab()
    if "yes" not in vocab or "no" not in vocab:
        raise QrrError("the generated tokenizer lacks 'yes' or 'no'; raise its vocab_size")
    return tok


def make_standin(
    out_dir: str | Path,
    *,
    shape: str = "tiny",
    tokenizer: str | Path | None = None,
    seed: int = 0,
    init_std: float = 0.02,
    outliers: float = 0.0,
    train_steps: int = 0,
    outlier_kinds: dict[str, float] | None = None,
    outlier_channels: int = 4,
    massive: float = 0.0,
    train_fraction: float = 1.0,
    streamed: bool | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write a random-weight Qwen3 causal LM with a reranker's tokenizer to `out_dir`; returns the path.

    `tokenizer` is a folder holding a Qwen3 tokenizer.json (for instance the real one); without it a small
    generated one is used. The vocabulary of the model is the published size when the shape has one.
    `outliers` > 0 gives the model the activation outliers of real LLMs without changing its function
    (see add_activation_outliers), at the norm-fed and MLP-intermediate channels; `outlier_kinds` names the
    kinds and factors instead, e.g. {"value": 64, "down": 256}, in `outlier_channels` channels each.
    `massive` > 0 gives a few tokens residual activations that many times the rest (add_massive_tokens), as
    real Qwen models have at the first token and delimiters; that changes the function, so it is done before
    training. `train_steps` > 0 trains it briefly as a reranker on the built-in evaluation pairs (a seeded
    `train_fraction` of the queries: other members of a family see other text; see train_reranker), so that
    its scores spread like a real reranker's instead of clustering in near-ties.
    `streamed` writes bf16 shards tensor by tensor instead (write_streamed_standin), without the model in
    memory; None streams the shapes in STREAMED_SHAPES, whose fp32 model would not fit a user's machine.
    Streaming writes random weights only: with training, outliers or massive tokens it is refused.
    `progress` (a qrr.export.progress.Progress) reports the streamed writing.
    """
    if shape not in SHAPES:
        raise QrrError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if streamed is None:
        streamed = shape in STREAMED_SHAPES
    if streamed:
        asked = [name for name, value in (("train_steps", train_steps), ("outliers", outliers),
                                          ("outlier_kinds", outlier_kinds), ("massive", massive)) if value]
        if asked:
            why = f"the {shape} stand-in is" if shape in STREAMED_SHAPES else "a streamed stand-in is"
            raise QrrError(
                f"{why} written tensor by tensor in bf16 and cannot take {', '.join(asked)}: training and "
                "the outlier rescales need the whole model in memory (fp32); use a smaller shape (tiny, small, 0.6b)"
            )
        return write_streamed_standin(out_dir, shape=shape, tokenizer=tokenizer, seed=seed, init_std=init_std,
                                      progress=progress)

    import torch
    from transformers import Qwen3ForCausalLM

    out = Path(out_dir)
    tok = _load_tokenizer(tokenizer)
    config = _standin_config(shape, tok, init_std)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).eval()
    if massive:
        add_massive_tokens(model, tok, massive)
    if train_steps:
        train_reranker(model, tok, train_steps, seed=seed, fraction=train_fraction)
    kinds = dict(outlier_kinds or {})
    if outliers:
        kinds.update(norm=outliers, down=outliers)
    for kind, factor in kinds.items():
        add_activation_outliers(model, factor, channels=outlier_channels, kinds=(kind,))
    model.save_pretrained(out)
    _save_tokenizer(out, tok, tokenizer)
    (out / "qrr-standin.json").write_text(
        json.dumps(
            {"shape": shape, "seed": seed, "init_std": init_std, "outliers": outliers, "train_steps": train_steps,
             "outlier_kinds": kinds, "outlier_channels": outlier_channels, "massive": massive,
             "train_fraction": train_fraction, "tokenizer": str(tokenizer or "generated")},
            indent=2,
        )
    )
    return out


def write_streamed_standin(
    out_dir: str | Path,
    *,
    shape: str = "tiny",
    tokenizer: str | Path | None = None,
    seed: int = 0,
    init_std: float = 0.02,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    progress: Progress | None = None,
) -> Path:
    """Write a random-weight Qwen3 stand-in as bf16 safetensors shards, one tensor at a time; returns the path.

    The layout is the published checkpoints': config.json saying bfloat16, `model-0000i-of-0000n.safetensors`
    shards of at most `max_shard_bytes` (a larger tensor gets a shard of its own) with
    `model.safetensors.index.json`, or one `model.safetensors` when everything fits in one shard, and the
    tensor names of transformers' Qwen3ForCausalLM, so `AutoModelForCausalLM.from_pretrained` loads it as it
    is. The weights are initialised as transformers does (linear and embedding weights normal(0, init_std),
    RMSNorm weights ones), each tensor from its own generator seeded by `seed` and its name, so the result
    does not depend on the shard size. Only one tensor is in memory at a time: the 8B shape (16 GB on disk)
    needs about 1.3 GB, its embedding table. `tokenizer` as for make_standin.
    """
    import torch
    from transformers import GenerationConfig

    if shape not in SHAPES:
        raise QrrError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if max_shard_bytes <= 0:
        raise QrrError(f"max_shard_bytes must be positive, not {max_shard_bytes}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _load_tokenizer(tokenizer)
    config = _standin_config(shape, tok, init_std)
    config.dtype = torch.bfloat16
    tensors = qwen3_tensor_shapes(config)
    shards = _plan_shards(tensors, max_shard_bytes)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    progress = progress or Progress(enabled=False)
    with progress.step(f"writing the {shape} stand-in in bf16", total=len(tensors), unit="tensor") as step:
        for name, shard in zip(names, shards):
            _write_safetensors(out / name, shard, seed=seed, std=init_std, done=step.update)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(_nbytes(shp) for _, shp, _ in tensors)},
            "weight_map": {tensor: name for name, shard in zip(names, shards) for tensor, _, _ in shard},
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)
    # the published config.json's own keys too, which transformers 4.x reads (5.x writes dtype, rope_parameters)
    saved = json.loads((out / "config.json").read_text())
    saved.update(torch_dtype="bfloat16", rope_theta=ROPE_THETA)
    (out / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    _save_tokenizer(out, tok, tokenizer)
    (out / "qrr-standin.json").write_text(
        json.dumps(
            {"shape": shape, "seed": seed, "init_std": init_std, "outliers": 0.0, "train_steps": 0,
             "streamed": True, "dtype": "bfloat16", "shards": len(shards), "max_shard_bytes": max_shard_bytes,
             "tokenizer": str(tokenizer or "generated")},
            indent=2,
        )
    )
    return out


def qwen3_tensor_shapes(config) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, init) of every tensor Qwen3ForCausalLM saves for `config`, in its order; init is
    "normal" (linear and embedding weights) or "ones" (RMSNorm weights). Qwen3 has no biases."""
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_dim, kv_dim = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    tensors = [("model.embed_tokens.weight", (config.vocab_size, hidden), "normal")]
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}"
        tensors += [
            (f"{layer}.self_attn.q_proj.weight", (q_dim, hidden), "normal"),
            (f"{layer}.self_attn.k_proj.weight", (kv_dim, hidden), "normal"),
            (f"{layer}.self_attn.v_proj.weight", (kv_dim, hidden), "normal"),
            (f"{layer}.self_attn.o_proj.weight", (hidden, q_dim), "normal"),
            (f"{layer}.self_attn.q_norm.weight", (head_dim,), "ones"),
            (f"{layer}.self_attn.k_norm.weight", (head_dim,), "ones"),
            (f"{layer}.mlp.gate_proj.weight", (inter, hidden), "normal"),
            (f"{layer}.mlp.up_proj.weight", (inter, hidden), "normal"),
            (f"{layer}.mlp.down_proj.weight", (hidden, inter), "normal"),
            (f"{layer}.input_layernorm.weight", (hidden,), "ones"),
            (f"{layer}.post_attention_layernorm.weight", (hidden,), "ones"),
        ]
    tensors.append(("model.norm.weight", (hidden,), "ones"))
    if not config.tie_word_embeddings:
        tensors.append(("lm_head.weight", (config.vocab_size, hidden), "normal"))
    return tensors


def _nbytes(shape: tuple[int, ...]) -> int:
    return 2 * math.prod(shape)  # bf16


def _plan_shards(tensors: list, max_bytes: int) -> list[list]:
    """Consecutive tensors in shards of at most `max_bytes`; a larger tensor alone in its shard."""
    shards: list[list] = [[]]
    size = 0
    for tensor in tensors:
        nbytes = _nbytes(tensor[1])
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += nbytes
    return shards


def _write_safetensors(path: Path, tensors: list, *, seed: int, std: float, done) -> None:
    """One safetensors file of bf16 `tensors`, each generated just before its bytes are written.

    The format is an 8-byte little-endian header length, a JSON header of dtype, shape and byte offsets
    (padded with spaces to 8 bytes), then the tensors' bytes: the shapes are known, so the header comes first
    and no tensor waits in memory for the others.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in tensors:
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + _nbytes(shape)]}
        offset += _nbytes(shape)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, init in tensors:
            f.write(_bf16_bytes(_init_tensor(name, shape, init, seed=seed, std=std)))
            done(1)


def _init_tensor(name: str, shape: tuple[int, ...], init: str, *, seed: int, std: float):
    """A bf16 tensor as transformers initialises it, from a generator seeded by `seed` and the name."""
    import torch

    if init == "ones":
        return torch.ones(shape, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed((seed << 32 | zlib.crc32(name.encode())) & 0xFFFF_FFFF_FFFF_FFFF)
    out = torch.empty(shape, dtype=torch.bfloat16)
    flat = out.view(-1)
    for start in range(0, flat.numel(), INIT_CHUNK):  # fp32 draws (faster than bf16 ones), a chunk at a time
        chunk = flat[start : start + INIT_CHUNK]
        chunk.copy_(torch.empty(chunk.numel()).normal_(0.0, std, generator=gen))
    return out


def _bf16_bytes(tensor):
    """The little-endian bytes of a bf16 tensor, without a copy on little-endian machines."""
    import torch

    return tensor.contiguous().view(torch.int16).numpy().astype("<i2", copy=False).data


def _load_tokenizer(tokenizer: str | Path | None):
    """The tokenizers.Tokenizer of the folder `tokenizer`, or the generated one."""
    from tokenizers import Tokenizer

    if tokenizer is None:
        return build_tokenizer()
    tok_file = Path(tokenizer) / "tokenizer.json"
    if not tok_file.is_file():
        raise QrrError(f"{tokenizer} has no tokenizer.json")
    return Tokenizer.from_file(str(tok_file))


def _standin_config(shape: str, tok, init_std: float):
    """The Qwen3Config of `shape` as published (rope, norm, positions), with `tok`'s special tokens."""
    from transformers import Qwen3Config

    params = dict(SHAPES[shape])
    vocab_size = max(params.pop("vocab_size", 0), tok.get_vocab_size(with_added_tokens=True))
    return Qwen3Config(
        vocab_size=vocab_size,
        max_position_embeddings=40960,
        rope_theta=ROPE_THETA,
        rms_norm_eps=1e-6,
        initializer_range=init_std,
        bos_token_id=tok.token_to_id("<|endoftext|>"),
        eos_token_id=tok.token_to_id("<|im_end|>"),
        use_sliding_window=False,
        architectures=["Qwen3ForCausalLM"],
        **params,
    )


def _save_tokenizer(out: Path, tok, tokenizer: str | Path | None) -> None:
    """The given tokenizer folder's files as they are, so transformers loads it as users do; else `tok`."""
    from transformers import PreTrainedTokenizerFast

    if tokenizer is not None:
        for name in TOKENIZER_FILES:
            if (Path(tokenizer) / name).is_file():
                shutil.copyfile(Path(tokenizer) / name, out / name)
        return
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=131072
    )
    fast.save_pretrained(out)


OUTLIER_CHANNELS = 4
OUTLIER_KINDS = ("norm", "value", "down")
# A family of stand-ins for the quantization sweep and tests: outliers of every kind of matmul input, at
# factors 16–256 in a few or many channels, and token-wise massive activations; each trained on its own
# share of the built-in pairs. Not the checkpoint any preset was tuned on.
FAMILY: dict[str, dict[str, Any]] = {
    "plain": dict(seed=21),
    "norm-16x16": dict(seed=22, outlier_kinds={"norm": 16.0}, outlier_channels=16),
    "norm-256x2": dict(seed=23, outlier_kinds={"norm": 256.0}, outlier_channels=2),
    "value-64x4": dict(seed=24, outlier_kinds={"value": 64.0}, outlier_channels=4),
    "value-256x16": dict(seed=25, outlier_kinds={"value": 256.0}, outlier_channels=16),
    "down-128x4": dict(seed=26, outlier_kinds={"down": 128.0}, outlier_channels=4),
    "massive-300": dict(seed=27, massive=300.0),
    "mixed": dict(seed=28, outlier_kinds={"norm": 100.0, "value": 100.0, "down": 100.0}, massive=100.0),
}


def make_family_member(out_dir: str | Path, name: str, *, shape: str = "tiny", train_steps: int = 60,
                       tokenizer: str | Path | None = None) -> Path:
    """The FAMILY member `name` at `shape`, trained `train_steps` steps on 70% of the built-in queries."""
    if name not in FAMILY:
        raise QrrError(f"unknown family member {name!r}; choose one of {', '.join(FAMILY)}")
    return make_standin(out_dir, shape=shape, tokenizer=tokenizer, train_steps=train_steps, train_fraction=0.7,
                        **FAMILY[name])


def add_activation_outliers(
    model, factor: float, channels: int = OUTLIER_CHANNELS, seed: int = 1, kinds: tuple[str, ...] = ("norm", "down")
) -> dict[str, list[int]]:
    """Function-preserving rescales that give a few channels of matmul inputs activations `factor`× the rest.

    Real LLMs have a handful of hidden channels whose activations are ~100× the median, in the same channels
    across layers, and the weights reading those channels are small. In every layer, by kind:
      norm   the RMSNorm gains of the chosen hidden channels × factor, the input columns of the projections
             reading the norms' output (q/k/v, gate/up) ÷ factor
      value  the chosen value channels (v_proj rows) × factor, the o_proj input columns they feed ÷ factor
             (attention is linear in V); a scale folded into a norm gain cannot reach them
      down   the chosen MLP intermediate channels (up_proj rows) × factor, down_proj columns ÷ factor
    The model computes the same function; only the activations entering the linear layers, and the weights
    that meet them, change scale. Returns the channels chosen per kind.
    """
    import torch

    unknown = set(kinds) - set(OUTLIER_KINDS)
    if unknown:
        raise QrrError(f"unknown outlier kinds {sorted(unknown)}; choose from {', '.join(OUTLIER_KINDS)}")
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    picked = {
        "norm": torch.randperm(cfg.hidden_size, generator=gen)[:channels],
        "down": torch.randperm(cfg.intermediate_size, generator=gen)[:channels],
        "value": torch.randperm(cfg.num_key_value_heads * head_dim, generator=gen)[:channels],
    }
    # o_proj input channel (query head h, d) reads value channel (h // group, d)
    kv_of = torch.arange(cfg.num_attention_heads * head_dim)
    kv_of = (kv_of // head_dim // group) * head_dim + kv_of % head_dim
    with torch.no_grad():
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if "norm" in kinds:
                ch = picked["norm"]
                layer.input_layernorm.weight[ch] *= factor
                layer.post_attention_layernorm.weight[ch] *= factor
                for proj in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                    proj.weight[:, ch] /= factor
            if "value" in kinds:
                attn.v_proj.weight[picked["value"], :] *= factor
                columns = torch.isin(kv_of, picked["value"])
                attn.o_proj.weight[:, columns] /= factor
            if "down" in kinds:
                mlp.up_proj.weight[picked["down"], :] *= factor
                mlp.down_proj.weight[:, picked["down"]] /= factor
    return {kind: picked[kind].tolist() for kind in kinds}


def add_massive_tokens(model, tok, factor: float, channel: int | None = None) -> list[int]:
    """Give the first token of the prompt and common delimiters residual activations `factor`× the rest.

    Real Qwen models carry a few tokens (the first one, newlines, colons) whose residual stream holds values
    100–1000× the others' in one fixed channel; after RMSNorm those tokens are spikes in that channel at every
    q/k/v and gate/up input, and the MLP turns them into spikes at the down_proj input. Here the embedding
    rows of those tokens get `factor` × the table's mean |value| in one channel that no other token uses, and
    in every layer the gate/up columns reading that channel are scaled up so the spike reaches the MLP. Unlike
    add_activation_outliers this changes the function: train afterwards. Returns the token ids.
    """
    import torch

    ids = {tok.token_to_id("<|im_start|>")}
    for text in ("\n", ":", ".", ">:"):
        ids.update(tok.encode(text, add_special_tokens=False).ids[:1])
    ids.discard(None)
    table = model.model.embed_tokens.weight
    channel = int(table.abs().mean(0).argmin()) if channel is None else channel
    with torch.no_grad():
        if model.config.tie_word_embeddings:  # the head keeps its rows: only the input side gets the spike
            model.lm_head.weight = torch.nn.Parameter(table.detach().clone())
            model.config.tie_word_embeddings = False
        spike = factor * table.abs().mean()
        table[:, channel] = 0.0  # the channel is the spike tokens' own, as in real models
        table[sorted(ids), channel] = spike
        for layer in model.model.layers:
            for proj in (layer.mlp.gate_proj, layer.mlp.up_proj):
                proj.weight[:, channel] *= 16.0
    return sorted(ids)


def train_reranker(model, tok, steps: int, *, seed: int = 0, batch: int = 16, lr: float = 2e-3,
                   fraction: float = 1.0) -> list[float]:
    """Train the model briefly on the built-in pairs: P(yes) of the model card's prompt vs label > 0.

    The loss is the recipe's own score, softplus on ±(logit_yes − logit_no) at the last token, so the
    trained model is a (tiny, over-fitted) Qwen3 reranker whose scores are spread out. Returns the losses.
    """
    import random

    import torch

    pick_query = random.Random(seed + 1000)
    queries = [q for q in load_queries() if fraction >= 1.0 or pick_query.random() < fraction]
    rows = [(q, d, float((label or 0) > 0)) for q in queries for d, label in zip(q.documents, q.labels)]
    prefix = tok.encode(PREFIX, add_special_tokens=False).ids
    suffix = tok.encode(SUFFIX, add_special_tokens=False).ids
    yes, no = tok.token_to_id("yes"), tok.token_to_id("no")
    texts = [pair_text(q.query, d, q.instruction) for q, d, _ in rows]
    ids = [prefix + e.ids[:384] + suffix for e in tok.encode_batch(texts, add_special_tokens=False)]
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        pick = rng.sample(range(len(rows)), batch)
        width = max(len(ids[i]) for i in pick)
        input_ids = torch.zeros(batch, width, dtype=torch.long)
        mask = torch.zeros(batch, width, dtype=torch.long)
        for row, i in enumerate(pick):  # left padding, as the recipe
            input_ids[row, width - len(ids[i]) :] = torch.tensor(ids[i])
            mask[row, width - len(ids[i]) :] = 1
        hidden = model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state[:, -1]
        head = model.lm_head.weight
        logit = hidden @ (head[yes] - head[no])
        target = torch.tensor([rows[i][2] for i in pick])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses
