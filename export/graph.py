"""The scoring graph: the Qwen3 body plus a one-row head, P(yes) = sigmoid(h_last · (W[yes] − W[no])).

The vocabulary head is never computed: the logit difference of two rows of a linear layer is one dot product
with the difference of the rows. The direction and the final dot product stay in fp32.
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_NAMES = ["input_ids", "attention_mask", "position_ids"]
OUTPUT_NAMES = ["score_logit"]


class ScoringModule(nn.Module):
    """input_ids, attention_mask, position_ids [B, T] (right padded) → score logit [B] (fp32).

    The logit is read at each row's last real token, index ``sum(attention_mask) - 1``.
    """

    def __init__(self, causal_lm: nn.Module, yes_token_id: int, no_token_id: int) -> None:
        super().__init__()
        self.body = causal_lm.model
        head = causal_lm.get_output_embeddings().weight
        direction = (head[yes_token_id].double() - head[no_token_id].double()).float()
        # a parameter, not a buffer, so that the exporter keeps it as a named fp32 initializer
        self.direction = nn.Parameter(direction.detach().clone(), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        dtype = self.body.embed_tokens.weight.dtype
        steps = torch.arange(length, device=input_ids.device)
        allowed = (steps[None, :] <= steps[:, None])[None, None] & attention_mask.bool()[:, None, None, :]
        additive = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        hidden = self.body(
            input_ids=input_ids,
            attention_mask={"full_attention": additive},
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        last = (attention_mask.sum(dim=-1) - 1).view(batch, 1, 1).expand(batch, 1, hidden.shape[-1])
        h_last = hidden.gather(1, last)[:, 0, :].float()
        return h_last @ self.direction
