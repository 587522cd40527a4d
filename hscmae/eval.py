"""`python -m hscmae.eval --config FILE --checkpoint PATH [--data SRC] [--out DIR]`: test metrics of a
saved checkpoint, printed and written to DIR/metrics_eval.json (DIR defaults to the checkpoint's).

`--export DIR [--format npz|parquet]` also writes every clip's clean-input embeddings, before and
after the chosen test-time CCA, with labels and split indices (hscmae.export): DIR/embeddings.npz,
or one DIR/embeddings_<split>.parquet per split."""
from __future__ import annotations

import argparse
import os
import sys

from hscmae.config import ConfigError, load_config
from hscmae.data import DataError, load_data_for
from hscmae.io import atomic_write_json
from hscmae.checkpoint import CheckpointError, load_model
from hscmae.export import ExportError, check_writable, protocol_embeddings, require_classes, write_embeddings
from hscmae.protocol import evaluate_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hscmae.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=None, help="folder or synthetic:<preset> (default: the config's)")
    p.add_argument("--out", default=None)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--export", default=None, metavar="DIR", help="write the embeddings to DIR")
    p.add_argument("--format", choices=("npz", "parquet"), default="npz", help="--export: file format (default npz)")
    args = p.parse_args(argv)
    try:
        overrides = list(args.set) + ([f"data={args.data}"] if args.data else [])
        cfg = load_config(args.config, overrides)
        if args.export:  # before any work: a folder we cannot write would waste the embedding
            check_writable(args.export)
        data = load_data_for(cfg)
        if args.export:
            require_classes(data, cfg.data)
            emb = protocol_embeddings(load_model(cfg, data, args.checkpoint), data, cfg)
            metrics = emb["scores"]
            written = write_embeddings(emb, data, cfg, args.export, args.format)
        else:
            metrics = evaluate_checkpoint(cfg, data, args.checkpoint)
    except (ConfigError, DataError, CheckpointError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    atomic_write_json(os.path.join(out, "metrics_eval.json"), metrics)
    print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    print(f"wrote {os.path.join(out, 'metrics_eval.json')}" + "".join(f", {w}" for w in (written if args.export else [])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
