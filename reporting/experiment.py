"""Reading a Tune experiment folder (JSON / YAML only, never its pickles) into DataFrames."""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field

import pandas as pd
import yaml

from harness.interrupt import MARKER
from hscmae.config import Config, ConfigError
from reporting.frames import _frame, _num, _opt_float, _present, _py
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
    from harness.tune_state import newest_state_file, read_raw, trial_records

    for attempt in range(3):
        try:
            got = read_raw(exp)
            if got is None:
                return {}, None
            return {t["relative_logdir"]: {"status": t["status"], "trial_id": t["trial_id"],
                                           "num_failures": t["num_failures"]} for t in trial_records(got[1])}, None
        except (ValueError, KeyError, TypeError, OSError):
            time.sleep(0.3)
    name = os.path.basename(newest_state_file(exp) or "experiment_state-*.json")
    return {}, (f"{name} was unreadable (being written?); trial statuses were "
                "inferred from the trial folders")


def _interruption(exp: str) -> dict | None:
    """interrupted.json, which tune_main.py writes when a signal stops the search after Tune saved
    its state (and removes when a resumed search starts): Tune's own state cannot tell an
    interrupted search from a running one (both list RUNNING trials)."""
    path = os.path.join(exp, MARKER)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            v = json.load(f)
    except (OSError, ValueError):
        v = None
    return v if isinstance(v, dict) and v else {"signal": f"a signal; {MARKER} unreadable"}


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
    from harness.stopping import read_marker

    stopped = _interruption(path)
    if stopped:  # Tune's state still says RUNNING/PENDING: that is where the resume goes on from
        notes.append(f"the search was interrupted ({stopped.get('signal', 'a signal')} at {stopped.get('at', '?')}"
                     f"; {running} trial(s) were running or pending): this report is a snapshot; resume with: "
                     f"{stopped.get('resume', 'the same tune_main.py command with --resume')}")
    elif running and (read_marker(path) or {}).get("reason") != "time_budget":  # paused by it (summary_lines)
        notes.append(f"the search is still running ({running} trial(s) running or pending): this report "
                     "is a snapshot")
    return Experiment(path=path, name=os.path.basename(path), space=space, base=base, max_epochs=max_epochs,
                      trials=trials, curves=curves, params=params, notes=notes)



def load_search_data(exp: Experiment, cfg, purpose: str):
    """The data set `cfg` loads here, refused (ReportError) when it is not what the search ran on
    (data.json's fingerprint): `purpose` says what would not be comparable."""
    from hscmae.data import load_data_for

    data = load_data_for(cfg)
    recorded = os.path.join(exp.path, "data.json")
    if os.path.exists(recorded):
        fp = _read_json(recorded, "").get("fingerprint")
        if fp and fp != data.fingerprint():
            raise ReportError(f"{recorded}: the search ran on different data than {cfg.data} loads here "
                              f"(fingerprints differ); {purpose}")
    return data
