"""Hyperparameter search for HSC-MAE on Ray Tune: OptunaSearch (TPE) proposes, ASHA stops early.

    python tune_main.py --space default            # search (or resume, if the experiment exists)
    python tune_main.py --space default --resume   # resume; fails if there is nothing to resume
    python tune_main.py --list-spaces
    python tune_main.py --space components --set pair_noise=0.5   # fixed overrides of the base config
    python tune_main.py --space default --confirm 5   # then retrain the top 5 over 3 seeds, choose by the mean
    python tune_main.py --space wide --from results/hscmae-default   # a new search seeded with the old one's trials

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
import sys


from hscmae.config import ConfigError, load_config, parse_overrides
from hscmae.data import DataError, load_data_for
from harness import UsageError, branch, stopping, study
from harness.interrupt import Interrupts, caused_by_signal, leave_now
from harness.ray_setup import check_gpus_per_trial, init_ray  # noqa: F401  (init_ray: bench_search)
from harness.search import finish, print_summary, run_search  # noqa: F401  (print_summary: tests)
from harness.storage import check_storage, experiment_path
from harness.trainable import run_trial  # noqa: F401  (tune_main.run_trial: the trainable, for tests)
from search_spaces import SPACES, get_space


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
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="fixed overrides of the base config, validated as hscmae.train --set (a key the space "
                        "fixes is refused; one it searches gives the warm start); recorded in base_config.yaml "
                        "and checked on --resume")
    p.add_argument("--confirm", type=int, default=None, metavar="K",
                   help="after the search, retrain its top K full-length configs and the base config over "
                        "--confirm-seeds seeds and choose by mean val_map (report.py --confirm K: the report, "
                        "confirmed.md and best_config.yaml from the confirmed choice)")
    p.add_argument("--confirm-seeds", type=int, default=3, metavar="S", help="--confirm: seeds per config (default 3)")
    p.add_argument("--confirm-epochs", type=int, default=None, metavar="N",
                   help="--confirm: epochs of its runs (default: the base config's own when longer than the search's)")
    study.add_arguments(p)  # --optuna-storage, --no-warm-start, --mlflow
    branch.add_arguments(p)  # --from OLD (a new experiment seeded with OLD's finished trials)
    stopping.add_arguments(p)  # --stop-after N, --min-delta D, --time-budget T
    args = p.parse_args(argv)
    stopping.check_args(args)
    for flag in ("num_samples", "max_concurrent", "cpus_per_trial", "grace_period", "max_epochs",
                 "checkpoint_every", "confirm", "confirm_seeds", "confirm_epochs"):
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
    try:  # "key=value" -> {key: YAML scalar}, as hscmae.train --set
        overrides = parse_overrides(list(args.set))
    except ConfigError as e:
        raise ConfigError(f"--set: {e}") from None
    data_flag = {"data": args.data} if args.data else {}
    if overrides:  # validated like hscmae.train --set; an error names --set, the file's own errors the file
        load_config(args.config, data_flag)
        try:
            base = load_config(args.config, {**overrides, **data_flag}).to_dict()
        except ConfigError as e:
            raise ConfigError(f"--set {study.set_flags(overrides)}: "
                              f"{str(e).removeprefix(f'{args.config}: ')}") from None
    else:
        base = load_config(args.config, data_flag or None).to_dict()
    # flags beat the space's fixed keys, which beat the base config
    fixed = {k: v for k, v in space.fixed.items() if not (k == "data" and args.data)}
    if args.max_epochs:
        fixed["epochs"] = args.max_epochs
    clash = {k: v for k, v in overrides.items() if k in fixed}
    if clash:  # the space's fixed keys beat the base config: such a --set would be silently ignored
        raise UsageError(f"--set {study.set_flags(clash)}: search space '{space.name}' fixes "
                         + ", ".join(f"{k} = {fixed[k]!r}" for k in clash)
                         + " for every trial (--max-epochs sets epochs, --data the data)")
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
    return dict(space=space, base=base, overrides=overrides, probe=probe, data=data, name=name, exp=exp,
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

    code = run_search(args, run, interrupts, argv)
    if code or not args.confirm:
        return code
    return confirm(args, run["exp"])


def confirm(args, exp: str) -> int:
    """--confirm K: the search finished; report.py --confirm K on it, in this process (its Ray)."""
    import report

    if "://" in exp:
        print(f"error: --confirm: {exp} is not a local folder; run report.py --confirm on a local copy",
              file=sys.stderr)
        return 2
    print(f"\n[hscmae] confirming the top {args.confirm} configs and the base config over {args.confirm_seeds} "
          f"seeds (report.py --confirm {args.confirm} --seeds {args.confirm_seeds} {exp})", flush=True)
    argv = [exp, "--confirm", str(args.confirm), "--seeds", str(args.confirm_seeds),
            "--gpus-per-task", str(args.gpus_per_trial)]
    if args.confirm_epochs:
        argv += ["--epochs", str(args.confirm_epochs)]
    return report.main(argv)


if __name__ == "__main__":
    code = main()
    if code in (130, 143):
        leave_now(code)
    sys.exit(code)
