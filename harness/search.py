"""One search as `tune_main.py` runs it, once its command line has been checked (`prepare`): the
resume checks (space, data, the study's flags), Ray, the metadata files, the Tuner (harness/tuner.py)
and its fit under our signal handling (harness/interrupt.py), then the summary."""
from __future__ import annotations

import json
import os
import shlex
import sys
import time

import yaml

from hscmae.config import Config, ConfigError
from harness import METRIC, MODE, UsageError, branch, stopping, study
from harness.callbacks import make_progress_callback
from harness.interrupt import Interrupts, count_trials, resume_command, saved_trial_states
from harness.ray_setup import gpu_slots, init_ray
from harness.storage import lock_experiment, read_text, versions, write_metadata
from harness.tune_state import atomic_experiment_state

# Persist the experiment state every few seconds (Tune's default adapts to minutes), so a driver
# killed with SIGKILL loses at most that much bookkeeping; trial checkpoints are separate.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")


def _error(msg) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def run_search(args, run: dict, interrupts: Interrupts, argv: list[str]) -> int:
    """run: what tune_main.prepare returned (space, base, overrides, probe, data, name, exp,
    num_samples, max_concurrent). Returns the exit code."""
    try:  # before anything reads the folder: a second driver on it would run trials into it too
        lock = lock_experiment(run["exp"])
    except UsageError as e:
        return _error(e)
    try:
        return _run_search(args, run, interrupts, argv)
    finally:
        if lock is not None:
            lock.close()  # a later search in this process (tests call main() twice) may take it


def _run_search(args, run: dict, interrupts: Interrupts, argv: list[str]) -> int:
    import optuna
    from ray import tune

    from harness.study_search import make_search_alg
    from harness.tuner import build_tuner

    space, exp = run["space"], run["exp"]
    local = "://" not in exp
    exists = tune.Tuner.can_restore(exp) if (not local or os.path.isdir(exp)) else False
    try:  # --from OLD: its finished trials that fit this space (harness/branch.py), checked before anything
        inherit = branch.prepare(args, run, exists)
    except UsageError as e:
        return _error(e)
    if args.resume and not exists:
        return _error(f"--resume: no experiment to resume at {exp}")
    if exists:
        try:  # another space explains every other difference (data included): say it first
            study.check_space(space, exp)
        except UsageError as e:
            return _error(e)
        old = read_text(exp, "data.json")
        if old and json.loads(old).get("fingerprint") != run["data"].fingerprint():
            return _error(f"{exp} was run on different data (fingerprint in data.json differs); use another --name")
    max_epochs = run["probe"].epochs
    grace = min(args.grace_period or space.grace_period, max_epochs)
    rf = args.reduction_factor or space.reduction_factor
    try:  # the Optuna study, warm start, MLflow; on resume, the flags it cannot honour
        plan = study.plan(args, space, run["base"], run["name"], exp, exists, run["num_samples"],
                          run["max_concurrent"], max_epochs, grace, rf, overrides=run.get("overrides"))
    except (UsageError, ConfigError) as e:
        return _error(e)
    branch.merge(plan, inherit)  # study.json records the inheritance: a --resume adds nothing again
    try:  # --stop-after / --time-budget (harness/stopping.py), recorded in study.json with the plan
        plan.update(stop_conf := stopping.settings(args, plan))
        stopper = stopping.make(exp, stop_conf, fresh=not exists)
    except UsageError as e:
        return _error(e)
    if stopper is not None and exists and (line := stopper.already_stopped(resume_command(argv))):
        print(line, flush=True)
        return 0
    cpus, gpus = args.cpus_per_trial, args.gpus_per_trial
    interrupts.search = dict(exp=exp, num_samples=run["num_samples"], max_epochs=max_epochs)
    atomic_experiment_state()  # a SIGKILL mid-save must not leave an empty experiment state
    init_ray(args.address)
    interrupts.install()  # ray.init replaced our SIGTERM handler (with one that saves nothing)
    if gpus:
        try:
            slots = gpu_slots(gpus, cpus, "--gpus-per-trial")
        except UsageError as e:
            import ray

            ray.shutdown()
            return _error(e)
        run["max_concurrent"] = plan["max_concurrent"] = run["max_concurrent"] or slots
        print(f"[hscmae] {gpus:g} GPU(s) and {cpus} CPU(s) per trial: {run['max_concurrent']} trial(s) at once",
              flush=True)
    common = dict(data=run["data"], base=run["base"], fixed=space.fixed, max_epochs=max_epochs, grace_period=grace,
                  reduction_factor=rf, checkpoint_every=args.checkpoint_every or space.checkpoint_every,
                  cpus=cpus, gpus=gpus)
    t0 = time.time()
    if exists:
        print(f"[hscmae] resuming {exp}", flush=True)
        if not plan.get("legacy"):
            if plan["extend_from"]:
                print(f"[hscmae] extending the search from {plan['extend_from']} to {plan['num_samples']} trials",
                      flush=True)
            # where the experiment is now and how many trials are wanted: the restored searcher reads it
            study.record(exp, plan)
        stopping.clear_marker(exp)  # it goes on: no longer the stopped search
        tuner = build_tuner(exp, restore=True, stop=stopper, **common)
    else:
        write_metadata(exp, {
            "command.txt": shlex.join([sys.executable, *sys.argv]) + "\n",
            "space.json": json.dumps({**space.describe(), "max_epochs": max_epochs,
                                      "num_samples": run["num_samples"], "max_concurrent": run["max_concurrent"],
                                      "seed": args.seed, "metric": METRIC, "mode": MODE}, indent=2) + "\n",
            "base_config.yaml": yaml.safe_dump(run["base"], sort_keys=False),
            "versions.json": json.dumps(versions(), indent=2) + "\n",
            "data.json": json.dumps({"source": run["probe"].data, "split_seed": run["probe"].split_seed,
                                     "n_clips": len(run["data"]), "fingerprint": run["data"].fingerprint(),
                                     "temporal_pool": run["probe"].temporal_pool, "normalize": run["probe"].normalize,
                                     "provenance": run["data"].meta}, indent=2) + "\n"})
        study.record(exp, plan)
        search_alg, study_callbacks = make_search_alg(plan, space, exp, optuna.samplers.TPESampler(seed=args.seed),
                                                      inherit=inherit)
        tuner = build_tuner(exp, num_samples=run["num_samples"], search_alg=search_alg,
                            callbacks=[make_progress_callback(run["num_samples"], max_epochs), *study_callbacks,
                                       *([stopper] if stopper else [])],
                            stop=stopper, max_failures=args.max_failures, **common)
    if study.dashboard_command(plan, exp):
        print(f"[hscmae] Optuna study {run['name']!r}; watch it with: {study.dashboard_command(plan, exp)}",
              flush=True)
    results = interrupts.fit(tuner)  # None if a third signal cut the final save short
    code = finish(results, interrupts, argv, time.time() - t0)
    for line in stopping.final_lines(stopper) if code == 0 else ():
        print(line, flush=True)
    return code


def finish(results, interrupts: Interrupts, argv: list[str], seconds: float = 0.0) -> int:
    """The summary; if a signal stopped the search, the status block, the resume command and 130 / 143."""
    search = interrupts.search
    if search is None:  # interrupted before the experiment was even named: nothing ran
        print(f"\n[hscmae] interrupted ({interrupts.signal_name}) before the search started; nothing was run",
              flush=True)
        return interrupts.exit_code
    exp, n, max_epochs = search["exp"], search["num_samples"], search["max_epochs"]
    states = saved_trial_states(exp)  # Tune's saved state: what a resume restores
    if results is not None:
        print_summary(results, exp, max_epochs, seconds, states)
    if interrupts.signum is None:
        return 0
    if states is not None and count_trials(states, n, max_epochs)["finished"] == n:
        print(f"[hscmae] ({interrupts.signal_name} arrived as the last trial finished: the search is complete)")
        return 0
    interrupts.report(exp, argv, n, max_epochs, states)
    return interrupts.exit_code


def print_summary(results, exp: str, max_epochs: int, seconds: float,
                  states: dict[str, tuple[str, int]] | None = None) -> None:
    """states: each trial's Tune status and last epoch (harness.interrupt.saved_trial_states); without
    it, from the results (errored; ended at its last reported epoch; never reported: not started).
    Counts come from these states, never from which metrics a result happens to have."""
    if states is None:
        epochs = [int((r.metrics or {}).get("epoch") or 0) for r in results]
        states = {str(i): ("ERROR" if r.error else "TERMINATED" if e else "PENDING", e)
                  for i, (r, e) in enumerate(zip(results, epochs))}
    c = count_trials(states, len(states), max_epochs)
    errored = [r for r in results if r.error]
    ok = [r for r in results if not r.error and METRIC in (r.metrics or {})]
    unfinished = "".join(f", {v} {what}" for v, what in ((c["running"], "interrupted while running"),
                                                         (c["not_started"], "not started")) if v)
    # seconds is this command's run: after --resume that is only the resumed part of the search
    print(f"\n[hscmae] {len(states)} trials ({seconds / 60:.1f} min in this run): {c['full']} ran all "
          f"{max_epochs} epochs, {c['early']} stopped early by ASHA, {c['errored']} errored{unfinished}")
    for r in errored:
        print(f"  errored: {r.path}: {str(r.error).strip().splitlines()[-1][:200]}")
    if not ok:
        print(f"[hscmae] no trial reported {METRIC} yet; results in {exp}")
        return
    # best by validation, among trials that trained all epochs (a stopped trial has no test score)
    full = [r for r in ok if "test_map" in r.metrics] or ok
    best = max(full, key=lambda r: r.metrics[METRIC])
    known = Config.__dataclass_fields__
    print("[hscmae] best config (by val_map):")
    for k, v in sorted((best.config or {}).items()):
        if k in known or k.startswith("one_minus"):
            print(f"    {k}: {v}")
    m = best.metrics
    test = f"test_map {m['test_map']:.4f} (a2v {m['test_map_a2v']:.4f}, v2a {m['test_map_v2a']:.4f})" \
        if "test_map" in m else "no test score (did not run all epochs)"
    print(f"[hscmae] best val_map {m[METRIC]:.4f} (a2v {m['val_map_a2v']:.4f}, v2a {m['val_map_v2a']:.4f}); {test}")
    print(f"[hscmae] results in {exp}  (report: python report.py {exp})")
