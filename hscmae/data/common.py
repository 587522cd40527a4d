"""What every source shares: the Dataset, its errors, feature validation and chunked reading with
temporal pooling, splits (stratified, or a validation part carved out of a train/test file's
train part), and per-feature scaling fitted on the train split only.

Arrays are read in row chunks of about CHUNK_BYTES so that a large file (memory-mapped .npy or an
HDF5 dataset) is never held as a float64 copy: the result is one float32 (N, D) array per
modality, scaled in place.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

SPLIT_FRACTIONS = (0.70, 0.15, 0.15)  # train / val / test, per class (sources without a given split)
CHUNK_BYTES = 8 << 20  # rows read, pooled and scaled at a time (bench_load: peak ~1.2x the result)
POOLS = ("mean", "max")
NORMALIZERS = ("standard", "minmax")


class DataError(ValueError):
    """Bad input data. The message names the file (and key) and what was expected."""


@dataclass
class Dataset:
    audio: np.ndarray  # float32 (N, Da), scaled with train statistics
    visual: np.ndarray  # float32 (N, Dv)
    labels: np.ndarray  # int64 (N,)
    splits: dict[str, np.ndarray]  # "train" / "val" / "test" -> int64 indices
    name: str = ""
    # where the arrays and splits came from (layout, pooling, scaling, how val was made): what
    # tune_main.py writes to data.json so a reader knows what was trained on
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    # the challenges made at load time (hscmae.data.challenges) that are on, with their seeds; {}
    # when none (the fingerprint is then that of the arrays alone, as before they existed)
    challenges: dict[str, Any] = field(default_factory=dict, compare=False)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """sha256 of every array's shape, dtype and bytes (splits included), cached. The arrays are
        those training sees, after pooling and scaling, so a changed file, pooling, scaling or
        split changes it (and tune_main.py refuses to resume on it); so do the load-time challenges
        (pair_noise etc., their rates and seeds), which are hashed too when any is on."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            arrays = [self.audio, self.visual, self.labels] + [self.splits[k] for k in ("train", "val", "test")]
            for a in arrays:
                a = np.ascontiguousarray(a)
                h.update(f"{a.dtype.str}{a.shape}".encode())
                h.update(memoryview(a).cast("B"))
            if self.challenges:
                h.update(json.dumps(self.challenges, sort_keys=True).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def check_options(temporal_pool: str, normalize: str, val_fraction: float) -> None:
    if temporal_pool not in POOLS:
        raise DataError(f"temporal_pool must be one of {list(POOLS)}, got {temporal_pool!r}")
    if normalize not in NORMALIZERS:
        raise DataError(f"normalize must be one of {list(NORMALIZERS)}, got {normalize!r}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction!r}")


# --------------------------------------------------------------------------------------------
# Features: validate shape and dtype, then read in chunks, pooling segments
# --------------------------------------------------------------------------------------------
def check_feature_array(where: str, shape: tuple, dtype: np.dtype) -> None:
    """Shape and dtype only (no data read): 2-D clips x features or 3-D clips x segments x features."""
    if len(shape) not in (2, 3):
        raise DataError(f"{where}: expected a 2-D array (clips x features) or a 3-D one "
                        f"(clips x segments x features), got shape {tuple(shape)}")
    if 0 in shape:
        raise DataError(f"{where}: empty array of shape {tuple(shape)}")
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise DataError(f"{where}: expected a numeric array, got dtype {dtype}")


def read_features(parts: Sequence[tuple[str, Any]], temporal_pool: str) -> np.ndarray:
    """Concatenate the rows of `parts` ((where, array-like) pairs, already checked with
    check_feature_array; np.ndarray, np.memmap or h5py.Dataset) into one float32 (N, D) array,
    pooling 3-D segments with `temporal_pool`, in row chunks. Rows with NaN or Inf (in any
    segment) are counted per part and refused."""
    n = sum(a.shape[0] for _, a in parts)
    dims = {a.shape[-1] for _, a in parts}
    if len(dims) != 1:
        raise DataError(" / ".join(w for w, _ in parts) + ": feature dimensions differ ("
                        + ", ".join(f"{w}: {a.shape[-1]}" for w, a in parts) + "); expected the same")
    only = parts[0][1] if len(parts) == 1 else None
    if isinstance(only, np.ndarray) and not isinstance(only, np.memmap) and only.ndim == 2 \
            and only.dtype == np.float32:
        out = only  # already what training uses: check it, no copy
    else:
        out = np.empty((n, dims.pop()), dtype=np.float32)
    row0 = 0
    for where, arr in parts:
        row_bytes = int(np.prod(arr.shape[1:])) * max(arr.dtype.itemsize, 4)
        step = max(1, CHUNK_BYTES // row_bytes)
        bad = 0
        for s in range(0, arr.shape[0], step):
            try:
                raw = arr[s:s + step]
            except OSError as e:  # an HDF5 file cut short after its header
                raise DataError(f"{where}: cannot read rows {s}-{s + step} ({' '.join(str(e).split())}); the file looks truncated "
                                "or damaged") from None
            # checked after the cast to float32 (what training uses): a finite float64 beyond
            # float32's range would otherwise become Inf, then NaN after scaling
            with np.errstate(over="ignore"):
                chunk = np.asarray(raw, dtype=np.float32)
            finite = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
            bad += int((~finite).sum())
            if bad:
                continue  # keep counting; the array is refused below
            if chunk.ndim == 3:
                # mean in float64 so that many segments do not lose float32 precision
                chunk = (chunk.mean(axis=1, dtype=np.float64) if temporal_pool == "mean"
                         else chunk.max(axis=1)).astype(np.float32)
            if out is not only:
                out[row0 + s:row0 + s + len(chunk)] = chunk
        if bad:
            raise DataError(f"{where}: {bad} row(s) contain NaN or Inf (or values beyond float32's range, "
                            "|x| > 3.4e38); expected finite features")
        row0 += arr.shape[0]
    return out


def describe_shape(arr) -> str:
    return "x".join(str(d) for d in arr.shape)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------
def check_labels(where: str, labels: np.ndarray, one_hot: bool = False) -> np.ndarray:
    """Integer class ids (N,) -> int64. With one_hot, also (N, 1) id columns and one-hot (N, C)
    rows (the authors' files hold either)."""
    labels = np.asarray(labels)
    if one_hot and labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if one_hot and labels.ndim == 2 and labels.shape[1] > 1:
        return _from_one_hot(where, labels)
    if labels.ndim != 1:
        extra = " or one-hot rows (clips x classes)" if one_hot else ""
        raise DataError(f"{where}: expected a 1-D array of class ids{extra}, got shape {labels.shape}")
    if labels.size == 0:
        raise DataError(f"{where}: empty label array")
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.isfinite(labels).all() and (labels == np.round(labels)).all():
            pass  # integral floats (e.g. saved from pandas) are accepted
        else:
            raise DataError(f"{where}: expected integer class ids, got dtype {labels.dtype}")
    if (labels < 0).any():
        raise DataError(f"{where}: expected non-negative class ids, found {int((labels < 0).sum())} negative")
    return labels.astype(np.int64)


def _from_one_hot(where: str, rows: np.ndarray) -> np.ndarray:
    if rows.shape[0] == 0:
        raise DataError(f"{where}: empty label array")
    if not (np.issubdtype(rows.dtype, np.number) or rows.dtype == bool):
        raise DataError(f"{where}: expected one-hot label rows of 0/1, got dtype {rows.dtype}")
    r = rows.astype(np.float64)
    if not np.isin(r, (0.0, 1.0)).all():
        raise DataError(f"{where}: label rows (shape {rows.shape}) are neither integer class ids nor one-hot: "
                        "found values other than 0 and 1")
    hot = r.sum(axis=1)
    multi, zero = int((hot > 1).sum()), int((hot == 0).sum())
    if multi or zero:
        raise DataError(f"{where}: label rows are neither integer class ids nor one-hot: {multi} multi-hot row(s), "
                        f"{zero} all-zero row(s); expected exactly one 1 per row")
    return r.argmax(axis=1).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------
def stratified_split(labels: np.ndarray, seed: int, where: str = "labels") -> dict[str, np.ndarray]:
    """Deterministic per-class split: every class has at least one clip in train, val and test."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    classes, counts = np.unique(labels, return_counts=True)
    too_few = classes[counts < 3]
    if len(too_few):
        raise DataError(f"{where}: class(es) {too_few.tolist()[:10]} have fewer than 3 clips; "
                        "each class needs at least one clip in train, val and test")
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(SPLIT_FRACTIONS[1] * len(idx)))
        n_test = max(1, round(SPLIT_FRACTIONS[2] * len(idx)))
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val:n_val + n_test])
        parts["train"].append(idx[n_val + n_test:])
    return {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()}


def carve_val(labels: np.ndarray, train: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Deterministic per-class validation part of `train` (indices into labels): round(fraction *
    n_c) clips of each class c, at least one, and never a class's last train clip (a class with a
    single train clip stays in train only). Returns sorted indices."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels[train]):
        idx = rng.permutation(train[labels[train] == c])
        n_val = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        val.append(idx[:n_val])
    return np.sort(np.concatenate(val)).astype(np.int64)


def check_index(where: str, idx: np.ndarray, n: int, what: str) -> np.ndarray:
    idx = np.asarray(idx)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or idx.size == 0:
        raise DataError(f"{where}: {what} must be a non-empty 1-D integer array, got {idx.dtype} {idx.shape}")
    if idx.min() < 0 or idx.max() >= n:
        raise DataError(f"{where}: {what} has indices outside [0, {n})")
    if len(np.unique(idx)) != len(idx):
        raise DataError(f"{where}: {what} repeats an index")
    return np.sort(idx).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Scaling, fitted on the train split only, in place and in chunks
# --------------------------------------------------------------------------------------------
def _train_chunks(x: np.ndarray, train: np.ndarray):
    step = max(1, CHUNK_BYTES // (x.shape[1] * 8))
    for s in range(0, len(train), step):
        yield x[train[s:s + step]].astype(np.float64)


def _ordered_sum(blocks) -> np.ndarray:
    """Column sums adding rows one after another, as numpy's axis-0 sum of the whole array does:
    the running sum is the first row of the next block, so the bits equal x[train].sum(0) (and
    the shipped config's numbers do not move) without a float64 copy of the train split."""
    acc = None
    for b in blocks:
        acc = b.sum(axis=0) if acc is None else np.concatenate([acc[None], b]).sum(axis=0)
    return acc


def normalise(x: np.ndarray, train: np.ndarray, method: str, where: str) -> np.ndarray:
    """Scale every column of float32 x in place with statistics of the train rows only.
    standard: z-score (constant columns centred, not divided); minmax: (x - min) / (max - min)
    of train, so train lies in [0, 1] and val/test may leave it (nothing is clipped); constant
    columns are shifted to 0 on train."""
    n = len(train)
    if method == "standard":
        mean = _ordered_sum(_train_chunks(x, train)) / n
        spread = np.sqrt(_ordered_sum(np.square(np.subtract(b, mean, out=b), out=b)
                                      for b in _train_chunks(x, train)) / n)
        shift = mean
    else:
        lo = hi = None
        for b in _train_chunks(x, train):
            lo = b.min(0) if lo is None else np.minimum(lo, b.min(0))
            hi = b.max(0) if hi is None else np.maximum(hi, b.max(0))
        spread, shift = hi - lo, lo
    const = spread < 1e-8
    if const.any():
        warnings.warn(f"{where}: {int(const.sum())} constant column(s) on the train split; left at 0")
        spread[const] = 1.0
    step = max(1, CHUNK_BYTES // (x.shape[1] * 8))
    for s in range(0, len(x), step):  # the same float64 operations as on the whole array, in place
        block = x[s:s + step].astype(np.float64)
        block -= shift
        block /= spread
        x[s:s + step] = block
    return x
