"""The method's three challenges, made on any source at load time (all off by default, seeded,
recorded in Dataset.meta and covered by the fingerprint):

- weak pairing, `pair_noise` (the noisy-correspondence protocol of NCR, Huang et al. 2021): after
  the split, round(pair_noise x n_train) train items get another chosen train item's visual vector
  (a seeded derangement among them, so every chosen pair is wrong); val and test are untouched and
  labels stay with the audio item. Applied after scaling: a permutation of train rows leaves the
  train statistics as they are, and every val/test byte stays that of the clean load.
- multi-event clips, `mix_events`: round(mix_events x n_split) items of every split get, in both
  views, w x the (clean) views of another item of the same split and of another class added,
  w ~ U[0.3, 0.8]; the label stays the item's own.
- spurious co-occurrence, `shared_nuisance` (a std): a random 8-d Gaussian vector per item, mapped
  into each view by a fixed random linear map scaled to each feature's train std and added to both
  views of every item in every split: correlated across the views, unrelated to the class, so it
  captures plain CCA's top directions.

The last two change the features before scaling (scaling is then fitted on what a user's data
would hold). Each has its own seed, so one challenge's draw never moves another's.
"""
from __future__ import annotations

import numpy as np

from hscmae.data.common import DataError

NUISANCE_DIM = 8
MIX_WEIGHT = (0.3, 0.8)
# key -> (kind, default): what load_data takes and validates; Config holds the same keys
PARAMS = {"pair_noise": (float, 0.0), "pair_noise_seed": (int, 0), "mix_events": (float, 0.0),
          "mix_events_seed": (int, 0), "shared_nuisance": (float, 0.0), "shared_nuisance_seed": (int, 0)}


def check(params: dict) -> dict:
    """The challenge parameters that are on ({} when all are off), after range checks (DataError
    naming the key)."""
    for key, value in params.items():
        kind, _ = PARAMS[key]
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and np.isfinite(value)
        if kind is int:
            ok = ok and float(value).is_integer() and value >= 0
        if not ok:
            raise DataError(f"{key} must be {'an integer >= 0' if kind is int else 'a finite number'}, got {value!r}")
    if not 0.0 <= params["pair_noise"] < 1.0:
        raise DataError(f"pair_noise must be in [0, 1), got {params['pair_noise']!r}")
    if not 0.0 <= params["mix_events"] <= 1.0:
        raise DataError(f"mix_events must be in [0, 1], got {params['mix_events']!r}")
    if params["shared_nuisance"] < 0:
        raise DataError(f"shared_nuisance must be >= 0, got {params['shared_nuisance']!r}")
    on = {}
    for rate in ("pair_noise", "mix_events", "shared_nuisance"):
        if params[rate] > 0:
            on[rate] = float(params[rate])
            on[rate + "_seed"] = int(params[rate + "_seed"])
    return on


def derangement(rng: np.random.Generator, k: int) -> np.ndarray:
    """A uniformly random permutation of range(k) without a fixed point (k >= 2), by rejection
    (about e tries on average)."""
    while True:
        p = rng.permutation(k)
        if not (p == np.arange(k)).any():
            return p


def shuffle_pairs(visual: np.ndarray, labels: np.ndarray, train: np.ndarray, rate: float, seed: int) -> dict:
    """In place: round(rate x n_train) train items (at least 2 when any) get another chosen item's
    visual row. Returns what meta records."""
    k = int(round(rate * len(train)))
    if k == 1:
        k = 2  # one item cannot get another chosen item's vector
    k = min(k, len(train))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(train, size=k, replace=False) if k else np.empty(0, np.int64)
    same = 0
    if k >= 2:
        src = chosen[derangement(rng, k)]
        visual[chosen] = visual[src]
        same = int((labels[chosen] == labels[src]).sum())
    return {"rate": rate, "seed": seed, "n_train": int(len(train)), "shuffled": k,
            "shuffled_same_class": same,
            "effective_noise": (k - same) / len(train),
            "what": "train pairs only, after the split and scaling: each shuffled item's visual vector is another "
                    "shuffled train item's (a derangement); val/test untouched; labels stay with the audio item"}


def mix_events(audio: np.ndarray, visual: np.ndarray, labels: np.ndarray, splits: dict, rate: float,
               seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """round(rate x n_split) items per split get w x another class's item (same split) added to both
    views. Returns new arrays and what meta records."""
    rng = np.random.default_rng(seed)
    a64, v64 = audio.astype(np.float64), visual.astype(np.float64)
    out_a, out_v = a64.copy(), v64.copy()
    mixed = {}
    for name in ("train", "val", "test"):
        part = splits[name]
        k = int(round(rate * len(part)))
        if k == 0:
            mixed[name] = 0
            continue
        if len(np.unique(labels[part])) < 2:
            raise DataError(f"mix_events: the {name} split has one class only; no item of another class to mix in")
        items = rng.choice(part, size=k, replace=False)
        partner = rng.choice(part, size=k)
        while True:  # redraw partners of the same class
            bad = labels[partner] == labels[items]
            if not bad.any():
                break
            partner[bad] = rng.choice(part, size=int(bad.sum()))
        w = rng.uniform(*MIX_WEIGHT, size=k)[:, None]
        out_a[items] += w * a64[partner]
        out_v[items] += w * v64[partner]
        mixed[name] = k
    return out_a.astype(np.float32), out_v.astype(np.float32), {
        "rate": rate, "seed": seed, "mixed": mixed, "weight": f"uniform in [{MIX_WEIGHT[0]}, {MIX_WEIGHT[1]}]",
        "what": "in every split, both views of each mixed item get w x the views of another item of the same split "
                "and of another class added (before scaling); the label stays the item's own"}


def add_shared_nuisance(audio: np.ndarray, visual: np.ndarray, train: np.ndarray, std: float,
                        seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """z ~ N(0, I_8) per item, added to each view as std x (z M_view) x (each feature's train std),
    M_view a fixed N(0, 1/8) map (so z M has unit variance per feature). Returns new arrays."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1, (len(audio), NUISANCE_DIM))
    out = []
    for x in (audio, visual):
        m = rng.normal(0, 1 / np.sqrt(NUISANCE_DIM), (NUISANCE_DIM, x.shape[1]))
        x64 = x.astype(np.float64)
        scale = x64[train].std(axis=0)
        out.append((x64 + std * (z @ m) * scale).astype(np.float32))
    return out[0], out[1], {
        "std": std, "seed": seed, "dim": NUISANCE_DIM,
        "what": "a random 8-d Gaussian vector per item (every split), mapped into each view by a fixed random linear "
                "map scaled to each feature's train std, added to both views before scaling"}
