"""Paired audio/visual feature vectors: loading, validation, splits, standardisation, and an
embedded synthetic data set so that nothing needs a download.

A source is either a folder holding
    audio_features.npy  (N, Da)  float
    visual_features.npy (N, Dv)  float
    labels.npy          (N,)     integer class ids, used only for evaluation
    splits.npz          optional, integer index arrays `train`, `val`, `test`, used as given
or "synthetic:ave" / "synthetic:vegas" / "synthetic:tiny", optionally with overrides such as
"synthetic:ave,n=2000,classes=10,seed=3".

    python -m hscmae.data export SOURCE DIR   # write any source in the folder format
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
import warnings
import zipfile
from dataclasses import dataclass, field

import numpy as np

FILES = ("audio_features.npy", "visual_features.npy", "labels.npy")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)  # train / val / test, per class
MMAP_BYTES = 256 << 20  # memory-map feature files larger than this instead of reading them whole


class DataError(ValueError):
    """Bad input data. The message names the file and what was expected."""


@dataclass
class Dataset:
    audio: np.ndarray  # float32 (N, Da), standardised with train statistics
    visual: np.ndarray  # float32 (N, Dv)
    labels: np.ndarray  # int64 (N,)
    splits: dict[str, np.ndarray]  # "train" / "val" / "test" -> int64 indices
    name: str = ""
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """sha256 of every array's shape, dtype and bytes (splits included), cached."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            arrays = [self.audio, self.visual, self.labels] + [self.splits[k] for k in ("train", "val", "test")]
            for a in arrays:
                a = np.ascontiguousarray(a)
                h.update(f"{a.dtype.str}{a.shape}".encode())
                h.update(memoryview(a).cast("B"))
            self._fingerprint = h.hexdigest()
        return self._fingerprint


# --------------------------------------------------------------------------------------------
# Synthetic clips with the structure HSC-MAE targets (not i.i.d. blobs).
# --------------------------------------------------------------------------------------------
PRESETS = {
    # sized like AVE (4,143 clips, 28 event classes) and VEGAS (28k clips, 10 classes);
    # audio 128-d like VGGish, visual 1024-d like Inception pool features.
    "ave": dict(n=4143, classes=28, audio_dim=128, visual_dim=1024, seed=0),
    "vegas": dict(n=28000, classes=10, audio_dim=128, visual_dim=1024, seed=1),
    "tiny": dict(n=600, classes=6, audio_dim=32, visual_dim=64, seed=2),  # for tests and smoke runs
    # the presets above carry every structure the method targets (multi-event clips, events seen or
    # heard only, a class-unrelated nuisance shared by both views, mismatched pairs); real two-view
    # sets such as the digits halves have none of them. "plain" keeps only what such a set has:
    # one class per item, both views of every item, no shared nuisance, no mismatch; sized like
    # the digits sets (1,797 items, 10 classes, 32 + 32 values). Chosen by structure, not by score.
    "plain": dict(n=1797, classes=10, audio_dim=32, visual_dim=32, seed=3, p_both=1.0, mismatch=0.0,
                  max_events=1, spurious_std=0.0),
}


def _random_mlp(rng: np.random.Generator, d_in: int, d_hidden: int, d_out: int):
    """A fixed random two-layer non-linear map: what a feature extractor does to event content."""
    w1 = rng.normal(0, 1 / np.sqrt(d_in), (d_in, d_hidden))
    b1 = rng.normal(0, 0.5, d_hidden)
    w2 = rng.normal(0, 1 / np.sqrt(d_hidden), (d_hidden, d_out))
    return lambda h: np.tanh(1.5 * (h @ w1 + b1)) @ w2


def make_synthetic(n: int, classes: int, audio_dim: int, visual_dim: int, seed: int = 0,
                   latent_dim: int = 32, p_both: float = 0.7, mismatch: float = 0.1, max_events: int = 3,
                   spurious_std: float = 1.5):
    """Generate (audio, visual, labels) for `n` clips.

    Each clip holds one to three events (the first is its label). An event is heard and seen with
    probability p_both, otherwise only heard or only seen (partial observation). Each modality is a
    different random non-linear map of the content it observes plus its own nuisance; a nuisance
    shared by both modalities but unrelated to the class (spurious co-occurrence, e.g. the recording
    setting) is strongly correlated across modalities, which pulls plain CCA towards it; a fraction
    `mismatch` of the pairs have their visual vector swapped with another clip's (weak pairing).
    `max_events` < 3 caps the events per clip and `spurious_std` scales the shared nuisance (0: none);
    every random number is still drawn, so the defaults give the same data as before they existed.
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(0, 1, (classes, latent_dim))
    # mildly imbalanced classes, as in real event data sets
    class_p = rng.dirichlet(np.full(classes, 5.0))
    labels = rng.choice(classes, size=n, p=class_p)
    n_events = np.minimum(rng.choice([1, 2, 3], size=n, p=[0.5, 0.3, 0.2]), max_events)

    content = {"a": np.zeros((n, latent_dim)), "v": np.zeros((n, latent_dim))}
    for slot in range(3):
        active = n_events > slot
        if slot == 0:
            ev, weight = labels, np.ones(n)
        else:  # a co-occurring event of another class, weaker than the labelled one
            ev = (labels + rng.integers(1, classes, size=n)) % classes
            weight = rng.uniform(0.3, 0.8, size=n)
        instance = prototypes[ev] + 0.6 * rng.normal(0, 1, (n, latent_dim))  # intra-class variety
        u = rng.uniform(size=n)
        heard = u < p_both + (1 - p_both) / 2
        seen = (u < p_both) | (u >= p_both + (1 - p_both) / 2)
        contrib = (active * weight)[:, None] * instance
        content["a"] += heard[:, None] * contrib
        content["v"] += seen[:, None] * contrib

    spurious = spurious_std * rng.normal(0, 1, (n, 8))  # shared by both modalities, independent of the class
    audio_in = np.hstack([content["a"], spurious, rng.normal(0, 1, (n, 16))])
    visual_in = np.hstack([content["v"], spurious, rng.normal(0, 1, (n, 16))])
    audio = _random_mlp(rng, audio_in.shape[1], 256, audio_dim)(audio_in)
    # Inception pool features are non-negative: a softplus keeps that shape
    audio += 0.1 * rng.normal(0, 1, audio.shape)  # sensor noise
    visual_pre = _random_mlp(rng, visual_in.shape[1], 256, visual_dim)(visual_in)
    visual = np.logaddexp(0, visual_pre + 0.1 * rng.normal(0, 1, visual_pre.shape))

    swap = np.flatnonzero(rng.uniform(size=n) < mismatch)
    visual[swap] = visual[rng.permutation(swap)]
    return audio.astype(np.float32), visual.astype(np.float32), labels.astype(np.int64)


def _parse_synthetic(source: str) -> dict:
    name, *opts = source.split(":", 1)[1].split(",")
    if name not in PRESETS:
        raise DataError(f"data source {source!r}: unknown synthetic preset {name!r}; "
                        f"expected one of {sorted(PRESETS)}")
    params = dict(PRESETS[name])
    for opt in opts:
        key, _, value = opt.partition("=")
        if key not in params:
            raise DataError(f"data source {source!r}: unknown option {key!r}; expected one of {sorted(params)}")
        kind = float if isinstance(params[key], float) else int
        try:
            params[key] = kind(value)
        except ValueError:
            raise DataError(f"data source {source!r}: option {key!r} must be {'a number' if kind is float else 'an integer'}, "
                            f"got {value!r}") from None
    return params


# --------------------------------------------------------------------------------------------
# Folders of .npy files
# --------------------------------------------------------------------------------------------
def _load_npy(path: str) -> np.ndarray:
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


def _check_features(path: str, arr: np.ndarray) -> None:
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-D array (clips x features), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{path}: empty array of shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{path}: expected a numeric array, got dtype {arr.dtype}")
    bad_rows = 0
    for start in range(0, arr.shape[0], 65536):  # chunked so memory-mapped files stay mapped
        # checked after the cast to float32 (what training uses): a finite float64 beyond
        # float32's range would otherwise become Inf, then NaN after standardisation
        with np.errstate(over="ignore"):
            chunk = np.asarray(arr[start:start + 65536], dtype=np.float32)
        bad_rows += int((~np.isfinite(chunk)).any(axis=1).sum())
    if bad_rows:
        raise DataError(f"{path}: {bad_rows} row(s) contain NaN or Inf (or values beyond float32's range, "
                        "|x| > 3.4e38); expected finite features")


def _check_labels(path: str, labels: np.ndarray) -> np.ndarray:
    if labels.ndim != 1:
        raise DataError(f"{path}: expected a 1-D array of class ids, got shape {labels.shape}")
    if labels.size == 0:
        raise DataError(f"{path}: empty label array")
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.isfinite(labels).all() and (labels == np.round(labels)).all():
            pass  # integral floats (e.g. saved from pandas) are accepted
        else:
            raise DataError(f"{path}: expected integer class ids, got dtype {labels.dtype}")
    if (labels < 0).any():
        raise DataError(f"{path}: expected non-negative class ids, found {int((labels < 0).sum())} negative")
    return labels.astype(np.int64)


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


def _load_splits(path: str, n: int) -> dict[str, np.ndarray]:
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


def _standardise(x: np.ndarray, train: np.ndarray, what: str) -> np.ndarray:
    """z-score every column with train-split statistics; constant columns are centred, not divided."""
    x = np.asarray(x, dtype=np.float32)
    ref = x[train].astype(np.float64)
    mean, std = ref.mean(0), ref.std(0)
    const = std < 1e-8
    if const.any():
        warnings.warn(f"{what}: {int(const.sum())} constant column(s) on the train split; left at 0")
        std[const] = 1.0
    return ((x - mean) / std).astype(np.float32)


def load_data(source: str | None = None, split_seed: int = 0) -> Dataset:
    """Load, validate, split and standardise a source (see the module docstring)."""
    source = source or "synthetic:ave"
    splits = None
    if source.startswith("synthetic:"):
        audio, visual, labels = make_synthetic(**_parse_synthetic(source))
        where = {"a": source, "v": source, "l": source}
    else:
        if not os.path.isdir(source):
            raise DataError(f"data source {source!r}: not a folder and not synthetic:<preset> "
                            f"(presets: {', '.join(sorted(PRESETS))})")
        paths = [os.path.join(source, f) for f in FILES]
        where = dict(zip("avl", paths))
        audio, visual, labels = (_load_npy(p) for p in paths)
        _check_features(paths[0], audio)
        _check_features(paths[1], visual)
        labels = _check_labels(paths[2], labels)
        n = {p: len(a) for p, a in zip(paths, (audio, visual, labels))}
        if len(set(n.values())) != 1:
            raise DataError(f"{source}: the three arrays must have the same number of clips, got "
                            + ", ".join(f"{os.path.basename(p)}: {k}" for p, k in n.items()))
        split_path = os.path.join(source, "splits.npz")
        if os.path.exists(split_path):
            splits = _load_splits(split_path, len(labels))
    if splits is None:
        splits = stratified_split(labels, split_seed, where["l"])
    train = splits["train"]
    return Dataset(audio=_standardise(audio, train, where["a"]),
                   visual=_standardise(visual, train, where["v"]),
                   labels=labels, splits=splits, name=source)


def export(source: str, folder: str, split_seed: int = 0) -> None:
    """Write a source in the folder format (features as loaded, before standardisation)."""
    from hscmae.io import atomic_write

    if source.startswith("synthetic:"):
        audio, visual, labels = make_synthetic(**_parse_synthetic(source))
        splits = stratified_split(labels, split_seed, source)
    else:
        ds = load_data(source, split_seed)  # validates
        audio = np.load(os.path.join(source, FILES[0]), allow_pickle=False)
        visual = np.load(os.path.join(source, FILES[1]), allow_pickle=False)
        labels, splits = ds.labels, ds.splits
    for name, arr in zip(FILES, (audio, visual, labels)):
        atomic_write(os.path.join(folder, name), lambda f, a=arr: np.save(f, a, allow_pickle=False))

    def write_npz(f):
        buf = io.BytesIO()
        np.savez(buf, **splits)
        f.write(buf.getvalue())
    atomic_write(os.path.join(folder, "splits.npz"), write_npz)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m hscmae.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write SOURCE as a folder of .npy files plus splits.npz")
    e.add_argument("source")
    e.add_argument("folder")
    e.add_argument("--split-seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        export(args.source, args.folder, args.split_seed)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ds = load_data(args.folder)
    print(f"wrote {len(ds)} clips ({ds.audio.shape[1]}-d audio, {ds.visual.shape[1]}-d visual, "
          f"{len(np.unique(ds.labels))} classes) to {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
