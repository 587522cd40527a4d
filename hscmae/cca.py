"""Linear CCA in closed form (whitening + SVD), used at test time on learned embeddings and as the
raw-feature baseline. Not an iterative solver: one eigendecomposition per view and one SVD."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LinearCCA:
    mean_x: np.ndarray
    mean_y: np.ndarray
    wx: np.ndarray  # (dx, dim)
    wy: np.ndarray  # (dy, dim)
    correlations: np.ndarray  # (dim,), descending

    def transform_x(self, x) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean_x) @ self.wx).astype(np.float32)

    def transform_y(self, y) -> np.ndarray:
        return ((np.asarray(y, dtype=np.float64) - self.mean_y) @ self.wy).astype(np.float32)


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T


def fit_linear_cca(x, y, dim: int, reg: float = 1e-3) -> LinearCCA:
    """Top-`dim` canonical directions of (x, y), rows paired. `reg` is a ridge added to each
    covariance (plain reg * I; features here are standardised or embeddings of unit-ish scale),
    which keeps the whitening finite when n is small next to the dimension."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"linear CCA needs two 2-D arrays with the same rows, got {x.shape} and {y.shape}")
    if len(x) < 2:
        raise ValueError(f"linear CCA needs at least 2 samples, got {len(x)}")
    if not 1 <= dim <= min(x.shape[1], y.shape[1]):
        raise ValueError(f"linear CCA dim must be in [1, {min(x.shape[1], y.shape[1])}], got {dim}")
    mx, my = x.mean(0), y.mean(0)
    x, y = x - mx, y - my
    n = len(x)
    kx = _inv_sqrt(x.T @ x / (n - 1) + reg * np.eye(x.shape[1]))
    ky = _inv_sqrt(y.T @ y / (n - 1) + reg * np.eye(y.shape[1]))
    u, s, vt = np.linalg.svd(kx @ (x.T @ y / (n - 1)) @ ky)
    return LinearCCA(mx, my, kx @ u[:, :dim], ky @ vt[:dim].T, s[:dim])
