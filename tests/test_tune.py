"""The search harness, on the smoke space: end to end, kill -9 and resume, bad flags and spaces.
The two-node cluster test lives with the other cluster faults in tests/reliability/."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import tune_main

from conftest import ROOT, SEARCH_ENV as ENV  # noqa: E402


def tune_cmd(storage, name, *extra):
    return [sys.executable, os.path.join(ROOT, "tune_main.py"), "--space", "smoke", "--storage", str(storage),
            "--name", name, *extra]


def epochs_by_trial(exp) -> dict[str, list[int]]:
    out = {}
    for f in glob.glob(os.path.join(exp, "run_trial_*", "result.json")):
        trial = os.path.basename(os.path.dirname(f)).split("_")[2]
        out[trial] = [json.loads(line)["epoch"] for line in open(f) if line.strip()]
    return out


@pytest.mark.slow
def test_search_end_to_end_with_asha_stopping_trials(tmp_path):
    r = subprocess.run(tune_cmd(tmp_path, "e2e", "--num-samples", "6"), capture_output=True, text=True,
                       timeout=400, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = tmp_path / "e2e"
    epochs = epochs_by_trial(exp)
    assert len(epochs) == 6
    last = [e[-1] for e in epochs.values()]
    assert max(last) == 6 and min(last) < 6, f"ASHA stopped no trial early: {last}"
    for name in ("command.txt", "space.json", "base_config.yaml", "versions.json", "data.json"):
        assert (exp / name).stat().st_size > 0, name
    assert json.loads((exp / "data.json").read_text())["fingerprint"]
    assert glob.glob(str(exp / "searcher-state-*.pkl")), "the Optuna searcher state was not saved"
    assert "stopped early by ASHA" in r.stdout and "best val_map" in r.stdout and "test_map" in r.stdout
    # the full runs carry test scores in their last report
    full = [f for f in glob.glob(str(exp / "run_trial_*" / "result.json"))
            if json.loads(open(f).read().splitlines()[-1])["epoch"] == 6]
    assert all("test_map" in json.loads(open(f).read().splitlines()[-1]) for f in full)


@pytest.mark.slow
def test_kill_9_mid_search_then_resume_completes_exactly(tmp_path):
    exp = tmp_path / "k"
    cmd = tune_cmd(tmp_path, "k", "--num-samples", "8", "--checkpoint-every", "1")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT,
                         start_new_session=True)
    deadline = time.time() + 400  # generous: a loaded 2-core machine is much slower
    while time.time() < deadline:  # wait until some trials have reported, some are done
        e = epochs_by_trial(exp)
        if sum(len(v) for v in e.values()) >= 12 and any(v and v[-1] == 6 for v in e.values()):
            break
        time.sleep(0.5)
    else:
        pytest.fail("the search made no progress before the kill")
    os.killpg(p.pid, signal.SIGKILL)  # the driver and the local Ray it started
    p.wait()
    before = {t: open(f).read() for f in glob.glob(str(exp / "run_trial_*" / "result.json"))
              for t in [os.path.basename(os.path.dirname(f)).split("_")[2]]}
    before_epochs = epochs_by_trial(exp)

    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=400, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    after = epochs_by_trial(exp)
    assert len(after) == 8, f"expected exactly 8 trials, got {len(after)}"
    for trial, eps in before_epochs.items():
        if eps and eps[-1] == 6:  # finished before the kill: kept as it was, not re-run
            assert open(glob.glob(str(exp / f"run_trial_{trial}_*" / "result.json"))[0]).read() == before[trial]
        new = after[trial][len(eps):]
        if eps and new:  # continued: from its checkpoint, not from epoch 0
            assert new[0] > 1, f"trial {trial} restarted from epoch 0: {eps} then {new}"
    assert "resuming" in r.stdout


def _fails_before_ray(args, match, capsys):
    import ray

    t = time.time()
    assert tune_main.main(args) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err, err
    assert not ray.is_initialized()
    assert time.time() - t < 20


def test_bad_flags_fail_before_ray(tmp_path, capsys):
    _fails_before_ray(["--space", "nope", "--storage", str(tmp_path)], "unknown search space 'nope'", capsys)
    _fails_before_ray(["--space", "smoke", "--num-samples", "0", "--storage", str(tmp_path)],
                      "--num-samples must be >= 1", capsys)
    _fails_before_ray(["--space", "smoke", "--reduction-factor", "1", "--storage", str(tmp_path)],
                      "--reduction-factor must be >= 2", capsys)
    _fails_before_ray(["--space", "smoke", "--resume", "--name", "never-ran", "--storage", str(tmp_path)],
                      "no experiment to resume", capsys)
    _fails_before_ray(["--space", "smoke", "--data", "/no/such/folder", "--storage", str(tmp_path)],
                      "/no/such/folder", capsys)
    bad = tmp_path / "bad.yaml"
    bad.write_text("mask_ration: 0.5\n")
    _fails_before_ray(["--space", "smoke", "--config", str(bad), "--storage", str(tmp_path)],
                      "unknown config key", capsys)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if not os.access(ro, os.W_OK):  # root can write anywhere; the check is meaningless then
        _fails_before_ray(["--space", "smoke", "--storage", str(ro / "x")], "not writable", capsys)
    _fails_before_ray(["--space", "smoke", "--storage", "/proc/hscmae-results"], "not writable", capsys)


def test_impossible_space_fails_before_ray(tmp_path, capsys):
    cfg = tmp_path / "small_batch.yaml"
    cfg.write_text("batch_size: 40\ncca_dim: 16\n")  # valid alone; the space samples cca_dim 48
    _fails_before_ray(["--space", "default", "--config", str(cfg), "--storage", str(tmp_path)],
                      "search space 'default' can sample an impossible config", capsys)


def test_list_spaces(capsys):
    assert tune_main.main(["--list-spaces"]) == 0
    out = capsys.readouterr().out
    for name in ("default", "smoke", "wide"):
        assert name in out


# The two-node cluster (trials placed on both nodes through --address, then one node lost) is
# tests/reliability/test_faults_search.py::test_worker_node_lost_mid_search_finishes_on_the_head:
# one cluster for both checks, stopped by pid rather than `ray stop` (which stops every Ray here).


class _Built(Exception):
    pass


def _captured_trainable(monkeypatch) -> dict:
    """harness.tuner.make_trainable replaced by a recorder that stops build_tuner there (before
    with_parameters would start Ray)."""
    import harness.tuner

    seen = {}

    def record(data, base, fixed, **kw):
        seen.update(kw)
        raise _Built

    monkeypatch.setattr(harness.tuner, "make_trainable", record)
    return seen


@pytest.mark.parametrize("max_epochs,grace,rf", [(15, 3, 3), (60, 10, 3), (9, 1, 3), (6, 2, 2), (6, 6, 3)])
def test_build_tuner_chooses_the_test_time_cca_at_the_epochs_asha_cuts(monkeypatch, max_epochs, grace, rf):
    """fit's choice epochs (grid_epochs) are exactly the rungs of Ray's own ASHA bracket below
    max_t (the last epoch is always a choice epoch)."""
    from ray.tune.schedulers import ASHAScheduler

    from harness.tuner import build_tuner

    seen = _captured_trainable(monkeypatch)
    with pytest.raises(_Built):
        build_tuner("/tmp/x/e", data=None, base={}, fixed={}, max_epochs=max_epochs, grace_period=grace,
                    reduction_factor=rf, checkpoint_every=1)
    bracket = ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=grace,
                            reduction_factor=rf)._brackets[0]
    assert sorted(seen["grid_epochs"]) == sorted(m for m, _ in bracket._rungs if m < max_epochs)


def test_bench_search_builds_its_tuner_with_the_harness(monkeypatch):
    """bench_search's searches are the harness's Tuner: its ASHA rungs (grace scaled to 15 epochs:
    3, rf 3) are where fit chooses, for the ASHA and the no-scheduler searches alike."""
    import dataclasses
    import types

    import harness.tuner
    from bench import bench_search
    from search_spaces import get_space

    calls = []
    build = harness.tuner.build_tuner

    def spy(exp, **kw):
        calls.append(kw)
        return build(exp, **kw)

    seen = _captured_trainable(monkeypatch)
    monkeypatch.setattr(harness.tuner, "build_tuner", spy)
    space = dataclasses.replace(get_space("default"), fixed={"epochs": 15})
    prep = {"space": space, "probe": types.SimpleNamespace(epochs=15), "data": None, "base": {}}
    for method in ("Optuna + ASHA", "random, no scheduler"):
        with pytest.raises(_Built):
            bench_search.one_search(prep, method, 0, 45, "/tmp/x")
        assert sorted(seen["grid_epochs"]) == [3, 9], seen
    assert [c["asha"] for c in calls] == [True, False]
