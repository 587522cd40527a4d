"""How much a search's single-seed answer can be trusted (issue 22): a default-space search per data
set and search seed, then `report.py --confirm 5 --seeds 3` on it at the search's epochs and at the
base config's own epochs.

    python bench/bench_confirm.py                       # sk_digits_halves and synthetic:ave, search seeds 0 1 2
    python bench/bench_confirm.py --data ../shared/data/sk_digits_halves --search-seeds 0
    python bench/bench_confirm.py --quick               # smoke space on synthetic:tiny, 1 search (CI); --no-write

Every step is the user's command in a subprocess (tune_main.py, report.py; 1 CPU per trial or task,
2 at a time), run in --out (default results/bench_confirm): a rerun of this script resumes where it
stopped (a finished search is restored in seconds, stored confirm runs are not retrained), and each
step's wall time is kept from the run that did its work (timings.json).

For each search and confirm length: the single-seed choice (the search's best full-length trial by
val_map), the confirmed choice (the highest mean val_map over the seeds), whether they are the same
config, and the 3-seed test mAP (mean +- std; reported, never chosen on) of the confirmed choice,
the single-seed choice and the base config (the warm-start trial's config); the confirm's compute as
a share of the search's wall time. Then, on the first search seed (for their cost), the two other issue-22 commands against it: the
same search with `--stop-after 8` (trials run, best val and its test against the full search), and
`--space wide --num-samples 12` twice, fresh and as a branch of the finished search (`--from`: the
trials it inherits, the best val of the 12 new trials, and with the inherited ones).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from bench.common import command_line, machine_info, md_table, parser, publish, write_section  # noqa: E402

SECTION = "bench_confirm"
DEFAULT_DATA = ("../shared/data/sk_digits_halves", "synthetic:ave")
COLUMNS = ["data", "search seed", "epochs", "configs x seeds", "single-seed choice", "confirmed choice", "same",
           "confirmed test", "single-seed choice's test", "base config's test", "search min", "confirm min",
           "confirm / search"]
PLATEAU_COLUMNS = ["data", "search seed", "search", "trials run", "epochs trained", "best val mAP", "its test mAP",
                   "minutes"]
BRANCH_COLUMNS = ["data", "search seed", "search", "inherited", "new trials", "best val mAP (new trials)",
                  "its test mAP", "best val mAP (with inherited)", "minutes"]
TABLES = {"runs": COLUMNS, "plateau": PLATEAU_COLUMNS, "branch": BRANCH_COLUMNS}
# --quick runs the confirm path only: the plateau and branch searches are four more searches (minutes
# in CI), and tests/test_stopping.py and tests/test_branch.py run those commands end to end
QUICK_TABLES = {"runs": COLUMNS}


def _slug(data: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", os.path.basename(data.rstrip("/")) or data).strip("-")


class Timings:
    """{step: seconds}, kept in <out>/timings.json from the run that did the step's work."""

    def __init__(self, out: str):
        self.path = os.path.join(out, "timings.json")
        self.t = json.load(open(self.path)) if os.path.exists(self.path) else {}

    def run(self, step: str, cmd: list[str], env: dict, made: str | None = None) -> float:
        """Run the step's command unless it is done: timed before (it exited 0) and, when given, `made`
        (the file its work leaves) is there, in which case the command is not run again (a search's
        restore or a confirm's reread costs a Ray start-up each). Timed but `made` missing, or no `made`:
        the command again only restores / reads what is stored."""
        if step in self.t:
            if made is None or not os.path.exists(made):
                subprocess.run(cmd, cwd=_REPO, env=env, check=True, stdout=subprocess.DEVNULL)
            return self.t[step]
        t0 = time.time()
        r = subprocess.run(cmd, cwd=_REPO, env=env, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"error: {' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        self.t[step] = time.time() - t0
        from hscmae.io import atomic_write_json

        atomic_write_json(self.path, self.t)
        return self.t[step]


def pool_runs(out: str, report_dir: str, keys: set[str]) -> int:
    """Copy into report_dir's confirm_runs/ the stored confirm runs named in `keys` that other report
    folders under `out` hold and it lacks; returns how many. A run's file name is the hash of its full
    config (data, seed and epochs included: reporting.confirm.run_key), so a copy is the very run the
    confirm would train. The base config, confirmed by every search on a data set at the same seeds and
    epochs, is then trained once per data set, not once per search (bench_asha: per arm and search
    seed). Failed runs are not copied (the confirm retries them)."""
    import glob
    import shutil

    from reporting.confirm import RUNS

    mine = os.path.join(report_dir, RUNS)
    n = 0
    for path in sorted(glob.glob(os.path.join(out, "*", "report*", RUNS, "*.json"))):
        key = os.path.splitext(os.path.basename(path))[0]
        target = os.path.join(mine, os.path.basename(path))
        if key not in keys or os.path.dirname(path) == mine or os.path.exists(target):
            continue
        with open(path) as f:
            result = json.load(f).get("result") or {}
        if not result or "error" in result:
            continue
        os.makedirs(mine, exist_ok=True)
        shutil.copyfile(path, target + ".tmp")
        os.replace(target + ".tmp", target)
        n += 1
    return n


def confirm_keys(exp: str, top: int, seeds: int, epochs: int) -> set[str]:
    """The run keys `report.py EXP --confirm top --seeds seeds --epochs epochs` trains (its plan, less
    the runs that are the search's own trials)."""
    from reporting.confirm import plan
    from reporting.experiment import load_experiment

    _, runs, _ = plan(load_experiment(exp), top, seeds, epochs)
    return {r["key"] for r in runs if r["reuse"] is None}


def pool_for(out: str, exp: str, report_dir: str, top: int, seeds: int, epochs: int, log: str) -> None:
    n = pool_runs(out, report_dir, confirm_keys(exp, top, seeds, epochs))
    if n:
        print(f"[{log}] {os.path.basename(exp)}: {n} confirm runs reused from other report folders under {out} "
              "(the same run key)", flush=True)


def _pm(mean, std) -> str:
    return f"{mean:.4f} ± {std:.4f}"


def one_row(data: str, seed: int, epochs: int, report: str, search_s: float, confirm_s: float) -> dict:
    import pandas as pd

    t = pd.read_parquet(os.path.join(report, "confirmed.parquet"))
    single = t[t["search_rank"] == 1].iloc[0]
    confirmed = t.iloc[0]  # confirmed order: the highest mean val_map first
    base = t[t["config"].str.contains("base config")].iloc[0]
    return {"data": data, "search seed": seed, "epochs": epochs,
            "configs x seeds": f"{len(t)} x {int(t['n_seeds'].max())}",
            "single-seed choice": single["config"], "confirmed choice": confirmed["config"],
            "same": "yes" if confirmed["config"] == single["config"] else "no",
            "confirmed test": _pm(confirmed["test_map_mean"], confirmed["test_map_std"]),
            "single-seed choice's test": _pm(single["test_map_mean"], single["test_map_std"]),
            "base config's test": _pm(base["test_map_mean"], base["test_map_std"]),
            "search min": round(search_s / 60, 1), "confirm min": round(confirm_s / 60, 1),
            "confirm / search": f"{confirm_s / search_s:.2f}", "report folder": report,
            # the numbers behind the strings (summary, tests)
            "_same": bool(confirmed["config"] == single["config"]),
            "_tests": {k: float(r["test_map_mean"]) for k, r in (("confirmed", confirmed), ("single", single),
                                                                   ("base", base))}}


def search_row(exp_path: str, seconds: float) -> dict:
    """A finished search's trials run, epochs trained, best full-length trial by val_map (and its test)."""
    from reporting.analysis import ranked
    from reporting.experiment import load_experiment

    exp = load_experiment(exp_path)
    order, _ = ranked(exp)
    best = order.iloc[0]
    return {"trials run": len(exp.trials), "epochs trained": int(exp.trials["epochs"].fillna(0).sum()),
            "best val mAP": float(best["val_map"]), "its test mAP": float(best["test_map"]),
            "minutes": round(seconds / 60, 1)}


def inherited_best(exp_path: str) -> tuple[int, float | None]:
    """(trials the branched study inherited, their best val_map), read from its Optuna study."""
    import optuna

    from harness.branch import INHERITED_FROM
    from harness.study import JOURNAL, open_storage

    name = os.path.basename(exp_path.rstrip("/"))
    st = optuna.load_study(study_name=name, storage=open_storage(os.path.join(exp_path, JOURNAL)))
    vals = [t.value for t in st.get_trials(deepcopy=False) if INHERITED_FROM in t.user_attrs
            and t.state == optuna.trial.TrialState.COMPLETE]
    n = sum(INHERITED_FROM in t.user_attrs for t in st.get_trials(deepcopy=False))
    return n, (max(vals) if vals else None)


def section(argv, args, header: str, rows: list, plateau: list, branch: list, left: int = 0) -> str:
    """The BENCHMARKS section from the rows so far; left: searches not yet run (said in a line, so a
    bench cut off part way still leaves what it measured)."""
    text = [f"## Confirming a search's answer over seeds (`{command_line(argv, __file__)}`)", "", header,
            "- each search: `python tune_main.py --space default --data D --seed S` (24 trials, 60 epochs, ASHA "
            "grace 10, rf 3, 2 trials at a time); then `python report.py <experiment> --confirm 5 --seeds 3 --epochs E` "
            "(the top 5 full-length trials and the base config, 3 seeds each, 2 tasks at a time; at the search's "
            "length the trial itself is the first seed) at E = the search's 60 epochs and the base config's own 100",
            "- test mAP: mean ± std over the 3 seeds (reported, never chosen on); the choice is by mean val_map; a "
            "choice is named by its Tune trial id",
            "", md_table(COLUMNS, rows), ""]
    for epochs in sorted({r["epochs"] for r in rows}):
        mine = [r for r in rows if r["epochs"] == epochs]
        gain = [r["_tests"]["confirmed"] - r["_tests"]["single"] for r in mine]
        vs_base = [r["_tests"]["confirmed"] - r["_tests"]["base"] for r in mine]
        text.append(f"- at {epochs} epochs: the single-seed choice is the confirmed one in "
                    f"{sum(r['_same'] for r in mine)} of {len(mine)} searches; confirmed minus single-seed choice's "
                    f"test mAP: {', '.join(f'{g:+.4f}' for g in gain)}; confirmed minus base config's: "
                    f"{', '.join(f'{g:+.4f}' for g in vs_base)}")
    if plateau:
        text += ["", f"The same search with `--stop-after {args.stop_after}` (ends when the best val_map of the "
                 f"finished trials has not improved in the last {args.stop_after}), against the full search:", "",
                 md_table(PLATEAU_COLUMNS, plateau, {"best val mAP": ".4f", "its test mAP": ".4f"})]
    if branch:
        text += ["", f"`--space wide` with {args.branch_trials} new trials: a fresh search, and a branch of the "
                 "finished default search (`--from`: its finished trials that fit `wide` seed the study), the same "
                 "sampler seed:", "",
                 md_table(BRANCH_COLUMNS, branch, {"best val mAP (new trials)": ".4f", "its test mAP": ".4f",
                                                   "best val mAP (with inherited)": ".4f"})]
    if left:
        text += ["", f"- partial: {left} more search(es) of this command had not finished when this was written"]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> dict:
    p = parser(__file__, __doc__, "smoke space on synthetic:tiny, 3 trials, confirm 2 x 2 (CI)")
    p.add_argument("--data", nargs="+", default=list(DEFAULT_DATA))
    p.add_argument("--search-seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=os.path.join(_REPO, "results", "bench_confirm"))
    p.add_argument("--stop-after", type=int, default=8, help="the plateau search's --stop-after (0: no such search)")
    p.add_argument("--branch-trials", type=int, default=12,
                   help="new trials of the branch into `wide` and of the fresh `wide` search (0: none)")
    args = p.parse_args(argv)
    if args.quick:
        args.data, args.search_seeds, args.top, args.seeds = ["synthetic:tiny"], [0], 2, 2
        args.stop_after = args.branch_trials = 0
        if args.out == os.path.join(_REPO, "results", "bench_confirm"):
            import tempfile

            args.out = tempfile.mkdtemp(prefix="bench-confirm-")
    os.makedirs(args.out, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    timings, rows, plateau, branch = Timings(args.out), [], [], []
    header = machine_info()
    done, total = 0, len(args.data) * len(args.search_seeds)
    for data in args.data:
        for seed in args.search_seeds:
            name = f"{_slug(data)}-s{seed}"
            exp = os.path.join(args.out, name)
            search = [sys.executable, "tune_main.py", "--storage", args.out, "--name", name, "--seed", str(seed),
                      "--data", data]
            search += ["--space", "smoke", "--num-samples", "3"] if args.quick else ["--space", "default"]
            search_s = timings.run(f"{name}/search", search, env, made=os.path.join(exp, "study.json"))
            space = json.load(open(os.path.join(exp, "space.json")))
            import yaml

            base_epochs = int(yaml.safe_load(open(os.path.join(exp, "base_config.yaml")))["epochs"])
            lengths = [space["max_epochs"]] + ([] if args.quick or base_epochs == space["max_epochs"] else [base_epochs])
            for epochs in lengths:
                report = os.path.join(exp, "report" if epochs == space["max_epochs"] else f"report-{epochs}-epochs")
                cmd = [sys.executable, "report.py", exp, "--out", report, "--confirm", str(args.top),
                       "--seeds", str(args.seeds), "--epochs", str(epochs), "--num-cpus", "2"]
                if f"{name}/confirm-{epochs}" not in timings.t:
                    pool_for(args.out, exp, report, args.top, args.seeds, epochs, "bench_confirm")
                confirm_s = timings.run(f"{name}/confirm-{epochs}", cmd, env,
                                        made=os.path.join(report, "confirmed.parquet"))
                rows.append(one_row(data, seed, epochs, report, search_s, confirm_s))
                print(md_table(COLUMNS, rows[-1:]), flush=True)
            # the same search with --stop-after N, against the full one
            extras = seed == args.search_seeds[0]  # the stop and branch comparisons: on the first search seed
            if args.stop_after and extras:
                plateau.append({"data": data, "search seed": seed, "search": "full", **search_row(exp, search_s)})
                stop = [sys.executable, "tune_main.py", "--storage", args.out, "--name", f"{name}-stop{args.stop_after}",
                        "--seed", str(seed), "--data", data, "--space", "default", "--stop-after", str(args.stop_after)]
                s_ = timings.run(f"{name}/stop", stop, env,
                                 made=os.path.join(args.out, f"{name}-stop{args.stop_after}", "study.json"))
                plateau.append({"data": data, "search seed": seed, "search": f"--stop-after {args.stop_after}",
                                **search_row(os.path.join(args.out, f"{name}-stop{args.stop_after}"), s_)})
                print(md_table(PLATEAU_COLUMNS, plateau[-2:]), flush=True)
            # a branch of the finished search into `wide` against a fresh `wide` search, the same new trials
            if args.branch_trials and extras:
                for kind, extra in (("fresh", []), ("branch", ["--from", exp])):
                    wname = f"{name}-wide-{kind}"
                    cmd = [sys.executable, "tune_main.py", "--storage", args.out, "--name", wname, "--seed", str(seed),
                           "--data", data, "--space", "wide", "--num-samples", str(args.branch_trials), *extra]
                    w_s = timings.run(f"{name}/wide-{kind}", cmd, env, made=os.path.join(args.out, wname, "study.json"))
                    r = search_row(os.path.join(args.out, wname), w_s)
                    n_inh, inh_best = inherited_best(os.path.join(args.out, wname)) if kind == "branch" else (0, None)
                    best_all = max(r["best val mAP"], inh_best) if inh_best is not None else r["best val mAP"]
                    branch.append({"data": data, "search seed": seed, "search": f"wide, {kind}", "inherited": n_inh,
                                   "new trials": r["trials run"], "best val mAP (new trials)": r["best val mAP"],
                                   "its test mAP": r["its test mAP"], "best val mAP (with inherited)": best_all,
                                   "minutes": r["minutes"]})
                print(md_table(BRANCH_COLUMNS, branch[-2:]), flush=True)
            done += 1
            if done < total and not (args.no_write or args.quick):  # what is measured so far survives a cut-off
                write_section(SECTION, section(argv, args, header, rows, plateau, branch, left=total - done))
    publish(SECTION, section(argv, args, header, rows, plateau, branch), args.no_write or args.quick)
    out = {"runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]}
    return out if args.quick else {**out, "plateau": plateau, "branch": branch}


if __name__ == "__main__":
    main()
