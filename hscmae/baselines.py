"""Baselines with their own fair protocol: every choice is made on the validation split.

- linear CCA on the raw (standardised) features, ridge and dimension chosen on validation;
- DCCA: the same HSC-MAE code with every term but DCCA off (see `dcca_config`), scored with and
  without test-time linear CCA (`test_cca: auto` chooses on validation).
"""
from __future__ import annotations

from hscmae.cca import fit_linear_cca
from hscmae.config import Config, config_from_dict
from hscmae.data import Dataset
from hscmae.evaluate import split_scores

LINEAR_CCA_REGS = (1e-3, 1e-2, 1e-1, 1.0, 3.0, 10.0)
LINEAR_CCA_DIMS = (8, 16, 24, 32, 48, 64, 96, 128)


def linear_cca_baseline(data: Dataset, regs=LINEAR_CCA_REGS, dims=LINEAR_CCA_DIMS) -> dict:
    """Grid over (ridge, dim) chosen by validation mean mAP; returns val and test scores + choice."""
    tr = data.splits["train"]
    best = None
    for reg in regs:
        cca = fit_linear_cca(data.audio[tr], data.visual[tr], min(max(dims), data.audio.shape[1], data.visual.shape[1]), reg)
        za, zv = cca.transform_x(data.audio), cca.transform_y(data.visual)
        for dim in dims:
            if dim > za.shape[1]:
                continue
            val = split_scores(za[:, :dim], zv[:, :dim], data, "val")["map"]
            if best is None or val > best[0]:
                best = (val, reg, dim, za[:, :dim], zv[:, :dim])
    val, reg, dim, za, zv = best
    out = {"reg": reg, "dim": dim}
    for split in ("val", "test"):
        out.update({f"{split}_{k}": v for k, v in split_scores(za, zv, data, split).items()})
    return out


def dcca_config(cfg: Config, **changes) -> Config:
    """The plain DCCA model: the same code and config with every term but DCCA off."""
    d = cfg.to_dict()
    d.update(use_recon=False, use_infonce=False, use_distill=False, use_ema=False, mask_ratio=0.0,
             learned_weights=False, test_cca="auto")
    d.update(changes)
    return config_from_dict(d)
