"""Which tokens run together: sequences grouped by shared token prefix, then batched by length and budget."""

from __future__ import annotations

from collections.abc import Sequence

# Padded tokens per batch. On a CPU a few hundred rows already keep the GEMMs efficient; larger batches only
# cost memory, and are no faster. A GPU wants them large: workload A (32 documents × ~215 tokens, 0.6B fp16,
# H100) ran 85 pairs/s in 17 runs at 512 and 341 pairs/s in 2 runs at 16384 (benchmarks/gpu_profile.py).
DEFAULT_BATCH_TOKENS = 512
# ... for a model 1024 wide (the 0.6B); wider ones take proportionally fewer tokens, so that a batch's activations
# stay the same size: the 4B int4 (2560 wide) peaked at 3575 against 3674 MiB with 256 tokens against 512, at the
# same speed (workload A, 6 pairs), against a 2832 MiB artifact
REFERENCE_WIDTH = 1024
MIN_BATCH_TOKENS = 128
GPU_BATCH_TOKENS = 16384
MAX_BATCH = 64
# Attention scores per batch, rows × new tokens × (past + new tokens), times the heads and 4 bytes: the one
# activation that grows quadratically in length. 4M cells are 256 MiB of fp32 scores with 16 heads.
MAX_ATTENTION_CELLS = 4 * 2**20
# A long row runs alone, in chunks of this many tokens, each against the keys and values of the chunks
# before it: memory grows linearly in length and the scores are those of the whole row. Rows up to about
# twice this run whole (Reranker._chunked).
CHUNK_TOKENS = 1024


def default_batch_tokens(device_kind: str, hidden_size: int | None = None) -> int:
    """The batch size in padded tokens for a device kind ('cpu', 'cuda', 'dml', OpenVINO's 'gpu' …) and, on a
    CPU, the model's width: 512 up to 1024 wide, proportionally fewer above (the 4B 204, the 8B 128)."""
    kind = device_kind.lower().split(".")[0].split(":")[0]
    if kind in ("cuda", "dml", "gpu"):
        return GPU_BATCH_TOKENS
    if isinstance(hidden_size, int) and hidden_size > REFERENCE_WIDTH:
        return max(MIN_BATCH_TOKENS, DEFAULT_BATCH_TOKENS * REFERENCE_WIDTH // hidden_size)
    return DEFAULT_BATCH_TOKENS


def plan_batches(
    lengths: Sequence[int],
    batch_tokens: int,
    max_batch: int = MAX_BATCH,
    *,
    past: int = 0,
    max_cells: int = MAX_ATTENTION_CELLS,
) -> list[list[int]]:
    """Group indices by length so that each batch stays under `batch_tokens` padded tokens and
    `max_cells` attention scores (rows × width × (past + width)).

    Sorting by length means a batch pads only to its own longest member; a single sequence over a budget
    still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # lengths ascend, so the padded width of the batch is the new member's length
        rows, width = len(current) + 1, lengths[i]
        if current and (rows * width > batch_tokens or rows * width * (past + width) > max_cells or rows > max_batch):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan_prefixes(
    sequences: Sequence[Sequence[int]], group_keys: Sequence[object] | None = None
) -> tuple[int, list[tuple[int, list[int]]]]:
    """(root, [(shared prefix length, member indices)]): `root` tokens are common to every sequence, and
    each group's members also share their first `shared` (≥ root) tokens. `group_keys` gives one key per
    sequence (e.g. its query); sequences with equal keys form a group.

    Every prefix is a common prefix of its members' exact token ids and leaves each member at least one
    token of its own (the score is read at the last token). Groups of one share only the root; they are
    gathered into one group so that they batch together. A single sequence shares nothing: it runs whole.
    """

    def shared(members: list[int]) -> int:
        first = sequences[members[0]]
        length = min(len(sequences[i]) for i in members) - 1
        for i in members[1:]:
            length = min(length, common_prefix(first, sequences[i]))
        return max(length, 0)

    everyone = list(range(len(sequences)))
    if not everyone:
        return 0, []
    # a prefix pays only when two or more sequences share it: alone, its run is one more pass over the weights
    root = shared(everyone) if len(everyone) > 1 else 0
    keyed: dict[object, list[int]] = {}
    for i in everyone:
        keyed.setdefault(None if group_keys is None else group_keys[i], []).append(i)
    plan: list[tuple[int, list[int]]] = []
    rest: list[int] = []
    for members in keyed.values():
        length = shared(members) if len(members) > 1 else root
        if length > root:
            plan.append((length, members))
        else:
            rest.extend(members)
    if rest:
        plan.append((root, sorted(rest)))
    return root, plan
