"""GPU shares per trial, tested on a machine without GPUs: a local Ray started with two logical
GPUs and --gpus-per-trial 0.5 runs four trials at once, each recording the GPU id Ray gave it and
falling back to the CPU (torch sees no CUDA) with a log line; asking for GPUs a cluster lacks,
or for device cuda without GPU shares, is one error line before any trial starts."""
import collections
import glob
import json
import os
import subprocess
import sys
import time

import pytest

import tune_main

from conftest import ROOT  # noqa: E402
ENV = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1",
       "RAY_DEDUP_LOGS": "0",  # every trial's fallback line, not one "[repeated 4x]"
       "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
# a driver that starts Ray with logical GPUs (Ray sets CUDA_VISIBLE_DEVICES for them; there is no
# device behind them), then runs the command line, which keeps the Ray it finds
DRIVER = ("import sys, ray; ray.init(address='local', num_cpus=4, num_gpus=2, include_dashboard=False, "
          "log_to_driver=True, logging_level='WARNING'); import tune_main; sys.exit(tune_main.main(sys.argv[1:]))")


def _results(exp) -> dict[str, list[dict]]:
    out = {}
    for f in glob.glob(os.path.join(exp, "run_trial_*", "result.json")):
        out[f] = [json.loads(line) for line in open(f) if line.strip()]
    return out


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU fallback")
def test_half_gpu_per_trial_runs_four_trials_at_once_on_two_logical_gpus(tmp_path):
    # 12 epochs with grace 12: ASHA stops nobody, so every trial runs long enough to overlap
    r = subprocess.run([sys.executable, "-c", DRIVER, "--space", "smoke", "--storage", str(tmp_path), "--name", "g",
                        "--num-samples", "4", "--gpus-per-trial", "0.5", "--max-epochs", "12",
                        "--grace-period", "12"],
                       capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "0.5 GPU(s) and 1 CPU(s) per trial: 4 trial(s) at once" in out
    exp = tmp_path / "g"
    assert json.loads((exp / "space.json").read_text())["max_concurrent"] == 4
    results = _results(exp)
    assert len(results) == 4 and all(len(v) == 12 for v in results.values()), {k: len(v) for k, v in results.items()}
    ids = [{row["gpu_ids"] for row in rows} for rows in results.values()]
    assert all(len(s) == 1 for s in ids), ids  # one assignment per trial, the same every epoch
    # two trials per logical GPU (0.5 each)
    assert collections.Counter(next(iter(s)) for s in ids) == {"0": 2, "1": 2}, ids
    assert all(row["device"] == "cpu" for rows in results.values() for row in rows)
    # four at once: some moment lies inside every trial's training (start = first report minus
    # its running time, end = last report)
    starts = [rows[0]["timestamp"] - rows[0]["time_total_s"] for rows in results.values()]
    ends = [rows[-1]["timestamp"] for rows in results.values()]
    assert max(starts) < min(ends), (starts, ends)
    # the fallback is said, by each trial (its worker log) and by the driver
    assert out.count("training on the CPU") >= 4, out[-4000:]
    assert out.count("trains on the CPU: torch sees no CUDA device") == 4, out[-4000:]


@pytest.mark.slow
def test_gpus_asked_of_a_cluster_without_gpus_is_one_error_line_before_any_trial(tmp_path):
    t = time.time()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tune_main.py"), "--space", "smoke", "--storage",
                        str(tmp_path), "--name", "nogpu", "--gpus-per-trial", "1"],
                       capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)
    if "the Ray cluster has 0 GPU(s)" not in r.stderr and r.returncode == 0:
        pytest.skip("this machine's Ray found a GPU")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "--gpus-per-trial 1: the Ray cluster has 0 GPU(s)" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not glob.glob(str(tmp_path / "nogpu" / "run_trial_*")), "a trial started"
    assert time.time() - t < 120


def _fails_before_ray(args, match, capsys):
    import ray

    assert tune_main.main(args) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err, err
    assert not ray.is_initialized()


def test_gpu_flag_and_device_errors_before_ray(tmp_path, capsys):
    for bad in ("1.5", "-1", "nan"):
        _fails_before_ray(["--space", "smoke", "--gpus-per-trial", bad, "--storage", str(tmp_path)],
                          "--gpus-per-trial must be 0, a fraction in (0, 1] or a whole number", capsys)
    cfg = tmp_path / "cuda.yaml"
    cfg.write_text("device: cuda\n")
    _fails_before_ray(["--space", "smoke", "--config", str(cfg), "--storage", str(tmp_path)],
                      "config key 'device' is 'cuda' but --gpus-per-trial is 0", capsys)
