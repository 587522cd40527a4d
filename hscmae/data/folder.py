"""Folders of .npy files:
    audio_features.npy  (N, Da) or (N, Sa, Da)  float or integer; 3-D = per-segment features
    visual_features.npy (N, Dv) or (N, Sv, Dv)
    labels.npy          (N,)  integer class ids, used only for evaluation
    splits.npz          optional, integer index arrays `train`, `val`, `test`, used as given
Files are read with allow_pickle=False, memory-mapped when large."""
from __future__ import annotations

import os
import zipfile

import numpy as np

from hscmae.data.common import DataError, check_feature_array, check_labels

FILES = ("audio_features.npy", "visual_features.npy", "labels.npy")
MMAP_BYTES = 256 << 20  # memory-map feature files larger than this instead of reading them whole


def load_npy(path: str) -> np.ndarray:
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found (a data folder needs {', '.join(FILES)})")
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise DataError(f"{path}: not a readable .npy file (no NumPy header); expected a numeric array saved with np.save")
    try:
        mmap = "r" if os.path.getsize(path) > MMAP_BYTES else None
        arr = np.load(path, mmap_mode=mmap, allow_pickle=False)
    except ValueError as e:  # object arrays need pickle, which we refuse
        raise DataError(f"{path}: cannot load without pickle ({e}); expected a numeric .npy array") from None
    except Exception as e:
        raise DataError(f"{path}: not a readable .npy file ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: expected a single .npy array, got {type(arr).__name__}")
    return arr


def load_splits(path: str, n: int) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"train", "val", "test"} - set(z.files)
            if missing:
                raise DataError(f"{path}: missing split array(s) {sorted(missing)}; expected train, val, test")
            splits = {k: z[k] for k in ("train", "val", "test")}
    except DataError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz of integer index arrays ({e})") from None
    seen = np.zeros(n, dtype=bool)
    for k, idx in splits.items():
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or idx.size == 0:
            raise DataError(f"{path}: split '{k}' must be a non-empty 1-D integer array, got {idx.dtype} {idx.shape}")
        if idx.min() < 0 or idx.max() >= n:
            raise DataError(f"{path}: split '{k}' has indices outside [0, {n})")
        if seen[idx].any() or len(np.unique(idx)) != len(idx):
            raise DataError(f"{path}: split '{k}' overlaps another split or repeats an index")
        seen[idx] = True
        splits[k] = np.sort(idx).astype(np.int64)
    return splits


def open_folder(source: str) -> dict:
    """Validate a folder (shapes, dtypes, labels, lengths, splits.npz; the values are checked
    when read_features reads them). Returns the source's parts (see hscmae.data.open_source)."""
    paths = [os.path.join(source, f) for f in FILES]
    audio, visual, labels = (load_npy(p) for p in paths)
    check_feature_array(paths[0], audio.shape, audio.dtype)
    check_feature_array(paths[1], visual.shape, visual.dtype)
    labels = check_labels(paths[2], labels)
    n = {p: len(a) for p, a in zip(paths, (audio, visual, labels))}
    if len(set(n.values())) != 1:
        raise DataError(f"{source}: the three arrays must have the same number of clips, got "
                        + ", ".join(f"{os.path.basename(p)}: {k}" for p, k in n.items()))
    split_path = os.path.join(source, "splits.npz")
    splits = load_splits(split_path, len(labels)) if os.path.exists(split_path) else None
    meta = {"format": "folder", "split": "splits.npz, as given" if splits is not None else
            "stratified per class 70/15/15 from split_seed",
            "audio_shape": list(audio.shape), "visual_shape": list(visual.shape)}
    return dict(audio=[(paths[0], audio)], visual=[(paths[1], visual)], labels=labels, splits=splits,
                where={"a": paths[0], "v": paths[1], "l": paths[2]}, meta=meta)


def write_folder(folder: str, audio: np.ndarray, visual: np.ndarray, labels: np.ndarray,
                 splits: dict[str, np.ndarray]) -> None:
    """Write arrays in the folder format (FILES plus splits.npz), each file atomically."""
    import io

    from hscmae.io import atomic_write

    for name, arr in zip(FILES, (audio, visual, labels)):
        atomic_write(os.path.join(folder, name), lambda f, a=arr: np.save(f, a, allow_pickle=False))

    def write_npz(f):
        buf = io.BytesIO()
        np.savez(buf, **splits)
        f.write(buf.getvalue())
    atomic_write(os.path.join(folder, "splits.npz"), write_npz)
