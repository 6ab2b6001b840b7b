"""Property-based tests (hypothesis) of the prompt tokenizer and the planners.

Budgets come from the hypothesis profile loaded in conftest.py: 50 examples per test in CI, QRR_FUZZ=long
for thousands. Properties: no exception but QrrError; a pair's ids are the exact tokenization of its prompt;
the planners cover every pair exactly once, within their budgets, and every row the model runs sees exactly
its own sequence's tokens.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import QWEN3_TOKENIZER

pytest.importorskip("hypothesis")
from hypothesis import assume, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from qrr.runtime import QrrError, Reranker  # noqa: E402
from qrr.runtime.planner import plan_batches, plan_prefixes  # noqa: E402
from qrr.runtime.prompt import MIN_DOCUMENT_TOKENS, PromptTokenizer  # noqa: E402

TEMPLATE_LIKE = ["<Document>:", "<Query>:", "<Instruct>:", "<|im_end|>", "<|im_start|>", "<think>", "</think>",
                 "{document}", "{query}", "\n", "\n\n", " ", "\r\n", "\u0301", "é", "北京", "🇫🇷", "\x00", "\ufeff"]
# arbitrary unicode (no surrogates), with the template's own markers mixed in
text = st.lists(st.one_of(st.text(max_size=40), st.sampled_from(TEMPLATE_LIKE)), max_size=8).map("".join)
surrogate = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
hostile = st.one_of(text, st.tuples(text, surrogate, text).map("".join))
long_text = st.builds(lambda word, n: word * n, st.sampled_from(["Beijing ", "x", "北", " ", "<|im_end|>"]),
                      st.integers(100, 3000))


def tokenizer_files(fp32_artifact: Path) -> list[Path]:
    files = [fp32_artifact / "tokenizer.json"]
    if QWEN3_TOKENIZER:
        files.append(Path(QWEN3_TOKENIZER) / "tokenizer.json")
    return files


@pytest.fixture(scope="module")
def tokenizers(fp32_artifact):
    """The tiny stand-in's tokenizer and, when QRR_QWEN3_TOKENIZER is set, the real Qwen3 one; each at a
    window that truncates (160) and one that never does here."""
    return [PromptTokenizer(f, max_length=n) for f in tokenizer_files(fp32_artifact) for n in (160, 1 << 20)]


@pytest.fixture(scope="module")
def rr(fp32_artifact):
    return Reranker(fp32_artifact, max_length=160)


@given(query=st.one_of(text, long_text), docs=st.lists(st.one_of(text, long_text), max_size=6),
       instruction=st.one_of(st.none(), text))
def test_ids_are_the_exact_tokenization_of_the_prompt(tokenizers, query, docs, instruction):
    """Reference: the whole prompt string (prefix + pair text + suffix) through the same tokenizers.Tokenizer;
    truncation keeps a prefix of the pair's ids; the report counts the document's tokens in those ids."""
    pairs = [(query, d) for d in docs]
    for tok in tokenizers:
        ids, report = tok.encode_report(pairs, instruction)
        assert ids == tok.encode(pairs, instruction)
        p, s = len(tok.prefix_ids), len(tok.suffix_ids)
        for (q, d), seq, t in zip(pairs, ids, report):
            prompt = tok._tok.decode(tok.prefix_ids, skip_special_tokens=False)  # the prefix, as text
            whole = tok._tok.encode(prompt + tok.pair_text(q, d, instruction) + tok._tok.decode(
                tok.suffix_ids, skip_special_tokens=False), add_special_tokens=False).ids
            pair = whole[p : len(whole) - s]
            assert whole[:p] == tok.prefix_ids and whole[len(whole) - s :] == tok.suffix_ids
            assert seq == tok.prefix_ids + pair[: tok.pair_budget] + tok.suffix_ids
            assert 0 <= t.kept <= t.total and (t.total == 0) == (d == "")
            assert t.truncated == (len(pair) > tok.pair_budget and t.kept < t.total)
            assert t.starved == (t.truncated and t.kept < MIN_DOCUMENT_TOKENS)


@given(query=hostile, docs=st.lists(hostile, max_size=5), instruction=st.one_of(st.none(), hostile))
def test_only_qrr_errors(rr, query, docs, instruction):
    """Any text, lone surrogates included: a report or an InputError naming the field, nothing else."""
    try:
        report = rr.truncation(query, docs, instruction=instruction)
    except QrrError as exc:
        assert "lone surrogate" in str(exc)
        assert any(not t.isascii() and any(0xD800 <= ord(c) <= 0xDFFF for c in t) for t in [query, instruction or "", *docs])
    else:
        assert len(report) == len(docs)


@st.composite
def prompts(draw):
    """Token sequences shaped like prompts: a root every one shares (the system prefix), a part its group
    shares (the query), then its own tail (the document); the group is its key."""
    token = st.integers(0, 50)
    root = draw(st.lists(token, max_size=12))
    heads = draw(st.lists(st.lists(token, max_size=12), min_size=1, max_size=4))
    rows = draw(st.lists(st.tuples(st.integers(0, len(heads) - 1), st.lists(token, max_size=40)), min_size=1,
                         max_size=24))
    seqs = [root + heads[g] + tail for g, tail in rows]
    assume(all(seqs))
    return seqs, [g for g, _ in rows]


@given(prompt=prompts(), keyed=st.booleans())
def test_prefix_plan_covers_every_sequence_once(prompt, keyed):
    seqs, keys = prompt
    group_keys = keys if keyed else None
    root, plan = plan_prefixes(seqs, group_keys)
    members = [i for _, group in plan for i in group]
    assert sorted(members) == list(range(len(seqs)))
    for shared, group in plan:
        assert root <= shared
        assert all(seqs[i][:shared] == seqs[group[0]][:shared] and len(seqs[i]) > shared for i in group)
        if group_keys is not None and shared > root:
            assert len({group_keys[i] for i in group}) == 1
    assert all(s[:root] == seqs[0][:root] for s in seqs)


@given(lengths=st.lists(st.integers(1, 3000), max_size=80), budget=st.integers(1, 4096), max_batch=st.integers(1, 64),
       past=st.integers(0, 2000), cells=st.integers(1, 1 << 22))
def test_batch_plan_covers_every_row_once_within_budget(lengths, budget, max_batch, past, cells):
    batches = plan_batches(lengths, budget, max_batch, past=past, max_cells=cells)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = max(lengths[i] for i in b)
        assert len(b) == 1 or (len(b) * width <= budget and len(b) * width * (past + width) <= cells
                               and len(b) <= max_batch)


def fingerprint(tokens) -> float:
    """A float32-exact hash of a token sequence: what the echo session answers for the tokens a row saw."""
    return float(zlib.crc32(np.asarray(tokens, dtype=np.int64).tobytes()) % (1 << 24))


class EchoSession:
    """Stands in for the model: its keys and values are the token ids themselves, so the past carries the
    tokens it was built from, and each row's logit is the fingerprint of every token it attends to."""

    def __init__(self, past_shape) -> None:
        self.layers, self.heads, self.dim = past_shape[0], past_shape[2], past_shape[4]

    def run(self, feeds):
        ids, mask, past, keep = (feeds[k] for k in ("input_ids", "attention_mask", "past_key_values", "present_length"))
        seen = past[0, 0, 0, :, 0].astype(np.int64).tolist()
        logits = [fingerprint(seen + ids[r, : int(mask[r].sum())].tolist()) for r in range(ids.shape[0])]
        present = np.broadcast_to(ids[0, : int(keep)].astype(np.float32)[None, None, None, :, None],
                                  (self.layers, 2, self.heads, int(keep), self.dim))
        return np.array(logits, dtype=np.float32), np.ascontiguousarray(present)


@given(prompt=prompts(), keyed=st.booleans(), chunk=st.integers(2, 64), budget=st.integers(1, 512),
       reuse=st.booleans())
def test_every_row_sees_exactly_its_own_tokens(rr, prompt, keyed, chunk, budget, reuse):
    """Prefix reuse, chunking of long rows and batching, end to end through score_ids: each sequence's logit
    is computed from exactly its own tokens, in order, whatever else shares the call."""
    seqs, keys = prompt
    session, saved = rr.session, (rr.chunk_tokens, rr.batch_tokens, rr.prefix_reuse)
    try:
        rr.session = EchoSession(rr._past_shape)
        rr.chunk_tokens, rr.batch_tokens, rr.prefix_reuse = chunk, budget, reuse
        logits = rr.score_ids(seqs, keys if keyed else None, raw=True)
    finally:
        rr.session = session
        rr.chunk_tokens, rr.batch_tokens, rr.prefix_reuse = saved
    assert logits.tolist() == [fingerprint(s) for s in seqs]
