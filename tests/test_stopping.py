"""`tune_main.py --stop-after N [--min-delta D]` and `--time-budget T` (harness/stopping.py): the
plateau rule against hand-computed sequences, the stopper fed results and trial ends by hand (no
Ray cluster), the duration parser and the bad-flag errors, and one tiny search that stops on a
plateau at a count known in advance, says it is already stopped on a plain --resume, and goes on
with a larger --stop-after."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

import tune_main
from conftest import ROOT, tune_main_error
from harness import stopping

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "1", "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------------
# The rule, by hand
# ------------------------------------------------------------------------------------------------
# best so far:       0.30 0.50 0.50 0.52 0.52 0.52 0.60
SEQ = [0.30, 0.50, 0.40, 0.52, 0.51, 0.10, 0.60]


@pytest.mark.parametrize("n,d,first_stop", [
    # first k with k > n and best_k - best_(k-n) <= d (1-based k; None: never within SEQ)
    (1, 0.0, 3),      # k=3: best 0.50 - best_2 0.50 = 0
    (2, 0.0, 6),      # k=3: 0.50-0.30 > 0; k=4: 0.52-0.50 > 0; k=5: 0.52-0.50 > 0; k=6: 0.52-0.52 = 0
    (2, 0.05, 4),     # k=4: 0.52 - best_2 0.50 = 0.02 <= 0.05
    (3, 0.0, None),   # k=4: 0.52-0.30; k=5: 0.52-0.50; k=6: 0.52-0.50; k=7: 0.60-0.52: all > 0
    (3, 0.02, 5),     # k=5: 0.52 - best_2 0.50 = 0.02 <= 0.02 (not *more than* D)
    (6, 1.0, 7),      # any change is within D = 1: stops at the first k > n
])
def test_plateau_rule_against_a_hand_computed_sequence(n, d, first_stop):
    got = next((k for k in range(1, len(SEQ) + 1) if stopping.plateaued(SEQ[:k], n, d)), None)
    assert got == first_stop


def test_nan_or_missing_scores_improve_nothing():
    assert stopping.plateaued([0.5, float("nan"), None], 2, 0.0)
    assert not stopping.plateaued([float("nan"), 0.5], 1, 0.0)  # -inf -> 0.5 is an improvement


def test_smallest_continuing_stop_after():
    vals = [0.3, 0.5, 0.5, 0.5, 0.5]
    assert stopping.smallest_continuing(vals, 0.0) == 4  # 0.5 - best_1 0.3 > 0
    assert not stopping.plateaued(vals, 4, 0.0) and stopping.plateaued(vals, 3, 0.0)


# ------------------------------------------------------------------------------------------------
# The stopper, fed by hand
# ------------------------------------------------------------------------------------------------
def _trial(tid, val, status="RUNNING", epoch=2):
    return SimpleNamespace(trial_id=tid, last_result={"val_map": val, "epoch": epoch}, status=status)


def test_stopper_stops_after_the_nth_finished_trial_without_improvement(tmp_path):
    exp = str(tmp_path / "e")
    os.makedirs(exp)
    s = stopping.make(exp, {"stop_after": 2, "min_delta": 0.0}, fresh=True)
    a, b, c, d = _trial("a", 0.4), _trial("b", 0.6), _trial("c", 0.55), _trial("d", 0.6)
    running = _trial("r", 0.1)
    for t in (a, b, c):
        assert s(t.trial_id, t.last_result) is False  # never one trial alone
        s.on_trial_complete(0, [a, b, c, d, running], t)
        t.status = "TERMINATED"  # as Tune sets it, after the callbacks
        assert not s.stop_all()
    s.on_trial_complete(0, [a, b, c, d, running], d)  # 0.6 is not more than 0.6: 2 without improvement
    assert s.stop_all() and s.reason == "plateau"
    assert s.line == "[hscmae] stopped: no improvement of the best val_map by more than 0 in the last 2 finished trials"
    marker = json.load(open(os.path.join(exp, stopping.MARKER)))
    assert marker["at_trials"] == 4 and marker["reason"] == "plateau" and marker["line"] == s.line
    assert set(marker["running_stopped"]) == {"r"}  # a, b, c ended; d is the one ending now
    s.on_trial_complete(0, [a, b, c, d, running], running)  # ended by the stop: not a finished trial
    state = json.load(open(os.path.join(exp, stopping.STATE)))
    assert [t for t, _ in state["finished"]] == ["a", "b", "c", "d"] and state["cut"] == ["r"]
    assert stopping.final_lines(s)[-1] == s.line and "1 trial(s) still running" in stopping.final_lines(s)[0]


def test_time_budget_adds_up_over_runs_and_stops_like_ctrl_c(tmp_path, monkeypatch):
    exp = str(tmp_path / "e")
    os.makedirs(exp)
    clock = [1000.0]
    monkeypatch.setattr(stopping.time, "time", lambda: clock[0])
    s = stopping.make(exp, {"time_budget_s": 100.0, "time_budget": "100s"}, fresh=True)
    clock[0] += 60
    assert not s.stop_all()
    s.on_experiment_end([])  # run 1 ends (e.g. Ctrl-C) after 60 s
    assert json.load(open(os.path.join(exp, stopping.STATE)))["time_used_s"] == 60
    s2 = stopping.make(exp, {"time_budget_s": 100.0, "time_budget": "100s"})  # the resume: 40 s left
    assert s2.already_stopped() is None
    clock[0] += 39
    assert not s2.stop_all() and s2.reason is None
    clock[0] += 2
    called = []
    monkeypatch.setattr("harness.interrupt._tune_stop_handler", lambda: lambda sig, frame: called.append(sig))
    assert s2.stop_all() is False and called  # Tune's own stop event: trials stay RUNNING, resumable
    assert s2.reason == "time_budget" and s2.line == "[hscmae] stopped: time budget 100s used"
    marker = json.load(open(os.path.join(exp, stopping.MARKER)))
    assert marker["time_used_s"] == 101 and marker["reason"] == "time_budget"
    s2.on_experiment_end([])
    again = stopping.make(exp, {"time_budget_s": 100.0, "time_budget": "100s"})
    assert "already stopped: time budget 100s used" in again.already_stopped()
    assert stopping.make(exp, {"time_budget_s": 200.0, "time_budget": "200s"}).already_stopped() is None
    assert "time budget `--time-budget 100s` was used" in stopping.summary_lines(exp)[0]


def test_state_is_rebuilt_from_tunes_saved_trials(tmp_path, monkeypatch):
    """STATE's finish order, minus a trial Tune's saved state does not have as TERMINATED (Tune runs
    it again), plus a TERMINATED one STATE lacks, with Tune's last val_map."""
    exp = tmp_path / "e"
    exp.mkdir()
    (exp / stopping.STATE).write_text(json.dumps({"time_used_s": 5, "finished": [["a", 0.5], ["b", 0.7]], "cut": []}))
    saved = [{"trial_id": "a", "status": "TERMINATED", "val_map": 0.5},
             {"trial_id": "b", "status": "RUNNING", "val_map": 0.6},
             {"trial_id": "c", "status": "TERMINATED", "val_map": 0.4},
             {"trial_id": "d", "status": "ERROR", "val_map": 0.9}]
    monkeypatch.setattr("harness.tune_state.read_trials", lambda e: saved)
    st = stopping.load_state(str(exp))
    assert st["finished"] == [("a", 0.5), ("c", 0.4)] and st["time_used_s"] == 5


def test_replace_on_restore_swaps_the_pickled_stopper(tmp_path):
    """tuner.pkl brings back the first run's stopper; Ray 2.60's Tuner keeps its RunConfig in
    `_local_tuner` (a private member this relies on)."""
    from ray.tune import Callback, RunConfig

    exp = str(tmp_path)
    old = stopping.make(exp, {"stop_after": 2}, fresh=True)
    other = Callback()
    rc = RunConfig(stop=old, callbacks=[other, old])
    tuner = SimpleNamespace(_local_tuner=SimpleNamespace(get_run_config=lambda: rc))
    new = stopping.make(exp, {"stop_after": 5}, fresh=True)
    stopping.replace_on_restore(tuner, new)
    assert rc.stop is new and rc.callbacks[0] is other and rc.callbacks[1] is new
    stopping.replace_on_restore(tuner, None)  # --stop-after 0 on resume: no stopper at all
    assert rc.stop is None and rc.callbacks[0] is other and not isinstance(rc.callbacks[1], stopping._SearchStopper)
    import ray.tune

    assert "_local_tuner" in ray.tune.Tuner.__annotations__
    from ray.tune.search import SearchGenerator

    gen = SearchGenerator.__new__(SearchGenerator)
    gen._counter, gen._total_samples, gen._finished, gen._experiment = 0, 1, True, None
    assert gen.get_state()["finished"] is True  # what harness.study_search.Generator.set_state resets


def test_a_pickled_stopper_comes_back_as_this_runs(tmp_path):
    """Tune restores its stopper from tuner.pkl and from the experiment state's runner_data: either
    copy must become the stopper this run made (its settings, its state), or an inert one."""
    import pickle

    first = stopping.make(str(tmp_path), {"stop_after": 2}, fresh=True)
    blob = pickle.dumps(first)
    now = stopping.make(str(tmp_path), {"stop_after": 7}, fresh=True)
    assert pickle.loads(blob) is now and now.stop_after == 7
    stopping._LIVE = None
    inert = pickle.loads(blob)
    inert.on_trial_complete(0, [], _trial("x", 0.5))
    assert not inert.stop_all() and inert.exp is None


# ------------------------------------------------------------------------------------------------
# The flags
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("1.5h", 5400), (".5m", 30)])
def test_parse_duration(text, seconds):
    assert stopping.parse_duration(text) == seconds


@pytest.mark.parametrize("flags,says", [
    (["--time-budget", "2"], "--time-budget 2: expected a duration"),
    (["--time-budget", "2x"], "--time-budget 2x:"),
    (["--time-budget", "0h"], "--time-budget 0h:"),
    (["--time-budget=-1h"], "--time-budget -1h:"),
    (["--time-budget", "1h30m"], "--time-budget 1h30m:"),
    (["--stop-after", "x"], "--stop-after x: expected a whole number"),
    (["--stop-after", "-1"], "--stop-after -1:"),
    (["--stop-after", "2", "--min-delta", "-0.1"], "--min-delta -0.1:"),
    (["--stop-after", "2", "--min-delta", "nan"], "--min-delta nan:"),
])
def test_bad_values_are_one_error_line_before_ray(tmp_path, capsys, flags, says):
    msg = tune_main_error(capsys, ["--space", "smoke", "--storage", str(tmp_path), *flags])
    assert msg.startswith(f"error: {says}"), msg
    assert not os.listdir(tmp_path)


def test_min_delta_without_stop_after_is_refused(tmp_path, capsys):
    msg = tune_main_error(capsys, ["--space", "smoke", "--storage", str(tmp_path), "--min-delta", "0.01"])
    assert "--min-delta 0.01: needs --stop-after" in msg


# ------------------------------------------------------------------------------------------------
# A tiny search
# ------------------------------------------------------------------------------------------------
def _states(exp) -> dict:
    from harness.tune_state import read_trials

    return {t["trial_id"]: t for t in read_trials(str(exp))}


@pytest.mark.slow
def test_stop_after_stops_at_a_known_count_and_a_larger_one_continues(tmp_path, capsys):
    """--min-delta 1: no val_map can improve by more than 1, so with one trial at a time the search
    stops right after its (N+1)-th finished trial, whatever the scores."""
    base = [sys.executable, os.path.join(ROOT, "tune_main.py"), "--space", "smoke", "--storage", str(tmp_path),
            "--name", "p", "--num-samples", "8", "--max-concurrent", "1", "--max-epochs", "2"]
    r = subprocess.run([*base, "--stop-after", "2", "--min-delta", "1"], capture_output=True, text=True,
                       timeout=300, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    line = "[hscmae] stopped: no improvement of the best val_map by more than 1 in the last 2 finished trials"
    assert r.stdout.strip().splitlines()[-1] == line, r.stdout[-2000:]
    exp = tmp_path / "p"
    states = _states(exp)
    assert [t["status"] for t in states.values()] == ["TERMINATED"] * 3, states
    marker = json.loads((exp / stopping.MARKER).read_text())
    assert marker["at_trials"] == 3 and marker["line"] == line and marker["running_stopped"] == []
    rec = json.loads((exp / "study.json").read_text())
    assert (rec["stop_after"], rec["min_delta"]) == (2, 1.0)
    used1 = json.loads((exp / stopping.STATE).read_text())["time_used_s"]
    assert used1 > 0

    # a plain resume: already stopped, says how to go on, starts nothing
    rc = tune_main.main(["--space", "smoke", "--storage", str(tmp_path), "--name", "p", "--max-concurrent", "1",
                         "--max-epochs", "2", "--resume"])
    out = capsys.readouterr().out
    assert rc == 0 and "already stopped: no improvement of the best val_map by more than 1 in the last 2 of its 3 " \
                       "finished trials" in out and "--stop-after 3" in out, out
    import ray

    assert not ray.is_initialized()

    # a larger N goes on: one more finished trial, then the plateau again
    r = subprocess.run([*base, "--resume", "--stop-after", "3"], capture_output=True, text=True, timeout=300,
                       env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == line.replace("last 2", "last 3"), r.stdout[-2000:]
    states = _states(exp)
    assert [t["status"] for t in states.values()] == ["TERMINATED"] * 4, states
    assert json.loads((exp / stopping.MARKER).read_text())["at_trials"] == 4
    assert json.loads((exp / "study.json").read_text())["stop_after"] == 3
    assert json.loads((exp / stopping.STATE).read_text())["time_used_s"] > used1  # summed over the runs

    # report.py's summary says it
    import report

    assert report.main([str(exp), "--out", str(tmp_path / "rep")]) == 0
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "The search was stopped early: no improvement of the best val_map by more than 1 in the last 3" in summary


def test_a_stop_asked_of_an_experiment_begun_without_a_stopper_is_refused(tmp_path):
    """Such an experiment's saved Tune state restores Tune's no-op stopper over ours."""
    with pytest.raises(stopping.UsageError, match="begun without a stopper"):
        stopping.make(str(tmp_path), {"stop_after": 2})
    assert stopping.make(str(tmp_path), {}) is not None  # resumed as it was: only the bookkeeping


@pytest.mark.slow
def test_time_budget_stops_like_ctrl_c_and_a_larger_one_finishes_the_same_trials(tmp_path, capsys):
    """The clock starts before Ray does, so 1s is used before any trial can end (Ray's start-up
    alone is longer); what is asserted holds wherever in the search the stop lands: exit 0 and the
    line, nothing TERMINATED for good by it, and a resume with more time ends exactly the trials
    asked for, each full-length."""
    base = [sys.executable, os.path.join(ROOT, "tune_main.py"), "--space", "smoke", "--storage", str(tmp_path),
            "--name", "t", "--num-samples", "2", "--max-concurrent", "2", "--max-epochs", "2"]
    r = subprocess.run([*base, "--time-budget", "1s"], capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[hscmae] stopped: time budget 1s used", r.stdout[-2000:]
    assert "Tuner.restore" not in r.stdout + r.stderr  # Tune's own resume hint is not ours
    exp = tmp_path / "t"
    marker = json.loads((exp / stopping.MARKER).read_text())
    assert marker["reason"] == "time_budget" and marker["time_used_s"] >= 1
    assert all(t["status"] != "TERMINATED" or t["last_epoch"] == 2 for t in _states(exp).values())
    used1 = json.loads((exp / stopping.STATE).read_text())["time_used_s"]

    rc = tune_main.main(["--space", "smoke", "--storage", str(tmp_path), "--name", "t", "--max-epochs", "2",
                         "--resume"])
    out = capsys.readouterr().out
    assert rc == 0 and "already stopped: time budget 1s used" in out and "--time-budget <more than 1s>" in out, out

    r = subprocess.run([*base, "--resume", "--time-budget", "30m"], capture_output=True, text=True, timeout=300,
                       env=ENV, cwd=ROOT)
    assert r.returncode == 0 and "stopped:" not in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    states = _states(exp)
    assert [(t["status"], t["last_epoch"]) for t in states.values()] == [("TERMINATED", 2)] * 2, states
    assert not (exp / stopping.MARKER).exists()
    assert json.loads((exp / stopping.STATE).read_text())["time_used_s"] > used1
    assert json.loads((exp / "study.json").read_text())["time_budget"] == "30m"
