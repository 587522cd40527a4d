"""A search with `--set val_every=N` (Config.val_every): the epochs it skips report no val_map, and
Tune, ASHA, the study and report.py's curves take that (tests/test_protocol.py checks fit's side)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_a_search_with_val_every_reports_val_map_only_where_scored(tmp_path):
    # smoke: 6 epochs, ASHA grace 2, rf 2 (rungs 2 and 4); val_every 3 scores 2, 3, 4 and 6. A
    # checkpoint every epoch: epochs 1 and 5 report a checkpoint without a val_map
    cmd = [sys.executable, os.path.join(ROOT, "tune_main.py"), "--space", "smoke", "--storage", str(tmp_path),
           "--name", "v", "--num-samples", "3", "--checkpoint-every", "1", "--set", "val_every=3"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[hscmae] best val_map" in r.stdout, r.stdout[-3000:]
    exp = tmp_path / "v"
    folders = sorted(exp.glob("run_trial_*"))
    assert len(folders) == 3
    for folder in folders:
        rows = [json.loads(line) for line in open(folder / "result.json") if line.strip()]
        epochs = [row["epoch"] for row in rows]
        scored = [row["epoch"] for row in rows if "val_map" in row]
        assert scored == [e for e in (2, 3, 4, 6) if e <= max(epochs)], (folder, scored)
        assert max(epochs) in (2, 4, 6), (folder, epochs)  # ASHA stops at a rung, on a scored epoch
    # the report reads the experiment: trials ranked by their last (scored) val_map, curves only
    # where scored
    from reporting.experiment import load_experiment
    from reporting.figures import fig_curves

    e = load_experiment(str(exp))
    assert e.trials["val_map"].notna().all()
    full = e.trials[e.trials["epochs"] == 6]
    assert len(full) >= 1
    scored_rows = e.curves.dropna(subset=["val_map"])
    assert sorted(set(scored_rows["epoch"])) <= [2, 3, 4, 6]
    assert set(e.curves["epoch"]) >= {1, 2}  # the unscored epochs are there, without a val_map
    fig = fig_curves(e, full.iloc[0]["trial_id"])
    lines = [ln for ln in fig.axes[0].lines if len(ln.get_ydata()) > 1]
    assert lines and all(np.isfinite(np.asarray(ln.get_ydata(), dtype=float)).all() for ln in lines)


def test_the_training_figure_draws_the_scored_epochs_as_one_line():
    """A standalone history with val_every 3: epochs 1, 2, 4, 5 have no val_map; the figure's val
    lines go through 3 and 6 only (a NaN between them would leave nothing drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    from hscmae.history import fig_training

    history = [{"epoch": e, "loss": 1.0 / e, **({"val_map": 0.1 * e, "val_map_a2v": 0.1 * e, "val_map_v2a": 0.1 * e}
                                                  if e % 3 == 0 else {})} for e in range(1, 7)]
    fig = fig_training(history)
    val = [ln for ln in fig.axes[2].lines]
    assert len(val) == 3
    for ln in val:
        assert list(ln.get_xdata()) == [3, 6] and np.allclose(ln.get_ydata(), [0.3, 0.6])
