"""Two drivers on one experiment folder (the same command started twice) would both restore it and
run trials into it: the second is refused with one error line before Ray starts, and a lock whose
holder died blocks nothing (an flock ends with its process)."""
import fcntl
import os
import subprocess
import sys

import tune_main
from harness.storage import lock_experiment


def test_a_second_search_on_a_folder_in_use_is_refused_before_ray_starts(tmp_path, capsys):
    holder = open(tmp_path / ".e.lock", "a+")  # what a running driver holds, taken here by hand
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.write("pid 12345, started 2026-12-04 18:00:00\n")
    holder.flush()
    try:
        rc = tune_main.main(["--space", "smoke", "--storage", str(tmp_path), "--name", "e"])
    finally:
        holder.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "in use by another search (pid 12345" in err[0]
    assert not (tmp_path / "e").exists()  # nothing was written: Tune never ran


def test_a_lock_left_by_a_killed_driver_blocks_nothing(tmp_path):
    exp = str(tmp_path / "e")
    code = ("import fcntl, os; f = open(os.path.join(%r, '.e.lock'), 'a+'); "
            "fcntl.flock(f, fcntl.LOCK_EX); os._exit(9)" % str(tmp_path))  # dies holding it, no clean-up
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert os.path.exists(tmp_path / ".e.lock")
    f = lock_experiment(exp)
    assert f is not None and f"pid {os.getpid()}" in open(tmp_path / ".e.lock").read()
    f.close()
