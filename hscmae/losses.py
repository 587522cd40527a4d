"""HSC-MAE's loss terms as pure functions of tensors (no module state)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_recon_loss(recon: torch.Tensor, clean: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """MSE on the masked entries only, as in MAE: reconstructing the entries the encoder saw is an
    identity shortcut, predicting the hidden ones from the rest is what teaches conditional
    sufficiency. With nothing masked (mask_ratio 0) it falls back to every entry (a plain AE)."""
    err = (recon - clean).pow(2)
    n = hidden.sum()
    if n == 0:
        return err.mean()
    return (err * hidden).sum() / n


def dcca_loss(h1: torch.Tensor, h2: torch.Tensor, k: int, reg: float = 1e-3) -> torch.Tensor:
    """k minus the sum of the top-k canonical correlations between h1 and h2 (batch x d each).

    Computed in float64: the whitening is ill-conditioned in float32. The ridge `reg` keeps the
    covariances invertible when the batch is small next to d (their rank is <= b - 1).
    Canonical correlations are the singular values of W1 S12 W2^T for any whitening W S W^T = I,
    so we whiten with Cholesky factors (triangular solves) rather than symmetric inverse square
    roots: the eigenvector gradient of the latter divides by eigenvalue gaps, which are exactly
    zero when b < d (many eigenvalues equal the ridge), and training diverges to NaN. The top-k
    correlations are square roots of the top-k eigenvalues of T^T T (Andrew et al. 2013), whose
    gradient needs no gaps. The constant k makes the loss >= 0, which learned loss weighting needs
    (log-variance weighting drives the weight of a negative term to infinity); it does not change
    the gradient.
    """
    b, d = h1.shape
    dtype = h1.dtype
    if b <= k:
        raise ValueError(f"DCCA needs batch size > cca_dim, got batch {b} and cca_dim {k}")
    h1 = h1.double() - h1.double().mean(0)
    h2 = h2.double() - h2.double().mean(0)
    eye = torch.eye(d, dtype=torch.float64)
    l1 = torch.linalg.cholesky(h1.T @ h1 / (b - 1) + reg * eye)
    l2 = torch.linalg.cholesky(h2.T @ h2 / (b - 1) + reg * eye)
    s12 = h1.T @ h2 / (b - 1)
    t = torch.linalg.solve_triangular(l1, s12, upper=False)  # L1^-1 S12
    t = torch.linalg.solve_triangular(l2, t.T, upper=False).T  # ... L2^-T
    eig = torch.linalg.eigvalsh(t.T @ t)  # ascending
    corr = eig[-k:].clamp_min(1e-12).sqrt()
    return (k - corr.sum()).to(dtype)


def cosine_sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def soft_topk_targets(teacher_sim: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """Soft positives per row: the clip's own pair plus the teacher's k-1 nearest other clips,
    weighted by a softmax of the teacher's similarities over those k; zero elsewhere.

    The pair is always a positive because pairing is the only supervision there is; the teacher
    adds the neighbours it is confident of (multi-event clips share content with several others).
    With k = 1 the target is the pair alone, so the loss is ordinary InfoNCE.
    """
    b = teacher_sim.shape[0]
    diag = torch.eye(b, dtype=torch.bool, device=teacher_sim.device)
    pick = teacher_sim.masked_fill(diag, float("inf")).topk(k, dim=1).indices
    logits = torch.full_like(teacher_sim, float("-inf"))
    logits.scatter_(1, pick, teacher_sim.gather(1, pick) / temperature)
    return logits.softmax(dim=1)


def soft_infonce(student_a: torch.Tensor, student_v: torch.Tensor, teacher_a: torch.Tensor,
                 teacher_v: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """Soft multi-positive InfoNCE in both directions (audio->visual and visual->audio).

    Student logits are its cross-modal cosine similarities / temperature; targets are mined from
    the teacher's clean cross-modal similarities (no gradient flows into them)."""
    logits = cosine_sim(student_a, student_v) / temperature
    with torch.no_grad():
        t_sim = cosine_sim(teacher_a, teacher_v)
        target_a2v = soft_topk_targets(t_sim, k, temperature)
        target_v2a = soft_topk_targets(t_sim.T, k, temperature)
    loss_a2v = -(target_a2v * logits.log_softmax(dim=1)).sum(1).mean()
    loss_v2a = -(target_v2a * logits.T.log_softmax(dim=1)).sum(1).mean()
    return (loss_a2v + loss_v2a) / 2


def distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine between the student's (masked-input) and the teacher's (clean-input) embedding of
    the same clip: the student must land where the stable teacher puts the whole clip."""
    return (1 - F.cosine_similarity(student, teacher.detach(), dim=1)).mean()


def weighted_total(losses: dict[str, torch.Tensor], log_vars: dict[str, torch.Tensor] | None,
                   fixed: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Combine loss terms. Learned (Kendall et al. 2018, homoscedastic uncertainty): sum of
    exp(-s_i) L_i + s_i with s_i learned; else sum of fixed w_i L_i. Returns (total, weights)."""
    total = torch.zeros(())
    weights = {}
    for name, value in losses.items():
        if log_vars is not None:
            s = log_vars[name]
            total = total + torch.exp(-s) * value + s
            weights[name] = float(torch.exp(-s.detach()))
        else:
            total = total + fixed[name] * value
            weights[name] = fixed[name]
    return total, weights
