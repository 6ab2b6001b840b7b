"""The model card's recipe streamed layer by layer: its scores with one decoder layer's weights in memory.

The recipe (reference.py) loads the whole model: the 8B in fp32 is 32 GB. StreamedReference computes the same
thing in another order. It tokenizes and batches exactly as the recipe (RecipeTokenizer, batches of 8, left
padded), embeds every batch from the embedding rows its tokens use, then, one layer at a time, builds transformers'
own Qwen3DecoderLayer, loads that layer's weights from the checkpoint's safetensors files, runs every batch
through it with the causal mask, position ids and rotary embedding that Qwen3Model.forward builds, and frees it.
The head is the two rows of the LM head the recipe reads (no and yes), not the vocabulary-wide matmul.

Memory: one layer's weights, the used embedding rows, the two head rows, every batch's hidden states, and one
batch's mask and activations inside the layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qrr.runtime.errors import first_line
from qrr.runtime.pairs import Query
from qrr.runtime.prompt import DEFAULT_MAX_LENGTH, pair_text

from .checkpoint import Checkpoint, CheckpointError, SafetensorsWeights, load_tokenizer, yes_no_ids
from .presets import check_reference_dtype
from .progress import Step
from .reference import RecipeTokenizer

EMBEDDING = "model.embed_tokens.weight"


class StreamedReference(RecipeTokenizer):
    """ReferenceScorer's scores (the model card's recipe, in `dtype`) holding one decoder layer at a time."""

    def __init__(
        self, checkpoint: Checkpoint, *, max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 8,
        dtype: str = "float32",
    ) -> None:
        import torch

        tokenizer = load_tokenizer(checkpoint, padding_side="left")
        super().__init__(tokenizer, max_length)
        self.yes_id, self.no_id = yes_no_ids(self.tokenizer, checkpoint.source)
        self.batch_size = batch_size
        self.dtype = getattr(torch, check_reference_dtype(dtype))
        self.weights = SafetensorsWeights(checkpoint)
        self.config = model_config(checkpoint, self.dtype)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], instruction: str | None = None) -> list[float]:
        """ReferenceScorer.score_pairs: the pairs in the recipe's batches of `batch_size`."""
        texts = [pair_text(q, d, instruction) for q, d in pairs]
        return [p for batch in self.score_batches(list(self.batches(texts, self.batch_size))) for p in batch]

    def score_queries(self, queries: Sequence[Query], step: Step | None = None) -> list[np.ndarray]:
        """Each query's scores, batched per query as validation runs the recipe (score_queries), in one pass
        over the layers; `step` is told of each layer done."""
        batches, owners = [], []
        for n, q in enumerate(queries):
            texts = [pair_text(q.query, d, q.instruction) for d in q.documents]
            for inputs in self.batches(texts, self.batch_size):
                batches.append(inputs)
                owners.append(n)
        scores: list[list[float]] = [[] for _ in queries]
        for n, batch in zip(owners, self.score_batches(batches, step)):
            scores[n] += batch
        return [np.asarray(s, dtype=np.float64) for s in scores]

    def score_batches(self, batches: Sequence, step: Step | None = None) -> list[list[float]]:
        """P(yes) of every row of every tokenized batch, layer by layer."""
        import torch
        from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm, Qwen3RotaryEmbedding

        cfg, step = self.config, step or Step(None)
        with torch.no_grad():
            hidden = self.embed([b["input_ids"] for b in batches])
            rotary = Qwen3RotaryEmbedding(cfg)  # its inverse frequencies stay fp32 in a bf16 model too
            for index in range(cfg.num_hidden_layers):
                layer = self.layer(index)
                for n, batch in enumerate(batches):
                    # rebuilt per layer: a batch's mask is (rows, 1, T, T), too many of them to keep at long T
                    mask, position_ids, position_embeddings = self.layer_inputs(hidden[n], batch["attention_mask"],
                                                                                rotary)
                    hidden[n] = layer(hidden[n], attention_mask=mask, position_ids=position_ids,
                                      position_embeddings=position_embeddings)
                del layer  # before the next one is read: one layer's weights at a time
                step.update(1)
            norm = Qwen3RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
            norm.load_state_dict({"weight": self.weights.tensor("model.norm.weight").to(self.dtype)}, assign=True)
            head_name = EMBEDDING if cfg.tie_word_embeddings else "lm_head.weight"
            head = self.weights.rows(head_name, torch.tensor([self.no_id, self.yes_id])).to(self.dtype)
            scores = []
            for h in hidden:
                # the recipe's lm_head at the last position, only its columns no and yes: [logit_no, logit_yes]
                stacked = torch.nn.functional.linear(norm(h)[:, -1, :], head)
                scores.append(torch.nn.functional.log_softmax(stacked, dim=1)[:, 1].exp().tolist())
        return scores

    def embed(self, input_ids: Sequence) -> list:
        """Every batch's embeddings, from the rows of the embedding its tokens use (the table is not loaded)."""
        import torch

        flat = torch.cat([ids.reshape(-1) for ids in input_ids])
        rows = self.weights.rows(EMBEDDING, flat).to(self.dtype)
        sizes = [ids.numel() for ids in input_ids]
        return [part.reshape(*ids.shape, -1) for part, ids in zip(torch.split(rows, sizes), input_ids)]

    def layer_inputs(self, hidden, attention_mask, rotary) -> tuple:
        """The mask, position ids and rotary embedding Qwen3Model.forward builds for a batch of the recipe."""
        import torch
        from transformers.cache_utils import DynamicCache
        from transformers.masking_utils import create_causal_mask

        position_ids = torch.arange(hidden.shape[1]).unsqueeze(0)  # no past; left padding keeps positions 0..T-1
        # the recipe's call leaves use_cache to the config, whose empty cache the mask is sized with
        cache = DynamicCache(config=self.config) if self.config.use_cache else None
        mask = create_causal_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                  cache=cache, position_ids=position_ids)
        return mask, position_ids, rotary(hidden, position_ids)

    def layer(self, index: int):
        """Decoder layer `index` of transformers' Qwen3 with its weights from the checkpoint, in the reference dtype."""
        import torch
        from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

        with torch.device("meta"):  # no memory until the checkpoint's tensors are assigned
            layer = Qwen3DecoderLayer(self.config, index)
        prefix = f"model.layers.{index}."
        state = {name: self.weights.tensor(prefix + name).to(self.dtype) for name in layer.state_dict()}
        layer.load_state_dict(state, assign=True)
        return layer.eval()


def model_config(checkpoint: Checkpoint, dtype):
    """The checkpoint's config as from_pretrained settles it (attention implementation included), without weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(checkpoint.path)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, dtype=dtype).config
    except Exception as exc:
        raise CheckpointError(f"cannot read the config of {checkpoint.source}: {first_line(exc)}") from None


def weight_bytes(checkpoint: Checkpoint, dtype: str) -> int:
    """The memory the recipe's model takes in `dtype`: every weight of the checkpoint at that size."""
    return SafetensorsWeights(checkpoint).parameters() * (4 if check_reference_dtype(dtype) == "float32" else 2)
