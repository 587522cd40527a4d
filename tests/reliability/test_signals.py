"""Interrupting a real search (smoke space, subprocesses, real signals) three times, each time
resuming with the command the driver printed:

1. Ctrl-C once the first trials have started, before any reported an epoch, as a terminal sends it
   (SIGINT to the driver's process group);
2. SIGTERM to the driver mid-trial (as `kill`, a job scheduler's stop or Kubernetes sends it);
3. Ctrl-C mid-trial after the other trials finished, and a second Ctrl-C while Tune is saving;
4. the printed command again, to the end;
5. `report.py --ablate` on it, Ctrl-C once a retrain has finished: exit 130, what finished kept.

No step waits for a moment in time: each interrupted run is started with harness/trainable.py's
test-only HSCMAE_TEST_HOLD hook (conftest.Hold), so its trials stop at a known epoch and the signal
is sent in a state that stays put until the run is interrupted (the ablation's retrains are held
likewise by a sitecustomize hook: one finishes, the others wait).

Each interrupted run must exit 130 / 143 within a bounded time, with no Python traceback and no
native "*** SIGTERM received" dump on stderr, and print one status block whose counts match the
trial states in Tune's saved experiment state (read here independently) and the command that
resumes; the resumed search ends with exactly --num-samples trials, every finished trial's
result.json byte-identical. The figures go to RELIABILITY.md (`pytest -s`: `[measured]` lines).

Every process a test starts is found by session id and killed by pid (_procs.py).
"""
import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _procs as P  # noqa: E402

from conftest import ROOT, SEARCH_ENV as ENV, Hold  # noqa: E402
sys.path.insert(0, ROOT)
from reporting.experiment import load_experiment  # noqa: E402
N, EPOCHS = 3, 4  # trials, epochs per trial (--max-concurrent 2: the third trial waits for a free slot)
EXIT_BOUND_S = 90  # signal to exit; ~10 s measured on the loaded 2-core machine, generous for CI
pytestmark = pytest.mark.slow

BLOCK = re.compile(r"\[hscmae\] interrupted \((SIGINT|SIGTERM)\) after ([\d.]+) min: (\d+) of (\d+) trials "
                   r"finished \((\d+) stopped early by ASHA, (\d+) errored\), (\d+) were running, (\d+) not "
                   r"started; nothing is lost\n\[hscmae\] resume with: (.+)\n")


def tune_cmd(storage, name):
    return [sys.executable, os.path.join(ROOT, "tune_main.py"), "--space", "smoke", "--storage", str(storage),
            "--name", name, "--num-samples", str(N), "--max-concurrent", "2", "--max-epochs", str(EPOCHS),
            "--checkpoint-every", "1"]


class Run:
    """One driver in its own session (its process group = what a terminal's Ctrl-C reaches)."""

    def __init__(self, cmd, tmp, tag, ray_tmpdir, env=None):
        self.t0 = time.time()
        self.out, self.err = tmp / f"{tag}.out", tmp / f"{tag}.err"
        self.p = subprocess.Popen(cmd, stdout=open(self.out, "w"), stderr=open(self.err, "w"),
                                  env={**ENV, "RAY_TMPDIR": ray_tmpdir, **(env or {})}, cwd=ROOT,
                                  start_new_session=True)

    def wait_for(self, cond, timeout, what):
        end = time.time() + timeout
        while time.time() < end:
            v = cond()
            if v:
                return v
            if self.p.poll() is not None:
                pytest.fail(f"the search exited (rc {self.p.returncode}) before {what}:\n{self.tail()}")
            time.sleep(0.05)
        pytest.fail(f"timed out after {timeout}s waiting for {what}:\n{self.tail()}")

    def wait(self, timeout):
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the driver did not exit within {timeout}s:\n{self.tail()}")
        return self.p.returncode

    def tail(self):
        return (open(self.out).read()[-2500:] + "\n--- stderr ---\n" + open(self.err).read()[-2500:])

    def cleanup(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
        P.kill_all(set(P.in_session(self.p.pid)), grace=3)


def trial_dirs(exp) -> dict[str, str]:
    return {os.path.basename(d).split("_")[2]: d for d in glob.glob(os.path.join(exp, "run_trial_*"))}


def result_lines(exp) -> dict[str, list[dict]]:
    out = {}
    for t, d in trial_dirs(exp).items():
        f = os.path.join(d, "result.json")
        lines = open(f).read().split("\n")[:-1] if os.path.exists(f) else []  # a last partial line is skipped
        out[t] = [json.loads(x) for x in lines if x.strip()]
    return out


def tune_state(exp) -> dict[str, tuple[str, int]] | None:
    """{trial_id: (status, last epoch)} as Tune saved it (None while unreadable: Tune rewrites it)."""
    files = sorted(glob.glob(os.path.join(exp, "experiment_state-*.json")))
    if not files:
        return None
    try:
        state = json.load(open(files[-1]))
    except (OSError, ValueError):
        return None
    out = {}
    for t, m in state["trial_data"]:
        t, m = json.loads(t), json.loads(m)
        out[t["trial_id"]] = (t["status"], (m.get("last_result") or {}).get("epoch", 0))
    return out


def interrupt(run, sigs, target_group):
    """Send sigs (0.3 s apart) to the driver (or its process group); returns seconds to exit."""
    t0 = time.time()
    print(f"[measured] {os.path.basename(run.out)}: signal {t0 - run.t0:.0f}s after the start")
    for i, sig in enumerate(sigs):
        if i:
            time.sleep(0.3)
        if run.p.poll() is None:
            (os.killpg if target_group else os.kill)(run.p.pid, sig)
    run.wait(EXIT_BOUND_S)
    return time.time() - t0


def check_interrupted(run, exp, sig, rc, seconds):
    """Exit code, a clean stderr, one status block whose counts are Tune's saved state; returns the
    resume command."""
    out, err = open(run.out).read(), open(run.err).read()
    name = signal.Signals(sig).name
    assert rc == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], run.tail()
    assert seconds < EXIT_BOUND_S
    assert "Traceback" not in err and "Traceback" not in out, run.tail()
    assert "SIGTERM received" not in err and "PC: @" not in err, run.tail()
    assert "Tuner.restore(" not in err + out, "Tune's Python-API resume line should be replaced by our command"
    blocks = BLOCK.findall(out)
    assert len(blocks) == 1, f"expected one status block:\n{run.tail()}"
    got_sig, _, finished, total, early, errored, running, not_started, command = blocks[0]
    state = tune_state(exp)
    assert state is not None, "no readable experiment state after the interruption"
    statuses = [s for s, _ in state.values()]
    want_early = sum(s == "TERMINATED" and e < EPOCHS for s, e in state.values())
    want_finished = statuses.count("TERMINATED") + statuses.count("ERROR")
    want_running = sum(s in ("RUNNING", "PAUSED") for s in statuses)
    assert (got_sig, int(total), int(finished), int(early), int(errored), int(running), int(not_started)) == \
        (name, N, want_finished, want_early, statuses.count("ERROR"), want_running,
         N - want_finished - want_running), (blocks[0], state)
    marker = json.load(open(os.path.join(exp, "interrupted.json")))
    assert marker["signal"] == name and marker["resume"] == command
    return shlex.split(command), state


def check_resumed_to_the_end(run, exp, finished_before: dict[str, str]):
    rc = run.wait(300)
    assert rc == 0, run.tail()
    state = tune_state(exp)
    assert len(state) == N and len(trial_dirs(exp)) == N, (state, sorted(trial_dirs(exp)))
    assert all(s == "TERMINATED" for s, _ in state.values()), state
    for t, text in finished_before.items():
        assert open(os.path.join(trial_dirs(exp)[t], "result.json")).read() == text, f"trial {t} changed"
    assert not os.path.exists(os.path.join(exp, "interrupted.json")), "the marker outlived the resume"
    assert f"[hscmae] {N} trials" in open(run.out).read()


def finished_texts(exp, state) -> dict[str, str]:
    return {t: open(os.path.join(trial_dirs(exp)[t], "result.json")).read()
            for t, (s, _) in state.items() if s in ("TERMINATED", "ERROR") and t in trial_dirs(exp)}


ABLATION_HOLD = """
# Test hook, loaded by every Python process of the test's report.py --ablate (driver, Ray workers)
# through PYTHONPATH: the first retrain to start runs; every other one waits (until the Ctrl-C
# stops it), so "one retrain finished, the others not" is a state the test waits for, not a moment.
import os

if os.environ.get("HSCMAE_TEST_ABLATION_GATE"):
    import time

    from hscmae import ablation

    _train_one = ablation.train_one

    def train_one(*args, **kwargs):
        try:
            os.close(os.open(os.environ["HSCMAE_TEST_ABLATION_GATE"], os.O_CREAT | os.O_EXCL))
        except FileExistsError:  # not the first: wait to be stopped
            while True:
                time.sleep(0.5)
        return _train_one(*args, **kwargs)

    ablation.train_one = train_one
"""


def test_sigint_before_epochs_sigterm_mid_trial_sigint_twice_each_resumed_with_the_printed_command(tmp_path, ray_tmpdir):
    """One search, interrupted three times (each a fresh driver: four Ray start-ups in all, the
    slowest part of this test), resumed each time with the command the last run printed. Each
    interrupted run holds its trials at a known epoch (conftest.Hold), never released: the signal
    stops them there."""
    exp = str(tmp_path / "s")
    runs = []
    try:
        # 1. Ctrl-C (SIGINT to the process group, as a terminal sends it) once both concurrent
        # trials have started, held before their first epoch: nothing finished or stopped early
        hold = Hold(tmp_path / "hold1", 0)
        runs.append(run := Run(tune_cmd(tmp_path, "s"), tmp_path, "r1", ray_tmpdir, hold.env()))

        def started_none_reported():
            st = tune_state(exp)
            return len(hold.held()) == 2 and st and sorted(st.values()) == [("RUNNING", 0)] * 2
        run.wait_for(started_none_reported, 240, "two trials started and held before their first epoch")
        seconds = interrupt(run, [signal.SIGINT], target_group=True)
        command, state = check_interrupted(run, exp, signal.SIGINT, run.p.returncode, seconds)
        assert command[-1] == "--resume" and command[:-1] == tune_cmd(tmp_path, "s")
        assert all(s not in ("TERMINATED", "ERROR") and e == 0 for s, e in state.values()), state
        assert " 0 of 3 trials finished (0 stopped early by ASHA, 0 errored)" in open(run.out).read(), run.tail()
        print(f"[measured] SIGINT before any epoch: rc {run.p.returncode}, exit {seconds:.1f}s after the signal; "
              f"state {sorted(s for s, _ in state.values())}")
        run.cleanup()

        # 2. the printed command; SIGTERM to the driver alone (as `kill`, a job scheduler or
        # Kubernetes sends it) with both trials mid-way: held after epoch 1 (before ASHA's first
        # rung at 2, so no trial is stopped meanwhile), its result and checkpoint in Tune's state
        hold = Hold(tmp_path / "hold2", 1)
        runs.append(run := Run(command, tmp_path, "r2", ray_tmpdir, hold.env()))

        def both_mid_trial():
            st, res = tune_state(exp), result_lines(exp)
            return (len(held := hold.held()) == 2 and st and sorted(st.values()) == [("RUNNING", 1)] * 2
                    and all(res.get(t) and res[t][-1]["epoch"] == 1 for t in held))
        run.wait_for(both_mid_trial, 240, "both trials held mid-way, after epoch 1")
        seconds = interrupt(run, [signal.SIGTERM], target_group=False)
        command2, state = check_interrupted(run, exp, signal.SIGTERM, run.p.returncode, seconds)
        assert command2 == command, "the resume command of a resumed search is the same command"
        assert sorted(e for _, e in state.values()) == [1, 1], state
        print(f"[measured] SIGTERM mid-trial: rc {run.p.returncode}, exit {seconds:.1f}s after the signal; "
              f"state {sorted(s for s, _ in state.values())}")
        before = finished_texts(exp, state)
        run.cleanup()
        # report.py on the interrupted search: a snapshot, said to be interrupted, with the command
        notes = load_experiment(exp).notes
        assert any(n.startswith("the search was interrupted (SIGTERM at ") and n.endswith(shlex.join(command))
                   for n in notes), notes

        # 3. the printed command, holding at epoch 1 again: the two restored trials continue from
        # their epoch-1 checkpoints past it and finish; the third starts and is held after epoch 1.
        # Then Ctrl-C and a second Ctrl-C 0.3 s later, while Tune saves: the folder must stay resumable
        hold = Hold(tmp_path / "hold3", 1)
        runs.append(run := Run(command2, tmp_path, "r3", ray_tmpdir, hold.env()))

        def two_done_one_mid():
            st, held = tune_state(exp), hold.held()
            if not (st and len(st) == N and len(held) == 1):
                return False
            (t,) = held
            return st.get(t) == ("RUNNING", 1) and all(s == "TERMINATED" for u, (s, _) in st.items() if u != t)
        run.wait_for(two_done_one_mid, 300, "two trials finished and the third held mid-way")
        seconds = interrupt(run, [signal.SIGINT, signal.SIGINT], target_group=True)
        command3, state = check_interrupted(run, exp, signal.SIGINT, run.p.returncode, seconds)
        assert command3 == command
        second = "still saving the search state" in open(run.out).read()
        print(f"[measured] SIGINT x2 mid-trial: rc {run.p.returncode}, exit {seconds:.1f}s after the first "
              f"signal (second one {'deferred while saving' if second else 'after fit returned'}); "
              f"state {sorted(s for s, _ in state.values())}")
        for t, text in before.items():  # finished before run 3: unchanged by it
            assert open(os.path.join(trial_dirs(exp)[t], "result.json")).read() == text, f"trial {t} changed"
        before = finished_texts(exp, state)
        assert len(before) == 2, state
        run.cleanup()

        # 4. the printed command again, to the end
        runs.append(run := Run(command3, tmp_path, "r4", ray_tmpdir))
        t0 = time.time()
        check_resumed_to_the_end(run, exp, before)
        print(f"[measured] resumed to the end in {time.time() - t0:.0f}s: {N} of {N} trials, "
              f"{len(before)} finished before, their result.json byte-identical")
        assert not any("interrupted" in n or "still running" in n for n in load_experiment(exp).notes)

        # 5. report.py --ablate, Ctrl-C once the first retrain has finished (the others held by
        # ABLATION_HOLD): what finished is kept, the rest is marked interrupted
        hook = tmp_path / "ablation_hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(ABLATION_HOLD)
        env = {"PYTHONPATH": os.pathsep.join([str(hook), ROOT, os.environ.get("PYTHONPATH", "")]),
               "HSCMAE_TEST_ABLATION_GATE": str(tmp_path / "ablation_gate")}
        runs.append(run := Run([sys.executable, os.path.join(ROOT, "report.py"), "--ablate", exp, "--seeds", "1",
                                "--epochs", "2", "--num-cpus", "2"], tmp_path, "a1", ray_tmpdir, env))
        first = run.wait_for(lambda: re.findall(r"\[report\] ablation \d+/(\d+) \(\d+s\): (\S+) seed (\d+): "
                                                r"test_map ([\d.]+)", open(run.out).read()),
                             240, "the first ablation retrain to finish")
        seconds = interrupt(run, [signal.SIGINT], target_group=True)
        out, err = open(run.out).read(), open(run.err).read()
        assert run.p.returncode == 130 and "Traceback" not in err + out, run.tail()
        done = re.findall(r"\[report\] ablation \d+/\d+ \(\d+s\): (\S+) seed (\d+): test_map ([\d.]+)", out)
        assert len(done) == 1, out
        rows = pd.read_parquet(os.path.join(exp, "report", "component_runs.parquet"))
        kept = rows[rows["error"].isna()]
        assert sorted((c, int(sd), float(m)) for c, sd, m in done) == \
            sorted((c, int(sd), round(m, 4)) for c, sd, m in zip(kept["component"], kept["seed"], kept["test_map"]))
        stopped = rows[rows["error"].fillna("").str.startswith("interrupted (SIGINT)")]
        assert len(kept) + len(stopped) == int(first[0][0]) and len(stopped) > 0, rows
        summary = open(os.path.join(exp, "report", "summary.md")).read()
        assert f"the component ablation was interrupted (SIGINT) after {len(kept)} of {first[0][0]} retrains" \
            in summary
        print(f"[measured] report.py --ablate, SIGINT: rc 130, exit {seconds:.1f}s after the signal; "
              f"{len(kept)} of {first[0][0]} retrains kept, {len(stopped)} marked interrupted")
    finally:
        for r in runs:
            r.cleanup()
