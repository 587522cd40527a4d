"""Search efficiency at an equal epoch budget: OptunaSearch (TPE) and random search, each with and
without ASHA, several search seeds each, on the default space.

    python bench/bench_search.py            # full: synthetic:ave, 36 trials x 15 epochs of budget, 3 seeds; ~60 min
    python bench/bench_search.py --trials 12  # a third of the budget; ~20 min
    python bench/bench_search.py --quick    # smoke space, tiny budget, 2 methods, 1 seed (CI); --no-write

Every search runs the Tuner tune_main.py runs (`harness.tuner.build_tuner`: the trainable fit()
reporting val_map every epoch, checkpointing as the space says, choosing its test-time CCA at
ASHA's rungs), with the data set put in Ray's object store once, 1 CPU per trial, 2 trials at a
time, in one Ray session, trial workers reused; the methods run one after another.
Random search is OptunaSearch with optuna's RandomSampler on the same define-by-run space, so the
two searchers differ only in how they propose. The budget is counted in trained epochs (one per
reported result, summed over all trials, in the order the driver receives them): the searches
without a scheduler run budget / max_epochs trials; the ASHA searches run trials until the budget
is spent (a Tune stopper ends the search there), so an early-stopped trial frees budget for more.

For each search: its best validation mAP among trials that trained all epochs, that trial's test
mAP (reported, never selected on), and the budget (epochs spent) at which its best-so-far first
came within 0.01 of the best found by any search; ">B" if it never did within the budget.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from bench.common import command_line, machine_info, md_table, parser, publish  # noqa: E402

SECTION = "bench_search"
METHODS = ("Optuna + ASHA", "Optuna, no scheduler", "random + ASHA", "random, no scheduler")
RUN_COLUMNS = ["method", "seed", "trials", "epochs spent", "best val mAP", "its test mAP", "epochs to level"]
SUMMARY_COLUMNS = ["method", "seeds", "best val mAP", "its test mAP", "epochs to level (per seed)",
                   "median epochs to level", "seeds reaching level"]
TABLES = {"runs": RUN_COLUMNS, "summary": SUMMARY_COLUMNS}
TOLERANCE = 0.01
TARGET_RATIO = 1 / 3  # Optuna + ASHA needs at most this fraction of random-without-scheduler's budget


def make_recorder(budget: int):
    """A Tune stopper that records every result in arrival order and ends the search once
    `budget` epochs have been trained (results past it are recorded but not counted)."""
    from ray.tune import Stopper

    class Recorder(Stopper):
        def __init__(self):
            self.results: list[dict] = []

        def __call__(self, trial_id, result):
            self.results.append({"trial": trial_id, "epoch": result["epoch"], "val_map": result["val_map"],
                                 "test_map": result.get("test_map"), "config": result.get("config")})
            return False

        def stop_all(self):
            return len(self.results) >= budget

    return Recorder()


def one_search(prep, method: str, seed: int, budget: int, storage: str) -> list[dict]:
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from harness import METRIC, MODE
    from harness.tuner import build_tuner

    space, max_epochs = prep["space"], prep["probe"].epochs
    sampler = optuna.samplers.TPESampler(seed=seed) if method.startswith("Optuna") else optuna.samplers.RandomSampler(seed=seed)
    asha = "ASHA" in method
    # the space's ASHA settings, grace scaled to this budget's max_epochs (default: 10 of 60)
    grace = max(1, math.ceil(space.grace_period * max_epochs / 60)) if max_epochs < 60 else space.grace_period
    recorder = make_recorder(budget)
    name = f"{method.replace(' ', '').replace(',', '_').replace('+', '_')}-{seed}"
    # the harness's own Tuner (tune_main.py builds the same): fit's choice epochs are these ASHA
    # rungs, so ASHA cuts on the final protocol's val_map; without a scheduler the rungs still
    # fix where the choice is made, so both kinds of search report the same quantity
    tuner = build_tuner(os.path.join(storage, name), data=prep["data"], base=prep["base"], fixed=space.fixed,
                        max_epochs=max_epochs, grace_period=grace, reduction_factor=space.reduction_factor,
                        checkpoint_every=space.checkpoint_every, cpus=1, asha=asha,
                        num_samples=budget if asha else budget // max_epochs,
                        search_alg=ConcurrencyLimiter(OptunaSearch(space=space.sample, metric=METRIC, mode=MODE,
                                                                   sampler=sampler), 2),
                        stop=recorder, verbose=0, num_to_keep=1)
    tuner.fit()
    return recorder.results[:budget]


def summarise_run(results: list[dict], max_epochs: int) -> dict:
    """Best-so-far curve over completed trials: list of (epochs spent, best val, its test)."""
    curve, best = [], (-math.inf, None, None)
    for spent, r in enumerate(results, 1):
        if r["epoch"] == max_epochs and r["val_map"] > best[0]:
            best = (r["val_map"], r["test_map"], r["config"])
            curve.append((spent, best[0], best[1]))
    return {"curve": curve, "best_val": best[0], "best_test": best[1], "best_params": best[2], "spent": len(results),
            "trials": len({r["trial"] for r in results})}


def save_best_config(runs: list[dict], prep: dict, path: str) -> dict:
    """The best trial of all searches (by validation mAP) as a full config YAML: the base config
    with the space's fixed keys and the trial's sample, trained for the base config's epochs."""
    from hscmae.config import save_config

    best = max(runs, key=lambda r: r["best_val"])
    space = prep["space"]
    # drop the search's reduced max_epochs: the base config's epochs apply
    space = dataclasses.replace(space, fixed={k: v for k, v in space.fixed.items() if k != "epochs"})
    cfg = space.to_config(prep["base"], best["best_params"])
    save_config(cfg, path)
    return {"method": best["method"], "seed": best["seed"], "val": best["best_val"], "path": path,
            "params": {k: v for k, v in best["best_params"].items() if k in cfg.to_dict()}}


def run(quick: bool, seeds: int, storage: str, best_out: str | None = None, trials: int = 36,
        only: list[str] | None = None, seed_list: list[int] | None = None,
        level: float | None = None) -> tuple[dict, dict]:
    import ray

    import tune_main

    if quick:
        flags, trials, max_epochs, seeds = ["--space", "smoke", "--max-epochs", "2"], 3, 2, 1
    else:
        flags, max_epochs = ["--space", "default", "--max-epochs", "15"], 15
    args = tune_main.parse_args(flags + ["--storage", storage])
    prep = tune_main.prepare(args)
    budget = trials * max_epochs
    info = {"budget": budget, "max_epochs": max_epochs, "trials": trials, "data": prep["probe"].data,
            "space": prep["space"].name, "started": time.time()}
    tune_main.init_ray(None, cpus=2)
    runs = []
    methods = (METHODS[0], METHODS[3]) if quick else tuple(only or METHODS)  # quick: the pair the target compares
    try:
        for method in methods:
            for seed in (seed_list if seed_list is not None else range(seeds)):
                t0 = time.time()
                res = one_search(prep, method, seed, budget, storage)
                s = summarise_run(res, max_epochs)
                runs.append({"method": method, "seed": seed, "seconds": time.time() - t0, **s})
                print(f"[{time.time() - info['started']:6.0f}s] {method:22s} seed {seed}: best val {s['best_val']:.4f} "
                      f"(test {s['best_test']}), {s['trials']} trials, {s['spent']} epochs, "
                      f"{time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    if best_out:
        info["best"] = save_best_config(runs, prep, best_out)
    level = level if level is not None else max(r["best_val"] for r in runs) - TOLERANCE
    info["level"] = level
    run_rows, summary = [], []
    for r in runs:
        r["to_level"] = next((spent for spent, v, _ in r["curve"] if v >= level), None)
        run_rows.append({"method": r["method"], "seed": r["seed"], "trials": r["trials"], "epochs spent": r["spent"],
                         "best val mAP": r["best_val"], "its test mAP": r["best_test"] if r["best_test"] is not None else float("nan"),
                         "epochs to level": r["to_level"] if r["to_level"] is not None else f">{r['spent']}"})
    for method in methods:
        rs = [r for r in runs if r["method"] == method]
        # a search that never reached the level counts as needing more than its whole budget
        need = [r["to_level"] if r["to_level"] is not None else math.inf for r in rs]
        med = statistics.median(need)
        summary.append({"method": method, "seeds": len(rs), "best val mAP": _mean_std([r["best_val"] for r in rs]),
                        "its test mAP": _mean_std([r["best_test"] for r in rs if r["best_test"] is not None]),
                        "epochs to level (per seed)": ", ".join(str(n) if n != math.inf else f">{budget}" for n in need),
                        "median epochs to level": med if med != math.inf else f">{budget}",
                        "seeds reaching level": sum(n != math.inf for n in need)})
    info["wall_s"] = time.time() - info["started"]
    info["load_end"] = os.getloadavg()
    return {"runs": run_rows, "summary": summary}, info


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.fmean(xs):.4f}" + (f" ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else "")


def verdict(summary: list[dict], budget: int) -> str:
    by = {r["method"]: r["median epochs to level"] for r in summary}
    if "Optuna + ASHA" not in by or "random, no scheduler" not in by:
        return "- target: not judged (this run has only some of the methods)"
    a, b = by["Optuna + ASHA"], by["random, no scheduler"]
    if isinstance(a, str):
        return f"- target: Optuna + ASHA never reached the level within {budget} epochs in most seeds -> **NOT met**"
    if isinstance(b, str):  # random never got there: its need is > budget, so a/b < a/budget
        ok = a <= TARGET_RATIO * budget
        return (f"- target (Optuna + ASHA needs <= 1/3 of random-without-scheduler's budget): random without a "
                f"scheduler did not reach the level within {budget} epochs (median); Optuna + ASHA needed {a}, "
                f"ratio < {a / budget:.2f} -> **{'met' if ok else 'not shown'}**"
                + ("" if ok else " (a bigger budget would be needed to measure random's need)"))
    ratio = a / b
    return (f"- target (Optuna + ASHA needs <= 1/3 of random-without-scheduler's budget): {a} vs {b} epochs "
            f"(median over seeds), ratio {ratio:.2f} -> **{'met' if ratio <= TARGET_RATIO else 'NOT met'}**")


def render(tables, info, command, header) -> str:
    return "\n".join([
        "## Search efficiency (`bench/bench_search.py`)", "", header,
        f"- load average at end: {' / '.join(f'{x:.2f}' for x in info['load_end'])}; wall time {info['wall_s'] / 60:.1f} min",
        f"- command: `{command}`",
        f"- {info['space']} space on {info['data']}; budget {info['budget']} epochs per search (= {info['trials']} trials x "
        f"{info['max_epochs']} epochs without a scheduler); max {info['max_epochs']} epochs per trial; ASHA rf 3, grace "
        "scaled from the space's 10 of 60; 2 trials at a time, 1 CPU each. This is a reduced budget (the default "
        "search is 24 trials x 60 epochs).",
        f"- level = best validation mAP found by any search - {TOLERANCE} = {info['level']:.4f}; \"epochs to level\" is the "
        "budget spent when the search's best completed trial first reached it.",
        "", md_table(SUMMARY_COLUMNS, tables["summary"]), "", verdict(tables["summary"], info["budget"]), "",
        *([f"- best trial of all searches ({info['best']['method']}, seed {info['best']['seed']}, val mAP "
           f"{info['best']['val']:.4f}): {info['best']['params']}; written to `{os.path.relpath(info['best']['path'], _REPO)}` "
           "with the shipped config's epochs, for the retrieval-quality section.", ""] if info.get("best") else []),
        "Every search:", "",
        md_table(RUN_COLUMNS, tables["runs"], {"best val mAP": ".4f", "its test mAP": ".4f"}), ""])


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    p = parser(__file__, __doc__, "smoke space, 3 trials x 2 epochs of budget, 2 methods, 1 seed (CI)")
    p.add_argument("--seeds", type=int, default=3, help="search seeds per method (full mode)")
    p.add_argument("--trials", type=int, default=36,
                   help="budget per search in trials of 15 epochs (full mode; 12 was too small for random "
                        "search without a scheduler to reach the level in most seeds)")
    p.add_argument("--method", action="append", choices=METHODS, default=None,
                   help="run only this method (repeatable; a follow-up run, e.g. with --no-write)")
    p.add_argument("--seed-list", default=None, metavar="0,2", help="run only these search seeds")
    p.add_argument("--level", type=float, default=None,
                   help="the level to reach (default: best of this run's searches - 0.01); a follow-up run "
                        "passes the full run's level")
    p.add_argument("--best-config-out", default=None, metavar="YAML",
                   help="write the best trial's full config here (for bench_quality.py --extra-config)")
    args = p.parse_args(argv)
    header = machine_info()
    storage = tempfile.mkdtemp(prefix="bench-search-")
    cwd = os.getcwd()
    os.chdir(_REPO)  # tune_main resolves config/hsc_mae.yaml from the repository root
    try:
        best_out = args.best_config_out and os.path.abspath(os.path.join(cwd, args.best_config_out))
        tables, info = run(args.quick, args.seeds, storage, best_out, args.trials, args.method,
                           [int(x) for x in args.seed_list.split(",")] if args.seed_list else None, args.level)
    finally:
        os.chdir(cwd)
        shutil.rmtree(storage, ignore_errors=True)
    publish(SECTION, render(tables, info, command_line(argv, __file__), header), args.no_write)
    return tables


if __name__ == "__main__":
    main()
