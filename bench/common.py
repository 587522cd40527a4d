"""Shared helpers for the bench/ scripts. The API is deliberately tiny:

    machine_info() -> str                       # Markdown lines: CPU, cores, versions, date, load
    write_section(name, markdown, path=None)    # replace <!-- name:start --> ... <!-- name:end -->
    timeit(fn, repeat=5, warmup=1) -> float     # median wall seconds of fn() over `repeat` calls

Import it as `from bench.common import ...` with the repository root on sys.path (every bench
script puts it there itself, so `python bench/<script>.py` works from any folder).

Every bench script owns one section of BENCHMARKS.md, delimited by HTML comment markers, and
replaces only that section, so scripts by different people can share the file. The rewrite is
atomic (hscmae.io.atomic_write_text) and serialised by an flock, so two scripts finishing at the same
moment both land.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import hashlib
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from typing import Callable

from hscmae.io import atomic_write_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_MD = os.path.join(REPO, "BENCHMARKS.md")
_HEADER = ("# Benchmarks\n\nEach section below is written by one script in `bench/`; rerun the command "
           "it names to refresh it.\nRatios are measured side by side in the same process; absolute "
           "times depend on the machine and its load, which each section records.\n")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> str:
    """Markdown bullet lines: CPU model (/proc/cpuinfo), cores, torch threads, Python/torch/numpy
    versions, date (UTC) and the 1/5/15-minute load average at the time of the call."""
    import numpy
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    load = os.getloadavg()
    return "\n".join([
        f"- machine: {_cpu_model()}, {os.cpu_count()} logical CPUs ({usable} usable), "
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"default torch threads {torch.get_num_threads()}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}",
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- load average (1/5/15 min) at start: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
    ])


def write_section(name: str, markdown: str, path: str | None = None) -> None:
    """Replace the text between `<!-- name:start -->` and `<!-- name:end -->` in BENCHMARKS.md
    (appending the section if it is not there yet); every other byte of the file is kept."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"section name {name!r}: use letters, digits, '_', '.', '-'")
    path = os.path.abspath(path or BENCHMARKS_MD)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    lock = os.path.join(tempfile.gettempdir(), "bench-md-" + hashlib.sha1(path.encode()).hexdigest()[:12] + ".lock")
    with open(lock, "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        try:
            old = open(path).read() if os.path.exists(path) else _HEADER
            i, j = old.find(start), old.find(end)
            if i >= 0 and j > i:
                new = old[:i] + block + old[j + len(end):]
            elif i >= 0 or j >= 0:
                raise ValueError(f"{path}: unbalanced markers for section {name!r}; fix the file by hand")
            else:
                new = old.rstrip("\n") + "\n\n" + block + "\n"
            atomic_write_text(path, new)
        finally:
            fcntl.flock(lf, fcntl.LOCK_UN)


def timeit(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Call fn() `warmup` times untimed, then `repeat` times; return the median wall time (s)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---- small conveniences for this repo's own scripts (not part of the API above) ----------------
def parser(script: str, doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The flags every bench script has: --quick (what CI runs) and --no-write."""
    p = argparse.ArgumentParser(prog=os.path.relpath(script, REPO), description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    return p


def publish(section: str, text: str, no_write: bool) -> None:
    """Print a script's section and, unless --no-write, put it into BENCHMARKS.md."""
    print(text)
    if not no_write:
        write_section(section, text)


def one_thread():
    """1 torch thread and 1 BLAS thread in this process (what a trial gets with --cpus-per-trial 1).
    Returns the threadpoolctl limiter (call .unregister() to undo the BLAS limit), or None where
    threadpoolctl is missing (scikit-learn brings it; without it BLAS keeps its default)."""
    import torch

    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    except ImportError:
        return None


@contextlib.contextmanager
def torch_threads_kept():
    """Restore torch's thread count after a block that changes it (CI runs scripts in-process)."""
    import torch

    n = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n)


def command_line(argv: list[str] | None, script: str) -> str:
    """The exact command, as a user would type it from the repository root."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", os.path.relpath(script, REPO)] + args)


def md_table(columns: list[str], rows: list[dict], fmt: dict[str, str] | None = None) -> str:
    """A Markdown table of `rows` (dicts) in `columns` order; floats formatted by fmt[col]."""
    fmt = fmt or {}
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(format(v, fmt[c]) if c in fmt and isinstance(v, (int, float)) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)
