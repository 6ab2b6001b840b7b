"""Stand-in checkpoints: the exact Qwen3 architecture with random weights, in the Hugging Face layout.

Real Qwen3-Reranker weights need the hub; a stand-in lets the whole pipeline (export, quantization,
validation, runtime) run offline on the real loading code. Scores of a stand-in mean nothing; the
agreement between an artifact and the reference on it is what is measured.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from qrr.runtime.errors import QrrError
from qrr.runtime.prompt import PREFIX, SUFFIX

# Published Qwen3-Reranker shapes (config.json of each checkpoint); "tiny" is for tests.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, vocab_size=151669),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, vocab_size=151669),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, tie_word_embeddings=False, vocab_size=151669),
}
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
    data = resources.files("qrr.export").joinpath("data/eval_pairs.jsonl").read_text(encoding="utf-8")
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
) -> Path:
    """Write a random-weight Qwen3 causal LM with a reranker's tokenizer to `out_dir`; returns the path.

    `tokenizer` is a folder holding a Qwen3 tokenizer.json (for instance the real one); without it a small
    generated one is used. The vocabulary of the model is the published size when the shape has one.
    """
    import torch
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    if shape not in SHAPES:
        raise QrrError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    out = Path(out_dir)
    if tokenizer is not None:
        tok_file = Path(tokenizer) / "tokenizer.json"
        if not tok_file.is_file():
            raise QrrError(f"{tokenizer} has no tokenizer.json")
        tok = Tokenizer.from_file(str(tok_file))
    else:
        tok = build_tokenizer()
    params = dict(SHAPES[shape])
    vocab_size = max(params.pop("vocab_size", 0), tok.get_vocab_size(with_added_tokens=True))
    im_end = tok.token_to_id("<|im_end|>")
    config = Qwen3Config(
        vocab_size=vocab_size,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        initializer_range=init_std,
        bos_token_id=tok.token_to_id("<|endoftext|>"),
        eos_token_id=im_end,
        use_sliding_window=False,
        architectures=["Qwen3ForCausalLM"],
        **params,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).eval()
    model.save_pretrained(out)
    if tokenizer is not None:  # the given tokenizer's files as they are, so transformers loads it as users do
        for name in TOKENIZER_FILES:
            if (Path(tokenizer) / name).is_file():
                shutil.copyfile(Path(tokenizer) / name, out / name)
    else:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=131072
        )
        fast.save_pretrained(out)
    (out / "qrr-standin.json").write_text(
        json.dumps({"shape": shape, "seed": seed, "init_std": init_std, "tokenizer": str(tokenizer or "generated")}, indent=2)
    )
    return out
