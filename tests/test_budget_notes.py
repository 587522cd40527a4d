"""report.py's budget notes (issue 22): a best trial still rising at its last epoch is said, with the
gain computed here by hand from the curves; the winner is compared with the base config's
(warm-start) trial at the epoch that trial reached; a base config longer than the search is said."""
import json

import pandas as pd

from reporting.analysis import budget_notes, warm_start
from reporting.experiment import Experiment


def _exp(tmp_path, curves: dict, status: dict, base_epochs=100, max_epochs=30):
    (tmp_path / "study.json").write_text(json.dumps({"warm_start": {"mask_ratio": 0.5}}))
    rows = []
    for i, (tid, vals) in enumerate(curves.items()):
        rows.append({"trial_id": tid, "trial_index": i + 1, "status": status[tid], "val_map": vals[-1],
                     "mask_ratio": 0.5 if tid == "base" else 0.1 + i / 10})
    trials = pd.DataFrame(rows)
    cur = pd.DataFrame([{"trial_id": t, "epoch": e + 1, "val_map": v} for t, vals in curves.items()
                        for e, v in enumerate(vals)])
    return Experiment(path=str(tmp_path), name="x", space={"params": {"mask_ratio": {}}}, base={"epochs": base_epochs},
                      max_epochs=max_epochs, trials=trials, curves=cur, params=["mask_ratio"])


def test_rising_winner_and_the_base_config_at_its_epoch(tmp_path):
    rising = [0.1 + 0.01 * e for e in range(30)]  # +0.10 over the last 10 epochs
    flat = [0.2] * 30
    base = [0.05 * (e + 1) for e in range(10)]  # ASHA stopped it at epoch 10
    exp = _exp(tmp_path, {"win": rising, "flat": flat, "base": base},
               {"win": "terminated", "flat": "terminated", "base": "stopped_early"})
    point, trial = warm_start(exp)
    assert point == {"mask_ratio": 0.5} and trial["trial_id"] == "base"
    notes = budget_notes(exp)
    gain = rising[29] - rising[19]
    assert f"trial win gained {gain:+.4f} val_map over its last 10 epochs" in notes[0]
    assert "flat" not in notes[0]  # no gain: not said to be rising
    # at epoch 10: the winner's 0.19 against the base config's 0.50
    assert f"val_map {rising[9]:.4f} against the base config's {base[9]:.4f} ({rising[9] - base[9]:+.4f})" in notes[1]
    assert "ASHA stopped it there" in notes[1]
    assert "the base config trains 100 epochs, the search 30" in notes[2]


def test_nothing_rising_is_said_so(tmp_path):
    exp = _exp(tmp_path, {"a": [0.3] * 30, "base": [0.2] * 30}, {"a": "terminated", "base": "terminated"},
               base_epochs=30)
    notes = budget_notes(exp)
    assert notes[0].startswith("the top 2 full-length trials had stopped improving")
    assert len(notes) == 2  # and the base comparison; no epochs note (the base config is not longer)
