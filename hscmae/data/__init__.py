"""Paired audio/visual features: loading, validation, splits, scaling, and an embedded synthetic
data set so that nothing needs a download.

A source is one of
    a folder       audio_features.npy, visual_features.npy, labels.npy [, splits.npz]  (folder.py)
    an .h5 file    the authors' feature files, split-keys or flag-column layout       (hdf5.py)
    synthetic:ave / synthetic:vegas / synthetic:tiny [,n=...,classes=...,seed=...]     (synthetic.py)
Features are (clips x dims), or (clips x segments x dims) pooled per clip by `temporal_pool`
(mean | max); each modality is scaled by `normalize` (standard | minmax) with train-split
statistics only. The method's challenges can be made on any source at load time, seeded and off by
default (challenges.py): `pair_noise` (weak pairing: a fraction of the train pairs shuffled),
`mix_events` (multi-event clips) and `shared_nuisance` (spurious co-occurrence).

    python -m hscmae.data export SOURCE DIR                  # the folder format, splits.npz included
    python -m hscmae.data export SOURCE out.h5 [--layout split-keys|flag-column]
"""
from __future__ import annotations

from hscmae.data.cli import export, main
from hscmae.data.common import (CHUNK_BYTES, NORMALIZERS, POOLS, SPLIT_FRACTIONS, Dataset, DataError,
                                carve_val, check_options, normalise, read_features, stratified_split)
from hscmae.data.folder import FILES, MMAP_BYTES, open_folder
from hscmae.data.load import load_data, load_data_for, open_source
from hscmae.data.synthetic import PRESETS, make_synthetic, parse_synthetic

__all__ = ["Dataset", "DataError", "load_data", "load_data_for", "open_source", "export", "main",
           "make_synthetic", "stratified_split", "carve_val", "PRESETS", "FILES", "SPLIT_FRACTIONS"]
