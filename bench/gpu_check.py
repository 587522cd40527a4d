"""The GPU check (run by bench/gpu_check.sh): the shipped config and config/official.yaml trained on
synthetic:vegas on CUDA and on the CPU (ms per step, epoch time, final test mAP of each), and a
GPU-written checkpoint evaluated and resumed on the CPU. One table, also written to its section
of BENCHMARKS.md.

    python bench/gpu_check.py [--epochs 20] [--cpu-only] [--quick] [--no-write]

Needs only torch, numpy, scipy, pyyaml, scikit-learn, pandas, pyarrow (what a stock CUDA PyTorch
image holds): nothing here imports Ray or Optuna (checked at the end). Where torch sees no CUDA
(or with --cpu-only) the CUDA rows say "not run" and only the CPU side runs.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import torch  # noqa: E402

from bench.bench_train import StepRunner  # noqa: E402
from bench.common import machine_info, md_table, parser, publish  # noqa: E402
from hscmae import train as T  # noqa: E402
from hscmae.config import load_config  # noqa: E402
from hscmae.data import load_data_for  # noqa: E402
from hscmae.protocol import evaluate_checkpoint  # noqa: E402

SECTION = "gpu_check"
CONFIGS = {"shipped": os.path.join(_REPO, "config", "hsc_mae.yaml"),
           "official": os.path.join(_REPO, "config", "official.yaml")}
COLUMNS = ["config", "device", "batch", "ms/step", "epoch s", "epochs", "val mAP", "test mAP", "note"]
DEFAULT_THREADS = torch.get_num_threads()
BUDGET_S = 7 * 60  # the whole check must stay under 8 minutes on one GPU: later runs are skipped past this


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_ms(cfg, data, device: torch.device, steps: int, block: int = 10) -> float:
    """Median ms of `steps` optimizer steps (after 5 warm-up ones), timed in blocks of `block` with
    the device synchronised around each block: the library's step, batches gathered on the device."""
    runner = StepRunner(cfg, data, device)  # fit's batches and step
    warm = min(5, steps)
    runner.steps(warm)
    _sync(device)
    times = []
    for k in range(max(1, steps // block)):
        t0 = time.perf_counter()
        runner.steps(block)
        _sync(device)
        times.append((time.perf_counter() - t0) / block)
    return 1e3 * statistics.median(times)


def train_row(name: str, path: str, source: str, device: torch.device, epochs: int, steps: int,
              threads: int = 0) -> dict:
    over = {"data": source, "epochs": epochs, "device": str(device),
            **({"threads": threads} if threads and device.type == "cpu" else {})}
    warmup = load_config(path).warmup_epochs
    note = ""
    if warmup >= epochs:  # a run shorter than the config's warm-up (--quick): cut the warm-up to fit
        over["warmup_epochs"] = epochs - 1
        note = f"warmup_epochs {warmup} -> {epochs - 1} for this {epochs}-epoch run"
    cfg = load_config(path, over)
    data = load_data_for(cfg)  # the config's own pooling and scaling (official: minmax)
    cfg.validate(n_train=len(data.splits["train"]))
    torch.set_num_threads(cfg.threads or DEFAULT_THREADS)  # as fit will (it sets cfg.threads)
    ms = step_ms(cfg, data, device, steps, block=min(10, steps))
    seen: list[dict] = []
    final = T.fit(cfg, data, on_epoch=lambda m, save: seen.append(m), log=None)
    return {"config": name, "device": str(device), "batch": cfg.batch_size, "ms/step": ms,
            "epoch s": statistics.median(m["epoch_time_s"] for m in seen), "epochs": epochs,
            "val mAP": final["val_map"], "test mAP": final["test_map"], "note": note}


def checkpoint_check(path: str, source: str) -> str:
    """A checkpoint written by a CUDA run, evaluated and resumed on the CPU."""
    cfg = load_config(path, {"data": source, "epochs": 2, "device": "cuda"})
    data = load_data_for(cfg)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as d:
        ckpt, seen = os.path.join(d, "gpu.pt"), []

        def stop(m, save):
            seen.append(m)
            save(ckpt)
            return True
        T.fit(cfg, data, on_epoch=stop, log=None)
        cpu = load_config(path, {"data": source, "epochs": 2, "device": "cpu"})
        val = evaluate_checkpoint(cpu, data, ckpt)["val_map"]
        val_gpu = evaluate_checkpoint(cfg, data, ckpt)["val_map"]
        out = T.fit(cpu, data, resume_from=ckpt, log=None)
    diff = abs(val - val_gpu)
    ok = diff < 2e-3 and out["epoch"] == 2
    return (f"{'OK' if ok else 'FAILED'}: a CUDA checkpoint (epoch 1, {source}) scores val mAP {val:.4f} on the CPU "
            f"against {val_gpu:.4f} on CUDA (|diff| {diff:.1e}); resumed on the CPU to epoch "
            f"{out['epoch']} (test mAP {out['test_map']:.4f})")


def _shown_command(argv: list[str] | None) -> str:
    """The command a user types: gpu_check.sh with its own flags (not the pytest summary it passes)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--cuda-tests" in args:
        i = args.index("--cuda-tests")
        del args[i:i + 2]
    return " ".join(["bench/gpu_check.sh", *args])


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__file__, __doc__, "minutes on a CPU: 3k-clip VEGAS-like data, 1 epoch, few timed steps")
    p.add_argument("--epochs", type=int, default=20, help="epochs per training run (default 20)")
    p.add_argument("--cpu-only", action="store_true", help="skip the CUDA side even where CUDA is present")
    p.add_argument("--cuda-tests", default="not run", help="the pytest summary of tests/test_cuda.py (gpu_check.sh)")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the CPU runs (default 0: torch's default)")
    args = p.parse_args(argv)
    t_start = time.time()
    header = machine_info()
    cuda = torch.cuda.is_available() and not args.cpu_only
    source = "synthetic:vegas,n=3000" if args.quick else "synthetic:vegas"
    epochs = 1 if args.quick else args.epochs
    steps = 2 if args.quick else 50
    devices = ([torch.device("cuda")] if cuda else []) + [torch.device("cpu")]
    rows, notes = [], []
    for name, path in CONFIGS.items():
        if not os.path.exists(path):
            rows.append({"config": name, "device": "-", "note": f"skipped: {os.path.relpath(path, _REPO)} not in this checkout"})
            continue
        if not cuda:
            rows.append({"config": name, "device": "cuda", "note": "not run: " + (
                "--cpu-only" if args.cpu_only else f"torch {torch.__version__} sees no CUDA here")})
        for dev in devices:
            if time.time() - t_start > BUDGET_S:
                rows.append({"config": name, "device": str(dev), "note": "skipped: past the 7-minute budget"})
                continue
            rows.append(train_row(name, path, source, dev, epochs, steps, args.threads))
            print(f"[gpu_check] {name} on {dev}: {rows[-1]['ms/step']:.2f} ms/step, test mAP "
                  f"{rows[-1]['test mAP']:.4f} ({time.time() - t_start:.0f}s)", flush=True)
    if cuda:
        notes.append("checkpoint across devices: " + checkpoint_check(CONFIGS["shipped"], "synthetic:vegas,n=3000"))
    else:
        notes.append("checkpoint across devices: not run on a GPU (tests/test_device.py checks a checkpoint whose "
                     "tensors are tagged cuda:0 resuming on the CPU)")
    leaked = [m for m in ("ray", "optuna") if m in sys.modules]
    notes.append(f"imports: {'none of Ray / Optuna' if not leaked else 'LEAKED ' + ', '.join(leaked)}")
    gpu = torch.cuda.get_device_name(0) if cuda else None
    text = "\n".join([
        "## GPU check (`bench/gpu_check.sh`)", "", header,
        f"- GPU: {gpu}, CUDA {torch.version.cuda}" if gpu else
        "- **This check has not run on a GPU yet**: the table below is its CPU-only path on the machine above.",
        f"- command: `{_shown_command(argv)}`; {time.time() - t_start:.0f} s in all after the tests",
        f"- protocol: each config on {source} with `epochs: {epochs}`, trained by `hscmae.train.fit` on each device; "
        f"ms/step = median of {min(10, steps)}-step blocks ({steps} steps after {min(5, steps)} warm-up, the device "
        f"synchronised around each block); CPU threads: {args.threads or 'torch default'}; epoch s = median epoch wall time (training + the per-epoch validation); mAP = the final "
        "evaluation's. CPU and CUDA runs agree to seed noise, not bit for bit (different kernels and random streams).",
        f"- tests marked `cuda` (tests/test_cuda.py): {args.cuda_tests}",
        *[f"- {n}" for n in notes], "",
        md_table(COLUMNS, rows, {"ms/step": ".2f", "epoch s": ".2f", "val mAP": ".4f", "test mAP": ".4f"}), ""])
    publish(SECTION, text, args.no_write)
    return rows


if __name__ == "__main__":
    main()
