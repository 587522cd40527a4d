"""report.py --confirm's engine (reporting/confirm.py) on a tiny finished search: the choice is the
argmax of the mean validation mAP over the confirmed runs (recomputed here from the per-seed values
in confirmed.parquet), a stored seed run equals an independent fit() with that seed, the search's own
trial counts as the first seed, and a second call runs only the runs that are missing."""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from hscmae.config import config_from_dict
from hscmae.data import load_data
from hscmae.train import fit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # a smoke search, then Ray tasks


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    storage = tmp_path_factory.mktemp("confirm")
    # the search and its confirm step in one command (tune_main.py --confirm: report.py --confirm after it)
    r = subprocess.run([sys.executable, "tune_main.py", "--space", "smoke", "--num-samples", "4", "--max-epochs", "4",
                        "--storage", str(storage), "--name", "smoke", "--confirm", "2", "--confirm-seeds", "2",
                        "--confirm-epochs", "4"],  # the search's length (default: the base config's 100)
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[report] confirmed best: " in r.stdout and "to train" in r.stdout, r.stdout[-3000:]
    from reporting.experiment import load_experiment
    from reporting.writing import write_report

    exp = load_experiment(str(storage / "smoke"))
    out = str(storage / "smoke" / "report")
    write_report(exp, out)
    return exp, out


def test_tune_main_confirm_puts_the_confirmed_means_in_the_stored_study(search):
    """The dashboard's view: the study's user attributes hold each confirmed config's mean val_map,
    keyed by the Optuna number of its trial (found here from the trials' tune_trial_id)."""
    import optuna
    import pandas as pd
    from optuna.storages.journal import JournalFileBackend

    exp, out = search
    t = pd.read_parquet(os.path.join(out, "confirmed.parquet"))
    st = optuna.load_study(study_name="smoke", storage=optuna.storages.JournalStorage(
        JournalFileBackend(os.path.join(exp.path, "optuna-study.journal"))))
    number = {tr.user_attrs["tune_trial_id"]: tr.number for tr in st.trials}
    attrs = st.user_attrs
    for _, r in t.iterrows():
        key = f"confirmed {number[r['trial_id']]}" if r["trial_id"] in number else f"confirmed {r['config']}"
        vals = [float(v) for v in r["val_maps"].split(",")]
        assert attrs[key].startswith(f"val_map {sum(vals) / len(vals):.4f} +- "), (key, attrs[key])
        assert attrs[key].endswith(f"confirmed rank {int(r['confirmed_rank'])}")
    assert [row["config"] for row in attrs["hscmae_confirmed"]] == list(t["config"])


def test_confirm_chooses_by_mean_val_and_its_runs_are_plain_fits(search):
    from reporting.confirm import RUNS, run_confirm

    exp, out = search
    lines = []
    written, table = run_confirm(exp, out, k=2, seeds=2, epochs=exp.max_epochs, address=None, num_cpus=2,
                                 log=lines.append)
    assert {"confirmed.parquet", "confirmed.md", "confirmed.tex", "best_config.yaml",
            "best_config_single_seed.yaml"} <= set(written)
    import pandas as pd

    t = pd.read_parquet(os.path.join(out, "confirmed.parquet"))
    # the top 2 full-length trials and the base config (the warm start), each over 2 seeds
    assert len(t) in (2, 3) and (t["n_ok"] == 2).all()
    assert any("base config" in c for c in t["config"])
    means = {r["config"]: sum(map(float, r["val_maps"].split(","))) / 2 for _, r in t.iterrows()}
    best = max(means, key=means.get)
    assert t.iloc[0]["config"] == best and means[best] == pytest.approx(t.iloc[0]["val_map_mean"], rel=1e-12)
    with open(os.path.join(out, "best_config.yaml")) as f:
        text = f.read()
    assert "confirmed best" in text.splitlines()[0]
    # the search's trial is the first seed: its val is the trial's own final val (result.json)
    trial_rows = t[t["trial_id"].notna() & t["search_rank"].notna()]
    for _, r in trial_rows.iterrows():
        with open(glob.glob(os.path.join(exp.path, f"run_trial_{r['trial_id']}_*", "result.json"))[0]) as f:
            last = [json.loads(line) for line in f if line.strip()][-1]
        assert float(r["val_maps"].split(",")[0]) == last["val_map"]
    # a stored run is an independent fit() with its seed and config
    stored = sorted(glob.glob(os.path.join(out, RUNS, "*.json")))
    assert stored
    with open(stored[0]) as f:
        rec = json.load(f)
    cfg = config_from_dict(rec["config"])
    torch.set_num_threads(1)  # as the Ray task trains (one core per task)
    again = fit(cfg, load_data(cfg.data), log=None)
    assert again["val_map"] == rec["result"]["val_map"] and again["test_map"] == rec["result"]["test_map"]
    chosen = yaml.safe_load(text)
    assert chosen["epochs"] == exp.max_epochs

    # a second call with one stored run gone trains that one only; the others are not touched
    mtimes = {p: os.stat(p).st_mtime_ns for p in stored}
    os.unlink(stored[-1])
    lines.clear()
    _, table2 = run_confirm(exp, out, k=2, seeds=2, epochs=exp.max_epochs, address=None, num_cpus=2,
                            log=lines.append)
    assert any("1 to train" in line for line in lines), lines
    assert {p: os.stat(p).st_mtime_ns for p in stored[:-1]} == {p: mtimes[p] for p in stored[:-1]}
    assert os.path.exists(stored[-1])
    assert list(table2["val_map_mean"]) == list(table["val_map_mean"])  # the same runs, the same numbers


def test_confirm_refuses_a_bad_count(search):
    from reporting.confirm import plan
    from reporting.experiment import ReportError

    with pytest.raises(ReportError, match="--confirm 0"):
        plan(search[0], 0, 3, None)
