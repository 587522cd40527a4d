"""Cross-modal retrieval evaluation of a trained model, with the optional test-time linear CCA.

Protocol: embed every clip with clean inputs; optionally fit a linear CCA on the *train* split's
embeddings and project; within a split, audio queries search that split's visual gallery and vice
versa (relevant = same label). With test_cca="auto" the choice between raw and CCA-projected
embeddings is made on the validation split and then applied to test, never chosen on test.

    python -m hscmae.eval --config FILE --checkpoint PATH [--data SRC] [--out DIR]
"""
from __future__ import annotations

import numpy as np
import torch

from hscmae.cca import fit_linear_cca
from hscmae.config import Config
from hscmae.data import Dataset
from hscmae.metrics import retrieval_map_pair


@torch.no_grad()
def embed_all(model, data: Dataset, which: str = "teacher", batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Clean-input embeddings of every clip from the teacher (or student) encoders."""
    model.eval()
    enc = model.teacher if (which == "teacher" and model.teacher is not None) else model.encoders
    out = []
    for m, x in (("a", data.audio), ("v", data.visual)):
        x = torch.from_numpy(np.ascontiguousarray(x))
        out.append(torch.cat([enc[m](x[i:i + batch]) for i in range(0, len(x), batch)]).numpy())
    model.train()
    return out[0], out[1]


def split_scores(za: np.ndarray, zv: np.ndarray, data: Dataset, split: str) -> dict[str, float]:
    idx = data.splits[split]
    return retrieval_map_pair(za[idx], zv[idx], data.labels[idx])


def protocol_scores(za: np.ndarray, zv: np.ndarray, data: Dataset, cfg: Config,
                    splits=("val",)) -> dict[str, float]:
    """Scores on `splits` under cfg.test_cca; "auto" picks raw or CCA by validation mean mAP.

    Returns {f"{split}_map", f"{split}_map_a2v", f"{split}_map_v2a", ..., "test_cca": 0/1}."""
    variants = {}
    if cfg.test_cca in ("off", "auto"):
        variants[False] = (za, zv)
    if cfg.test_cca in ("on", "auto"):
        dim = cfg.test_cca_dim or min(za.shape[1], 64)
        tr = data.splits["train"]
        try:
            cca = fit_linear_cca(za[tr], zv[tr], dim)
            variants[True] = (cca.transform_x(za), cca.transform_y(zv))
        except (ValueError, np.linalg.LinAlgError):
            if cfg.test_cca == "on":
                raise
    if len(variants) > 1:  # choose on validation only
        val = {c: split_scores(*v, data, "val")["map"] for c, v in variants.items()}
        use = max(val, key=lambda c: (val[c], -c))
    else:
        use = next(iter(variants))
    out: dict[str, float] = {"test_cca": float(use)}
    for split in splits:
        for key, value in split_scores(*variants[use], data, split).items():
            out[f"{split}_{key}"] = value
    return out


def evaluate_checkpoint(cfg: Config, data: Dataset, checkpoint: str) -> dict[str, float]:
    from hscmae.train import build_model, load_checkpoint

    state = load_checkpoint(checkpoint)
    model = build_model(cfg, data)
    model.load_state_dict(state["model"])
    za, zv = embed_all(model, data, cfg.eval_encoder)
    return protocol_scores(za, zv, data, cfg, splits=("val", "test"))
