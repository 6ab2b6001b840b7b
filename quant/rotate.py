"""Rotation of a Qwen3 body before quantization (QuaRot, arXiv 2404.00456; SpinQuant, 2405.16406).

The residual stream is multiplied by an orthogonal matrix Q, folded into every weight that writes to it or
reads from it, so the model computes the same function while no residual channel stays an outlier:

- each RMSNorm gain is first folded into the linear layers after it (q/k/v, gate/up; the final norm's into
  the head), so the norms become plain x / rms(x), which commutes with Q (‖xQ‖ = ‖x‖)
- the embedding rows and the head rows become E Q and (W · g) Q; q/k/v/gate/up read x Q: W ← W Q
- o_proj and down_proj write to the stream: W ← Qᵀ W
- optionally (`values`), the values get a Hadamard matrix H of the head size, per head (v_proj rows ← Hᵀ W
  per head, o_proj columns ← W H per head): attention is linear in V, so this too is exact. It spreads a
  value-channel outlier over its whole head, which then dominates the per-row scale of the o_proj input;
  on the stand-in family a scale per value channel (qrr.quant.smooth, site "vo") did better, so the
  presets leave it off (README, "Quantization").

Q is a randomized Hadamard matrix (±1 signs, then Walsh–Hadamard) where the size is a power of two, else a
random orthogonal matrix; both are seeded, so an export is reproducible. The down_proj input (the MLP's
intermediate channels) and the o_proj input are outside the stream: qrr.quant.smooth covers them with
scales folded into up_proj and v_proj.
"""

from __future__ import annotations

import torch


def hadamard(n: int, seed: int) -> torch.Tensor:
    """An n×n orthogonal matrix in float64: randomized Walsh–Hadamard for powers of two, else random QR."""
    gen = torch.Generator().manual_seed(seed)
    if n & (n - 1) == 0:
        h = torch.ones(1, 1, dtype=torch.float64)
        while h.shape[0] < n:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        signs = torch.randint(0, 2, (n,), generator=gen).double() * 2 - 1
        return signs[:, None] * h / n**0.5
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def _set(linear: torch.nn.Linear, weight: torch.Tensor) -> None:
    linear.weight.data = weight.to(linear.weight.dtype).contiguous()


@torch.no_grad()
def rotate(model, seed: int = 0, values: bool = False) -> dict:
    """Rotate the residual stream (and with `values`, the values) of the transformers Qwen3 `model` in place;
    the function stays the same.

    The head is untied from the embedding (their rotated forms differ once the final norm's gain is folded).
    Returns what was done, for the manifest.
    """
    cfg = model.config
    body = model.model
    q, h = matrices(cfg, seed)
    body.embed_tokens.weight = torch.nn.Parameter(rotate_rows(body.embed_tokens.weight, q), requires_grad=False)
    model.lm_head.weight = torch.nn.Parameter(rotate_rows(model.lm_head.weight, q, body.norm.weight),
                                              requires_grad=False)
    cfg.tie_word_embeddings = False
    body.norm.weight.fill_(1.0)
    for layer in body.layers:
        rotate_layer(layer, q, h if values else None)
    return description(cfg, seed, values)


def matrices(cfg, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual rotation Q (hidden × hidden) and the per-head value rotation H (head_dim × head_dim)."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return hadamard(cfg.hidden_size, seed), hadamard(head_dim, seed + 1)


def rotate_rows(table: torch.Tensor, q: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of the embedding or the head, (W · g) Q in float64, back in float32 (g: the final norm's gain)."""
    w = table.double()
    if gain is not None:
        w = w * gain.double()[None, :]
    return (w @ q).float()


@torch.no_grad()
def rotate_layer(layer, q: torch.Tensor, h: torch.Tensor | None = None) -> None:
    """Fold the norm gains and Q into one decoder layer; with `h`, the per-head value rotation too."""
    attn, mlp = layer.self_attn, layer.mlp
    hidden = q.shape[0]
    for norm, readers in ((layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj)),
                          (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj))):
        gain = norm.weight.double()
        for linear in readers:
            _set(linear, (linear.weight.double() * gain[None, :]) @ q)
        norm.weight.fill_(1.0)
    for linear in (attn.o_proj, mlp.down_proj):
        _set(linear, q.T @ linear.weight.double())
    if h is None:
        return
    head_dim = h.shape[0]
    v = attn.v_proj.weight.double().reshape(-1, head_dim, hidden)  # [kv heads, head_dim, hidden]
    _set(attn.v_proj, torch.einsum("dk,gdi->gki", h, v).reshape(-1, hidden))  # Hᵀ W per head
    o = attn.o_proj.weight.double().reshape(hidden, -1, head_dim)  # [hidden, heads, head_dim]
    _set(attn.o_proj, torch.einsum("ohd,dk->ohk", o, h).reshape(hidden, -1))  # W H per head


def description(cfg, seed: int, values: bool) -> dict:
    hidden = cfg.hidden_size
    head_dim = getattr(cfg, "head_dim", None) or hidden // cfg.num_attention_heads
    kind = "randomized Hadamard" if hidden & (hidden - 1) == 0 else "random orthogonal"
    return {"method": "rotation", "residual": f"{kind} {hidden}",
            "values": f"randomized Hadamard {head_dim} per head" if values else None, "seed": seed}
