"""report.py on a real smoke search: row counts and dtypes against the raw result files, the best
config through the trainer and tune_main, byte-identical re-runs, the component ablation tables,
the figures, a still-running experiment, and the one-line errors for missing / empty / corrupt."""
import glob
import json
import os
import shutil
import subprocess
import sys

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml

import report
import tune_main
from hscmae import ablation
from hscmae.config import load_config

from conftest import ROOT  # noqa: E402
ENV = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1"}
MAX_EPOCHS = 6  # the smoke space's
SEEDS = 2
pytestmark = pytest.mark.slow  # every test reads the module's smoke search (~40 s to make)


def run(*cmd, timeout=300):
    r = subprocess.run([sys.executable, *map(str, cmd)], capture_output=True, text=True, timeout=timeout,
                       env=ENV, cwd=ROOT)
    return r


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    """A finished smoke search (6 trials, some stopped by ASHA) and its report with a small
    component ablation (2 seeds; Ray's start-up, not the tiny trainings, is most of its time),
    written to <exp>/report."""
    storage = tmp_path_factory.mktemp("report")
    r = run("tune_main.py", "--space", "smoke", "--storage", storage, "--name", "smoke")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = storage / "smoke"
    r = run("report.py", "--ablate", exp, "--seeds", SEEDS, "--num-cpus", 2)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return exp


def raw_trials(exp) -> dict[str, pd.DataFrame]:
    """trial id -> its result.json as a frame, read independently of report.py."""
    out = {}
    for f in glob.glob(str(exp / "run_trial_*" / "result.json")):
        out[os.path.basename(os.path.dirname(f)).split("_")[2]] = pd.read_json(f, lines=True, precise_float=True)
    return out


def copy_experiment(exp, dest):
    """The experiment's JSON/YAML files without checkpoints or report (what report.py reads)."""
    shutil.copytree(exp, dest, ignore=shutil.ignore_patterns("checkpoint_*", "report", "*.pkl"))
    return dest


def test_trials_table_rows_statuses_and_dtypes(exp):
    raw = raw_trials(exp)
    t = pd.read_parquet(exp / "report" / "trials.parquet")
    assert len(raw) == 6 and len(t) == len(raw) and set(t["trial_id"]) == set(raw)
    for col in ("mask_ratio", "one_minus_ema_momentum", "temperature", "ema_momentum", "val_map", "wall_time_s"):
        assert t[col].dtype == np.float64, col
    for col in ("top_k", "cca_dim", "epochs"):
        assert t[col].dtype == np.int64, col
    assert pd.api.types.is_string_dtype(t["status"])
    assert t["test_cca"].dtype == bool  # every epoch reports whether validation chose the CCA
    for _, row in t.iterrows():
        df = raw[row["trial_id"]]
        last = df.iloc[-1]
        assert row["epochs"] == last["epoch"]
        assert row["status"] == ("terminated" if last["epoch"] == MAX_EPOCHS else "stopped_early")
        assert row["val_map"] == pytest.approx(last["val_map"], abs=0)
        assert row["best_val_map"] == pytest.approx(df["val_map"].max(), abs=0)
        params = last["config"]
        for k, v in params.items():
            assert row[k] == v, k
    assert set(t["status"]) == {"terminated", "stopped_early"}, "the smoke search should have both kinds"
    assert t.loc[t["status"] == "terminated", "test_map"].notna().all()


def test_curves_one_row_per_reported_epoch(exp):
    raw = raw_trials(exp)
    c = pd.read_parquet(exp / "report" / "curves.parquet")
    assert len(c) == sum(len(df) for df in raw.values())
    assert c["epoch"].dtype == np.int64
    for tid, df in raw.items():
        mine = c[c["trial_id"] == tid]
        assert list(mine["epoch"]) == list(df["epoch"])
        np.testing.assert_array_equal(mine["val_map"].to_numpy(), df["val_map"].to_numpy())
        np.testing.assert_array_equal(mine["loss_dcca"].to_numpy(), df["loss_dcca"].to_numpy())


def test_best_trial_is_chosen_on_validation_among_full_runs(exp):
    # independently: the last report of each trial; among those that ran all epochs, highest val_map
    last = pd.DataFrame([{**df.iloc[-1].to_dict(), "trial": tid} for tid, df in raw_trials(exp).items()])
    full = last[last["epoch"] == MAX_EPOCHS]
    best = full.loc[full["val_map"].idxmax()]
    top = yaml.safe_load((exp / "report" / "top_configs.yaml").read_text())
    assert top[0]["trial_id"] == best["trial"]
    assert top[0]["val_map"] == best["val_map"]
    assert [x["val_map"] for x in top] == sorted(full["val_map"], reverse=True)[:len(top)]
    cfg = yaml.safe_load((exp / "report" / "best_config.yaml").read_text())
    assert "one_minus_ema_momentum" not in cfg  # a search-only helper, not a Config key
    for k, v in best["config"].items():
        if k != "one_minus_ema_momentum":
            assert cfg[k] == v, k
    assert f"**{best['val_map']:.4f}**" in (exp / "report" / "summary.md").read_text()


def test_best_config_round_trips_through_trainer_and_tune_main(exp, tmp_path):
    path = exp / "report" / "best_config.yaml"
    cfg = load_config(str(path))
    assert cfg.to_dict() == yaml.safe_load(path.read_text())
    assert cfg.data == "synthetic:tiny" and cfg.epochs == MAX_EPOCHS
    # tune_main.py --config: every check it makes before Ray starts
    args = tune_main.parse_args(["--space", "smoke", "--config", str(path), "--storage", str(tmp_path / "s"),
                                 "--name", "x"])
    assert tune_main.prepare(args)["base"] == cfg.to_dict()
    r = run("-m", "hscmae.train", "--config", path, "--set", "epochs=1", "--data", "synthetic:tiny",
            "--out", tmp_path / "train")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert 0 < metrics["test_map"] <= 1


def test_rerun_gives_byte_identical_parquet(exp, tmp_path):
    assert report.main([str(exp), "--out", str(tmp_path)]) == 0
    for name in ("trials", "curves", "hparam_ablation", "param_importance"):
        a = (exp / "report" / f"{name}.parquet").read_bytes()
        assert a == (tmp_path / f"{name}.parquet").read_bytes(), name


def test_hparam_tables_and_importance(exp):
    out = exp / "report"
    h = pd.read_parquet(out / "hparam_ablation.parquet")
    t = pd.read_parquet(out / "trials.parquet")
    searched = ["mask_ratio", "one_minus_ema_momentum", "top_k", "temperature", "cca_dim"]
    assert set(h["param"]) == set(searched)
    for p in searched:  # every trial with a score falls in exactly one bin
        assert h.loc[h["param"] == p, "n"].sum() == len(t)
    for v in (4, 8):  # a categorical: the mean over its trials
        sel = t[t["cca_dim"] == v]["val_map"]
        row = h[(h["param"] == "cca_dim") & (h["bin"] == str(v))]
        if len(sel):
            assert row["val_map_mean"].item() == pytest.approx(sel.mean())
    imp = pd.read_parquet(out / "param_importance.parquet")
    assert sorted(imp["param"]) == sorted(searched) and list(imp["rank"]) == [1, 2, 3, 4, 5]
    assert imp["importance"].is_monotonic_decreasing and imp["importance"].sum() == pytest.approx(1)
    md = (out / "hparam_ablation.md").read_text()
    assert "PED-ANOVA" in md
    tex = (out / "hparam_ablation.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex


def table_rows_md(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return lines[2:]  # header, separator


def table_rows_tex(text: str) -> list[str]:
    body = text.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0]
    return [line for line in body.splitlines() if line.strip()]


def test_component_ablation_tables(exp):
    out = exp / "report"
    labels = [label for _, label, _ in ablation.COMPONENTS]
    assert [c for c, _, _ in ablation.COMPONENTS] == [
        "full", "plain_infonce", "no_recon", "no_dcca", "no_infonce", "no_ema", "no_distill", "fixed_weights",
        "no_test_cca"]
    md_rows = table_rows_md((out / "component_ablation.md").read_text())
    tex_rows = table_rows_tex((out / "component_ablation.tex").read_text())
    assert len(md_rows) == len(tex_rows) == len(labels)
    for label, md, tex in zip(labels, md_rows, tex_rows):
        assert md.startswith(f"| {label}") and tex.startswith(label)
        assert md.count(" ± ") == 3 and tex.count("$\\pm$") == 3  # A->V, V->A, mean
    # the summary rows against an independent mean / std of the per-seed runs
    runs = pd.read_parquet(out / "component_runs.parquet")
    summ = pd.read_parquet(out / "component_ablation.parquet")
    assert len(runs) == SEEDS * len(labels) and runs["error"].isna().all()
    assert list(summ["component"]) == [c for c, _, _ in ablation.COMPONENTS]
    g = runs.groupby("component")["test_map"]
    for _, row in summ.iterrows():
        assert row["n_ok"] == SEEDS and row["epochs"] == MAX_EPOCHS
        assert row["test_map_mean"] == pytest.approx(g.mean()[row["component"]], rel=1e-12)
        assert row["test_map_std"] == pytest.approx(g.std(ddof=1)[row["component"]], rel=1e-9)
        first = f"{row['test_map_mean']:.3f} ± {row['test_map_std']:.3f}"
        assert first in md_rows[list(summ["component"]).index(row["component"])]
    assert "Component ablation" in (out / "summary.md").read_text()
    # the full model's first seed is the searched best trial itself, retrained: same scores
    best = pd.read_parquet(out / "trials.parquet").set_index("trial_id").loc[
        yaml.safe_load((out / "top_configs.yaml").read_text())[0]["trial_id"]]
    full0 = runs[(runs["component"] == "full") & (runs["seed"] == 0)].iloc[0]
    for m in ("val_map", "test_map", "test_map_a2v", "test_map_v2a"):
        assert full0[m] == pytest.approx(best[m], abs=1e-9), m


@pytest.mark.parametrize("stem", ["fig_curves", "fig_params", "fig_importance"])
def test_figures_are_real_images(exp, stem):
    png = exp / "report" / f"{stem}.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    img = matplotlib.image.imread(str(png))
    assert img.ndim == 3 and min(img.shape[:2]) > 300 and img.std() > 0.01  # not blank
    pdf = (exp / "report" / f"{stem}.pdf").read_bytes()
    assert pdf[:5] == b"%PDF-" and len(pdf) > 5000


def test_errored_trial_gets_its_error(exp, tmp_path):
    """Without Tune's state file, an error.txt marks the trial errored, with the exception line."""
    copy = copy_experiment(exp, tmp_path / "e")
    for f in glob.glob(str(copy / "experiment_state-*.json")):
        os.remove(f)
    t = report.load_experiment(str(copy)).trials
    victim = t[t["status"] == "stopped_early"]["trial_dir"].iloc[0]
    (copy / victim / "error.txt").write_text("Failure # 1 (occurred at x)\nTraceback...\n"
                                             "hscmae.train.TrainingDiverged: loss is nan at epoch 2 step 3\n")
    t = report.load_experiment(str(copy)).trials.set_index("trial_dir")
    assert t.loc[victim, "status"] == "errored"
    assert t.loc[victim, "error"] == "hscmae.train.TrainingDiverged: loss is nan at epoch 2 step 3"
    assert (t.drop(victim)["status"] != "errored").all()


def test_still_running_experiment_is_read_with_a_note(exp, tmp_path):
    """A running trial's result.json may end in half a line: skipped, and the report says it is
    a snapshot. The experiment itself is only read."""
    copy = copy_experiment(exp, tmp_path / "r")
    state_file = sorted(glob.glob(str(copy / "experiment_state-*.json")))[-1]
    state = json.loads(open(state_file).read())
    t0, meta = state["trial_data"][0]
    t0 = json.loads(t0)
    t0["status"] = "RUNNING"
    state["trial_data"][0] = [json.dumps(t0), meta]
    open(state_file, "w").write(json.dumps(state))
    result = copy / t0["relative_logdir"] / "result.json"
    n_lines = len(result.read_text().splitlines())
    with open(result, "a") as f:
        f.write('{"epoch": 99, "val_m')
    before = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(copy / "**"), recursive=True)}
    e = report.load_experiment(str(copy))
    assert {p: os.stat(p).st_mtime_ns for p in glob.glob(str(copy / "**"), recursive=True)} == before
    assert (e.curves["trial_id"] == t0["trial_id"]).sum() == n_lines
    assert 99 not in set(e.curves["epoch"])
    assert any("still running" in n for n in e.notes)


def test_corrupt_result_file_is_one_clear_error(exp, tmp_path):
    copy = copy_experiment(exp, tmp_path / "c")
    result = sorted(glob.glob(str(copy / "run_trial_*" / "result.json")))[0]
    raw = open(result, "rb").read()
    start = raw.rstrip(b"\n").rfind(b"\n") + 1  # mid-way through the last line: the cut must
    cut = start + (len(raw) - start) // 2  # land inside a line whatever the lines' lengths
    open(result, "wb").write(raw[:cut])
    r = run("report.py", copy)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert result in lines[0] and "corrupt" in lines[0]
    assert not (copy / "report").exists()


@pytest.mark.parametrize("case", ["missing", "empty", "no_space_json"])
def test_missing_or_empty_experiment_is_one_clear_error(exp, tmp_path, capsys, case):
    path = tmp_path / case
    if case == "empty":
        path.mkdir()
    elif case == "no_space_json":
        copy_experiment(exp, path)
        (path / "space.json").unlink()
    assert report.main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0]
    want = {"missing": "not found", "empty": "empty", "no_space_json": "space.json missing"}[case]
    assert want in err[0]
