"""Hyperparameter search for HSC-MAE on Ray Tune: OptunaSearch (TPE) proposes, ASHA stops early.

    python tune_main.py --space default            # search (or resume, if the experiment exists)
    python tune_main.py --space default --resume   # resume; fails if there is nothing to resume
    python tune_main.py --list-spaces

Every check that can fail (flags, config, space, data, storage) runs before Ray starts. The data
set is loaded once here and shared with all trials through Ray's object store. Each trial reports
validation metrics every epoch and saves a Tune checkpoint every few epochs, so a restored or
preempted trial continues from its last checkpoint; Tuner.restore brings back finished trials
and the trials still to run, and the Optuna study is reloaded from its storage (harness/study.py),
so a resumed search runs exactly --num-samples; a larger --num-samples extends a finished search.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time

import yaml

from hscmae.config import Config, ConfigError, load_config
from hscmae.data import DataError, load_data_for
from harness import METRIC, MODE, UsageError, asha_rungs, study
from harness.callbacks import make_progress_callback
from harness.tune_state import atomic_experiment_state
from harness.interrupt import Interrupts, caused_by_signal, count_trials, leave_now, saved_trial_states
from harness.ray_setup import check_gpus_per_trial, gpu_slots, init_ray
from harness.storage import check_storage, experiment_path, read_text, versions, write_metadata
from harness.trainable import run_trial
from search_spaces import SPACES, get_space

# Persist the experiment state every few seconds (Tune's default adapts to minutes), so a driver
# killed with SIGKILL loses at most that much bookkeeping; trial checkpoints are separate.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python tune_main.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="default", help="search space name (see --list-spaces)")
    p.add_argument("--list-spaces", action="store_true", help="list the search spaces and exit")
    p.add_argument("--config", default="config/hsc_mae.yaml", help="base YAML config the space overrides")
    p.add_argument("--data", default=None, help="feature folder or synthetic:<preset> (default: the config's)")
    p.add_argument("--num-samples", type=int, default=None, help="trials in total (default: the space's)")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: the space's)")
    p.add_argument("--cpus-per-trial", type=int, default=1)
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial, a fraction shares one (0.25: four trials per GPU); the trial trains on "
                        "the GPU Ray assigns it (config device auto). Default 0: CPUs only")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    p.add_argument("--name", default=None, help="experiment name (default: hscmae-<space>)")
    p.add_argument("--storage", default="./results", help="local folder or pyarrow URI (s3://...)")
    p.add_argument("--address", default=None, help="join a Ray cluster (auto, ray://host:10001); default: local")
    p.add_argument("--resume", action="store_true", help="resume the experiment; error if there is none")
    p.add_argument("--grace-period", type=int, default=None, help="ASHA epochs before the first cut")
    p.add_argument("--reduction-factor", type=int, default=None, help="ASHA keeps the top 1/rf per rung")
    p.add_argument("--max-epochs", type=int, default=None, help="epochs per trial (ASHA max_t)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="epochs between trial checkpoints")
    p.add_argument("--max-failures", type=int, default=1, help="retries of a failed trial before it is errored")
    study.add_arguments(p)  # --optuna-storage, --no-warm-start, --mlflow
    args = p.parse_args(argv)
    for flag in ("num_samples", "max_concurrent", "cpus_per_trial", "grace_period", "max_epochs",
                 "checkpoint_every"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {v}")
    if args.reduction_factor is not None and args.reduction_factor < 2:
        raise UsageError(f"--reduction-factor must be >= 2, got {args.reduction_factor}")
    if args.max_failures < 0:
        raise UsageError(f"--max-failures must be >= 0, got {args.max_failures}")
    check_gpus_per_trial(args.gpus_per_trial, "--gpus-per-trial")
    return args


def prepare(args):
    """Everything that can fail, before Ray starts. Returns what the search needs."""
    try:
        space = get_space(args.space)
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    base = load_config(args.config, [f"data={args.data}"] if args.data else None).to_dict()
    # flags beat the space's fixed keys, which beat the base config
    fixed = {k: v for k, v in space.fixed.items() if not (k == "data" and args.data)}
    if args.max_epochs:
        fixed["epochs"] = args.max_epochs
    space = dataclasses.replace(space, fixed=fixed)
    space.check(base)
    probe = space.example(base)  # data source, epochs and split are those of every trial
    if probe.device.startswith("cuda") and not args.gpus_per_trial:
        # Ray hides every GPU (CUDA_VISIBLE_DEVICES="") from a trial that asked for none
        raise UsageError(f"config key 'device' is {probe.device!r} but --gpus-per-trial is 0: Ray gives a trial "
                         "no GPU unless it asks for one; pass --gpus-per-trial (or use device 'auto')")
    num_samples = args.num_samples or space.num_samples
    # with GPUs asked for, the default comes from the cluster's resources once Ray is up (main)
    max_concurrent = args.max_concurrent or (None if args.gpus_per_trial else space.max_concurrent)
    name = args.name or f"hscmae-{space.name}"
    exp = experiment_path(args.storage, name)
    check_storage(args.storage)
    data = load_data_for(probe)
    probe.validate(n_train=len(data.splits["train"]))
    return dict(space=space, base=base, probe=probe, data=data, name=name, exp=exp,
                num_samples=num_samples, max_concurrent=max_concurrent)


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C / SIGTERM: Tune saves its state, we print where things stand and how to resume, exit
    # 130 / 143 (harness/interrupt.py)
    interrupts = Interrupts()
    interrupts.install()
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv, interrupts)
    except BaseException as e:  # a signal before Tune's loop ran, or after it
        if not caused_by_signal(e):
            raise
        return finish(None, interrupts, argv)
    finally:
        interrupts.uninstall()  # main() called in-process (tests) gets its handlers back


def _main(argv: list[str], interrupts: Interrupts) -> int:
    try:
        args = parse_args(argv)
        if args.list_spaces:
            for s in SPACES.values():
                d = s.describe()
                print(f"{s.name:10s} {s.description}  [{', '.join(d['params'])}; "
                      f"{s.num_samples} trials, fixed {s.fixed}]")
            return 0
        run = prepare(args)
    except (UsageError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    space, exp = run["space"], run["exp"]
    local = "://" not in exp
    exists = tune.Tuner.can_restore(exp) if (not local or os.path.isdir(exp)) else False
    if args.resume and not exists:
        print(f"error: --resume: no experiment to resume at {exp}", file=sys.stderr)
        return 2
    if exists:
        old = read_text(exp, "data.json")
        if old and json.loads(old).get("fingerprint") != run["data"].fingerprint():
            print(f"error: {exp} was run on different data (fingerprint in data.json differs); "
                  "use another --name", file=sys.stderr)
            return 2
    max_epochs = run["probe"].epochs
    grace = min(args.grace_period or space.grace_period, max_epochs)
    rf = args.reduction_factor or space.reduction_factor
    try:  # the Optuna study, warm start, MLflow; on resume, the flags it cannot honour
        plan = study.plan(args, space, run["base"], run["name"], exp, exists, run["num_samples"],
                          run["max_concurrent"], max_epochs, grace, rf)
    except (UsageError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cpus, gpus = args.cpus_per_trial, args.gpus_per_trial
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=run["data"], base=run["base"], fixed=space.fixed,
                             checkpoint_every=args.checkpoint_every or space.checkpoint_every, cpus=cpus,
                             grid_epochs=asha_rungs(grace, rf, max_epochs)),  # val_map there = final protocol
        {"cpu": cpus, **({"gpu": gpus} if gpus else {})})
    interrupts.search = dict(exp=exp, num_samples=run["num_samples"], max_epochs=max_epochs)
    atomic_experiment_state()  # a SIGKILL mid-save must not leave an empty experiment state
    init_ray(args.address)
    interrupts.install()  # ray.init replaced our SIGTERM handler (with one that saves nothing)
    if gpus:
        try:
            slots = gpu_slots(gpus, cpus, "--gpus-per-trial")
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            import ray

            ray.shutdown()
            return 2
        run["max_concurrent"] = plan["max_concurrent"] = run["max_concurrent"] or slots
        print(f"[hscmae] {gpus:g} GPU(s) and {cpus} CPU(s) per trial: {run['max_concurrent']} trial(s) at once",
              flush=True)
    t0 = time.time()
    if exists:
        print(f"[hscmae] resuming {exp}", flush=True)
        if not plan.get("legacy"):
            study.bind_resume(exp, plan["num_samples"])
            if plan["extend_from"]:
                print(f"[hscmae] extending the search from {plan['extend_from']} to {plan['num_samples']} trials",
                      flush=True)
                study.record(exp, plan)
        tuner = tune.Tuner.restore(exp, trainable=trainable, resume_unfinished=True, resume_errored=True)
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
        search_alg, study_callbacks = study.make_search_alg(plan, space, exp,
                                                            optuna.samplers.TPESampler(seed=args.seed))
        scheduler = ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=grace, reduction_factor=rf)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=run["num_samples"],
                                        search_alg=search_alg,
                                        scheduler=scheduler,
                                        # a finished trial's worker runs the next one: no fresh
                                        # process importing torch per trial (bench_harness: 7.7%)
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name=run["name"], storage_path=exp.rsplit("/", 1)[0] if not local else os.path.dirname(exp),
                failure_config=tune.FailureConfig(max_failures=args.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[make_progress_callback(run["num_samples"], max_epochs), *study_callbacks], verbose=1))
    if study.dashboard_command(plan, exp):
        print(f"[hscmae] Optuna study {run['name']!r}; watch it with: {study.dashboard_command(plan, exp)}",
              flush=True)
    results = interrupts.fit(tuner)  # None if a third signal cut the final save short
    return finish(results, interrupts, argv, time.time() - t0)


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


if __name__ == "__main__":
    code = main()
    if code in (130, 143):
        leave_now(code)
    sys.exit(code)
