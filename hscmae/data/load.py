"""Loading a source: open it (folder, .h5, synthetic), then validate, split, pool, scale and make the
challenges that are on. The package's entry points (hscmae.data re-exports them)."""
from __future__ import annotations

import contextlib
import os

from hscmae.data import challenges, hdf5
from hscmae.data.common import Dataset, DataError, check_options, normalise, read_features, stratified_split
from hscmae.data.folder import open_folder
from hscmae.data.synthetic import PRESETS, make_synthetic, parse_synthetic


@contextlib.contextmanager
def open_source(source: str, split_seed: int = 0, val_fraction: float = 0.15):
    """Validate a source's structure and yield its parts: audio / visual as lists of (where,
    array-like) row blocks (np.ndarray, memmap or h5py.Dataset, read by read_features), labels
    (int64), splits (or None: stratified from split_seed), where (names for errors), meta."""
    if source.startswith("synthetic:"):
        audio, visual, labels = make_synthetic(**parse_synthetic(source))
        yield dict(audio=[(source, audio)], visual=[(source, visual)], labels=labels, splits=None,
                   where={"a": source, "v": source, "l": source},
                   meta={"format": "synthetic", "split": "stratified per class 70/15/15 from split_seed"})
    elif os.path.isdir(source):
        yield open_folder(source)
    elif hdf5.is_hdf5_path(source):
        with hdf5.open_file(source) as f:
            yield hdf5.open_hdf5(f, source, split_seed, val_fraction)
    else:
        raise DataError(f"data source {source!r}: not a folder, not an .h5 file and not synthetic:<preset> "
                        f"(presets: {', '.join(sorted(PRESETS))})")


def load_data(source: str | None = None, split_seed: int = 0, *, temporal_pool: str = "mean",
              normalize: str = "standard", val_fraction: float = 0.15, pair_noise: float = 0.0,
              pair_noise_seed: int = 0, mix_events: float = 0.0, mix_events_seed: int = 0,
              shared_nuisance: float = 0.0, shared_nuisance_seed: int = 0) -> Dataset:
    """Load, validate, split, pool and scale a source, then make the challenges that are on (see
    the module docstring and challenges.py; all off: the data exactly as stored)."""
    source = source or "synthetic:ave"
    check_options(temporal_pool, normalize, val_fraction)
    on = challenges.check(dict(pair_noise=pair_noise, pair_noise_seed=pair_noise_seed, mix_events=mix_events,
                               mix_events_seed=mix_events_seed, shared_nuisance=shared_nuisance,
                               shared_nuisance_seed=shared_nuisance_seed))
    with open_source(source, split_seed, val_fraction) as src:
        splits = src["splits"]
        if splits is None:
            splits = stratified_split(src["labels"], split_seed, src["where"]["l"])
        audio = read_features(src["audio"], temporal_pool)
        visual = read_features(src["visual"], temporal_pool)
        pooled = [m for m in ("audio", "visual") if any(len(a.shape) == 3 for _, a in src[m])]
    train, labels = splits["train"], src["labels"]
    meta = {"source": source, **src["meta"],
            "temporal_pool": f"{temporal_pool} over segments of {' and '.join(pooled)}" if pooled
            else f"{temporal_pool} (no 3-D features: nothing pooled)",
            "normalize": f"{normalize}, fitted on the train split only, nothing clipped",
            "n": {k: len(v) for k, v in splits.items()}}
    # the challenges, in one place: the features' own (before scaling), then the train pairs' (after)
    if "mix_events" in on:
        audio, visual, meta["mix_events"] = challenges.mix_events(audio, visual, labels, splits, on["mix_events"],
                                                                  on["mix_events_seed"])
    if "shared_nuisance" in on:
        audio, visual, meta["shared_nuisance"] = challenges.add_shared_nuisance(
            audio, visual, train, on["shared_nuisance"], on["shared_nuisance_seed"])
    audio = normalise(audio, train, normalize, src["where"]["a"])
    visual = normalise(visual, train, normalize, src["where"]["v"])
    if "pair_noise" in on:
        meta["pair_noise"] = challenges.shuffle_pairs(visual, labels, train, on["pair_noise"], on["pair_noise_seed"])
    return Dataset(audio=audio, visual=visual, labels=labels, splits=splits, name=source, meta=meta, challenges=on)


def load_data_for(cfg) -> Dataset:
    """load_data with a Config's data keys (the challenges' included): what train, eval, tune_main
    and report load."""
    return load_data(cfg.data, cfg.split_seed, temporal_pool=cfg.temporal_pool, normalize=cfg.normalize,
                     val_fraction=cfg.val_fraction, **{k: getattr(cfg, k) for k in challenges.PARAMS})
