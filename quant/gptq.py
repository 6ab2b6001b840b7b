"""GPTQ rounding (Frantar et al., arXiv 2210.17323) of the weights the rowwise int8 kernel stores.

Round-to-nearest rounds every weight on its own. GPTQ rounds the input columns of a linear layer one after
another and spreads each column's rounding error over the columns not yet rounded, weighted by the inverse of
the calibration inputs' second moment H = Σ xᵀx, so that the layer's *output* on inputs like the calibration
ones moves as little as it can. The grid is the rowwise kernel's own (qrr.quant.onnx_quant.quantize_rowwise_int8):
symmetric int8 with one scale per output channel, max|w| / 127, fixed before rounding from the float weights.
Each channel's largest weight lies on that grid already (it is ±127 × the scale) and is kept out of the
updates, so the quantizer, which derives the scale from the weights it is given, finds the same scale and
stores exactly the values chosen here. Columns go in order of decreasing H diagonal ("activation order").

Rows of a layer are independent given H, so the projections that read one input (q/k/v; gate/up) are rounded
together. The inputs are those of the rotated and smoothed layer (qrr.quant.rotate, qrr.quant.smooth), so
that H describes what the kernel will actually be fed.
"""

from __future__ import annotations

import torch

from .smooth import _site_modules

DAMP = 0.01  # added to H's diagonal, as a share of its mean: keeps the inverse well conditioned
BLOCK = 128  # columns rounded between two updates of the rest (the lazy batch update; the result is the same)
QMAX = 127


class CovarianceRecorder:
    """Forward hooks that sum xᵀx (float64) of the inputs of one decoder layer's linear layers, per shared input
    (qrr.quant.smooth's sites: q/k/v, o, gate/up, down). `mask` (set per batch) selects the real tokens."""

    def __init__(self, layer) -> None:
        self.mask: torch.Tensor | None = None
        self.sums: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.modules = _site_modules(layer)
        self.hooks = [reader.register_forward_hook(self._hook(site)) for site, (reader, _) in self.modules.items()]

    def _hook(self, site: str):
        def fn(module, inputs, output):
            x = inputs[0]
            rows = (x[self.mask.bool()] if x.dim() == 3 and self.mask is not None else x.reshape(-1, x.shape[-1]))
            rows = rows.double()
            xtx = rows.T @ rows
            self.sums[site] = xtx if site not in self.sums else self.sums[site] + xtx
            self.rows[site] = self.rows.get(site, 0) + rows.shape[0]

        return fn

    def close(self) -> dict[str, torch.Tensor]:
        """Remove the hooks; H of every site."""
        for h in self.hooks:
            h.remove()
        if not self.sums or min(self.rows.values()) == 0:
            raise ValueError("calibration produced no activations; give at least one non-empty pair")
        return self.sums


def grid_scale(weight: torch.Tensor) -> torch.Tensor:
    """The rowwise kernel's scale of each output channel (row of a torch weight), as its quantizer computes it."""
    return (weight.float().abs().amax(1) / QMAX).clamp(min=1e-30)


@torch.no_grad()
def gptq_round(weight: torch.Tensor, H: torch.Tensor, damp: float = DAMP, block: int = BLOCK) -> torch.Tensor:
    """`weight` [out, in] rounded by GPTQ onto the rowwise int8 grid, given the input second moment H [in, in];
    returned dequantized (float32), so every value is an integer multiple of its row's grid_scale."""
    out_f, in_f = weight.shape
    if H.shape != (in_f, in_f):
        raise ValueError(f"H is {tuple(H.shape)} for a weight of {in_f} inputs")
    W = weight.detach().float().clone()
    scale = grid_scale(W)[:, None]
    keep = torch.zeros_like(W, dtype=torch.bool)  # each row's largest weight: on the grid already, never moved
    keep[torch.arange(out_f), W.abs().argmax(1)] = True
    H = H.double().clone()
    dead = torch.diagonal(H) == 0  # inputs never seen in calibration: rounded plainly
    H[dead, dead] = 1.0
    order = torch.argsort(torch.diagonal(H), descending=True, stable=True)
    W, keep, H = W[:, order], keep[:, order], H[order][:, order]
    kept = W[keep]
    H += damp * torch.diagonal(H).mean() * torch.eye(in_f, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
    Q = torch.empty_like(W)
    for start in range(0, in_f, block):
        end = min(start + block, in_f)
        Wb, Ub = W[:, start:end].clone(), U[start:end, start:end]
        err = torch.empty_like(Wb)
        for j in range(end - start):
            w = Wb[:, j]
            q = torch.clamp(torch.round(w / scale[:, 0]), -QMAX, QMAX) * scale[:, 0]
            Q[:, start + j] = q
            err[:, j] = (w - q) / Ub[j, j]
            Wb[:, j + 1:] -= err[:, j : j + 1] * Ub[j : j + 1, j + 1:]
            Wb[:, j + 1:] = torch.where(keep[:, start + j + 1 : end], W[:, start + j + 1 : end], Wb[:, j + 1:])
        W[:, end:] -= err @ U[start:end, end:]
        W[keep] = kept
    return Q[:, torch.argsort(order)]


@torch.no_grad()
def round_layer(layer, covariances: dict[str, torch.Tensor], damp: float = DAMP) -> None:
    """Replace every linear weight of the decoder `layer` by its GPTQ rounding, from its input's H."""
    for site, (_, projections) in _site_modules(layer).items():
        weights = [p.weight for p in projections]
        rounded = gptq_round(torch.cat(weights), covariances[site], damp)
        for p, w in zip(projections, torch.split(rounded, [w.shape[0] for w in weights])):
            p.weight.copy_(w)


def description(damp: float = DAMP) -> dict:
    return {"method": "gptq", "grid": "int8 per output channel (the rowwise kernel's)", "order": "activation",
            "damp": damp}
