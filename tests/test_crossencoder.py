"""sentence-transformers' calling convention on Reranker: code written for a CrossEncoder runs unchanged."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from conftest import DOCS, QUERY

from qrr.runtime import InputError, Reranker

PAIRS = [(QUERY, d) for d in DOCS[:4]] + [("who wrote Faust?", "Goethe wrote Faust.")]
# what code written for a CrossEncoder calls, as (args, kwargs)
CALLS = {
    "predict": [
        ((PAIRS,), {}),
        ((PAIRS,), {"batch_size": 2, "show_progress_bar": False, "convert_to_numpy": True}),
        ((PAIRS[0],), {}),
        ((PAIRS, None, None, 16), {"convert_to_numpy": False, "convert_to_tensor": False}),
    ],
    "rank": [
        ((QUERY, DOCS), {}),
        ((QUERY, DOCS), {"top_k": 3, "return_documents": True, "batch_size": 8, "show_progress_bar": False}),
        ((QUERY, DOCS, 2, True), {}),
    ],
}


@pytest.mark.parametrize("name", list(CALLS))
def test_same_signature_as_crossencoder(name):
    st = pytest.importorskip("sentence_transformers")  # needs torch; the dev extra installs both
    theirs = inspect.signature(getattr(st.CrossEncoder, name))
    ours = inspect.signature(getattr(Reranker, name))
    positional = lambda sig: [p.name for p in sig.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]  # noqa: E731
    assert positional(ours) == positional(theirs)
    for p in theirs.parameters.values():
        if p.kind is not p.VAR_KEYWORD:
            assert ours.parameters[p.name].default == p.default, p.name
    for args, kwargs in CALLS[name]:
        theirs.bind(None, *args, **kwargs)
        ours.bind(None, *args, **kwargs)


def test_predict(fp32_artifact):
    rr = Reranker(fp32_artifact)
    expected = rr.score_pairs(PAIRS)
    scores = rr.predict(PAIRS)
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32 and scores.shape == (len(PAIRS),)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    np.testing.assert_allclose(rr.predict(PAIRS, batch_size=2), expected, rtol=1e-6)
    one = rr.predict(PAIRS[0])
    assert np.ndim(one) == 0 and one == pytest.approx(expected[0], rel=1e-6)
    as_list = rr.predict([list(p) for p in PAIRS], convert_to_numpy=False)
    assert isinstance(as_list, list) and as_list == pytest.approx(expected, abs=1e-12)
    instruction = "Given a question, find the answer"
    assert rr.predict(PAIRS, prompt=instruction).tolist() == pytest.approx(
        rr.score_pairs(PAIRS, instruction=instruction), rel=1e-6)
    assert rr.predict([]).shape == (0,)


def test_predict_to_tensor(fp32_artifact):
    torch = pytest.importorskip("torch")
    scores = Reranker(fp32_artifact).predict(PAIRS, convert_to_tensor=True)
    assert isinstance(scores, torch.Tensor) and scores.dtype == torch.float32 and scores.shape == (len(PAIRS),)


def test_rank_as_crossencoder(fp32_artifact):
    rr = Reranker(fp32_artifact)
    ranked = rr.rank(QUERY, DOCS, top_k=3, return_documents=True)
    expected = rr.rerank(QUERY, DOCS, top_k=3)
    assert [set(r) for r in ranked] == [{"corpus_id", "score", "text"}] * 3
    assert [(r["corpus_id"], r["text"]) for r in ranked] == [(e.index, e.document) for e in expected]
    assert [r["score"] for r in ranked] == pytest.approx([e.score for e in expected], abs=1e-12)
    whole = rr.rank(QUERY, DOCS)
    assert [set(r) for r in whole] == [{"corpus_id", "score"}] * len(DOCS)
    assert [r["score"] for r in whole] == sorted((r["score"] for r in whole), reverse=True)
    assert rr.rank(QUERY, []) == []


def test_progress_bar_and_refused_options(fp32_artifact, capsys):
    pytest.importorskip("tqdm")
    rr = Reranker(fp32_artifact)
    rr.predict(PAIRS, batch_size=2, show_progress_bar=True)
    assert f"{len(PAIRS)}/{len(PAIRS)}" in capsys.readouterr().err
    for options in ({"activation_fn": abs}, {"apply_softmax": True}, {"device": "cuda"}, {"prompt_name": "query"}):
        with pytest.raises(InputError, match=next(iter(options))):
            rr.predict(PAIRS, **options)
    with pytest.raises(InputError, match="batch_size"):
        rr.predict(PAIRS, batch_size=0)
    with pytest.raises(InputError, match="top_k"):
        rr.rank(QUERY, DOCS, top_k=-1)
