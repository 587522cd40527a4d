"""ASHA's first cut for the default search space (issue 22): grace period 10 vs 20 and reduction factor
3 vs 2, each search given about the same total epochs, per data set and search seed; then the
winner's (the search's best full-length trial's) test mAP over 3 seeds.

    python bench/bench_asha.py                          # sk_digits_halves and synthetic:ave, search seeds 0 1 2
    python bench/bench_asha.py --data synthetic:ave --search-seeds 0 --arms "grace 20, rf 3"
    python bench/bench_asha.py --quick                  # smoke space on synthetic:tiny, 2 arms, 1 search each (CI); --no-write

An arm's trials are the space's (24) scaled by the expected epochs of a trial (expected_epochs: of the
trials that reach rung k, 1/rf of them go on to the next rung or the end), so every arm costs about
what the default one does: 24 x 20 / 33.3 = 14 trials with grace 20 (rung 20 only), 24 x 20 / 22.5 =
21 with rf 2 (rungs 10, 20, 40). Async ASHA promotes a little more than that formula (a trial is
judged against the trials that reached its rung before it), so the table shows the epochs each search
really trained.

Every step is the user's command in a subprocess (tune_main.py, report.py; 1 CPU per trial or task,
2 at a time), run in --out (default results/bench_confirm, shared with bench_confirm.py: the default
arm is bench_confirm's own search, same name, restored in seconds, and its `report/confirmed.parquet`,
bench_confirm's 60-epoch confirm, is read instead of retraining). A rerun resumes where it stopped;
each step's wall time is kept from the run that did its work (timings.json). Do not run this and
bench_confirm.py on the same --out at once: each rewrites timings.json from what it read at start.

The winner's test: `report.py EXP --out EXP/report-asha --confirm 1 --seeds 3 --epochs <max epochs>`
(the trial itself is seed 0; seeds 1 and 2 retrained; the base config is confirmed too, unused here),
its search_rank-1 row. Test mAP is reported, never chosen on.
"""
from __future__ import annotations

import json
import os
import statistics
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from bench.bench_confirm import Timings, _pm, _slug, pool_for, search_row  # noqa: E402
from bench.common import command_line, machine_info, md_table, parser, publish  # noqa: E402

SECTION = "bench_asha"
DEFAULT_DATA = ("../shared/data/sk_digits_halves", "synthetic:ave")
# (label, grace period, reduction factor); the first is the space's own ASHA, the reference whose
# trial count (the space's num_samples) the others' epochs are equalised to
ARMS = (("grace 10, rf 3", 10, 3), ("grace 20, rf 3", 20, 3), ("grace 10, rf 2", 10, 2))
# the smoke space: 6 epochs, grace 2, rf 2 (rungs 2, 4: 3.5 epochs a trial); grace 4: rung 4 only (5)
QUICK_ARMS = (("grace 2, rf 2", 2, 2), ("grace 4, rf 2", 4, 2))
QUICK_TRIALS = 3
COLUMNS = ["data", "search seed", "arm", "trials", "epochs trained", "best val mAP", "winner's test mAP",
           "winner's mean val", "search min"]
TABLES = {"runs": COLUMNS}


def expected_epochs(grace: int, rf: int, max_epochs: int) -> float:
    """A trial's expected epochs under ASHA's rungs (synchronous halving's count): every trial runs to
    the first rung, 1/rf^k of them past the k-th, up to the next rung or max_epochs."""
    from hscmae.protocol import asha_rungs

    rungs = asha_rungs(grace, rf, max_epochs)
    if not rungs:
        return float(max_epochs)
    stops = rungs + [max_epochs]
    return stops[0] + sum((stops[k + 1] - stops[k]) / rf ** (k + 1) for k in range(len(rungs)))


def num_samples(grace: int, rf: int, max_epochs: int, base_trials: int, base_grace: int, base_rf: int) -> int:
    """Trials for (grace, rf) with the expected total epochs of base_trials under (base_grace, base_rf)."""
    ratio = expected_epochs(base_grace, base_rf, max_epochs) / expected_epochs(grace, rf, max_epochs)
    return max(1, round(base_trials * ratio))


def winner(exp: str, epochs: int, timings: Timings, step: str, env: dict) -> tuple[dict, str]:
    """The search's rank-1 trial's row of a 3-seed confirmed.parquet at `epochs`, and its folder:
    bench_confirm's `report/` (its confirm at the search's own epochs: the same runs) where it has
    one, else `report-asha/` (run here)."""
    import pandas as pd

    space = json.load(open(os.path.join(exp, "space.json")))
    theirs = os.path.join(exp, "report", "confirmed.parquet")
    if os.path.exists(theirs) and int(space["max_epochs"]) == epochs:
        t = pd.read_parquet(theirs)
        rank1 = t[t["search_rank"] == 1]
        if len(rank1) and int(rank1.iloc[0]["n_seeds"]) == 3:
            return rank1.iloc[0].to_dict(), os.path.dirname(theirs)
    report_dir = os.path.join(exp, "report-asha")
    if step not in timings.t:
        pool_for(os.path.dirname(exp), exp, report_dir, 1, 3, epochs, "bench_asha")
    cmd = [sys.executable, "report.py", exp, "--out", report_dir, "--confirm", "1", "--seeds", "3",
           "--epochs", str(epochs), "--num-cpus", "2"]
    timings.run(step, cmd, env, made=os.path.join(report_dir, "confirmed.parquet"))
    t = pd.read_parquet(os.path.join(report_dir, "confirmed.parquet"))
    return t[t["search_rank"] == 1].iloc[0].to_dict(), report_dir


def _std(xs: list[float]) -> float | None:
    return statistics.stdev(xs) if len(xs) > 1 else None


def summary(rows: list[dict], arms: tuple, ref: str) -> list[str]:
    """Per data set: each arm's mean (± std over search seeds) best val, winner's test, epochs; then a
    sentence per other arm against the reference arm `ref` (the space's own ASHA)."""
    cols = ["data", "arm", "search seeds", "mean epochs trained", "best val mAP", "winner's test mAP"]
    table, sentences = [], []
    for data in dict.fromkeys(r["data"] for r in rows):
        stats = {}
        for label, _, _ in arms:
            mine = [r for r in rows if r["data"] == data and r["arm"] == label]
            if not mine:
                continue
            s = {k: [r[f"_{k}"] for r in mine] for k in ("val", "test")}
            s["epochs"] = statistics.mean(r["epochs trained"] for r in mine)
            stats[label] = s
            table.append({"data": data, "arm": label, "search seeds": len(mine),
                          "mean epochs trained": round(s["epochs"], 1),
                          **{c: (_pm(statistics.mean(s[k]), _std(s[k])) if len(s[k]) > 1
                                 else f"{s[k][0]:.4f} (one seed)")
                             for c, k in (("best val mAP", "val"), ("winner's test mAP", "test"))}})
        if ref not in stats:
            continue
        for label in stats:
            if label == ref:
                continue
            a, b = stats[label], stats[ref]
            parts = []
            for what, k in (("best val mAP", "val"), ("winner's test mAP", "test")):
                d = statistics.mean(a[k]) - statistics.mean(b[k])
                sa, sb = _std(a[k]), _std(b[k])
                if sa is None or sb is None:
                    verdict = "no spread to judge it by (one search seed)"
                else:
                    noise = max(sa, sb)
                    verdict = (f"within noise (|difference| < {noise:.4f}, the larger std over search seeds)"
                               if abs(d) < noise else f"beyond noise (|difference| >= {noise:.4f}, the larger "
                               "std over search seeds)")
                parts.append(f"{what} {d:+.4f}, {verdict}")
            sentences.append(f"- {data}, {label} minus {ref} ({a['epochs'] / b['epochs']:.2f}x its epochs): "
                             + "; ".join(parts))
    return [md_table(cols, table), "", *sentences]


def main(argv: list[str] | None = None) -> dict:
    p = parser(__file__, __doc__, f"smoke space on synthetic:tiny, arms {QUICK_ARMS[0][0]!r} and "
               f"{QUICK_ARMS[1][0]!r}, {QUICK_TRIALS} trials for the first, 1 search seed (CI)")
    p.add_argument("--data", nargs="+", default=list(DEFAULT_DATA))
    p.add_argument("--search-seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", default=os.path.join(_REPO, "results", "bench_confirm"))
    p.add_argument("--arms", nargs="+", default=None, metavar="LABEL",
                   help=f"a subset of the arms, by label ({'; '.join(a[0] for a in ARMS)}); the first arm "
                        "is always the reference the others' trials are sized from")
    args = p.parse_args(argv)
    from search_spaces import get_space

    arms, space_name = (QUICK_ARMS, "smoke") if args.quick else (ARMS, "default")
    space = get_space(space_name)
    if args.arms:
        unknown = [a for a in args.arms if a not in {x[0] for x in arms}]
        if unknown:
            print(f"error: --arms: unknown {unknown}; expected labels from {[x[0] for x in arms]}", file=sys.stderr)
            raise SystemExit(2)
        arms = tuple(a for a in arms if a[0] in args.arms)
    ref_label, ref_grace, ref_rf = (QUICK_ARMS if args.quick else ARMS)[0]
    # the reference must be the space's own ASHA: its search is bench_confirm's (same name, same command)
    assert (ref_grace, ref_rf) == (space.grace_period, space.reduction_factor), (ref_label, space)
    max_epochs = int(space.fixed["epochs"])
    base_trials = QUICK_TRIALS if args.quick else space.num_samples
    if args.quick:
        args.data, args.search_seeds = ["synthetic:tiny"], [0]
        if args.out == os.path.join(_REPO, "results", "bench_confirm"):
            import tempfile

            args.out = tempfile.mkdtemp(prefix="bench-asha-")
    os.makedirs(args.out, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    timings, rows, commands = Timings(args.out), [], []
    header = machine_info()
    sized = {label: num_samples(g, rf, max_epochs, base_trials, ref_grace, ref_rf) for label, g, rf in arms}
    for label, g, rf in arms:
        print(f"[bench_asha] {label}: {expected_epochs(g, rf, max_epochs):.1f} expected epochs a trial, "
              f"{sized[label]} trials ({sized[label] * expected_epochs(g, rf, max_epochs):.0f} epochs expected)",
              flush=True)
    for data in args.data:
        for seed in args.search_seeds:
            for label, g, rf in arms:
                name = f"{_slug(data)}-s{seed}" + ("" if (g, rf) == (ref_grace, ref_rf) else f"-g{g}-rf{rf}")
                exp = os.path.join(args.out, name)
                search = [sys.executable, "tune_main.py", "--storage", args.out, "--name", name, "--seed", str(seed),
                          "--data", data, "--space", space_name, "--grace-period", str(g),
                          "--reduction-factor", str(rf), "--num-samples", str(sized[label])]
                search_s = timings.run(f"{name}/search", search, env, made=os.path.join(exp, "study.json"))
                commands.append(" ".join(["python"] + search[1:]))
                s = search_row(exp, search_s)
                w, report_dir = winner(exp, max_epochs, timings, f"{name}/confirm-asha", env)
                rows.append({"data": data, "search seed": seed, "arm": label, "trials": s["trials run"],
                             "epochs trained": s["epochs trained"], "best val mAP": s["best val mAP"],
                             "winner's test mAP": _pm(w["test_map_mean"], w["test_map_std"]),
                             "winner's mean val": float(w["val_map_mean"]), "search min": s["minutes"],
                             "experiment": exp, "report folder": report_dir, "winner": str(w["config"]),
                             "_val": s["best val mAP"], "_test": float(w["test_map_mean"])})
                print(md_table(COLUMNS, rows[-1:], {"best val mAP": ".4f", "winner's mean val": ".4f"}), flush=True)
    text = [f"## ASHA's first cut: grace period and reduction factor at an equal epoch budget "
            f"(`{command_line(argv, __file__)}`)", "", header,
            f"- each search: `python tune_main.py --space {space_name} --data D --seed S --grace-period G "
            f"--reduction-factor RF --num-samples N` ({max_epochs} epochs, 2 trials at a time, 1 CPU each); N is "
            f"{base_trials} scaled by the expected epochs of a trial: "
            + ", ".join(f"{label}: {expected_epochs(g, rf, max_epochs):.1f} epochs, N = {sized[label]}"
                        for label, g, rf in arms),
            f"- winner: the search's best full-length trial by val_map; its test mAP and val: mean (± std) over 3 "
            f"seeds from `python report.py EXP --out EXP/report-asha --confirm 1 --seeds 3 --epochs {max_epochs} "
            "--num-cpus 2` (the trial is seed 0), or from bench_confirm's `EXP/report` where it exists (the same "
            "runs); test mAP is reported, never chosen on",
            "- the commands run: " + "; ".join(f"`{c}`" for c in dict.fromkeys(commands)),
            "", md_table(COLUMNS, rows, {"best val mAP": ".4f", "winner's mean val": ".4f"}), "",
            f"Per data set and arm: mean ± std over the search seeds; the differences are against {ref_label}, "
            "within noise when |difference| < the larger of the two arms' std over the search seeds:", "",
            *summary(rows, arms, ref_label)]
    publish(SECTION, "\n".join(text), args.no_write or args.quick)
    return {"runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]}


if __name__ == "__main__":
    main()
