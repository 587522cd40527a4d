"""Baselines with their own fair protocol: every choice is made on the validation split.

- linear CCA on the raw (standardised) features, ridge and dimension chosen on validation;
- DCCA: the same HSC-MAE code with every term but DCCA off (see `dcca_config`), scored with and
  without test-time linear CCA (`test_cca: auto` chooses on validation).
"""
from __future__ import annotations

from hscmae.cca import CCA_DIMS, CCA_REGS
from hscmae.config import LOSS_TERMS, SWITCHES, Config, config_from_dict
from hscmae.data import Dataset
from hscmae.protocol import best_linear_cca, split_scores


def linear_cca_baseline(data: Dataset, regs=CCA_REGS, dims=CCA_DIMS) -> dict:
    """Grid over (ridge, dim) chosen by validation mean mAP (the same grid as the test-time CCA on
    learned embeddings); returns val and test scores + choice."""
    val, reg, dim, za, zv = best_linear_cca(data.audio, data.visual, data, regs, dims)
    out = {"reg": reg, "dim": dim}
    for split in ("val", "test"):
        out.update({f"{split}_{k}": v for k, v in split_scores(za, zv, data, split).items()})
    return out


def dcca_config(cfg: Config, **changes) -> Config:
    """The plain DCCA model: the same code and config with every loss term but DCCA off (every
    term of the registry, hscmae.config.LOSS_TERMS: a new term is off here without a word)."""
    d = cfg.to_dict()
    d.update({SWITCHES[t]: t == "dcca" for t in LOSS_TERMS})
    d.update(use_ema=False, mask_ratio=0.0, learned_weights=False, test_cca="auto")
    d.update(changes)
    return config_from_dict(d)
