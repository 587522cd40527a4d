"""`python -m hscmae.data export SOURCE DEST`: write any source as a folder of .npy files (plus
splits.npz) or, when DEST ends in .h5 / .hdf5, as one of the authors' HDF5 files."""
from __future__ import annotations

import os
import sys

import numpy as np

from hscmae.data.common import DataError, stratified_split
from hscmae.data.folder import write_folder

H5_SUFFIXES = (".h5", ".hdf5")


def export(source: str, dest: str, split_seed: int = 0, layout: str | None = None,
           val_fraction: float = 0.15) -> None:
    """Write a source's features as stored (before pooling and scaling), its labels and its splits."""
    from hscmae.data import hdf5
    from hscmae.data.load import load_data, open_source
    from hscmae.io import writable_folder_error

    to_h5 = dest.lower().endswith(H5_SUFFIXES)
    if layout is not None and not to_h5:
        raise DataError(f"{dest}: --layout applies to an .h5 / .hdf5 destination only")
    folder = (os.path.dirname(dest) or ".") if to_h5 else dest
    why = writable_folder_error(folder)  # before any work: a read-only or system path is one error line
    if why:
        raise DataError(f"{dest}: cannot write there ({why}); expected a path in a writable folder")
    if not source.startswith("synthetic:"):
        load_data(source, split_seed, val_fraction=val_fraction)  # validates every value first
    with open_source(source, split_seed, val_fraction) as src:
        audio, visual = (np.concatenate([np.asarray(a[()]) for _, a in src[m]]) for m in ("audio", "visual"))
        labels, splits = src["labels"], src["splits"]
    if splits is None:
        splits = stratified_split(labels, split_seed, src["where"]["l"])
    try:
        if to_h5:
            hdf5.write_hdf5(dest, audio, visual, labels, splits, layout or "split-keys")
        else:
            write_folder(dest, audio, visual, labels, splits)
    except OSError as e:  # e.g. the disk filled up mid-way (each file is written atomically)
        raise DataError(f"{dest}: cannot write there ({e.strerror or e})") from None


def main(argv: list[str] | None = None) -> int:
    import argparse

    from hscmae.data.load import load_data
    from hscmae.data.hdf5 import LAYOUTS

    p = argparse.ArgumentParser(prog="python -m hscmae.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write SOURCE as a folder of .npy files plus splits.npz, "
                                      "or as an HDF5 file in the authors' layout (DEST ending in .h5)")
    e.add_argument("source")
    e.add_argument("dest", metavar="DIR_OR_H5")
    e.add_argument("--layout", choices=LAYOUTS, default=None, help="HDF5 layout (default split-keys)")
    e.add_argument("--split-seed", type=int, default=0)
    e.add_argument("--val-fraction", type=float, default=0.15,
                   help="for an .h5 SOURCE without val_index: the train part's share carved out as val")
    args = p.parse_args(argv)
    try:
        export(args.source, args.dest, args.split_seed, args.layout, args.val_fraction)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ds = load_data(args.dest)
    print(f"wrote {len(ds)} clips ({ds.audio.shape[1]}-d audio, {ds.visual.shape[1]}-d visual, "
          f"{len(np.unique(ds.labels))} classes; train/val/test "
          f"{[len(ds.splits[k]) for k in ('train', 'val', 'test')]}) to {args.dest}")
    return 0
