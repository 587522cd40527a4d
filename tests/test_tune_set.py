"""`tune_main.py --set key=value ...` (fixed overrides of the base config, validated like
`hscmae.train --set`, recorded in base_config.yaml and study.json, checked on --resume), and what a
resume on another space says first. Expected values come from the shipped YAML read here and the
experiment's own files, not from the harness."""
import json
import os
import subprocess
import sys

import pytest
import yaml

import tune_main
from conftest import ROOT, tune_main_error

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "1", "OMP_NUM_THREADS": "1"}
SHIPPED = os.path.join(ROOT, "config", "hsc_mae.yaml")


@pytest.mark.parametrize("values,says", [
    (["lr"], "--set: override 'lr': expected key=value"),
    (["=3"], "expected key=value"),
    (["no_such_key=1"], "--set no_such_key=1: unknown config key"),
    (["mask_ratio=2"], "--set mask_ratio=2: config key 'mask_ratio': must be in [0, 1)"),
    (["pair_noise=1.0"], "config key 'pair_noise'"),
    (["use_recon=maybe"], "config key 'use_recon'"),
    (["lr=[1"], "--set: override 'lr=[1': the value is not YAML"),
    (["hidden_dim=64"], "--set hidden_dim=64: search space 'smoke' fixes hidden_dim = 32 for every trial"),
    (["epochs=3"], "fixes epochs = 6"),
])
def test_a_bad_set_is_one_error_line_before_ray(tmp_path, capsys, values, says):
    msg = tune_main_error(capsys, ["--space", "smoke", "--storage", str(tmp_path), "--set", *values])
    assert says in msg, msg
    assert not os.listdir(tmp_path)  # nothing written


def test_set_overrides_the_base_config_and_only_the_keys_named(tmp_path):
    args = tune_main.parse_args(["--space", "smoke", "--storage", str(tmp_path), "--set", "weight_decay=0.01",
                                 "pair_noise=0.5", "--set", "use_distill=false"])
    base = tune_main.prepare(args)["base"]
    shipped = yaml.safe_load(open(SHIPPED))
    assert base["weight_decay"] == 0.01 and base["pair_noise"] == 0.5 and base["use_distill"] is False
    assert all(base[k] == v for k, v in shipped.items() if k not in ("weight_decay", "use_distill")), \
        {k: (base[k], v) for k, v in shipped.items() if base[k] != v}


def fake_experiment(folder, space_name: str, fingerprint: str) -> str:
    """The files a resume reads first, as tune_main.py writes them (tuner.pkl's presence is what
    Tune's can_restore checks): an experiment of `space_name` on data with `fingerprint`."""
    exp = folder / "e"
    exp.mkdir()
    (exp / "tuner.pkl").write_bytes(b"")
    (exp / "space.json").write_text(json.dumps({"name": space_name, "num_samples": 6}))
    (exp / "data.json").write_text(json.dumps({"fingerprint": fingerprint}))
    return str(exp)


def test_a_resume_on_another_space_says_so_before_the_data(tmp_path, capsys):
    """--space default on a smoke experiment: default searches synthetic:ave, smoke ran on
    synthetic:tiny, so the data differ too; the cause to read is the space."""
    fake_experiment(tmp_path, "smoke", "not-this-data")
    msg = tune_main_error(capsys, ["--space", "default", "--storage", str(tmp_path), "--name", "e", "--resume"])
    assert "--space default: the experiment searched space 'smoke'" in msg, msg
    assert "different data" not in msg and "resume with --space smoke" in msg, msg
    # the same space on other data: the data is the cause
    msg = tune_main_error(capsys, ["--space", "smoke", "--storage", str(tmp_path), "--name", "e", "--resume"])
    assert "was run on different data" in msg, msg


# ------------------------------------------------------------------------------------------------
# A real (tiny) search with --set, then resumes with the same and with other overrides
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_set_is_recorded_and_a_resume_with_another_set_is_refused(tmp_path, capsys):
    cmd = [sys.executable, os.path.join(ROOT, "tune_main.py"), "--space", "smoke", "--storage", str(tmp_path),
           "--name", "s", "--num-samples", "2", "--max-epochs", "2", "--set", "weight_decay=0.002", "use_distill=false"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = tmp_path / "s"
    base = yaml.safe_load((exp / "base_config.yaml").read_text())
    shipped = yaml.safe_load(open(SHIPPED))
    assert base["weight_decay"] == 0.002 and base["use_distill"] is False
    assert all(base[k] == v for k, v in shipped.items() if k not in ("weight_decay", "use_distill"))
    assert json.loads((exp / "study.json").read_text())["set"] == {"weight_decay": 0.002, "use_distill": False}
    # every trial trained with the overrides (Tune's params.json holds the searched keys; the
    # trial's config is the base config's: the distillation loss is off, so never reported > 0)
    for folder in exp.glob("run_trial_*"):
        rows = [json.loads(line) for line in open(folder / "result.json") if line.strip()]
        assert rows and all(row.get("loss_distill", 0.0) == 0.0 for row in rows), folder
    before = sorted(os.listdir(exp))
    flags = ["--space", "smoke", "--storage", str(tmp_path), "--name", "s", "--max-epochs", "2", "--resume"]
    for other, says in ((["--set", "weight_decay=0.003", "use_distill=false"], "--set weight_decay=0.003"),
                        ([], "--set (none): the experiment's base config was set with --set weight_decay=0.002"),
                        (["--set", "weight_decay=0.002"], "--set weight_decay=0.002: ")):
        msg = tune_main_error(capsys, flags + other)
        assert "cannot resume" in msg and says in msg, msg
        assert "--config" not in msg, msg  # the cause is --set, not the config file
    assert sorted(os.listdir(exp)) == before
    # the same overrides, in another order: the search is complete, nothing to run
    r = subprocess.run([*cmd[:-2], "--set", "use_distill=false", "weight_decay=0.002", "--resume"],
                       capture_output=True, text=True, timeout=400, env=ENV, cwd=ROOT)
    assert r.returncode == 0 and "[hscmae] 2 trials" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
