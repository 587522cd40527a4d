"""Per-epoch schedules of the official recipe, as pure functions of (config, epoch).

Epochs are 1-based, as `fit` counts them; the official code counts from 0, so its epoch e is our
e + 1. Every default ("constant", warmup_epochs 0) returns today's fixed value.
"""
from __future__ import annotations

import math

from hscmae.config import Config


def lr_at(cfg: Config, epoch: int) -> float:
    """"cosine": lr (1 + cos(pi (epoch - 1) / epochs)) / 2, i.e. torch's CosineAnnealingLR with
    T_max = epochs and eta_min 0 stepped once per epoch (the official scheduler); else cfg.lr."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * (1 + math.cos(math.pi * (epoch - 1) / cfg.epochs)) / 2
    return cfg.lr


def ema_momentum_at(cfg: Config, epoch: int) -> float:
    """"ramp": min(m + (1 - m) (epoch - 1) / epochs, 0.999) with m = cfg.ema_momentum, which with
    m = 0.95 is the official 0.95 + 0.05 e / epochs capped at 0.999 (a ramp from any m, so that a
    search over ema_momentum still means something); else cfg.ema_momentum."""
    m = cfg.ema_momentum
    if cfg.ema_schedule == "ramp":
        return min(m + (1 - m) * (epoch - 1) / cfg.epochs, 0.999)
    return m


def in_warmup(cfg: Config, epoch: int) -> bool:
    """The first warmup_epochs epochs use the fixed weights even when learned_weights is on."""
    return epoch <= cfg.warmup_epochs


def fixed_weights(cfg: Config, terms, epoch: int) -> dict[str, float]:
    """The fixed weight of each term: cfg.<term>_weight (1 for a term without such a key), except that during warm-up the
    cross-reconstruction weight ramps linearly from 0 (first epoch) to cross_recon_weight (last
    warm-up epoch), the official min(1, e / max(1, warmup - 1))."""
    w = {t: getattr(cfg, f"{t}_weight", 1.0) for t in terms}
    if "cross_recon" in w and in_warmup(cfg, epoch):
        w["cross_recon"] *= min(1.0, (epoch - 1) / max(1, cfg.warmup_epochs - 1))
    return w
