"""Linear CCA in closed form (whitening + SVD), used at test time on learned embeddings and as the
raw-feature baseline. Not an iterative solver: one eigendecomposition per view and one SVD.

With Cxx, Cyy the (ridged) covariances and Cxy the cross-covariance, the canonical correlations are
the singular values of T = Cxx^-1/2 Cxy Cyy^-1/2 = U S V^T, and the projections are
Wx = Cxx^-1/2 U, Wy = Cyy^-1/2 V: the projected views then have identity covariance and a diagonal
cross-covariance S.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _matrix(a, name: str) -> np.ndarray:
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a)  # torch tensors too
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (samples x features), got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return a


# The grid every linear CCA in this project is chosen from, on validation: the raw-feature baseline
# and the test-time CCA on learned embeddings get the same one, so neither protocol is favoured.
CCA_REGS = (1e-3, 1e-2, 1e-1, 1.0, 3.0, 10.0)
CCA_DIMS = (8, 16, 24, 32, 48, 64, 96, 128)


@dataclass
class LinearCCA:
    mean_x: np.ndarray  # (dx,)
    mean_y: np.ndarray  # (dy,)
    Wx: np.ndarray  # (dx, dim)
    Wy: np.ndarray  # (dy, dim)
    correlations: np.ndarray  # (dim,), descending

    def transform_x(self, X) -> np.ndarray:
        return self._project(_matrix(X, "X"), self.mean_x, self.Wx, "X")

    def transform_y(self, Y) -> np.ndarray:
        return self._project(_matrix(Y, "Y"), self.mean_y, self.Wy, "Y")

    @staticmethod
    def _project(a, mean, w, name) -> np.ndarray:
        if a.shape[1] != len(mean):
            raise ValueError(f"{name}: expected {len(mean)} features (as fitted), got {a.shape[1]}")
        return ((a - mean) @ w).astype(np.float32)


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    """Symmetric C^-1/2. Directions with (numerically) zero variance get weight 0 rather than an
    enormous one, so reg=0 on rank-deficient data projects onto the span instead of onto noise."""
    w, v = np.linalg.eigh(c)
    keep = w > max(w.max(), 0.0) * len(w) * np.finfo(np.float64).eps
    inv = np.zeros_like(w)
    inv[keep] = 1.0 / np.sqrt(w[keep])
    return (v * inv) @ v.T


def fit_linear_cca(X, Y, dim: int, reg: float = 1e-3) -> LinearCCA:
    """Top-`dim` canonical directions of (X, Y), rows paired.

    `reg` is a ridge added to each covariance as plain reg * I. The features this sees are either
    standardised (unit variance) or embeddings of fixed scale, so an absolute ridge is predictable;
    it keeps the whitening finite when n is small next to the dimension. The default, 1e-3, is what
    hscmae.protocol's test-time CCA relies on."""
    X, Y = _matrix(X, "X"), _matrix(Y, "Y")
    if len(X) != len(Y):
        raise ValueError(f"linear CCA needs paired rows: X has {len(X)} rows, Y has {len(Y)}")
    if len(X) < 2:
        raise ValueError(f"linear CCA needs at least 2 samples, got {len(X)}")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= min(X.shape[1], Y.shape[1]):
        raise ValueError(f"linear CCA dim must be an integer in [1, {min(X.shape[1], Y.shape[1])}], got {dim!r}")
    if not (np.isfinite(reg) and reg >= 0):
        raise ValueError(f"linear CCA reg must be finite and >= 0, got {reg!r}")
    mx, my = X.mean(0), Y.mean(0)
    X, Y = X - mx, Y - my
    n = len(X)
    kx = _inv_sqrt(X.T @ X / (n - 1) + reg * np.eye(X.shape[1]))
    ky = _inv_sqrt(Y.T @ Y / (n - 1) + reg * np.eye(Y.shape[1]))
    u, s, vt = np.linalg.svd(kx @ (X.T @ Y / (n - 1)) @ ky)
    return LinearCCA(mx, my, kx @ u[:, :dim], ky @ vt[:dim].T, s[:dim])
