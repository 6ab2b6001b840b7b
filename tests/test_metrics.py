import numpy as np
import pytest

pytest.importorskip("scipy")

from qrr.export.metrics import compare, kendall, ndcg_at, ranking, reciprocal_rank, spearman  # noqa: E402
from qrr.runtime.pairs import Query  # noqa: E402


def test_rank_correlations():
    a = np.array([0.1, 0.4, 0.3, 0.9])
    assert spearman(a, a * 2) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert kendall(a, np.array([0.1, 0.3, 0.4, 0.9])) == pytest.approx(4 / 6)
    # scipy.stats.spearmanr([1,2,2,3],[1,3,2,4]) with ties: 0.9486832980505138
    assert spearman(np.array([1, 2, 2, 3.0]), np.array([1, 3, 2, 4.0])) == pytest.approx(0.9486832980505138)
    # a constant side: both constant agree fully, one constant carries no ranking (scipy alone gives NaN)
    flat = np.array([0.5, 0.5, 0.5])
    assert spearman(flat, flat) == kendall(flat, flat) == 1.0
    assert spearman(flat, np.array([0.1, 0.2, 0.3])) == kendall(flat, np.array([0.1, 0.2, 0.3])) == 0.0


def test_ndcg_and_mrr():
    gains = np.array([3.0, 0.0, 1.0])
    assert ndcg_at(np.array([0, 2, 1]), gains) == pytest.approx(1.0)
    worst = ndcg_at(np.array([1, 2, 0]), gains)
    assert worst == pytest.approx((1 / np.log2(3) + 3 / np.log2(4)) / (3 + 1 / np.log2(3)))
    assert reciprocal_rank(np.array([1, 2, 0]), np.array([1, 0, 0])) == pytest.approx(1 / 3)
    assert list(ranking(np.array([0.5, 0.9, 0.5]))) == [1, 0, 2]


def test_compare_flags_a_flipped_top1():
    q = [Query("q", None, ["a", "b", "c"], [1, 0, 0])]
    m = compare(q, [np.array([0.9, 0.5, 0.1])], [np.array([0.5, 0.9, 0.1])])
    assert m["max_abs_dp"] == pytest.approx(0.4) and m["top1_agreement"] == 0.0
    assert m["labelled"]["mrr_drop_points"] == pytest.approx(50.0)
