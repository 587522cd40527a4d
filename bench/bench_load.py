"""Peak memory and time of loading a VEGAS-sized HDF5 feature file (28k clips, 128 + 1024 float32).

    python bench/bench_load.py            # synthetic:vegas exported to .h5 (both layouts), ~1 min
    python bench/bench_load.py --quick    # synthetic:tiny, seconds (CI); --no-write leaves BENCHMARKS.md alone

Each row is measured in a fresh interpreter (so one row's freed memory does not hide the next's):
tracemalloc's peak of Python + numpy allocations during the load (h5py's C library buffers are
not traced), and the process's peak RSS (VmHWM) minus its peak after the imports. Rows:
- `load_data` on the file in each layout (chunked read, float32 on the way, scaled in place);
- "whole-array reference": the same file read whole (`dataset[()]`), cast to float32 and
  standardised with the pre-issue-16 formula (a float64 copy of the train rows, a float64 result),
  which is what loading it without chunking would cost;
- the result: the two float32 arrays a Dataset holds (the floor any loader needs).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from bench.common import command_line, machine_info, md_table, parser, publish  # noqa: E402

SECTION = "bench_load"
COLUMNS = ["source", "how", "clips", "load s", "tracemalloc peak MiB", "RSS growth MiB", "peak / result"]
TABLES = {"load": COLUMNS}

_CHILD = r"""
import json, sys, time, tracemalloc
import numpy as np, h5py
from hscmae.data import load_data
path, how = sys.argv[1], sys.argv[2]
def hwm_kib():  # this process's peak RSS (ru_maxrss would carry the parent's peak across exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
rss0 = hwm_kib()
tracemalloc.start()
t0 = time.perf_counter()
if how == "load_data":
    ds = load_data(path)
    arrays = (ds.audio, ds.visual)
    n = len(ds)
else:  # whole-array reference: read whole, float32, the pre-issue-16 standardisation
    with h5py.File(path, "r") as f:
        a = np.concatenate([f["audio_train"][()], f["audio_test"][()]]).astype(np.float32)
        v = np.concatenate([f["visual_train"][()], f["visual_test"][()]]).astype(np.float32)
        n_tr = len(f["audio_train"])
    train = np.arange(n_tr)
    def standardise(x):
        ref = x[train].astype(np.float64)
        return ((x - ref.mean(0)) / ref.std(0)).astype(np.float32)
    arrays = (standardise(a), standardise(v))
    n = len(a)
secs = time.perf_counter() - t0
peak = tracemalloc.get_traced_memory()[1]
rss = hwm_kib()
print(json.dumps({"secs": secs, "peak": peak, "rss_growth_kib": rss - rss0, "result": sum(x.nbytes for x in arrays),
                  "n": n}))
"""


def _measure(path: str, how: str) -> dict:
    env = {**os.environ, "PYTHONPATH": _REPO}
    out = subprocess.run([sys.executable, "-c", _CHILD, path, how], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> tuple[dict, dict]:
    from hscmae.data import export

    source = "synthetic:tiny" if quick else "synthetic:vegas"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout in ("split-keys", "flag-column"):
            path = os.path.join(tmp, f"{layout}.h5")
            export(source, path, layout=layout)
            hows = ["load_data"] + (["whole-array reference"] if layout == "split-keys" else [])
            for how in hows:
                m = _measure(path, how)
                mib = 1 << 20
                rows.append({"source": f"{source} -> .h5 ({layout})", "how": how, "clips": m["n"],
                             "load s": m["secs"], "tracemalloc peak MiB": m["peak"] / mib,
                             "RSS growth MiB": m["rss_growth_kib"] / 1024, "peak / result": m["peak"] / m["result"]})
                if how == "load_data" and layout == "split-keys":
                    result_mib = m["result"] / mib
    rows.append({"source": source, "how": "result: float32 audio + visual", "clips": rows[0]["clips"],
                 "load s": 0.0, "tracemalloc peak MiB": result_mib, "RSS growth MiB": result_mib, "peak / result": 1.0})
    return {"load": rows}, {"load_end": os.getloadavg()}


def render(tables, info, command, header) -> str:
    return "\n".join([
        "## Loading the authors' HDF5 files (`bench/bench_load.py`)", "", header,
        f"- load average at end: {info['load_end'][0]:.2f} / {info['load_end'][1]:.2f} / {info['load_end'][2]:.2f}"
        " (a shared 2-core machine: times are noisy, memory is not)",
        f"- command: `{command}`",
        "- each row in a fresh interpreter; tracemalloc traces Python and numpy allocations (not h5py's C "
        "buffers); RSS growth = peak RSS (VmHWM) minus the peak after the imports.", "",
        md_table(COLUMNS, tables["load"], {"load s": ".2f", "tracemalloc peak MiB": ".1f", "RSS growth MiB": ".1f",
                                           "peak / result": ".2f"}), ""])


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    p = parser(__file__, __doc__, "synthetic:tiny (CI)")
    args = p.parse_args(argv)
    header = machine_info()
    tables, info = run(args.quick)
    publish(SECTION, render(tables, info, command_line(argv, __file__), header), args.no_write)
    return tables


if __name__ == "__main__":
    main()
