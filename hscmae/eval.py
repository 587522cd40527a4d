"""`python -m hscmae.eval --config FILE --checkpoint PATH [--data SRC] [--out DIR]`: test metrics of a
saved checkpoint, printed and written to DIR/metrics_eval.json (DIR defaults to the checkpoint's)."""
from __future__ import annotations

import argparse
import os
import sys

from hscmae.config import ConfigError, load_config
from hscmae.data import DataError, load_data
from hscmae.io import atomic_write_json
from hscmae.train import CheckpointError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hscmae.eval", description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=None, help="folder or synthetic:<preset> (default: the config's)")
    p.add_argument("--out", default=None)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    from hscmae.evaluate import evaluate_checkpoint

    try:
        overrides = list(args.set) + ([f"data={args.data}"] if args.data else [])
        cfg = load_config(args.config, overrides)
        data = load_data(cfg.data, cfg.split_seed)
        metrics = evaluate_checkpoint(cfg, data, args.checkpoint)
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    atomic_write_json(os.path.join(out, "metrics_eval.json"), metrics)
    print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    print(f"wrote {os.path.join(out, 'metrics_eval.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
