"""How training-epoch time and retrieval-mAP time grow with the number of clips N.

    python bench/bench_scaling.py            # full: N = 1k .. 32k, a few minutes on 2 cores
    python bench/bench_scaling.py --quick    # N = 1k, 2k, seconds (CI); --no-write leaves BENCHMARKS.md alone

Epoch time: `hscmae.train.fit` with config/hsc_mae.yaml (batch 64) on "synthetic:ave,n=<N>" (28
classes, 70/15/15 split), 1 torch thread and 1 BLAS thread (threadpoolctl), so the numbers do not
depend on what else the shared machine runs on its other core. The epoch is split into its
training loop and its per-epoch validation (embedding every clip, test-time-CCA choice, val mAP
raw and through CCA): fit's own train_s and eval_s of that epoch. The reported epoch
is the last of `--epochs` (default 2; the first is a warm-up).

mAP time: `hscmae.metrics.retrieval_map` with N queries against N gallery items, 128-d random
embeddings, 28 classes; median of repeats (1 repeat from 16k up).

The growth exponent is the least-squares slope of log(time) against log(N).
"""
from __future__ import annotations

import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import numpy as np  # noqa: E402

from bench.common import command_line, machine_info, md_table, one_thread, parser, publish, timeit, torch_threads_kept  # noqa: E402
from hscmae import train as T  # noqa: E402
from hscmae.config import load_config  # noqa: E402
from hscmae.data import load_data  # noqa: E402
from hscmae.metrics import retrieval_map  # noqa: E402

SECTION = "bench_scaling"
CONFIG = os.path.join(_REPO, "config", "hsc_mae.yaml")
COLUMNS = ["N", "train clips", "epoch s", "train loop s", "val eval s", "train ms/clip", "mAP s (N x N)", "mAP us/pair"]
FIT_COLUMNS = ["quantity", "growth exponent", "N range", "reading"]
TABLES = {"scaling": COLUMNS, "exponents": FIT_COLUMNS}


def epoch_time(n: int, epochs: int) -> dict[str, float]:
    data = load_data(f"synthetic:ave,n={n}")
    cfg = load_config(CONFIG, {"epochs": epochs, "threads": 1, "data": f"synthetic:ave,n={n}"})
    seen = []
    T.fit(cfg, data, on_epoch=lambda metrics, save: seen.append(metrics), log=None)
    last = seen[-1]  # fit's own split of the epoch: training steps (train_s), embedding + scoring (eval_s)
    return {"train": len(data.splits["train"]), "epoch": last["epoch_time_s"], "eval": last["eval_s"],
            "loop": last["train_s"]}


def map_time(n: int, quick: bool) -> float:
    rng = np.random.default_rng(n)
    q = rng.normal(size=(n, 128)).astype(np.float32)
    g = rng.normal(size=(n, 128)).astype(np.float32)
    labels = rng.integers(0, 28, n)
    repeat = 1 if n >= 16000 else 3
    return timeit(lambda: retrieval_map(q, g, labels, labels), repeat=repeat, warmup=0 if n >= 16000 else 1)


def exponent(ns, ts) -> float:
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


def run(quick: bool, epochs: int) -> tuple[dict, dict]:
    info = {"load_start": os.getloadavg()}
    ns = [1000, 2000] if quick else [1000, 2000, 4000, 8000, 16000, 32000]
    limiter = one_thread()
    try:
        rows = []
        for n in ns:
            e = epoch_time(n, 1 if quick else epochs)
            m = map_time(n, quick)
            rows.append({"N": n, "train clips": e["train"], "epoch s": e["epoch"], "train loop s": e["loop"],
                         "val eval s": e["eval"], "train ms/clip": 1e3 * e["loop"] / e["train"],
                         "mAP s (N x N)": m, "mAP us/pair": 1e6 * m / n / n})
            print(f"N={n}: epoch {e['epoch']:.2f}s (loop {e['loop']:.2f}s, val eval {e['eval']:.2f}s), "
                  f"mAP {m:.3f}s", file=sys.stderr)
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
    rng = f"{ns[0]}..{ns[-1]}"
    ncol = [r["N"] for r in rows]
    fits = [
        {"quantity": "epoch time (fit, incl. val eval)", "growth exponent": exponent(ncol, [r["epoch s"] for r in rows]),
         "N range": rng, "reading": "expected: loop ~N plus val eval (contains an N^2 mAP)"},
        {"quantity": "training loop", "growth exponent": exponent(ncol, [r["train loop s"] for r in rows]),
         "N range": rng, "reading": "expected ~N (floor(0.7N / 64) steps)"},
        {"quantity": "per-epoch val eval", "growth exponent": exponent(ncol, [r["val eval s"] for r in rows]),
         "N range": rng, "reading": "expected between N and N^2 (embedding, CCA fit ~N; val mAP ~N^2)"},
        {"quantity": "retrieval_map, N x N", "growth exponent": exponent(ncol, [r["mAP s (N x N)"] for r in rows]),
         "N range": rng, "reading": "expected ~N^2 (N^2 scores, plus a log factor)"},
    ]
    if len(ns) >= 4:  # the large-N slope, where constant overheads no longer count
        tail = ncol[-3:]
        fits.append({"quantity": "retrieval_map, N x N (largest 3 N)",
                     "growth exponent": exponent(tail, [r["mAP s (N x N)"] for r in rows[-3:]]),
                     "N range": f"{tail[0]}..{tail[-1]}", "reading": ""})
        fits.append({"quantity": "epoch time (largest 3 N)",
                     "growth exponent": exponent(tail, [r["epoch s"] for r in rows[-3:]]),
                     "N range": f"{tail[0]}..{tail[-1]}", "reading": ""})
    info["load_end"] = os.getloadavg()
    info["epochs"] = 1 if quick else epochs
    return {"scaling": rows, "exponents": fits}, info


def render(tables, info, command, header) -> str:
    return "\n".join([
        "## Scaling with the number of clips (`bench/bench_scaling.py`)", "", header,
        f"- load average at end: {info['load_end'][0]:.2f} / {info['load_end'][1]:.2f} / {info['load_end'][2]:.2f}",
        f"- command: `{command}`",
        f"- epoch: config/hsc_mae.yaml (batch 64) on synthetic:ave,n=N, 1 torch thread + 1 BLAS thread, epoch "
        f"{info['epochs']} of {info['epochs']} reported; mAP: retrieval_map, N x N, 128-d, 28 classes, 1 thread.",
        "", md_table(COLUMNS, tables["scaling"], {"epoch s": ".2f", "train loop s": ".2f", "val eval s": ".2f",
                                                  "train ms/clip": ".3f", "mAP s (N x N)": ".3f", "mAP us/pair": ".4f"}),
        "", "Growth exponents (least-squares slope of log time on log N):", "",
        md_table(FIT_COLUMNS, tables["exponents"], {"growth exponent": ".2f"}), ""])


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    p = parser(__file__, __doc__, "N = 1k, 2k, one epoch (CI)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per fit; the last one is reported (full mode)")
    args = p.parse_args(argv)
    header = machine_info()
    with torch_threads_kept():
        tables, info = run(args.quick, args.epochs)
    publish(SECTION, render(tables, info, command_line(argv, __file__), header), args.no_write)
    return tables


if __name__ == "__main__":
    main()
