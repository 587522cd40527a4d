"""Robustness to weak pairing: the noisy-correspondence benchmark (issue 21), every choice on validation.

    python bench/bench_noise.py                  # both real digits sets, then synthetic:plain; 0 / 0.2 / 0.5 / 0.8
    python bench/bench_noise.py --report-only    # table, BENCHMARKS.md section and figure from the runs done so far
    python bench/bench_noise.py --quick          # synthetic:tiny, 1 seed, noise 0 and 0.5, 2 epochs (CI, < 30 s)
    python bench/bench_noise.py --challenge mix_events --rates 0,0.5 --data ../shared/data/sk_digits_halves

The protocol of NCR (Huang et al., NeurIPS 2021) and its follow-ups: a fraction `pair_noise` of the
*training* pairs get another training item's visual vector (hscmae.data.challenges: a seeded
derangement among the chosen items, so every chosen pair is wrong), validation and test stay clean,
and retrieval is reported at each rate. Every method trains and chooses on the noisy train split
and the clean validation split; test is only reported. Per data set and rate (split fixed: split_seed
0; pair_noise_seed 0; model seeds 0, 1, 2):
- linear CCA on the raw features, ridge and dimension chosen on validation (deterministic: 1 run;
  fitted on the noisy train pairs, as every method's test-time CCA is);
- DCCA-only and DCCAE (ours: reconstruction + DCCA), each tuned on validation at that rate exactly as
  bench_quality.py does for BENCHMARKS' real-data section (its REAL_GRID, lr x cca_dim at seed 0, scored with
  test-time CCA auto; the chosen point then runs seeds 1 and 2): bench_quality's own functions;
- HSC-MAE with the shipped config/hsc_mae.yaml, and the components-search winner
  (best_components_search_digits.yaml, in config/ or bench/), 3 seeds each, test_cca auto;
- at 50 % noise on one real set: the shipped config's component ablation (hscmae.ablation.ablation_runs
  + train_one, seed 0; "no test-time CCA" is the shipped seed-0 run scored with test_cca off).

Each run is one JSON file under --out (default results/bench_noise/), written atomically when it
ends: a rerun skips finished runs, so the script can be stopped and resumed, and --report-only
renders whatever has finished (the missing cells are listed). Runs go in priority order, on the real
sets: 50 % (shipped config and baselines, then the search winner), 0 % (likewise), 20 % and 80 %
(shipped and baselines), the ablation, the winner at 20 % and 80 %; then synthetic:plain. One process, 1 torch thread + 1 BLAS thread.

--challenge mix_events / shared_nuisance: the same runs with that load-time challenge instead of
pair_noise (the rate axis is its value, its seed 0; it touches every split, so validation and test carry it
too), nonzero values first, under results/bench_noise/<key>/ (never mixed with the pair_noise runs);
the output is BENCHMARKS' section bench_noise_challenges, one table per challenge run so far; the
bench_noise section and the figure are left alone.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import tempfile
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from bench.bench_quality import (CONFIG, QUICK_GRID, REAL_GRID, _beyond_noise, _cfg_dict,  # noqa: E402
                                 _fit_both_scorings, _grid, _mean_std, short)
from bench.common import command_line, machine_info, md_table, one_thread, parser, publish, torch_threads_kept  # noqa: E402
from hscmae.ablation import ablation_runs, train_one  # noqa: E402
from hscmae.baselines import dcca_config, linear_cca_baseline  # noqa: E402
from hscmae.config import config_from_dict, load_config  # noqa: E402
from hscmae.data import load_data_for  # noqa: E402
from hscmae.data.real import real_sources  # noqa: E402
from hscmae.io import atomic_write_json, atomic_write_text  # noqa: E402

SECTION = "bench_noise"
CHALLENGE_SECTION = "bench_noise_challenges"
CHALLENGES = {"pair_noise": "weak pairing",  # the first: the default, the bench_noise section
              "mix_events": "multi-event clips: this fraction of every split's items get w x another class's item "
                            "added to both views, w ~ U[0.3, 0.8], the label the item's own",
              "shared_nuisance": "spurious co-occurrence: an 8-d Gaussian per item mapped into both views, its "
                                 "std per feature this value x the feature's train std (1 = as large as the feature)"}
CHALLENGE_KEYS = ("mix_events", "mix_events_seed", "shared_nuisance", "shared_nuisance_seed")
RATES = (0.0, 0.2, 0.5, 0.8)
QUICK_RATES = (0.0, 0.5)
RATE_ORDER = (0.5, 0.0, 0.2, 0.8)  # what runs first
PLAIN = "synthetic:plain"
TARGET_LEAD, TARGET_RATE = 0.08, 0.5  # issue 21: shipped >= best baseline + 0.08 at 50 % on both real sets
METHODS = {"linear": "linear CCA (raw features)", "dcca": "DCCA-only", "dccae": "DCCAE (ours: recon + DCCA)",
           "shipped": "HSC-MAE, shipped config", "winner": "HSC-MAE, components-search winner"}
BASELINES = ("linear", "dcca", "dccae")
DEFAULT_OUT = os.path.join(_REPO, "results", "bench_noise")  # gitignored
FIGURE = os.path.join(_REPO, "docs", "fig_noise.png")
NOISE_COLUMNS = ["data", "method", "hyperparameters (chosen on val)"] + [f"test mAP @ {int(100 * r)}%" for r in RATES]
LEAD_COLUMNS = ["data", "noise", "train pairs shuffled (same class)", "shipped test mAP", "best baseline",
                "best baseline test mAP", "shipped lead", "lead > 2 sd", "winner lead"]
SEARCH_COLUMNS = ["data", "noise", "baseline", "lr", "cca_dim", "val mAP", "chosen"]
ABLATION_COLUMNS = ["data", "noise", "component switched off", "change", "val mAP", "test mAP", "test mAP vs full"]
TABLES = {"noise": NOISE_COLUMNS, "leads": LEAD_COLUMNS, "baseline_search": SEARCH_COLUMNS,
          "ablation": ABLATION_COLUMNS}
KEEP = ("val_map", "val_map_a2v", "val_map_v2a", "test_map", "test_map_a2v", "test_map_v2a", "test_cca", "test_cca_dim")


def winner_path() -> str:
    """The components-search winner: config/ (where issue 20 moves the best_*.yaml) or bench/."""
    for folder in ("config", "bench"):
        p = os.path.join(_REPO, folder, "best_components_search_digits.yaml")
        if os.path.exists(p):
            return p
    raise SystemExit("error: best_components_search_digits.yaml: in neither config/ nor bench/")


# ----------------------------------------------------------------------------------------------
# the runs
# ----------------------------------------------------------------------------------------------
def _pct(rate: float) -> str:
    return f"{int(round(100 * rate))}%"


def rate_label(key: str, rate: float) -> str:
    return _pct(rate) if key == "pair_noise" else f"{key}={rate:g}"


def column(key: str, rate: float) -> str:
    return f"test mAP @ {int(100 * rate)}%" if key == "pair_noise" else f"test mAP @ {key}={rate:g}"


def run_path(out: str, t: dict, key: str = "pair_noise") -> str:
    point = f"_lr{t['point']['lr']:g}_cca{t['point']['cca_dim']}" if t.get("point") else ""
    what = t["method"] if t["method"] != "ablation" else f"ablation_{t['component']}"
    seed = "" if t["seed"] is None else f"_s{t['seed']}"
    level = f"noise{_pct(t['rate'])}" if key == "pair_noise" else f"{key}{t['rate']:g}"
    return os.path.join(out, short(t["data"]), level, f"{what}{point}{seed}.json")


def read_runs(out: str, key: str = "pair_noise") -> list[dict]:
    """Every run under out of that challenge (a pair_noise record has no "challenge": results/bench_noise/
    holds the other challenges' folders too)."""
    runs = []
    for root, _, files in os.walk(out):
        for f in sorted(files):
            if f.endswith(".json"):
                with open(os.path.join(root, f)) as fh:
                    runs.append(json.load(fh))
    return [r for r in runs if r.get("challenge", "pair_noise") == key]


class Bench:
    def __init__(self, args):
        self.args = args
        self.key = args.challenge
        self.quick = args.quick
        self.seeds = [0] if args.quick else list(range(args.seeds))
        self.rates = QUICK_RATES if args.quick else tuple(args.rates)
        self.sources = ["synthetic:tiny"] if args.quick else args.sources
        self.base = load_config(CONFIG)
        self.winner = load_config(winner_path())
        self.grid = _grid(QUICK_GRID if args.quick else REAL_GRID)
        self._data: dict = {}

    # -- configs ---------------------------------------------------------------------------------
    def epochs(self, method: str) -> int:
        if self.quick:
            return 2
        return (self.winner if method == "winner" else self.base).epochs

    def config(self, source: str, rate: float, method: str, seed: int, point: dict | None = None) -> dict:
        on = {self.key: rate, self.key + "_seed": 0}
        if method in ("dcca", "dccae"):
            cfg = dcca_config(self.base, use_recon=(method == "dccae"))
            return _cfg_dict(cfg, source, self.epochs(method), seed, **on, **point)
        cfg = self.winner if method == "winner" else self.base
        return _cfg_dict(cfg, source, self.epochs(method), seed, **on)

    def data(self, cfg):
        key = tuple(getattr(cfg, k) for k in ("data", "split_seed", "temporal_pool", "normalize", "val_fraction",
                                              "pair_noise", "pair_noise_seed") + CHALLENGE_KEYS)
        if key not in self._data:
            self._data[key] = load_data_for(cfg)
        return self._data[key]

    # -- the plan, in priority order ---------------------------------------------------------------
    def plan(self) -> list[dict]:
        real = [s for s in self.sources if s != PLAIN]
        order = [r for r in RATE_ORDER if r in self.rates] + [r for r in self.rates if r not in RATE_ORDER]
        if self.key != "pair_noise":  # the challenge's nonzero values first: 0 is the clean data
            order = [r for r in self.rates if r] + [r for r in self.rates if not r]
        first = [r for r in order if r in (0.5, 0.0)] if not self.quick and self.key == "pair_noise" else order
        rest = [r for r in order if r not in first]
        tasks: list[dict] = []
        main, winner = ("linear", "shipped", "dcca", "dccae"), ("winner",)
        steps = [([r], m) for r in first for m in (main, winner)] + [(rest, main), (None, None), (rest, winner)]
        for rates, methods in steps:
            if rates is None:  # the ablation, after every real cell but the winner's 20 % / 80 %
                if not self.args.no_ablation and real:
                    tasks += self.ablation_tasks(real[0], TARGET_RATE if TARGET_RATE in self.rates else self.rates[-1])
                continue
            for rate in rates:
                for s in real:
                    tasks += self.cell(s, rate, methods)
        if PLAIN in self.sources:
            for rate in order:
                tasks += self.cell(PLAIN, rate, tuple(METHODS))
        return [t for t in tasks if t["method"] in self.args.methods or t["method"] == "ablation"]

    def cell(self, s: str, rate: float, methods) -> list[dict]:
        out = []
        for m in methods:
            if m == "linear":
                out.append({"kind": "linear", "data": s, "rate": rate, "method": m, "seed": None})
            elif m in ("shipped", "winner"):
                out += [{"kind": "fit", "data": s, "rate": rate, "method": m, "seed": seed} for seed in self.seeds]
            else:  # a search at the first seed, then the point validation chose, at the other seeds
                out += [{"kind": "fit", "data": s, "rate": rate, "method": m, "seed": self.seeds[0], "point": p,
                         "search": True} for p in self.grid]
                out += [{"kind": "chosen", "data": s, "rate": rate, "method": m, "seed": seed} for seed in self.seeds[1:]]
        return out

    def ablation_tasks(self, s: str, rate: float) -> list[dict]:
        shipped = config_from_dict(self.config(s, rate, "shipped", self.seeds[0]))
        tasks = []
        for r in ablation_runs(shipped, seeds=[self.seeds[0]]):
            if r.component in ("full", "no_test_cca"):
                continue  # the shipped run itself, and its test_cca=off scoring
            tasks.append({"kind": "ablation", "data": s, "rate": rate, "method": "ablation", "seed": r.seed,
                          "component": r.component, "label": r.label, "change": r.changes,
                          "config": None if r.config is None else r.config.to_dict()})
        return tasks[:2] if self.quick else tasks  # --quick: two rows show the path works

    # -- running ------------------------------------------------------------------------------------
    def chosen_point(self, s: str, rate: float, method: str, runs: list[dict]) -> dict | None:
        """The search point with the best validation mAP (test_cca auto), as bench_quality's stage 2
        chooses (ties: the smaller lr); None until every search run of that cell is there."""
        search = [r for r in runs if r["data"] == s and r["rate"] == rate and r["method"] == method and r.get("search")]
        if len(search) < len(self.grid):
            return None
        best = max(search, key=lambda r: (r["auto"]["val_map"], -r["point"]["lr"]))
        return best["point"]

    def execute(self, t: dict, runs: list[dict]) -> dict | None:
        if t["kind"] == "chosen":
            point = self.chosen_point(t["data"], t["rate"], t["method"], runs)
            if point is None:
                return None
            t = {**t, "kind": "fit", "point": point}
        path = run_path(self.args.out, t, self.key)
        if os.path.exists(path):
            with open(path) as f:
                return {**json.load(f), "cached": True}
        t0 = time.perf_counter()
        rec = {k: v for k, v in t.items() if k not in ("kind", "config")}
        if self.key != "pair_noise":
            rec["challenge"] = self.key
        if t["kind"] == "linear":
            cfg = config_from_dict(self.config(t["data"], t["rate"], "shipped", 0))
            data = self.data(cfg)
            r = linear_cca_baseline(data)
            rec.update(auto=r, off=r, config={k: cfg.to_dict()[k] for k in ("data", "split_seed", self.key,
                                                                             self.key + "_seed")})
        elif t["kind"] == "ablation":
            if t["config"] is None:
                rec.update(auto=None, off=None, config=None)
            else:
                cfg = config_from_dict(t["config"])
                data = self.data(cfg)
                r = train_one(t["config"], data)
                rec.update(auto=r, off=None, config=t["config"])
        else:
            cfg = config_from_dict(self.config(t["data"], t["rate"], t["method"], t["seed"], t.get("point")))
            data = self.data(cfg)
            final, off = _fit_both_scorings(cfg, data)
            rec.update(auto={k: final[k] for k in KEEP if k in final}, off={k: off[k] for k in KEEP if k in off},
                       config=cfg.to_dict())
        if rec["config"] is not None:
            rec["fingerprint"] = data.fingerprint()
            rec[self.key + "_meta"] = {k: v for k, v in data.meta.get(self.key, {}).items() if k != "what"}
        rec["seconds"] = time.perf_counter() - t0
        rec["load"] = os.getloadavg()
        atomic_write_json(path, rec)
        return rec

    def run(self) -> list[dict]:
        tasks = self.plan()
        runs = read_runs(self.args.out, self.key)
        t_start = time.time()
        pending = list(tasks)
        while pending:
            deferred = []
            for t in pending:
                r = self.execute(t, runs)
                if r is None:
                    deferred.append(t)
                    continue
                if not r.pop("cached", False):
                    runs.append(r)
                    m = r["auto"] or {}
                    print(f"[{time.time() - t_start:7.0f}s] {short(r['data']):16s} {rate_label(self.key, r['rate']):>4s} "
                          f"{r['method']:8s} {r.get('component', '')} seed {r['seed']} {r.get('point', '')} "
                          f"val {m.get('val_map', float('nan')):.4f} test {m.get('test_map', float('nan')):.4f} "
                          f"({r['seconds']:.0f}s)", file=sys.stderr, flush=True)
            if len(deferred) == len(pending):
                raise RuntimeError(f"{len(deferred)} runs wait on searches that never ran")
            pending = deferred
        return read_runs(self.args.out, self.key)


# ----------------------------------------------------------------------------------------------
# tables, section, figure
# ----------------------------------------------------------------------------------------------
def _fmt(xs: list[float]) -> str:
    if not xs:
        return "–"
    m, s = _mean_std(xs)
    return f"{m:.3f}" if len(xs) == 1 else f"{m:.3f} ± {s:.3f} ({len(xs)})"


def reported(runs: list[dict], s: str, rate: float, method: str, n_grid: int) -> tuple[list[dict], dict | None]:
    """The runs a table cell reports: linear CCA's one run; the shipped config's / winner's seeds;
    a deep baseline's validation-chosen point (search at the first seed, the same point at the
    others), once its whole search (n_grid points) has run. Returns (runs, chosen point)."""
    mine = [r for r in runs if r["data"] == s and r["rate"] == rate and r["method"] == method]
    if method not in ("dcca", "dccae"):
        return mine, None
    search = [r for r in mine if r.get("search")]
    if len(search) < n_grid:
        return [], None
    best = max(search, key=lambda r: (r["auto"]["val_map"], -r["point"]["lr"]))
    return [r for r in mine if r["point"] == best["point"] and (r.get("search") is None or r is best)], best["point"]


def summarise(runs: list[dict], sources: list[str], rates, expected: dict, n_grid: int,
              key: str = "pair_noise") -> dict:
    """Tables from the finished runs; `expected` counts the runs each (data, rate, method) cell
    should have, for the missing-cells list."""
    noise, leads, search_rows, ablation = [], [], [], []
    cells = {}
    for s in sources:
        for m, label in METHODS.items():
            row = {"data": short(s), "method": label, "hyperparameters (chosen on val)": ""}
            hyper = []
            for rate in RATES if key == "pair_noise" else rates:
                rs, point = reported(runs, s, rate, m, n_grid)
                xs = [r["auto"]["test_map"] for r in rs]
                cells[(s, rate, m)] = xs
                row[column(key, rate)] = _fmt(xs) if rate in rates else "not run"
                if point:
                    hyper.append(f"{rate_label(key, rate)}: lr {point['lr']:g}, cca_dim {point['cca_dim']}")
                elif m == "linear" and rs:
                    hyper.append(f"{rate_label(key, rate)}: ridge {rs[0]['auto']['reg']:g}, dim {rs[0]['auto']['dim']}")
            row["hyperparameters (chosen on val)"] = (
                "; ".join(hyper) if m not in ("shipped", "winner") else "fixed config; test-time CCA chosen on val")
            if any(cells[(s, r, m)] for r in (RATES if key == "pair_noise" else rates)):
                noise.append(row)
        for rate in rates:
            sh = cells.get((s, rate, "shipped"), [])
            base = {m: cells[(s, rate, m)] for m in BASELINES if cells.get((s, rate, m))}
            meta = next((r.get("pair_noise_meta") for r in runs if r["data"] == s and r["rate"] == rate
                         and r.get("pair_noise_meta") is not None), None)
            shuffled = (f"{meta['shuffled']} of {meta['n_train']} ({meta['shuffled_same_class']})" if meta else
                        "0" if rate == 0 else "")
            def complete(m):
                return len(cells.get((s, rate, m), [])) >= expected.get((s, rate, m), 1)

            if not complete("shipped") or not all(complete(m) for m in BASELINES if (s, rate, m) in expected) \
                    or not base:
                continue  # a lead over a baseline whose seeds are not all in is no lead
            best = max(base, key=lambda m: _mean_std(base[m])[0])
            bm, bsd = _mean_std(base[best])
            wi = cells.get((s, rate, "winner"), []) if complete("winner") else []
            leads.append({"data": short(s), "noise": rate_label(key, rate), "train pairs shuffled (same class)": shuffled,
                          "shipped test mAP": _fmt(sh), "best baseline": METHODS[best],
                          "best baseline test mAP": _fmt(base[best]),
                          "shipped lead": f"{_mean_std(sh)[0] - bm:+.3f}",
                          "lead > 2 sd": _beyond_noise(_mean_std(sh)[0] - bm, _mean_std(sh)[1], bsd, len(sh), len(base[best])),
                          "winner lead": f"{_mean_std(wi)[0] - bm:+.3f}" if wi else "–",
                          "_lead": _mean_std(sh)[0] - bm, "_rate": rate, "_source": s})
            for m in ("dcca", "dccae"):
                rs = sorted((r for r in runs if r["data"] == s and r["rate"] == rate and r["method"] == m
                             and r.get("search")), key=lambda r: (r["point"]["lr"], r["point"]["cca_dim"]))
                _, point = reported(runs, s, rate, m, n_grid)
                for r in rs:
                    search_rows.append({"data": short(s), "noise": rate_label(key, rate), "baseline": METHODS[m],
                                        "lr": r["point"]["lr"], "cca_dim": r["point"]["cca_dim"],
                                        "val mAP": r["auto"]["val_map"], "chosen": "yes" if r["point"] == point else ""})
    for r in runs:
        if r["method"] != "ablation":
            continue
        full = [x for x in runs if x["data"] == r["data"] and x["rate"] == r["rate"] and x["method"] == "shipped"
                and x["seed"] == r["seed"]]
        if not any(a["data"] == short(r["data"]) and a["noise"] == rate_label(key, r["rate"]) and a["component switched off"] == "(none)"
                   for a in ablation) and full:
            f = full[0]
            for label, change, m in (("(none)", f"shipped config, seed {f['seed']}", f["auto"]),
                                     ("no test-time CCA", "test_cca=off", f["off"])):
                ablation.append({"data": short(r["data"]), "noise": rate_label(key, r["rate"]), "component switched off": label,
                                 "change": change, "val mAP": m["val_map"], "test mAP": m["test_map"],
                                 "test mAP vs full": "" if label == "(none)" else f"{m['test_map'] - f['auto']['test_map']:+.3f}"})
        ref = full[0]["auto"]["test_map"] if full else float("nan")
        m = r["auto"]
        ablation.append({"data": short(r["data"]), "noise": rate_label(key, r["rate"]), "component switched off": r["label"],
                         "change": r["change"], "val mAP": m["val_map"] if m else float("nan"),
                         "test mAP": m["test_map"] if m else float("nan"),
                         "test mAP vs full": f"{m['test_map'] - ref:+.3f}" if m and full else ""})
    missing = []
    for s in sources:
        for rate in rates:
            short_of = [(m, len(cells.get((s, rate, m), [])), n) for (s_, r_, m), n in expected.items()
                        if (s_, r_) == (s, rate) and len(cells.get((s, rate, m), [])) < n]
            if short_of and all(got == 0 for _, got, _ in short_of) and len(short_of) == len(
                    [k for k in expected if k[:2] == (s, rate)]):
                missing.append(f"{short(s)} {rate_label(key, rate)}: every method")
            elif short_of:
                missing.append(f"{short(s)} {rate_label(key, rate)}: " + ", ".join(f"{METHODS[m]} {got}/{n} seeds"
                                                                      for m, got, n in short_of))
    return {"noise": noise, "leads": leads, "baseline_search": search_rows, "ablation": ablation,
            "_cells": cells, "_missing": missing}


def verdicts(tables: dict, sources: list[str]) -> list[str]:
    out = []
    real = [s for s in sources if not s.startswith("synthetic:")]
    at = [r for r in tables["leads"] if r["_rate"] == TARGET_RATE and r["_source"] in real]
    for r in at:
        out.append(f"- **{r['data']} at {r['noise']} noise**: shipped {r['shipped test mAP']} vs best baseline "
                   f"{r['best baseline']} {r['best baseline test mAP']}: lead {r['shipped lead']} -> target "
                   f"(>= +{TARGET_LEAD:.2f}) **{'met' if r['_lead'] >= TARGET_LEAD else 'NOT met'}**")
    if real and len(at) == len(real):
        ok = all(r["_lead"] >= TARGET_LEAD for r in at)
        out.append(f"- Issue 21's target (shipped >= best baseline + {TARGET_LEAD:.2f} at 50 % noise on both real sets): "
                   f"**{'met' if ok else 'NOT met'}**")
    elif real:
        out.append("- Issue 21's target cannot be judged yet: a real set's 50 % cell is missing")
    return out


def figure(tables: dict, sources: list[str], rates, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = tables["_cells"]
    fig, axes = plt.subplots(1, len(sources), figsize=(4.6 * len(sources), 4.0), squeeze=False, sharey=True)
    styles = {"linear": ("tab:gray", "--"), "dcca": ("tab:blue", "-"), "dccae": ("tab:cyan", "-"),
              "shipped": ("tab:red", "-"), "winner": ("tab:orange", "-.")}
    for ax, s in zip(axes[0], sources):
        for m, label in METHODS.items():
            pts = [(r, _mean_std(cells[(s, r, m)])) for r in rates if cells.get((s, r, m))]
            if not pts:
                continue
            x = [100 * r for r, _ in pts]
            mu = [ms[0] for _, ms in pts]
            sd = [ms[1] for _, ms in pts]
            c, ls = styles[m]
            ax.errorbar(x, mu, yerr=sd, fmt="o", ls=ls, color=c, ms=4, capsize=3, label=label)
            ax.fill_between(x, [a - b for a, b in zip(mu, sd)], [a + b for a, b in zip(mu, sd)], color=c, alpha=0.18)
        ax.set_title(short(s))
        ax.set_xlabel("train pairs shuffled (%)")
        ax.set_xticks([100 * r for r in rates])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test mAP (mean ± seed std)")
    handles = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    order = [lab for lab in METHODS.values() if lab in handles]
    fig.legend([handles[lab] for lab in order], order, fontsize=8, loc="lower center", ncol=len(order), frameon=False)
    fig.suptitle("Noisy correspondence: a share of the train pairs shuffled, val/test clean, every choice on validation",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def expected_runs(b: Bench) -> dict:
    exp = {}
    for s in b.sources:
        for rate in b.rates:
            for m in b.args.methods:
                exp[(s, rate, m)] = 1 if m == "linear" else len(b.seeds)
    return exp


def render(tables, info, command, header, b: Bench, fig_rel: str) -> str:
    runs = info["runs"]
    secs = [r["seconds"] for r in runs if r["method"] in ("shipped", "dcca", "dccae", "winner")]
    missing = tables["_missing"]
    lines = [
        "## Noise robustness (weakly paired data): the noisy-correspondence benchmark (`bench/bench_noise.py`)", "",
        header,
        f"- command: `{command}`; {len(runs)} runs finished (one JSON each under {os.path.relpath(b.args.out, _REPO)}/; "
        f"a rerun skips them); median deep run {statistics.median(secs) if secs else float('nan'):.0f} s at 1 thread "
        "on this shared machine",
        "- protocol (NCR, Huang et al. 2021): `pair_noise` of the *train* pairs get another train item's visual vector "
        "(hscmae.data.challenges: a seeded derangement, pair_noise_seed 0, so every shuffled pair is wrong; with 10 "
        "classes about a tenth of them still share a class, the column in parentheses); validation and test are clean. "
        "Every method trains on the noisy train pairs (linear CCA and every test-time CCA are fitted on them too) and "
        "chooses on clean validation; test is only reported.",
        "- methods: linear CCA (ridge x dim on val); DCCA-only and DCCAE (ours: recon + DCCA, mask 0, weights 1:1), "
        "each tuned at every noise rate by bench_quality.py's own protocol for the real-data section (lr "
        + "/".join(f"{x:g}" for x in (QUICK_GRID if b.quick else REAL_GRID)["lr"]) + " x cca_dim "
        + "/".join(map(str, (QUICK_GRID if b.quick else REAL_GRID)["cca_dim"]))
        + " at seed 0, chosen on val with test-time CCA auto; that point then runs seeds 1, 2); the shipped "
        f"config/hsc_mae.yaml ({b.epochs('shipped')} epochs) and the components-search winner "
        f"({os.path.relpath(winner_path(), _REPO)}, {b.epochs('winner')} epochs, searched on clean sk_digits_halves), "
        "test_cca auto. Cells: test mAP, mean ± sample std over model seeds (n).",
        f"- seeds: {b.seeds}; split_seed 0; rates {', '.join(_pct(r) for r in b.rates)}",
        "- missing cells (not finished when this section was written): " + ("; ".join(missing) if missing else "none"),
        "", md_table(NOISE_COLUMNS, tables["noise"]), "",
        f"![test mAP against the share of shuffled train pairs]({fig_rel})", "",
        "Lead of the shipped config over the best baseline (the baseline with the highest test mean at that rate: "
        "the strongest competitor; a row once every seed of the shipped config and the baselines is in), and of the "
        "search winner; lead > 2 sd: whether it exceeds twice the std of a one-seed difference, "
        "2 sqrt(sd_shipped^2 + sd_baseline^2) (bench_quality's test):", "",
        md_table(LEAD_COLUMNS, tables["leads"]), "", *verdicts(tables, b.sources), "",
        "Baseline searches (seed 0; validation mAP with test-time CCA auto; test never looked at for the choice):", "",
        md_table(SEARCH_COLUMNS, tables["baseline_search"], {"lr": "g", "val mAP": ".4f"}), ""]
    if tables["ablation"]:
        lines += ["What carries the robustness: the shipped config's component ablation at "
                  f"{tables['ablation'][0]['noise']} noise (one component off at a time, seed 0; `hscmae.ablation."
                  "ablation_runs` + `train_one`; the test-time CCA is fitted on the noisy train pairs; one seed: read "
                  "differences against the shipped row's seed std above):", "",
                  md_table(ABLATION_COLUMNS, tables["ablation"], {"val mAP": ".4f", "test mAP": ".4f"}), ""]
    return "\n".join(lines)


def default_out(key: str) -> str:
    return DEFAULT_OUT if key == "pair_noise" else os.path.join(DEFAULT_OUT, key)


def render_challenges(b: Bench, command: str, header: str) -> tuple[str, dict]:
    """Section bench_noise_challenges: one table per challenge folder there is (this run's --out, and
    the other challenges' default folders unless --quick or --out elsewhere). Returns (text, tables)."""
    lines = ["## The method's other challenges on real data (multi-event clips, spurious co-occurrence): "
             "`bench/bench_noise.py --challenge`", "", header,
             "- the noisy-correspondence benchmark's runs and choices (linear CCA; DCCA-only and DCCAE tuned over lr x "
             "cca_dim at seed 0 on validation, the chosen point at the other seeds; the shipped config/hsc_mae.yaml; "
             "test_cca auto), with a load-time challenge (hscmae.data.challenges, its seed 0) in place of pair_noise. "
             "It changes every split (validation and test carry it too, as a user's data would), so the value-0 "
             "column is the clean data. Cells: test mAP, mean ± sample std over model seeds (n)."]
    out_tables = {}
    for key in CHALLENGES:
        own = key == b.key
        folder = b.args.out if own else default_out(key)
        if key == "pair_noise" or not os.path.isdir(folder) or (
                not own and (b.quick or b.args.out != default_out(b.key))):
            continue
        runs = read_runs(folder, key)
        if not runs:
            continue
        rates = sorted({r["rate"] for r in runs}) if not own else sorted(b.rates)
        sources = list(dict.fromkeys(r["data"] for r in runs)) if not own else b.sources
        methods = [m for m in METHODS if any(r["method"] == m for r in runs)] if not own else b.args.methods
        expected = {(s, r, m): 1 if m == "linear" else len(b.seeds) for s in sources for r in rates for m in methods}
        t = summarise(runs, sources, rates, expected, len(b.grid), key)
        out_tables[key] = t
        cmd_file = os.path.join(folder, "command.txt")
        cmd = command if own else (open(cmd_file).read().strip() if os.path.exists(cmd_file) else "not recorded")
        secs = [r["seconds"] for r in runs if r["method"] in ("shipped", "dcca", "dccae", "winner")]
        leads = [{**r, "level": r["noise"]} for r in t["leads"] if r["_rate"]]
        lead_cols = ["data", "level", "shipped test mAP", "best baseline", "best baseline test mAP", "shipped lead",
                     "lead > 2 sd"]
        lines += ["", f"### `{key}`: {CHALLENGES[key]}", "",
                  f"- command: `{cmd}`; {len(runs)} runs (one JSON each under {os.path.relpath(folder, _REPO)}/); "
                  f"median deep run {statistics.median(secs) if secs else float('nan'):.0f} s at 1 thread",
                  "- missing cells: " + ("; ".join(t["_missing"]) or "none"), "",
                  md_table(["data", "method", "hyperparameters (chosen on val)"] + [column(key, r) for r in rates],
                           t["noise"]), "",
                  "Lead of the shipped config over the best validation-tuned baseline (highest test mean) at each "
                  "nonzero value; lead > 2 sd as in the noise section (it tests the size of the difference: with a "
                  "negative lead, yes means clearly behind):", "", md_table(lead_cols, leads)]
    return "\n".join(lines) + "\n", out_tables


def parse_args(argv: list[str] | None = None):
    p = parser(__file__, __doc__, "synthetic:tiny, 1 seed, noise 0 and 0.5, 2 epochs, results in a temporary folder (CI)")
    p.add_argument("--out", default=None, help=f"one JSON per run (default {os.path.relpath(DEFAULT_OUT, _REPO)}; "
                                               "--quick: a temporary folder)")
    p.add_argument("--data", action="append", default=None, metavar="SRC",
                   help="'real' (hscmae.data.real's sets), 'synthetic:plain' or any source; repeatable "
                        "(default: real, then synthetic:plain)")
    p.add_argument("--challenge", choices=tuple(CHALLENGES), default="pair_noise",
                   help="the load-time challenge on the rate axis (default pair_noise: the bench_noise section); "
                        "another writes section bench_noise_challenges, runs under results/bench_noise/<key>/")
    p.add_argument("--rates", default=None, help="comma-separated values of the challenge (default: pair_noise "
                                                 + ",".join(f"{r:g}" for r in RATES) + "; mix_events 0,0.5; "
                                                 "shared_nuisance 0,1)")
    p.add_argument("--seeds", type=int, default=3, help="model seeds 0..SEEDS-1")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--no-ablation", action="store_true", help="skip the shipped config's ablation at 50 %% noise")
    p.add_argument("--report-only", action="store_true", help="run nothing: tables, section and figure from --out")
    p.add_argument("--figure", default=None, help=f"figure path (default {os.path.relpath(FIGURE, _REPO)}; "
                                                  "--quick or --no-write: inside --out)")
    args = p.parse_args(argv)
    if args.rates is None:
        args.rates = {"pair_noise": ",".join(f"{r:g}" for r in RATES), "mix_events": "0,0.5",
                      "shared_nuisance": "0,1"}[args.challenge]
    lo_hi = {"pair_noise": "[0, 1)", "mix_events": "[0, 1]", "shared_nuisance": ">= 0"}[args.challenge]
    ok = {"pair_noise": lambda r: 0 <= r < 1, "mix_events": lambda r: 0 <= r <= 1,
          "shared_nuisance": lambda r: 0 <= r < math.inf}[args.challenge]
    try:
        args.rates = [float(x) for x in args.rates.split(",") if x]
    except ValueError:
        p.error(f"--rates {args.rates!r}: expected comma-separated numbers {lo_hi}")
    if not args.rates or not all(ok(r) for r in args.rates):
        p.error(f"--rates {args.rates!r}: expected comma-separated {args.challenge} values {lo_hi}")
    args.methods = [m for m in args.methods.split(",") if m]
    if not args.methods or set(args.methods) - set(METHODS):
        p.error(f"--methods: expected a comma-separated subset of {','.join(METHODS)}")
    sources = []
    for d in args.data or ["real", PLAIN]:
        sources += real_sources() if d == "real" else [d]
    args.sources = list(dict.fromkeys(sources))
    return args


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    args = parse_args(argv)
    tmp = None
    if args.out is None:
        if args.quick:
            tmp = tempfile.TemporaryDirectory(prefix="bench_noise_")
            args.out = tmp.name
        else:
            args.out = default_out(args.challenge)
    fig_path = args.figure or (os.path.join(args.out, "fig_noise.png") if args.quick or args.no_write else FIGURE)
    header = machine_info()
    b = Bench(args)
    t0 = time.time()
    with torch_threads_kept():
        limiter = one_thread()
        try:
            runs = read_runs(args.out, b.key) if args.report_only else b.run()
        finally:
            if limiter is not None:
                limiter.unregister()
    if b.key != "pair_noise":  # never the bench_noise section or its figure: their runs may not be here
        if not args.report_only:
            atomic_write_text(os.path.join(args.out, "command.txt"), command_line(argv, __file__) + "\n")
        text, tables = render_challenges(b, command_line(argv, __file__), header)
        publish(CHALLENGE_SECTION, text, args.no_write or args.quick)
        if tmp is not None:
            tmp.cleanup()
        return {k: [{c: v for c, v in r.items() if not c.startswith("_")} for r in t["noise"] + t["leads"]]
                for k, t in tables.items()}
    runs = [r for r in runs if r["data"] in b.sources and r["rate"] in b.rates]
    tables = summarise(runs, b.sources, b.rates, expected_runs(b), len(b.grid))
    figure(tables, [s for s in b.sources if any(r["data"] == s for r in runs)] or b.sources, b.rates, fig_path)
    info = {"runs": runs, "wall_s": time.time() - t0}
    fig_rel = os.path.relpath(fig_path, _REPO) if fig_path == FIGURE else fig_path
    text = render(tables, info, command_line(argv, __file__), header, b, fig_rel)
    publish(SECTION, text, args.no_write or args.quick)
    result = {k: [{c: v for c, v in r.items() if not c.startswith("_")} for r in tables[k]] for k in TABLES}
    result["_out"] = args.out if tmp is None else None
    if tmp is not None:
        tmp.cleanup()
    return {k: v for k, v in result.items() if k in TABLES}


if __name__ == "__main__":
    main()
