"""Prefix reuse and chunking are exact: the same token ids, the same scores as scoring every pair whole."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DOCS, QUERY

from qrr.runtime import Reranker
from qrr.runtime.planner import common_prefix, plan_batches, plan_prefixes

EXACT = 2e-6  # fp32 summation order differs between a shared past and a whole row; nothing else does

PAIRS = [
    (QUERY, DOCS[0]),
    ("who wrote Faust?", "Goethe wrote Faust."),
    (QUERY, DOCS[1]),
    ("who wrote Faust?", DOCS[6]),
    ("what is the capital of France?", DOCS[4]),  # shares "what is the capital of" with QUERY
    (QUERY, DOCS[3]),
    ("x", ""),
    (QUERY, DOCS[2]),
]


@pytest.fixture(scope="module")
def whole(fp32_artifact):
    return Reranker(fp32_artifact, prefix_reuse=False)


@pytest.fixture(scope="module")
def reuse(fp32_artifact):
    return Reranker(fp32_artifact)


def test_plan_splits_at_the_exact_token_prefix(reuse):
    ids = reuse.tokenizer.encode(PAIRS)
    root, plan = plan_prefixes(ids, group_keys=[q for q, _ in PAIRS])
    assert sorted(i for _, members in plan for i in members) == list(range(len(PAIRS)))
    # the root is what every pair shares: the system prompt and the instruction, up to "<Query>:"
    assert len(reuse.tokenizer.prefix_ids) < root == common_prefix(ids[0], ids[6])
    for shared, members in plan:
        assert shared >= root
        for i in members:
            assert ids[i][:shared] == ids[members[0]][:shared]  # a common prefix of the exact ids
            assert len(ids[i]) > shared  # every member keeps its last token
        if len(members) > 1 and shared > root:
            # a query's group shares everything up to its documents (their first tokens may differ)
            query = PAIRS[members[0]][0]
            assert all(PAIRS[i][0] == query for i in members)
            head = reuse.tokenizer.encode([(query, "")], truncate=False)[0]  # the prompt with an empty document
            assert shared >= common_prefix(head, ids[members[0]]) - 1
    groups = {tuple(sorted(members)) for _, members in plan}
    assert (0, 2, 5, 7) in groups and (1, 3) in groups


def test_plan_without_groups_shares_the_common_prefix_only():
    seqs = [[1, 2, 3, 4, 5], [1, 2, 3, 9], [1, 2, 7]]
    assert plan_prefixes(seqs) == (2, [(2, [0, 1, 2])])
    assert plan_prefixes([[1, 2, 3]]) == (0, [(0, [0])])  # one sequence shares nothing: it runs whole
    assert plan_prefixes([[4, 5], [4, 5]]) == (1, [(1, [0, 1])])  # identical rows still keep a token each
    assert plan_prefixes([]) == (0, [])


def test_reuse_scores_equal_whole_scores(whole, reuse):
    np.testing.assert_allclose(reuse.score(QUERY, DOCS), whole.score(QUERY, DOCS), atol=EXACT)
    np.testing.assert_allclose(reuse.score_pairs(PAIRS), whole.score_pairs(PAIRS), atol=EXACT)
    instruction = "Given a question, find the answer"
    np.testing.assert_allclose(
        reuse.score_pairs(PAIRS, instruction=instruction), whole.score_pairs(PAIRS, instruction=instruction), atol=EXACT
    )
    ids = reuse.tokenizer.encode(PAIRS)
    np.testing.assert_allclose(reuse.score_ids(ids), whole.score_ids(ids), atol=EXACT)


def test_reuse_matches_the_pytorch_reference(reuse, reference):
    np.testing.assert_allclose(reuse.score_pairs(PAIRS), reference.score_pairs(PAIRS), atol=1e-4)


def test_scores_independent_of_batch_composition_with_reuse(fp32_artifact, reuse):
    together = reuse.score_pairs(PAIRS)
    alone = [reuse.score_pairs([p])[0] for p in PAIRS]
    tight = Reranker(fp32_artifact, batch_tokens=16).score_pairs(PAIRS)
    order = [3, 7, 0, 5, 1, 6, 2, 4]
    shuffled = reuse.score_pairs([PAIRS[i] for i in order])
    np.testing.assert_allclose(together, alone, atol=EXACT)
    np.testing.assert_allclose(together, tight, atol=EXACT)
    np.testing.assert_allclose([together[i] for i in order], shuffled, atol=EXACT)


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_long_rows_run_in_chunks_with_the_same_scores(fp32_artifact, whole, reuse_prefix):
    chunked = Reranker(fp32_artifact, prefix_reuse=reuse_prefix)
    chunked.chunk_tokens = 7  # every document runs in several chunks, the prefix too
    np.testing.assert_allclose(chunked.score(QUERY, DOCS), whole.score(QUERY, DOCS), atol=EXACT)


def test_chunking_bounds_the_attention_memory(fp32_artifact, monkeypatch):
    """A long row never runs more new tokens than a chunk at a time, whatever its length."""
    rr = Reranker(fp32_artifact)
    rr.chunk_tokens = 32
    widths = run_widths(rr, monkeypatch)
    rr.score(QUERY, [DOCS[6]])  # ~600 tokens
    assert len(widths) > 10 and max(widths) <= 32


def run_widths(rr, monkeypatch) -> list[int]:
    """The widest row of every session run `rr` makes from now on, appended as they happen."""
    widths: list[int] = []
    original = rr._run

    def spy(rows, past, keep=0):
        widths.append(max(map(len, rows)))
        return original(rows, past, keep)

    monkeypatch.setattr(rr, "_run", spy)
    return widths


def test_a_row_up_to_about_twice_the_chunk_runs_whole(fp32_artifact, whole, monkeypatch):
    """Chunking pays only when the row's attention outgrows a whole row of twice the chunk: below that, the
    keys and values a chunk must hand on cost more memory than the attention saved (workload B)."""
    rr = Reranker(fp32_artifact)
    (ids,) = rr.tokenizer.encode([(QUERY, DOCS[0])])
    rr.chunk_tokens = len(ids) // 2 + 1  # the pair is longer than a chunk, shorter than two
    widths = run_widths(rr, monkeypatch)
    np.testing.assert_allclose(rr.score(QUERY, [DOCS[0]]), whole.score(QUERY, [DOCS[0]]), atol=EXACT)
    assert widths == [len(ids)]  # one run, the whole pair (a single pair shares no prefix)
    assert rr._chunked(len(ids), 0) is False and rr._chunked(2 * rr.chunk_tokens + 1, 0) is True


def test_plan_batches_bounds_attention_cells():
    lengths = [100] * 10
    batches = plan_batches(lengths, batch_tokens=10_000, past=50, max_cells=100 * 150 * 3)
    assert [len(b) for b in batches] == [3, 3, 3, 1]


def test_an_8192_token_pair_runs_in_chunks(fp32_artifact):
    """The longest pair the model card allows: chunked, and the chunk size does not change its score."""
    rr = Reranker(fp32_artifact)
    long_doc = " ".join(f"w{i}" for i in range(12000))
    (ids,) = rr.tokenizer.encode([(QUERY, long_doc)])
    assert len(ids) == 8192  # truncated by the recipe's rule, the prompt's suffix kept
    default = rr.score(QUERY, [long_doc])
    rr.chunk_tokens = 3000
    np.testing.assert_allclose(rr.score(QUERY, [long_doc]), default, atol=EXACT)
