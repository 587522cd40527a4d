"""Closed-form linear CCA against scipy's generalised eigenproblem and closed-form cases."""
import numpy as np
import pytest
import scipy.linalg

from hscmae.cca import fit_linear_cca


def _scipy_correlations(x, y, reg):
    x, y = x - x.mean(0), y - y.mean(0)
    n, dx, dy = len(x), x.shape[1], y.shape[1]
    cxx = x.T @ x / (n - 1) + reg * np.eye(dx)
    cyy = y.T @ y / (n - 1) + reg * np.eye(dy)
    cxy = x.T @ y / (n - 1)
    a = np.block([[np.zeros((dx, dx)), cxy], [cxy.T, np.zeros((dy, dy))]])
    return np.sort(scipy.linalg.eigh(a, scipy.linalg.block_diag(cxx, cyy), eigvals_only=True))[::-1]


def test_correlations_match_generalised_eigenproblem():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 3))
    x = np.hstack([z, rng.normal(size=(500, 4))]) @ rng.normal(size=(7, 7))
    y = np.hstack([z + 0.5 * rng.normal(size=(500, 3)), rng.normal(size=(500, 2))]) @ rng.normal(size=(5, 5))
    cca = fit_linear_cca(x, y, 4, reg=1e-3)
    np.testing.assert_allclose(cca.correlations, _scipy_correlations(x, y, 1e-3)[:4], atol=1e-8)


def test_projections_are_white_and_diagonally_correlated():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 6))
    y = x[:, :4] @ rng.normal(size=(4, 5)) + rng.normal(size=(2000, 5))
    cca = fit_linear_cca(x, y, 4, reg=0.0)
    px, py = cca.transform_x(x).astype(np.float64), cca.transform_y(y).astype(np.float64)
    n = len(x)
    np.testing.assert_allclose(px.T @ px / (n - 1), np.eye(4), atol=1e-4)
    np.testing.assert_allclose(py.T @ py / (n - 1), np.eye(4), atol=1e-4)
    np.testing.assert_allclose(px.T @ py / (n - 1), np.diag(cca.correlations), atol=1e-4)


def test_closed_form_extremes():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 5))
    exact = fit_linear_cca(x, x @ rng.normal(size=(5, 5)), 5, reg=0.0)  # invertible map: rho = 1
    np.testing.assert_allclose(exact.correlations, 1.0, atol=1e-6)
    indep = fit_linear_cca(x, rng.normal(size=(400, 5)), 5, reg=0.0)  # independent: rho ~ 0
    assert indep.correlations.max() < 0.3


def test_bad_arguments():
    with pytest.raises(ValueError, match="dim"):
        fit_linear_cca(np.zeros((10, 3)), np.zeros((10, 2)), 3)
    with pytest.raises(ValueError, match="same rows"):
        fit_linear_cca(np.zeros((10, 3)), np.zeros((9, 3)), 1)
