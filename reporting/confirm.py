"""`report.py --confirm K`: retrain a search's top K configs (and the base config) over seeds and
choose by the *mean* validation mAP, so that the answer is not the luckiest seed (issue 22).

The configs: the K trials with the highest final val_map among those that ran all epochs, plus the
base config (base_config.yaml + the space's fixed keys: the warm-start trial's config), even when
ASHA stopped its trial. Each is trained with S seeds (cfg.seed, cfg.seed + 1, ...) for `epochs`
epochs (default: the base config's own epochs when longer than the search's, so the answer is
chosen at the length users train); where the epochs are the search's, the trial itself is the
first seed and is not run again. Every run's result is stored in <report>/confirm_runs/ as it
finishes (atomically, named by a hash of its full config), so an interrupted confirm keeps what
finished and the same command again runs only what is missing.

Writes confirmed.{md,tex,parquet} (per config: search val, val and test mean +- std over the seeds,
each seed's values, the rank before and after) and best_config.yaml from the confirmed choice
(the single-seed choice kept as best_config_single_seed.yaml). Choice on validation only.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

import pandas as pd
import yaml

from hscmae.ablation import _mean_std
from hscmae.config import ConfigError, config_from_dict
from hscmae.io import atomic_write_json
from reporting.analysis import ranked, warm_start
from reporting.experiment import Experiment, ReportError, load_search_data
from reporting.frames import _frame, _present, to_parquet_bytes
from reporting.tables import _pm, _tex_escape, latex_table, markdown_table
from reporting.writing import _write, _yaml_header
from search_spaces import trial_config

RUNS = "confirm_runs"
BASE = "base config"


def run_key(config: dict) -> str:
    """A run's identity: every key of its full config (seed and epochs included)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def candidates(exp: Experiment, k: int) -> list[dict]:
    """[{name, trial_id or None, search_rank or None, search_val or None, config}] : the top k
    full-length trials by final val_map, then the base config (unless it is one of them)."""
    order, _ = ranked(exp)
    full = order[order["status"] == "terminated"] if "status" in order else order
    out = [{"name": str(r["trial_id"]), "trial_id": str(r["trial_id"]), "search_rank": i + 1,
            "search_val": float(r["val_map"]), "config": exp.full_config(r)}
           for i, (_, r) in enumerate(full.head(k).iterrows())]
    # the base config as the search ran it: the warm-start trial (study.json's point: the base
    # config's values, moved into the space where they fell outside), even when ASHA stopped it
    warm, r = warm_start(exp)
    if warm is None:
        return out
    try:
        base = exp.full_config(r) if r is not None else trial_config(exp.base, exp.space.get("fixed", {}), warm).to_dict()
    except (ReportError, ConfigError) as e:
        raise ReportError(f"{exp.path}: the base config is not valid ({e})") from None
    same = [c for c in out if c["config"] == base]
    if same:
        same[0]["name"] += f" ({BASE})"
    else:
        out.append({"name": BASE, "trial_id": str(r["trial_id"]) if r is not None else None, "search_rank": None,
                    "search_val": float(r["val_map"]) if r is not None and _present(r["val_map"]) else None,
                    "config": base})
    return out


def plan(exp: Experiment, k: int, seeds: int, epochs: int | None) -> tuple[int, list[dict], list[dict]]:
    """(epochs, runs, candidates): one run per (candidate, seed), each {candidate index, seed, config, key,
    reuse: the search trial's final scores when that trial is this very run}."""
    if k < 1 or seeds < 1:
        raise ReportError(f"--confirm {k} --seeds {seeds}: both must be >= 1")
    cands = candidates(exp, k)
    if epochs is None:
        own = int(exp.base.get("epochs") or exp.max_epochs)
        epochs = max(own, exp.max_epochs)
    runs = []
    for ci, c in enumerate(cands):
        for s in range(seeds):
            cfg = {**c["config"], "epochs": epochs, "seed": c["config"]["seed"] + s}
            cfg = config_from_dict(cfg).to_dict()
            reuse = None
            if s == 0 and c["trial_id"] is not None and epochs == exp.max_epochs:
                row = exp.trials[exp.trials["trial_id"] == c["trial_id"]].iloc[0]
                if row["status"] == "terminated" and _present(row["test_map"]):
                    reuse = {m: float(row[m]) for m in ("val_map", "test_map", "test_map_a2v", "test_map_v2a")}
            runs.append({"candidate": ci, "seed": cfg["seed"], "config": cfg, "key": run_key(cfg), "reuse": reuse})
    return epochs, [dict(r, name=cands[r["candidate"]]["name"]) for r in runs], cands


def stored(out: str, key: str) -> dict | None:
    path = os.path.join(out, RUNS, f"{key}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rec = json.load(f)
    return rec.get("result")


def store(out: str, run: dict, result: dict) -> None:
    atomic_write_json(os.path.join(out, RUNS, f"{run['key']}.json"),
                      {"name": run["name"], "seed": run["seed"], "config": run["config"], "result": result})


COLUMNS = {"config": "str", "trial_id": "str", "search_rank": "int", "search_val_map": "float", "n_seeds": "int",
           "n_ok": "int", "val_map_mean": "float", "val_map_std": "float", "test_map_mean": "float",
           "test_map_std": "float", "seeds": "str", "val_maps": "str", "test_maps": "str", "errors": "str",
           "confirmed_rank": "int", "rank_change": "int"}


def summarise(cands: list[dict], runs: list[dict], results: list[dict]) -> pd.DataFrame:
    """One row per candidate, in confirmed order: by mean val_map over its finished seeds (never
    test); a candidate with no finished seed last; ties keep the search's order."""
    rows = []
    for ci, c in enumerate(cands):
        mine = [(r, res) for r, res in zip(runs, results) if r["candidate"] == ci]
        ok = [(r, res) for r, res in mine if res and "error" not in res]
        vals, tests = [res["val_map"] for _, res in ok], [res["test_map"] for _, res in ok]
        (vm, vs), (tm, ts) = _mean_std(vals), _mean_std(tests)
        rows.append({"config": c["name"], "trial_id": c["trial_id"], "search_rank": c["search_rank"],
                     "search_val_map": c["search_val"], "n_seeds": len(mine), "n_ok": len(ok),
                     "val_map_mean": vm, "val_map_std": vs, "test_map_mean": tm, "test_map_std": ts,
                     "seeds": ",".join(str(r["seed"]) for r, _ in ok),
                     "val_maps": ",".join(repr(v) for v in vals), "test_maps": ",".join(repr(v) for v in tests),
                     "errors": "; ".join(sorted({res["error"].splitlines()[0] for _, res in mine
                                                 if res and "error" in res})) or None})
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["val_map_mean"] if rows[i]["n_ok"] else math.inf, i))
    for rank, i in enumerate(order, 1):
        r = rows[i]
        r["confirmed_rank"] = rank
        r["rank_change"] = None if r["search_rank"] is None else r["search_rank"] - rank
    return _frame([rows[i] for i in order], COLUMNS)


def write_confirmed(exp: Experiment, out: str, cands: list[dict], table: pd.DataFrame, seeds: int,
                    epochs: int) -> list[str]:
    written: list[str] = []
    _write(out, "confirmed.parquet", to_parquet_bytes(table), written)
    head = ["config", "search rank", "search val", f"val ({seeds} seeds)", f"test ({seeds} seeds)", "rank now",
            "change"]
    md, tex = [], []
    for _, r in table.iterrows():
        (vmd, vtex), (tmd, ttex) = (_pm(r["val_map_mean"], r["val_map_std"], 4),
                                    _pm(r["test_map_mean"], r["test_map_std"], 4))
        rank = "-" if not _present(r["search_rank"]) else str(int(r["search_rank"]))
        val = "-" if not _present(r["search_val_map"]) else f"{r['search_val_map']:.4f}"
        change = "-" if not _present(r["rank_change"]) else f"{int(r['rank_change']):+d}"
        md.append([r["config"], rank, val, vmd, tmd, str(int(r["confirmed_rank"])), change])
        tex.append([_tex_escape(r["config"]), rank, val, vtex, ttex, str(int(r["confirmed_rank"])), change])
    caption = (f"The top configs of {exp.name} and its base config retrained over {seeds} seeds at {epochs} "
               "epochs, chosen by the mean validation mAP (test is reported, never chosen on). Change: search "
               "rank minus confirmed rank (+ = moved up).")
    _write(out, "confirmed.md", caption + "\n\n" + markdown_table(head, md), written)
    _write(out, "confirmed.tex", latex_table(head, tex, "lrrrrrr", _tex_escape(caption), "tab:confirmed"), written)
    best = table.iloc[0]
    if not int(best["n_ok"]):
        return written
    cfg = {**next(c for c in cands if c["name"] == best["config"])["config"], "epochs": epochs}
    single = os.path.join(out, "best_config.yaml")
    if os.path.exists(single):
        with open(single) as f:
            _write(out, "best_config_single_seed.yaml", f.read(), written)
    score = _pm(best["val_map_mean"], best["val_map_std"], 4)[0]
    _write(out, "best_config.yaml", _yaml_header(
        exp, f"confirmed best: {best['config']}, mean val_map {score} over {int(best['n_ok'])} seeds at {epochs} "
             "epochs (report.py --confirm; the single-seed choice is in best_config_single_seed.yaml)")
        + yaml.safe_dump(cfg, sort_keys=False), written)
    return written


def run_confirm(exp: Experiment, out: str, k: int, seeds: int, epochs: int | None, address: str | None,
                num_cpus: int | None, log=print, gpus_per_task: float = 0.0) -> tuple[list[str], pd.DataFrame]:
    """Plan, run what is missing as Ray tasks, write the tables. Raises RetrainsInterrupted after a
    signal (what finished is stored and written): reporting.ablation_runs.RetrainsInterrupted."""
    from reporting.ablation_runs import RetrainsInterrupted, _StopOnSignal, retrain_on_ray

    epochs, runs, cands = plan(exp, k, seeds, epochs)
    data = load_search_data(exp, config_from_dict(runs[0]["config"]), "the confirmed scores would not be comparable")
    for r in runs:
        config_from_dict(r["config"]).validate(n_train=len(data.splits["train"]))
    results: list[dict] = [r["reuse"] or stored(out, r["key"]) or {} for r in runs]
    todo = [i for i, res in enumerate(results) if not res or "error" in res]
    log(f"[report] confirm: {len(cands)} configs x {seeds} seeds at {epochs} epochs: {len(runs) - len(todo)} known "
        f"(search trials or stored runs), {len(todo)} to train")
    stop = None
    if todo:
        from harness.ray_setup import init_ray

        init_ray(address, num_cpus)
        stop = _StopOnSignal()  # after ray.init, which replaces SIGTERM's handler
        try:
            done = retrain_on_ray([runs[i]["config"] for i in todo], data, stop, gpus_per_task,
                                  describe=lambda j: f"{runs[todo[j]]['name']} seed {runs[todo[j]]['seed']}",
                                  on_result=lambda j, res: store(out, runs[todo[j]], res), log=log, what="confirm")
        finally:
            stop.restore()
        for i, res in zip(todo, done):
            results[i] = res
    table = summarise(cands, runs, results)
    written = write_confirmed(exp, out, cands, table, seeds, epochs)
    from harness.study import record_confirmed

    try:  # the dashboard's view of the study: the confirmed means beside the single-seed values
        where = record_confirmed(exp.path, table)
    except Exception as e:  # a storage that cannot be written now costs the attributes, not the tables
        log(f"[report] confirm: the Optuna study was not updated ({' '.join(str(e).split())[:200]})")
    else:
        if where:
            log(f"[report] confirm: the confirmed means are user attributes of the Optuna study in {where}")
    missing = sum(not res or "error" in res for res in results)
    if stop is not None and stop.signum is not None and missing:
        raise RetrainsInterrupted(stop.signum, len(runs) - missing, len(runs), written)
    return written, table

