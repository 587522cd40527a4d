"""Turn a Ray Tune search of HSC-MAE (finished or still running) into tables, configs and figures.

    python report.py <experiment folder or name> [--out DIR]       # tables, best configs, figures
    python report.py --ablate <experiment> [--seeds 3] [--epochs N] [--address auto]
                                           # also retrain the best config with each component off
    python report.py --figures <experiment> [--figures-from retrain]   # also what the best model learned
    python report.py --confirm 5 [--seeds 3] [--epochs N] <experiment>
                                           # also retrain the top 5 configs over seeds, choose by mean val

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
    confirmed.{md,tex,parquet}, confirm_runs/, best_config_single_seed.yaml   (--confirm; reporting/confirm.py)
    fig_curves, fig_params, fig_importance (.png and .pdf)
    fig_pr, fig_per_class, fig_embedding_map (.png and .pdf), per_class_ap.{md,parquet},
    retrieval_examples.md, embeddings.npz                          (--figures; reporting/learned.py)
    summary.md

The best trial is chosen on validation only: the highest val_map at the last epoch among trials
that ran all epochs (the model a retrain of its config produces, and the only ones with test
scores). Same inputs give byte-identical parquet files (sorted rows, fixed columns and types, no
timestamps of the report run).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from hscmae.config import ConfigError
# The report's parts live in the package reporting/; every name is re-exported here so that
# `import report; report.X` (tests, notebooks) keeps working.
# ruff: noqa: F401
from reporting.ablation_runs import AblationInterrupted, RetrainsInterrupted, run_ablation
from reporting.confirm import run_confirm
from reporting.analysis import IMPORTANCE_WHY, _fmt, _groups, finished, hparam_table, param_importance, ranked
from reporting.experiment import (BOOKKEEPING, METRIC, METRIC_ORDER, SPLIT_METRICS, STATUS_LABEL, Experiment,
                                  ReportError, _column_type, _error_of, _read_json, _status, _trial_index,
                                  load_experiment, read_results, read_state, resolve_experiment)
from reporting.figures import _plt, asha_rungs, fig_curves, fig_importance, fig_params, figure_bytes
from reporting.frames import ARROW, _frame, _kind_of, _num, _opt_float, _present, _py, to_parquet_bytes
from reporting.learned import write_learned
from reporting.tables import (_pm, _tex_escape, component_markdown_latex, hparam_markdown_latex, latex_table,
                              markdown_table)
from reporting.writing import _UMASK, _write, _yaml_header, write_report, write_summary


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python report.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", help="experiment folder, or its name under ./results")
    p.add_argument("--out", default=None, help="output folder (default: <experiment>/report)")
    p.add_argument("--top", type=int, default=5, help="configs in top_configs.yaml (default 5)")
    p.add_argument("--importance", choices=("ped-anova", "fanova"), default="ped-anova",
                   help="Optuna importance evaluator (default ped-anova; see summary.md for why)")
    p.add_argument("--ablate", action="store_true", help="also retrain the best config with each component off")
    p.add_argument("--confirm", type=int, default=None, metavar="K",
                   help="also retrain the top K full-length configs and the base config over --seeds seeds and "
                        "choose by mean val_map (confirmed.md; best_config.yaml then holds that choice)")
    p.add_argument("--seeds", type=int, default=3, help="--ablate: seeds per row; --confirm: per config (default 3)")
    p.add_argument("--epochs", type=int, default=None,
                   help="--ablate: override epochs (quick runs); --confirm: epochs of its runs (default: the base "
                        "config's own epochs when longer than the search's)")
    p.add_argument("--address", default=None, help="--ablate: Ray cluster to run on (auto, ray://host:10001)")
    p.add_argument("--num-cpus", type=int, default=None, help="--ablate: CPUs of a local Ray (default: all)")
    p.add_argument("--gpus-per-task", type=float, default=0.0,
                   help="--ablate: GPUs per training task, a fraction shares one (default 0: CPUs only)")
    p.add_argument("--figures", action="store_true",
                   help="also draw what the best model learned (PR curves, AP per class, t-SNE map, retrieval "
                        "examples, embeddings); with --ablate also trains the DCCA-only baseline")
    p.add_argument("--figures-from", choices=("checkpoint", "retrain"), default=None,
                   help="--figures: the best trial's last Tune checkpoint (default), or 'retrain' its config "
                        "here (costs one trial's training); implies --figures")
    args, extra = p.parse_known_args(argv)
    if extra:
        if args.experiment in ("checkpoint", "retrain"):  # the old `--figures retrain <experiment>`
            p.error(f"--figures takes no value: use --figures --figures-from {args.experiment}")
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.figures_from is not None:
        args.figures = True
    args.figures_from = args.figures_from or "checkpoint"
    from harness import UsageError
    from harness.ray_setup import check_gpus_per_trial

    try:
        check_gpus_per_trial(args.gpus_per_task, "--gpus-per-task")
    except UsageError as e:
        p.error(str(e))
    for flag in ("top", "seeds", "epochs", "num_cpus", "confirm"):
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
        stopped = None
        if args.figures:  # before --ablate's Ray tasks: a bad checkpoint fails fast
            learned = write_learned(exp, out, facts["best"], args.figures_from, args.ablate, args.epochs)
            facts["written"] += learned["written"]
            facts["learned"] = learned["summary"]
        if args.ablate:
            try:
                facts["written"] += run_ablation(exp, out, facts["best"], args.seeds, args.epochs, args.address,
                                                 args.num_cpus, gpus_per_task=args.gpus_per_task)
            except AblationInterrupted as e:  # Ctrl-C / SIGTERM: what finished is written
                stopped = e
                facts["written"] += e.written
                exp.notes.append(f"the component ablation was interrupted ({signal.Signals(e.signum).name}) after "
                                 f"{e.finished} of {e.total} retrains; its tables hold those, the rest are marked "
                                 "interrupted (run the same command again for all of them)")
        if args.confirm and stopped is None:
            try:
                written, facts["confirmed"] = run_confirm(exp, out, args.confirm, args.seeds, args.epochs,
                                                          args.address, args.num_cpus, gpus_per_task=args.gpus_per_task)
                facts["written"] += written
            except RetrainsInterrupted as e:
                stopped = e
                facts["written"] += e.written
                exp.notes.append(f"the confirm retrains were interrupted ({signal.Signals(e.signum).name}) after "
                                 f"{e.finished} of {e.total}; each finished run is kept in confirm_runs/ and the same "
                                 "command again trains only the missing ones")
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
    if facts.get("confirmed") is not None and len(facts["confirmed"]):
        c = facts["confirmed"].iloc[0]
        print(f"[report] confirmed best: {c['config']}: val_map {c['val_map_mean']:.4f} +- {c['val_map_std']:.4f}, "
              f"test_map {c['test_map_mean']:.4f} +- {c['test_map_std']:.4f} over {int(c['n_ok'])} seeds "
              "(best_config.yaml)")
    written = sorted(set(facts["written"]))  # --confirm rewrites best_config.yaml
    print(f"[report] wrote {len(written)} files to {out}: {', '.join(written)}")
    if stopped is not None:
        print(f"[report] interrupted ({signal.Signals(stopped.signum).name}): {stopped.finished} of {stopped.total} "
              f"retrains finished and are kept; run the same command again for all of them")
        return 128 + stopped.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
