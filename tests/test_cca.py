"""Closed-form linear CCA against scipy's generalised eigenproblem, scikit-learn's iterative CCA and
data built to have known canonical correlations."""
import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.cross_decomposition import CCA

from hscmae.cca import CCA_DIMS, CCA_REGS, fit_linear_cca

from conftest import map_by_hand


def _scipy_correlations(x, y, reg):
    """Independent: [0 Cxy; Cyx 0] v = rho [Cxx 0; 0 Cyy] v; its top eigenvalues are the correlations."""
    x, y = x - x.mean(0), y - y.mean(0)
    n, dx, dy = len(x), x.shape[1], y.shape[1]
    cxx = x.T @ x / (n - 1) + reg * np.eye(dx)
    cyy = y.T @ y / (n - 1) + reg * np.eye(dy)
    cxy = x.T @ y / (n - 1)
    a = np.block([[np.zeros((dx, dx)), cxy], [cxy.T, np.zeros((dy, dy))]])
    return scipy.linalg.eigh(a, scipy.linalg.block_diag(cxx, cyy), eigvals_only=True)[::-1]


def _shared_latent_views(rng, n=500):
    z = rng.normal(size=(n, 3))
    x = np.hstack([z, rng.normal(size=(n, 4))]) @ rng.normal(size=(7, 7))
    y = np.hstack([z + 0.5 * rng.normal(size=(n, 3)), rng.normal(size=(n, 2))]) @ rng.normal(size=(5, 5))
    return x, y


@pytest.mark.parametrize("reg", [0.0, 1e-3, 0.5])
def test_correlations_match_generalised_eigenproblem(reg):
    x, y = _shared_latent_views(np.random.default_rng(0))
    cca = fit_linear_cca(x, y, 4, reg=reg)
    np.testing.assert_allclose(cca.correlations, _scipy_correlations(x, y, reg)[:4], rtol=0, atol=1e-8)
    assert np.all(np.diff(cca.correlations) <= 0)


def test_directions_match_sklearn_cca():
    # sklearn's CCA is iterative (NIPALS) and scales the data; its score columns must span the same
    # canonical variates as ours, up to sign
    rng = np.random.default_rng(3)
    x, y = _shared_latent_views(rng, n=2000)
    ours = fit_linear_cca(x, y, 3, reg=0.0)
    ref = CCA(n_components=3, max_iter=2000, tol=1e-10).fit(x, y)
    rx, ry = ref.transform(x, y)
    px, py = ours.transform_x(x), ours.transform_y(y)
    for k in range(3):
        assert np.corrcoef(rx[:, k], ry[:, k])[0, 1] == pytest.approx(ours.correlations[k], abs=1e-5)
        assert abs(np.corrcoef(px[:, k], rx[:, k])[0, 1]) == pytest.approx(1.0, abs=1e-5)
        assert abs(np.corrcoef(py[:, k], ry[:, k])[0, 1]) == pytest.approx(1.0, abs=1e-5)


def test_exact_correlations_by_construction():
    # Columns of E are centred and orthonormal (times sqrt(n-1)): sample covariance exactly I.
    # X = E1 A and Y = (rho * E1[:, :3] + sqrt(1 - rho^2) * E2, E3) B with A, B invertible: the sample
    # canonical correlations are exactly rho, then 0.
    rng = np.random.default_rng(4)
    n, rho = 300, np.array([0.9, 0.5, 0.2])
    m = rng.normal(size=(n, 10))
    e = np.linalg.qr(m - m.mean(0))[0] * np.sqrt(n - 1)
    x = e[:, :4] @ rng.normal(size=(4, 4))
    y = np.hstack([rho * e[:, :3] + np.sqrt(1 - rho**2) * e[:, 4:7], e[:, 7:9]]) @ rng.normal(size=(5, 5))
    cca = fit_linear_cca(x + 5.0, y - 3.0, 4, reg=0.0)  # offsets: the fit must centre
    np.testing.assert_allclose(cca.correlations, [0.9, 0.5, 0.2, 0.0], atol=1e-9)


def test_projections_are_white_and_diagonally_correlated():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 6)) + 2.0
    y = x[:, :4] @ rng.normal(size=(4, 5)) + rng.normal(size=(2000, 5))
    cca = fit_linear_cca(x, y, 4, reg=0.0)
    px, py = cca.transform_x(x), cca.transform_y(y)
    assert px.dtype == np.float32 and px.shape == (2000, 4) and py.shape == (2000, 4)
    px, py = px.astype(np.float64), py.astype(np.float64)
    np.testing.assert_allclose(px.mean(0), 0, atol=1e-5)
    n = len(x)
    np.testing.assert_allclose(px.T @ px / (n - 1), np.eye(4), atol=1e-4)
    np.testing.assert_allclose(py.T @ py / (n - 1), np.eye(4), atol=1e-4)
    np.testing.assert_allclose(px.T @ py / (n - 1), np.diag(cca.correlations), atol=1e-4)


def test_closed_form_extremes():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2000, 5))
    exact = fit_linear_cca(x, x @ rng.normal(size=(5, 5)), 5, reg=0.0)  # invertible map: rho = 1
    np.testing.assert_allclose(exact.correlations, 1.0, atol=1e-9)
    indep = fit_linear_cca(x, rng.normal(size=(2000, 5)), 5, reg=0.0)  # independent: rho ~ 0
    assert indep.correlations.max() < 0.15


def test_rank_deficient_views_without_ridge():
    # a duplicated column makes Cxx singular; with reg=0 the result must equal the CCA of the
    # de-duplicated view rather than blow up on the zero-variance direction
    x, y = _shared_latent_views(np.random.default_rng(5))
    dup = np.hstack([x, x[:, :1]])
    cca = fit_linear_cca(dup, y, 4, reg=0.0)
    np.testing.assert_allclose(cca.correlations, _scipy_correlations(x, y, 0.0)[:4], atol=1e-6)
    px = cca.transform_x(dup).astype(np.float64)
    np.testing.assert_allclose(px.T @ px / (len(px) - 1), np.eye(4), atol=1e-6)


def test_constant_feature_is_ignored_not_amplified():
    # zero variance in training: that direction gets weight 0, so a test row whose constant feature
    # moves projects as if the feature were absent (a floored inverse would multiply it by ~1e6)
    x, y = _shared_latent_views(np.random.default_rng(7))
    with_const = np.hstack([x, np.full((len(x), 1), 3.0)])
    cca, plain = fit_linear_cca(with_const, y, 4, reg=0.0), fit_linear_cca(x, y, 4, reg=0.0)
    np.testing.assert_allclose(cca.correlations, plain.correlations, atol=1e-9)
    moved = np.hstack([x[:5], np.full((5, 1), -7.0)])
    np.testing.assert_allclose(np.abs(cca.transform_x(moved)), np.abs(plain.transform_x(x[:5])), atol=1e-4)


def test_torch_inputs():
    x, y = _shared_latent_views(np.random.default_rng(6), n=200)
    a = fit_linear_cca(torch.tensor(x, requires_grad=True), torch.tensor(y), 3)
    np.testing.assert_allclose(a.correlations, fit_linear_cca(x, y, 3).correlations, atol=1e-12)
    np.testing.assert_allclose(a.transform_x(torch.tensor(x)), a.transform_x(x), atol=0)


def test_bad_arguments():
    z = np.zeros
    with pytest.raises(ValueError, match="dim"):
        fit_linear_cca(z((10, 3)), z((10, 2)), 3)
    with pytest.raises(ValueError, match="dim"):
        fit_linear_cca(z((10, 3)), z((10, 2)), 0)
    with pytest.raises(ValueError, match="paired rows"):
        fit_linear_cca(z((10, 3)), z((9, 3)), 1)
    with pytest.raises(ValueError, match="at least 2 samples"):
        fit_linear_cca(z((1, 3)), z((1, 3)), 1)
    with pytest.raises(ValueError, match="X: expected a 2-D"):
        fit_linear_cca(z(10), z((10, 3)), 1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_linear_cca(np.full((10, 3), np.inf), z((10, 3)), 1)
    with pytest.raises(ValueError, match="reg"):
        fit_linear_cca(z((10, 3)), z((10, 3)), 1, reg=-1.0)
    cca = fit_linear_cca(np.random.default_rng(0).normal(size=(10, 3)), np.random.default_rng(1).normal(size=(10, 2)), 1)
    with pytest.raises(ValueError, match="expected 3 features"):
        cca.transform_x(z((4, 2)))


def _sklearn_map(a, v, labels):
    """Mean of a->v and v->a mAP with cosine scores, by sklearn, one query at a time."""
    from sklearn.metrics import average_precision_score

    def one_way(q, g):
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        s = q @ g.T
        return np.mean([average_precision_score(labels == labels[i], s[i]) for i in range(len(q))])

    return (one_way(a, v) + one_way(v, a)) / 2


def _grid_by_brute_force(za, zv, data, regs, dims, cache=None):
    """Every grid point fitted afresh at its own dimension, scored by hand: {(reg, dim): (val, test)};
    the first point also by sklearn, which must agree. `cache`: the points scored so far."""
    tr = data.splits["train"]
    out, cache = {}, cache if cache is not None else {}
    for reg in regs:
        for dim in dims:
            if (reg, dim) not in cache:
                cca = fit_linear_cca(za[tr], zv[tr], dim, reg)
                pa, pv = cca.transform_x(za), cca.transform_y(zv)
                cache[(reg, dim)] = tuple(
                    map_by_hand(pa[data.splits[s]], pv[data.splits[s]], data.labels[data.splits[s]])
                    for s in ("val", "test"))
                if len(cache) == 1:  # the reference itself, against scikit-learn
                    for i, s in enumerate(("val", "test")):
                        idx = data.splits[s]
                        assert cache[(reg, dim)][i] == pytest.approx(
                            _sklearn_map(pa[idx], pv[idx], data.labels[idx]), abs=1e-9)
            out[(reg, dim)] = cache[(reg, dim)]
    return out


def test_final_evaluation_chooses_the_test_time_cca_on_validation_only():
    import dataclasses

    from hscmae.config import Config
    from hscmae.data import load_data
    from hscmae.protocol import best_linear_cca, held_scores, protocol_scores

    data = load_data("synthetic:tiny")
    rng = np.random.default_rng(1)  # stand-ins for learned embeddings: noisy random maps of the features
    za = np.tanh(data.audio @ rng.normal(size=(32, 24)) / 4) + 0.5 * rng.normal(size=(len(data), 24))
    zv = np.tanh(data.visual @ rng.normal(size=(64, 24)) / 6) + 0.5 * rng.normal(size=(len(data), 24))
    za, zv = za.astype(np.float32), zv.astype(np.float32)
    regs, dims = (1e-3, 1.0, 10.0), (4, 8, 16, 24)
    scored = {}
    grid = _grid_by_brute_force(za, zv, data, regs, dims, scored)
    by_val = max(grid, key=lambda k: grid[k][0])
    by_test = max(grid, key=lambda k: grid[k][1])
    assert by_val != by_test  # the fixture must be able to tell a choice made on test apart

    val, reg, dim, pa, pv = best_linear_cca(za, zv, data, regs, dims)
    assert (reg, dim) == by_val and val == pytest.approx(grid[by_val][0], abs=1e-6)

    # through protocol_scores with the project's grid: "on" reports the val-chosen point's test score
    full = _grid_by_brute_force(za, zv, data, CCA_REGS, [d for d in CCA_DIMS if d <= 24], scored)
    choice = max(full, key=lambda k: full[k][0])
    # ... and the fixture tells that choice apart from one made on test and from the fixed CCA
    assert choice != max(full, key=lambda k: full[k][1]) and choice != (1e-3, 24)
    out = protocol_scores(za, zv, data, dataclasses.replace(Config(embed_dim=24), test_cca="on"), splits=("val", "test"))
    assert (out["test_cca_reg"], out["test_cca_dim"]) == choice
    assert out["test_map"] == pytest.approx(full[choice][1], abs=1e-6)
    # an earlier choice kept (fit's epochs between choice epochs): refitted, scored, never re-chosen
    held = held_scores(za, zv, data, dataclasses.replace(Config(embed_dim=24), test_cca="on"), (3.0, 8),
                       splits=("val", "test"))
    assert (held["test_cca_reg"], held["test_cca_dim"]) == (3.0, 8) and held["test_cca"] == 1.0
    assert held["val_map"] == pytest.approx(full[(3.0, 8)][0], abs=1e-6)
    assert held["test_map"] == pytest.approx(full[(3.0, 8)][1], abs=1e-6)
    # regs narrows the grid to one ridge: the dimension is still chosen on validation
    sweep = {k: v for k, v in full.items() if k[0] == 1e-3}
    out = protocol_scores(za, zv, data, dataclasses.replace(Config(embed_dim=24), test_cca="on"), splits=("val",),
                          regs=(1e-3,))
    assert (out["test_cca_reg"], out["test_cca_dim"]) == max(sweep, key=lambda k: sweep[k][0]) and "test_map" not in out
    assert out["val_map"] == pytest.approx(max(v[0] for v in sweep.values()), abs=1e-6)
