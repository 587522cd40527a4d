"""Loss functions against independent computations (closed forms, scipy, hand-worked cases)."""
import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from hscmae import losses as L
from hscmae.config import Config
from hscmae.model import HSCMAE


def test_soft_infonce_with_k1_is_symmetric_infonce():
    g = torch.Generator().manual_seed(0)
    sa, sv, ta, tv = (torch.randn(16, 8, generator=g) for _ in range(4))
    tau = 0.2
    logits = F.normalize(sa, dim=1) @ F.normalize(sv, dim=1).T / tau
    target = torch.arange(16)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    got = L.soft_infonce(sa, sv, ta, tv, k=1, temperature=tau)
    assert torch.allclose(got, expected, atol=1e-6)


def test_soft_topk_targets_hand_worked():
    # row 0: own pair (0.5) is always kept; best other is col 2 (0.9); col 1 (0.1) dropped at k=2
    sim = torch.tensor([[0.5, 0.1, 0.9], [0.2, 0.3, 0.0], [0.0, 0.8, 0.4]])
    t = L.soft_topk_targets(sim, k=2, temperature=0.5)
    e = np.exp(np.array([0.5, 0.9]) / 0.5)
    assert t[0].tolist() == pytest.approx([e[0] / e.sum(), 0.0, e[1] / e.sum()], abs=1e-6)
    e1 = np.exp(np.array([0.2, 0.3]) / 0.5)  # row 1: pair (col 1) and col 0
    assert t[1].tolist() == pytest.approx([e1[0] / e1.sum(), e1[1] / e1.sum(), 0.0], abs=1e-6)
    assert torch.allclose(t.sum(1), torch.ones(3))


def test_soft_infonce_puts_no_gradient_into_teacher():
    g = torch.Generator().manual_seed(1)
    sa, sv = (torch.randn(8, 4, generator=g, requires_grad=True) for _ in range(2))
    ta, tv = (torch.randn(8, 4, generator=g, requires_grad=True) for _ in range(2))
    L.soft_infonce(sa, sv, ta, tv, k=3, temperature=0.1).backward()
    assert ta.grad is None and tv.grad is None and sa.grad is not None


def _canonical_correlations_scipy(x, y, reg):
    """Generalised symmetric eigenproblem [0 Cxy; Cyx 0] w = rho [Cxx 0; 0 Cyy] w."""
    x, y = x - x.mean(0), y - y.mean(0)
    n, d = x.shape
    cxx = x.T @ x / (n - 1) + reg * np.eye(d)
    cyy = y.T @ y / (n - 1) + reg * np.eye(d)
    cxy = x.T @ y / (n - 1)
    a = np.block([[np.zeros((d, d)), cxy], [cxy.T, np.zeros((d, d))]])
    b = scipy.linalg.block_diag(cxx, cyy)
    rho = scipy.linalg.eigh(a, b, eigvals_only=True)
    return np.sort(rho)[::-1][:d]


@pytest.mark.parametrize("n,d,k", [(200, 6, 3), (40, 10, 10), (12, 10, 4)])
def test_dcca_loss_matches_generalised_eigenproblem(n, d, k):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=(d, d)) * 0.5 + rng.normal(size=(n, d))
    rho = _canonical_correlations_scipy(x, y, 1e-3)
    got = L.dcca_loss(torch.tensor(x), torch.tensor(y), k, reg=1e-3)
    assert float(got) == pytest.approx(k - rho[:k].sum(), abs=1e-6)


@pytest.mark.parametrize("b,d,k", [(9, 32, 8), (64, 128, 32)])
def test_dcca_gradient_is_finite_when_batch_is_small(b, d, k):
    # batch < dim: the regularised covariances have d - b + 1 equal eigenvalues, where a
    # gradient through eigenvectors would divide by zero gaps
    g = torch.Generator().manual_seed(2)
    net = torch.nn.Linear(200, d).double()  # full rank, so the k-th correlation is not tied
    x = net(torch.randn(b, 200, generator=g, dtype=torch.float64))
    y = torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=True)
    L.dcca_loss(x, y, k=k, reg=1e-3).backward()
    assert torch.isfinite(net.weight.grad).all() and torch.isfinite(y.grad).all()
    # and the gradient is the true one: compare a directional derivative with finite differences
    direction = torch.randn(b, d, generator=g, dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        num = (L.dcca_loss(x + eps * direction, y, k) - L.dcca_loss(x - eps * direction, y, k)) / (2 * eps)
    x2 = x.detach().requires_grad_(True)
    L.dcca_loss(x2, y.detach(), k).backward()
    assert float((x2.grad * direction).sum()) == pytest.approx(float(num), rel=1e-4, abs=1e-7)


def test_dcca_refuses_batch_not_above_cca_dim():
    with pytest.raises(ValueError, match="batch size > cca_dim"):
        L.dcca_loss(torch.randn(8, 16), torch.randn(8, 16), k=8)


def test_masked_recon_loss_only_counts_masked_entries():
    recon = torch.tensor([[1.0, 2.0, 3.0]])
    clean = torch.tensor([[0.0, 0.0, 0.0]])
    hidden = torch.tensor([[True, False, True]])
    assert float(L.masked_recon_loss(recon, clean, hidden)) == pytest.approx((1 + 9) / 2)
    assert float(L.masked_recon_loss(recon, clean, torch.zeros_like(hidden))) == pytest.approx(14 / 3)


def test_weighted_total_learned_and_fixed():
    parts = {"a": torch.tensor(2.0), "b": torch.tensor(0.5)}
    s = {"a": torch.tensor(0.3), "b": torch.tensor(-1.0)}
    total, w = L.weighted_total(parts, s, {})
    assert float(total) == pytest.approx(np.exp(-0.3) * 2 + 0.3 + np.exp(1.0) * 0.5 - 1.0, rel=1e-6)
    assert w["b"] == pytest.approx(np.e, rel=1e-6)
    total, w = L.weighted_total(parts, None, {"a": 2.0, "b": 4.0})
    assert float(total) == pytest.approx(6.0) and w == {"a": 2.0, "b": 4.0}


def test_distill_loss_closed_form():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    assert float(L.distill_loss(s, t)) == pytest.approx(((1 - 2 ** -0.5) + 2) / 2, rel=1e-6)


def test_ema_update_is_momentum_average_and_teacher_gets_no_gradient():
    cfg = Config(hidden_dim=8, embed_dim=4, cca_dim=2, batch_size=8, top_k=2)
    model = HSCMAE(cfg, 5, 7)
    before_t = [p.clone() for p in model.teacher.parameters()]
    with torch.no_grad():
        for p in model.encoders.parameters():
            p.add_(1.0)
    s = [p.clone() for p in model.encoders.parameters()]
    model.update_teacher(0.9)
    for t0, s0, t1 in zip(before_t, s, model.teacher.parameters()):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * s0, atol=1e-6)
    out = model.teacher_embed(torch.randn(3, 5), "a")
    assert not out.requires_grad
    assert all(not p.requires_grad for p in model.teacher.parameters())
    student = {id(q) for q in model.student_parameters()}
    assert not any(n.startswith("teacher.") for n, p in model.named_parameters() if id(p) in student)
    assert len(student) > 0


def _soft_infonce_numpy(sa, sv, ta, tv, k, tau):
    """Independent reference: argsort-based mining (pair first, then the k-1 most similar others)
    and the soft cross-entropy written out with logsumexp."""
    from scipy.special import logsumexp, softmax

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    logits = unit(sa) @ unit(sv).T / tau
    t = unit(ta) @ unit(tv).T
    total = 0.0
    for lg, ts in ((logits, t), (logits.T, t.T)):
        for i in range(len(lg)):
            others = [j for j in np.argsort(-ts[i], kind="stable") if j != i][:k - 1]
            pick = [i] + others
            w = softmax(ts[i, pick] / tau)
            total += -(w * (lg[i, pick] - logsumexp(lg[i]))).sum() / len(lg)
    return total / 2


@pytest.mark.parametrize("b,k", [(256, 5), (256, 9), (64, 16), (10, 2)])
def test_soft_infonce_matches_numpy_reference(b, k):
    # b = 256, k = 5 takes ATen's fast top-k path, k = 9 its other algorithm: both must agree
    g = torch.Generator().manual_seed(b + k)
    sa, sv, ta, tv = (torch.randn(b, 16, generator=g, dtype=torch.float64) for _ in range(4))
    got = L.soft_infonce(sa, sv, ta, tv, k=k, temperature=0.2)
    want = _soft_infonce_numpy(*(x.numpy() for x in (sa, sv, ta, tv)), k, 0.2)
    assert float(got) == pytest.approx(want, rel=1e-10)
