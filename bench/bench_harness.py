"""Harness overhead of `tune_main.py`: how much of a search's wall time is spent training, and
that the data set is held once in memory however many trials run at once.

    python bench/bench_harness.py            # full: smoke space + the default search as users run it (24 trials) + memory; ~10 min
    python bench/bench_harness.py --quick    # one 2-trial smoke search gives both tables (CI); --no-write

1. Overhead. Each search is the real command, `python tune_main.py --space S ...`, run as a child
   process and timed from launch to exit (Python start-up, data loading, Ray start-up and
   shutdown, scheduling, reporting and checkpointing all included). Time inside fit() is the sum
   over every trial of fit's own per-epoch time (`epoch_time_s`: the training steps and the
   per-epoch validation; the on_epoch callback, where Tune reporting and checkpointing happen, is
   outside it), read back from the trials' result.json files. The fraction is that sum divided by
   the trial slots the search had: wall time x concurrent trials. Tune's own per-trial time
   (`time_this_iter_s`, `time_total_s`) splits the rest into each trial's set-up (first report's
   interval minus fit's first epoch: imports in a fresh worker, model build), reporting +
   checkpointing (the rest of the trainable's time outside fit's epochs), start-up + shutdown
   (every slot, from launch to the first trial's start and from the last trial's end to exit:
   Python, data loading, Ray start-up and shutdown) and idle slots between trials (the rest:
   scheduling gaps, and a slot idling while the last trial runs alone).
2. Memory. The default space on synthetic:vegas (the largest preset: 129 MB of float32 features),
   2 trials x 2 epochs, with --max-concurrent 1 and then 2. Every 0.25 s the script reads
   /proc/<pid>/smaps_rollup and smaps of every process under the search command: the peak of the
   summed PSS (proportional set size: a page shared by k processes counts 1/k in each, so the
   sum counts shared memory once), and, per trial worker, its private memory and its resident
   pages mapped from Ray's object store (where the data set lives, put there once by the driver).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from bench.common import command_line, machine_info, md_table, parser, publish  # noqa: E402

SECTION = "bench_harness"
OVERHEAD_COLUMNS = ["space", "trials", "epochs trained", "concurrent", "wall s", "inside fit s",
                    "trial set-up s", "reporting + checkpointing s", "start-up + shutdown s",
                    "idle slots between trials s", "of which: last trial alone s", "% of slot time inside fit"]
MEMORY_COLUMNS = ["concurrent trials", "data set MB", "peak sum of PSS, all processes MB",
                  "trial workers seen", "per worker: private MB", "per worker: object-store pages resident MB"]
TABLES = {"overhead": OVERHEAD_COLUMNS, "memory": MEMORY_COLUMNS}
TARGET = 0.90  # inside fit() for the default space


def _tree(root: int) -> list[int]:
    """root and all its descendants (from /proc/*/stat parent ids)."""
    parent = {}
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{d}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            parent[int(d[6:])] = int(parts[1])
        except (OSError, ValueError, IndexError):
            continue
    out, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        out += frontier
    return out


def _mem(pid: int) -> dict | None:
    """PSS, private (Private_Clean + Private_Dirty) and object-store-mapped resident kB of a process."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        with open(f"/proc/{pid}/smaps_rollup") as f:
            roll = {ln.split(":")[0]: int(ln.split()[1]) for ln in f if ln.split()[-1:] == ["kB"]}
        store, cur = 0, False
        with open(f"/proc/{pid}/smaps") as f:
            for ln in f:
                first = ln.split(None, 1)[0]
                if not first.endswith(":"):  # a mapping header: address perms offset dev inode [path]
                    cur = "plasma" in ln or "/dev/shm" in ln
                elif cur and first == "Rss:":
                    store += int(ln.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return {"cmd": cmd, "pss": roll.get("Pss", 0), "private": roll.get("Private_Clean", 0) + roll.get("Private_Dirty", 0),
            "store": store}


class MemorySampler(threading.Thread):
    def __init__(self, root: int, period: float = 0.25):
        super().__init__(daemon=True)
        self.root, self.period, self.stop = root, period, threading.Event()
        self.peak_pss = 0
        self.workers: dict[int, dict] = {}  # pid -> peak private / store kB

    def run(self):
        while not self.stop.is_set():
            total = 0
            for pid in _tree(self.root):
                m = _mem(pid)
                if m is None:
                    continue
                total += m["pss"]
                if m["store"] > 0 and m["cmd"].startswith("ray::") and "IDLE" not in m["cmd"]:
                    w = self.workers.setdefault(pid, {"private": 0, "store": 0})
                    w["private"], w["store"] = max(w["private"], m["private"]), max(w["store"], m["store"])
            self.peak_pss = max(self.peak_pss, total)
            self.stop.wait(self.period)


def run_search(args: list[str], storage: str, name: str, sample_memory: bool = False) -> dict:
    """Run `python tune_main.py ARGS --storage STORAGE --name NAME`; wall time, trial results."""
    exp = os.path.join(storage, name)
    shutil.rmtree(exp, ignore_errors=True)
    cmd = [sys.executable, "tune_main.py", *args, "--storage", storage, "--name", name]
    t0, t0_wall = time.perf_counter(), time.time()
    proc = subprocess.Popen(cmd, cwd=_REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = MemorySampler(proc.pid) if sample_memory else None
    if sampler:
        sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    end_wall = time.time()
    if sampler:
        sampler.stop.set()
        sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-3000:]}")
    trials = []
    for path in glob.glob(os.path.join(exp, "*", "result.json")):
        with open(path) as f:
            rows = [json.loads(ln) for ln in f if ln.strip()]
        if rows:
            # Tune times each report from the previous one (the first from the trial's start), so the
            # first interval minus fit's first epoch is the trial's set-up: imports, model build
            trials.append({"epochs": len(rows), "fit_s": sum(r["epoch_time_s"] for r in rows),
                           "setup_s": rows[0]["time_this_iter_s"] - rows[0]["epoch_time_s"],
                           "trainable_s": rows[-1]["time_total_s"],
                           # Tune's timestamps are whole seconds: each trial's span is known to ~1 s
                           "end": rows[-1]["timestamp"], "start": rows[-1]["timestamp"] - rows[-1]["time_total_s"]})
    return {"wall": wall, "t0": t0_wall, "t_end": end_wall, "trials": trials, "memory": sampler, "cmd": " ".join(cmd[1:])}


def overhead_row(space: str, res: dict, concurrent: int) -> dict:
    fit_s = sum(t["fit_s"] for t in res["trials"])
    setup_s = sum(t["setup_s"] for t in res["trials"])
    in_trainable = sum(t["trainable_s"] for t in res["trials"])
    slots = res["wall"] * concurrent
    # before the first trial starts and after the last one ends, every slot idles: Python and Ray
    # start-up, data loading, shutdown; in between, a slot idles when fewer trials than slots run
    first, last = min(t["start"] for t in res["trials"]), max(t["end"] for t in res["trials"])
    edges = concurrent * (max(0.0, first - res["t0"]) + max(0.0, res["t_end"] - last))
    return {"space": space, "trials": len(res["trials"]), "epochs trained": sum(t["epochs"] for t in res["trials"]),
            "concurrent": concurrent, "wall s": res["wall"], "inside fit s": fit_s,
            "trial set-up s": setup_s, "reporting + checkpointing s": in_trainable - fit_s - setup_s,
            "start-up + shutdown s": edges, "idle slots between trials s": slots - in_trainable - edges,
            # the tail: one slot idles from the second-to-last trial's end until the last one's
            "of which: last trial alone s": (concurrent - 1) * (last - sorted(t["end"] for t in res["trials"])[-2])
            if len(res["trials"]) > 1 else 0.0,
            "% of slot time inside fit": 100 * fit_s / slots}


def memory_row(res: dict, conc: int, data_mb: float) -> dict:
    ws = list(res["memory"].workers.values())
    return {"concurrent trials": conc, "data set MB": data_mb,
            "peak sum of PSS, all processes MB": res["memory"].peak_pss / 1024, "trial workers seen": len(ws),
            "per worker: private MB": " / ".join(f"{w['private'] / 1024:.0f}" for w in ws) or "-",
            "per worker: object-store pages resident MB": " / ".join(f"{w['store'] / 1024:.0f}" for w in ws) or "-"}


def run(quick: bool, storage: str) -> tuple[dict, dict]:
    from hscmae.data import load_data

    info = {"commands": []}

    def search(label, args, sample_memory=False):
        res = run_search(args, storage, "harness-" + label, sample_memory)
        info["commands"].append(res["cmd"].replace(storage, "STORAGE"))
        return res

    if quick:  # one small smoke search gives a row of each table
        res = search("smoke", ["--space", "smoke", "--num-samples", "2"], sample_memory=True)
        info["memory_source"] = "synthetic:tiny"
        d = load_data("synthetic:tiny")
        data_mb = (d.audio.nbytes + d.visual.nbytes + d.labels.nbytes) / 2**20
        tables = {"overhead": [overhead_row("smoke (2 trials)", res, 2)], "memory": [memory_row(res, 2, data_mb)]}
    else:
        overhead = [overhead_row("smoke", search("smoke", ["--space", "smoke"]), 2),
                    overhead_row("default (all 24 trials)", search("default", ["--space", "default"]), 2)]
        source = info["memory_source"] = "synthetic:vegas"
        d = load_data(source)
        data_mb = (d.audio.nbytes + d.visual.nbytes + d.labels.nbytes) / 2**20
        memory = []
        for conc in (1, 2):
            res = search(f"memory-{conc}", ["--space", "default", "--data", source, "--max-epochs", "2",
                                            "--num-samples", "2", "--max-concurrent", str(conc)], sample_memory=True)
            memory.append(memory_row(res, conc, data_mb))
        tables = {"overhead": overhead, "memory": memory}
    for name, rows in tables.items():
        for r in rows:
            print(f"{name}: {r}", file=sys.stderr, flush=True)
    info["load_end"] = os.getloadavg()
    return tables, info


def render(tables, info, command, header) -> str:
    f = {c: ".1f" for c in OVERHEAD_COLUMNS[4:]}
    lines = ["## Harness overhead (`bench/bench_harness.py`)", "", header,
             f"- load average at end: {' / '.join(f'{x:.2f}' for x in info['load_end'])}",
             f"- command: `{command}`; the searches it runs: " + "; ".join(f"`{c}`" for c in info["commands"]),
             "- slot time = wall time of the whole command x concurrent trials; inside fit = the sum of fit's "
             "per-epoch times over all trials (see the script's docstring). Trial start and end come from Tune's "
             "whole-second timestamps, so the split between start-up and idle slots is good to ~1 s per trial "
             "(hence a small negative idle time on the 2-second smoke trials).", "",
             md_table(OVERHEAD_COLUMNS, tables["overhead"], f), ""]
    for r in tables["overhead"]:
        if r["space"].startswith("default"):
            got = r["% of slot time inside fit"]
            lines.append(f"- target (default space): >= {100 * TARGET:.0f}% of slot time inside fit() -> "
                         f"**{'met' if got >= 100 * TARGET else 'NOT met'}** ({got:.1f}%)")
    lines += ["", f"Memory with 1 and 2 concurrent trials ({info['memory_source']}, default space): the "
              "summed PSS counts every shared page once; each worker's object-store pages are the data set, "
              "mapped from the one copy in Ray's shared-memory store, not copied into the worker.", "",
              md_table(MEMORY_COLUMNS, tables["memory"], {"data set MB": ".1f", "peak sum of PSS, all processes MB": ".0f"}),
              ""]
    m = tables["memory"]
    if len(m) == 2:
        lines.append(f"- second concurrent trial added {m[1]['peak sum of PSS, all processes MB'] - m[0]['peak sum of PSS, all processes MB']:.0f} MB "
                     f"of PSS against a {m[0]['data set MB']:.0f} MB data set.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    p = parser(__file__, __doc__, "one 2-trial smoke search gives both tables (CI)")
    p.add_argument("--storage", default=None, help="where the searches write (default: a temporary folder, removed)")
    args = p.parse_args(argv)
    header = machine_info()
    import tempfile

    storage = args.storage or tempfile.mkdtemp(prefix="bench-harness-")
    try:
        tables, info = run(args.quick, os.path.abspath(storage))
    finally:
        if args.storage is None:
            shutil.rmtree(storage, ignore_errors=True)
    publish(SECTION, render(tables, info, command_line(argv, __file__), header), args.no_write)
    return tables


if __name__ == "__main__":
    main()
