"""Every bench script runs in --quick mode and returns its tables with the documented columns,
so the scripts behind BENCHMARKS.md cannot rot. (About 45 s on 2 cores for the first six; bench_report adds about a minute of CPU.)

Each script's main(["--quick", "--no-write"]) must return a dict of tables (name -> list of row
dicts) whose names and columns are the script's TABLES, every number finite; --no-write must
leave BENCHMARKS.md alone.
"""
import glob
import hashlib
import importlib.util
import math
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "bench", "bench_*.py")))
BENCHMARKS = os.path.join(REPO, "BENCHMARKS.md")
EXPECTED = {"bench_train.py", "bench_map.py", "bench_harness.py", "bench_search.py", "bench_scaling.py",
            "bench_quality.py", "bench_load.py", "bench_eval.py", "bench_report.py"}


def _load(path):
    name = "bench_quick_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digest():
    if not os.path.exists(BENCHMARKS):
        return None
    with open(BENCHMARKS, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_the_scripts_exist():
    assert {os.path.basename(p) for p in SCRIPTS} == EXPECTED


@pytest.mark.slow
@pytest.mark.parametrize("path", SCRIPTS, ids=[os.path.basename(p) for p in SCRIPTS])
def test_quick_mode_returns_its_tables(path):
    module = _load(path)
    before = _digest()
    out = module.main(["--quick", "--no-write"])
    assert _digest() == before, "--no-write must not touch BENCHMARKS.md"
    assert set(out) == set(module.TABLES)
    for name, columns in module.TABLES.items():
        rows = out[name]
        assert rows, f"table {name!r} is empty"
        for row in rows:
            assert set(columns) <= set(row), f"table {name!r}: missing {set(columns) - set(row)}"
            for c in columns:  # every number is a finite number
                v = row[c]
                if isinstance(v, float):
                    assert math.isfinite(v), f"table {name!r}, column {c!r}: {v}"
