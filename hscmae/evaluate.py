"""Cross-modal retrieval evaluation of a trained model, with the optional test-time linear CCA.

Protocol: embed every clip with clean inputs; optionally fit a linear CCA on the *train* split's
embeddings and project; within a split, audio queries search that split's visual gallery and vice
versa (relevant = same label). With test_cca="auto" the choice between raw and CCA-projected
embeddings is made on the validation split and then applied to test, never chosen on test.

Every score, per-epoch progress and final evaluation alike, chooses the test-time CCA's dimension
on validation from the grid the linear-CCA baseline is tuned on (`hscmae.cca.CCA_DIMS`): the number
of useful canonical directions follows the number of semantic classes (~16 on 10 classes, ~32 on
28), and a fixed one was a handicap the baseline did not have; a per-epoch score with a fixed
dimension also ranked trials differently from the final one, so ASHA cut on the wrong number. The
dimensions are nested (one fit per ridge gives all of them), so the sweep at one ridge costs one
fit plus a few validation mAPs. The ridge is chosen from `CCA_REGS` too wherever `regs` is the full
grid: always in the final evaluation; in training at the last epoch and at the epochs the caller
names (a search's ASHA rungs), the other epochs sweep the dimension at ridge 1e-3 only
(`SWEEP_CCA_REG`: the ridge grid costs ~50 validation mAPs, more than an epoch). test_cca_dim > 0
fixes the dimension (ridge 1e-3) everywhere.

    python -m hscmae.eval --config FILE --checkpoint PATH [--data SRC] [--out DIR]
"""
from __future__ import annotations

import numpy as np
import torch

from hscmae.cca import CCA_DIMS, CCA_REGS, fit_linear_cca
from hscmae.config import Config
from hscmae.data import Dataset
from hscmae.metrics import retrieval_map_pair

# the one ridge of a dimension-only sweep (module docstring), and of a fixed test_cca_dim
SWEEP_CCA_REG = 1e-3


@torch.no_grad()
def embed_all(model, data: Dataset, which: str = "teacher", batch: int = 4096,
              tensors: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Clean-input embeddings of every clip from the teacher (or student) encoders, computed on
    the model's device and returned as CPU arrays: mAP and the linear CCA finish in numpy.
    `tensors`: data's (audio, visual) already on that device (fit's copies), else copied per chunk."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for j, (m, x) in enumerate((("a", data.audio), ("v", data.visual))):
        x = tensors[j] if tensors is not None else torch.from_numpy(np.ascontiguousarray(x))
        out.append(torch.cat([model.embed(x[i:i + batch].to(device), m, teacher=which == "teacher")
                              for i in range(0, len(x), batch)]).cpu().numpy())
    model.train()
    return out[0], out[1]


def split_scores(za: np.ndarray, zv: np.ndarray, data: Dataset, split: str) -> dict[str, float]:
    idx = data.splits[split]
    return retrieval_map_pair(za[idx], zv[idx], data.labels[idx])


def best_linear_cca(xa: np.ndarray, xv: np.ndarray, data: Dataset, regs=CCA_REGS, dims=CCA_DIMS):
    """The linear CCA (fitted on the train split) whose projection scores the highest validation
    mean mAP over regs x dims. Returns (val mAP, reg, dim, projected xa, projected xv); ties go to
    the smaller ridge, then the smaller dimension (the earlier grid point)."""
    tr = data.splits["train"]
    top = min(max(dims), xa.shape[1], xv.shape[1])
    best = None
    for reg in regs:
        cca = fit_linear_cca(xa[tr], xv[tr], top, reg)  # the top-d directions are nested: fit once
        pa, pv = cca.transform_x(xa), cca.transform_y(xv)
        for dim in dims:
            if dim > top:
                continue
            val = split_scores(pa[:, :dim], pv[:, :dim], data, "val")["map"]
            if best is None or val > best[0]:
                best = (val, reg, dim, pa[:, :dim], pv[:, :dim])
    return best


def protocol_scores(za: np.ndarray, zv: np.ndarray, data: Dataset, cfg: Config,
                    splits=("val",), regs=CCA_REGS) -> dict[str, float]:
    """Scores on `splits` under cfg.test_cca; "auto" picks raw or CCA by validation mean mAP. The
    CCA's dimension is chosen on validation from CCA_DIMS at each ridge in `regs`, and the ridge
    among `regs` (module docstring); the final evaluation keeps the default, the full grid.

    Returns {f"{split}_map", f"{split}_map_a2v", f"{split}_map_v2a", ..., "test_cca": 0/1,
    "test_cca_reg", "test_cca_dim" (0 when raw)}."""
    variants = {}  # (reg, dim) -> projected embeddings; (0, 0) = raw
    val: dict[tuple, float] = {}
    if cfg.test_cca in ("off", "auto"):
        variants[(0.0, 0)] = (za, zv)
    if cfg.test_cca in ("on", "auto"):
        try:
            if not cfg.test_cca_dim:
                score, reg, dim, pa, pv = best_linear_cca(za, zv, data, regs)
                variants[(reg, dim)], val[(reg, dim)] = (pa, pv), score
            else:
                dim = cfg.test_cca_dim
                cca = fit_linear_cca(za[data.splits["train"]], zv[data.splits["train"]], dim, SWEEP_CCA_REG)
                variants[(SWEEP_CCA_REG, dim)] = (cca.transform_x(za), cca.transform_y(zv))
        except (ValueError, np.linalg.LinAlgError):
            if cfg.test_cca == "on":
                raise
    if len(variants) > 1:  # choose on validation only; a tie keeps the raw embeddings
        for key, v in variants.items():
            if key not in val:
                val[key] = split_scores(*v, data, "val")["map"]
        use = max(val, key=lambda c: (val[c], -c[1]))
    else:
        use = next(iter(variants))
    out: dict[str, float] = {"test_cca": float(use[1] > 0), "test_cca_reg": float(use[0]), "test_cca_dim": float(use[1])}
    for split in splits:
        for key, value in split_scores(*variants[use], data, split).items():
            out[f"{split}_{key}"] = value
    return out


def evaluate_checkpoint(cfg: Config, data: Dataset, checkpoint: str) -> dict[str, float]:
    from hscmae.export import load_model

    za, zv = embed_all(load_model(cfg, data, checkpoint), data, cfg.eval_encoder)
    return protocol_scores(za, zv, data, cfg, splits=("val", "test"))
