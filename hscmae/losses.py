"""HSC-MAE's loss terms as pure functions of tensors (no module state)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_recon_loss(recon: torch.Tensor, clean: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """MSE on the masked entries only, as in MAE: reconstructing the entries the encoder saw is an
    identity shortcut, predicting the hidden ones from the rest is what teaches conditional
    sufficiency. With nothing masked (mask_ratio 0) it falls back to every entry (a plain AE).
    `hidden` is a bool or 0/1 float mask of the masked entries."""
    # float64 sum: exact for any size, and ~20x faster than count_nonzero on a float mask
    n = hidden.sum(dtype=torch.float64) if hidden.is_floating_point() else torch.count_nonzero(hidden)
    err = (recon - clean) * hidden
    if recon.device.type != "cpu":
        # reading n on the host would stall an accelerator every step; choose on the device instead
        # (n is exact in float32 below 2^24 masked entries per batch)
        return torch.where(n > 0, (err * err).sum() / n.clamp_min(1).to(recon.dtype), (recon - clean).pow(2).mean())
    if int(n) == 0:  # on the CPU the read is free, and the unused branch is not computed
        return (recon - clean).pow(2).mean()
    return (err * err).sum() / int(n)


class _TopCanonicalCorrelations(torch.autograd.Function):
    """Sum of the top-k canonical correlations of (h1, h2) with its closed-form gradient.

    Forward: whiten with Cholesky factors, T = L1^-1 S12 L2^-T, top-k eigenpairs of T^T T.
    Backward (Andrew et al. 2013, restricted to the top k): with T = U D V^T, A = L1^-T U_k and
    B = L2^-T V_k, dsum/dH1 = (H2c B - H1c A D_k) A^T / (b - 1) and symmetrically for H2. This
    replaces autograd's path back through eigvalsh, two triangular solves and two Cholesky
    factorisations (about 2 ms of a 36 ms step at batch 256); it is checked against finite
    differences in tests/test_losses.py. The columns already have zero mean, so the gradient
    through the centring is the same expression.
    """

    @staticmethod
    def forward(ctx, h1, h2, k, reg):
        b, d = h1.shape
        x1 = h1.double()
        x1 = x1 - x1.mean(0)
        x2 = h2.double()
        x2 = x2 - x2.mean(0)
        eye = torch.eye(d, dtype=torch.float64, device=h1.device)
        l1, bad1 = _cholesky(torch.addmm(eye, x1.T, x1, beta=reg, alpha=1.0 / (b - 1)))
        l2, bad2 = _cholesky(torch.addmm(eye, x2.T, x2, beta=reg, alpha=1.0 / (b - 1)))
        t = torch.linalg.solve_triangular(l1, x1.T @ x2 / (b - 1), upper=False)  # L1^-1 S12
        t = torch.linalg.solve_triangular(l2, t.T, upper=False).T  # ... L2^-T
        eig, vecs = torch.linalg.eigh(t.T @ t)  # ascending
        live = eig[-k:] > 1e-12  # a zero correlation contributes no gradient (and no 0/0)
        corr = eig[-k:].clamp_min(1e-12).sqrt()
        v = vecs[:, -k:] * live
        u = t @ v / corr
        a = torch.linalg.solve_triangular(l1.T, u, upper=True)
        bb = torch.linalg.solve_triangular(l2.T, v, upper=True)
        ctx.save_for_backward(x1, x2, a, bb, corr)
        if bad1 is None:
            return corr.sum()
        # a failed factorisation makes the loss NaN, which the step's finiteness check reports
        return torch.where(bad1 | bad2, torch.nan, corr.sum())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x1, x2, a, bb, corr = ctx.saved_tensors
        xa, xb = x1 @ a, x2 @ bb
        scale = grad.double() / (x1.shape[0] - 1)
        g1 = (xb - xa * corr) @ a.T * scale
        g2 = (xa - xb * corr) @ bb.T * scale
        return g1, g2, None, None


def _cholesky(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(L, failed). On the CPU, linalg.cholesky raises LinAlgError on a matrix that is not
    positive definite (failed is None); on an accelerator that check is a host read every call,
    so cholesky_ex returns the failure as a device tensor instead."""
    if a.device.type == "cpu":
        return torch.linalg.cholesky(a), None
    l, info = torch.linalg.cholesky_ex(a)
    return l, info != 0


def dcca_loss(h1: torch.Tensor, h2: torch.Tensor, k: int, reg: float = 1e-3) -> torch.Tensor:
    """k minus the sum of the top-k canonical correlations between h1 and h2 (batch x d each).

    Computed in float64: the whitening is ill-conditioned in float32. The ridge `reg` keeps the
    covariances invertible when the batch is small next to d (their rank is <= b - 1).
    Canonical correlations are the singular values of W1 S12 W2^T for any whitening W S W^T = I,
    so we whiten with Cholesky factors (triangular solves) rather than symmetric inverse square
    roots: the eigenvector gradient of the latter divides by eigenvalue gaps, which are exactly
    zero when b < d (many eigenvalues equal the ridge), and training diverges to NaN. The top-k
    correlations are square roots of the top-k eigenvalues of T^T T (Andrew et al. 2013), whose
    closed-form gradient (see _TopCanonicalCorrelations) needs no gaps. The constant k makes the
    loss >= 0, which learned loss weighting needs (log-variance weighting drives the weight of a
    negative term to infinity); it does not change the gradient.
    """
    b, d = h1.shape
    if b <= k:
        raise ValueError(f"DCCA needs batch size > cca_dim, got batch {b} and cca_dim {k}")
    return (k - _TopCanonicalCorrelations.apply(h1, h2, k, reg)).to(h1.dtype)


def cosine_sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def _topk_soft_positives(teacher_sim: torch.Tensor, k: int, temperature: float,
                         pair_positive: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights), both b x k: the clip's own pair plus the teacher's k-1 nearest other
    clips (pair_positive=False: the k nearest others, the pair left out as in the official code),
    weighted by a softmax of the teacher's similarities / temperature over those k."""
    if not pair_positive:
        pick = teacher_sim.clone().fill_diagonal_(float("-inf")).topk(k, dim=1).indices
        return pick, (teacher_sim.gather(1, pick) / temperature).softmax(dim=1)
    own = torch.arange(teacher_sim.shape[0], device=teacher_sim.device).unsqueeze(1)
    if k == 1:
        pick = own
    else:
        # mine k - 1 others with the pair masked out, rather than top k with the pair forced first:
        # the same picks, and ATen's topk is ~5x faster while (k - 1) * 64 <= columns (at batch 256,
        # k = 5: 0.09 ms against 0.44 ms per call; it switches algorithm above that)
        others = teacher_sim.clone().fill_diagonal_(float("-inf")).topk(k - 1, dim=1).indices
        pick = torch.cat([own, others], dim=1)
    return pick, (teacher_sim.gather(1, pick) / temperature).softmax(dim=1)


def soft_topk_targets(teacher_sim: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """Soft positives per row as a dense b x b target (the weights of _topk_soft_positives
    scattered into place, zero elsewhere).

    The pair is always a positive because pairing is the only supervision there is; the teacher
    adds the neighbours it is confident of (multi-event clips share content with several others).
    With k = 1 the target is the pair alone, so the loss is ordinary InfoNCE.
    """
    pick, w = _topk_soft_positives(teacher_sim, k, temperature)
    return torch.zeros_like(teacher_sim).scatter_(1, pick, w)


def teacher_affinity(teacher_a: torch.Tensor, teacher_v: torch.Tensor, affinity: str = "cross") -> torch.Tensor:
    """The b x b similarity the teacher mines neighbours from: "cross" = cos(a_i, v_j) (row i is
    audio clip i against every visual clip); "fused" = cos(f_i, f_j) of the fused clip embeddings
    f = (a/|a| + v/|v|) / 2 (the official code's z_fused_t; symmetric, so both directions share it)."""
    if affinity == "fused":
        f = (F.normalize(teacher_a, dim=1) + F.normalize(teacher_v, dim=1)) / 2
        return cosine_sim(f, f)
    return cosine_sim(teacher_a, teacher_v)


def soft_infonce(student_a: torch.Tensor, student_v: torch.Tensor, teacher_a: torch.Tensor,
                 teacher_v: torch.Tensor, k: int, temperature: float, affinity: str = "cross",
                 pair_positive: bool = True) -> torch.Tensor:
    """Soft multi-positive InfoNCE in both directions (audio->visual and visual->audio).

    Student logits are its cross-modal cosine similarities / temperature; targets are mined from
    the teacher's clean similarities (`teacher_affinity`; no gradient flows into them). The loss
    gathers the k target entries of each row rather than multiplying a dense b x b target.
    pair_positive=False leaves the clip's own pair out of both the positives and the softmax's
    denominator (its logit is -inf), as the official code's loss does."""
    logits = cosine_sim(student_a, student_v) / temperature
    if not pair_positive:
        logits = logits.masked_fill(torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device), float("-inf"))
    with torch.no_grad():
        t_sim = teacher_affinity(teacher_a, teacher_v, affinity)
        pick_a2v, w_a2v = _topk_soft_positives(t_sim, k, temperature, pair_positive)
        pick_v2a, w_v2a = _topk_soft_positives(t_sim.T, k, temperature, pair_positive)
    loss_a2v = -(w_a2v * logits.log_softmax(dim=1).gather(1, pick_a2v)).sum(1).mean()
    loss_v2a = -(w_v2a * logits.T.log_softmax(dim=1).gather(1, pick_v2a)).sum(1).mean()
    return (loss_a2v + loss_v2a) / 2


def cross_recon_loss(recon_a2v: torch.Tensor, clean_v: torch.Tensor, recon_v2a: torch.Tensor,
                     clean_a: torch.Tensor) -> torch.Tensor:
    """Cross-modal reconstruction (the official `loss_cross`): MSE over every entry of the visual
    input decoded from the audio embedding and of the audio input decoded from the visual one,
    averaged over the two directions (the official code sums them; a constant factor that the
    learned weighting absorbs). Every entry, not only masked ones: the other modality's input was
    never shown to the encoder, so there is no identity shortcut to exclude."""
    return (F.mse_loss(recon_a2v, clean_v) + F.mse_loss(recon_v2a, clean_a)) / 2


def distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine between the student's (masked-input) and the teacher's (clean-input) embedding of
    the same clip: the student must land where the stable teacher puts the whole clip."""
    return (1 - F.cosine_similarity(student, teacher.detach(), dim=1)).mean()


def weighted_total(losses: dict[str, torch.Tensor], log_vars: dict[str, torch.Tensor] | None,
                   fixed: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """Combine loss terms. Learned (Kendall et al. 2018, homoscedastic uncertainty): sum of
    exp(-s_i) L_i + s_i with s_i learned; else sum of fixed w_i L_i. Returns (total, weights);
    a learned weight is a detached 0-d tensor on the losses' device (reading it on the host every
    step would stall an accelerator), a fixed one the float it was given."""
    total = torch.zeros((), device=next(iter(losses.values())).device if losses else None)
    weights: dict[str, torch.Tensor | float] = {}
    for name, value in losses.items():
        if log_vars is not None:
            s = log_vars[name]
            total = total + torch.exp(-s) * value + s
            weights[name] = torch.exp(-s.detach())
        else:
            total = total + fixed[name] * value
            weights[name] = fixed[name]
    return total, weights
