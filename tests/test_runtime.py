"""The runtime against the PyTorch reference (the model card's recipe) on a tiny stand-in."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DOCS, QUERY

from qrr.runtime import Reranker
from qrr.runtime.planner import plan_batches

FP32_TOL = 1e-4
INT8_TOL = 0.03  # the int8 default --max-drop (README, "Validation")


def ranking(scores):
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def test_token_ids_match_the_recipe(fp32_artifact, reference):
    rr = Reranker(fp32_artifact)
    pairs = [(QUERY, d) for d in DOCS] + [("", ""), ("naïve café", "Ünïcödé ∑ x² ≤ 1 — 東京")]
    ours = rr.tokenizer.encode(pairs)
    texts = [rr.tokenizer.pair_text(q, d) for q, d in pairs]
    theirs = reference.process_inputs(texts)
    for row, ids in enumerate(ours):
        mask = theirs["attention_mask"][row].bool()
        assert theirs["input_ids"][row][mask].tolist() == ids


def test_fp32_matches_reference(fp32_artifact, reference):
    ours = Reranker(fp32_artifact).score(QUERY, DOCS)
    theirs = reference.score_pairs([(QUERY, d) for d in DOCS])
    assert np.max(np.abs(np.array(ours) - np.array(theirs))) < FP32_TOL
    assert ranking(ours) == ranking(theirs)
    assert len(set(np.round(theirs, 3))) > 4, "stand-in scores too close to judge rankings"


def test_int8_within_tolerance(int8_artifact, reference):
    ours = Reranker(int8_artifact).score(QUERY, DOCS)
    theirs = reference.score_pairs([(QUERY, d) for d in DOCS])
    assert np.max(np.abs(np.array(ours) - np.array(theirs))) < INT8_TOL


def test_truncation_matches_reference(standin, tmp_path, fp32_artifact):
    from qrr.export.checkpoint import resolve
    from qrr.export.reference import ReferenceScorer

    short = ReferenceScorer(resolve(str(standin)), max_length=96)
    rr = Reranker(fp32_artifact, max_length=96)
    ids = rr.tokenizer.encode([(QUERY, d) for d in DOCS])
    assert max(len(x) for x in ids) == 96
    ours = rr.score(QUERY, DOCS)
    theirs = short.score_pairs([(QUERY, d) for d in DOCS])
    assert np.max(np.abs(np.array(ours) - np.array(theirs))) < FP32_TOL


def test_scores_do_not_depend_on_batch_composition(fp32_artifact):
    rr = Reranker(fp32_artifact)
    together = rr.score(QUERY, DOCS)
    alone = [rr.score(QUERY, [d])[0] for d in DOCS]
    small = Reranker(fp32_artifact, batch_tokens=64).score(QUERY, DOCS)
    shuffled_order = [5, 2, 7, 0, 3, 6, 1, 4]
    shuffled = rr.score(QUERY, [DOCS[i] for i in shuffled_order])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    np.testing.assert_allclose(together, small, atol=1e-6)
    np.testing.assert_allclose([together[i] for i in shuffled_order], shuffled, atol=1e-6)


def test_score_pairs_mixed_queries_and_instruction(fp32_artifact, reference):
    rr = Reranker(fp32_artifact)
    pairs = [(QUERY, DOCS[0]), ("who wrote Faust?", "Goethe wrote Faust."), ("x", DOCS[3])]
    ours = rr.score_pairs(pairs, instruction="Given a question, find the answer")
    theirs = reference.score_pairs(pairs, instruction="Given a question, find the answer")
    np.testing.assert_allclose(ours, theirs, atol=FP32_TOL)
    default = rr.score_pairs(pairs)
    assert not np.allclose(ours, default, atol=1e-6)


def test_rerank_sorted_with_top_k(fp32_artifact):
    rr = Reranker(fp32_artifact)
    scores = rr.score(QUERY, DOCS)
    results = rr.rerank(QUERY, DOCS, top_k=3)
    assert [r.index for r in results] == ranking(scores)[:3]
    assert [r.document for r in results] == [DOCS[i] for i in ranking(scores)[:3]]
    assert all(0.0 <= r.score <= 1.0 for r in results)
    assert len(rr.rerank(QUERY, DOCS)) == len(DOCS)


def test_empty_inputs(fp32_artifact):
    rr = Reranker(fp32_artifact)
    assert rr.score(QUERY, []) == []
    assert rr.rerank(QUERY, []) == []
    assert rr.score_pairs([]) == []
    (empty_doc,) = rr.score(QUERY, [""])
    assert 0.0 < empty_doc < 1.0


def test_plan_batches_bounds_padding():
    lengths = [5, 300, 7, 40, 41, 6, 299, 1000]
    batches = plan_batches(lengths, batch_tokens=600)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * width <= 600
    # the long one alone; short ones never padded to it
    assert [7] in batches
    assert plan_batches([], 100) == []


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_option(fp32_artifact, threads):
    rr = Reranker(fp32_artifact, threads=threads)
    assert rr.threads == threads
    assert len(rr.score(QUERY, DOCS[:2])) == 2


def test_scoring_in_a_background_thread_leaves_the_caller_free(fp32_artifact):
    """onnxruntime releases the GIL while it runs, so a desktop app's own thread keeps running."""
    import threading
    import time

    rr = Reranker(fp32_artifact, threads=1)
    docs = DOCS * 32
    expected = rr.score(QUERY, docs)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("scores", rr.score(QUERY, docs)))
    ticks = 0
    start = time.perf_counter()
    worker.start()
    while worker.is_alive():
        ticks += 1
        time.sleep(0.001)
    elapsed_ms = 1000 * (time.perf_counter() - start)
    assert result["scores"] == pytest.approx(expected, abs=1e-7)
    # had scoring held the GIL, this loop would have stalled for the whole run
    assert elapsed_ms < 20 or ticks >= 0.3 * elapsed_ms / 1.1


def test_truncation_report(fp32_artifact):
    """`truncation` counts each document's tokens kept and in all; scores are those of `score` unchanged."""
    from qrr.runtime.prompt import MIN_DOCUMENT_TOKENS

    rr = Reranker(fp32_artifact, max_length=160)
    long_query = "Beijing " * 40  # fills the pair's window: no document token is left
    docs = ["The capital of China is Beijing.", "", "yes", " ".join(["Beijing is old."] * 30)]
    short = rr.truncation(QUERY, docs)
    assert [t.truncated for t in short] == [False, False, False, True]
    assert short[1].total == 0 and short[2].kept == short[2].total > 0
    assert MIN_DOCUMENT_TOKENS <= short[3].kept < short[3].total and not short[3].starved
    starved = rr.truncation(long_query, docs)
    assert [t.starved for t in starved] == [True, False, True, True]
    assert [t.kept for t in starved] == [0, 0, 0, 0]
    ids = rr.tokenizer.encode([(long_query, d) for d in docs])
    assert all(len(seq) == rr.max_length for k, seq in enumerate(ids) if starved[k].truncated)
    assert rr.score(long_query, docs) == rr.score_pairs([(long_query, d) for d in docs])


def test_max_document_tokens_cuts_the_document_only(fp32_artifact):
    rr = Reranker(fp32_artifact)
    tok = rr.tokenizer
    docs = ["The capital of China is Beijing, a city of many millions.", "yes"]
    full, whole = tok.encode_report([(QUERY, d) for d in docs])
    cut, report = tok.encode_report([(QUERY, d) for d in docs], max_document_tokens=3)
    assert [t.kept for t in report] == [3, whole[1].kept] and report[0].total == whole[0].total
    assert cut[1] == full[1]
    suffix = len(tok.suffix_ids)
    assert cut[0][:-suffix] == full[0][: len(cut[0]) - suffix]  # a prefix of the exact tokenization
    assert len(full[0]) - len(cut[0]) == whole[0].total - 3
