"""Real two-view data sets (the benchmarks' real sets), built from data that ships inside scikit-learn.

    python -m hscmae.data.real [--out data]     # writes data/sk_digits_lr in the folder format

A real set is one whose values this project did not generate. Two are used:

- `sk_digits_halves` (shared, /work/shared/data): scikit-learn's `load_digits()` images (1,797
  handwritten digits, 8 x 8 grey levels 0-16, 10 classes), "audio" = the top four pixel rows,
  "visual" = the bottom four (32 values each). Found at $HSCMAE_REAL_DATA, or ../shared/data from
  the repository (or from its parent, for a git worktree); absent on a fresh machine, then skipped.
- `sk_digits_lr` (built here): the same images split the other way, "audio" = the left four pixel
  columns, "visual" = the right four (32 values each, row-major within each half), the view split
  Deep CCA was introduced on (left/right halves of MNIST). The split is this project's per-class
  70/15/15 `hscmae.data.stratified_split` with seed 0 (train 1,259, val 269, test 269), written to
  splits.npz so that it is fixed whatever split_seed a config holds.

The two share their images, so they are not independent evidence about images in general, but
their cross-view structure differs (top/bottom halves of a digit share little stroke content at the
seam; left/right halves share the horizontal strokes), and neither has the generator's structure.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from hscmae.data.common import stratified_split
from hscmae.data.folder import write_folder

# the checkout this package is in (an editable install): data/ there is gitignored
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(_REPO, "data")
BUILT = ("sk_digits_lr",)
SHARED = ("sk_digits_halves",)


def digits_views(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(audio, visual, labels) of scikit-learn's digits, each image cut into two views:
    split "lr": left four columns | right four; "tb": top four rows | bottom four."""
    from sklearn.datasets import load_digits

    d = load_digits()
    img = d.images.astype(np.float32)  # (1797, 8, 8), grey levels 0..16
    if split == "lr":
        a, v = img[:, :, :4], img[:, :, 4:]
    elif split == "tb":
        a, v = img[:, :4, :], img[:, 4:, :]
    else:
        raise ValueError(f"split must be 'lr' or 'tb', got {split!r}")
    n = len(img)
    return a.reshape(n, -1).copy(), v.reshape(n, -1).copy(), d.target.astype(np.int64)


def build(name: str, folder: str) -> str:
    """Write real set `name` into folder/name (atomically, file by file); returns its path."""
    if name != "sk_digits_lr":
        raise ValueError(f"unknown real set {name!r}; this module builds {BUILT}")
    audio, visual, labels = digits_views("lr")
    splits = stratified_split(labels, 0, name)
    out = os.path.join(folder, name)
    write_folder(out, audio, visual, labels, splits)
    return out


def shared_folder() -> str | None:
    """The shared real-data folder: $HSCMAE_REAL_DATA, else ../shared/data beside the repository
    (or beside its parent: a worktree in /work/wt/NAME); None if there is none."""
    env = os.environ.get("HSCMAE_REAL_DATA")
    cands = [env] if env else [os.path.join(_REPO, "..", "shared", "data"),
                               os.path.join(_REPO, "..", "..", "shared", "data")]
    for c in cands:
        if c and os.path.isdir(c):
            return os.path.normpath(c)
    return None


def real_sources(out: str = DEFAULT_OUT) -> list[str]:
    """Every real set available here: the shared ones that exist, then the built ones (built now
    if missing)."""
    srcs = []
    shared = shared_folder()
    for name in SHARED:
        if shared and os.path.isdir(os.path.join(shared, name)):
            srcs.append(os.path.join(shared, name))
    for name in BUILT:
        path = os.path.join(out, name)
        if not os.path.exists(os.path.join(path, "splits.npz")):
            build(name, out)
        srcs.append(path)
    return srcs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hscmae.data.real", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help="parent folder (default: data/ in the repository)")
    args = p.parse_args(argv)
    from hscmae.data.load import load_data

    for name in BUILT:
        path = build(name, args.out)
        ds = load_data(path)
        print(f"wrote {path}: {len(ds)} clips, {ds.audio.shape[1]}-d / {ds.visual.shape[1]}-d, "
              f"{len(np.unique(ds.labels))} classes; train {len(ds.splits['train'])}, "
              f"val {len(ds.splits['val'])}, test {len(ds.splits['test'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
