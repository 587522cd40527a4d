"""Faults inside real searches (smoke space, subprocesses, SIGKILL):

- a search in which two trials diverge (an absurd learning rate: the loss overflows) and the actor
  of a healthy trial is SIGKILLed mid-trial: the NaN trials end errored with TrainingDiverged, the
  killed one is retried from its checkpoint, the search finishes; --max-epochs reaches the trials;
  no dashboard HTTP port is open;
- the driver SIGKILLed twice (during the first trials; as a checkpoint directory appears) with a
  trial's checkpoints corrupted in between, resumed each time: exactly --num-samples trials,
  finished results unchanged, unfinished trials continue from their checkpoints, the corrupted one
  errors naming its checkpoint and never retrains; the stored Optuna study then holds exactly
  those trials, none twice, none RUNNING;
- a worker node of a two-node cluster lost mid-search: the search finishes on the head node.

No test waits for a moment in time: each fault is injected while the search's trials are held at a
known epoch by harness/trainable.py's test-only HSCMAE_TEST_HOLD hook (conftest.Hold), a state that
stays put until the test releases it.

Every process a test starts is found by session id / GCS port and killed by pid (_procs.py);
nothing here runs `ray stop`, which would stop every Ray on the machine. Each search gets a private
RAY_TMPDIR, so no test sees (or leaves behind) a /tmp/ray/ray_current_cluster of another.
"""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _procs as P  # noqa: E402

from conftest import ROOT, SEARCH_ENV as ENV, Hold  # noqa: E402
pytestmark = pytest.mark.slow


def tune_cmd(storage, name, *extra, space="smoke"):
    return [sys.executable, os.path.join(ROOT, "tune_main.py"), "--space", space, "--storage", str(storage),
            "--name", name, *extra]


def trial_dirs(exp) -> dict[str, str]:
    return {os.path.basename(d).split("_")[2]: d for d in glob.glob(os.path.join(exp, "run_trial_*"))}


def results(exp) -> dict[str, list[dict]]:
    out = {}
    for t, d in trial_dirs(exp).items():
        f = os.path.join(d, "result.json")
        out[t] = [json.loads(line) for line in open(f) if line.strip()] if os.path.exists(f) else []
    return out


def result_texts(exp) -> dict[str, str]:
    """result.json of every trial, as written ("" for a trial that has not reported yet)."""
    return {t: open(f).read() if os.path.exists(f) else ""
            for t, d in trial_dirs(exp).items() for f in [os.path.join(d, "result.json")]}


def epochs(exp) -> dict[str, list[int]]:
    return {t: [r["epoch"] for r in rs] for t, rs in results(exp).items()}


def progress(exp) -> dict[str, int]:
    """Epochs each trial has checkpointed (with --checkpoint-every 1, checkpoint_00000k is epoch
    k+1 of the trial's current run). Checkpoints are written by the trial straight to storage,
    ahead of result.json, which the driver writes when the report reaches it."""
    out = {}
    for t, d in trial_dirs(exp).items():
        idx = [int(os.path.basename(c).split("_")[1]) for c in glob.glob(os.path.join(d, "checkpoint_*"))]
        out[t] = max(idx) + 1 if idx else 0
    return out


def start(cmd, log_path, env=ENV):
    return subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            start_new_session=True)


def wait_for(cond, p, timeout, what, poll=0.1):
    end = time.time() + timeout
    while time.time() < end:
        v = cond()
        if v:
            return v
        if p.poll() is not None:
            pytest.fail(f"the search exited (rc {p.returncode}) before {what}")
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def kill_driver(p):
    """SIGKILL the driver's process group (driver, GCS, raylet ...); trial actors have process
    groups of their own, so then everything left in the driver's session."""
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    P.kill_all(set(P.in_session(p.pid)), grace=5)


def finish(p, log_path, timeout=300):
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_driver(p)
        pytest.fail(f"the search did not finish in {timeout}s:\n" + open(log_path).read()[-3000:])
    return p.returncode, open(log_path).read()


def cleanup(p):
    if p is not None and p.poll() is None:
        kill_driver(p)
    if p is not None:
        P.kill_all(set(P.in_session(p.pid)), grace=2)


# ------------------------------------------------------------------------------------------------
# One search, three trial-level faults: NaN loss, a killed trial actor, the dashboard check
# ------------------------------------------------------------------------------------------------
SITECUSTOMIZE = '''
# Test hook, loaded by every Python process of the test's search (driver, Ray workers) through
# PYTHONPATH: a "smoke-nan" space = smoke, except that odd-numbered trials get lr 1e30, which
# overflows the loss on the second step -- a real cause of NaN, not a patched loss.
try:
    import dataclasses

    import search_spaces
    from search_spaces import smoke

    def sample(trial):
        derived = dict(smoke.sample(trial) or {})
        if getattr(trial, "number", 0) % 2 == 1:
            derived["lr"] = 1e30
        return derived

    search_spaces.SPACES["smoke-nan"] = dataclasses.replace(smoke.SPACE, name="smoke-nan", sample=sample)
except Exception:
    pass
'''
EPOCHS = 8
HOLD_AT = 3  # mid-run: past two checkpoints, short of the end


@pytest.fixture(scope="module")
def faulty_search(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faulty")
    hook = tmp / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    # a stale record of a dead `ray start` head: with ray.init(address=None) the driver would join
    # it and wait for a GCS that never answers; tune_main must start its own local Ray
    ray_tmp = tempfile.mkdtemp(prefix="rl-", dir="/tmp")
    os.makedirs(os.path.join(ray_tmp, "ray"))
    open(os.path.join(ray_tmp, "ray", "ray_current_cluster"), "w").write("127.0.0.1:1\n")
    env = {k: v for k, v in ENV.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}  # Ray's defaults
    env.update(RAY_TMPDIR=ray_tmp,
               PYTHONPATH=os.pathsep.join([str(hook), ROOT, os.environ.get("PYTHONPATH", "")]))
    exp, log = tmp / "f", tmp / "f.log"
    hold = Hold(tmp / "hold", HOLD_AT)  # every healthy trial stops after epoch 3 until released
    env.update(hold.env())
    cmd = tune_cmd(tmp, "f", "--num-samples", "4", "--max-concurrent", "2", "--max-epochs", str(EPOCHS),
                   "--grace-period", str(EPOCHS), "--checkpoint-every", "1", "--max-failures", "1",
                   space="smoke-nan")
    p = start(cmd, log, env)
    try:
        wait_for(lambda: any("gcs_server" in P.cmdline(q) for q in P.in_session(p.pid)), p, 60,
                 "the driver to start its own Ray head (a stale ray_current_cluster was there)")

        def healthy_held_mid_trial():  # its epoch-3 result and checkpoint with the driver
            actors = P.trial_actors(p.pid)
            for trial, m in hold.held().items():
                if actors.get(m["pid"]) == trial and epochs(exp).get(trial, [])[-1:] == [HOLD_AT] \
                        and progress(exp).get(trial) == HOLD_AT:
                    return m["pid"], trial
        pid, killed = wait_for(healthy_held_mid_trial, p, 180, f"a healthy trial held after epoch {HOLD_AT}")
        listening = P.listening_ports(set(P.in_session(p.pid)))
        cmdlines = {q: P.cmdline(q) for q in P.in_session(p.pid)}
        before = epochs(exp).get(killed, [])
        prog_before = progress(exp)[killed]
        os.kill(pid, signal.SIGKILL)
        t_kill = time.time()
        hold.release()  # the other trials go on (and the killed one, retried, passes epoch 3)
        rc, out = finish(p, log)
        print(f"[measured] search finished {time.time() - t_kill:.0f}s after the actor kill")
    finally:
        cleanup(p)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return dict(exp=str(exp), rc=rc, out=out, killed=killed, killed_pid=pid, before=before,
                prog_before=prog_before, listening=listening, cmdlines=cmdlines)


def _errored(exp):
    return {t for t, d in trial_dirs(exp).items() if os.path.exists(os.path.join(d, "error.txt"))}


def test_nan_trials_end_errored_with_the_reason_and_the_search_finishes(faulty_search):
    s = faulty_search
    assert s["rc"] == 0, s["out"][-3000:]
    exp = s["exp"]
    res = results(exp)
    assert len(res) == 4, f"expected exactly 4 trials, got {sorted(res)}"
    diverged = {t for t in _errored(exp)
                if "TrainingDiverged" in open(os.path.join(trial_dirs(exp)[t], "error.txt")).read()}
    assert len(diverged) == 2, f"expected the 2 odd-numbered trials to diverge, got {diverged}"
    for t in diverged:
        err = open(os.path.join(trial_dirs(exp)[t], "error.txt")).read()
        assert "loss is nan" in err or "loss is inf" in err or "Cholesky" in err, err[-1500:]
        assert "at epoch 1, step" in err, err[-1500:]
        params = json.load(open(os.path.join(trial_dirs(exp)[t], "params.json")))
        assert params["lr"] == 1e30
        assert res[t] == [], f"a diverged trial reported results (a silent score?): {res[t][:2]}"
    # the summary counts them and says why
    summary = s["out"][s["out"].rfind("[hscmae] 4 trials"):]
    assert "2 errored" in summary.splitlines()[0], summary[:500]
    assert summary.count("  errored: ") == 2 and summary.count("TrainingDiverged") == 2, summary[:1500]
    # the healthy trials were untouched by their neighbours' divergence
    for t in set(res) - diverged:
        assert res[t][-1]["epoch"] == EPOCHS and res[t][-1]["val_map"] > 0.1 and "test_map" in res[t][-1]


def test_max_epochs_flag_reaches_the_trials(faulty_search):
    """(Found: run_trial rebuilt the trial config from the space's name, so --max-epochs and the
    space's other flag-changed fixed keys never reached the trials -- the smoke trials ran 6 epochs
    under an ASHA max_t of 8; fixed in tune_main.py.)"""
    res = results(faulty_search["exp"])
    finished = [rs for rs in res.values() if rs]
    assert finished and all(rs[-1]["epoch"] == EPOCHS for rs in finished), [len(rs) for rs in res.values()]


def test_killed_trial_actor_is_retried_from_its_checkpoint(faulty_search):
    s = faulty_search
    exp, t = s["exp"], s["killed"]
    assert s["rc"] == 0
    assert not P.alive(s["killed_pid"])
    d = trial_dirs(exp)[t]
    err = open(os.path.join(d, "error.txt")).read()  # Tune's record of the failure it retried
    assert "TrainingDiverged" not in err and ("died" in err.lower() or "actor" in err.lower()), err[-1500:]
    eps = epochs(exp)[t]
    assert eps[-1] == EPOCHS, f"the killed trial did not finish: {eps}"
    # resumed from its last checkpoint: epochs in order, never back to 1 (an epoch trained but not
    # checkpointed before the kill may be reported twice). Tune itself may drop the lines logged
    # before the kill: on a retry with a checkpoint it re-downloads result.json from storage, which
    # can lag the driver's copy (seen once: [3, ..., 8]); then what is missing is a prefix only.
    assert eps.count(1) <= 1 and eps == sorted(eps), f"the killed trial restarted from epoch 0: {eps}"
    assert sorted(set(eps)) == list(range(eps[0], EPOCHS + 1)) and eps[0] <= s["prog_before"] + 1, eps
    assert len(eps) - len(set(eps)) <= 1, eps
    print(f"[measured] actor killed after checkpointing epoch {s['prog_before']} (reported {s['before']}); "
          f"epochs reported overall {eps}")
    summary = s["out"][s["out"].rfind("[hscmae] 4 trials"):]
    assert f"{EPOCHS} epochs" in summary.splitlines()[0] and "2 errored" in summary.splitlines()[0]


def test_what_a_local_ray_listens_on(faulty_search):
    """A local Ray started by tune_main, as measured on its processes' LISTEN sockets. What we
    control and assert: no dashboard (no HTTP server on 8265, no dashboard process listening), no
    Ray Client server (10001), nothing listening but Ray's own core processes, and the cluster
    requires a token (Ray 2.60's default; the driver says so). What we cannot change and do not
    hide (RELIABILITY.md): Ray 2.60's gRPC servers (driver/workers, GCS, raylet) listen on '::',
    i.e. every IPv4 and IPv6 interface, and its runtime-env agent on the routable address;
    `ray.init(_node_ip_address="127.0.0.1")` does not change that."""
    s = faulty_search
    listening, cmdlines = s["listening"], s["cmdlines"]
    assert listening, "found no listening sockets at all: the check would be vacuous"
    ports = {port for socks in listening.values() for _, port in socks}
    assert not ports & {8265, 10001}, listening
    for pid, socks in listening.items():
        prog = cmdlines.get(pid, "").split(" ")[:2]  # the executable (and script), not its flags
        assert not any("dashboard" in a for a in prog), f"a dashboard process listens on {socks}: {prog}"
        core = ("tune_main.py", "/gcs/gcs_server", "/raylet/raylet", "ray::")
        assert any(k in a for a in prog for k in core), f"unexpected listener {prog} on {socks}"
    for pid, c in cmdlines.items():
        if "dashboard/dashboard.py" in c:  # Ray 2.60 keeps a headless one for usage stats
            assert "--minimal" in c and "--disable-frontend" in c, c
    assert "Token authentication is enabled" in s["out"], s["out"][:2000]


def test_report_shows_the_nan_trials_as_errored_with_the_reason(faulty_search, tmp_path):
    """report.py on the search: the diverged trials are 'errored' with TrainingDiverged as the
    reason in trials.parquet, and summary.md counts and lists them with it; the killed-and-retried trial is not
    errored (it finished)."""
    import pandas as pd

    exp, out = faulty_search["exp"], tmp_path / "report"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "report.py"), exp, "--out", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, env={**ENV, "MPLBACKEND": "Agg"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    trials = pd.read_parquet(out / "trials.parquet").set_index("trial_id")
    diverged = {t for t in _errored(exp)
                if "TrainingDiverged" in open(os.path.join(trial_dirs(exp)[t], "error.txt")).read()}
    assert set(trials.index[trials["status"] == "errored"]) == diverged, trials[["status", "error"]]
    for t in diverged:
        assert trials.loc[t, "error"].startswith("hscmae.train.TrainingDiverged: "), trials.loc[t, "error"]
    assert trials.loc[faulty_search["killed"], "status"] == "terminated"
    summary = (out / "summary.md").read_text()
    assert "2 errored" in summary
    errored_rows = [line for line in summary.splitlines() if "TrainingDiverged" in line]
    assert {t for t in diverged if any(f"`{t}`" in line for line in errored_rows)} == diverged, summary


# ------------------------------------------------------------------------------------------------
# The driver killed twice, a checkpoint corrupted in between; resumed each time
# ------------------------------------------------------------------------------------------------
def uninterrupted_scores(exp, trial) -> dict:
    """The trial's final scores recomputed in this process by one uninterrupted fit() of the config
    the experiment folder records (base_config.yaml + space.json's fixed keys + params.json), with
    the trial's one thread -- independent of Ray, Tune and run_trial."""
    import torch
    import yaml

    from hscmae.config import Config, config_from_dict
    from hscmae.data import load_data
    from hscmae.train import fit

    base = yaml.safe_load(open(os.path.join(exp, "base_config.yaml")))
    fixed = json.load(open(os.path.join(exp, "space.json")))["fixed"]
    params = json.load(open(os.path.join(trial_dirs(exp)[trial], "params.json")))
    cfg = config_from_dict({**base, **fixed, **{k: v for k, v in params.items() if k in Config.__dataclass_fields__},
                            "threads": 1})
    threads = torch.get_num_threads()
    try:
        return fit(cfg, load_data(cfg.data, cfg.split_seed), log=None)
    finally:
        torch.set_num_threads(threads)


def test_driver_killed_twice_and_a_corrupt_checkpoint_then_resume(tmp_path, ray_tmpdir):
    """Kill 1 lands while the first two trials are in mid-run; kill 2 as soon as a new checkpoint
    directory appears after a trial finished (a checkpoint being persisted, a new trial starting).
    tests/test_tune.py kills once more, between trials of an 8-trial search."""
    exp, n, max_ep = str(tmp_path / "k"), 4, 10
    cmd = tune_cmd(tmp_path, "k", "--num-samples", str(n), "--max-epochs", str(max_ep), "--grace-period",
                   str(max_ep), "--checkpoint-every", "1")
    env = {**ENV, "RAY_TMPDIR": ray_tmpdir}
    hold = Hold(tmp_path / "hold", 3)
    p, t_kill = None, {}
    try:
        # 1. SIGKILL during the first trials: held after epoch 3 (past a checkpoint and short of
        # the end; the driver has its result), none finished
        p = start(cmd, tmp_path / "1.log", {**env, **hold.env()})
        # (reported epochs, not checkpoints: result.json lags the checkpoints a trial writes)
        wait_for(lambda: any(epochs(exp).get(t, [])[-1:] == [3] for t in hold.held()), p, 180,
                 "a first trial held after epoch 3")
        kill_driver(p)
        assert max(progress(exp).values()) <= 3
        before1 = result_texts(exp)
        eps1 = epochs(exp)
        # corrupt every checkpoint of one unfinished trial: whichever Tune restores is bad
        victim = max((t for t, e in eps1.items() if e), key=lambda t: progress(exp)[t])
        for f in glob.glob(os.path.join(trial_dirs(exp)[victim], "checkpoint_*", "checkpoint.pt")):
            raw = open(f, "rb").read()
            open(f, "wb").write(raw[: len(raw) // 2])

        # 2. resume; SIGKILL as soon as a new checkpoint directory appears after a trial finished
        t_kill[1] = time.time()
        p = start(cmd + ["--resume"], tmp_path / "2.log", env)
        reported = sum(map(len, eps1.values()))
        t_resumed = wait_for(lambda: sum(map(len, epochs(exp).values())) > reported and time.time(), p, 120,
                             "a new epoch after the resume")
        wait_for(lambda: any(e and e[-1] == max_ep for e in epochs(exp).values()), p, 180, "a finished trial")
        seen = set(glob.glob(os.path.join(exp, "run_trial_*", "checkpoint_*")))
        wait_for(lambda: set(glob.glob(os.path.join(exp, "run_trial_*", "checkpoint_*"))) - seen, p, 120,
                 "a new checkpoint", poll=0.01)
        kill_driver(p)
        before2 = result_texts(exp)
        eps2 = epochs(exp)
        done2 = {t for t, e in eps2.items() if e and e[-1] == max_ep and t != victim}
        assert done2

        # 3. resume to the end
        t_kill[2] = time.time()
        p = start(cmd + ["--resume"], tmp_path / "3.log", env)
        rc, out = finish(p, tmp_path / "3.log")
        t_end = time.time()
    finally:
        cleanup(p)
    assert rc == 0, out[-3000:]
    assert "resuming" in out
    # A kill right after a new trial's first checkpoint, before the driver recorded that trial (no
    # params.json or result.json yet), leaves its folder behind: Tune's restored state does not list
    # it, and the study runs the trial again under a new id (RELIABILITY.md). Such a folder may hold
    # checkpoints only; report.py reads no folder without params.json or result.json.
    orphans = {t for t, d in trial_dirs(exp).items()
               if not any(os.path.exists(os.path.join(d, f)) for f in ("params.json", "result.json"))}
    for t in orphans:
        assert all(f.startswith("checkpoint_") for f in os.listdir(trial_dirs(exp)[t])), (t, os.listdir(trial_dirs(exp)[t]))
    final = {t: e for t, e in epochs(exp).items() if t not in orphans}
    assert len(final) == n, f"expected exactly {n} trials, got {sorted(final)} (and orphan folders {sorted(orphans)})"
    summary = out[out.rfind(f"[hscmae] {n} trials"):].splitlines()[0]
    assert "1 errored" in summary and f"{n - 1} ran all" in summary, summary
    # the corrupted trial: a clear error naming its checkpoint; never trained again
    err = open(os.path.join(trial_dirs(exp)[victim], "error.txt")).read()
    assert "CheckpointError" in err and "Tune checkpoint" in err and "checkpoint_0000" in err, err[-2000:]
    assert "hscmae-resume-" not in err.splitlines()[-1]
    assert open(os.path.join(trial_dirs(exp)[victim], "result.json")).read() == before1[victim]
    # finished before the second kill: kept exactly as they were
    for t in done2:
        assert open(os.path.join(trial_dirs(exp)[t], "result.json")).read() == before2[t], t
    # everything else finished, continuing from checkpoints after each kill. Tune's experiment
    # state is saved every TUNE_GLOBAL_CHECKPOINT_S (1 s here), so a restored trial may resume from
    # a checkpoint a little older than its last report and report those epochs again; it must not
    # start again from epoch 1 (allowed only for a trial killed in its first epoch or two)
    redone = 0
    for t, e in final.items():
        if t == victim:
            continue
        assert e[-1] == max_ep, (t, e)
        for before in (eps1.get(t, []), eps2.get(t, [])):
            new = e[len(before):]
            if before and new:
                assert new[0] <= before[-1] + 1 and (new[0] > 1 or len(before) <= 2), f"trial {t}: {before} then {new}"
                redone += before[-1] + 1 - new[0]
        assert sorted(set(e)) == list(range(1, max_ep + 1)), (t, e)
    # and the scores are those of an uninterrupted run: killed, resumed, retried, nothing changed
    for t in final:
        if t != victim:
            last, ref = results(exp)[t][-1], uninterrupted_scores(exp, t)
            assert (last["val_map"], last["test_map"]) == (ref["val_map"], ref["test_map"]), (t, last, ref)
    # the stored Optuna study (the journal in the folder, read back by a fresh Optuna): exactly the
    # n trials, none twice, none left RUNNING; the corrupted trial FAIL, the others COMPLETE with
    # the val_map of every epoch they reported (an epoch reported twice after a kill: same value)
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    st = optuna.load_study(study_name="k", storage=JournalStorage(JournalFileBackend(
        os.path.join(exp, "optuna-study.journal"))))
    assert len(st.trials) == n, [(t.number, t.state.name, t.user_attrs) for t in st.trials]
    by_id = {t.user_attrs["tune_trial_id"]: t for t in st.trials}
    assert set(by_id) == set(final)
    for t, ot in by_id.items():
        assert ot.user_attrs["tune_trial_folder"] == os.path.basename(trial_dirs(exp)[t])
        if t == victim:
            assert ot.state.name == "FAIL", ot
            continue
        per_epoch = {}
        for r in results(exp)[t]:
            assert per_epoch.setdefault(r["epoch"], r["val_map"]) == r["val_map"], (t, r["epoch"])
        assert ot.state.name == "COMPLETE" and ot.value == results(exp)[t][-1]["val_map"], ot
        assert ot.intermediate_values == per_epoch, (t, ot.intermediate_values, per_epoch)
    print(f"[measured] trials {n}; epochs before kill 1 {eps1}, before kill 2 {eps2}; victim {victim}; "
          f"relaunch to first new epoch {t_resumed - t_kill[1]:.1f}s, "
          f"epochs reported twice {redone}, resume 2 + search to kill {t_kill[2] - t_kill[1]:.0f}s, resume 3 to the end {t_end - t_kill[2]:.0f}s")


# ------------------------------------------------------------------------------------------------
# A worker node lost from a two-node cluster
# ------------------------------------------------------------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_worker_node_lost_mid_search_finishes_on_the_head(tmp_path, ray_tmpdir):
    """Also covers what tests/test_tune.py's two-node test does (trials on both nodes)."""
    port = _free_port()
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    # the GCS declares a silent node dead after ~2 s instead of ~30 s; `ray start` records its
    # address in the private RAY_TMPDIR, not in the machine's /tmp/ray
    # every trial stops after epoch 3 until released (its env goes to the nodes: trials inherit theirs)
    hold = Hold(tmp_path / "hold", 3)
    env = {**ENV, "RAY_TMPDIR": ray_tmpdir, "RAY_health_check_period_ms": "1000",
           "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "2",
           "RAY_health_check_initial_delay_ms": "0", **hold.env()}
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    exp, max_ep, p = str(tmp_path / "n"), 10, None
    try:
        subprocess.run([ray, "start", "--head", "--port", str(port), "--include-dashboard=false", *common],
                       check=True, capture_output=True, timeout=120, env=env)
        subprocess.run([ray, "start", "--address", f"127.0.0.1:{port}", *common],
                       check=True, capture_output=True, timeout=120, env=env)
        raylets = [q for q in P.cluster_processes(port) if "/raylet/raylet " in P.cmdline(q)]
        assert len(raylets) == 2, raylets
        node_of = {q: next(a.split("=", 1)[1] for a in P.cmdline(q).split() if a.startswith("--node_id="))
                   for q in raylets}
        head = next(node_of[q] for q in raylets if "node:__internal_head__" in P.cmdline(q))
        worker_raylet = next(q for q in raylets if node_of[q] != head)
        worker = node_of[worker_raylet]

        p = start(tune_cmd(tmp_path, "n", "--num-samples", "3", "--max-epochs", str(max_ep), "--grace-period",
                           str(max_ep), "--checkpoint-every", "1", "--address", f"127.0.0.1:{port}"),
                  tmp_path / "n.log", env)

        def held_on_worker():  # mid-run: its epoch-3 result and checkpoint with the driver
            res, prog = results(exp), progress(exp)
            for t in hold.held():
                if res.get(t) and res[t][0]["node_id"] == worker and res[t][-1]["epoch"] == 3 and prog[t] == 3:
                    return t
        victim = wait_for(held_on_worker, p, 180, "a trial held after epoch 3 on the worker node")
        before = epochs(exp)[victim]
        # the node goes away: its raylet, everything under it, and its log monitor
        sock = next(a.split("=", 1)[1] for a in P.cmdline(worker_raylet).split()
                    if a.startswith("--raylet_socket_name="))
        node = P.descendants({worker_raylet}) | {q for q in P.pids() if f"{sock} " in P.cmdline(q) + " "}
        for q in node:
            os.kill(q, signal.SIGKILL)
        hold.release()
        rc, out = finish(p, tmp_path / "n.log")
    finally:
        cleanup(p)
        P.kill_all(P.cluster_processes(port))
    assert rc == 0, out[-3000:]
    res = results(exp)
    assert len(res) == 3
    assert "0 errored" in out[out.rfind("[hscmae] 3 trials"):].splitlines()[0]
    e = [r["epoch"] for r in res[victim]]
    assert e[-1] == max_ep and e.count(1) == 1 and e == sorted(e), f"{before} -> {e}"
    after = [r["node_id"] for r in res[victim][len(before):]]
    assert after and after[-1] == head, "the lost node's trial did not move to the head node"
    assert {r["node_id"] for rs in res.values() for r in rs} == {head, worker}
    print(f"[measured] node lost after epochs {before}; the trial went on on the head from epoch "
          f"{e[len(before)]} to {e[-1]}")
    assert os.path.exists(os.path.join(trial_dirs(exp)[victim], "error.txt"))  # the failure Tune retried
