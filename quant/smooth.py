"""Activation-aware, function-preserving rescaling of a Qwen3 body before its weights are quantized.

A few hidden channels of real LLMs carry activations ~100× the rest, and the weights that read them are
small. Per-tensor or per-block activation quantization loses the small channels next to the big ones, and
round-to-nearest weight quantization rounds the small weights of the big channels away. Both are cured by
moving scale between an activation channel and the weights that read it, which the model allows exactly
where a linear layer's input comes from an element-wise scale it can absorb:

- q/k/v projections read RMSNorm(x) · g            → divide g, multiply their input columns
- gate/up projections read RMSNorm(x) · g           → likewise with post_attention_layernorm
- down projection reads act(gate) · up               → divide up's rows, multiply down's input columns
- o projection reads attention · V, linear in V      → divide v_proj's rows, multiply o_proj's input columns
  (with grouped-query attention one value channel feeds the o_proj column of every query head of its group,
  so the scale is one per value channel)

With X' = X / s and W' = W · s the product is unchanged. SmoothQuant picks s_j = max|X_j|^α / max|W_j|^(1-α)
(activations flat enough for int8 per block); AWQ picks s_j = mean|X_j|^α with α searched per site for the
smallest output error once the weights are quantized. Both need calibration activations, passed explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SITES = ("attn", "mlp", "down", "vo")


@dataclass
class SiteStats:
    """Per input channel |x| statistics of one site, and a sample of its input rows."""

    absmax: torch.Tensor
    absmean: torch.Tensor
    sample: torch.Tensor  # [rows, channels]


def _site_modules(layer):
    attn, mlp = layer.self_attn, layer.mlp
    return {
        "attn": (attn.q_proj, [attn.q_proj, attn.k_proj, attn.v_proj]),
        "mlp": (mlp.gate_proj, [mlp.gate_proj, mlp.up_proj]),
        "down": (mlp.down_proj, [mlp.down_proj]),
        "vo": (attn.o_proj, [attn.o_proj]),
    }


def _value_channel(layer) -> torch.Tensor:
    """For each o_proj input channel (query head h, d), the value channel (h // group, d) it reads."""
    attn = layer.self_attn
    head_dim = attn.head_dim
    group = attn.o_proj.in_features // attn.v_proj.out_features
    och = torch.arange(attn.o_proj.in_features)
    return (och // head_dim // group) * head_dim + och % head_dim


def _per_site(layer, site: str, per_input: torch.Tensor, reduce: str = "amax") -> torch.Tensor:
    """A per-input-channel statistic of the site as one value per scale: o_proj's grouped to value channels."""
    if site != "vo":
        return per_input
    index = _value_channel(layer)
    out = torch.zeros(layer.self_attn.v_proj.out_features, dtype=per_input.dtype)
    return out.scatter_reduce(0, index, per_input, reduce=reduce, include_self=False)


def _expand(layer, site: str, scale: torch.Tensor) -> torch.Tensor:
    """A site's scales as one per input channel of its readers."""
    return scale[_value_channel(layer)] if site == "vo" else scale


class LayerRecorder:
    """Forward hooks on one layer's site readers that accumulate the sites' input statistics.

    `mask` (set per batch) selects the real tokens of a [batch, length] input. The rows kept as a sample are
    drawn with a generator seeded by the layer's index and the site, so a layer's statistics do not depend on
    which export path runs it (qrr.export.streamed_export.calibrate_layer).
    """

    def __init__(self, layer, index: int, sample_rows: int = 512) -> None:
        self.layer, self.index, self.sample_rows = layer, index, sample_rows
        self.mask: torch.Tensor | None = None
        self.acc = {s: {"max": None, "sum": None, "n": 0, "rows": []} for s in SITES}
        self.gens = {s: torch.Generator().manual_seed(1009 * index + k) for k, s in enumerate(SITES)}
        self.hooks = [reader.register_forward_hook(self._hook(site)) for site, (reader, _) in
                      _site_modules(layer).items()]

    def _hook(self, site: str):
        def fn(module, inputs, output):
            x = inputs[0]
            rows = x[self.mask.bool()] if x.dim() == 3 else x
            a = self.acc[site]
            ab = rows.abs().float()
            a["max"] = ab.amax(0) if a["max"] is None else torch.maximum(a["max"], ab.amax(0))
            a["sum"] = ab.sum(0) if a["sum"] is None else a["sum"] + ab.sum(0)
            a["n"] += rows.shape[0]
            pick = torch.randperm(rows.shape[0], generator=self.gens[site])[: self.sample_rows // 4]
            a["rows"].append(rows[pick].float())

        return fn

    def close(self) -> dict[str, SiteStats]:
        """Remove the hooks; the statistics of every site."""
        for h in self.hooks:
            h.remove()
        out = {}
        for site, a in self.acc.items():
            if a["n"] == 0:
                raise ValueError("calibration produced no activations; give at least one non-empty pair")
            rows = torch.cat(a["rows"])
            pick = torch.randperm(rows.shape[0], generator=self.gens[site])[: self.sample_rows]
            out[site] = SiteStats(a["max"], a["sum"] / a["n"], rows[pick])
        return out


@torch.no_grad()
def fold(layer, site: str, scale: torch.Tensor) -> torch.Tensor:
    """Divide the site's activations by `scale` per channel and multiply the reading weights' columns by it;
    returns the scale per input channel of the readers."""
    scale = scale.to(torch.float32)
    mlp = layer.mlp
    if site == "attn":
        layer.input_layernorm.weight.div_(scale)
    elif site == "mlp":
        layer.post_attention_layernorm.weight.div_(scale)
    elif site == "down":
        mlp.up_proj.weight.div_(scale[:, None])
    elif site == "vo":
        layer.self_attn.v_proj.weight.div_(scale[:, None])
    else:
        raise ValueError(f"unknown site {site!r}")
    wide = _expand(layer, site, scale)
    for proj in _site_modules(layer)[site][1]:
        proj.weight.mul_(wide[None, :])
    return wide


def fake_quant(weight: torch.Tensor, bits: int, block: int, symmetric: bool) -> torch.Tensor:
    """Round-to-nearest blockwise quantization along the input dimension, as MatMulNBits stores it."""
    out_f, in_f = weight.shape
    pad = (-in_f) % block
    w = torch.nn.functional.pad(weight, (0, pad)).reshape(out_f, -1, block)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (w.abs().amax(-1, keepdim=True) / qmax).clamp(min=1e-12)
        q = (w / scale).round().clamp(-qmax - 1, qmax) * scale
    else:
        qmax = 2**bits - 1
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = ((hi - lo) / qmax).clamp(min=1e-12)
        zero = (-lo / scale).round()
        q = ((w / scale).round() + zero).clamp(0, qmax)
        q = (q - zero) * scale
    return q.reshape(out_f, -1)[:, :in_f]


def kernel_matmul(x: torch.Tensor, weight: torch.Tensor, *, kernel: str, bits: int, block: int,
                  symmetric: bool, accuracy_level: int) -> torch.Tensor:
    """x @ weight.T with the rounding of the kernel that will run it: rowwise, x int8 per row and the weights
    int8 per output channel (symmetric, / 127: fake_quant with one block per row); matmulnbits, the weights in
    blocks and, at accuracy_level 4, x int8 per block of the same size."""
    if kernel == "rowwise":
        return fake_quant(x, 8, x.shape[1], True) @ fake_quant(weight, 8, weight.shape[1], True).T
    xq = fake_quant(x, 8, block, True) if accuracy_level == 4 else x
    return xq @ fake_quant(weight, bits, block, symmetric).T


ALPHAS = tuple(k / 10 for k in range(11))  # the grid of the searched migration strength


def smoothquant_info(alpha: float | None, chosen: list[float], sites: tuple[str, ...]) -> dict:
    info = {"method": "smoothquant", "alpha": "searched per site" if alpha is None else alpha, "sites": list(sites)}
    if alpha is None and chosen:
        info.update(alpha_mean=sum(chosen) / len(chosen), alpha_min=min(chosen), alpha_max=max(chosen))
    return info


@torch.no_grad()
def smoothquant_layer(layer, stats: dict[str, SiteStats], alpha: float | None = 0.5, sites: tuple[str, ...] = SITES,
                      *, kernel: str = "rowwise", bits: int = 8, block: int = 32, symmetric: bool = True,
                      accuracy_level: int = 4, applied: dict[str, torch.Tensor] | None = None) -> list[float]:
    """SmoothQuant scales s = max|x|^α / max|w|^(1-α) folded into one layer; the α used at each site.

    With alpha None, α is searched per site over ALPHAS: the one whose output on the site's calibration rows is
    closest to the unquantized output once both the activations and the weights are rounded as `kernel` rounds
    them (kernel_matmul). A fixed α suits one outlier strength; the search lets a 300x channel move more of its
    range into the weights than a 10x one, at each site of each layer. `applied` receives each site's scale per
    input channel (fold)."""
    chosen = []
    for site in sites:
        readers = _site_modules(layer)[site][1]
        wmax = _per_site(layer, site, torch.stack([p.weight.abs().amax(0) for p in readers]).amax(0)).clamp(min=1e-8)
        xmax = _per_site(layer, site, stats[site].absmax).clamp(min=1e-8)

        def scale(a: float) -> torch.Tensor:
            return (xmax**a / wmax ** (1 - a)).clamp(min=1e-4)

        if alpha is not None:
            best = alpha
        else:
            x = stats[site].sample.float()
            weights = [p.weight.float() for p in readers]
            reference = [x @ w.T for w in weights]
            errors = []
            for a in ALPHAS:
                wide = _expand(layer, site, scale(a))
                err = sum((kernel_matmul(x / wide, w * wide[None, :], kernel=kernel, bits=bits, block=block,
                                         symmetric=symmetric, accuracy_level=accuracy_level) - ref).pow(2).mean().item()
                          for w, ref in zip(weights, reference))
                errors.append((err, a))
            best = min(errors)[1]  # ties: the smaller α
        wide = fold(layer, site, scale(best))
        if applied is not None:
            applied[site] = wide
        chosen.append(best)
    return chosen


def awq_info(alphas: list[float], bits: int, block: int, sites: tuple[str, ...]) -> dict:
    return {"method": "awq", "bits": bits, "block_size": block, "alpha_mean": sum(alphas) / len(alphas),
            "sites": list(sites)}


@torch.no_grad()
def awq_layer(layer, stats: dict[str, SiteStats], *, bits: int = 4, block: int = 32, symmetric: bool = False,
              grid: int = 11, sites: tuple[str, ...] = SITES, applied: dict[str, torch.Tensor] | None = None
              ) -> list[float]:
    """AWQ scales folded into one layer; the α chosen at each site (`applied`: as smoothquant_layer)."""
    chosen = []
    for site in sites:
        st = stats[site]
        readers = _site_modules(layer)[site][1]
        x = st.sample
        reference = [x @ p.weight.T.float() for p in readers]
        mean = _per_site(layer, site, st.absmean, reduce="mean").clamp(min=1e-8)
        best = (float("inf"), 0.0, None)
        for k in range(grid):
            alpha = k / (grid - 1)
            s = mean**alpha
            s = s / (s.max() * s.min()).sqrt()  # centre the scales around 1
            wide = _expand(layer, site, s)
            err = 0.0
            for p, ref in zip(readers, reference):
                wq = fake_quant(p.weight.float() * wide[None, :], bits, block, symmetric)
                err += ((x / wide) @ wq.T - ref).pow(2).mean().item()
            if err < best[0]:
                best = (err, alpha, s)
        wide = fold(layer, site, best[2])
        if applied is not None:
            applied[site] = wide
        chosen.append(best[1])
    return chosen
