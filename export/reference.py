"""The model card's recipe, as published, in fp32 with transformers: the reference every artifact is held to."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

from qrr.runtime.prompt import DEFAULT_MAX_LENGTH, PREFIX, SUFFIX, pair_text

from .checkpoint import Checkpoint, load_model, load_tokenizer, yes_no_ids
from .presets import check_reference_dtype


class RecipeTokenizer:
    """The recipe's tokenization: prefix + pair text truncated 'longest_first' + suffix, left padded."""

    def __init__(self, tokenizer, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.prefix_tokens = self.tokenizer.encode(PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(SUFFIX, add_special_tokens=False)

    def process_inputs(self, texts: Sequence[str]):
        inputs = self.tokenizer(
            list(texts),
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens),
        )
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = self.prefix_tokens + ele + self.suffix_tokens
        with warnings.catch_warnings():  # the recipe passes max_length to pad(), which transformers warns is unused
            warnings.simplefilter("ignore", UserWarning)
            return self.tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=self.max_length)

    def batches(self, texts: Sequence[str], batch_size: int = 8) -> Iterator:
        """The recipe's batches: `batch_size` texts at a time, in order, each batch left padded to its longest."""
        for start in range(0, len(texts), batch_size):
            yield self.process_inputs(texts[start : start + batch_size])


class ReferenceScorer(RecipeTokenizer):
    """Qwen3-Reranker's transformers example: left padding, truncation='longest_first', P(yes) from logits.

    `dtype` float32 is the recipe as qrr holds artifacts to it; bfloat16 loads the model as
    `from_pretrained(dtype=torch.bfloat16)` does (the model card's own dtype: weights and compute in bf16).
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_size: int = 8,
        logits_to_keep: int | None = None,
        dtype: str = "float32",
    ) -> None:
        tokenizer = load_tokenizer(checkpoint, padding_side="left")
        super().__init__(tokenizer, max_length)
        self.model = load_model(checkpoint, dtype=check_reference_dtype(dtype))
        self.yes_id, self.no_id = yes_no_ids(self.tokenizer, checkpoint.source)
        self.batch_size = batch_size
        # None is the recipe as published (logits at every position); 1 is the obvious fix a user might apply
        self.extra = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}

    def score_pairs(self, pairs: Sequence[tuple[str, str]], instruction: str | None = None) -> list[float]:
        import torch

        texts = [pair_text(q, d, instruction) for q, d in pairs]
        scores: list[float] = []
        with torch.no_grad():
            for inputs in self.batches(texts, self.batch_size):
                batch_scores = self.model(**inputs, **self.extra).logits[:, -1, :]
                stacked = torch.stack([batch_scores[:, self.no_id], batch_scores[:, self.yes_id]], dim=1)
                scores += torch.nn.functional.log_softmax(stacked, dim=1)[:, 1].exp().tolist()
        return scores
