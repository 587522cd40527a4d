"""The official recipe's knobs (architecture, objective, schedule): each changes what it claims,
against an independent computation, and is off by default; old checkpoints still resume."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from hscmae import ablation
from hscmae import losses as L
from hscmae import schedule as S
from hscmae import checkpoint as C
from hscmae import train as T
from hscmae.config import Config, config_from_dict, load_config
from hscmae.data import load_data_for
from hscmae.protocol import embed_all, evaluate_checkpoint

TINY = dict(data="synthetic:tiny", hidden_dim=32, embed_dim=16, cca_dim=4, top_k=3, batch_size=64,
            epochs=4, threads=1, test_cca="off")
NEW_KEYS = ("temporal_pool", "normalize", "val_fraction", "device", "deterministic", "compile", "enc_layers",
            "dec_layers", "activation", "enc_dropout", "dec_dropout", "input_batchnorm", "proj_head", "proj_dim",
            "use_cross_recon", "cross_recon_weight", "affinity", "pair_positive", "dcca_input", "warmup_epochs",
            "ema_schedule", "lr_schedule", "grad_clip")


def _model(tiny, **kw):
    cfg = config_from_dict({**TINY, **kw})
    torch.manual_seed(0)
    return cfg, T.build_model(cfg, tiny)


def _batch(tiny, n=64):
    return torch.from_numpy(tiny.audio[:n]), torch.from_numpy(tiny.visual[:n])


# --- architecture -------------------------------------------------------------------------------

def test_default_model_has_exactly_the_old_modules(tiny):
    _, m = _model(tiny)
    mlp_keys = [f"{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")]  # Linear, LayerNorm, GELU, Linear
    want = {f"{part}.{mod}.{k}" for part in ("encoders", "decoders", "teacher") for mod in "av" for k in mlp_keys}
    want |= {"mask_tokens.a", "mask_tokens.v"}
    assert set(m.state_dict()) == want
    assert [type(x) for x in m.encoders["a"]] == [nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear]
    assert m.cross_decoders is None and m.heads is None


def test_layer_counts_activation_dropout_and_input_batchnorm(tiny):
    _, m = _model(tiny, enc_layers=3, dec_layers=4, activation="tanh", enc_dropout=0.2, dec_dropout=0.1,
                  input_batchnorm=True)
    enc, dec = m.encoders["v"], m.decoders["a"]
    assert isinstance(enc[0], nn.BatchNorm1d) and enc[0].num_features == tiny.visual.shape[1]
    lin = [x for x in enc if isinstance(x, nn.Linear)]
    assert [(x.in_features, x.out_features) for x in lin] == [(tiny.visual.shape[1], 32), (32, 32), (32, 16)]
    assert sum(isinstance(x, nn.Linear) for x in dec) == 4 and not any(isinstance(x, nn.BatchNorm1d) for x in dec)
    assert sum(isinstance(x, nn.Tanh) for x in enc) == 2 and not any(isinstance(x, nn.GELU) for x in m.modules())
    assert [x.p for x in enc if isinstance(x, nn.Dropout)] == [0.2, 0.2]
    assert [x.p for x in dec if isinstance(x, nn.Dropout)] == [0.1] * 3
    # dropout acts in the student's training forward only; the teacher always runs as at evaluation
    x = torch.from_numpy(tiny.visual[:64])
    assert not torch.equal(enc(x), enc(x))
    assert torch.equal(m.teacher["v"](x), m.teacher["v"](x)) and not m.teacher.training
    assert torch.equal(m.embed(x, "v", teacher=False), m.embed(x, "v", teacher=False)) and m.training


def test_projection_head_is_l2_normalised_copied_by_the_teacher_and_embeds_for_retrieval(tiny):
    cfg, m = _model(tiny, proj_head=True, proj_dim=8, cca_dim=4)
    assert set(m.teacher_heads.state_dict()) == set(m.heads.state_dict())
    xa, _ = _batch(tiny)
    z = m.embed(xa, "a")
    ref = m.teacher_heads["a"](m.teacher["a"](xa))
    np.testing.assert_allclose(z.numpy(), (ref / ref.norm(dim=1, keepdim=True)).detach().numpy(), rtol=1e-5, atol=1e-6)
    za, zv = embed_all(m, tiny)
    assert za.shape == (len(tiny), 8) and zv.shape == (len(tiny), 8)
    np.testing.assert_allclose(np.linalg.norm(za, axis=1), 1.0, rtol=1e-5)
    # the teacher's head follows the student's by EMA
    with torch.no_grad():
        m.heads["a"].weight.add_(1.0)
    t0 = m.teacher_heads["a"].weight.clone()
    m.update_teacher(0.9)
    np.testing.assert_allclose(m.teacher_heads["a"].weight.numpy(),
                               (0.9 * t0 + 0.1 * m.heads["a"].weight).detach().numpy(), rtol=1e-6, atol=1e-7)


# --- objective ----------------------------------------------------------------------------------

def _np_cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def _np_soft_infonce(sa, sv, ta, tv, k, temp, affinity, pair_positive):
    """An independent loop-per-row reference of the soft multi-positive InfoNCE."""
    if affinity == "fused":
        f = (ta / np.linalg.norm(ta, axis=1, keepdims=True) + tv / np.linalg.norm(tv, axis=1, keepdims=True)) / 2
        tsim = _np_cos(f, f)
    else:
        tsim = _np_cos(ta, tv)
    logits = _np_cos(sa, sv) / temp

    def one_way(lg, ts):
        out = []
        for i in range(len(lg)):
            others = [j for j in np.argsort(-ts[i], kind="stable") if j != i]
            picks = others[:k] if not pair_positive else [i] + others[:k - 1]
            w = np.exp(ts[i, picks] / temp)
            w /= w.sum()
            cols = [j for j in range(len(lg)) if pair_positive or j != i]  # the softmax's denominator
            lse = np.log(np.exp(lg[i, cols] - lg[i, cols].max()).sum()) + lg[i, cols].max()
            out.append(-(w * (lg[i, picks] - lse)).sum())
        return np.mean(out)
    return (one_way(logits, tsim) + one_way(logits.T, tsim.T)) / 2, tsim


@pytest.mark.parametrize("affinity,pair_positive", [("cross", True), ("fused", True), ("fused", False), ("cross", False)])
def test_soft_infonce_matches_numpy_for_affinity_and_pair_positive(affinity, pair_positive):
    rng = np.random.default_rng(3)
    sa, sv, ta, tv = (rng.standard_normal((20, 6)) for _ in range(4))
    want, tsim = _np_soft_infonce(sa, sv, ta, tv, 4, 0.2, affinity, pair_positive)
    t = [torch.from_numpy(x) for x in (sa, sv, ta, tv)]
    got = L.soft_infonce(*t, k=4, temperature=0.2, affinity=affinity, pair_positive=pair_positive)
    assert float(got) == pytest.approx(want, rel=1e-9)
    # the neighbours the code mines are the ones numpy picks
    got_sim = L.teacher_affinity(t[2], t[3], affinity).numpy()
    np.testing.assert_allclose(got_sim, tsim, rtol=1e-9, atol=1e-12)
    pick, _ = L._topk_soft_positives(torch.from_numpy(tsim), 4, 0.2, pair_positive)
    for i in range(20):
        others = [j for j in np.argsort(-tsim[i]) if j != i]
        want_pick = set(others[:4]) if not pair_positive else {i, *others[:3]}
        assert set(pick[i].tolist()) == want_pick


def test_pair_left_out_of_positives_and_negatives():
    rng = np.random.default_rng(4)
    sa, sv, ta, tv = (torch.from_numpy(rng.standard_normal((12, 5))) for _ in range(4))
    pick, _ = L._topk_soft_positives(L.teacher_affinity(ta, tv, "cross"), 3, 0.1, pair_positive=False)
    assert not (pick == torch.arange(12).unsqueeze(1)).any()
    # no negative either: the loss has no gradient through the pair's student logits
    sa.requires_grad_(True)
    logits_fn = L.cosine_sim
    seen = {}

    def spy(a, b):
        out = logits_fn(a, b)
        if a is sa:
            out.retain_grad()
            seen["logits"] = out
        return out
    L.cosine_sim = spy
    try:
        L.soft_infonce(sa, sv, ta, tv, 3, 0.1, pair_positive=False).backward()
    finally:
        L.cosine_sim = logits_fn
    g = seen["logits"].grad
    assert torch.all(torch.diagonal(g) == 0) and g.abs().sum() > 0


def test_cross_recon_loss_against_numpy_and_in_the_step(tiny):
    rng = np.random.default_rng(5)
    ra, v, rv, a = rng.standard_normal((8, 7)), rng.standard_normal((8, 7)), rng.standard_normal((8, 3)), rng.standard_normal((8, 3))
    got = L.cross_recon_loss(*(torch.from_numpy(x) for x in (ra, v, rv, a)))
    assert float(got) == pytest.approx((((ra - v) ** 2).mean() + ((rv - a) ** 2).mean()) / 2, rel=1e-12)
    # in train_step, with nothing masked, it is the cross decoders on the clean encodings
    cfg, m = _model(tiny, use_cross_recon=True, mask_ratio=0.0, learned_weights=False)
    assert cfg.use_cross_recon and "cross_recon" in T.active_terms(config_from_dict({**TINY, "use_cross_recon": True}))
    xa, xv = _batch(tiny)
    _, stats = T.train_step(m, cfg, xa, xv, torch.Generator().manual_seed(0), None)
    with torch.no_grad():
        rec_v = m.cross_decoders["a2v"](m.encoders["a"](xa)).numpy()
        rec_a = m.cross_decoders["v2a"](m.encoders["v"](xv)).numpy()
    want = (((rec_v - xv.numpy()) ** 2).mean() + ((rec_a - xa.numpy()) ** 2).mean()) / 2
    assert stats["loss_cross_recon"] == pytest.approx(float(want), rel=1e-5)
    assert stats["w_cross_recon"] == 1.0
    _, default_stats = T.train_step(*_model(tiny)[::-1], xa, xv, torch.Generator().manual_seed(0), None)
    assert "loss_cross_recon" not in default_stats


def test_dcca_on_clean_input_embeddings(tiny):
    xa, xv = _batch(tiny)
    out = {}
    for which in ("masked", "clean"):
        cfg, m = _model(tiny, dcca_input=which, mask_ratio=0.7)
        _, stats = T.train_step(m, cfg, xa, xv, torch.Generator().manual_seed(0), None)
        with torch.no_grad():
            clean = float(L.dcca_loss(m.encoders["a"](xa), m.encoders["v"](xv), cfg.cca_dim, cfg.cca_reg))
        out[which] = (stats["loss_dcca"], clean)
    assert out["clean"][0] == pytest.approx(out["clean"][1], rel=1e-6)
    assert out["masked"][0] != pytest.approx(out["masked"][1], rel=1e-3)


# --- schedule -----------------------------------------------------------------------------------

def _track(tiny, cfg, tmp_path):
    """Per-epoch metrics and checkpoints of a fit."""
    seen, states = [], []

    def on_epoch(metrics, save):
        p = str(tmp_path / f"ep{metrics['epoch']}.pt")
        save(p)
        seen.append(metrics)
        states.append(torch.load(p, weights_only=True))
    T.fit(cfg, tiny, on_epoch=on_epoch, log=None)
    return seen, states


def test_warmup_reports_fixed_weights_then_learned(tiny, tmp_path):
    cfg = config_from_dict({**TINY, "epochs": 5, "warmup_epochs": 3, "use_cross_recon": True, "recon_weight": 0.7,
                            "dcca_weight": 0.0, "infonce_weight": 0.05, "distill_weight": 0.1,
                            "cross_recon_weight": 0.8})
    seen, states = _track(tiny, cfg, tmp_path)
    for e, ramp in ((1, 0.0), (2, 0.5), (3, 1.0)):  # cross-recon ramps 0 -> 1 over the 3 warm-up epochs
        m = seen[e - 1]
        got = (m["w_recon"], m["w_dcca"], m["w_infonce"], m["w_distill"])  # means over the epoch's steps
        assert got == pytest.approx((0.7, 0.0, 0.05, 0.1), rel=1e-12)
        assert m["w_cross_recon"] == pytest.approx(0.8 * ramp, abs=1e-15)
        assert all(float(v) == 0.0 for v in states[e - 1]["log_vars"].values())  # untouched in warm-up
    for m, st in zip(seen[3:], states[3:]):  # learned: exp(-s) of the trained log-variances
        for t in T.active_terms(cfg):
            assert all(abs(m[f"w_{t}"] - w) > 1e-6 for w in (0.0, 0.05, 0.1, 0.7, 0.8, 1.0))
            assert float(st["log_vars"][t]) != 0.0
    # and off by default: learned weights from the first epoch
    seen0, _ = _track(tiny, config_from_dict({**TINY, "epochs": 1}), tmp_path)
    assert seen0[0]["w_recon"] != 1.0


def test_ema_ramp_momentum_per_epoch_is_the_official_formula(tiny):
    cfg = config_from_dict({**TINY, "epochs": 100, "ema_momentum": 0.95, "ema_schedule": "ramp"})
    for e0 in range(100):  # the official counts epochs from 0
        assert S.ema_momentum_at(cfg, e0 + 1) == pytest.approx(min(0.95 + 0.05 * (e0 / 100), 0.999), abs=1e-15)
    assert S.ema_momentum_at(cfg, 100) == 0.999  # the cap binds late in a long run
    assert S.ema_momentum_at(config_from_dict(TINY), 3) == Config().ema_momentum  # constant by default
    # the step applies that epoch's momentum: t <- m t + (1 - m) s
    cfg = config_from_dict({**TINY, "epochs": 10, "ema_momentum": 0.9, "ema_schedule": "ramp"})
    m = T.build_model(cfg, tiny)
    model, log_vars, opt, gen = T.build_training(cfg, tiny)
    t0 = model.teacher["a"][0].weight.detach().clone()
    T.optimizer_step(model, cfg, opt, log_vars, *_batch(tiny), gen, epoch=6)
    mom = 0.9 + 0.1 * 5 / 10
    want = mom * t0.numpy() + (1 - mom) * model.encoders["a"][0].weight.detach().numpy()
    np.testing.assert_allclose(model.teacher["a"][0].weight.numpy(), want, rtol=1e-5, atol=1e-7)
    del m


def test_grad_clip_bounds_the_gradient_norm(tiny):
    xa, xv = _batch(tiny)
    grads = {}
    for clip in (0.0, 0.05):
        cfg = config_from_dict({**TINY, "grad_clip": clip})
        model, log_vars, opt, gen = T.build_training(cfg, tiny)
        T.optimizer_step(model, cfg, opt, log_vars, xa, xv, gen)
        grads[clip] = [p.grad.detach().double().numpy().copy() for p in model.student_parameters()]
    norm = {c: math.sqrt(sum(float((g ** 2).sum()) for g in gs)) for c, gs in grads.items()}
    assert norm[0.0] > 0.05  # the bound is active
    assert norm[0.05] == pytest.approx(0.05, rel=1e-4)
    for g0, g1 in zip(grads[0.0], grads[0.05]):  # the same direction, scaled by clip / norm
        np.testing.assert_allclose(g1, g0 * 0.05 / norm[0.0], rtol=1e-4, atol=1e-9)


def test_cosine_lr_per_epoch_is_the_closed_form_and_torchs_scheduler(tiny, tmp_path):
    cfg = config_from_dict({**TINY, "epochs": 5, "lr": 2e-3, "lr_schedule": "cosine"})
    _, states = _track(tiny, cfg, tmp_path)
    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=5)
    for e, st in enumerate(states, start=1):
        closed = 2e-3 * (1 + math.cos(math.pi * (e - 1) / 5)) / 2
        for g in st["optimizer"]["param_groups"]:
            assert g["lr"] == pytest.approx(closed, rel=1e-12)
            assert g["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-9)
        ref_opt.step()
        sched.step()
    _, states = _track(tiny, config_from_dict({**TINY, "epochs": 2}), tmp_path)
    assert {g["lr"] for st in states for g in st["optimizer"]["param_groups"]} == {TINY.get("lr", Config().lr)}


# --- checkpoints, ablation, the official config -------------------------------------------------

def test_old_checkpoint_resumes_and_other_architectures_are_refused(tiny, tmp_path):
    cfg = config_from_dict(TINY)
    full = T.fit(cfg, tiny, log=None)
    ckpt = str(tmp_path / "old.pt")

    def stop_after_2(m, save):
        if m["epoch"] == 2:
            save(ckpt)
            return True
    T.fit(cfg, tiny, on_epoch=stop_after_2, log=None)
    state = torch.load(ckpt, weights_only=True)  # as saved before this round's keys existed
    state["config"] = {k: v for k, v in state["config"].items() if k not in NEW_KEYS}
    C.save_checkpoint(ckpt, state)
    resumed = T.fit(cfg, tiny, resume_from=ckpt, log=None)
    for k in ("loss", "val_map", "test_map"):
        assert resumed[k] == full[k], k
    assert evaluate_checkpoint(cfg, tiny, ckpt)["val_map"] > 0
    with pytest.raises(C.CheckpointError, match=r"different config \(keys \['enc_layers'\]\)"):
        T.fit(config_from_dict({**TINY, "enc_layers": 3}), tiny, resume_from=ckpt, log=None)
    with pytest.raises(C.CheckpointError, match=r"different architecture \(keys \['proj_dim', 'proj_head'\]\)"):
        evaluate_checkpoint(config_from_dict({**TINY, "proj_head": True, "proj_dim": 8}), tiny, ckpt)
    assert evaluate_checkpoint(config_from_dict({**TINY, "proj_dim": 8}), tiny, ckpt)["val_map"] > 0  # no head


def test_ablation_has_a_row_per_recipe_component_that_is_on():
    recipe = {name for name, _, _ in ablation.RECIPE_COMPONENTS}
    shipped = {r.component for r in ablation.ablation_runs(load_config("config/hsc_mae.yaml"), 1)}
    assert not shipped & recipe
    official = ablation.ablation_runs(load_config("config/official.yaml"), 1)
    assert {r.component for r in official} >= recipe
    row = next(r for r in official if r.component == "no_warmup")
    assert row.config.warmup_epochs == 0 and row.config.use_cross_recon


def test_official_config_trains(tmp_path):
    cfg = load_config("config/official.yaml", {"data": "synthetic:vegas,n=900", "epochs": 2, "warmup_epochs": 1,
                                               "threads": 1, "hidden_dim": 64, "embed_dim": 64})
    data = load_data_for(cfg)
    assert data.meta["normalize"].startswith("minmax")
    seen = []
    out = T.fit(cfg, data, on_epoch=lambda m, save: seen.append(m), log=None)
    assert [m["w_dcca"] for m in seen][0] == 0.0 and seen[1]["w_dcca"] != 0.0
    assert 0 < out["test_map"] <= 1 and out["test_cca"] == 1.0 and out["test_cca_dim"] == 10
