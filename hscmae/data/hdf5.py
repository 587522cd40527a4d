"""The authors' HDF5 feature files (read through h5py), in either layout their loader reads:

    split keys:  audio_train, audio_test, visual_train, visual_test, lab_train, lab_test
                 (the VEGAS.h5 their README links; labels are class ids or one-hot rows)
    flag column: audio_feat, visual_feat, Label_ID, and Train_test or Split with entries
                 "1" (train) / "0" (test), stored as bytes, strings or integers

Features are (clips x dims) or (clips x segments x dims). The files have train and test only:
their test part is kept exactly; validation is carved per class out of their train part
(val_fraction, split_seed), unless the file holds our optional `val_index` key (indices among
its train clips, which `python -m hscmae.data export` writes so a round trip keeps the split;
the authors' loader ignores it).
"""
from __future__ import annotations

import os

import numpy as np

from hscmae.data.common import DataError, carve_val, check_feature_array, check_index, check_labels

SPLIT_KEYS = ("audio_train", "audio_test", "visual_train", "visual_test", "lab_train", "lab_test")
FLAG_KEYS = ("audio_feat", "visual_feat", "Label_ID")
FLAG_COLUMNS = ("Train_test", "Split")  # the authors' loader tries Train_test first
VAL_KEY = "val_index"
LAYOUTS = ("split-keys", "flag-column")
EXPECTED = (f"expected the split-keys layout ({', '.join(SPLIT_KEYS)}) or the flag-column layout "
            f"({', '.join(FLAG_KEYS)} and {' or '.join(FLAG_COLUMNS)})")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())  # h5py's messages may span lines; an error is one line


def is_hdf5_path(path: str) -> bool:
    return os.path.isfile(path)  # a file source can only be HDF5; open_hdf5 says if it is not


def _dataset(f, path: str, key: str):
    import h5py

    obj = f[key]
    if not isinstance(obj, h5py.Dataset):
        raise DataError(f"{path}, key '{key}': expected an array (HDF5 dataset), got a {type(obj).__name__}")
    return obj


def _feature(f, path: str, key: str):
    import h5py

    ds = _dataset(f, path, key)
    where = f"{path}, key '{key}'"
    dt = ds.dtype
    kind = None
    if h5py.check_string_dtype(dt) is not None or dt.kind in "SU":
        kind = "string"
    elif h5py.check_vlen_dtype(dt) is not None:
        kind = "variable-length"
    elif dt.kind == "O":
        kind = "object"
    elif dt.kind == "V":
        kind = "compound/opaque"
    if kind:
        raise DataError(f"{where}: expected a numeric feature array, got a {kind} dtype ({dt})")
    check_feature_array(where, ds.shape, dt)
    return where, ds


def _read_small(f, path: str, key: str) -> np.ndarray:
    try:
        return np.asarray(_dataset(f, path, key)[()])
    except OSError as e:
        raise DataError(f"{path}, key '{key}': cannot be read ({_one_line(e)}); the file looks truncated or damaged") from None


def _labels(f, path: str, key: str) -> tuple[np.ndarray, str]:
    import h5py

    ds = _dataset(f, path, key)
    if h5py.check_string_dtype(ds.dtype) is not None or ds.dtype.kind in "SUOV":
        raise DataError(f"{path}, key '{key}': expected integer class ids or one-hot rows, got dtype {ds.dtype}")
    raw = _read_small(f, path, key)
    form = "one-hot" if raw.ndim == 2 and raw.shape[1] > 1 else "class ids"
    return check_labels(f"{path}, key '{key}'", raw, one_hot=True), form


def _flags(f, path: str, key: str) -> np.ndarray:
    """"1" = train, "0" = test, as bytes, strings or integers -> bool array (True = train)."""
    raw = _read_small(f, path, key)
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1:
        raise DataError(f"{path}, key '{key}': expected one split flag per clip (1-D), got shape {raw.shape}")
    if raw.dtype.kind in "SO":
        text = np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in raw])
    elif raw.dtype.kind in "iub":
        text = raw.astype(np.int64).astype(str)
    else:
        text = raw.astype(str)
    text = np.char.strip(text.astype(str))
    unknown = sorted({str(t) for t in np.unique(text)} - {"0", "1"})
    if unknown:
        n = int(np.isin(text, unknown).sum())
        raise DataError(f"{path}, key '{key}': {n} unknown split flag(s) {unknown[:5]}; "
                        'expected "1" (train) or "0" (test), as bytes, strings or integers')
    return text == "1"


def _same_length(path: str, split: str, arrays: dict) -> None:
    if len({a.shape[0] for a in arrays.values()}) != 1:
        raise DataError(f"{path}: the {split} arrays differ in length ("
                        + ", ".join(f"{k}: {a.shape[0]}" for k, a in arrays.items())
                        + "); expected one row per clip in each")


def open_hdf5(f, path: str, split_seed: int, val_fraction: float) -> dict:
    """Validate an open h5py.File and describe it (see hscmae.data.open_source); the features
    stay h5py datasets, read in chunks by read_features while the file is open."""
    keys = sorted(f.keys())
    if all(k in f for k in SPLIT_KEYS):
        layout = "split-keys"
        a = [_feature(f, path, "audio_train"), _feature(f, path, "audio_test")]
        v = [_feature(f, path, "visual_train"), _feature(f, path, "visual_test")]
        lab_tr, form = _labels(f, path, "lab_train")
        lab_te, _ = _labels(f, path, "lab_test")
        _same_length(path, "train", {"audio_train": a[0][1], "visual_train": v[0][1], "lab_train": lab_tr})
        _same_length(path, "test", {"audio_test": a[1][1], "visual_test": v[1][1], "lab_test": lab_te})
        labels = np.concatenate([lab_tr, lab_te])
        is_train = np.arange(len(labels)) < len(lab_tr)
        flag_key = None
    elif all(k in f for k in FLAG_KEYS) and any(k in f for k in FLAG_COLUMNS):
        layout = "flag-column"
        flag_key = next(k for k in FLAG_COLUMNS if k in f)
        a = [_feature(f, path, "audio_feat")]
        v = [_feature(f, path, "visual_feat")]
        labels, form = _labels(f, path, "Label_ID")
        is_train = _flags(f, path, flag_key)
        _same_length(path, "flag-column", {"audio_feat": a[0][1], "visual_feat": v[0][1],
                                           "Label_ID": labels, flag_key: is_train})
    else:
        missing_s = [k for k in SPLIT_KEYS if k not in f]
        missing_f = [k for k in FLAG_KEYS if k not in f] + ([] if any(k in f for k in FLAG_COLUMNS)
                                                              else [" or ".join(FLAG_COLUMNS)])
        raise DataError(f"{path}: neither layout of the authors' files; keys found: {keys}; {EXPECTED} "
                        f"(missing: split keys {missing_s}, flag column {missing_f})")
    train_all, test = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    if not len(train_all) or not len(test):
        raise DataError(f"{path}, key '{flag_key}': {len(train_all)} train and {len(test)} test clip(s); "
                        'expected both "1" (train) and "0" (test) flags')
    if VAL_KEY in f:
        pos = check_index(f"{path}, key '{VAL_KEY}'", _read_small(f, path, VAL_KEY), len(train_all),
                          "validation indices among the file's train clips")
        if len(pos) == len(train_all):
            raise DataError(f"{path}, key '{VAL_KEY}': holds every train clip; expected a part of them")
        val, val_from = train_all[pos], f"the file's '{VAL_KEY}' key (indices among its train clips)"
    else:
        val = carve_val(labels, train_all, val_fraction, split_seed)
        val_from = (f"carved from the file's train part: per class round({val_fraction} x n) clips "
                    f"(at least 1, never a class's last), split_seed {split_seed}")
    splits = {"train": np.setdiff1d(train_all, val).astype(np.int64), "val": val,
              "test": test.astype(np.int64)}
    meta = {"format": "hdf5", "layout": layout, "labels": form,
            "test": f"the file's test part, as given ({len(test)} clips)", "val": val_from,
            "audio_shape": [list(ds.shape) for _, ds in a], "visual_shape": [list(ds.shape) for _, ds in v]}
    if flag_key:
        meta["flag_key"] = flag_key
    return dict(audio=a, visual=v, labels=labels, splits=splits,
                where={"a": a[0][0], "v": v[0][0], "l": path}, meta=meta)


def open_file(path: str):
    """h5py.File(path, "r"), with one DataError for a file that is not HDF5 or is cut short."""
    import h5py

    if not h5py.is_hdf5(path):
        raise DataError(f"{path}: not an HDF5 file (no HDF5 signature); a file source must be one of the "
                        "authors' .h5 feature files")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: cannot be opened as HDF5, the file looks truncated or damaged ({_one_line(e)})") from None


def write_hdf5(path: str, audio: np.ndarray, visual: np.ndarray, labels: np.ndarray,
               splits: dict[str, np.ndarray], layout: str = "split-keys") -> None:
    """Write arrays in the authors' layout (train part = our train + val, in index order; labels as
    class ids; flags as bytes "1"/"0"), plus `val_index` so that loading gives back our splits."""
    import h5py

    from hscmae.io import atomic_write

    if layout not in LAYOUTS:
        raise DataError(f"--layout must be one of {list(LAYOUTS)}, got {layout!r}")
    test = np.sort(splits["test"])
    train_part = np.sort(np.concatenate([splits["train"], splits["val"]]))
    val_index = np.searchsorted(train_part, np.sort(splits["val"])).astype(np.int64)

    def write(fobj):
        with h5py.File(fobj, "w") as h:
            if layout == "split-keys":
                for name, arr in (("audio", audio), ("visual", visual), ("lab", labels)):
                    h[f"{name}_train"], h[f"{name}_test"] = arr[train_part], arr[test]
            else:
                h["audio_feat"], h["visual_feat"], h["Label_ID"] = audio, visual, labels
                flags = np.full(len(labels), b"1", dtype="S1")
                flags[test] = b"0"
                h["Train_test"] = flags
            h[VAL_KEY] = val_index
            h.attrs["written_by"] = "python -m hscmae.data export"
    atomic_write(path, write)
