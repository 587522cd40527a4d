"""Analysis of a search: the best trials, hyperparameter tables, parameter importance."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from reporting.experiment import METRIC, Experiment
from reporting.frames import _frame, _present, _py


def ranked(exp: Experiment) -> tuple[pd.DataFrame, str]:
    """Trials in selection order and the rule used: final val_map among trials that ran all epochs;
    while none has, among every trial that reported (said so in the rule)."""
    t = exp.trials
    pool = t[(t["status"] == "terminated") & t[METRIC].notna()]
    rule = f"highest {METRIC} at the last epoch among trials that ran all {exp.max_epochs} epochs"
    if pool.empty:
        pool = t[(t["status"] != "errored") & t[METRIC].notna()]
        rule = (f"highest {METRIC} at the last reported epoch (no trial has run all {exp.max_epochs} epochs "
                "yet, so this is provisional)")
    return pool.sort_values([METRIC, "trial_index", "trial_id"], ascending=[False, True, True], kind="stable"), rule


def finished(exp: Experiment) -> pd.DataFrame:
    """Trials with a validation score: everything but errored and not-yet-reported ones. ASHA's
    stopped trials count, at the epoch they were stopped (that is what the search measured)."""
    t = exp.trials
    return t[(t["status"] != "errored") & t[METRIC].notna()]


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _groups(values: pd.Series, spec: dict, n_bins: int) -> list[tuple[str, float, float, pd.Series]]:
    """(label, low, high, mask): one group per value for categorical and small-integer params,
    else n_bins equal-width bins over the searched range (in log space for log-scaled params)."""
    kind = spec.get("type")
    if kind == "categorical" or (kind == "int" and spec["high"] - spec["low"] + 1 <= 8):
        choices = spec.get("choices") or list(range(spec["low"], spec["high"] + 1))
        out = []
        for c in choices:
            num = float(c) if isinstance(c, (int, float)) and not isinstance(c, bool) else math.nan
            out.append((str(c).lower() if isinstance(c, bool) else str(c), num, num, values == c))
        return out
    lo, hi = float(spec["low"]), float(spec["high"])
    edges = np.geomspace(lo, hi, n_bins + 1) if spec.get("log") else np.linspace(lo, hi, n_bins + 1)
    if kind == "int":
        edges = np.unique(np.round(edges))
    out = []
    for i in range(len(edges) - 1):
        last = i == len(edges) - 2
        mask = (values >= edges[i]) & ((values <= edges[i + 1]) if last else (values < edges[i + 1]))
        out.append((f"[{_fmt(edges[i])}, {_fmt(edges[i + 1])}{']' if last else ')'}", float(edges[i]),
                    float(edges[i + 1]), mask))
    return out


def hparam_table(exp: Experiment, n_bins: int = 4) -> pd.DataFrame:
    """For each searched parameter: val_map (final, per trial) by value or bin, over the trials
    that reported; n_full counts those that ran all epochs. Empty bins are left out."""
    ok = finished(exp)
    rows = []
    for name, spec in exp.searched.items():
        if name not in ok:
            continue
        for label, low, high, mask in _groups(ok[name], spec, n_bins):
            sel = ok[mask.fillna(False).astype(bool)]
            if sel.empty:
                continue
            v = sel[METRIC].astype(float)
            rows.append({"param": name, "bin": label, "bin_low": low, "bin_high": high, "n": len(sel),
                         "n_full": int((sel["status"] == "terminated").sum()), "val_map_mean": float(v.mean()),
                         "val_map_std": float(v.std(ddof=1)) if len(v) > 1 else None,
                         "val_map_max": float(v.max())})
    return _frame(rows, {"param": "str", "bin": "str", "bin_low": "float", "bin_high": "float", "n": "int",
                         "n_full": "int", "val_map_mean": "float", "val_map_std": "float", "val_map_max": "float"})


IMPORTANCE_WHY = {
    "ped-anova": ("PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator): it asks which parameters "
                  "separate the top trials from the rest using only the ranking of val_map, so trials "
                  "ASHA stopped early (scored at fewer epochs) just fall in the 'rest'; it needs no "
                  "surrogate model, which a few dozen TPE-concentrated trials cannot fit well, and it is "
                  "deterministic"),
    "fanova": ("fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0): variance decomposition of "
               "a random-forest fit of val_map; reliable only with many trials spread over the space"),
}


def param_importance(exp: Experiment, evaluator: str = "ped-anova") -> tuple[pd.DataFrame, str]:
    """Importance of each searched parameter for val_map, from an in-memory Optuna study rebuilt
    from the trials (distributions from space.json). Returns (table, how it was computed)."""
    cols = {"param": "str", "importance": "float", "rank": "int", "evaluator": "str"}
    ok = finished(exp)
    specs = {k: s for k, s in exp.searched.items() if k in ok and s.get("type") in ("float", "int", "categorical")}
    if len(ok) < 2 or not specs:
        return _frame([], cols), "not computed: fewer than 2 trials with a validation score"
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    dists = {k: (FloatDistribution(s["low"], s["high"], log=s.get("log", False)) if s["type"] == "float"
                 else IntDistribution(s["low"], s["high"], log=s.get("log", False)) if s["type"] == "int"
                 else CategoricalDistribution(s["choices"])) for k, s in specs.items()}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _, t in ok.iterrows():
        study.add_trial(optuna.trial.create_trial(
            value=float(t[METRIC]), params={k: _py(t[k]) for k in dists}, distributions=dists))
    if evaluator == "fanova":
        ev = optuna.importance.FanovaImportanceEvaluator(seed=0)
        how = IMPORTANCE_WHY["fanova"]
    else:
        # PED-ANOVA's authors advise >= 5 trials in the top quantile: 5/n, kept within [0.1, 0.5]
        q = min(0.5, max(0.1, 5 / len(ok)))
        ev = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=q)
        how = IMPORTANCE_WHY["ped-anova"] + f"; top quantile {q:.2g} of {len(ok)} trials"
    with warnings.catch_warnings():  # "few trials" warnings: the table states n
        warnings.simplefilter("ignore")
        imp = optuna.importance.get_param_importances(study, evaluator=ev, params=list(dists))
    # sort ourselves: Optuna's order of ties depends on set iteration (hash seed)
    items = sorted(imp.items(), key=lambda kv: (-round(kv[1], 12), kv[0]))
    rows = [{"param": k, "importance": float(v), "rank": i + 1, "evaluator": evaluator} for i, (k, v) in enumerate(items)]
    return _frame(rows, cols), how



def warm_start(exp: Experiment) -> tuple[dict | None, pd.Series | None]:
    """(the warm-start point tune_main recorded in study.json, the trial that ran it): the base
    config's values of the searched parameters; (None, None) without one (--no-warm-start)."""
    import json
    import os

    path = os.path.join(exp.path, "study.json")
    if not os.path.exists(path):
        return None, None
    with open(path) as f:
        point = json.load(f).get("warm_start") or None
    if not point:
        return None, None
    t = exp.trials.sort_values("trial_index", kind="stable")
    for _, r in t.iterrows():
        if all(k in r.index and _present(r[k]) and r[k] == v for k, v in point.items()):
            return point, r
    return point, None


def budget_notes(exp: Experiment, window: int = 10, top: int = 3) -> list[str]:
    """What the search's budget may have hidden (issue 22): whether the best full-length trials were
    still improving at their last epoch (val_map gained over the last `window` epochs), and the
    winner against the base config (the warm-start trial) at the epoch that trial reached."""
    order, _ = ranked(exp)
    full = order[order["status"] == "terminated"].head(top)
    if full.empty:
        return []
    c = exp.curves

    def val_at(trial_id, epoch):
        v = c[(c["trial_id"] == trial_id) & (c["epoch"] == epoch)]["val_map"]
        return float(v.iloc[0]) if len(v) and _present(v.iloc[0]) else None

    notes = []
    gains = []
    for _, r in full.iterrows():
        last = int(c[c["trial_id"] == r["trial_id"]]["epoch"].max())
        ref = max(1, last - window)
        a, b = val_at(r["trial_id"], ref), val_at(r["trial_id"], last)
        if a is not None and b is not None and ref < last:
            gains.append((r["trial_id"], b - a, last - ref))
    rising = [g for g in gains if g[1] > 0]
    if rising:
        notes.append("still improving at the last epoch: " + ", ".join(
            f"trial {t} gained {d:+.4f} val_map over its last {n} epochs" for t, d, n in rising)
            + f" (of the top {len(gains)} full-length trials): more epochs may pay; "
              "`report.py --confirm K --epochs N` compares them at a longer length")
    elif gains:
        notes.append(f"the top {len(gains)} full-length trials had stopped improving: at most "
                     f"{max(d for _, d, _ in gains):+.4f} val_map over their last {window} epochs")
    point, base = warm_start(exp)
    best = full.iloc[0]
    if base is not None and base["trial_id"] != best["trial_id"]:
        e = int(c[c["trial_id"] == base["trial_id"]]["epoch"].max())
        wb, bb = val_at(best["trial_id"], e), val_at(base["trial_id"], e)
        if wb is not None and bb is not None:
            stopped = " (ASHA stopped it there)" if base["status"] == "stopped_early" else ""
            notes.append(f"at epoch {e}, where the base config's trial {base['trial_id']} ended{stopped}, the winner "
                         f"{best['trial_id']} had val_map {wb:.4f} against the base config's {bb:.4f} ({wb - bb:+.4f})")
    own = exp.base.get("epochs")
    if own and int(own) > exp.max_epochs:
        notes.append(f"the base config trains {int(own)} epochs, the search {exp.max_epochs}: the winner is chosen "
                     f"at {exp.max_epochs}; `report.py --confirm 5 {exp.path}` retrains the top configs and the base "
                     f"config over seeds at {int(own)} epochs")
    return notes
