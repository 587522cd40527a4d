"""Cross-modal retrieval evaluation of a trained model, with the optional test-time linear CCA.

Protocol: embed every clip with clean inputs; optionally fit a linear CCA on the *train* split's
embeddings and project; within a split, audio queries search that split's visual gallery and vice
versa (relevant = same label). With test_cca="auto" the choice between raw and CCA-projected
embeddings is made on the validation split and then applied to test, never chosen on test.

The final evaluation chooses the test-time CCA on validation from the grid the linear-CCA baseline
is tuned on: its dimension from `hscmae.cca.CCA_DIMS` (the number of useful canonical directions
follows the number of semantic classes, ~16 on 10 classes, ~32 on 28: a fixed one was a handicap
the baseline did not have) and its ridge from `CCA_REGS`; with test_cca="auto" also raw vs CCA.
The dimensions are nested (one fit per ridge gives all of them).

Training reports a val_map every epoch, and a search's scheduler cuts trials on it, so it must
rank trials as the final one does (issue 13). `fit` therefore scores with this same protocol
(`protocol_scores`, the full grid) at its choice epochs: the first, a search's ASHA rungs (where
trials are cut) and the last; at the epochs between, the choice made at the latest of those
(raw or CCA, ridge, dimension) is kept and only refitted on the new embeddings (`held_scores`:
one fit, one validation score). The grid costs ~50 validation mAPs, more than an epoch on large
validation splits, and a dimension sweep every epoch still ~10 (bench/bench_eval.py).
test_cca_dim > 0 fixes the dimension (ridge 1e-3, `SWEEP_CCA_REG`) everywhere.

    python -m hscmae.eval --config FILE --checkpoint PATH [--data SRC] [--out DIR]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, NamedTuple

import numpy as np
import torch

from hscmae.checkpoint import load_model
from hscmae.cca import CCA_DIMS, CCA_REGS, fit_linear_cca
from hscmae.config import Config
from hscmae.data import Dataset
from hscmae.metrics import retrieval_map_pair

# the ridge of a fixed test_cca_dim (and of bench_eval's dimension-only sweep)
SWEEP_CCA_REG = 1e-3


# ASHA's defaults in the search spaces (search_spaces.Space): grace 10, reduction factor 3
ASHA_GRACE, ASHA_RF = 10, 3


def asha_rungs(grace: int, rf: int, max_epochs: int) -> list[int]:
    """The epochs where ASHA can stop a trial: grace * rf^k below max_epochs (Tune's bracket s = 0;
    its scheduler records a trial's val_map at the first report at or past each). The one source
    of the rungs: a search's scheduler, fit's choice epochs and the bench all use it."""
    if not grace or not rf or rf < 2:
        return []
    out, e = [], min(grace, max_epochs)
    while e < max_epochs:
        out.append(e)
        e *= rf
    return out


def choice_epochs(epochs: int) -> list[int]:
    """Where a standalone run re-chooses its test-time CCA (plus the first and last epoch, which fit
    always adds): the default search space's rungs, so a standalone history matches a trial's there."""
    return asha_rungs(ASHA_GRACE, ASHA_RF, epochs)


GRID, HELD, SKIP = "grid", "held", "skip"


@dataclass(frozen=True)
class EvalSchedule:
    """What `fit` scores after each epoch (`at(epoch, epochs)`):
      "grid"  the final evaluation's protocol (`protocol_scores`: raw vs the CCA grid, chosen on val);
      "held"  the latest grid's choice kept, refitted on the new embeddings (`held_scores`); with no
              choice yet (the first epoch, a resume from a checkpoint without one): "grid";
      "skip"  nothing: no embedding, no val_map in that epoch's metrics.
    grid_epochs: where the grid chooses (None: `choice_epochs`, the default space's rungs; a search
    passes its ASHA rungs); the last epoch is always "grid", with the test scores. between: what the
    other epochs get, "held" (default) or "skip". extra(epoch, za, zv) -> dict: more metrics from the
    epoch's embeddings (every epoch that embeds; not counted in eval_s), e.g. a bench's other score."""
    grid_epochs: Collection[int] | None = None
    between: str = HELD
    extra: Callable[[int, np.ndarray, np.ndarray], dict] | None = None

    def __post_init__(self):
        if self.between not in (HELD, SKIP):
            raise ValueError(f"EvalSchedule.between must be {HELD!r} or {SKIP!r}, got {self.between!r}")

    def at(self, epoch: int, epochs: int) -> str:
        if epoch == epochs or epoch in (choice_epochs(epochs) if self.grid_epochs is None else self.grid_epochs):
            return GRID
        return self.between


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


def _grid(xa: np.ndarray, xv: np.ndarray, data: Dataset, regs, dims):
    """(validation scores, reg, dim, projected xa, projected xv) of the linear CCA (fitted on the
    train split) with the highest validation mean mAP over regs x dims; ties go to the smaller
    ridge, then the smaller dimension (the earlier grid point)."""
    tr = data.splits["train"]
    top = min(max(dims), xa.shape[1], xv.shape[1])
    best = None
    for reg in regs:
        cca = fit_linear_cca(xa[tr], xv[tr], top, reg)  # the top-d directions are nested: fit once
        pa, pv = cca.transform_x(xa), cca.transform_y(xv)
        for dim in dims:
            if dim > top:
                continue
            val = split_scores(pa[:, :dim], pv[:, :dim], data, "val")
            if best is None or val["map"] > best[0]["map"]:
                best = (val, reg, dim, pa[:, :dim], pv[:, :dim])
    return best


def best_linear_cca(xa: np.ndarray, xv: np.ndarray, data: Dataset, regs=CCA_REGS, dims=CCA_DIMS):
    """The linear CCA (fitted on the train split) whose projection scores the highest validation
    mean mAP over regs x dims. Returns (val mAP, reg, dim, projected xa, projected xv); ties go to
    the smaller ridge, then the smaller dimension (the earlier grid point)."""
    val, *rest = _grid(xa, xv, data, regs, dims)
    return (val["map"], *rest)


class Scored(NamedTuple):
    """A protocol evaluation: its scores (protocol_scores' dict), the variant used (reg, dim)
    ((0, 0) = raw) and every clip's embeddings as that variant projects them (what was scored)."""
    scores: dict
    use: tuple
    pa: np.ndarray
    pv: np.ndarray

    def on(self, data: Dataset, splits) -> dict[str, float]:
        """The scores with `splits` scored too, on the same projection (no new fit, no new choice)."""
        have = {k.split("_", 1)[0] for k in self.scores if k.endswith("_map")}
        more = [s for s in splits if s not in have]
        return {**self.scores, **_scores_of(self.pa, self.pv, data, more, self.use)}


def _scores_of(pa, pv, data: Dataset, splits, use: tuple, known: dict | None = None) -> dict[str, float]:
    """protocol_scores' output for the variant `use` = (reg, dim) ((0, 0) = raw), projected to
    (pa, pv); `known`: its validation scores when already computed."""
    out: dict[str, float] = {"test_cca": float(use[1] > 0), "test_cca_reg": float(use[0]), "test_cca_dim": float(use[1])}
    for split in splits:
        scores = known if split == "val" and known is not None else split_scores(pa, pv, data, split)
        for key, value in scores.items():
            out[f"{split}_{key}"] = value
    return out


def protocol_scores(za: np.ndarray, zv: np.ndarray, data: Dataset, cfg: Config,
                    splits=("val",), regs=CCA_REGS) -> dict[str, float]:
    """protocol_scored(...).scores."""
    return protocol_scored(za, zv, data, cfg, splits, regs).scores


def protocol_scored(za: np.ndarray, zv: np.ndarray, data: Dataset, cfg: Config,
                    splits=("val",), regs=CCA_REGS) -> Scored:
    """Scores on `splits` under cfg.test_cca; "auto" picks raw or CCA by validation mean mAP. The
    CCA's dimension is chosen on validation from CCA_DIMS at each ridge in `regs`, and the ridge
    among `regs` (module docstring); the final evaluation keeps the default, the full grid.

    Returns {f"{split}_map", f"{split}_map_a2v", f"{split}_map_v2a", ..., "test_cca": 0/1,
    "test_cca_reg", "test_cca_dim" (0 when raw)}, as a Scored with the chosen projection."""
    variants = {}  # (reg, dim) -> projected embeddings; (0, 0) = raw
    val: dict[tuple, dict] = {}  # (reg, dim) -> its validation scores, where computed
    if cfg.test_cca in ("off", "auto"):
        variants[(0.0, 0)] = (za, zv)
    if cfg.test_cca in ("on", "auto"):
        try:
            if not cfg.test_cca_dim:
                scores, reg, dim, pa, pv = _grid(za, zv, data, regs, CCA_DIMS)
                variants[(reg, dim)], val[(reg, dim)] = (pa, pv), scores
            else:
                variants[(SWEEP_CCA_REG, cfg.test_cca_dim)] = project(za, zv, data, SWEEP_CCA_REG, cfg.test_cca_dim)
        except (ValueError, np.linalg.LinAlgError):
            if cfg.test_cca == "on":
                raise
    if len(variants) > 1:  # choose on validation only; a tie keeps the raw embeddings
        for key, v in variants.items():
            if key not in val:
                val[key] = split_scores(*v, data, "val")
        use = max(val, key=lambda c: (val[c]["map"], -c[1]))
    else:
        use = next(iter(variants))
    return Scored(_scores_of(*variants[use], data, splits, use, val.get(use)), use, *variants[use])


def project(za: np.ndarray, zv: np.ndarray, data: Dataset, reg: float, dim: int):
    """Every clip's embeddings through the linear CCA of that ridge and dimension fitted on the
    train split (its directions are nested, so this equals the grid's top-d fit cut to `dim`);
    dim 0: the raw embeddings."""
    if not dim:
        return za, zv
    cca = fit_linear_cca(za[data.splits["train"]], zv[data.splits["train"]], dim, reg)
    return cca.transform_x(za), cca.transform_y(zv)


def held_scores(za: np.ndarray, zv: np.ndarray, data: Dataset, cfg: Config, choice: tuple,
                splits=("val",)) -> dict[str, float]:
    """held_scored(...).scores."""
    return held_scored(za, zv, data, cfg, choice, splits).scores


def held_scored(za: np.ndarray, zv: np.ndarray, data: Dataset, cfg: Config, choice: tuple,
                splits=("val",)) -> Scored:
    """Scores of the embeddings under an earlier choice of `protocol_scores`: choice = (its
    test_cca_reg, test_cca_dim), (0, 0) = raw; the CCA is refitted on these embeddings' train
    split. Where that fit fails and test_cca is not "on", raw (as protocol_scores falls back)."""
    reg, dim = float(choice[0]), int(choice[1])
    if dim:  # raw (dim 0): no CCA fit at all
        try:
            pa, pv = project(za, zv, data, reg, dim)
            return Scored(_scores_of(pa, pv, data, splits, (reg, dim)), (reg, dim), pa, pv)
        except (ValueError, np.linalg.LinAlgError):
            if cfg.test_cca == "on":
                raise
    return Scored(_scores_of(za, zv, data, splits, (0.0, 0)), (0.0, 0), za, zv)


def evaluate_checkpoint(cfg: Config, data: Dataset, checkpoint: str) -> dict[str, float]:
    za, zv = embed_all(load_model(cfg, data, checkpoint), data, cfg.eval_encoder)
    return protocol_scores(za, zv, data, cfg, splits=("val", "test"))
