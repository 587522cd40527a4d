"""python -m hscmae.train's history.jsonl: one line per epoch after a SIGKILL and a resume, the
same lines (timings aside) as an uninterrupted run; the cut-back rules on hand-written files."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hscmae.history import append_history, read_history, truncate_history

from conftest import ROOT  # noqa: E402
EPOCHS = 16
SETS = ["hidden_dim=32", "embed_dim=16", "cca_dim=4", "top_k=3", "batch_size=64", f"epochs={EPOCHS}",
        "threads=1", "test_cca=auto"]


HOLD = """
# Test hook, loaded through PYTHONPATH by the test's `python -m hscmae.train`: once epoch N's history
# line is written (before its checkpoint), touch MARKER and wait to be killed. So the SIGKILL lands
# at a known point -- the line in, the checkpoint still the previous epoch's -- not at a moment the
# test would have to catch.
import os

if os.environ.get("HSCMAE_TEST_HISTORY_HOLD"):
    import time

    import hscmae.history as H

    _append = H.append_history

    def append_history(path, metrics):
        _append(path, metrics)
        n, marker = os.environ["HSCMAE_TEST_HISTORY_HOLD"].split(":", 1)
        if metrics["epoch"] == int(n):
            open(marker, "w").close()
            while True:
                time.sleep(0.5)

    H.append_history = append_history
"""


def _train(out, *extra, **kw):
    cmd = [sys.executable, "-m", "hscmae.train", "--config", "config/hsc_mae.yaml", "--data", "synthetic:tiny",
           "--out", str(out), "--set", *SETS, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _lines(path):
    """Independent of hscmae.history: the file's complete lines, parsed."""
    raw = path.read_bytes() if path.exists() else b""
    return [json.loads(x) for x in raw.split(b"\n")[:-1]]


def _no_timing(h):
    return {k: v for k, v in h.items() if k not in ("epoch_time_s", "train_s", "eval_s")}


@pytest.mark.slow
def test_history_after_sigkill_and_resume_has_every_epoch_once(tmp_path):
    ref = _train(tmp_path / "ref")
    assert ref.wait(timeout=600) == 0, ref.stderr.read()
    expected = _lines(tmp_path / "ref" / "history.jsonl")
    assert [h["epoch"] for h in expected] == list(range(1, EPOCHS + 1))
    assert (tmp_path / "ref" / "fig_training.png").stat().st_size > 10_000

    run, hook, marker = tmp_path / "run", tmp_path / "hook", tmp_path / "held"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD)
    env = {**os.environ, "HSCMAE_TEST_HISTORY_HOLD": f"5:{marker}",
           "PYTHONPATH": os.pathsep.join([str(hook), ROOT, os.environ.get("PYTHONPATH", "")])}
    p = _train(run, env=env)
    deadline = time.time() + 300
    while not marker.exists():  # a state: the run waits there until killed
        assert time.time() < deadline and p.poll() is None, p.stderr.read() if p.poll() is not None else "timeout"
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)  # mid-run: epoch 5's history line written, its checkpoint not
    p.wait(timeout=60)
    before = _lines(run / "history.jsonl")
    assert [h["epoch"] for h in before] == [1, 2, 3, 4, 5]
    import torch

    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 4  # so epoch 5 is trained again
    with open(run / "history.jsonl", "ab") as f:  # as if killed mid-write of the next line
        f.write(b'{"epoch": 99, "loss": 1.2')

    r = _train(run, "--resume")
    stdout, stderr = r.communicate(timeout=600)
    assert r.returncode == 0, stderr
    assert "resuming from" in stdout
    got = _lines(run / "history.jsonl")
    assert (run / "history.jsonl").read_bytes().endswith(b"\n")
    assert [h["epoch"] for h in got] == list(range(1, EPOCHS + 1))
    # resume is bit-identical, so every epoch's losses, weights and val scores are the reference's
    assert [_no_timing(h) for h in got] == [_no_timing(h) for h in expected]


def test_truncate_keeps_complete_lines_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_bytes(b'{"epoch": 1, "loss": 3.0}\n{"epoch": 2, "loss": 2.5}\n{"epoch": 3, "loss": 2.0}\n{"epo')
    assert truncate_history(str(path), 2) == 2  # epoch 3 is past the checkpoint: it will be trained again
    assert path.read_bytes() == b'{"epoch": 1, "loss": 3.0}\n{"epoch": 2, "loss": 2.5}\n'
    append_history(str(path), {"epoch": 3, "loss": 1.5})
    assert [h["epoch"] for h in read_history(str(path))] == [1, 2, 3]
    assert truncate_history(str(path), 0) == 0 and path.read_bytes() == b""  # a fresh run starts a new log
    assert truncate_history(str(tmp_path / "absent.jsonl"), 5) == 0


def test_core_modules_do_not_import_matplotlib():
    code = ("import sys, hscmae.train, hscmae.protocol, hscmae.metrics, hscmae.history, hscmae.export, hscmae.eval; "
            "print('matplotlib' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
