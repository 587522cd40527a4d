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
a share of the search's wall time.
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

from bench.common import command_line, machine_info, md_table, parser, publish  # noqa: E402

SECTION = "bench_confirm"
DEFAULT_DATA = ("../shared/data/sk_digits_halves", "synthetic:ave")
COLUMNS = ["data", "search seed", "epochs", "configs x seeds", "single-seed choice", "confirmed choice", "same",
           "confirmed test", "single-seed choice's test", "base config's test", "search min", "confirm min",
           "confirm / search"]
TABLES = {"runs": COLUMNS}


def _slug(data: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", os.path.basename(data.rstrip("/")) or data).strip("-")


class Timings:
    """{step: seconds}, kept in <out>/timings.json from the run that did the step's work."""

    def __init__(self, out: str):
        self.path = os.path.join(out, "timings.json")
        self.t = json.load(open(self.path)) if os.path.exists(self.path) else {}

    def run(self, step: str, cmd: list[str], env: dict) -> float:
        if step in self.t:  # done before: the command again only restores / reads what is stored
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


def main(argv: list[str] | None = None) -> dict:
    p = parser(__file__, __doc__, "smoke space on synthetic:tiny, 3 trials, confirm 2 x 2 (CI)")
    p.add_argument("--data", nargs="+", default=list(DEFAULT_DATA))
    p.add_argument("--search-seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=os.path.join(_REPO, "results", "bench_confirm"))
    args = p.parse_args(argv)
    if args.quick:
        args.data, args.search_seeds, args.top, args.seeds = ["synthetic:tiny"], [0], 2, 2
        if args.out == os.path.join(_REPO, "results", "bench_confirm"):
            import tempfile

            args.out = tempfile.mkdtemp(prefix="bench-confirm-")
    os.makedirs(args.out, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    timings, rows = Timings(args.out), []
    header = machine_info()
    for data in args.data:
        for seed in args.search_seeds:
            name = f"{_slug(data)}-s{seed}"
            exp = os.path.join(args.out, name)
            search = [sys.executable, "tune_main.py", "--storage", args.out, "--name", name, "--seed", str(seed),
                      "--data", data]
            search += ["--space", "smoke", "--num-samples", "3"] if args.quick else ["--space", "default"]
            search_s = timings.run(f"{name}/search", search, env)
            space = json.load(open(os.path.join(exp, "space.json")))
            import yaml

            base_epochs = int(yaml.safe_load(open(os.path.join(exp, "base_config.yaml")))["epochs"])
            lengths = [space["max_epochs"]] + ([] if args.quick or base_epochs == space["max_epochs"] else [base_epochs])
            for epochs in lengths:
                report = os.path.join(exp, "report" if epochs == space["max_epochs"] else f"report-{epochs}-epochs")
                cmd = [sys.executable, "report.py", exp, "--out", report, "--confirm", str(args.top),
                       "--seeds", str(args.seeds), "--epochs", str(epochs), "--num-cpus", "2"]
                confirm_s = timings.run(f"{name}/confirm-{epochs}", cmd, env)
                rows.append(one_row(data, seed, epochs, report, search_s, confirm_s))
                print(md_table(COLUMNS, rows[-1:]), flush=True)
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
    publish(SECTION, "\n".join(text), args.no_write or args.quick)
    return {"runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]}


if __name__ == "__main__":
    main()
