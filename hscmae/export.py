"""A trained model's embeddings as the retrieval protocol sees them, for figures and downstream use.

`protocol_embeddings` gives every clip's clean-input embeddings before and after the test-time
linear CCA that the final evaluation chose on validation (`hscmae.protocol.protocol_scores`), and
`write_embeddings` saves them with labels and split indices:

    embeddings.npz     plain arrays (np.load(..., allow_pickle=False) reads it): audio, visual
                       (N, embed_dim); audio_cca, visual_cca (N, dim) after the chosen CCA (the raw
                       embeddings again when validation chose none); labels (N,); train, val, test
                       (index arrays); test_cca, test_cca_reg, test_cca_dim (scalars); config
                       (the config as a JSON string)
    embeddings_<split>.parquet   (--format parquet) one row per clip of the split: index, label,
                       audio, visual, audio_cca, visual_cca (fixed-size float32 lists)
"""
from __future__ import annotations

import io
import json
import os

import numpy as np

from hscmae.config import Config
from hscmae.data import Dataset, DataError
from hscmae.io import atomic_write, writable_folder_error
from hscmae.protocol import embed_all, held_scored, protocol_scored


class ExportError(ValueError):
    """The export folder cannot be written."""


def require_classes(data: Dataset, source: str) -> None:
    """Retrieval with one class is trivial (every item relevant, AP = 1): refuse it."""
    classes = np.unique(data.labels)
    if len(classes) < 2:
        raise DataError(f"{source}: labels have {len(classes)} class(es) ({classes.tolist()}); cross-modal "
                        "retrieval needs at least 2 (with one, every clip is relevant and every AP is 1)")


def check_writable(folder: str) -> None:
    why = writable_folder_error(folder)
    if why:
        raise ExportError(f"{folder}: export folder is not writable ({why})")


def protocol_embeddings(model, data: Dataset, cfg: Config, choice=None) -> dict:
    """{audio, visual, audio_cca, visual_cca, scores}: clean-input embeddings of every clip before
    and after the chosen test-time CCA, and the final evaluation's scores (val and test). The
    projection is the very one the scores are of (no second CCA fit).
    choice: the (ridge, dim) the final evaluation of this very model chose (a final checkpoint's
    "val_choice"), which skips the ~50 validation scores of choosing again; None: choose."""
    za, zv = embed_all(model, data, cfg.eval_encoder)
    if choice is None:
        scored = protocol_scored(za, zv, data, cfg, splits=("val", "test"))
    else:
        scored = held_scored(za, zv, data, cfg, choice, splits=("val", "test"))
    pa, pv = scored.projected()
    return {"audio": za, "visual": zv, "audio_cca": pa, "visual_cca": pv, "scores": scored.scores}


def write_embeddings(emb: dict, data: Dataset, cfg: Config, folder: str, fmt: str = "npz") -> list[str]:
    """embeddings.npz, or one embeddings_<split>.parquet per split; each written atomically."""
    check_writable(folder)
    s = emb["scores"]
    if fmt == "npz":
        arrays = {k: np.ascontiguousarray(emb[k], dtype=np.float32) for k in ("audio", "visual", "audio_cca", "visual_cca")}
        arrays.update(labels=np.asarray(data.labels), **{k: np.asarray(data.splits[k], dtype=np.int64)
                                                         for k in ("train", "val", "test")},
                      test_cca=np.array(bool(s["test_cca"])), test_cca_reg=np.array(float(s["test_cca_reg"])),
                      test_cca_dim=np.array(int(s["test_cca_dim"])),
                      config=np.array(json.dumps(cfg.to_dict(), sort_keys=True)))
        path = os.path.join(folder, "embeddings.npz")
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(path, lambda f: f.write(buf.getvalue()))
        return [path]
    if fmt != "parquet":
        raise ValueError(f"unknown export format {fmt!r}: expected 'npz' or 'parquet'")
    import pyarrow as pa
    import pyarrow.parquet as pq

    def column(x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        return pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])

    paths = []
    for split in ("train", "val", "test"):
        idx = np.asarray(data.splits[split], dtype=np.int64)
        table = pa.table({"index": idx, "label": np.asarray(data.labels)[idx],
                          **{k: column(emb[k][idx]) for k in ("audio", "visual", "audio_cca", "visual_cca")}})
        table = table.replace_schema_metadata({"test_cca_reg": str(s["test_cca_reg"]),
                                               "test_cca_dim": str(int(s["test_cca_dim"]))})
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        path = os.path.join(folder, f"embeddings_{split}.parquet")
        atomic_write(path, lambda f, b=buf: f.write(b.getvalue()))
        paths.append(path)
    return paths
