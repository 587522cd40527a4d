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
from hscmae.cca import CCA_DIMS, CCA_REGS, LinearCCA, fit_linear_cca
from hscmae.config import Config
from hscmae.data import Dataset
from hscmae.metrics import retrieval_map, retrieval_map_pair

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
    other epochs get, "held" (default) or "skip"; every: only the epochs between that are multiples
    of it get `between` (cfg.val_every), the others "skip" (1: all of them). extra(epoch, za, zv) ->
    dict: more metrics from the epoch's embeddings (every epoch that embeds; not counted in eval_s),
    e.g. a bench's other score."""
    grid_epochs: Collection[int] | None = None
    between: str = HELD
    extra: Callable[[int, np.ndarray, np.ndarray], dict] | None = None
    every: int = 1

    def __post_init__(self):
        if self.between not in (HELD, SKIP):
            raise ValueError(f"EvalSchedule.between must be {HELD!r} or {SKIP!r}, got {self.between!r}")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"EvalSchedule.every must be a positive integer, got {self.every!r}")

    def at(self, epoch: int, epochs: int) -> str:
        if epoch == epochs or epoch in (choice_epochs(epochs) if self.grid_epochs is None else self.grid_epochs):
            return GRID
        return self.between if epoch % self.every == 0 else SKIP


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


class Variant(NamedTuple):
    """One point of the protocol: use = (reg, dim), (0, 0) = raw; cca: the linear CCA fitted on
    the train split (None when raw), possibly with more directions than dim (one fit per ridge
    serves every dimension: the directions are nested). Rows are projected only when asked for."""
    use: tuple
    za: np.ndarray
    zv: np.ndarray
    cca: LinearCCA | None = None

    def rows(self, idx=None) -> tuple[np.ndarray, np.ndarray]:
        """These clips' embeddings as this variant scores them (idx None: every clip)."""
        xa, xv = (self.za, self.zv) if idx is None else (self.za[idx], self.zv[idx])
        if self.cca is None:
            return xa, xv
        dim = self.use[1]
        return self.cca.transform_x(xa)[:, :dim], self.cca.transform_y(xv)[:, :dim]

    def scores(self, data: Dataset, split: str) -> dict[str, float]:
        idx = data.splits[split]
        return retrieval_map_pair(*self.rows(idx), data.labels[idx])


HALVING_FRACTION, HALVING_MIN, HALVING_KEEP = 0.25, 128, 4


def halving_subset(n: int, fraction: float = HALVING_FRACTION, minimum: int = HALVING_MIN) -> np.ndarray:
    """The fixed, seeded subset of a split's n queries the halving grid screens on (sorted)."""
    size = min(n, max(minimum, int(round(fraction * n))))
    return np.sort(np.random.default_rng(0).choice(n, size, replace=False))


def _subset_map(pa: np.ndarray, pv: np.ndarray, labels: np.ndarray, sub: np.ndarray) -> float:
    """Mean of the a2v and v2a mAPs of the queries `sub` against every item as gallery."""
    a2v = retrieval_map(pa[sub], pv, labels[sub], labels)
    v2a = retrieval_map(pv[sub], pa, labels[sub], labels)
    return (a2v + v2a) / 2


def _grid(xa: np.ndarray, xv: np.ndarray, data: Dataset, regs, dims, search: str = "exhaustive",
          keep: int = HALVING_KEEP, subset: np.ndarray | None = None):
    """(validation scores, Variant) of the linear CCA (fitted on the train split) with the highest
    validation mean mAP over regs x dims; ties go to the smaller ridge, then the smaller dimension
    (the earlier grid point). One fit per ridge (the top-d directions are nested), and only the
    val rows are projected. search "halving": every point is first scored with a fixed seeded
    subset of the val queries (`halving_subset`, every val item the gallery), the `keep` best of
    them are scored on every val query, and the best of those is chosen: its scores are always
    the exact full-val ones, never the subset's."""
    tr, va = data.splits["train"], data.splits["val"]
    labels = data.labels[va]
    top = min(max(dims), xa.shape[1], xv.shape[1])
    points = []  # (reg, dim, cca, projected val rows)
    for reg in regs:
        cca = fit_linear_cca(xa[tr], xv[tr], top, reg)
        pa, pv = cca.transform_x(xa[va]), cca.transform_y(xv[va])
        points += [(reg, dim, cca, pa[:, :dim], pv[:, :dim]) for dim in dims if dim <= top]
    if search == "halving" and len(points) > keep:
        sub = halving_subset(len(va)) if subset is None else subset
        screen = [_subset_map(pa, pv, labels, sub) for *_, pa, pv in points]
        best_first = sorted(range(len(points)), key=lambda i: -screen[i])  # stable: ties keep grid order
        points = [points[i] for i in sorted(best_first[:keep])]
    elif search not in ("exhaustive", "halving"):
        raise ValueError(f"grid search must be 'exhaustive' or 'halving', got {search!r}")
    best = None
    for reg, dim, cca, pa, pv in points:
        val = retrieval_map_pair(pa, pv, labels)
        if best is None or val["map"] > best[0]["map"]:
            best = (val, Variant((reg, dim), xa, xv, cca))
    return best


def best_linear_cca(xa: np.ndarray, xv: np.ndarray, data: Dataset, regs=CCA_REGS, dims=CCA_DIMS):
    """The linear CCA (fitted on the train split) whose projection scores the highest validation
    mean mAP over regs x dims. Returns (val mAP, reg, dim, projected xa, projected xv); ties go to
    the smaller ridge, then the smaller dimension (the earlier grid point)."""
    val, variant = _grid(xa, xv, data, regs, dims)
    return (val["map"], *variant.use, *variant.rows())


class Scored(NamedTuple):
    """A protocol evaluation: its scores (protocol_scores' dict) and the variant they are of."""
    scores: dict
    variant: Variant

    @property
    def use(self) -> tuple:
        return self.variant.use

    def projected(self) -> tuple[np.ndarray, np.ndarray]:
        """Every clip's embeddings as the chosen variant projects them (what was scored)."""
        return self.variant.rows()

    def on(self, data: Dataset, splits) -> dict[str, float]:
        """The scores with `splits` scored too, on the same variant (no new fit, no new choice)."""
        have = {k[:-len("_map")] for k in self.scores if k.endswith("_map")}
        return {**self.scores, **_scores_of(self.variant, data, [s for s in splits if s not in have])}


def _scores_of(variant: Variant, data: Dataset, splits, known: dict | None = None) -> dict[str, float]:
    """protocol_scores' output for `variant` on `splits`; `known`: its validation scores when
    already computed."""
    use = variant.use
    out: dict[str, float] = {"test_cca": float(use[1] > 0), "test_cca_reg": float(use[0]), "test_cca_dim": float(use[1])}
    for split in splits:
        scores = known if split == "val" and known is not None else variant.scores(data, split)
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
    among `regs` (module docstring), exhaustively or, with cfg.grid_search "halving", screened on a
    subset of the val queries first (`_grid`); the final evaluation keeps the default, the full grid.

    Returns {f"{split}_map", f"{split}_map_a2v", f"{split}_map_v2a", ..., "test_cca": 0/1,
    "test_cca_reg", "test_cca_dim" (0 when raw)}, as a Scored with the chosen variant."""
    variants = {}  # (reg, dim) -> Variant; (0, 0) = raw
    val: dict[tuple, dict] = {}  # (reg, dim) -> its validation scores, where computed
    if cfg.test_cca in ("off", "auto"):
        variants[(0.0, 0)] = Variant((0.0, 0), za, zv)
    if cfg.test_cca in ("on", "auto"):
        try:
            if not cfg.test_cca_dim:
                scores, v = _grid(za, zv, data, regs, CCA_DIMS, cfg.grid_search)
                variants[v.use], val[v.use] = v, scores
            else:
                variants[(SWEEP_CCA_REG, cfg.test_cca_dim)] = _fitted(za, zv, data, SWEEP_CCA_REG, cfg.test_cca_dim)
        except (ValueError, np.linalg.LinAlgError):
            if cfg.test_cca == "on":
                raise
    if len(variants) > 1:  # choose on validation only; a tie keeps the raw embeddings
        for key, v in variants.items():
            if key not in val:
                val[key] = v.scores(data, "val")
        use = max(val, key=lambda c: (val[c]["map"], -c[1]))
    else:
        use = next(iter(variants))
    return Scored(_scores_of(variants[use], data, splits, val.get(use)), variants[use])


def _fitted(za: np.ndarray, zv: np.ndarray, data: Dataset, reg: float, dim: int) -> Variant:
    """The Variant of that ridge and dimension, its CCA fitted on the train split; dim 0: raw."""
    if not dim:
        return Variant((0.0, 0), za, zv)
    tr = data.splits["train"]
    return Variant((reg, dim), za, zv, fit_linear_cca(za[tr], zv[tr], dim, reg))


def project(za: np.ndarray, zv: np.ndarray, data: Dataset, reg: float, dim: int):
    """Every clip's embeddings through the linear CCA of that ridge and dimension fitted on the
    train split (its directions are nested, so this equals the grid's top-d fit cut to `dim`);
    dim 0: the raw embeddings."""
    return _fitted(za, zv, data, reg, dim).rows()


def held_scores(za: np.ndarray, zv: np.ndarray, data: Dataset, cfg: Config, choice: tuple,
                splits=("val",)) -> dict[str, float]:
    """held_scored(...).scores."""
    return held_scored(za, zv, data, cfg, choice, splits).scores


def held_scored(za: np.ndarray, zv: np.ndarray, data: Dataset, cfg: Config, choice: tuple,
                splits=("val",)) -> Scored:
    """Scores of the embeddings under an earlier choice of `protocol_scores`: choice = (its
    test_cca_reg, test_cca_dim), (0, 0) = raw (no CCA fit); the CCA is refitted on these
    embeddings' train split. Where that fit fails and test_cca is not "on", raw (as
    protocol_scores falls back)."""
    reg, dim = float(choice[0]), int(choice[1])
    if dim:
        try:
            v = _fitted(za, zv, data, reg, dim)
            return Scored(_scores_of(v, data, splits), v)
        except (ValueError, np.linalg.LinAlgError):
            if cfg.test_cca == "on":
                raise
    v = Variant((0.0, 0), za, zv)
    return Scored(_scores_of(v, data, splits), v)


def evaluate_checkpoint(cfg: Config, data: Dataset, checkpoint: str) -> dict[str, float]:
    za, zv = embed_all(load_model(cfg, data, checkpoint), data, cfg.eval_encoder)
    return protocol_scores(za, zv, data, cfg, splits=("val", "test"))
