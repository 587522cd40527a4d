"""Shared helpers for the bench/ scripts. The API is deliberately tiny:

    machine_info() -> str                       # Markdown lines: CPU, cores, versions, date, load
    write_section(name, markdown, path=None)    # put <!-- name:start --> ... <!-- name:end --> at its place
    reorder(path=None)                          # re-order / re-number the file to SECTIONS, text kept
    timeit(fn, repeat=5, warmup=1) -> float     # median wall seconds of fn() over `repeat` calls

Import it as `from bench.common import ...` with the repository root on sys.path (every bench
script puts it there itself, so `python bench/<script>.py` works from any folder).

Every bench script owns one section of BENCHMARKS.md, delimited by HTML comment markers, and
replaces only that section, so scripts by different people can share the file. SECTIONS below is
the file's reading order: a section lands at its place there, not at the end, and the headings are
numbered from it on every write (a script's own heading number, if any, is replaced). The rewrite
is atomic (hscmae.io.atomic_write_text) and serialised by an flock, so two scripts finishing at the
same moment both land. `python bench/common.py` re-orders the file without changing a section.
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__" and REPO not in sys.path:  # `python bench/common.py`
    sys.path.insert(0, REPO)
from hscmae.io import atomic_write_text  # noqa: E402
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


# The reading order of BENCHMARKS.md: (id, group, title), one entry per section. write_section puts a
# section at its place in this list (whatever order the scripts run in), numbers the `## ` headings
# from it (the summary is not numbered) and lists the sections under the file's header. An id that is
# not here is an error: add a new section here, at its place, before its script writes it. An entry
# whose section is not in the file yet (a reserved place) is skipped, numbers included.
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("summary", "", "Summary"),
    ("bench_train", "Training speed", "Training step throughput"),
    ("bench_train_recipe", "Training speed", "The official recipe's training step"),
    ("bench_train_compile", "Training speed", "torch.compile of the training step, CPU"),
    ("bench_map", "Evaluation cost", "Retrieval mAP time"),
    ("bench_eval", "Evaluation cost", "Per-epoch validation cost"),
    ("bench_eval_rank", "Evaluation cost", "Per-epoch vs final val_map: the searches' rank table (`--rank`)"),
    ("bench_eval_study", "Evaluation cost", "Per-epoch vs final val_map over every trial of a search (`--study`)"),
    ("bench_eval_searches", "Evaluation cost", "A default search's evaluation cost, before and after (`--searches`)"),
    ("bench_scaling", "Evaluation cost", "Scaling with the number of clips"),
    ("bench_quality", "Quality on generated data", "Retrieval quality"),
    ("bench_quality_real", "Quality on real data", "Retrieval quality on real two-view data"),
    ("bench_noise", "Quality on real data", "Noise robustness (weakly paired data)"),
    ("bench_noise_challenges", "Quality on real data",
     "The method's other challenges on real data (multi-event clips, spurious co-occurrence)"),
    ("bench_search", "Search", "Search efficiency"),
    ("bench_confirm", "Search", "Confirming a search's answer over seeds"),
    ("bench_asha", "Search", "ASHA's first cut: grace period and reduction factor at an equal epoch budget"),
    ("bench_harness", "Harness", "Harness overhead"),
    ("bench_load", "Loading", "Loading the authors' HDF5 files"),
    ("bench_report", "Report", "Report figures"),
    ("gpu_check", "GPU", "GPU check"),
)
UNNUMBERED = frozenset({"summary"})
_MARKER = re.compile(r"<!-- ([A-Za-z0-9_.-]+):(start|end) -->")
_NUMBER = re.compile(r"^## +(?:\d+[a-z]?\. +)?")
_CONTENTS = "contents"  # the writer's own block under the header


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _split(text: str, path: str) -> tuple[str, dict[str, str]]:
    """(the text before the first section, {id: body between its markers}); anything else outside
    the markers (text that a rewrite would drop) or a marker out of place is a ValueError."""
    head, blocks, pos, open_id, open_at = None, {}, 0, None, 0
    for m in _MARKER.finditer(text):
        name, kind = m.group(1), m.group(2)
        if kind == "start":
            if open_id is not None:
                raise ValueError(f"{path}: section {name!r} starts inside section {open_id!r}; fix the file by hand")
            between = text[pos:m.start()]
            if head is None:
                head = between
            elif between.strip():
                raise ValueError(f"{path}: text outside any section before <!-- {name}:start --> "
                                 f"({between.strip()[:60]!r}); move it into a section")
            if name in blocks:
                raise ValueError(f"{path}: section {name!r} appears twice; fix the file by hand")
            open_id, open_at = name, m.end()
        else:
            if open_id != name:
                raise ValueError(f"{path}: unbalanced markers for section {name!r}; fix the file by hand")
            blocks[name] = text[open_at:m.start()].strip("\n")
            open_id, pos = None, m.end()
    if open_id is not None:
        raise ValueError(f"{path}: unbalanced markers for section {open_id!r}; fix the file by hand")
    if text[pos:].strip() and head is not None:
        raise ValueError(f"{path}: text outside any section at the end ({text[pos:].strip()[:60]!r}); "
                         "move it into a section")
    return (text if head is None else head), blocks


def _numbered(name: str, body: str, number: int | None, path: str) -> tuple[str, str]:
    """body with its first line, a `## ` heading, numbered (or its number dropped); and the heading."""
    first, _, rest = body.lstrip("\n").partition("\n")
    if not first.startswith("## "):
        raise ValueError(f"{path}: section {name!r} must begin with a '## ' heading, got {first[:60]!r}")
    title = _NUMBER.sub("", first)
    heading = f"## {number}. {title}" if number is not None else f"## {title}"
    return heading + ("\n" + rest if rest else ""), heading[3:]


def render_document(head: str, blocks: dict[str, str], sections=SECTIONS, path: str = "BENCHMARKS.md") -> str:
    """The whole file: `head`, the contents list, then every present section in `sections` order,
    its heading numbered. Every id in `blocks` must be in `sections`."""
    known = [s[0] for s in sections]
    unknown = sorted(set(blocks) - set(known) - {_CONTENTS})
    if unknown:
        raise ValueError(f"{path}: section(s) {unknown} are not in bench/common.py's SECTIONS; "
                         "add each there at its place in the reading order")
    out, toc, n, group = [], [], 0, None
    for name, grp, title in sections:
        if name not in blocks:
            continue
        if name in UNNUMBERED:
            body, heading = _numbered(name, blocks[name], None, path)
        else:
            n += 1
            body, heading = _numbered(name, blocks[name], n, path)
        if grp != group and grp:
            toc.append(f"- {grp}:")
        group = grp
        label = title if name in UNNUMBERED else f"{n}. {title}"
        toc.append(f"{'  ' if grp else ''}- [{label}](#{_slug(heading)})")
        out.append(f"<!-- {name}:start -->\n{body}\n<!-- {name}:end -->")
    contents = (f"<!-- {_CONTENTS}:start -->\nSections (their order is `SECTIONS` in bench/common.py):\n\n"
                + "\n".join(toc) + f"\n<!-- {_CONTENTS}:end -->")
    return head.rstrip("\n") + "\n\n" + "\n\n".join([contents] + out) + "\n"


def _check_name(name: str, sections=SECTIONS) -> None:
    if name not in {s[0] for s in sections} or name == _CONTENTS:
        raise ValueError(f"section {name!r} is not in bench/common.py's SECTIONS "
                         f"({', '.join(s[0] for s in sections)}); add it there at its place in the reading order")


def _rewrite(path: str | None, change: dict[str, str], sections) -> None:
    path = os.path.abspath(path or BENCHMARKS_MD)
    lock = os.path.join(tempfile.gettempdir(), "bench-md-" + hashlib.sha1(path.encode()).hexdigest()[:12] + ".lock")
    with open(lock, "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        try:
            old = open(path).read() if os.path.exists(path) else _HEADER
            head, blocks = _split(old, path)
            blocks.update(change)
            new = render_document(head, blocks, sections, path)
            if new != old:
                atomic_write_text(path, new)
        finally:
            fcntl.flock(lf, fcntl.LOCK_UN)


def write_section(name: str, markdown: str, path: str | None = None, sections=SECTIONS) -> None:
    """Put `markdown` (a section beginning with its `## ` heading) between `<!-- name:start -->` and
    `<!-- name:end -->` in BENCHMARKS.md, at the place `sections` gives it, replacing the old one.
    Every other section's text is kept; the file is re-ordered and its headings re-numbered to
    `sections`. A name not in `sections`, text outside the markers, or unbalanced markers: ValueError."""
    _check_name(name, sections)
    _rewrite(path, {name: markdown.strip()}, sections)


def reorder(path: str | None = None, sections=SECTIONS) -> None:
    """Re-order and re-number BENCHMARKS.md to `sections` without changing any section's text."""
    _rewrite(path, {}, sections)


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
    """Print a script's section and, unless --no-write, put it into BENCHMARKS.md (an id not in
    SECTIONS fails here even with --no-write, so the --quick tests catch it)."""
    _check_name(section)
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


if __name__ == "__main__":  # re-order BENCHMARKS.md (or the file given) to SECTIONS
    reorder(sys.argv[1] if len(sys.argv) > 1 else None)
