"""Turn a Ray Tune search of HSC-MAE (finished or still running) into tables, configs and figures.

    python report.py <experiment folder or name> [--out DIR]       # tables, best configs, figures
    python report.py --ablate <experiment> [--seeds 3] [--epochs N] [--address auto]
                                           # also retrain the best config with each component off

Reads only the experiment folder's JSON / YAML files (Tune's result.json, params.json, error.txt,
experiment_state-*.json; tune_main.py's space.json, base_config.yaml, data.json), never its pickles,
and never writes into it except the report folder (default <experiment>/report). Outputs, each
written atomically:

    trials.parquet            one row per trial: status, typed hyperparameters, final/best metrics
    curves.parquet            one row per (trial, epoch) with every reported metric
    best_config.yaml          the best trial's full config (for hscmae.train / tune_main.py --config)
    top_configs.yaml          the top-N trials' full configs
    hparam_ablation.{md,tex,parquet}, param_importance.parquet
    component_ablation.{md,tex,parquet}, component_runs.parquet   (--ablate)
    fig_curves, fig_params, fig_importance (.png and .pdf)
    summary.md

The best trial is chosen on validation only: the highest val_map at the last epoch among trials
that ran all epochs (the model a retrain of its config produces, and the only ones with test
scores). Same inputs give byte-identical parquet files (sorted rows, fixed columns and types, no
timestamps of the report run).
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import yaml

from hscmae import ablation
from hscmae.config import Config, ConfigError, config_from_dict
from hscmae.io import atomic_write, atomic_write_text
from search_spaces import trial_config

METRIC = "val_map"  # the search's objective (maximised); selection never looks at test
SPLIT_METRICS = ("val_map", "val_map_a2v", "val_map_v2a", "test_map", "test_map_a2v", "test_map_v2a")
# Columns of result.json that are Tune's bookkeeping, not measurements of the model.
BOOKKEEPING = {"timestamp", "date", "pid", "hostname", "node_ip", "node_id", "config", "checkpoint_dir_name",
               "done", "should_checkpoint", "trial_id", "training_iteration", "iterations_since_restore",
               "time_since_restore", "experiment_tag", "epoch"}
METRIC_ORDER = (*SPLIT_METRICS, "test_cca", "test_cca_reg", "test_cca_dim", "loss", "loss_recon", "loss_dcca", "loss_infonce",
                "loss_distill", "w_recon", "w_dcca", "w_infonce", "w_distill", "epoch_time_s",
                "time_this_iter_s", "time_total_s")
STATUS_LABEL = {"terminated": "ran all epochs", "stopped_early": "stopped early by ASHA",
                "errored": "errored", "running": "running", "pending": "pending", "paused": "paused"}


class ReportError(Exception):
    """The experiment folder is missing, empty or corrupt. The message names the path."""


# ------------------------------------------------------------------------------------------------
# Loading: the experiment folder -> DataFrames
# ------------------------------------------------------------------------------------------------
@dataclass
class Experiment:
    path: str
    name: str
    space: dict  # space.json: searched params with their ranges, fixed keys, ASHA settings
    base: dict  # base_config.yaml
    max_epochs: int
    trials: pd.DataFrame  # the rows of trials.parquet
    curves: pd.DataFrame  # the rows of curves.parquet
    params: list[str]  # every hyperparameter column of trials, searched ones first
    notes: list[str] = field(default_factory=list)  # things the reader should know (summary.md)

    @property
    def searched(self) -> dict[str, dict]:
        return self.space.get("params", {})

    def full_config(self, trial: pd.Series) -> dict:
        """base_config.yaml, then the space's fixed keys, then the trial's sampled params: what
        tune_main.py trained (search-only helpers such as one_minus_ema_momentum are dropped)."""
        sampled = {k: _py(trial[k]) for k in self.params if _present(trial[k])}
        try:
            return trial_config(self.base, self.space.get("fixed", {}), sampled).to_dict()
        except ConfigError as e:
            raise ReportError(f"{self.path}: trial {trial['trial_id']}'s config is not valid ({e})") from None


def _py(v):
    return v.item() if hasattr(v, "item") else v


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and v is not pd.NA


def resolve_experiment(arg: str) -> str:
    """A path, or a name under ./results (tune_main.py's default --storage)."""
    for path in (arg, os.path.join("results", arg)):
        if os.path.isdir(path):
            return os.path.abspath(path)
    if os.path.exists(arg):
        raise ReportError(f"{arg}: not a folder; expected a Tune experiment folder")
    raise ReportError(f"experiment folder {arg} not found" + ("" if os.path.isabs(arg) else f" (nor ./results/{arg})"))


def _read_json(path: str, what: str):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise ReportError(f"{path} missing: {what}") from None
    except (ValueError, OSError) as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from None


def read_results(path: str, finished: bool) -> list[dict]:
    """The reports in a trial's result.json (one JSON object per line). Tune appends a line, then
    its newline: a running trial's file may end in a partial line, which is skipped. A finished
    trial's (Tune's state says TERMINATED or ERROR) must end in a newline, and any line that does
    not parse is corruption: an error naming the file and line."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return []
    *complete, tail = raw.split(b"\n")
    if tail.strip() and finished:
        complete.append(tail)  # must parse like the others
    out = []
    for i, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ReportError(f"{path} line {i}: corrupt result line, not JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ReportError(f"{path} line {i}: corrupt result line, expected a JSON object")
        out.append(obj)
    return out


def read_state(exp: str) -> tuple[dict[str, dict], str | None]:
    """Tune's own record of each trial (status, failures), keyed by trial folder name, from the
    newest experiment_state-*.json (the one Tune itself restores from). Tune rewrites it in place
    while running, so an unreadable file is retried, then skipped with a note: the trial folders
    still say everything the report needs."""
    files = sorted(glob.glob(os.path.join(glob.escape(exp), "experiment_state-*.json")))
    if not files:
        return {}, None
    for attempt in range(3):
        try:
            with open(files[-1], "rb") as f:
                state = json.loads(f.read())
            out = {}
            for trial_json, meta_json in state["trial_data"]:
                t = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
                m = json.loads(meta_json) if isinstance(meta_json, str) else meta_json
                out[t["relative_logdir"]] = {"status": t.get("status"), "trial_id": t.get("trial_id"),
                                             "num_failures": m.get("num_failures")}
            return out, None
        except (ValueError, KeyError, TypeError, OSError):
            time.sleep(0.3)
    return {}, (f"{os.path.basename(files[-1])} was unreadable (being written?); trial statuses were "
                "inferred from the trial folders")


def _error_of(folder: str) -> tuple[str | None, int]:
    """(last line of error.txt, number of failures recorded in it). Tune appends one
    'Failure # n' block per failure; the last line of the last block is the exception."""
    path = os.path.join(folder, "error.txt")
    if not os.path.exists(path):
        return None, 0
    with open(path, errors="replace") as f:
        text = re.sub(r"\x1b\[[0-9;]*m", "", f.read())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    failures = sum(line.startswith("Failure #") for line in lines)
    return (lines[-1][:500] if lines else "error.txt is empty"), max(failures, 1)


def _status(state: str | None, errored: bool, last_epoch: int, done: bool, max_epochs: int) -> str:
    """terminated / stopped_early / errored / running / pending / paused. Tune marks ASHA's stops
    TERMINATED like normal ends; what tells them apart is stopping before max_epochs."""
    if state == "ERROR" or (state is None and errored):
        return "errored"
    if state in (None, "TERMINATED"):
        if last_epoch >= max_epochs:
            return "terminated"
        if state == "TERMINATED" or done:  # Tune sets done on the last report of a stopped trial
            return "stopped_early"
        return "running" if last_epoch else "pending"
    return state.lower()


def _trial_index(folder: str, trial_id: str | None) -> int | None:
    """Tune names trial folders <trainable>_<trial_id>_<index>_<params>_<date>; the index is the
    order in which the searcher created the trials."""
    m = re.search(re.escape(f"_{trial_id}_") + r"(\d+)(?:_|$)", folder) if trial_id else None
    m = m or re.search(r"_[0-9a-f]{5,}(?:_\d{5})?_(\d+)(?:_|$)", folder)
    return int(m.group(1)) if m else None


def _column_type(values: list, spec: dict | None) -> str:
    """'bool' / 'int' / 'float' / 'str': from the search space where known, else from the values."""
    if spec and spec.get("type") in ("int", "float"):
        return spec["type"]
    vals = [v for v in (spec.get("choices") if spec else values) if _present(v)]
    if vals and all(isinstance(v, bool) for v in vals):
        return "bool"
    if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return "int"
    if vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return "float"
    return "str"


def load_experiment(arg: str) -> Experiment:
    path = resolve_experiment(arg)
    if not os.listdir(path):
        raise ReportError(f"{path}: empty folder; expected an experiment folder written by tune_main.py")
    space = _read_json(os.path.join(path, "space.json"),
                       "tune_main.py records the search space there; report.py needs it")
    try:
        with open(os.path.join(path, "base_config.yaml")) as f:
            base = yaml.safe_load(f)
    except FileNotFoundError:
        raise ReportError(f"{os.path.join(path, 'base_config.yaml')} missing: tune_main.py records the base "
                          "config there; report.py needs it to rebuild full trial configs") from None
    except yaml.YAMLError as e:
        raise ReportError(f"{os.path.join(path, 'base_config.yaml')}: not valid YAML ({e})") from None
    if not isinstance(space, dict) or not isinstance(base, dict):
        raise ReportError(f"{path}: space.json and base_config.yaml must each hold a mapping")
    # (base + fixed alone need not be a valid config: the sampled params complete it)
    max_epochs = space.get("max_epochs") or {**base, **space.get("fixed", {})}.get("epochs") or Config.epochs
    if not isinstance(max_epochs, int) or max_epochs < 1:
        raise ReportError(f"{os.path.join(path, 'space.json')}: max_epochs must be a positive integer")

    folders = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")
                     and any(os.path.exists(os.path.join(e.path, f)) for f in ("params.json", "result.json")))
    if not folders:
        raise ReportError(f"{path}: no trials (no subfolder holding params.json or result.json)")
    state, note = read_state(path)
    notes = [note] if note else []

    trial_rows, curve_rows, params_by_trial = [], [], []
    for folder in folders:
        fpath = os.path.join(path, folder)
        st = state.get(folder, {})
        results = read_results(os.path.join(fpath, "result.json"), st.get("status") in ("TERMINATED", "ERROR"))
        by_epoch: dict[int, dict] = {}  # a retried / restored trial may re-report an epoch: keep the last
        for r in results:
            if isinstance(r.get("epoch"), (int, float)) and not isinstance(r.get("epoch"), bool):
                by_epoch[int(r["epoch"])] = r
        ppath = os.path.join(fpath, "params.json")
        params = _read_json(ppath, "") if os.path.exists(ppath) else (results[-1].get("config", {}) if results else {})
        if not isinstance(params, dict):
            raise ReportError(f"{ppath}: expected a JSON object of hyperparameters")
        trial_id = st.get("trial_id") or (results[0].get("trial_id") if results else None) or folder
        error, failures = _error_of(fpath)
        last = by_epoch[max(by_epoch)] if by_epoch else {}
        epochs = max(by_epoch) if by_epoch else 0
        status = _status(st.get("status"), error is not None, epochs, bool(last.get("done")), max_epochs)
        best_epoch = max(by_epoch, key=lambda e: (_num(by_epoch[e].get(METRIC)), -e)) if by_epoch else None
        best = by_epoch.get(best_epoch, {})
        row = {"trial_id": str(trial_id), "trial_index": _trial_index(folder, st.get("trial_id")),
               "trial_dir": folder, "status": status, "error": error if status == "errored" else None,
               "num_failures": int(st.get("num_failures") or failures), "epochs": epochs, "max_epochs": max_epochs}
        row.update({m: _opt_float(last.get(m)) for m in SPLIT_METRICS})
        test_cca = _opt_float(last.get("test_cca"))  # reported as 0.0 / 1.0: whether CCA was used
        row.update({"test_cca": None if test_cca is None else test_cca > 0.5, "loss": _opt_float(last.get("loss")),
                    "best_epoch": best_epoch, "best_val_map": _opt_float(best.get("val_map")),
                    "best_val_map_a2v": _opt_float(best.get("val_map_a2v")),
                    "best_val_map_v2a": _opt_float(best.get("val_map_v2a")),
                    "wall_time_s": _opt_float(last.get("time_total_s"))})
        trial_rows.append(row)
        params_by_trial.append(params)
        for e in sorted(by_epoch):
            r = by_epoch[e]
            curve_rows.append({"trial_id": row["trial_id"], "trial_index": row["trial_index"], "epoch": e,
                               **{k: float(v) for k, v in r.items() if k not in BOOKKEEPING
                                  and isinstance(v, (int, float)) and not isinstance(v, bool)}})

    searched = list(space.get("params", {}))
    params = searched + sorted({k for p in params_by_trial for k in p} - set(searched))
    kinds = {k: _column_type([p.get(k) for p in params_by_trial], space.get("params", {}).get(k)) for k in params}
    cast = {"int": int, "float": float, "bool": bool, "str": str}
    for row, p in zip(trial_rows, params_by_trial):
        for k in params:
            v = p.get(k)
            row[k] = cast[kinds[k]](v) if _present(v) else None

    trial_cols = {"trial_id": "str", "trial_index": "int", "trial_dir": "str", "status": "str", "error": "str",
                  "num_failures": "int", **kinds, "epochs": "int", "max_epochs": "int",
                  **{m: "float" for m in SPLIT_METRICS}, "test_cca": "bool", "loss": "float",
                  "best_epoch": "int", "best_val_map": "float", "best_val_map_a2v": "float",
                  "best_val_map_v2a": "float", "wall_time_s": "float"}
    seen = {k for r in curve_rows for k in r} - {"trial_id", "trial_index", "epoch"}
    metric_cols = [m for m in METRIC_ORDER if m in seen] + sorted(seen - set(METRIC_ORDER))
    curve_cols = {"trial_id": "str", "trial_index": "int", "epoch": "int", **{m: "float" for m in metric_cols}}
    order = lambda r: (r["trial_index"] if r["trial_index"] is not None else -1, r["trial_id"])  # noqa: E731
    trials = _frame(sorted(trial_rows, key=order), trial_cols)
    curves = _frame(sorted(curve_rows, key=lambda r: (*order(r), r["epoch"])), curve_cols)
    running = int(trials["status"].isin(["running", "pending", "paused"]).sum())
    if running:
        notes.append(f"the search is still running ({running} trial(s) running or pending): this report "
                     "is a snapshot")
    return Experiment(path=path, name=os.path.basename(path), space=space, base=base, max_epochs=max_epochs,
                      trials=trials, curves=curves, params=params, notes=notes)


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else -math.inf


def _opt_float(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


ARROW = {"str": "string", "int": "int64", "float": "float64", "bool": "bool"}


def _frame(rows: list[dict], cols: dict[str, str]) -> pd.DataFrame:
    """Rows -> DataFrame with exactly `cols` in that order; the column kinds travel in attrs so the
    parquet schema is fixed even when a column is all null."""
    import pyarrow as pa

    schema = pa.schema([(c, ARROW[k]) for c, k in cols.items()])
    table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows], schema=schema)
    df = table.to_pandas()
    df.attrs["schema"] = cols
    return df


def to_parquet_bytes(df: pd.DataFrame) -> bytes:
    """Deterministic parquet: the same rows give the same bytes (explicit schema, no index, no
    pandas metadata, which would carry the writer's library versions twice)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = df.attrs.get("schema") or {c: _kind_of(df[c]) for c in df.columns}
    schema = pa.schema([(c, ARROW[k]) for c, k in cols.items()])
    records = [{c: (None if not _present(v) else _py(v)) for c, v in zip(cols, row)}
               for row in df[list(cols)].itertuples(index=False, name=None)]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records, schema=schema), buf, compression="zstd")
    return buf.getvalue()


def _kind_of(s: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(s):
        return "bool"
    if pd.api.types.is_integer_dtype(s):
        return "int"
    if pd.api.types.is_float_dtype(s):
        return "float"
    return "str"


# ------------------------------------------------------------------------------------------------
# Analysis: best trials, hyperparameter tables, importance
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# Tables: Markdown and LaTeX (booktabs)
# ------------------------------------------------------------------------------------------------
def _pm(mean, std, digits: int = 3) -> tuple[str, str]:
    """('0.412 ± 0.010', LaTeX) or '-' when missing; std left out when undefined (one value)."""
    if not _present(mean):
        return "–", "--"
    if not _present(std):
        return f"{mean:.{digits}f}", f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}", f"{mean:.{digits}f} $\\pm$ {std:.{digits}f}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _tex_escape(s: str) -> str:
    return re.sub(r"([_%&#$])", r"\\\1", s)


def latex_table(headers: list[str], rows: list[list[str]], align: str, caption: str, label: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); cells are already LaTeX."""
    lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{caption}}}", f"\\label{{{label}}}",
             f"\\begin{{tabular}}{{{align}}}", "\\toprule", " & ".join(headers) + " \\\\", "\\midrule"]
    lines += [" & ".join(r) + " \\\\" for r in rows]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def hparam_markdown_latex(exp: Experiment, table: pd.DataFrame, imp: pd.DataFrame, how: str) -> tuple[str, str]:
    order = list(imp["param"]) + [p for p in exp.searched if p not in set(imp["param"])]
    table = table.assign(_o=table["param"].map({p: i for i, p in enumerate(order)})).sort_values(["_o"], kind="stable")
    md_rows, tex_rows = [], []
    for _, r in table.iterrows():
        md, tex = _pm(r["val_map_mean"], r["val_map_std"])
        n = f"{r['n']} ({r['n_full']})"
        md_rows.append([f"`{r['param']}`", r["bin"], n, md, f"{r['val_map_max']:.3f}"])
        tex_rows.append([f"\\texttt{{{_tex_escape(r['param'])}}}", _tex_escape(r["bin"]), n, tex, f"{r['val_map_max']:.3f}"])
    headers = ["Parameter", "Value", "Trials (full)", "val mAP", "best"]
    caption = (f"Validation mAP by searched value ({exp.name}): mean $\\pm$ std over trials of the final "
               f"val\\_map (ASHA-stopped trials at their last epoch); in brackets the trials that ran all "
               f"{exp.max_epochs} epochs.")
    md = (f"## Validation mAP by searched value\n\nFinal `val_map` per trial (ASHA-stopped trials at the epoch "
          f"they were stopped), mean ± std over trials; *Trials (full)*: trials (of which ran all "
          f"{exp.max_epochs} epochs). Parameters in order of importance.\n\n"
          + markdown_table(headers, md_rows))
    tex = latex_table(headers, tex_rows, "llrcc", caption, "tab:hparam-ablation")
    if len(imp):
        irows = [[str(r["rank"]), f"`{r['param']}`", f"{r['importance']:.3f}"] for _, r in imp.iterrows()]
        md += f"\n## Parameter importance\n\n{how}.\n\n" + markdown_table(["Rank", "Parameter", "Importance"], irows)
        tex += "\n" + latex_table(
            ["Rank", "Parameter", "Importance"],
            [[str(r["rank"]), f"\\texttt{{{_tex_escape(r['param'])}}}", f"{r['importance']:.3f}"]
             for _, r in imp.iterrows()], "rlr",
            f"Importance of the searched parameters for val\\_map ({_tex_escape(imp['evaluator'].iloc[0])}, "
            "normalised to sum to 1).", "tab:param-importance")
    else:
        md += f"\n## Parameter importance\n\n{how}.\n"
    return md, tex


def component_markdown_latex(rows: pd.DataFrame, seeds: int, trial_id: str) -> tuple[str, str]:
    headers_md = ["Model", "A→V", "V→A", "mean", "seeds"]
    headers_tex = ["Model", "A$\\to$V", "V$\\to$A", "Mean", "Seeds"]
    md_rows, tex_rows = [], []
    for _, r in rows.iterrows():
        cells = [_pm(r[f"{m}_mean"], r[f"{m}_std"]) for m in ("test_map_a2v", "test_map_v2a", "test_map")]
        seeds_cell = f"{r['n_ok']}/{r['n_seeds']}"
        md_rows.append([r["label"] + ("" if r["component"] == "full" else f" (`{r['changes']}`)"),
                        *[c[0] for c in cells], seeds_cell])
        tex_rows.append([_tex_escape(r["label"]), *[c[1] for c in cells], seeds_cell])
    epochs = rows["epochs"].dropna()
    ep = f", {int(epochs.iloc[0])} epochs" if len(epochs) else ""
    md = (f"## Component ablation (test mAP, mean ± std over {seeds} seed(s){ep})\n\n"
          f"Each row retrains the best config (trial `{trial_id}`) with one component switched off.\n\n"
          + markdown_table(headers_md, md_rows))
    tex = latex_table(headers_tex, tex_rows, "lcccc",
                      f"Component ablation: test retrieval mAP, mean $\\pm$ std over {seeds} seed(s){ep}; each "
                      f"row switches one component of the best configuration (trial {_tex_escape(trial_id)}) off.",
                      "tab:component-ablation")
    return md, tex


# ------------------------------------------------------------------------------------------------
# Figures (matplotlib, sized for a paper column: 3.5 in single, 7 in double)
# ------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
                         "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.0,
                         "svg.hashsalt": "hscmae", "pdf.fonttype": 42})
    return plt


def figure_bytes(fig) -> dict[str, bytes]:
    """PNG and PDF without a creation date, so the same report gives the same files."""
    out = {}
    for ext, kw in (("png", {"dpi": 300, "metadata": {"Software": None}}),
                    ("pdf", {"metadata": {"CreationDate": None, "Producer": None}})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, bbox_inches="tight", **kw)
        out[ext] = buf.getvalue()
    return out


def asha_rungs(space: dict, max_epochs: int) -> list[int]:
    """The epochs where ASHA can stop a trial (Tune's bracket s = 0: grace * rf^k below max_t)."""
    grace, rf = space.get("grace_period"), space.get("reduction_factor")
    if not grace or not rf or rf < 2:
        return []
    grace = min(grace, max_epochs)
    k_max = int(np.log(max_epochs / grace) / np.log(rf) + 1)
    return [r for r in (grace * rf ** k for k in range(k_max)) if r < max_epochs]


def fig_curves(exp: Experiment, best_id: str | None):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.5, 2.5))
    for r in asha_rungs(exp.space, exp.max_epochs):
        ax.axvline(r, color="0.8", ls=":", lw=0.8, zorder=0)
    style = {"terminated": ("C0", "-", "o"), "stopped_early": ("0.55", "-", "x"), "errored": ("C3", "--", "X")}
    status = dict(zip(exp.trials["trial_id"], exp.trials["status"]))
    seen = set()
    for tid, c in exp.curves.groupby("trial_id", sort=False):
        if c[METRIC].isna().all():
            continue
        st = status.get(tid, "running")
        color, ls, marker = style.get(st, ("C2", "--", ">"))
        label = None if st in seen else STATUS_LABEL.get(st, st)
        seen.add(st)
        ax.plot(c["epoch"], c[METRIC], color=color, ls=ls, alpha=0.85, label=label)
        ax.plot(c["epoch"].iloc[-1], c[METRIC].iloc[-1], marker=marker, color=color, ms=4, ls="none")
    if best_id is not None and best_id in set(exp.curves["trial_id"]):
        c = exp.curves[exp.curves["trial_id"] == best_id]
        ax.plot(c["epoch"], c[METRIC], color="C1", lw=1.8, label="best (selected on val)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mAP")
    ax.set_xlim(0.5, exp.max_epochs + 0.5)
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(loc="lower right", frameon=False)
    ax.set_title("Validation curves (dotted: ASHA rungs)")
    return fig


def fig_params(exp: Experiment, best_id: str | None):
    plt = _plt()
    ok = finished(exp)
    names = [p for p in exp.searched if p in ok]
    ncol = min(3, max(1, len(names)))
    nrow = max(1, math.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(7.0, 2.0 * nrow), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        spec = exp.searched[name]
        x = ok[name]
        if spec.get("type") == "categorical":  # positions, so non-numeric choices plot too
            choices = spec["choices"]
            x = x.map({c: i for i, c in enumerate(choices)})
            ax.set_xticks(range(len(choices)), [str(c) for c in choices])
        elif spec.get("log"):  # the whole searched range, so every panel spans a labelled decade
            ax.set_xscale("log")
            ax.set_xlim(spec["low"] / 1.2, spec["high"] * 1.2)
            ax.xaxis.set_minor_formatter(plt.NullFormatter())  # labelled minor ticks overlap at this size
        else:
            pad = 0.04 * (spec["high"] - spec["low"])
            ax.set_xlim(spec["low"] - pad, spec["high"] + pad)
        for st, marker, color in (("terminated", "o", "C0"), ("stopped_early", "x", "0.55")):
            m = (ok["status"] == st).to_numpy()
            ax.scatter(x[m], ok[METRIC][m], marker=marker, s=14, color=color, lw=0.8, label=STATUS_LABEL[st])
        m = (ok["trial_id"] == best_id).to_numpy()
        ax.scatter(x[m], ok[METRIC][m], marker="*", s=60, color="C1", zorder=3, label="best")
        ax.set_xlabel(name)
        ax.grid(alpha=0.3, lw=0.5)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("final val mAP")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def fig_importance(imp: pd.DataFrame, how: str):
    plt = _plt()
    n = max(1, len(imp))
    fig, ax = plt.subplots(figsize=(3.5, 0.3 * n + 0.9))
    if len(imp):
        ax.barh(range(len(imp))[::-1], imp["importance"], color="C0")
        ax.set_yticks(range(len(imp))[::-1], list(imp["param"]))
        ax.set_xlabel(f"importance for val mAP ({imp['evaluator'].iloc[0]})")
    else:
        ax.text(0.5, 0.5, "importance " + how, ha="center", va="center", wrap=True, transform=ax.transAxes)
        ax.set_axis_off()
    ax.grid(axis="x", alpha=0.3, lw=0.5)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _write(out: str, name: str, data: bytes | str, written: list[str]) -> None:
    path = os.path.join(out, name)
    if isinstance(data, str):
        atomic_write_text(path, data)
    else:
        atomic_write(path, lambda f: f.write(data))
    os.chmod(path, 0o666 & ~_UMASK)  # atomic_write's temp file is private (0600); a report is for sharing
    written.append(name)


def _yaml_header(exp: Experiment, what: str) -> str:
    return (f"# {what}\n# from experiment {exp.name}; chosen on validation (never on test)\n")


def write_report(exp: Experiment, out: str, top_n: int = 5, importance: str = "ped-anova") -> dict:
    """Everything but the component ablation and summary.md; returns facts for the summary."""
    os.makedirs(out, exist_ok=True)
    written: list[str] = []
    _write(out, "trials.parquet", to_parquet_bytes(exp.trials), written)
    _write(out, "curves.parquet", to_parquet_bytes(exp.curves), written)

    order, rule = ranked(exp)
    best = order.iloc[0] if len(order) else None
    if best is not None:
        cfg = exp.full_config(best)
        score = (f"val_map {best['val_map']:.4f}" + (f", test_map {best['test_map']:.4f}"
                                                     if _present(best["test_map"]) else ""))
        _write(out, "best_config.yaml", _yaml_header(exp, f"best trial {best['trial_id']}: {score}")
               + f"# rule: {rule}\n" + yaml.safe_dump(cfg, sort_keys=False), written)
        top = [{"rank": i + 1, "trial_id": r["trial_id"], "val_map": float(r["val_map"]),
                "test_map": float(r["test_map"]) if _present(r["test_map"]) else None,
                "config": exp.full_config(r)} for i, (_, r) in enumerate(order.head(top_n).iterrows())]
        _write(out, "top_configs.yaml", _yaml_header(exp, f"top {len(top)} trials by {rule}")
               + "# each item's `config` is a full config (as in best_config.yaml)\n"
               + yaml.safe_dump(top, sort_keys=False), written)

    table = hparam_table(exp)
    imp, how = param_importance(exp, importance)
    _write(out, "hparam_ablation.parquet", to_parquet_bytes(table), written)
    _write(out, "param_importance.parquet", to_parquet_bytes(imp), written)
    md, tex = hparam_markdown_latex(exp, table, imp, how)
    _write(out, "hparam_ablation.md", md, written)
    _write(out, "hparam_ablation.tex", tex, written)

    plt = _plt()
    best_id = best["trial_id"] if best is not None else None
    for stem, fig in (("fig_curves", fig_curves(exp, best_id)), ("fig_params", fig_params(exp, best_id)),
                      ("fig_importance", fig_importance(imp, how))):
        for ext, data in figure_bytes(fig).items():
            _write(out, f"{stem}.{ext}", data, written)
        plt.close(fig)
    return {"best": best, "rule": rule, "importance_how": how, "written": written}


def write_summary(exp: Experiment, out: str, facts: dict) -> None:
    t, best = exp.trials, facts["best"]
    counts = t["status"].value_counts()
    parts = [f"{int(counts[s])} {STATUS_LABEL.get(s, s)}" for s in STATUS_LABEL if s in counts]
    lines = [f"# Search report: {exp.name}", "",
             f"Experiment `{exp.path}`: {len(t)} trials ({', '.join(parts)}); at most {exp.max_epochs} epochs "
             f"per trial; space `{exp.space.get('name', '?')}`.", ""]
    lines += [f"> Note: {n}." for n in exp.notes] + ([""] if exp.notes else [])
    errored = t[t["status"] == "errored"]
    if len(errored):  # the reason is what a reader needs first (a diverged lr, a bad checkpoint ...)
        lines += ["## Errored trials", "",
                  markdown_table(["Trial", "Error"], [[f"`{r.trial_id}`", str(r.error).replace("|", "\\|")]
                                                      for r in errored.itertuples()]), ""]
    lines += ["## Best configuration", ""]
    if best is None:
        lines += ["No trial has a validation score yet.", ""]
    else:
        test = (f"test mAP **{best['test_map']:.4f}** (A→V {best['test_map_a2v']:.4f}, V→A "
                f"{best['test_map_v2a']:.4f})" if _present(best["test_map"]) else "no test score yet")
        lines += [f"Trial `{best['trial_id']}`, chosen by the {facts['rule']} (test is never used to choose): "
                  f"validation mAP **{best['val_map']:.4f}** (A→V {best['val_map_a2v']:.4f}, V→A "
                  f"{best['val_map_v2a']:.4f}); {test}.", "",
                  markdown_table(["Searched parameter", "Value"],
                                 [[f"`{p}`", _fmt(_py(best[p])) if isinstance(_py(best[p]), float) else str(_py(best[p]))]
                                  for p in exp.searched if p in best.index]),
                  "Full config: [best_config.yaml](best_config.yaml) (`python -m hscmae.train --config "
                  "best_config.yaml`, or `python tune_main.py --config best_config.yaml`); the top configs: "
                  "[top_configs.yaml](top_configs.yaml).", ""]
    lines += ["## Tables", "",
              "- Every trial: [trials.parquet](trials.parquet); every (trial, epoch) report: "
              "[curves.parquet](curves.parquet).",
              "- Hyperparameter ablation and importance: [Markdown](hparam_ablation.md), "
              "[LaTeX](hparam_ablation.tex), [parquet](hparam_ablation.parquet), "
              f"[importance parquet](param_importance.parquet). Importance: {facts['importance_how']}."]
    comp = os.path.join(out, "component_ablation.md")
    if os.path.exists(comp):
        lines += ["- Component ablation: [Markdown](component_ablation.md), [LaTeX](component_ablation.tex), "
                  "[parquet](component_ablation.parquet), per seed: [component_runs.parquet](component_runs.parquet).",
                  ""]
        with open(comp) as f:
            lines += [f.read().replace("## ", "### ", 1)]
    else:
        lines += [f"- Component ablation: not run yet (`python report.py --ablate {exp.path}`).", ""]
    lines += ["## Figures", "",
              "Validation curves of every trial (× = stopped by ASHA, dotted lines = ASHA rungs):", "",
              "![validation curves](fig_curves.png) ([PDF](fig_curves.pdf))", "",
              "Final validation mAP against each searched parameter:", "",
              "![mAP by parameter](fig_params.png) ([PDF](fig_params.pdf))", "",
              "Parameter importance:", "", "![importance](fig_importance.png) ([PDF](fig_importance.pdf))", ""]
    _write(out, "summary.md", "\n".join(lines), facts["written"])


# ------------------------------------------------------------------------------------------------
# Component ablation: retrain the best config with each part off, as Ray tasks
# ------------------------------------------------------------------------------------------------
def run_ablation(exp: Experiment, out: str, best: pd.Series | None, seeds: int, epochs: int | None,
                 address: str | None, num_cpus: int | None, log=print) -> list[str]:
    from hscmae.data import load_data

    if best is None:
        raise ReportError(f"{exp.path}: no trial with a validation score, so no best config to ablate")
    cfg = config_from_dict(exp.full_config(best))
    runs = ablation.ablation_runs(cfg, seeds, epochs)
    data = load_data(cfg.data, cfg.split_seed)
    recorded = os.path.join(exp.path, "data.json")
    if os.path.exists(recorded):
        fp = _read_json(recorded, "").get("fingerprint")
        if fp and fp != data.fingerprint():
            raise ReportError(f"{recorded}: the search ran on different data than {cfg.data} loads here "
                              "(fingerprints differ); the ablation would not be comparable")
    for r in runs:
        if r.config is not None:
            r.config.validate(n_train=len(data.splits["train"]))

    import ray

    from harness.ray_setup import init_ray

    init_ray(address, num_cpus)
    try:
        data_ref = ray.put(data)  # once: every task reads the same object
        task = ray.remote(num_cpus=1)(ablation.train_one)
        todo = {task.remote(r.config.to_dict(), data_ref): i for i, r in enumerate(runs) if r.config is not None}
        results: list[dict] = [{"error": r.changes} if r.config is None else {} for r in runs]
        pending, t0 = list(todo), time.time()
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = todo[done[0]]
            results[i] = ray.get(done[0])
            r, res = runs[i], results[i]
            msg = f"test_map {res['test_map']:.4f}" if "test_map" in res else f"error: {res['error'][:120]}"
            log(f"[report] ablation {len(todo) - len(pending)}/{len(todo)} ({time.time() - t0:.0f}s): "
                f"{r.component} seed {r.seed}: {msg}")
    finally:
        ray.shutdown()

    per_seed = _frame([{"component": r.component, "seed": r.seed, "epochs": r.config.epochs if r.config else None,
                        **{m: res.get(m) for m in (*ablation.METRICS, "test_cca")}, "error": res.get("error")}
                       for r, res in zip(runs, results)],
                      {"component": "str", "seed": "int", "epochs": "int",
                       **{m: "float" for m in (*ablation.METRICS, "test_cca")}, "error": "str"})
    summary = _frame(ablation.summarise(runs, results),
                     {"component": "str", "label": "str", "changes": "str", "epochs": "int", "n_seeds": "int",
                      "n_ok": "int", "error": "str",
                      **{f"{m}_{s}": "float" for m in ablation.METRICS for s in ("mean", "std")}})
    written: list[str] = []
    _write(out, "component_runs.parquet", to_parquet_bytes(per_seed), written)
    _write(out, "component_ablation.parquet", to_parquet_bytes(summary), written)
    md, tex = component_markdown_latex(summary, len({r.seed for r in runs}), best["trial_id"])
    _write(out, "component_ablation.md", md, written)
    _write(out, "component_ablation.tex", tex, written)
    return written


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python report.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", help="experiment folder, or its name under ./results")
    p.add_argument("--out", default=None, help="output folder (default: <experiment>/report)")
    p.add_argument("--top", type=int, default=5, help="configs in top_configs.yaml (default 5)")
    p.add_argument("--importance", choices=("ped-anova", "fanova"), default="ped-anova",
                   help="Optuna importance evaluator (default ped-anova; see summary.md for why)")
    p.add_argument("--ablate", action="store_true", help="also retrain the best config with each component off")
    p.add_argument("--seeds", type=int, default=3, help="--ablate: seeds per row (default 3)")
    p.add_argument("--epochs", type=int, default=None, help="--ablate: override epochs (quick runs)")
    p.add_argument("--address", default=None, help="--ablate: Ray cluster to run on (auto, ray://host:10001)")
    p.add_argument("--num-cpus", type=int, default=None, help="--ablate: CPUs of a local Ray (default: all)")
    args = p.parse_args(argv)
    for flag in ("top", "seeds", "epochs", "num_cpus"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {v}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hscmae.data import DataError

    try:
        exp = load_experiment(args.experiment)
        out = os.path.abspath(args.out or os.path.join(exp.path, "report"))
        facts = write_report(exp, out, top_n=args.top, importance=args.importance)
        if args.ablate:
            facts["written"] += run_ablation(exp, out, facts["best"], args.seeds, args.epochs, args.address,
                                             args.num_cpus)
        write_summary(exp, out, facts)
    except (ReportError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for n in exp.notes:
        print(f"[report] note: {n}")
    best = facts["best"]
    if best is not None:
        test = f", test_map {best['test_map']:.4f}" if _present(best["test_map"]) else ""
        print(f"[report] best trial {best['trial_id']}: val_map {best['val_map']:.4f}{test}")
    print(f"[report] wrote {len(facts['written'])} files to {out}: {', '.join(sorted(facts['written']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
