"""Retrieval mAP against scikit-learn's per-query average_precision_score, and a hand-worked case."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from hscmae.metrics import retrieval_map, retrieval_map_pair


def _sklearn_map(q, g, ql, gl):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    s = qn.astype(np.float64) @ gn.astype(np.float64).T
    aps = [average_precision_score(gl == ql[i], s[i]) for i in range(len(q)) if (gl == ql[i]).any()]
    return float(np.mean(aps))


@pytest.mark.parametrize("seed,classes", [(0, 2), (1, 5), (2, 28), (3, 3)])
def test_matches_sklearn_on_random_data(seed, classes):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(120, 8)).astype(np.float32)
    g = rng.normal(size=(150, 8)).astype(np.float32)
    ql = rng.integers(0, classes + 1, 120)  # class `classes` has no gallery item: skipped
    gl = rng.integers(0, classes, 150)
    assert retrieval_map(q, g, ql, gl) == pytest.approx(_sklearn_map(q, g, ql, gl), abs=1e-6)


def test_matches_sklearn_with_exact_ties_and_any_chunk_size():
    # unit vectors with exactly representable products (signed one-hots and a block of halves):
    # every summation order gives the same cosine, so ties are ties in float32 and float64 alike
    rng = np.random.default_rng(7)
    base = np.vstack([np.eye(4), -np.eye(4), np.full((1, 4), 0.5), [[0.5, -0.5, 0.5, -0.5]]]).astype(np.float32)
    g = base[rng.integers(0, len(base), 90)]
    q = base[rng.integers(0, len(base), 50)]
    ql, gl = rng.integers(0, 4, len(q)), rng.integers(0, 4, len(g))
    expected = _sklearn_map(q, g, ql, gl)
    for chunk in (1, 7, 1024):
        assert retrieval_map(q, g, ql, gl, chunk_size=chunk) == pytest.approx(expected, abs=1e-6)


def test_hand_worked_case():
    # one query along x; gallery cosines 1.0 (rel), 0.6 (irrelevant), 0.0 (rel), -1.0 (irrelevant)
    q = np.array([[1.0, 0.0]])
    g = np.array([[2.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    # ranks of relevant items: 1 and 3 -> AP = (1/1 + 2/3) / 2 = 5/6
    assert retrieval_map(q, g, np.array([1]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # a tie: the relevant item ties with an irrelevant one at the top -> precision 1/2 there
    g2 = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert retrieval_map(q, g2, np.array([1]), np.array([1, 0, 0])) == pytest.approx(0.5)


def test_pair_and_torch_inputs():
    rng = np.random.default_rng(1)
    a, v, lab = rng.normal(size=(40, 4)), rng.normal(size=(40, 4)), rng.integers(0, 3, 40)
    out = retrieval_map_pair(torch.tensor(a), torch.tensor(v), torch.tensor(lab))
    assert out["map_a2v"] == pytest.approx(_sklearn_map(a, v, lab, lab), abs=1e-6)
    assert out["map_v2a"] == pytest.approx(_sklearn_map(v, a, lab, lab), abs=1e-6)
    assert out["map"] == pytest.approx((out["map_a2v"] + out["map_v2a"]) / 2)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="dimensions differ"):
        retrieval_map(np.zeros((3, 2)), np.zeros((3, 4)), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="labels must match rows"):
        retrieval_map(np.zeros((3, 2)), np.zeros((4, 2)), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="query: expected a 2-D"):
        retrieval_map(np.zeros(3), np.zeros((4, 2)), np.zeros(3), np.zeros(4))


def test_no_row_is_fully_sorted(monkeypatch):
    """An exact mAP by label needs only the relevant columns sorted, never a whole gallery row."""
    n = 64
    real_sort = torch.Tensor.sort

    def guarded(self, *args, **kwargs):
        assert self.shape[-1] < n, "a full gallery row was sorted"
        return real_sort(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "sort", guarded)
    monkeypatch.setattr(torch, "sort", lambda t, *a, **k: guarded(t, *a, **k))
    monkeypatch.setattr(torch, "argsort", lambda *a, **k: pytest.fail("argsort used"))
    rng = np.random.default_rng(0)
    retrieval_map(rng.normal(size=(n, 4)), rng.normal(size=(n, 4)), np.arange(n) % 4, np.arange(n) % 4)
