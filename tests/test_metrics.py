"""Retrieval mAP against scikit-learn's per-query average_precision_score, and hand-worked cases."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve

from hscmae import metrics
from hscmae.metrics import retrieval_map, retrieval_map_pair


def _sklearn_aps(q, g, ql, gl):
    """Independent reference: float64 cosines in numpy, one sklearn call per query (NaN = skipped)."""
    q, g = np.asarray(q, dtype=np.float64), np.asarray(g, dtype=np.float64)
    s = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    ql, gl = np.asarray(ql), np.asarray(gl)
    return np.array([average_precision_score(gl == ql[i], s[i]) if (gl == ql[i]).any() else np.nan
                     for i in range(len(q))])


def _sklearn_map(q, g, ql, gl):
    return float(np.nanmean(_sklearn_aps(q, g, ql, gl)))


def _tie_vectors(rng, n):
    # 4-d vectors whose cosines are exactly representable (signed one-hots, powers of two times them,
    # and blocks of +-0.5): every summation order gives the same value, so equal cosines are equal
    # in float32 and float64 alike and the reference sees the very same ties
    base = np.vstack([np.eye(4), -2 * np.eye(4), np.full((1, 4), 0.5), [[0.5, -0.5, 0.5, -0.5]], [[4.0, 0, 0, 0]]])
    return base[rng.integers(0, len(base), n)].astype(np.float32)


@pytest.mark.parametrize("seed,classes", [(0, 1), (1, 2), (2, 5), (3, 28), (4, 3)])
def test_matches_sklearn_on_random_data(seed, classes):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(120, 8)).astype(np.float32)
    g = rng.normal(size=(300, 8)).astype(np.float32)
    ql = rng.integers(0, classes + 1, 120)  # class `classes` has no gallery item: those queries are skipped
    gl = rng.integers(0, classes, 300)
    assert (ql == classes).any()
    assert retrieval_map(q, g, ql, gl) == pytest.approx(_sklearn_map(q, g, ql, gl), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_per_query_with_exact_ties(seed):
    rng = np.random.default_rng(seed)
    q, g = _tie_vectors(rng, 50), _tie_vectors(rng, 90)
    ql, gl = rng.integers(0, 5, len(q)), rng.integers(0, 4, len(g))  # label 4: no gallery item
    expected = _sklearn_aps(q, g, ql, gl)
    assert np.isnan(expected).any() and not np.isnan(expected).all()
    m, aps = retrieval_map(q, g, ql, gl, return_per_query=True)
    np.testing.assert_array_equal(np.isnan(aps), np.isnan(expected))
    np.testing.assert_allclose(aps[~np.isnan(aps)], expected[~np.isnan(expected)], rtol=0, atol=1e-9)
    assert m == pytest.approx(np.nanmean(expected), abs=1e-9)


def test_chunk_size_does_not_change_the_result():
    rng = np.random.default_rng(7)
    q, g = _tie_vectors(rng, 70), _tie_vectors(rng, 90)
    ql, gl = rng.integers(0, 3, len(q)), rng.integers(0, 3, len(g))
    expected = _sklearn_map(q, g, ql, gl)
    for chunk in (1, 7, 1024):
        assert retrieval_map(q, g, ql, gl, chunk_size=chunk) == pytest.approx(expected, abs=1e-9)


def test_many_relevant_items_and_ties():
    # two classes of ~400 among 11 distinct directions: every row is a few long tie groups,
    # relevant and irrelevant items mixed in each; then the same in float64
    rng = np.random.default_rng(11)
    q, g = _tie_vectors(rng, 60), _tie_vectors(rng, 800)
    ql, gl = rng.integers(0, 2, 60), rng.integers(0, 2, 800)
    expected = _sklearn_map(q, g, ql, gl)
    assert retrieval_map(q, g, ql, gl) == pytest.approx(expected, abs=1e-9)
    assert retrieval_map(q.astype(np.float64), g.astype(np.float64), ql, gl) == pytest.approx(expected, abs=1e-9)


def test_hand_worked_cases():
    q = np.array([[1.0, 0.0]])
    # cosines to the query: 1.0 (relevant), 0.6 (irrelevant), 0.0 (relevant), -1.0 (irrelevant).
    # The relevant items rank 1st and 3rd: precisions 1/1 and 2/3, AP = (1 + 2/3) / 2 = 5/6.
    g = np.array([[2.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    assert retrieval_map(q, g, [1], [1, 0, 1, 0]) == pytest.approx(5 / 6, abs=1e-12)
    # A tie at the top between the relevant item and an irrelevant one: one threshold holding both,
    # precision 1/2 there, AP = 1/2 (not 1, which breaking the tie in its favour would give).
    g2 = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert retrieval_map(q, g2, [1], [1, 0, 0]) == pytest.approx(0.5, abs=1e-12)
    # Cosines 1, 1, 0, 0 with relevant = items 1 and 3 (a tie group {1, 2} and a tie group {3, 4}):
    # item 1 sees 1 relevant of 2 at scores >= 1, item 3 sees 2 relevant of 4; AP = (1/2 + 2/4) / 2.
    g3 = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, -5.0]])
    assert retrieval_map(q, g3, ["cat"], ["cat", "dog", "cat", "dog"]) == pytest.approx(0.5, abs=1e-12)
    # A zero query scores 0 against everything: one threshold, AP = fraction relevant = 2/4.
    assert retrieval_map(np.zeros((1, 2)), g, [1], [1, 0, 1, 0]) == pytest.approx(0.5, abs=1e-12)


def test_queries_without_relevant_items():
    q, g = np.eye(3), np.eye(3)
    m, aps = retrieval_map(q, g, [0, 1, 9], [0, 1, 2], return_per_query=True)
    assert m == 1.0 and aps[:2].tolist() == [1.0, 1.0] and np.isnan(aps[2])
    assert np.isnan(retrieval_map(q, g, [7, 8, 9], [0, 1, 2]))


def test_pair_and_torch_inputs():
    rng = np.random.default_rng(1)
    a, v, lab = rng.normal(size=(40, 4)), rng.normal(size=(40, 4)), rng.integers(0, 3, 40)
    out = retrieval_map_pair(torch.tensor(a, dtype=torch.float32), torch.tensor(v), torch.tensor(lab))
    assert out["map_a2v"] == pytest.approx(_sklearn_map(a, v, lab, lab), abs=1e-6)
    assert out["map_v2a"] == pytest.approx(_sklearn_map(v, a, lab, lab), abs=1e-6)
    assert out["map"] == pytest.approx((out["map_a2v"] + out["map_v2a"]) / 2, abs=1e-15)
    assert out["map_a2v"] != pytest.approx(out["map_v2a"], abs=1e-6)  # the directions really differ


def test_bad_inputs_are_refused():
    z = np.zeros
    with pytest.raises(ValueError, match="dimensions differ"):
        retrieval_map(z((3, 2)), z((3, 4)), z(3), z(3))
    with pytest.raises(ValueError, match="labels must match rows"):
        retrieval_map(z((3, 2)), z((4, 2)), z(3), z(3))
    with pytest.raises(ValueError, match="labels must match rows"):
        retrieval_map(z((3, 2)), z((4, 2)), z(2), z(4))
    with pytest.raises(ValueError, match="query: expected a 2-D"):
        retrieval_map(z(3), z((4, 2)), z(3), z(4))
    with pytest.raises(ValueError, match="gallery: expected a 2-D"):
        retrieval_map(z((3, 2)), z((4, 2, 1)), z(3), z(4))
    with pytest.raises(ValueError, match="gallery_labels: expected a 1-D"):
        retrieval_map(z((3, 2)), z((4, 2)), z(3), z((4, 1)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        retrieval_map(np.array([[np.nan, 1.0]]), z((4, 2)), z(1), z(4))
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_map(z((3, 2)), z((4, 2)), z(3), z(4), chunk_size=0)


# ------------------------------------------------------------------------------------------------
# PR curves and per-class AP, against scikit-learn
# ------------------------------------------------------------------------------------------------
def _sklearn_interpolated(q, g, ql, gl, levels):
    """Per query: scikit-learn's precision_recall_curve (its final (recall 0, precision 1) point is
    not a threshold, so it is dropped), interpolated: max precision at recall >= r."""
    q, g = np.asarray(q, dtype=np.float64), np.asarray(g, dtype=np.float64)
    s = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    out = np.full((len(q), len(levels)), np.nan)
    for i in range(len(q)):
        y = gl == ql[i]
        if y.any():
            p, r, _ = precision_recall_curve(y, s[i])
            p, r = p[:-1], r[:-1]
            out[i] = [p[r >= lv - 1e-12].max() for lv in levels]
    return out


@pytest.mark.parametrize("seed,n_points", [(0, 11), (1, 11), (2, 21), (3, 5)])
def test_interpolated_precision_matches_sklearn_with_ties(seed, n_points):
    rng = np.random.default_rng(seed)
    q, g = _tie_vectors(rng, 60), _tie_vectors(rng, 80)
    ql, gl = rng.integers(0, 5, len(q)), rng.integers(0, 4, len(g))  # label 4: no relevant item
    levels, p = metrics.interpolated_precision(q, g, ql, gl, n_points, chunk_size=17)
    np.testing.assert_allclose(levels, np.linspace(0, 1, n_points))
    expected = _sklearn_interpolated(q, g, ql, gl, levels)
    np.testing.assert_array_equal(np.isnan(p), np.isnan(expected))
    np.testing.assert_allclose(p[~np.isnan(p)], expected[~np.isnan(expected)], rtol=0, atol=1e-12)
    lv, curve = metrics.pr_curve(q, g, ql, gl, n_points)
    np.testing.assert_allclose(curve, np.nanmean(expected, axis=0), atol=1e-12)
    assert np.all(np.diff(curve) <= 1e-12)  # interpolated precision never rises with recall


def test_interpolated_precision_matches_sklearn_on_continuous_scores():
    rng = np.random.default_rng(5)
    q, g = rng.normal(size=(40, 6)), rng.normal(size=(150, 6))
    ql, gl = rng.integers(0, 3, 40), rng.integers(0, 3, 150)
    levels, p = metrics.interpolated_precision(q, g, ql, gl)
    np.testing.assert_allclose(p, _sklearn_interpolated(q, g, ql, gl, levels), atol=1e-6)


def test_per_class_map_from_per_query_ap_matches_sklearn():
    rng = np.random.default_rng(6)
    q, g = _tie_vectors(rng, 70), _tie_vectors(rng, 70)
    ql, gl = rng.integers(0, 5, 70), rng.integers(0, 4, 70)  # class 4 has no gallery item
    _, ap = retrieval_map(q, g, ql, gl, return_per_query=True)
    got = metrics.per_class_map(ap, ql)
    ref = _sklearn_aps(q, g, ql, gl)
    expected = {c: float(np.mean(ref[ql == c])) for c in range(4)}
    assert set(got) == set(expected)
    for c in expected:
        assert got[c] == pytest.approx(expected[c], abs=1e-9)
    with pytest.raises(ValueError, match="shape"):
        metrics.per_class_map(ap[:-1], ql)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_label_bookkeeping_gives_bit_identical_maps_and_sklearns(seed):
    """The label index kept by the labels' contents (reused by every grid point, epoch and both
    directions) gives the very same bits as computing it afresh, and sklearn's mAP; the pair's
    shared score matrix (v2a = a2v transposed) gives the bits of two separate retrievals."""
    rng = np.random.default_rng(seed)
    n, k = 150 + 60 * seed, 3 + 5 * seed  # (sklearn's per-query AP is most of the time)
    labels = rng.integers(0, k, n)
    means = rng.normal(size=(k, 16))
    a = (means[labels] + rng.normal(size=(n, 16))).astype(np.float32)
    v = (means[labels] + rng.normal(size=(n, 16))).astype(np.float32)
    if seed == 2:
        a, v = _tie_vectors(rng, n), _tie_vectors(rng, n)  # exact ties
    metrics._LABEL_CACHE.clear()
    uncached = retrieval_map_pair(a, v, labels, cache=False)
    assert not metrics._LABEL_CACHE
    first = retrieval_map_pair(a, v, labels)
    index = metrics.label_index(labels.copy(), labels.copy())  # equal contents, another array: a hit
    assert len(metrics._LABEL_CACHE) == 1 and index is next(iter(metrics._LABEL_CACHE.values()))
    again = retrieval_map_pair(a, v, labels)
    assert uncached == first == again  # bit-identical floats
    separate = {"map_a2v": retrieval_map(a, v, labels, labels), "map_v2a": retrieval_map(v, a, labels, labels)}
    assert (first["map_a2v"], first["map_v2a"]) == (separate["map_a2v"], separate["map_v2a"])
    assert first["map_a2v"] == pytest.approx(_sklearn_map(a, v, labels, labels), abs=1e-6)
    assert first["map_v2a"] == pytest.approx(_sklearn_map(v, a, labels, labels), abs=1e-6)


def test_the_pair_without_a_shared_matrix_gives_the_same_bits(monkeypatch):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 6, 300)
    a, v = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(300, 8)).astype(np.float32)
    shared = retrieval_map_pair(a, v, labels)
    monkeypatch.setattr(metrics, "_MAX_SHARED_SCORES", 0)  # larger than the limit: chunk by chunk
    assert retrieval_map_pair(a, v, labels) == shared
