"""What the per-epoch validation score costs, and how well it ranks trials (issue 13).

    python bench/bench_eval.py              # cost on synthetic:ave, synthetic:vegas and the real sets (both digits sets)
    python bench/bench_eval.py --quick      # cost on synthetic:tiny (CI); --no-write leaves BENCHMARKS.md alone
    python bench/bench_eval.py --rank LABEL=EXPERIMENT ...   # rank table from searches' report/curves.parquet
    python bench/bench_eval.py --study LABEL=EXPERIMENT ...  # every trial's config retrained to the end
    python bench/bench_eval.py --searches LABEL=EXPERIMENT ...  # finished searches' evaluation cost side by side

Cost: `hscmae.train.fit` with config/hsc_mae.yaml at 1 torch thread and 1 BLAS thread (what a
trial gets with --cpus-per-trial 1) for 3 epochs, scored as a trial's epochs are: epoch 1 the full
grid (raw vs CCA_REGS x CCA_DIMS, `protocol_scores`), epoch 2 the grid's choice held (one CCA fit at
its ridge and dimension, one val score, `held_scores`), epoch 3 the final evaluation (the grid, with
test). Every time is fit's own: train_s (the training steps) and eval_s (embedding every clip and
scoring) of that epoch; --repeat runs, medians. A default-space trial (60 epochs, ASHA rungs 10 and
30) evaluates with the grid at epochs 1, 10 and 30, held at the other 56 and the final at 60:
  trial eval % = (3 grid + 56 held + final) / (60 x epoch train s), the evaluation's share of the
  trial's training time; with val_every N (Config.val_every) the same from fit's schedule: the
  epochs between scored only at multiples of N, the first scored epoch a grid (N = 5: grids at 5,
  10, 30, held at 8 epochs; N = 10: grids at 10 and 30, held at 20, 40, 50).
Each set runs with grid_search exhaustive (the default) and halving; the halving run also
compares, at every epoch, its grid's choice with the exhaustive grid's on the same embeddings
(agreement table; a bench-only extra, outside eval_s); --agree-epochs N adds, per source, the same
comparison at every epoch of an N-epoch halving run (on --agree-on SRC ...). --before LABEL=FILE shows the cost table
an earlier run printed (e.g. the same command on an older commit) beside the new one.

Study (--study): a search's ASHA stops most trials, so only a few reach the end and the rank
correlation of --rank rests on 3-11 points. The study takes the configs of all of a search's
trials and trains each for all its epochs (no scheduler; fit with that search's rungs as
grid_epochs, 1 thread, --workers processes), recording at every epoch the val_map fit reports
(now) and, from the same embeddings, the old per-epoch score (before: raw vs fixed CCA dim 64),
then the Spearman correlation of each with the final val_map at the rungs and the epoch before
the last: the same trials, the same training runs, two scores.

Rank: for the trials of a search that ran all epochs, the Spearman correlation between the
val_map reported at ASHA's rungs and the epoch before the last, and the final val_map (the
number the best trial is chosen by); with the test-time CCA dimensions the per-epoch and final
reports chose (0 = raw).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import numpy as np  # noqa: E402

from hscmae.data.real import real_sources  # noqa: E402
from bench.common import command_line, machine_info, md_table, one_thread, parser, publish, torch_threads_kept  # noqa: E402
from harness import asha_rungs  # noqa: E402
from hscmae import train as T  # noqa: E402
from hscmae.config import load_config  # noqa: E402
from hscmae.data import load_data_for  # noqa: E402
from hscmae.protocol import GRID, HELD, EvalSchedule, protocol_scores  # noqa: E402

SECTION, RANK_SECTION = "bench_eval", "bench_eval_rank"
CONFIG = os.path.join(_REPO, "config", "hsc_mae.yaml")
FULL_DATA = ["synthetic:ave", "synthetic:vegas"]  # + hscmae.data.real.real_sources(): the digits sets
EPOCHS, RUNGS = 60, (10, 30)  # the default space: 60 epochs, ASHA grace 10, rf 3


def _share_column(every: int) -> str:
    return "trial eval %" if every == 1 else f"trial eval %, val_every {every}"


VAL_EVERY = (1, 5, 10)  # the trial shares shown: every epoch scored (the default), every 5th, every 10th
COLUMNS = ["data", "grid search", "train/val clips", "steps", "epoch train s", "grid eval s", "held eval s", "final eval s",
           *[_share_column(e) for e in VAL_EVERY]]
AGREE_COLUMNS = ["data", "epochs compared", "same choice", "within 0.002", "worst gap"]
TABLES = {"cost": COLUMNS, "halving": AGREE_COLUMNS}
RANK_COLUMNS = ["search", "full trials", "per-epoch dims seen", "final dims", "rho at rungs and last-1",
                "step at last epoch", "step at rungs", "best val / test", "winner retrained: test mAP"]
TARGET, SMALL_TARGET = 15.0, 10.0  # % of a trial's training time: VEGAS-sized data, the others (issue 23)


def target_for(data: str) -> float:
    return TARGET if "vegas" in data else SMALL_TARGET


def cost_row(source: str, repeat: int, search: str = "exhaustive", agreement: list | None = None) -> dict:
    """One row of the cost table: fit's own timings with that grid_search. With the halving grid,
    `agreement` gets one entry per epoch: (the halving grid's choice and exact val, the
    exhaustive grid's) on that epoch's embeddings (a bench-only extra, not in eval_s)."""
    cfg = load_config(CONFIG, {"data": source, "threads": 1, "epochs": 3, "grid_search": search})
    data = load_data_for(cfg)
    compare = grid_comparison(data, cfg, agreement) if agreement is not None else None
    runs = []
    for _ in range(repeat):
        seen: list[dict] = []
        T.fit(cfg, data, on_epoch=lambda m, save: seen.append(m), log=None,
              schedule=EvalSchedule(grid_epochs=(1,), extra=compare))
        runs.append(seen)
    med = lambda epoch, key: float(np.median([r[epoch - 1][key] for r in runs]))  # noqa: E731
    train_s = float(np.median([m["train_s"] for r in runs for m in r]))
    t = {"grid": med(1, "eval_s"), "held": med(2, "eval_s"), "final": med(3, "eval_s")}
    shares = {every: 100 * trial_eval_s(t, every) / EPOCHS / train_s for every in VAL_EVERY}
    first = runs[0][0]
    return {"data": _name(source), "grid search": search,
            "train/val clips": f"{len(data.splits['train'])}/{len(data.splits['val'])}",
            "steps": len(data.splits["train"]) // cfg.batch_size, "epoch train s": train_s,
            "grid eval s": t["grid"], "held eval s": t["held"], "final eval s": t["final"],
            **{_share_column(every): share for every, share in shares.items()},
            "choice": f"ridge {first['test_cca_reg']:g}, dim {int(first['test_cca_dim'])}"}


def agreement_run(source: str, epochs: int) -> list:
    """The halving grid against the exhaustive one at every epoch of a longer halving run (fit for
    `epochs` epochs, the grid at the default space's rungs as in a trial): more epochs of a trial's
    embeddings than the 3 of the cost run, for the agreement table."""
    cfg = load_config(CONFIG, {"data": source, "threads": 1, "epochs": epochs, "grid_search": "halving"})
    data = load_data_for(cfg)
    pairs: list = []
    T.fit(cfg, data, log=None, schedule=EvalSchedule(grid_epochs=RUNGS, extra=grid_comparison(data, cfg, pairs)))
    return pairs


def grid_comparison(data, cfg, pairs: list):
    """An EvalSchedule extra appending, at every epoch it sees, (cfg's grid's scores, the exhaustive
    grid's) on that epoch's embeddings to `pairs`."""
    full = dataclasses.replace(cfg, grid_search="exhaustive")

    def compare(epoch, za, zv):
        pairs.append((protocol_scores(za, zv, data, cfg), protocol_scores(za, zv, data, full)))
        return {}
    return compare


def trial_eval_s(t: dict, every: int = 1) -> float:
    """A default-space trial's evaluation seconds from one grid, held and final evaluation's times:
    what fit's schedule (EvalSchedule with the rungs and val_every `every`) does at each of its
    epochs, the first scored epoch a grid (nothing to hold yet)."""
    schedule, total, chosen = EvalSchedule(grid_epochs=RUNGS, every=every), 0.0, False
    for epoch in range(1, EPOCHS + 1):
        kind = schedule.at(epoch, EPOCHS)
        if epoch == EPOCHS:
            total += t["final"]
        elif kind == GRID or (kind == HELD and not chosen):
            total, chosen = total + t["grid"], True
        elif kind == HELD:
            total += t["held"]
    return total


def _name(source: str) -> str:
    """A folder source by its name (sk_digits_halves -> digits halves), a synthetic one as given."""
    base = os.path.basename(source.rstrip("/"))
    return base.replace("sk_digits_", "digits ") if base.startswith("sk_digits_") else source


def agreement_row(source: str, pairs: list) -> dict:
    """How often the halving grid's choice is the exhaustive one's, or within 0.002 exact val."""
    choice = lambda s: (s["test_cca_reg"], s["test_cca_dim"])  # noqa: E731
    gaps = [full["val_map"] - half["val_map"] for half, full in pairs]
    return {"data": _name(source), "epochs compared": len(pairs),
            "same choice": sum(choice(h) == choice(f) for h, f in pairs),
            "within 0.002": sum(g <= 0.002 for g in gaps), "worst gap": max(gaps)}


def retrained(pattern: str | None) -> str:
    """mean +- std (n) of test_map over the metrics.json files of a winner's seed retrains."""
    import glob
    import json

    if not pattern:
        return "-"
    vals = [json.load(open(f))["test_map"] for f in sorted(glob.glob(os.path.join(pattern, "metrics.json")))]
    return f"{np.mean(vals):.4f} +- {np.std(vals, ddof=1):.4f} ({len(vals)} seeds)" if len(vals) > 1 else "-"


def rank_rows(specs: list[str], retrains: dict | None = None) -> list[dict]:
    import pandas as pd
    from scipy.stats import spearmanr

    rows = []
    for spec in specs:
        label, _, path = spec.partition("=")
        report = os.path.join(path, "report")
        curves, trials = pd.read_parquet(os.path.join(report, "curves.parquet")), pd.read_parquet(
            os.path.join(report, "trials.parquet"))
        max_epochs = int(trials["max_epochs"].max())
        full = trials[(trials["status"] == "terminated") & (trials["epochs"] == max_epochs)]["trial_id"]
        c = curves[curves["trial_id"].isin(set(full))]
        final = c[c["epoch"] == max_epochs].set_index("trial_id")["val_map"]
        epochs = [*asha_rungs(10, 3, max_epochs), max_epochs - 1]
        rhos = []
        for e in epochs:
            at = c[c["epoch"] == e].set_index("trial_id")["val_map"].reindex(final.index)
            rhos.append(f"{e}: {spearmanr(at, final).statistic:.2f}")
        wide = curves.pivot(index="trial_id", columns="epoch", values="val_map")
        # step: val_map at an epoch minus the epoch before (mean over trials; the full ones at the last)
        last = (wide.loc[final.index, max_epochs] - wide.loc[final.index, max_epochs - 1]).mean()
        rungs = "; ".join(f"{e}: {(wide[e] - wide[e - 1]).mean():+.3f}" for e in epochs[:-1])
        best = trials.loc[trials["trial_id"].isin(set(full))].sort_values("val_map", ascending=False).iloc[0]
        dims = lambda s: ", ".join(str(int(d)) for d in sorted(set(s.dropna())))  # noqa: E731
        rows.append({"search": label, "full trials": len(final),
                     "per-epoch dims seen": dims(c[c["epoch"] < max_epochs]["test_cca_dim"]),
                     "final dims": dims(c[c["epoch"] == max_epochs]["test_cca_dim"]),
                     "rho at rungs and last-1": "; ".join(rhos), "step at last epoch": f"{last:+.3f}",
                     "step at rungs": rungs, "best val / test": f"{best['val_map']:.4f} / {best['test_map']:.4f}",
                     "winner retrained: test mAP": retrained((retrains or {}).get(label))})
    return rows


def _study_run(args: tuple) -> dict:
    """One config trained to the end; {epoch: (val_map now, val_map before)}."""
    cfg_dict, rungs = args
    from hscmae.config import config_from_dict

    limits = one_thread()
    cfg = config_from_dict({**cfg_dict, "threads": 1})
    data = load_data_for(cfg)
    before_cfg = dataclasses.replace(cfg, test_cca_dim=min(cfg.embed_dim, 64))

    def before(epoch, za, zv):  # the old per-epoch score, on the same epoch's embeddings
        return {"val_map_before": protocol_scores(za, zv, data, before_cfg, ("val",))["val_map"]}
    out = {}

    def on_epoch(m, save):
        out[m["epoch"]] = (m["val_map"], m["val_map_before"])
    try:
        T.fit(cfg, data, on_epoch=on_epoch, log=None, schedule=EvalSchedule(rungs, extra=before))
    finally:
        if limits is not None:
            limits.unregister()
    return out


def study_rows(specs: list[str], workers: int, max_trials: int | None = None) -> list[dict]:
    from multiprocessing import get_context

    from scipy.stats import spearmanr

    from reporting.experiment import load_experiment

    rows = []
    for spec in specs:
        label, _, path = spec.partition("=")
        exp = load_experiment(path)
        rungs = asha_rungs(exp.space.get("grace_period"), exp.space.get("reduction_factor"), exp.max_epochs)
        trials = exp.trials.sort_values("trial_index").head(max_trials) if max_trials else exp.trials
        jobs = [({**exp.full_config(t), "epochs": exp.max_epochs}, rungs) for _, t in trials.iterrows()]
        t0 = time.perf_counter()
        with get_context("spawn").Pool(workers) as pool:
            runs = pool.map(_study_run, jobs, chunksize=1)
        final = [r[exp.max_epochs][0] for r in runs]
        cells = {"now": [], "before": []}
        for e in [*rungs, exp.max_epochs - 1]:
            for j, key in enumerate(("now", "before")):
                rho = spearmanr([r[e][j] for r in runs], final).statistic
                cells[key].append(f"{e}: {rho:.2f}")
        steps = {k: np.mean([r[exp.max_epochs][0] - r[exp.max_epochs - 1][j] for r in runs]) for j, k in
                 enumerate(("now", "before"))}
        rows.append({"search": label, "trials retrained to the end": len(runs), "rungs": ", ".join(map(str, rungs)),
                     "rho now (rungs; last-1)": "; ".join(cells["now"]),
                     "rho before (rungs; last-1)": "; ".join(cells["before"]),
                     "step into the last epoch now / before": f"{steps['now']:+.3f} / {steps['before']:+.3f}",
                     "minutes": f"{(time.perf_counter() - t0) / 60:.1f}"})
    return rows


SEARCH_COLUMNS = ["search", "trials", "epochs trained", "train s", "eval s", "eval / train %", "wall min",
                  "best val mAP", "its test mAP"]


def search_cost_rows(specs: list[str]) -> list[dict]:
    """LABEL=EXPERIMENT: a finished search's evaluation cost from its trials' own reports (the sums
    of every reported epoch's train_s and eval_s), its wall time (first result's start to the last
    result) and its best full-length trial."""
    import glob
    import json

    from reporting.analysis import ranked
    from reporting.experiment import load_experiment

    rows = []
    for spec in specs:
        label, _, path = spec.partition("=")
        train = evals = epochs = 0.0
        starts, ends = [], []
        for f in glob.glob(os.path.join(path, "run_trial_*", "result.json")):
            rs = [json.loads(x) for x in open(f) if x.strip()]
            if not rs:
                continue
            train += sum(r.get("train_s", 0.0) for r in rs)
            evals += sum(r.get("eval_s", 0.0) for r in rs)
            epochs += len({r["epoch"] for r in rs})
            starts.append(rs[0]["timestamp"] - rs[0]["time_this_iter_s"])
            ends.append(rs[-1]["timestamp"])
        exp = load_experiment(path)
        best = ranked(exp)[0].iloc[0]
        rows.append({"search": label, "trials": len(exp.trials), "epochs trained": int(epochs), "train s": train,
                     "eval s": evals, "eval / train %": 100 * evals / train, "wall min": (max(ends) - min(starts)) / 60,
                     "best val mAP": float(best["val_map"]), "its test mAP": float(best["test_map"])})
    return rows


def cost_section(rows: list[dict], agree: list[dict], info: str, load, command: str, repeat: int,
                 before: list[tuple[str, str]] = ()) -> str:
    def verdict(grid: str, every: int) -> str:
        col = _share_column(every)
        mine = [r for r in rows if r["grid search"] == grid]
        ok = all(r[col] <= target_for(r["data"]) for r in mine)
        worst = max(mine, key=lambda r: r[col] / target_for(r["data"]))
        return (f"{grid}, val_every {every}: **{'met' if ok else 'missed'}** (worst {worst[col]:.1f}% on "
                f"{worst['data']}, target {target_for(worst['data']):.0f}%)")
    fmt = {c: ".3f" for c in COLUMNS if c.endswith(" s")} | {c: ".1f" for c in COLUMNS if c.startswith("trial eval %")}
    return "\n".join([
        "## Per-epoch validation cost (`bench/bench_eval.py`)", "", info,
        f"- load average at end: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        f"- command: `{command}`",
        f"- config/hsc_mae.yaml (batch 64, embed 128), 1 torch + 1 BLAS thread; `hscmae.train.fit` for 3 epochs "
        f"(epoch 1 the grid, 2 held, 3 the final evaluation), its own train_s / eval_s, median of {repeat} run(s). "
        "grid = raw vs the final evaluation's 6 ridges x 8 dims chosen on val; held = the grid's choice kept (one "
        "fit, one val score); final = the grid with the test scores; eval = embedding every clip + scoring. trial "
        "eval % = a default-space trial's evaluation (grid at epochs 1, 10, 30; held at the other 56; the final at "
        "60) as a share of its training-step time.", "",
        md_table(COLUMNS, rows, fmt), "",
        f"- target: a trial's eval <= {TARGET:.0f}% of its training on VEGAS-sized data, <= {SMALL_TARGET:.0f}% on "
        "the others -> " + "; ".join(verdict(g, e) for g in ("exhaustive", "halving") for e in VAL_EVERY) + "; " + "; ".join(
            f"{r['data']} ({r['grid search']}): one held epoch's eval = "
            f"{100 * r['held eval s'] / r['epoch train s']:.1f}% of an epoch, grid's choice {r['choice']}" for r in rows),
        "", "Halving grid (`grid_search: halving`: every point screened on a seeded quarter of the val queries, at "
        "least 128, against every val item; the best 4 scored on every val query) against the exhaustive grid on "
        "the same embeddings, every epoch of the halving runs above; gap = exhaustive val mAP - halving's (both "
        "exact full-val scores); an \"N-epoch run\" row: every epoch of a halving fit that long (grid at epochs 1, 10, 30 and the last, the choice held between):", "", md_table(AGREE_COLUMNS, agree, {"worst gap": ".4f"}),
        *[x for label, table in before for x in ("", f"Before ({label}), the same measurement on that code:", "",
                                                 table)]])


def earlier_table(spec: str) -> tuple[str, str]:
    """LABEL=FILE: the first cost table an earlier run printed (its markdown lines), to show beside."""
    label, _, path = spec.partition("=")
    with open(path) as f:
        lines = f.read().split("\n")
    start = next(i for i, x in enumerate(lines) if x.startswith("| data"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("| ")), len(lines))
    return label, "\n".join(lines[start:end])


def main(argv: list[str] | None = None) -> dict:
    p = parser(__file__, __doc__, "synthetic:tiny only, 2 repeats (CI)")
    p.add_argument("--repeat", type=int, default=1, help="fit runs per data set (medians)")
    p.add_argument("--before", action="append", default=[], metavar="LABEL=FILE",
                   help="an earlier run's printed output: its cost table is shown beside, labelled")
    p.add_argument("--agree-epochs", type=int, default=0, metavar="N",
                   help="then also compare the two grids at every epoch of an N-epoch halving run per source")
    p.add_argument("--agree-on", nargs="+", default=None, metavar="SRC",
                   help="with --agree-epochs: these sources (default: the cost table's)")
    p.add_argument("--data", nargs="+", default=None, metavar="SRC",
                   help="cost on these sources instead (e.g. synthetic:vegas,n=8000)")
    p.add_argument("--rank", nargs="+", metavar="LABEL=EXPERIMENT", help="write the rank table instead")
    p.add_argument("--retrained", nargs="*", default=[], metavar="LABEL=GLOB",
                   help="with --rank: folders of the winner's seed retrains (python -m hscmae.train --config "
                        "report/best_config.yaml --set seed=S --out DIR), whose metrics.json give test mAP")
    p.add_argument("--study", nargs="+", metavar="LABEL=EXPERIMENT",
                   help="retrain every trial of these searches to the end; write the study table instead")
    p.add_argument("--searches", nargs="+", metavar="LABEL=EXPERIMENT",
                   help="write the table of these finished searches' evaluation cost instead")
    p.add_argument("--workers", type=int, default=2, help="with --study: parallel runs (1 thread each)")
    p.add_argument("--max-trials", type=int, default=None, help="with --study: the first N trials of each search")
    args = p.parse_args(argv)
    if args.searches:
        rows = search_cost_rows(args.searches)
        text = "\n".join([
            "## A default search's evaluation cost, before and after (`bench/bench_eval.py --searches`)", "",
            machine_info(), f"- command: `{command_line(argv, __file__)}`",
            "- each search: `python tune_main.py --space default --data synthetic:vegas,n=8000 --max-concurrent 1` "
            "(24 trials, TPE seed 0, ASHA grace 10, rf 3, 60 epochs, 1 CPU per trial; --set as labelled); train s / "
            "eval s: the sums of every reported epoch's training-step and evaluation time over all trials; wall: "
            "the first trial's start to the last result", "",
            md_table(SEARCH_COLUMNS, rows, {"train s": ".0f", "eval s": ".0f", "eval / train %": ".1f",
                                            "wall min": ".1f", "best val mAP": ".4f", "its test mAP": ".4f"})])
        publish("bench_eval_searches", text, args.no_write)
        return {"searches": rows}
    if args.study:
        rows = study_rows(args.study, args.workers, args.max_trials)
        cols = list(rows[0])
        text = "\n".join([
            "## Per-epoch vs final val_map over every trial of a search (`bench/bench_eval.py --study`)", "",
            machine_info(), f"- command: `{command_line(argv, __file__)}`",
            "- every trial's config of that search (its report's trials), trained here for all the search's "
            "epochs with fit's grid at that search's rungs (1 thread per run); now = the val_map fit reports "
            "(the final protocol at epoch 1, the rungs and the last epoch, the choice kept between); before = "
            "the per-epoch score up to issue 13 (raw vs a fixed CCA, ridge 1e-3, dim 64) on the same epoch's "
            "embeddings. rho: Spearman correlation over the trials with the final (last-epoch) val_map; step: "
            "mean of the final val_map minus the score at the epoch before.", "", md_table(cols, rows)])
        publish("bench_eval_study", text, args.no_write)
        return {"study": rows}
    if args.rank:
        rows = rank_rows(args.rank, dict(r.split("=", 1) for r in args.retrained))
        text = "\n".join([
            "## Per-epoch vs final val_map: does the score ASHA cuts on rank trials as the final one does? "
            "(`bench/bench_eval.py --rank`)", "",
            f"- command: `{command_line(argv, __file__)}`",
            "- each search: `python tune_main.py --space default --data <data> --name <name>` (24 trials, TPE seed 0, "
            "ASHA grace 10, rf 3, 60 epochs), then `python report.py`; before = main at af6b832 (fixed CCA dim "
            "64 per epoch); sweep = issue 13's first version (dimension chosen on val every epoch at ridge 1e-3, "
            "the full grid at the rungs and the last epoch); now = the full grid at epoch 1, the rungs and the "
            "last epoch, the choice kept between. Each search is its own TPE run, so the trials differ; "
            "`--study` compares the scores on the same trials.",
            "- rho: Spearman correlation over the trials that ran all 60 epochs between the val_map reported at "
            "that epoch and the final (epoch-60) val_map. step: mean over trials of val_map at that epoch minus "
            "the epoch before (the last epoch over the full trials). best: the search's winner (highest final "
            "val_map among the full trials), its val and test mAP in the search; retrained: the winner's "
            "best_config.yaml trained again with seeds 0, 1, 2 (`python -m hscmae.train --config best_config.yaml "
            "--set seed=S threads=1`; threads=1 as in the search), test mAP mean +- std.", "",
            md_table(RANK_COLUMNS, rows)])
        publish(RANK_SECTION, text, args.no_write)
        return {"rank": rows}
    sources = ["synthetic:tiny"] if args.quick else args.data or FULL_DATA + real_sources()
    repeat = args.repeat
    with torch_threads_kept():
        limits = one_thread()
        try:
            info = machine_info()
            rows, agree = [], []
            for s in sources:
                pairs: list = []
                rows += [cost_row(s, repeat), cost_row(s, repeat, "halving", pairs)]
                agree.append(agreement_row(s, pairs))
            for s in (args.agree_on or sources) if args.agree_epochs else []:  # after the cost rows (their timings)
                agree.append({**agreement_row(s, agreement_run(s, args.agree_epochs)),
                              "data": f"{_name(s)}, {args.agree_epochs}-epoch run"})
        finally:
            if limits is not None:
                limits.unregister()
    text = cost_section(rows, agree, info, os.getloadavg(), command_line(argv, __file__), repeat,
                        [earlier_table(b) for b in args.before])
    publish(SECTION, text, args.no_write or args.quick)
    return {"cost": rows, "halving": agree}


if __name__ == "__main__":
    main()
