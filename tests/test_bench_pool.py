"""bench_confirm's pool_runs (bench_asha's too): a confirm folder gets exactly the stored runs of the
other report folders that it asks for (by run key), succeeded, and not already there (a run
file's name is its config's hash, so a copy is the run the confirm would train)."""
import importlib.util
import json
import os

from reporting.confirm import RUNS, run_key

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench_confirm():
    spec = importlib.util.spec_from_file_location("bench_confirm_pool", os.path.join(REPO, "bench", "bench_confirm.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(folder, config, result):
    os.makedirs(folder, exist_ok=True)
    key = run_key(config)
    with open(os.path.join(folder, f"{key}.json"), "w") as f:
        json.dump({"name": "x", "seed": config["seed"], "config": config, "result": result}, f)
    return key


def test_pool_runs_copies_only_the_asked_successful_missing_runs(tmp_path):
    pool_runs = _bench_confirm().pool_runs
    ok = {"val_map": 0.5, "test_map": 0.4}
    other = tmp_path / "a-s0" / "report" / RUNS
    keep = [_write_run(other, {"data": "D", "epochs": 60, "seed": s}, ok) for s in (0, 1)]
    unasked = _write_run(other, {"data": "D", "epochs": 100, "seed": 0}, ok)
    elsewhere = _write_run(tmp_path / "b-s0" / "report-asha" / RUNS, {"data": "E", "epochs": 60, "seed": 0}, ok)
    failed = _write_run(other, {"data": "D", "epochs": 60, "seed": 2}, {"error": "boom"})
    mine = tmp_path / "a-s0-g20-rf3" / "report-asha" / RUNS
    # already there with its own (different) result: left as it is
    mine_key = _write_run(mine, {"data": "D", "epochs": 60, "seed": 1}, {"val_map": 0.9, "test_map": 0.8})
    assert mine_key == keep[1]
    asked = {keep[0], keep[1], elsewhere, failed, "0123456789abcdef"}  # the last: stored nowhere

    assert pool_runs(str(tmp_path), str(mine.parent), asked) == 2
    assert sorted(os.listdir(mine)) == sorted(f"{k}.json" for k in (keep[0], mine_key, elsewhere))
    with open(mine / f"{keep[0]}.json") as f:
        assert json.load(f)["result"] == ok
    with open(mine / f"{mine_key}.json") as f:
        assert json.load(f)["result"]["val_map"] == 0.9
    for k in (unasked, failed):
        assert not (mine / f"{k}.json").exists()
    assert pool_runs(str(tmp_path), str(mine.parent), asked) == 0  # a second call finds nothing new
