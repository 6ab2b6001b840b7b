"""The scoring graph: the Qwen3 body plus a one-row head, P(yes) = sigmoid(h_last · (W[yes] − W[no])).

The vocabulary head is never computed: the logit difference of two rows of a linear layer is one dot product
with the difference of the rows. The direction and the final dot product stay in fp32.

The graph takes a shared past (the keys and values of a prefix that every row of the batch continues), so
that the runtime computes the prompt prefix and the query once per query and feeds only each document's
tokens (prefix reuse, DESIGN.md). The past has batch 1 and is joined to each row's own keys and values
inside the graph (a copy of past × head size per row, much smaller than the scores). Rows are right padded:
with a causal mask a real token only ever sees the past and the real tokens before it, so the padding needs no
key mask. An empty past (length 0) scores whole sequences.

The attention is written one of two ways (ScoringModule's `attention`): "ops", standard ONNX ops that every
engine runs (OpenVINO, the fp16 GPU body), or "gqa", one com.microsoft GroupQueryAttention node per layer
(onnxruntime's CPU kernel: the rotary embedding inside, the softmax over each row's causal part only, no
additive mask). Both compute the same function (tests/test_export.py holds them within 1e-5).

Inputs
  input_ids        int64 [B, L]   new tokens, right padded
  attention_mask   int64 [B, L]   1 for real tokens; the score is read at index sum − 1 of each row
  past_key_values  float [layers, 2, kv_heads, P, head_dim]   keys (after RoPE) and values of the shared past
  present_length   int64 []       how many of row 0's new positions to return in `present` (0 while scoring)
Outputs
  score_logit      fp32  [B]
  present          float [layers, 2, kv_heads, present_length, head_dim]   row 0's new keys and values

Positions continue the past: P + 0 … P + L − 1.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .presets import ATTENTIONS

INPUT_NAMES = ["input_ids", "attention_mask", "past_key_values", "present_length"]
OUTPUT_NAMES = ["score_logit", "present"]
OPSET = 17


class ScoringModule(nn.Module):
    """`attention` is how each layer's attention is written: "ops" (standard ONNX ops, every engine) or "gqa"
    (onnxruntime's GroupQueryAttention contrib op, the rotary embedding inside it)."""

    def __init__(self, causal_lm: nn.Module, yes_token_id: int, no_token_id: int, attention: str = "ops") -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, not {attention!r}")
        self.attention = attention
        body = causal_lm.model
        cfg = causal_lm.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.embed_tokens, self.rotary_emb, self.norm = body.embed_tokens, body.rotary_emb, body.norm
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.head_dim = head_dim
        self.layers = nn.ModuleList(
            ScoringLayer(layer, index, self.heads, self.kv_heads, head_dim, attention)
            for index, layer in enumerate(body.layers)
        )
        head = causal_lm.get_output_embeddings().weight
        direction = (head[yes_token_id].double() - head[no_token_id].double()).float()
        # a parameter, not a buffer, so that the exporter keeps it as a named fp32 initializer
        self.direction = nn.Parameter(direction.detach().clone(), requires_grad=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        past_key_values: torch.Tensor,
        present_length: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length = input_ids.shape
        past = past_key_values.shape[3]
        hidden = self.embed_tokens(input_ids)
        if self.attention == "gqa":
            context = self._gqa_context(hidden, batch, length, past)
        else:
            context = self._ops_context(hidden, length, past)
        presents = []
        for layer in self.layers:
            hidden, present = layer(hidden, context, past_key_values, present_length)
            presents.append(present)
        hidden = self.norm(hidden)
        last = (attention_mask.sum(dim=-1) - 1).view(batch, 1, 1).expand(batch, 1, hidden.shape[-1])
        h_last = hidden.gather(1, last)[:, 0, :].float()
        # Mul + ReduceSum, not a MatMul: weight quantizers (MatMulNBits, NNCF) leave it in fp32
        return (h_last * self.direction).sum(dim=-1), torch.cat(presents)

    def _ops_context(self, hidden, length, past):
        """Rotary cos/sin of the new positions and the additive causal mask over [past ; new]."""
        positions = (torch.arange(length, device=hidden.device) + past).unsqueeze(0)
        cos, sin = self.rotary_emb(hidden, positions)  # [1, L, head_dim]
        # Causal mask of the new tokens, one block of rows per query head of a key/value group.
        steps = torch.arange(length, device=hidden.device)
        future = (steps[None, :] > steps[:, None]).repeat(self.heads // self.kv_heads, 1)
        additive = torch.zeros(future.shape, dtype=torch.float32).masked_fill(future, torch.finfo(torch.float32).min)
        # the shared past is visible to every new token: zeros in front of the causal part
        additive = torch.cat([additive.new_zeros(additive.shape[0], past), additive], dim=1)
        return cos, sin, additive

    def _gqa_context(self, hidden, batch, length, past):
        """GroupQueryAttention's inputs shared by every layer: the rotary tables of positions 0 … P + L − 1
        (half the head width: the op rotates the two halves as Qwen3 does) and the sequence lengths. Every row
        is given the full P + L: the padding is at the right, so a real token never sees it (causal)."""
        total = past + length
        positions = torch.arange(total, device=hidden.device).unsqueeze(0)
        cos, sin = self.rotary_emb(hidden, positions)  # [1, P + L, head_dim], each half repeated
        half = self.head_dim // 2
        lengths = torch.full((batch,), 1, dtype=torch.int32) * (total - 1)  # seqlens_k: total length − 1
        return cos[0, :, :half], sin[0, :, :half], lengths, torch.tensor(total, dtype=torch.int32)


class ScoringLayer(nn.Module):
    """One decoder layer of the scoring graph, with all that differs between layers inside it: its slice of the
    shared past and its part of `present`. So each layer traces to one named scope (/layers.N/), which the
    streamed export (qrr.export.streamed_export) repeats for any depth."""

    def __init__(self, layer: nn.Module, index: int, heads: int, kv_heads: int, head_dim: int,
                 attention: str = "ops") -> None:
        super().__init__()
        self.layer = layer
        self.index = index
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.attention = attention

    def forward(self, hidden, context, past_key_values, present_length):
        layer = self.layer
        residual = hidden
        x = layer.input_layernorm(hidden)
        if self.attention == "gqa":
            attn, new_kv = self._gqa(layer.self_attn, x, past_key_values[self.index], *context)
        else:
            attn, new_kv = self._attention(layer.self_attn, x, past_key_values[self.index], *context)
        present = new_kv[0, :, :, :present_length].unsqueeze(0)  # row 0, cut before joining the layers
        hidden = residual + attn
        residual = hidden
        hidden = residual + layer.mlp(layer.post_attention_layernorm(hidden))
        return hidden, present

    def _gqa(self, attn, x, past, cos_cache, sin_cache, lengths, total):
        """The same attention as _attention, as one GroupQueryAttention node (the rotary embedding inside)."""
        batch, length, _ = x.shape
        heads, kv_heads, hd = self.heads, self.kv_heads, self.head_dim
        # the per-head q/k norms stay outside: onnxruntime's CPU kernel does not take their weights
        q = attn.q_norm(attn.q_proj(x).view(batch, length, heads, hd)).view(batch, length, heads * hd)
        k = attn.k_norm(attn.k_proj(x).view(batch, length, kv_heads, hd)).view(batch, length, kv_heads * hd)
        v = attn.v_proj(x)
        past_k = past[0].unsqueeze(0).expand(batch, -1, -1, -1)  # [B, kv, P, hd]
        past_v = past[1].unsqueeze(0).expand(batch, -1, -1, -1)
        out, keys, values = GroupQueryAttention.apply(
            q, k, v, past_k, past_v, lengths, total, cos_cache, sin_cache, heads, kv_heads, hd, attn.scaling)
        past_length = past.shape[2]
        new_kv = torch.stack([keys[:, :, past_length:], values[:, :, past_length:]], dim=1)  # [B, 2, kv, L, hd]
        return attn.o_proj(out), new_kv

    def _attention(self, attn, x, past, cos, sin, additive):
        """Grouped-query attention of the new tokens over [shared past ; themselves]."""
        from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

        batch, length, _ = x.shape
        heads, kv_heads, hd = self.heads, self.kv_heads, self.head_dim
        group = heads // kv_heads
        q = attn.q_norm(attn.q_proj(x).view(batch, length, heads, hd)).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(x).view(batch, length, kv_heads, hd)).transpose(1, 2)
        v = attn.v_proj(x).view(batch, length, kv_heads, hd).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        # query head h uses key/value head h // group: stack each group's heads along the rows
        q = q.reshape(batch, kv_heads, group * length, hd)
        # keys and values of [shared past ; new tokens]: the past is copied once per row here, which is far less
        # than concatenating (or splitting) the attention scores, whose size is rows × new × (past + new)
        past_k = past[0].unsqueeze(0).expand(batch, -1, -1, -1)  # [B, kv, P, hd]
        past_v = past[1].unsqueeze(0).expand(batch, -1, -1, -1)
        keys, values = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        scores = (torch.matmul(q, keys.transpose(2, 3)) * attn.scaling).float() + additive
        weights = torch.softmax(scores, dim=-1).to(q.dtype)
        out = torch.matmul(weights, values)
        out = out.reshape(batch, heads, length, hd).transpose(1, 2).reshape(batch, length, heads * hd)
        return attn.o_proj(out), torch.stack([k, v], dim=1)  # [B, 2, kv, L, hd]


class GroupQueryAttention(torch.autograd.Function):
    """onnxruntime's com.microsoft GroupQueryAttention: traced as that one node, computed in PyTorch with the
    op's definition (rotary from the cos/sin tables at positions P …, causal attention over [past ; new],
    present = [past ; new] keys and values)."""

    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, lengths, total, cos_cache, sin_cache, heads, kv_heads, hd, scale):
        batch, length, _ = q.shape
        past = past_k.shape[2]

        def split(t, n):
            return t.view(batch, length, n, hd).transpose(1, 2)  # [B, n, L, hd]

        from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

        cos = torch.cat([cos_cache, cos_cache], dim=-1)[None, past:past + length]  # [1, L, hd], as rotary_emb gives
        sin = torch.cat([sin_cache, sin_cache], dim=-1)[None, past:past + length]
        qh, kh = apply_rotary_pos_emb(split(q, heads), split(k, kv_heads), cos, sin)
        vh = split(v, kv_heads)
        keys, values = torch.cat([past_k, kh], dim=2), torch.cat([past_v, vh], dim=2)
        group = heads // kv_heads
        scores = torch.matmul(qh, keys.repeat_interleave(group, dim=1).transpose(2, 3)).float() * scale
        future = torch.ones(length, past + length, dtype=torch.bool).triu(past + 1)
        weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1).to(q.dtype)
        out = torch.matmul(weights, values.repeat_interleave(group, dim=1))
        return out.transpose(1, 2).reshape(batch, length, heads * hd), keys, values

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, lengths, total, cos_cache, sin_cache, heads, kv_heads, hd, scale):
        from torch.onnx.symbolic_helper import _optional_input_placeholder_tensor as absent

        # query_seqlens (input 16): every row's L new tokens are valid, which lets a batch continue a past;
        # the inputs between (position ids, bias, sinks, cache scales, norm weights) are left out
        new = g.op("Cast", g.op("Gather", g.op("Shape", q), g.op("Constant", value_t=torch.tensor([1]))), to_i=6)
        query_lengths = g.op("Expand", new, g.op("Shape", lengths))
        out, keys, values = g.op(
            "com.microsoft::GroupQueryAttention", q, k, v, past_k, past_v, lengths, total, cos_cache, sin_cache,
            *(absent(g) for _ in range(7)), query_lengths,
            num_heads_i=heads, kv_num_heads_i=kv_heads, do_rotary_i=1, scale_f=scale, outputs=3)
        # the exporter cannot infer a contrib op's shapes: state them (batch and lengths stay symbolic)
        out.setType(past_k.type().with_sizes([None, None, heads * hd]))
        for t in (keys, values):
            t.setType(past_k.type().with_sizes([None, kv_heads, None, hd]))
        return out, keys, values


def trace(model, yes_id: int, no_id: int, path: Path, *, fp16: bool = False, attention: str = "ops") -> None:
    """Trace the scoring module of the transformers `model` to the ONNX file `path` (its weights beside it)."""
    module = ScoringModule(model, yes_id, no_id, attention).eval()
    if fp16:
        direction = module.direction.data
        module.half()
        module.direction.data = direction  # the head direction was taken in fp32 above and stays fp32
    dtype = torch.float16 if fp16 else torch.float32
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0]], dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.long)
    past = torch.zeros(len(module.layers), 2, module.kv_heads, 3, module.head_dim, dtype=dtype)
    keep = torch.tensor(2, dtype=torch.long)
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "past_key_values": {3: "past_sequence"},
        "score_logit": {0: "batch"},
        "present": {3: "present_sequence"},
    }
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter (dynamo=False) keeps batch and lengths dynamic through the mask arithmetic.
        torch.onnx.export(
            module,
            (ids, mask, past, keep),
            str(path),
            dynamo=False,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_axes=axes,
            opset_version=OPSET,
            custom_opsets={"com.microsoft": 1},
        )
