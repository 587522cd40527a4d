"""Every bench script runs in --quick mode and returns its tables with the documented columns,
so the scripts behind BENCHMARKS.md cannot rot. (About 45 s on 2 cores for the first six; bench_report adds about a minute of CPU.)

Each script's main(["--quick", "--no-write"]) must return a dict of tables (name -> list of row
dicts) whose names and columns are the script's TABLES, every number finite; --no-write must
leave BENCHMARKS.md alone. Where a script measures the library, the same run also checks that it
measures the library's own code (CHECKS): bench_train times fit's step on fit's batches,
bench_eval's and bench_scaling's costs are fit's own train_s / eval_s, bench_quality's final
scores are what a plain fit of that config gives.
"""
import glob
import hashlib
import importlib.util
import math
import os

import numpy as np
import pytest

import hscmae.train as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "bench", "bench_*.py")))
BENCHMARKS = os.path.join(REPO, "BENCHMARKS.md")
EXPECTED = {"bench_train.py", "bench_map.py", "bench_harness.py", "bench_search.py", "bench_scaling.py",
            "bench_quality.py", "bench_load.py", "bench_eval.py", "bench_report.py", "bench_noise.py",
            "bench_confirm.py", "bench_asha.py"}


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


def _record_fits(monkeypatch) -> list:
    """hscmae.train.fit wrapped: every call's (cfg, per-epoch metrics, final metrics)."""
    calls, fit = [], T.fit

    def recording(cfg, data, *, on_epoch=None, **kw):
        seen = []

        def hook(m, save):
            seen.append(dict(m))
            return on_epoch(m, save) if on_epoch else None
        final = fit(cfg, data, on_epoch=hook, **kw)
        calls.append((cfg, seen, final))
        return final
    monkeypatch.setattr(T, "fit", recording)
    return calls


def _check_train(monkeypatch):
    """Every optimizer step bench_train times is hscmae.train.optimizer_step on a batch that
    hscmae.train.batches (fit's loop) yielded."""
    yielded, stepped, batches, step = set(), [], T.batches, T.optimizer_step

    def recording_batches(*a, **k):
        for xa, xv in batches(*a, **k):
            yielded.add((id(xa), id(xv)))
            yield xa, xv

    def recording_step(model, cfg, opt, log_vars, xa, xv, *a, **k):
        stepped.append((id(xa), id(xv)) in yielded)
        return step(model, cfg, opt, log_vars, xa, xv, *a, **k)
    monkeypatch.setattr(T, "batches", recording_batches)
    monkeypatch.setattr(T, "optimizer_step", recording_step)

    def check(out):
        assert len(stepped) > 10 and all(stepped), "bench_train must time fit's step on fit's batches"
    return check


def _check_eval(monkeypatch):
    """Each cost row is fit's own train_s / eval_s (epoch 1 grid, 2 held, 3 final) with the row's
    grid_search, and the trial share follows from them: 3 grids, 56 held epochs and the final
    over 60 epochs of training. The halving check compares every epoch of the halving run."""
    calls = _record_fits(monkeypatch)

    def check(out):
        assert len(out["cost"]) == len(calls) == 2
        for row, (cfg, seen, _) in zip(out["cost"], calls):
            assert row["grid search"] == cfg.grid_search
            assert [m["epoch"] for m in seen] == [1, 2, 3] and "test_map" in seen[2]
            train = float(np.median([m["train_s"] for m in seen]))
            assert row["epoch train s"] == train
            assert (row["grid eval s"], row["held eval s"], row["final eval s"]) == tuple(m["eval_s"] for m in seen)
            grid, held, final = (m["eval_s"] for m in seen)
            # by hand: val_every 1 grids at 1, 10, 30 and held at the other 56 epochs before the last;
            # 5: grids at 5, 10, 30, held at 15, 20, 25, 35, 40, 45, 50, 55; 10: grids at 10, 30, held at 20, 40, 50
            for col, (n_grid, n_held) in (("trial eval %", (3, 56)), ("trial eval %, val_every 5", (3, 8)),
                                          ("trial eval %, val_every 10", (2, 3))):
                share = 100 * (n_grid * grid + n_held * held + final) / 60 / train
                assert row[col] == pytest.approx(share, rel=1e-12), col
            for m in seen:  # fit's own split of its epoch
                assert m["train_s"] + m["eval_s"] == pytest.approx(m["epoch_time_s"], abs=1e-6)
        assert [c[0].grid_search for c in calls] == ["exhaustive", "halving"]
        (agree,) = out["halving"]
        assert agree["epochs compared"] == 3 and agree["within 0.002"] == 3
    return check


def _check_scaling(monkeypatch):
    calls = _record_fits(monkeypatch)

    def check(out):
        rows = out["scaling"]
        assert len(rows) == len(calls)
        for row, (_, seen, _) in zip(rows, calls):
            last = seen[-1]
            assert (row["epoch s"], row["train loop s"], row["val eval s"]) == (
                last["epoch_time_s"], last["train_s"], last["eval_s"])
    return check


def _check_quality(monkeypatch):
    """fit inside bench_quality skips the per-epoch validation; its final scores must be those of a
    plain fit of the same config (the skip changes no draw and no weight), and the ablation's
    "(none)" row must report them."""
    calls = _record_fits(monkeypatch)

    def check(out):
        from hscmae.data import load_data_for

        full = [r for r in out["ablation"] if r["component switched off"] == "(none)"]
        assert full
        cfg, seen, final = next(c for c in calls if c[2]["test_map"] == full[0]["test mAP"])
        assert all("val_map" not in m for m in seen[:-1]), "per-epoch validation is skipped"
        monkeypatch.undo()
        plain = T.fit(cfg, load_data_for(cfg), log=None)
        assert (plain["val_map"], plain["test_map"]) == (final["val_map"], final["test_map"])
        assert full[0]["val mAP"] == final["val_map"]
    return check


def _check_confirm(monkeypatch):
    """bench_confirm's row is what its confirm wrote: the confirmed choice is the argmax of the mean
    val over each config's seeds (recomputed here from confirmed.parquet's per-seed values), the
    single-seed choice the search's rank-1 trial, the test cells those configs' seed means."""
    def check(out):
        import pandas as pd

        (row,) = out["runs"]
        t = pd.read_parquet(os.path.join(row["report folder"], "confirmed.parquet"))
        means = {r["config"]: np.mean([float(v) for v in r["val_maps"].split(",")]) for _, r in t.iterrows()}
        assert row["confirmed choice"] == max(means, key=means.get)
        single = t[t["search_rank"] == 1].iloc[0]
        assert row["single-seed choice"] == single["config"]
        assert row["same"] == ("yes" if single["config"] == row["confirmed choice"] else "no")
        test = {r["config"]: np.mean([float(v) for v in r["test_maps"].split(",")]) for _, r in t.iterrows()}
        assert row["confirmed test"].startswith(f"{test[row['confirmed choice']]:.4f} ± ")
        assert row["single-seed choice's test"].startswith(f"{test[single['config']]:.4f} ± ")
    return check


def _check_asha(monkeypatch):
    """bench_asha's rows are what its searches and confirms wrote: the trials and epochs trained
    counted from the trial folders' result.json (each trial's last epoch), the trial counts the
    epoch-equalised ones worked by hand, the best val mAP the highest final val_map of the trials that
    ran all 6 epochs and the winner that trial, its test / val the means of its seeds in confirmed.parquet."""
    import glob
    import json

    import pandas as pd

    def check(out):
        rows = out["runs"]
        # smoke space, 6 epochs: grace 2 rf 2 (rungs 2, 4) runs 2 + 4/2 + 2/4 = 3.5 epochs a trial, 3
        # trials; grace 4 (rung 4) 4 + 2/2 = 5, so 3 x 3.5 / 5 = 2.1 -> 2 trials
        assert [(r["arm"], r["trials"]) for r in rows] == [("grace 2, rf 2", 3), ("grace 4, rf 2", 2)]
        for row in rows:
            last = {}
            for path in glob.glob(os.path.join(row["experiment"], "*", "result.json")):
                lines = [json.loads(line) for line in open(path) if line.strip()]
                epochs = [r for r in lines if "epoch" in r]
                final = max(epochs, key=lambda r: r["epoch"])
                last[final["trial_id"]] = final
            assert row["trials"] == len(last)
            assert row["epochs trained"] == sum(r["epoch"] for r in last.values())
            full = {t: r["val_map"] for t, r in last.items() if r["epoch"] == 6}
            assert row["best val mAP"] == max(full.values())
            assert row["winner"] == max(full, key=full.get)
            t = pd.read_parquet(os.path.join(row["report folder"], "confirmed.parquet"))
            (w,) = [r for _, r in t.iterrows() if r["config"] == row["winner"]]
            tests = [float(v) for v in w["test_maps"].split(",")]
            vals = [float(v) for v in w["val_maps"].split(",")]
            assert len(tests) == len(vals) == 3
            assert vals[0] == full[row["winner"]]  # seed 0 is the trial itself
            assert row["winner's test mAP"] == f"{np.mean(tests):.4f} ± {np.std(tests, ddof=1):.4f}"
            assert row["winner's mean val"] == pytest.approx(np.mean(vals), rel=1e-12)
    return check


CHECKS = {"bench_confirm.py": _check_confirm, "bench_asha.py": _check_asha, "bench_train.py": _check_train, "bench_eval.py": _check_eval,
          "bench_scaling.py": _check_scaling, "bench_quality.py": _check_quality}


@pytest.mark.slow
@pytest.mark.parametrize("path", SCRIPTS, ids=[os.path.basename(p) for p in SCRIPTS])
def test_quick_mode_returns_its_tables(path, monkeypatch):
    module = _load(path)
    check = CHECKS.get(os.path.basename(path), lambda mp: None)(monkeypatch)
    before = _digest()
    out = module.main(["--quick", "--no-write"])
    assert _digest() == before, "--no-write must not touch BENCHMARKS.md"
    tables = getattr(module, "QUICK_TABLES", module.TABLES)  # what --quick runs (bench_confirm: not every table)
    assert set(out) == set(tables)
    for name, columns in tables.items():
        rows = out[name]
        assert rows, f"table {name!r} is empty"
        for row in rows:
            assert set(columns) <= set(row), f"table {name!r}: missing {set(columns) - set(row)}"
            for c in columns:  # every number is a finite number
                v = row[c]
                if isinstance(v, float):
                    assert math.isfinite(v), f"table {name!r}, column {c!r}: {v}"
    if check:
        check(out)
