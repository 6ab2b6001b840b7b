"""What an export can be asked for: formats, precisions, quantization presets and validation gates.

Plain constants and one frozen dataclass, no torch: the CLI builds its choices from here, so `qrr --help`
and `qrr rerank` stay as light as the runtime.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from qrr.runtime.errors import QrrError

FORMATS = ("onnx", "openvino")
PRECISIONS = ("fp32", "fp16", "int8", "int4")
ALIASES = {"none": "fp32"}  # the word older qrr versions used for full precision
OPENVINO_PRECISIONS = ("fp32", "int8", "int4")
METHODS = ("smoothquant", "awq", "rtn", "hqq")
SCALING_METHODS = ("smoothquant", "awq")  # fold activation-aware scales, from calibration pairs
BLOCK_SIZES = (16, 32, 64, 128, 256)
ACCURACY_LEVELS = (0, 4)  # onnxruntime MatMulNBits: 0 float activations, 4 int8 activations (VNNI)
KERNELS = ("rowwise", "matmulnbits")  # int8 per row × per column (integer GEMM), or MatMulNBits blocks
ATTENTIONS = ("gqa", "ops")  # the ONNX graph's attention: onnxruntime's GroupQueryAttention, or standard ops
SITES = ("attn", "mlp", "down", "vo")  # where activation-aware scales are folded (qrr.quant.smooth)
ROUNDINGS = ("nearest", "gptq")  # how weights meet the grid: each on its own, or GPTQ (qrr.quant.gptq)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EIGHT_BIT_PARTS = (*PROJECTIONS, "embedding")  # what an int4 export may keep at 8 bits (--eight-bit)


CALIBRATION_PAIRS = 64
# Largest allowed |ΔP(yes)| of any evaluation pair against the reference, per precision (README, "Validation").
DEFAULT_MAX_DROP = {"fp32": 1e-3, "fp16": 0.01, "int8": 0.03, "int4": 0.1}
# The reference's weights and compute: the recipe's fp32, or bf16 as the model card's checkpoints are published.
REFERENCE_DTYPES = ("float32", "bfloat16")


def check_names(parts: tuple[str, ...], allowed: tuple[str, ...], unknown_what: str) -> tuple[str, ...]:
    """`parts` when each is one of `allowed`; the first that is not gets one error, "unknown <unknown_what>"."""
    unknown = [p for p in parts if p not in allowed]
    if unknown:
        what = unknown_what.format(repr(unknown[0]))
        raise QrrError(f"unknown {what}; give a comma-separated list from {', '.join(allowed)}, or none")
    return parts


def check_eight_bit(parts: tuple[str, ...]) -> tuple[str, ...]:
    """What an int4 export keeps at 8 bits, each from EIGHT_BIT_PARTS (() for none); unknown names are refused."""
    return check_names(parts, EIGHT_BIT_PARTS, "part {} to keep at 8 bits")


def check_two_pass(parts: tuple[str, ...]) -> tuple[str, ...]:
    """The projections whose int8 activations take two passes (PROJECTIONS; () for none); unknown names are
    refused."""
    return check_names(parts, PROJECTIONS, "projection {} for two-pass activations")


def parse_parts(text: str) -> tuple[str, ...]:
    """A comma-separated list of names, each once, or "none" (an empty tuple)."""
    if text.strip().lower() == "none":
        return ()
    return tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip())) or (text,)


def parse_eight_bit(text: str) -> tuple[str, ...]:
    """`--eight-bit`'s value: comma-separated names from EIGHT_BIT_PARTS, or "none" (everything at 4 bits)."""
    return check_eight_bit(parse_parts(text))


def parse_two_pass(text: str) -> tuple[str, ...]:
    """`--two-pass`'s value: comma-separated names from PROJECTIONS, or "none" (one int8 pass everywhere)."""
    return check_two_pass(parse_parts(text))


def check_reference_dtype(dtype: object) -> str:
    if dtype not in REFERENCE_DTYPES:
        raise QrrError(f"unknown reference dtype {dtype!r}; choose float32 (the model card's recipe) or bfloat16 "
                       "(the dtype the checkpoints are published in)")
    return dtype


def check_max_pairs(max_pairs: object) -> None:
    if max_pairs is not None and (not isinstance(max_pairs, int) or isinstance(max_pairs, bool) or max_pairs < 1):
        raise QrrError(f"max_pairs must be a positive integer (the first pairs of the data to validate on), "
                       f"got {max_pairs!r}")


@dataclass(frozen=True)
class Preset:
    """How the linear layers and the embedding of one precision are quantized (README, "Quantization")."""

    bits: int
    block_size: int  # MatMulNBits weights per scale (the rowwise kernel has one scale per column)
    symmetric: bool
    accuracy_level: int  # MatMulNBits only
    embedding_bits: int
    method: str
    kernel: str = "matmulnbits"
    rotate: bool = False  # rotate the residual stream and the values first (qrr.quant.rotate)
    sites: tuple[str, ...] = SITES
    embedding_block: int | None = 32  # None: one scale per embedding row
    alpha: float | None = 0.5  # SmoothQuant's migration strength; None: searched per site (qrr.quant.smooth)
    rounding: str = "nearest"  # "gptq": error-compensating rounding onto the kernel's grid (qrr.quant.gptq)
    # projections whose weights take 8 bits, in blocks of `eight_bit_block`, in a 4-bit MatMulNBits preset
    eight_bit: tuple[str, ...] = ()
    eight_bit_block: int = 128
    # rowwise int8: projections whose activations take a second int8 pass over their rounding residual
    two_pass: tuple[str, ...] = ()

    def with_overrides(
        self,
        *,
        method: str | None = None,
        block_size: int | None = None,
        accuracy_level: int | None = None,
        kernel: str | None = None,
        rotate: bool | None = None,
        rounding: str | None = None,
        eight_bit: tuple[str, ...] | None = None,
        two_pass: tuple[str, ...] | None = None,
    ) -> Preset:
        """This preset with the user's overrides, each checked against its choices. GPTQ rounding follows the
        kernel and the method unless asked for: a MatMulNBits kernel or plain rounding (rtn, hqq) turns it off.
        `eight_bit` names what an int4 preset keeps at 8 bits (EIGHT_BIT_PARTS; () for none), `two_pass` the
        projections whose int8 activations (rowwise kernel) take two passes (PROJECTIONS; () for none)."""
        for name, value, choices in (("method", method, METHODS), ("block size", block_size, BLOCK_SIZES),
                                     ("accuracy level", accuracy_level, ACCURACY_LEVELS), ("kernel", kernel, KERNELS),
                                     ("rounding", rounding, ROUNDINGS)):
            if value is not None and value not in choices:
                raise QrrError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}")
        if rounding is None and self.gptq and (kernel not in (None, self.kernel) or method in ("rtn", "hqq")):
            rounding = "nearest"
        changes = {"method": method, "block_size": block_size, "accuracy_level": accuracy_level, "kernel": kernel,
                   "rotate": rotate, "rounding": rounding}
        if eight_bit is not None:
            if self.bits != 4:
                raise QrrError("--eight-bit mixes precisions in int4; int8 is 8-bit throughout")
            check_eight_bit(eight_bit)
            changes.update(eight_bit=tuple(p for p in eight_bit if p != "embedding"),
                           embedding_bits=8 if "embedding" in eight_bit else 4)
        if two_pass is not None:
            changes.update(two_pass=two_pass)  # its names are checked where every preset's are (__post_init__)
        if kernel not in (None, "rowwise") and two_pass is None:
            changes.update(two_pass=())  # two passes are the rowwise kernel's; MatMulNBits quantizes in blocks
        preset = dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
        if preset.kernel == "rowwise":
            if preset.bits != 8:
                raise QrrError("the rowwise kernel is 8-bit; int4 runs on matmulnbits")
            if block_size is not None or accuracy_level is not None:
                raise QrrError("block size and accuracy level are MatMulNBits settings; add --kernel matmulnbits")
            if preset.method == "hqq":
                raise QrrError("hqq is a 4-bit rounding; the rowwise kernel rounds to nearest")
        return preset

    def __post_init__(self) -> None:
        check_names(self.eight_bit, PROJECTIONS, "projection {} for 8-bit weights")
        if self.eight_bit_block not in BLOCK_SIZES:
            raise QrrError(f"unknown 8-bit block size {self.eight_bit_block}; choose one of "
                           f"{', '.join(map(str, BLOCK_SIZES))}")
        if self.eight_bit and (self.kernel != "matmulnbits" or self.bits != 4):
            raise QrrError("8-bit projections mix precisions in a 4-bit MatMulNBits preset; this one is "
                           f"{self.bits}-bit {self.kernel}")
        check_two_pass(self.two_pass)
        if self.two_pass and (self.kernel != "rowwise"):
            raise QrrError("two-pass activations are the rowwise int8 kernel's (MatMulNBits quantizes activations "
                           f"in blocks); this preset is {self.bits}-bit {self.kernel}: leave --two-pass out")
        if self.rounding not in ROUNDINGS:
            raise QrrError(f"unknown rounding {self.rounding!r}; choose one of {', '.join(ROUNDINGS)}")
        if self.gptq and self.kernel != "rowwise" and (self.symmetric or self.method == "hqq"):
            raise QrrError("gptq rounding is onto the rowwise kernel's grid or MatMulNBits' asymmetric blocks; "
                           "symmetric blocks and hqq take --rounding nearest")

    @property
    def grid(self) -> dict[str, Any]:
        """How the kernel rounds, for the scale searches that emulate it (qrr.quant.smooth.kernel_matmul)."""
        return {"kernel": self.kernel, "bits": self.bits, "block": self.block_size, "symmetric": self.symmetric,
                "accuracy_level": self.accuracy_level}

    @property
    def scaling(self) -> bool:
        """Whether the method folds activation-aware scales (and so reads calibration pairs)."""
        return self.method in SCALING_METHODS

    @property
    def gptq(self) -> bool:
        """Whether the weights are rounded by GPTQ (which reads calibration pairs too)."""
        return self.rounding == "gptq"

    @property
    def nbits(self) -> tuple[int, int] | None:
        """MatMulNBits' (bits, block), the grid GPTQ rounds onto; None for the rowwise kernel's."""
        return None if self.kernel == "rowwise" else (self.bits, self.block_size)

    @property
    def wide(self) -> tuple[tuple[str, ...], int]:
        """(the projections at 8 bits, their block size): what the quantizers and GPTQ take as `eight_bit`."""
        return self.eight_bit, self.eight_bit_block


# Chosen by measurement over the stand-in family (benchmarks/quant_sweep.py, README "Quantization").
PRESETS = {
    # rotation takes the outliers out of the inputs fed by the residual stream; scales cover the two outside it;
    # k_proj and v_proj read their activations in two int8 passes: their rounding noise, amplified by attention
    # (k through Qwen3's per-head k_norm), moved the scores most (README, "Quantization")
    "int8": Preset(bits=8, block_size=32, symmetric=True, accuracy_level=4, embedding_bits=8, method="smoothquant",
                   kernel="rowwise", rotate=True, sites=("down", "vo"), rounding="gptq", two_pass=("k_proj", "v_proj")),
    # 4-bit where the weights are (MLP, o_proj); q/k/v and the embedding at 8 bits, which moved the scores most
    # at 4 bits (k_proj feeds Qwen3's per-head k_norm, which rescales its error); their blocks of 128 keep the
    # 4B and 8B under 3 and 5.5 GB (README, "Quantization")
    "int4": Preset(bits=4, block_size=32, symmetric=False, accuracy_level=4, embedding_bits=8, method="awq",
                   rotate=True, sites=("down", "vo"), eight_bit=("q_proj", "k_proj", "v_proj"), eight_bit_block=128,
                   embedding_block=128),
}


def precision_of(quant: str) -> str:
    """The precision a `--quant` value names ('none' is 'fp32'); unknown values are refused."""
    precision = ALIASES.get(quant, quant)
    if precision not in PRECISIONS:
        raise QrrError(f"unknown quant {quant!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def preset_for(
    precision: str,
    *,
    method: str | None = None,
    block_size: int | None = None,
    accuracy_level: int | None = None,
    kernel: str | None = None,
    rotate: bool | None = None,
    rounding: str | None = None,
    calibration: object = None,
    eight_bit: tuple[str, ...] | None = None,
    two_pass: tuple[str, ...] | None = None,
) -> Preset | None:
    """The quantization preset of `precision` with overrides; None for fp32/fp16, which take none."""
    if precision not in PRESETS:
        given = (method, block_size, accuracy_level, kernel, rotate, rounding, calibration, eight_bit, two_pass)
        if any(value is not None for value in given):
            raise QrrError(f"method, block size, accuracy level, kernel, rotation, rounding, calibration, 8-bit "
                           f"parts and two-pass activations apply to int8 and int4, not {precision}")
        return None
    preset = PRESETS[precision].with_overrides(method=method, block_size=block_size, accuracy_level=accuracy_level,
                                               kernel=kernel, rotate=rotate, rounding=rounding, eight_bit=eight_bit,
                                               two_pass=two_pass)
    if calibration is not None and not (preset.scaling or preset.gptq):
        raise QrrError(f"calibration pairs feed awq, smoothquant and gptq rounding; method {preset.method} with "
                       f"{preset.rounding} rounding uses none")
    return preset
