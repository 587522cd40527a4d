"""Cross-modal retrieval mAP: exact, vectorised.

For a query whose relevant set R is the gallery items of its class, with cosine scores s,
    AP = mean over i in R of  #{j in R : s_j >= s_i} / #{j : s_j >= s_i}
which is scikit-learn's `average_precision_score`, tie handling included (tied scores form one
threshold). Only the ranks of the relevant items matter: each query's relevant scores (about N/K)
are sorted, which gives the numerators (with their tie groups), and the denominators are each
relevant score's insertion point in the query's whole row, sorted.

Sorting is numpy's (its vectorised sort, ~2.7 ns per float32 on AVX2), values only: torch's CPU
sort is ~15x slower, which is why an earlier version avoided sorting rows and counted with a
binned branch-free search instead; the sorted row plus `np.searchsorted` of the R relevant scores
halves the time of a 4,200-clip validation mAP (bench/bench_map.py) and gives the same counts.
Queries go in chunks of several classes at once (rows padded to the chunk's largest class).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

_MAX_CHUNK_SCORES = 1 << 20  # queries per chunk <= this / gallery size: bounds memory, and is
# also the fastest measured (2**18 .. 2**24 tried): the temporaries stay in cache
_MAX_SHARED_SCORES = 1 << 25  # retrieval_map_pair keeps the whole score matrix up to this (128 MB float32)
_LABEL_CACHE_SIZE = 16  # label indexes kept (a run's val and test splits, a few data sets)


def _embeddings(x, name: str) -> torch.Tensor:
    a = x.detach().cpu() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (items x dims), got shape {tuple(a.shape)}")
    if a.is_complex() if isinstance(a, torch.Tensor) else a.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected real numbers, got dtype {a.dtype}")
    t = torch.as_tensor(a)
    t = t.double() if t.dtype == torch.float64 else t.float()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return t


def _labels(x, name: str, n: int, rows_name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if len(a) != n:
        raise ValueError(f"{name}: labels must match rows: {rows_name} has {n} rows, {name} has {len(a)} labels")
    return a


def _query_gallery(query, gallery, query_labels, gallery_labels):
    """Checked (query, gallery, query labels, gallery labels): 2-D finite real embeddings of one
    width, in one float dtype; 1-D labels matching their rows."""
    q = _embeddings(query, "query")
    g = _embeddings(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query and gallery dimensions differ: {q.shape[1]} vs {g.shape[1]}")
    ql = _labels(query_labels, "query_labels", len(q), "query")
    gl = _labels(gallery_labels, "gallery_labels", len(g), "gallery")
    if q.dtype != g.dtype:
        q, g = q.double(), g.double()
    return q, g, ql, gl


def _count_at_or_above(scores: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(m, N) scores; (m, W) each row's relevant scores, ascending (padding +inf) -> (m, W) int64:
    #{j : scores[:, j] >= r[:, i]}, i.e. N minus the sorted row's left insertion point of r_i
    (meaningful for the real, non-padding r_i). Tied scores compare equal, so a tie group counts
    whole, and a relevant item counts itself (its score is read from this same matrix)."""
    rows = np.sort(scores.numpy(), axis=1)  # numpy's vectorised sort; values only, never indices
    ranked = r.numpy()
    below = np.empty(ranked.shape, dtype=np.int64)
    for i in range(len(rows)):  # each row's W relevant scores into its own sorted row
        below[i] = np.searchsorted(rows[i], ranked[i], side="left")
    return torch.from_numpy(scores.shape[1] - below)


def _average_precision(scores: torch.Tensor, relevant: torch.Tensor, nrel: torch.Tensor) -> torch.Tensor:
    """(m, N) scores; (m, W) column indices of each row's relevant items, the first nrel[row] of
    them real (the rest is padding) -> (m,) float64 AP."""
    m, width = relevant.shape
    real = torch.arange(width) < nrel[:, None]
    # relevant scores read from the same matrix, so each item ties with itself
    r = scores.gather(1, relevant).masked_fill_(~real, torch.inf)
    r = torch.from_numpy(np.sort(r.numpy(), axis=1))
    at_or_above = _count_at_or_above(scores, r)
    # relevant items scoring >= r_i: all but those before the start of r_i's tie group
    new_group = torch.ones(m, width, dtype=torch.bool)
    new_group[:, 1:] = r[:, 1:] != r[:, :-1]
    group_start = torch.where(new_group, torch.arange(width), 0).cummax(1).values
    precision = (nrel[:, None] - group_start).double() / at_or_above.clamp(min=1).double()
    return (precision * real).sum(1) / nrel.double()


class LabelIndex(NamedTuple):
    """The label bookkeeping of one (query labels, gallery labels) pair, independent of any score:
    class codes of the queries, the gallery grouped by class (each class one slice of by_class),
    and the queries that have a relevant item, ordered by class size then class so that the rows
    of a chunk (several classes at once: few large tensor ops) need similar padding."""
    qc: torch.Tensor  # (n_query,) class code of each query
    class_size: torch.Tensor  # (classes,) gallery items per class
    class_start: torch.Tensor  # (classes,) where each class's slice of by_class starts
    by_class: torch.Tensor  # (n_gallery,) gallery indices grouped by class
    order: torch.Tensor  # queries with a relevant item (AP defined), by class size, then class


_LABEL_CACHE: OrderedDict = OrderedDict()


def _label_key(a: np.ndarray):
    if a.dtype.kind == "O":  # Python objects: no stable bytes to key on
        return None
    return a.dtype.str, a.shape, hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()


def label_index(query_labels, gallery_labels, *, cache: bool = True) -> LabelIndex:
    """The LabelIndex of these labels. With cache (default), kept by the labels' contents (dtype,
    shape, bytes): the same split scored at every grid point and every epoch of a run, in both
    directions, does this once."""
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    key = None
    if cache:
        kq, kg = _label_key(ql), _label_key(gl)
        key = (kq, kg) if kq is not None and kg is not None else None
        if key is not None and key in _LABEL_CACHE:
            _LABEL_CACHE.move_to_end(key)
            return _LABEL_CACHE[key]
    # labels of any type (ints, strings) become codes
    _, codes = np.unique(np.concatenate([ql, gl]), return_inverse=True)
    qc, gc = codes[:len(ql)].ravel(), codes[len(ql):].ravel()
    class_size = np.bincount(gc, minlength=codes.max() + 1)
    order = np.lexsort((qc, class_size[qc]))  # by class size, then class
    index = LabelIndex(qc=torch.from_numpy(qc), class_size=torch.from_numpy(class_size),
                       class_start=torch.from_numpy(np.cumsum(class_size) - class_size),
                       by_class=torch.from_numpy(np.argsort(gc, kind="stable")),  # bookkeeping, not a score sort
                       order=torch.from_numpy(order[class_size[qc[order]] > 0]))  # no relevant item: skipped
    if key is not None:
        _LABEL_CACHE[key] = index
        while len(_LABEL_CACHE) > _LABEL_CACHE_SIZE:
            _LABEL_CACHE.popitem(last=False)
    return index


def _check_chunk_size(chunk_size) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")


def _aps(q: torch.Tensor, g: torch.Tensor, index: LabelIndex, chunk_size: int,
         scores: torch.Tensor | None = None) -> np.ndarray:
    """AP of every query of the normalised q against g; `scores`: q @ g.T already computed."""
    ap = np.full(len(q), np.nan)
    rows_per_chunk = min(chunk_size, max(1, _MAX_CHUNK_SCORES // len(g)))
    for start in range(0, len(index.order), rows_per_chunk):
        rows = index.order[start:start + rows_per_chunk]
        c = index.qc[rows]
        nrel = index.class_size[c]
        slots = index.class_start[c][:, None] + torch.arange(int(nrel.max()))
        relevant = index.by_class[slots.clamp_(max=len(g) - 1)]
        s = q[rows] @ g.T if scores is None else scores.index_select(0, rows)
        ap[rows.numpy()] = _average_precision(s, relevant, nrel).numpy()
    return ap


def average_precisions(query, gallery, query_labels, gallery_labels, *, chunk_size: int = 1024,
                       cache: bool = True) -> np.ndarray:
    """AP of every query (float64, NaN where the query has no relevant gallery item).

    Queries go in chunks of at most `chunk_size`, fewer when the gallery is large so that a chunk
    holds at most 1M scores (about 25 MB of temporaries at the peak). cache: reuse the labels'
    bookkeeping (label_index) when these labels were seen before."""
    q, g, ql, gl = _query_gallery(query, gallery, query_labels, gallery_labels)
    _check_chunk_size(chunk_size)
    if len(q) == 0 or len(g) == 0:
        return np.full(len(q), np.nan)
    # a zero vector scores 0 against everything
    return _aps(F.normalize(q, dim=1), F.normalize(g, dim=1), label_index(ql, gl, cache=cache), chunk_size)


def retrieval_map(query, gallery, query_labels, gallery_labels, *, chunk_size: int = 1024,
                  return_per_query: bool = False):
    """Mean AP of cosine-similarity retrieval, relevant = same label; queries without any relevant
    gallery item are left out of the mean (NaN if that is every query). With return_per_query,
    returns (mAP, per-query APs with NaN for the skipped ones)."""
    ap = average_precisions(query, gallery, query_labels, gallery_labels, chunk_size=chunk_size)
    m = _mean_ap(ap)
    return (m, ap) if return_per_query else m


def _mean_ap(ap: np.ndarray) -> float:
    valid = ~np.isnan(ap)
    return float(ap[valid].mean()) if valid.any() else float("nan")


def retrieval_map_pair(audio, visual, labels, *, chunk_size: int = 1024, cache: bool = True) -> dict[str, float]:
    """Audio queries against the visual gallery of the same clips, and the reverse: one label
    index serves both directions, and (up to 32M scores) one score matrix, the v2a scores being
    the a2v ones transposed."""
    a, v, la, _ = _query_gallery(audio, visual, labels, labels)
    _check_chunk_size(chunk_size)
    if len(a) == 0:
        return {"map_a2v": float("nan"), "map_v2a": float("nan"), "map": float("nan")}
    a, v = F.normalize(a, dim=1), F.normalize(v, dim=1)
    index = label_index(la, la, cache=cache)
    scores = a @ v.T if len(a) * len(v) <= _MAX_SHARED_SCORES else None
    a2v = _mean_ap(_aps(a, v, index, chunk_size, scores))
    v2a = _mean_ap(_aps(v, a, index, chunk_size, None if scores is None else scores.T.contiguous()))
    return {"map_a2v": a2v, "map_v2a": v2a, "map": (a2v + v2a) / 2}


# ------------------------------------------------------------------------------------------------
# Precision-recall curves and per-class AP (figures and tables; not on the training path, so the
# PR curve simply sorts each query's row)
# ------------------------------------------------------------------------------------------------
def interpolated_precision(query, gallery, query_labels, gallery_labels, n_points: int = 11,
                           *, chunk_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Interpolated precision of every query at `n_points` recall levels 0, 1/(n-1), ..., 1:
    P(r) = the highest precision at any score threshold whose recall is >= r (the standard
    11-point PR curve of cross-modal retrieval). Tied scores form one threshold, as in
    scikit-learn's `precision_recall_curve` (whose extra point (recall 0, precision 1) is not a
    threshold and is not used). Cosine similarity, relevant = same label.

    Returns (recall levels (n_points,), precision (n_queries, n_points) float64, NaN rows for
    queries without any relevant gallery item)."""
    q, g, ql, gl = _query_gallery(query, gallery, query_labels, gallery_labels)
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 2:
        raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}")
    levels = np.linspace(0.0, 1.0, n_points)
    out = np.full((len(q), n_points), np.nan)
    if len(q) == 0 or len(g) == 0:
        return levels, out
    q, g = F.normalize(q, dim=1), F.normalize(g, dim=1)
    _, codes = np.unique(np.concatenate([ql, gl]), return_inverse=True)
    qc, gc = torch.from_numpy(codes[:len(ql)].ravel()), torch.from_numpy(codes[len(ql):].ravel())
    lv = torch.from_numpy(levels)
    for start in range(0, len(q), chunk_size):
        s = q[start:start + chunk_size] @ g.T
        s, order = s.sort(dim=1, descending=True, stable=True)
        rel = gc[order] == qc[start:start + chunk_size, None]
        nrel = rel.sum(1)
        tp = rel.cumsum(1).double()
        k = torch.arange(1, len(g) + 1, dtype=torch.float64)
        # the last item of each run of equal scores ends a threshold; only there is (recall,
        # precision) a point of the curve
        end = torch.ones_like(rel)
        end[:, :-1] = s[:, 1:] != s[:, :-1]
        prec = torch.where(end, tp / k, torch.tensor(-1.0, dtype=torch.float64))
        best_after = prec.flip(1).cummax(1).values.flip(1)  # max precision at this threshold or later
        recall = tp / nrel.clamp(min=1)[:, None]
        # first position whose recall reaches each level: every threshold with recall >= r is at or
        # after it (recall never decreases down the ranking)
        first = torch.searchsorted(recall.contiguous(), lv.expand(len(s), -1).contiguous() - 1e-12)
        p = best_after.gather(1, first.clamp(max=len(g) - 1))
        p[nrel == 0] = torch.nan
        out[start:start + len(s)] = p.numpy()
    return levels, out


def pr_curve(query, gallery, query_labels, gallery_labels, n_points: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """(recall levels, interpolated precision averaged over the queries that have a relevant item)."""
    levels, p = interpolated_precision(query, gallery, query_labels, gallery_labels, n_points)
    ok = ~np.isnan(p[:, 0])
    return levels, (p[ok].mean(0) if ok.any() else np.full(len(levels), np.nan))


def per_class_map(ap: np.ndarray, labels) -> dict:
    """{class: mean AP of its queries} from per-query APs (NaN ones, without relevant items, left
    out; a class none of whose queries has one is left out)."""
    ap, labels = np.asarray(ap, dtype=np.float64), np.asarray(labels)
    if ap.shape != labels.shape:
        raise ValueError(f"per-query APs and labels differ in shape: {ap.shape} vs {labels.shape}")
    out = {}
    for c in np.unique(labels):
        v = ap[(labels == c) & ~np.isnan(ap)]
        if len(v):
            out[c.item() if hasattr(c, "item") else c] = float(v.mean())
    return out
