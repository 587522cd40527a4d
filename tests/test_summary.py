"""The driver's end-of-search summary and interruption block (tune_main.print_summary,
harness.interrupt): counts from each trial's Tune state, a search in which no trial reported a
metric, the resume command. Expected lines are written out by hand from the inputs."""
import shlex
import sys

from ray.tune import Result

import tune_main
from harness.interrupt import count_trials, resume_command, status_block

MAX_EPOCHS = 6


def metrics(epoch, val, test=None):
    m = {"epoch": epoch, "val_map": val, "val_map_a2v": val - 0.01, "val_map_v2a": val + 0.01,
         "config": {"mask_ratio": val, "top_k": epoch}}  # Tune puts the trial's config in its result
    if test is not None:
        m.update(test_map=test, test_map_a2v=test - 0.01, test_map_v2a=test + 0.01)
    return m


def summary_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("[hscmae] ") and " trials (" in line)


def test_a_summary_without_any_metric_says_so_and_raises_nothing(capsys):
    # what Tune returns for a search stopped while its first trials were pending: no result at all
    results = [Result(metrics={}, checkpoint=None, error=None, path="/x/run_trial_a"),
               Result(metrics=None, checkpoint=None, error=None, path="/x/run_trial_b")]
    tune_main.print_summary(results, "/x", MAX_EPOCHS, 30.0)
    out = capsys.readouterr().out
    assert summary_line(out) == ("[hscmae] 2 trials (0.5 min in this run): 0 ran all 6 epochs, "
                                 "0 stopped early by ASHA, 0 errored, 2 not started")
    assert "[hscmae] no trial reported val_map yet; results in /x" in out
    # the same with Tune's saved states (PENDING), as tune_main passes them
    tune_main.print_summary(results, "/x", MAX_EPOCHS, 30.0, {"a": ("PENDING", 0), "b": ("PENDING", 0)})
    assert summary_line(capsys.readouterr().out).endswith("0 stopped early by ASHA, 0 errored, 2 not started")


def test_counts_come_from_the_states_not_from_the_metrics(capsys):
    results = [Result(metrics=metrics(6, 0.30, test=0.28), checkpoint=None, error=None, path="/x/full"),
               Result(metrics=metrics(2, 0.35), checkpoint=None, error=None, path="/x/asha"),
               Result(metrics=metrics(3, 0.40), checkpoint=None, error=None, path="/x/interrupted"),
               Result(metrics={}, checkpoint=None, error=RuntimeError("boom\nValueError: bad"), path="/x/err"),
               Result(metrics={}, checkpoint=None, error=None, path="/x/pending")]
    states = {"full": ("TERMINATED", 6), "asha": ("TERMINATED", 2), "interrupted": ("RUNNING", 3),
              "err": ("ERROR", 0), "pending": ("PENDING", 0)}
    tune_main.print_summary(results, "/x", MAX_EPOCHS, 60.0, states)
    out = capsys.readouterr().out
    assert summary_line(out) == ("[hscmae] 5 trials (1.0 min in this run): 1 ran all 6 epochs, 1 stopped early "
                                 "by ASHA, 1 errored, 1 interrupted while running, 1 not started")
    assert "  errored: /x/err: ValueError: bad" in out
    # the best is chosen among full runs (the interrupted trial's higher val_map does not count)
    assert "    mask_ratio: 0.3\n    top_k: 6\n" in out
    assert "[hscmae] best val_map 0.3000 (a2v 0.2900, v2a 0.3100); test_map 0.2800" in out


def test_count_trials_and_the_status_block():
    states = {"a": ("TERMINATED", 6), "b": ("TERMINATED", 2), "c": ("ERROR", 1), "d": ("RUNNING", 4),
              "e": ("PAUSED", 2), "f": ("PENDING", 0)}
    c = count_trials(states, 10, MAX_EPOCHS)
    # finished: a, b, c; running: d, e; not started: f and the 4 trials not created yet
    assert c == dict(finished=3, full=1, early=1, errored=1, running=2, not_started=5, total=10)
    assert status_block(2, 3.04, c, "python tune_main.py --resume", forced=False) == (
        "[hscmae] interrupted (SIGINT) after 3.0 min: 3 of 10 trials finished (1 stopped early by ASHA, "
        "1 errored), 2 were running, 5 not started; nothing is lost\n"
        "[hscmae] resume with: python tune_main.py --resume")
    assert status_block(15, 0.0, count_trials({}, 4, MAX_EPOCHS), "x", forced=False).startswith(
        "[hscmae] interrupted (SIGTERM) after 0.0 min: 0 of 4 trials finished (0 stopped early by ASHA, "
        "0 errored), 0 were running, 4 not started")


def test_resume_command_is_the_same_argv_with_resume_once(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["tune_main.py", "--name", "my run"])
    cmd = resume_command(["--name", "my run", "--storage", "/tmp/a b"])
    assert shlex.split(cmd) == [sys.executable, "tune_main.py", "--name", "my run", "--storage", "/tmp/a b",
                                "--resume"]
    assert shlex.split(resume_command(["--resume", "--space", "smoke"]))[2:] == ["--resume", "--space", "smoke"]
    # nothing saved yet: the same command, which starts the search afresh (--resume would refuse)
    assert shlex.split(resume_command(["--space", "smoke"], restorable=False))[2:] == ["--space", "smoke"]
