"""Every val_map a trial reports follows the final evaluation's protocol: the test-time CCA (raw or
CCA, ridge, dimension) chosen on validation at the first epoch, at ASHA's rungs and at the last;
the epochs between keep the latest choice, refitted on their own embeddings.

The reference is independent of hscmae.cca / hscmae.metrics: canonical directions from scipy's
generalised symmetric eigenproblem, mAP from scikit-learn one query at a time.
"""
import dataclasses

import numpy as np
import pytest
import scipy.linalg
from sklearn.metrics import average_precision_score

from hscmae import train as T
from hscmae.cca import CCA_DIMS, CCA_REGS
from hscmae.config import config_from_dict

from conftest import map_by_hand

D = 32  # fixture embedding width; the old per-epoch CCA used dim min(embed_dim, 64) = 32
TINY = dict(data="synthetic:tiny", hidden_dim=32, embed_dim=D, cca_dim=4, top_k=3, batch_size=64,
            epochs=4, threads=1, test_cca="auto")


def _embeddings(data, kind: str):
    """Stand-ins for two trained models' embeddings (N x 32 per view).
    "few": class signal in 5 shared directions plus 27 label-free directions correlated 0.5 across
    views: the top canonical directions are the class ones, so a small CCA dimension retrieves
    well and the full 32 dilutes them. "spread": a weaker class signal in all 32 directions and
    independent noise, so no dimension stands out."""
    n, k = len(data), int(data.labels.max()) + 1
    if kind == "few":
        rng = np.random.default_rng(0)
        means, shared = rng.normal(size=(k, 5)), rng.normal(size=(n, 27))
        views = [np.hstack([means[data.labels] + 0.3 * rng.normal(size=(n, 5)), shared + rng.normal(size=(n, 27))])
                 for _ in range(2)]
    else:
        rng = np.random.default_rng(1)
        means = 0.5 * rng.normal(size=(k, D))
        views = [means[data.labels] + rng.normal(size=(n, D)) for _ in range(2)]
    return views[0].astype(np.float32), views[1].astype(np.float32)


def _sklearn_map(a, v, labels):
    """Mean of a->v and v->a mAP with cosine scores: scikit-learn's per-row ("samples") AP."""
    rel = labels[:, None] == labels[None, :]

    def one_way(q, g):
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        return average_precision_score(rel, q @ g.T, average="samples")

    return (one_way(a, v) + one_way(v, a)) / 2


def _scipy_cca(x, y, reg, dim):
    """Top-dim canonical directions of [0 Cxy; Cyx 0] w = rho [Cxx 0; 0 Cyy] w (ridge reg * I)."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    n, dx = len(x), x.shape[1]
    cxx = xc.T @ xc / (n - 1) + reg * np.eye(dx)
    cyy = yc.T @ yc / (n - 1) + reg * np.eye(y.shape[1])
    cxy = xc.T @ yc / (n - 1)
    a = np.block([[np.zeros_like(cxx), cxy], [cxy.T, np.zeros_like(cyy)]])
    _, w = scipy.linalg.eigh(a, scipy.linalg.block_diag(cxx, cyy))
    w = w[:, ::-1][:, :dim]  # descending correlation
    return lambda xa: (xa - mx) @ w[:dx], lambda xv: (xv - my) @ w[dx:]


def _reference(data, za, zv, regs, dims):
    """({(reg, dim): val mAP}, test mAP of the best of them); (0, 0) = raw embeddings."""
    za, zv = za.astype(np.float64), zv.astype(np.float64)
    tr, val, proj = data.splits["train"], {}, {}

    def score(pa, pv, split, by=map_by_hand):
        idx = data.splits[split]
        return by(pa[idx], pv[idx], data.labels[idx])

    proj[(0.0, 0)] = za, zv
    for reg in regs:
        for dim in dims:
            fx, fy = _scipy_cca(za[tr], zv[tr], reg, dim)
            proj[(reg, dim)] = fx(za), fy(zv)
    val = {p: score(*proj[p], "val") for p in proj}
    best = max(val, key=val.get)
    test = score(*proj[best], "test")
    # the numpy reference against scikit-learn at the chosen point
    assert (val[best], test) == pytest.approx((score(*proj[best], "val", _sklearn_map),
                                               score(*proj[best], "test", _sklearn_map)), abs=1e-9)
    return val, best, test


def _fit_reporting(tiny, embeddings, grid_epochs, monkeypatch, resume_from=None, on_epoch=None):
    """fit() on tiny data, its evaluation fed `embeddings` (one (audio, visual) pair, or a list
    with one per epoch from the first trained) in place of the model's: the metrics it reports
    each epoch, as a trial reports them to ASHA."""
    queue = list(embeddings) if isinstance(embeddings, list) else None
    monkeypatch.setattr(T, "embed_all", lambda model, data, which, **kw: queue.pop(0) if queue else embeddings)
    seen = []

    def record(m, save):
        seen.append(m)
        if on_epoch:
            on_epoch(m, save)
    T.fit(config_from_dict(TINY), tiny, on_epoch=record, log=None, grid_epochs=grid_epochs, resume_from=resume_from)
    return {m["epoch"]: m for m in seen}


@pytest.fixture(scope="module")
def ref(tiny):
    dims = [d for d in CCA_DIMS if d <= D]
    return {kind: _reference(tiny, *_embeddings(tiny, kind), CCA_REGS, dims) for kind in ("few", "spread")}


def test_asha_rung_scores_follow_the_chosen_dimension_not_the_fixed_one(tiny, ref, monkeypatch):
    def val_of(kind, points):
        return max(ref[kind][0][p] for p in points)

    fixed = {k: val_of(k, [(0.0, 0), (1e-3, D)]) for k in ref}  # the old per-epoch score: raw or dim 32
    chosen = {k: val_of(k, ref[k][0]) for k in ref}  # the final protocol: raw or the full grid
    sweep = {k: val_of(k, [(0.0, 0)] + [(1e-3, d) for d in CCA_DIMS if d <= D]) for k in ref}  # dims at ridge 1e-3
    # the fixture must rank the two models one way by the fixed dimension and the other by the
    # chosen one, and the ridge must matter for one of them (so a rung's full grid can be told
    # apart from a dimension sweep at one ridge)
    assert fixed["spread"] > fixed["few"] + 0.01 and chosen["few"] > chosen["spread"] + 0.01
    assert chosen["spread"] > sweep["spread"] + 0.01

    reported = {k: _fit_reporting(tiny, _embeddings(tiny, k), grid_epochs=(3,), monkeypatch=monkeypatch)
                for k in ref}
    for k in ref:
        for epoch in (1, 2, 3, 4):  # the same embeddings every epoch: the same score, no step anywhere
            assert reported[k][epoch]["val_map"] == pytest.approx(chosen[k], abs=1e-6), (k, epoch)
        rung, last = reported[k][3], reported[k][4]
        assert "test_map" not in rung and "test_map" in last
        _, best, test = ref[k]  # the test score of the val-chosen point
        assert (last["test_cca_reg"], last["test_cca_dim"]) == best and last["test_map"] == pytest.approx(test, abs=1e-6)
    # ASHA at the rung therefore keeps the model the final evaluation prefers
    assert reported["few"][3]["val_map"] > reported["spread"][3]["val_map"]


def test_epochs_between_choices_keep_the_latest_choice_and_a_resume_keeps_it_too(tiny, ref, monkeypatch, tmp_path):
    few, spread = _embeddings(tiny, "few"), _embeddings(tiny, "spread")
    spread_best, few_best = ref["spread"][1], ref["few"][1]
    kept = ref["few"][0][spread_best]  # "few" embeddings scored at the point chosen on "spread"
    assert spread_best != few_best and kept < ref["few"][0][few_best] - 0.01  # a kept choice shows

    # epoch 1 (a choice epoch) sees "spread", then the model "changes" to "few"
    ckpt = str(tmp_path / "epoch1.pt")

    def keep_first(m, save):
        if m["epoch"] == 1:
            save(ckpt)
    run = _fit_reporting(tiny, [spread, few, few, few], grid_epochs=(3,), monkeypatch=monkeypatch, on_epoch=keep_first)
    assert run[1]["val_map"] == pytest.approx(max(ref["spread"][0].values()), abs=1e-6)
    assert (run[2]["test_cca_reg"], run[2]["test_cca_dim"]) == spread_best  # kept, not re-chosen
    assert run[2]["val_map"] == pytest.approx(kept, abs=1e-6)
    for epoch in (3, 4):  # the rung and the last epoch choose again
        assert (run[epoch]["test_cca_reg"], run[epoch]["test_cca_dim"]) == few_best
        assert run[epoch]["val_map"] == pytest.approx(ref["few"][0][few_best], abs=1e-6)

    resumed = _fit_reporting(tiny, [few, few, few], grid_epochs=(3,), monkeypatch=monkeypatch, resume_from=ckpt)
    assert sorted(resumed) == [2, 3, 4]
    for epoch in (2, 3, 4):
        assert resumed[epoch]["val_map"] == run[epoch]["val_map"], epoch


def test_rungs_are_where_tunes_asha_records_scores():
    from ray.tune.schedulers import ASHAScheduler

    from harness import asha_rungs

    for grace, rf, max_t in [(10, 3, 60), (10, 3, 90), (2, 2, 6), (1, 2, 17), (5, 4, 100), (10, 3, 10)]:
        s = ASHAScheduler(time_attr="epoch", metric="val_map", mode="max", max_t=max_t, grace_period=grace,
                          reduction_factor=rf)
        milestones = sorted(m for m, _ in s._brackets[0]._rungs if m < max_t)  # max_t: the last epoch anyway
        assert asha_rungs(grace, rf, max_t) == milestones, (grace, rf, max_t)


def test_a_schedule_that_skips_changes_no_training_number_and_says_what_it_skipped(tiny):
    """EvalSchedule(between="skip"): no val score at the skipped epochs (eval_s 0, no embedding),
    the losses and the final scores exactly those of the default schedule (evaluation draws nothing
    and changes no weight); grid_epochs and schedule together are refused."""
    from hscmae.protocol import EvalSchedule

    cfg = config_from_dict(TINY)
    runs = {}
    for name, schedule in (("default", None), ("skip", EvalSchedule(grid_epochs=(), between="skip"))):
        seen = []
        final = T.fit(cfg, tiny, on_epoch=lambda m, save: seen.append(m), log=None, schedule=schedule)
        runs[name] = (seen, final)
    (default, d_final), (skip, s_final) = runs["default"], runs["skip"]
    assert all("val_map" in m for m in default)
    assert [("val_map" in m, m["eval_s"] == 0.0) for m in skip] == [(False, True)] * 3 + [(True, False)]
    assert [m["loss"] for m in skip] == [m["loss"] for m in default]
    assert {k: s_final[k] for k in ("val_map", "test_map", "test_cca_dim")} == {
        k: d_final[k] for k in ("val_map", "test_map", "test_cca_dim")}
    with pytest.raises(ValueError, match="not both"):
        T.fit(cfg, tiny, log=None, grid_epochs=(2,), schedule=EvalSchedule())
    with pytest.raises(ValueError, match="between"):
        EvalSchedule(between="sometimes")


def test_val_every_scores_only_its_multiples_the_rungs_and_the_last_epoch(tiny):
    """Config.val_every = 3 over 8 epochs with a rung at 4: val scored at 3 (the first scored epoch
    chooses: no choice before it), 4 (the rung), 6 (held) and 8 (the last, with test); 1, 2, 5, 7
    report no val_map and embed nothing. Training is untouched, and from the rung on the scores are
    the every-epoch run's (the same choice, made at the same epochs)."""
    every = config_from_dict({**TINY, "epochs": 8})
    seen = {}
    for n in (1, 3):
        out = []
        final = T.fit(dataclasses.replace(every, val_every=n), tiny, on_epoch=lambda m, save: out.append(m),
                      log=None, grid_epochs=(4,))
        seen[n] = (out, final)
    (one, one_final), (three, three_final) = seen[1], seen[3]
    assert [m["epoch"] for m in three if "val_map" in m] == [3, 4, 6, 8]
    assert all(m["eval_s"] == 0.0 for m in three if "val_map" not in m)
    assert [m["loss"] for m in three] == [m["loss"] for m in one]
    for e in (4, 6, 8):
        assert three[e - 1]["val_map"] == one[e - 1]["val_map"], e
    assert three_final["test_map"] == one_final["test_map"] and "test_map" in three[-1]
    with pytest.raises(ValueError, match="every"):
        from hscmae.protocol import EvalSchedule

        EvalSchedule(every=0)
    from hscmae.config import ConfigError

    with pytest.raises(ConfigError, match="val_every"):
        config_from_dict({**TINY, "val_every": 0})


def test_a_schedules_extra_scores_come_from_the_epochs_embeddings(tiny):
    from hscmae.protocol import EvalSchedule

    got = {}

    def extra(epoch, za, zv):
        got[epoch] = (za.shape, zv.shape)
        return {"extra_n": float(len(za))}
    seen = []
    T.fit(config_from_dict({**TINY, "epochs": 2}), tiny, on_epoch=lambda m, save: seen.append(m), log=None,
          schedule=EvalSchedule(extra=extra))
    assert sorted(got) == [1, 2] and got[1] == ((len(tiny), D), (len(tiny), D))
    assert [m["extra_n"] for m in seen] == [float(len(tiny))] * 2


def _count_fits(monkeypatch):
    import hscmae.protocol as P

    fits, fit = [], P.fit_linear_cca

    def counting(*a, **k):
        fits.append(a[2] if len(a) > 2 else k.get("dim"))
        return fit(*a, **k)
    monkeypatch.setattr(P, "fit_linear_cca", counting)
    return fits


def test_held_raw_epochs_fit_no_cca_and_an_early_stop_reuses_the_last_epochs_scores(tiny, monkeypatch):
    """Work no one reads is not done: a held raw choice scores without any CCA fit; a run stopped
    right after a scored epoch ends with that epoch's choice and val scores plus the test scores of
    the same projection (no second grid: no fit at all after the stop)."""
    from hscmae.protocol import EvalSchedule, held_scores

    za, zv = _embeddings(tiny, "spread")
    cfg = config_from_dict(TINY)
    fits = _count_fits(monkeypatch)
    raw = held_scores(za, zv, tiny, cfg, (0.0, 0))
    va = tiny.splits["val"]
    assert fits == [] and raw["test_cca_dim"] == 0
    assert raw["val_map"] == pytest.approx(_sklearn_map(za[va], zv[va], tiny.labels[va]), abs=1e-6)

    seen, fits_at_stop, emb = [], [], {}

    def stop_at_2(m, save):
        seen.append(m)
        if m["epoch"] == 2:
            fits_at_stop.append(len(fits))
            return True

    def keep(epoch, a, v):
        emb[epoch] = (a, v)
        return {}
    final = T.fit(cfg, tiny, on_epoch=stop_at_2, log=None, schedule=EvalSchedule(extra=keep))
    assert len(fits) == fits_at_stop[0], "the final evaluation after a stop fits no CCA again"
    last = seen[-1]
    assert "test_map" in final and "test_map" not in last
    for key in ("val_map", "val_map_a2v", "val_map_v2a", "test_cca_reg", "test_cca_dim"):
        assert final[key] == last[key], key
    # its test score is the kept choice's on that epoch's embeddings, by hand (scipy CCA, sklearn)
    a, v = (x.astype(np.float64) for x in emb[2])
    reg, dim, tr, te = last["test_cca_reg"], int(last["test_cca_dim"]), tiny.splits["train"], tiny.splits["test"]
    if dim:
        fx, fy = _scipy_cca(a[tr], v[tr], reg, dim)
        a, v = fx(a), fy(v)
    assert final["test_map"] == pytest.approx(_sklearn_map(a[te], v[te], tiny.labels[te]), abs=1e-5)  # float32 ties


def test_the_halving_grid_agrees_with_the_exhaustive_one_where_the_choice_is_clear(tiny, ref):
    """On both fixtures the screened grid keeps the exhaustive grid's point among its best 4 and
    so chooses it, with the same exact scores; on a larger split the seeded subset is a quarter."""
    import dataclasses

    from hscmae.protocol import halving_subset, protocol_scores

    for kind in ("few", "spread"):
        za, zv = _embeddings(tiny, kind)
        cfg = config_from_dict({**TINY, "test_cca": "on"})
        full = protocol_scores(za, zv, tiny, cfg, ("val", "test"))
        half = protocol_scores(za, zv, tiny, dataclasses.replace(cfg, grid_search="halving"), ("val", "test"))
        assert half == full, kind
        assert (full["test_cca_reg"], full["test_cca_dim"]) == max(
            (p for p in ref[kind][0] if p[1]), key=lambda p: ref[kind][0][p])
    sub = halving_subset(1000)
    assert len(sub) == 250 and (np.diff(sub) > 0).all() and (halving_subset(1000) == sub).all()
    assert len(halving_subset(300)) == 128 and len(halving_subset(90)) == 90


def test_a_misleading_subset_still_reports_the_exact_val_score_of_the_point_it_chose(tiny, ref):
    """Screened on 4 seeded val queries with only the subset's best kept, the halving grid can
    choose another point than the exhaustive grid (it does for one of these seeds); what it
    reports is always that point's exact full-val score (the independent reference's), never the
    subset's."""
    from hscmae.protocol import _grid, _subset_map

    za, zv = _embeddings(tiny, "few")
    scores = ref["few"][0]
    val_labels = tiny.labels[tiny.splits["val"]]
    exhaustive = max((p for p in scores if p[1]), key=lambda p: scores[p])
    dims = [d for d in CCA_DIMS if d <= D]
    misled = 0
    for seed in range(10):
        sub = np.sort(np.random.default_rng(seed).choice(len(val_labels), 4, replace=False))
        val, variant = _grid(za, zv, tiny, CCA_REGS, dims, "halving", keep=1, subset=sub)
        assert val["map"] == pytest.approx(scores[variant.use], abs=1e-6)
        if variant.use != exhaustive:
            misled += 1
            subset_score = _subset_map(*variant.rows(tiny.splits["val"]), val_labels, sub)
            assert val["map"] < scores[exhaustive] and abs(val["map"] - subset_score) > 1e-3
    assert misled, "some subset must mislead the screen (else this fixture tests nothing)"
