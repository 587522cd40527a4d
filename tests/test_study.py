"""A smoke search as users run it (subprocess, warm start on, --mlflow into a temporary file store)
and what it leaves: the stored Optuna study against trials.parquet and the trial folders, the
first trial = the base config, TensorBoard event files, MLflow runs, optuna-dashboard serving the
study on 127.0.0.1; then the search extended from 6 to 10 trials (in a copy moved elsewhere);
flags a resume cannot honour and unusable --optuna-storage / --mlflow values (one error line,
before Ray). Every expected value comes from the trial folders' own files (result.json,
params.json) or the shipped YAML, read here independently of the harness."""
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from conftest import ROOT, tune_main_error  # noqa: E402
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
pytestmark = pytest.mark.slow
optuna = pytest.importorskip("optuna")
STATE = {"terminated": "COMPLETE", "stopped_early": "PRUNED", "errored": "FAIL"}


def tune(storage, name, *extra, timeout=400):
    cmd = [sys.executable, os.path.join(ROOT, "tune_main.py"), "--space", "smoke", "--storage", str(storage),
           "--name", name, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)


def report(exp, out):
    import pandas as pd

    r = subprocess.run([sys.executable, os.path.join(ROOT, "report.py"), str(exp), "--out", str(out)],
                       capture_output=True, text=True, timeout=180, cwd=ROOT, env={**ENV, "MPLBACKEND": "Agg"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return pd.read_parquet(os.path.join(out, "trials.parquet"))


def load_study(exp, name):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(
        os.path.join(exp, "optuna-study.journal"))))


def folders(exp):
    return {os.path.basename(d).split("_")[2]: d for d in glob.glob(os.path.join(exp, "run_trial_*"))}


def results(folder):
    return [json.loads(line) for line in open(os.path.join(folder, "result.json")) if line.strip()]


def check_study_against_folders(exp, name, trials, n):
    """The study holds exactly the trials of the folder and of trials.parquet: ids, folders,
    params, states, the per-epoch val_map and the final value."""
    st = load_study(exp, name)
    dirs = folders(exp)
    assert len(st.trials) == len(dirs) == len(trials) == n, (len(st.trials), len(dirs), len(trials))
    by_id = {t.user_attrs["tune_trial_id"]: t for t in st.trials}
    assert set(by_id) == set(dirs) == set(trials["trial_id"])
    rows = trials.set_index("trial_id")
    for tid, t in by_id.items():
        assert t.user_attrs["tune_trial_folder"] == os.path.basename(dirs[tid])
        params = json.load(open(os.path.join(dirs[tid], "params.json")))
        assert t.params == {k: params[k] for k in t.params} and set(t.params) >= {"mask_ratio", "cca_dim"}
        assert t.state.name == STATE[rows.loc[tid, "status"]], (tid, t.state, rows.loc[tid, "status"])
        rs = results(dirs[tid])
        assert t.intermediate_values == {r["epoch"]: r["val_map"] for r in rs}
        assert t.value == rs[-1]["val_map"]
    return st


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    r = tune(tmp, "s", "--mlflow", f"file:{tmp / 'mlruns'}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = tmp / "s"
    return dict(tmp=tmp, exp=str(exp), out=r.stdout + r.stderr, trials=report(exp, tmp / "report"))


def test_the_study_holds_exactly_the_trials_of_trials_parquet(search):
    st = check_study_against_folders(search["exp"], "s", search["trials"], 6)
    assert {t.state.name for t in st.trials} == {"COMPLETE", "PRUNED"}, "the smoke search had no ASHA stop"
    assert st.user_attrs["hscmae_space"] == "smoke" and st.direction.name == "MAXIMIZE"
    assert f"optuna-dashboard {search['exp']}/optuna-study.journal" in search["out"]


def test_the_first_trial_is_the_shipped_config(search):
    base = yaml.safe_load(open(os.path.join(ROOT, "config", "hsc_mae.yaml")))
    first = next(d for d in folders(search["exp"]).values() if os.path.basename(d).split("_")[3] == "1")
    params = json.load(open(os.path.join(first, "params.json")))
    # the smoke space: top_k 1..4 and cca_dim 4 or 8, so the shipped 5 and 32 become 4 and 8
    assert params["mask_ratio"] == base["mask_ratio"] and params["temperature"] == base["temperature"]
    assert params["one_minus_ema_momentum"] == pytest.approx(1 - base["ema_momentum"], abs=1e-15)
    assert params["ema_momentum"] == pytest.approx(base["ema_momentum"], abs=1e-15)
    assert (params["top_k"], params["cca_dim"]) == (4, 8)
    assert "warm start: base top_k 5 is outside the space" in search["out"]
    assert "warm start: base cca_dim 32 is outside the space" in search["out"]
    assert load_study(search["exp"], "s").trials[0].params["cca_dim"] == 8


def test_tensorboard_event_files_hold_val_map_losses_and_weights(search):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    keys = ["val_map", "loss_recon", "loss_dcca", "loss_infonce", "loss_distill", "loss",
            "w_recon", "w_dcca", "w_infonce", "w_distill"]
    for folder in folders(search["exp"]).values():
        files = glob.glob(os.path.join(folder, "events.out.tfevents.*"))
        assert len(files) == 1, folder
        ea = ea_mod.EventAccumulator(files[0])
        ea.Reload()
        rs = results(folder)
        for k in keys:
            got = {e.step: e.value for e in ea.Scalars(f"ray/tune/{k}")}
            want = {r["training_iteration"]: r[k] for r in rs}
            assert got.keys() == want.keys(), (k, got, want)
            assert all(abs(got[s] - want[s]) <= 1e-6 * max(1, abs(want[s])) for s in want), (k, got, want)


def test_mlflow_file_store_has_one_run_per_trial_with_params_and_epoch_metrics(search):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    client = MlflowClient(tracking_uri=f"file://{search['tmp'] / 'mlruns'}")
    exp = client.get_experiment_by_name("s")
    runs = client.search_runs([exp.experiment_id])
    dirs = folders(search["exp"])
    assert len(runs) == len(dirs) == 6
    by_trial = {r.data.tags["trial_name"].split("_")[-1]: r for r in runs}
    assert set(by_trial) == set(dirs)
    for tid, run in by_trial.items():
        params = json.load(open(os.path.join(dirs[tid], "params.json")))
        for k in ("mask_ratio", "top_k", "cca_dim", "temperature"):
            assert run.data.params[k] == str(params[k]), (k, run.data.params)
        hist = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_map")}
        assert hist == {r["training_iteration"]: r["val_map"] for r in results(dirs[tid])}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optuna_dashboard_serves_the_study(search):
    pytest.importorskip("optuna_dashboard")
    port = _free_port()
    journal = os.path.join(search["exp"], "optuna-study.journal")
    p = subprocess.Popen([sys.executable, "-c", "from optuna_dashboard._cli import main; main()",
                          "--host", "127.0.0.1", "--port", str(port), journal],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        end, studies = time.time() + 60, None
        while time.time() < end and studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as f:
                    studies = json.loads(f.read())["study_summaries"]
            except OSError:
                assert p.poll() is None, p.stdout.read().decode()[-2000:]
                time.sleep(0.5)
        assert studies is not None, "optuna-dashboard did not answer in 60 s"
        (s,) = [s for s in studies if s["study_name"] == "s"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{s['study_id']}", timeout=10) as f:
            detail = json.loads(f.read())
        st = load_study(search["exp"], "s")
        assert [(t["number"], t["state"].upper()) for t in detail["trials"]] == \
            [(t.number, t.state.name) for t in st.trials]
        for t, ot in zip(detail["trials"], st.trials):
            assert {p["name"]: p["param_internal_value"] for p in t["params"]} == \
                {k: ot.distributions[k].to_internal_repr(v) for k, v in ot.params.items()}
    finally:
        p.terminate()
        p.wait(timeout=20)


# ------------------------------------------------------------------------------------------------
# Resume: flags it cannot honour; extending the finished search
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,says", [
    (["--num-samples", "4"], "--num-samples 4: the experiment already has 6 trials"),
    (["--max-epochs", "8"], "--max-epochs 8: the experiment ran 6 epochs"),
    (["--seed", "3"], "--seed 3"),
    (["--grace-period", "3"], "--grace-period 3"),
    (["--no-warm-start"], "--no-warm-start"),
    (["--optuna-storage", "sqlite:///other.db"], "--optuna-storage sqlite:///other.db"),
])
def test_resume_refuses_flags_it_cannot_honour(search, capsys, extra, says):
    before = sorted(os.listdir(search["exp"]))
    msg = tune_main_error(capsys, ["--space", "smoke", "--storage", str(search["tmp"]), "--name", "s", "--resume",
                                   *extra])
    assert says in msg and "cannot resume" in msg, msg
    assert sorted(os.listdir(search["exp"])) == before


def test_resume_refuses_another_space(search, capsys):
    msg = tune_main_error(capsys, ["--space", "default", "--data", "synthetic:tiny", "--storage",
                                   str(search["tmp"]), "--name", "s", "--resume"])
    assert "--space default: the experiment searched space 'smoke'" in msg, msg


def test_a_stored_study_of_another_experiment_is_refused(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    other = optuna.create_study(study_name="taken", storage=db)
    other.set_user_attr("hscmae_experiment", "someone-else")
    msg = tune_main_error(capsys, ["--space", "smoke", "--storage", str(tmp_path), "--name", "taken",
                                   "--optuna-storage", db])
    assert "already holds a study 'taken'" in msg and "someone-else" in msg, msg


@pytest.mark.parametrize("flag,value,says", [
    ("--optuna-storage", "sqlite:////nonexistent-dir-hscmae/x.db", "cannot be opened as an Optuna storage"),
    ("--optuna-storage", "nosuchdb://host/x", "cannot be opened as an Optuna storage"),
    ("--optuna-storage", "/nonexistent-dir-hscmae/study.journal", "cannot be opened as an Optuna storage"),
    ("--mlflow", "FILE_UNDER_A_FILE", "is not writable"),
])
def test_unusable_optuna_storage_or_mlflow_is_one_error_before_ray(tmp_path, capsys, flag, value, says):
    if value == "FILE_UNDER_A_FILE":
        pytest.importorskip("mlflow")
        (tmp_path / "f").write_text("x")
        value = str(tmp_path / "f" / "mlruns")
    msg = tune_main_error(capsys, ["--space", "smoke", "--storage", str(tmp_path), "--name", "b", flag, value])
    assert msg.startswith(f"error: {flag} {value}") and says in msg, msg


def test_extend_a_finished_search_from_6_to_10_trials(search, tmp_path):
    """In a copy moved to another folder (the journal is found in the experiment folder as it is
    now): 4 more trials, in the same study, so TPE samples them knowing the first 6."""
    shutil.copytree(search["exp"], tmp_path / "s")
    first6 = {t.number: (t.params, t.state) for t in load_study(search["exp"], "s").trials}
    r = tune(tmp_path, "s", "--resume", "--num-samples", "10")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "extending the search from 6 to 10 trials" in r.stdout
    exp = str(tmp_path / "s")
    st = check_study_against_folders(exp, "s", report(exp, tmp_path / "report"), 10)
    assert {t.number: (t.params, t.state) for t in st.trials[:6]} == first6
    assert "[hscmae] 10 trials" in r.stdout
    # the progress line counts every trial of the experiment against the new total
    assert "[hscmae] trials done 10/10" in r.stdout and not re.search(r"trials done \d+/6 ", r.stdout)
    assert json.load(open(os.path.join(exp, "space.json")))["num_samples"] == 10
    assert len(load_study(search["exp"], "s").trials) == 6  # the original folder's study is untouched
    # the same command again: nothing left to run, still 10
    r = tune(tmp_path, "s", "--resume", "--num-samples", "10")
    assert r.returncode == 0 and "[hscmae] 10 trials" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    assert len(folders(exp)) == 10 and len(load_study(exp, "s").trials) == 10
