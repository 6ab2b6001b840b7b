"""GPTQ rounding (Frantar et al., arXiv 2210.17323) of the weights the quantized kernels store.

Round-to-nearest rounds every weight on its own. GPTQ rounds the input columns of a linear layer one after
another and spreads each column's rounding error over the columns not yet rounded, weighted by the inverse of
the calibration inputs' second moment H = Σ xᵀx, so that the layer's *output* on inputs like the calibration
ones moves as little as it can. Columns go in order of decreasing H diagonal ("activation order").

The grid is the kernel's own, fixed before rounding from the float weights (a Grid): the rowwise int8
kernel's (qrr.quant.onnx_quant.quantize_rowwise_int8: symmetric, one scale per output channel, max|w| / 127)
or MatMulNBits' asymmetric blocks (onnxruntime's quantizer: per block the range [min(0, min), max(0, max)]
and a rounded zero point). The weights that set a channel's or a block's range are left as they are and
out of the updates, and no other weight leaves that range, so the quantizer, which derives its scales from
the weights it is given, finds the same scales, stores exactly the values chosen here, and rounds the kept
weights to nearest as GPTQ assumed.

Rows of a layer are independent given H, so the projections that read one input (q/k/v; gate/up) are rounded
together. H is that of the rotated and smoothed layer's inputs (qrr.export.streamed_export.calibrate_layer),
what the kernel will actually be fed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .smooth import _site_modules

DAMP = 0.01  # added to H's diagonal, as a share of its mean: keeps the inverse well conditioned
BLOCK = 128  # columns rounded between two updates of the rest (the lazy batch update; the result is the same)
QMAX = 127


class CovarianceRecorder:
    """Forward hooks that sum xᵀx (float32) of the inputs of one decoder layer's linear layers, per shared
    input (qrr.quant.smooth's sites: q/k/v, o, gate/up, down). `mask` (set per batch) selects the real tokens."""

    def __init__(self, layer) -> None:
        self.mask: torch.Tensor | None = None
        self.sums: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.hooks = [reader.register_forward_hook(self._hook(site)) for site, (reader, _) in
                      _site_modules(layer).items()]

    def _hook(self, site: str):
        def fn(module, inputs, output):
            x = inputs[0]
            rows = (x[self.mask.bool()] if x.dim() == 3 and self.mask is not None else x.reshape(-1, x.shape[-1]))
            rows = rows.float()
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


@dataclass
class Grid:
    """The values a quantizer can store for a weight [out, in]: in each block of `block` inputs of a row,
    (q − zero) × scale for integer codes q in [low, high]; `keep` marks the weights that fix the quantizer's
    range (left as they are, so the quantizer, which derives its scales from the weights it is given, finds
    the same ones)."""

    scale: torch.Tensor  # [out, blocks]
    zero: torch.Tensor  # [out, blocks]
    low: torch.Tensor  # [out, blocks]
    high: torch.Tensor  # [out, blocks]
    block: int
    keep: torch.Tensor  # [out, in] bool
    codes: tuple[int, int]  # every code the format has (what the quantizer rounds the kept weights to)

    def round(self, w: torch.Tensor, column: int, keep: torch.Tensor) -> torch.Tensor:
        """Input column `column`'s values `w` at their nearest grid values; where `keep`, as the quantizer will
        round them (any code)."""
        b = column // self.block
        s, z = self.scale[:, b], self.zero[:, b]
        low = torch.where(keep, float(self.codes[0]), self.low[:, b])
        high = torch.where(keep, float(self.codes[1]), self.high[:, b])
        return (torch.minimum(torch.maximum(torch.round(w / s + z), low), high) - z) * s


def grid_scale(weight: torch.Tensor) -> torch.Tensor:
    """The rowwise kernel's scale of each output channel (row of a torch weight), as its quantizer computes it."""
    return (weight.float().abs().amax(1) / QMAX).clamp(min=1e-30)


def rowwise_grid(weight: torch.Tensor) -> Grid:
    """The rowwise int8 kernel's grid (qrr.quant.onnx_quant.quantize_rowwise_int8): symmetric, one scale per
    output channel; each channel's largest weight sets it."""
    out_f, in_f = weight.shape
    keep = torch.zeros(out_f, in_f, dtype=torch.bool)
    keep[torch.arange(out_f), weight.abs().argmax(1)] = True
    full = lambda v: torch.full((out_f, 1), float(v))  # noqa: E731
    return Grid(grid_scale(weight)[:, None], full(0), full(-QMAX), full(QMAX), in_f, keep, (-QMAX, QMAX))


def nbits_grid(weight: torch.Tensor, bits: int, block: int) -> Grid:
    """MatMulNBits' asymmetric grid as onnxruntime's quantizer builds it (qrr.quant.onnx_quant.quantize_nbits):
    per block, the range [min(0, min), max(0, max)] in 2^bits − 1 steps and a rounded zero point. A block's
    smallest and largest weights set it; codes that would leave that range are not used."""
    out_f, in_f = weight.shape
    if in_f % block:
        raise ValueError(f"gptq rounding needs the input width ({in_f}) to be a multiple of the block ({block})")
    w = weight.float().reshape(out_f, in_f // block, block)
    low, high = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)
    qmax = 2**bits - 1
    scale = ((high - low) / qmax).clamp(min=1e-30)  # float32, as the quantizer computes it
    zero = torch.clamp(torch.round(-low / scale), 0, qmax)
    keep = torch.zeros_like(w, dtype=torch.bool)
    rows, blocks = torch.meshgrid(torch.arange(out_f), torch.arange(in_f // block), indexing="ij")
    keep[rows, blocks, w.argmin(-1)] = True
    keep[rows, blocks, w.argmax(-1)] = True
    lowest = torch.clamp(torch.ceil(low / scale + zero - 1e-4), 0, qmax)
    highest = torch.clamp(torch.floor(high / scale + zero + 1e-4), 0, qmax)
    return Grid(scale, zero, lowest, highest, block, keep.reshape(out_f, in_f), (0, qmax))


@torch.no_grad()
def gptq_round(weight: torch.Tensor, H: torch.Tensor, grid: Grid | None = None, damp: float = DAMP,
               block: int = BLOCK) -> torch.Tensor:
    """`weight` [out, in] rounded by GPTQ onto `grid` (default: the rowwise int8 kernel's), given the input
    second moment H [in, in]. Returned in float32: grid values, and the kept weights as they were."""
    out_f, in_f = weight.shape
    if H.shape != (in_f, in_f):
        raise ValueError(f"H is {tuple(H.shape)} for a weight of {in_f} inputs")
    grid = grid or rowwise_grid(weight)
    W = weight.detach().float().clone()
    order = torch.argsort(torch.diagonal(H), descending=True, stable=True)
    W, keep = W[:, order], grid.keep[:, order]
    original = W.clone()
    U = _inverse_factor(H.float()[order][:, order], damp)
    Q = torch.empty_like(W)
    for start in range(0, in_f, block):
        end = min(start + block, in_f)
        Wb, Ub = W[:, start:end].clone(), U[start:end, start:end]
        err = torch.empty_like(Wb)
        for j in range(end - start):
            # kept weights take no updates: only their own turn reads them, so they are read as they were
            kept = keep[:, start + j]
            w = torch.where(kept, original[:, start + j], Wb[:, j])
            q = grid.round(w, int(order[start + j]), kept)
            Q[:, start + j] = q
            err[:, j] = (w - q) / Ub[j, j]
            Wb[:, j + 1:] -= err[:, j : j + 1] * Ub[j : j + 1, j + 1:]
        W[:, end:] -= err @ U[start:end, end:]
    Q = torch.where(keep, original, Q)
    return Q[:, torch.argsort(order)]


def _inverse_factor(H: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper Cholesky factor of (H + damping)⁻¹, one temporary at a time (a 9728-wide H is 378 MB).
    Inputs never seen in calibration (a zero diagonal) get a unit one: their weights are rounded plainly. Where
    the damped H is still not positive definite (a degenerate calibration), the damping grows tenfold."""
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    mean = torch.diagonal(H).mean()
    for attempt in range(4):
        damped = H + (damp * 10**attempt) * mean * torch.eye(H.shape[0])
        factor, info = torch.linalg.cholesky_ex(damped)
        del damped
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            del factor
            return torch.linalg.cholesky(inverse, upper=True)
    raise ValueError("the calibration inputs' second moment is not positive definite even with 10x damping")


@torch.no_grad()
def round_layer(layer, covariances: dict[str, torch.Tensor], nbits: tuple[int, int] | None = None,
                damp: float = DAMP, eight_bit: tuple[tuple[str, ...], int] = ((), 0)) -> None:
    """Replace every linear weight of the decoder `layer` by its GPTQ rounding, from its input's H: onto the
    rowwise int8 grid, or with `nbits` = (bits, block) onto MatMulNBits' asymmetric one, the projections of
    `eight_bit` = (names, block) onto its 8-bit grid in those blocks (GPTQ rounds each output row on its own,
    so rows of one input may take different grids).

    down_proj included: its input is the MLP's width (3072 on the 0.6B, 9728 on the 4B, 12288 on the 8B), so its
    H is the costliest part (K² per token, then a K³ factorization per layer), but rounding it to nearest instead
    made the 0.6B-shaped stand-in's mean |ΔP| worse than rounding everything to nearest (README, "Quantization").
    """
    names, wide_block = eight_bit
    wide = {id(module) for name, module in layer.named_modules() if name.rsplit(".", 1)[-1] in names}
    for site, (_, projections) in _site_modules(layer).items():
        groups: dict[tuple | None, list] = {}  # (bits, block) (None: rowwise) → the projections on that grid
        for p in projections:
            key = None if nbits is None else (8, wide_block) if id(p) in wide else nbits
            groups.setdefault(key, []).append(p)
        for key, members in groups.items():
            weights = [p.weight for p in members]
            weight = torch.cat(weights)
            grid = rowwise_grid(weight) if key is None else nbits_grid(weight, *key)
            rounded = gptq_round(weight, covariances[site], grid, damp)
            for p, w in zip(members, torch.split(rounded, [w.shape[0] for w in weights])):
                p.weight.copy_(w)


def description(nbits: tuple[int, int] | None = None, damp: float = DAMP,
                eight_bit: tuple[tuple[str, ...], int] = ((), 0)) -> dict:
    grid = ("int8 per output channel (the rowwise kernel's)" if nbits is None
            else f"{nbits[0]}-bit asymmetric blocks of {nbits[1]} (MatMulNBits)")
    if nbits is not None and eight_bit[0] and nbits[0] != 8:
        grid += f"; {', '.join(eight_bit[0])} 8-bit in blocks of {eight_bit[1]}"
    return {"method": "gptq", "grid": grid, "order": "activation", "damp": damp}
