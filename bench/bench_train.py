"""Training-step throughput of HSC-MAE on CPU, and its FLOP/s as a fraction of a plain matmul's.

    python bench/bench_train.py            # full: ~3 minutes on 2 cores; writes its BENCHMARKS.md section
    python bench/bench_train.py --quick    # seconds (CI); add --no-write to leave BENCHMARKS.md alone
    python bench/bench_train.py --compile  # only torch.compile against eager (its own section)

What is timed is the library's own step, `hscmae.train.optimizer_step` (forward, finiteness check,
backward, fused AdamW, EMA teacher update), on batches indexed from the preloaded tensors as
`fit` does, with config/hsc_mae.yaml. All cells run in one process, interleaved round by round,
and every timed block is followed by a float32 matmul of the step's largest layer shape
(256 x 1024 @ 1024 x 512) at the same thread count, so machine load hits both sides alike;
each fraction is the median over rounds of (step FLOP/s) / (that round's matmul FLOP/s).

1. throughput: synthetic:ave and synthetic:vegas, batch 256 and the shipped 64, 1 and 2 threads;
2. breakdown: the batch-256 step with terms switched on one after another, to show what costs
   time beyond the matmuls;
3. profile: torch.profiler's top operators (self CPU time) of the batch-256 step at each thread count.
4. recipe (its own section, `bench_train_recipe`; `--recipe-only` runs just it): config/official.yaml's
   step (the official architecture and objective at batch 512) beside the shipped config's, on
   synthetic:vegas at 1 thread.
5. compile (its own section, `bench_train_compile`; `--compile` runs just it): config `compile: true`
   (torch.compile of the step) against eager on the CPU: compile seconds per trial, ms/step after.

FLOPs counted from the Linear layer shapes: student encoders + decoders forward + backward =
6 x MACs x batch, teacher encoders forward (clean inputs) = 2 x MACs x batch. Not counted: LayerNorm,
GELU, the b x b cosine-similarity matmuls and DCCA's d x d float64 algebra (the "extra" FLOPs in
the section). Autograd skips the input gradient of each encoder's first layer (its input needs no
gradient), so the arithmetic executed is below the nominal count, as in any such network.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.common import command_line, machine_info, md_table, parser, publish, torch_threads_kept  # noqa: E402
from hscmae import train as T  # noqa: E402
from hscmae.config import load_config  # noqa: E402
from hscmae.data import load_data  # noqa: E402

SECTION = "bench_train"
COMPILE_SECTION = "bench_train_compile"
COMPILE_COLUMNS = ["batch", "threads", "eager ms/step", "compiled ms/step", "speed-up", "compile s (first steps)",
                   "steps to repay", "graph breaks"]
CONFIG = os.path.join(_REPO, "config", "hsc_mae.yaml")
MATMUL = (256, 1024, 512)  # the step's largest layer: visual encoder layer 1 / decoder layer 2 at batch 256
REF = "matmul 256x1024x512 GFLOP/s"
THROUGHPUT_COLUMNS = ["data", "batch", "threads", "ms/step", "clips/s", "step GFLOP/s", REF, "% of matmul"]
BREAKDOWN_COLUMNS = ["step", "threads", "ms/step", "+ms", "% of matmul"]
PROFILE_COLUMNS = ["threads", "operator", "calls/step", "ms/step", "% of step"]
RECIPE_SECTION = "bench_train_recipe"
OFFICIAL = os.path.join(_REPO, "config", "official.yaml")
RECIPE_COLUMNS = ["config", "batch", "threads", "ms/step", "ms per 1k clips", "GFLOP/step", "x shipped FLOPs/clip",
                  "step GFLOP/s"]
TABLES = {"throughput": THROUGHPUT_COLUMNS, "breakdown": BREAKDOWN_COLUMNS, "profile": PROFILE_COLUMNS,
          "recipe": RECIPE_COLUMNS}
TARGETS = {1: 0.75, 2: 0.60}  # step FLOP/s as a fraction of the matmul's, batch 256


def _linears(mods) -> list[nn.Linear]:
    return [m for mod in mods.values() for m in mod.modules() if isinstance(m, nn.Linear)]


def _macs(mods) -> int:
    return sum(lin.in_features * lin.out_features for lin in _linears(mods))


def step_flops(model, cfg, batch: int) -> dict[str, float]:
    """Nominal FLOPs of one step from the layer shapes (see the module docstring)."""
    student = _macs(model.encoders) + _macs(model.decoders)
    teacher = _macs(model.encoders) if (cfg.use_infonce or cfg.use_distill) else 0
    d, b = cfg.embed_dim, batch
    extra = (8 * b * b * d if cfg.use_infonce else 0) + (12 * b * d * d if cfg.use_dcca else 0)
    return {"nominal": float(6 * student * batch + 2 * teacher * batch), "extra": float(extra),
            "student_macs": student, "teacher_macs": teacher}


class StepRunner:
    """A fresh run (as fit() sets it up) whose steps are hscmae.train.optimizer_step on
    hscmae.train.batches, fit's own batch loop, one epoch's permutation after another."""

    def __init__(self, cfg, data, device: torch.device = torch.device("cpu")):
        self.cfg = cfg
        self.model, self.log_vars, self.opt, self.gen = T.build_training(cfg, data, device)
        self.forward = T.make_forward(cfg, device)  # train_step, or compiled with cfg.compile
        self.tensors = [torch.from_numpy(x).to(device) for x in (data.audio, data.visual, data.splits["train"])]
        self.epoch = iter(())
        self.flops = step_flops(self.model, cfg, cfg.batch_size)["nominal"]

    def steps(self, n: int) -> None:
        for _ in range(n):
            batch = next(self.epoch, None)
            if batch is None:
                self.epoch = T.batches(*self.tensors, self.cfg.batch_size, self.gen)
                batch = next(self.epoch)
            T.optimizer_step(self.model, self.cfg, self.opt, self.log_vars, *batch, self.gen, forward=self.forward)


class NetsOnly:
    """The student's encoders and decoders alone, forward + backward of a sum, no loss terms or
    optimiser: with act=False only their Linear layers (the matmul floor), else the real MLPs."""

    def __init__(self, cfg, data, act: bool):
        torch.manual_seed(0)
        model = T.build_model(cfg, data)
        self.enc, self.dec = model.encoders, model.decoders
        if not act:
            for mods in (self.enc, self.dec):
                for k in list(mods):
                    mods[k] = nn.Sequential(mods[k][0], mods[k][3])
        b = cfg.batch_size
        self.xa, self.xv = torch.randn(b, data.audio.shape[1]), torch.randn(b, data.visual.shape[1])
        self.params = list(self.enc.parameters()) + list(self.dec.parameters())
        self.flops = 6.0 * (_macs(self.enc) + _macs(self.dec)) * b

    def steps(self, n: int) -> None:
        for _ in range(n):
            za, zv = self.enc["a"](self.xa), self.enc["v"](self.xv)
            (self.dec["a"](za).sum() + self.dec["v"](zv).sum()).backward()
            for p in self.params:
                p.grad = None


def matmul_rate(repeat: int = 9) -> float:
    """float32 GFLOP/s of the MATMUL shape, median of `repeat` calls at the current thread count."""
    m, k, n = MATMUL
    a, w = torch.randn(m, k), torch.randn(k, n)
    a @ w
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ w
        times.append(time.perf_counter() - t0)
    return 2 * m * k * n / statistics.median(times) / 1e9


def busy_cores() -> tuple[float, float]:
    """(busy jiffies of the whole machine in seconds, this process's CPU seconds), for others_cores."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    t = os.times()
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK"), t.user + t.system


def measure(cells: dict, rounds: int, steps_for, busy_limit: float = 0.3, retries: int = 3) -> dict:
    """cells: key -> (runner, threads). Every round times each cell once (after warm-up steps)
    and then the matmul at that thread count. A block during which other processes used more than
    `busy_limit` of a core is timed again after a pause, up to `retries` times (with 2 threads,
    one descheduled thread stalls every parallel region, so such a block measures the neighbour).
    Returns key -> {"times": s/step per round, "mm": GFLOP/s per round, "others": cores used by
    other processes during the kept block}."""
    out = {key: {"times": [], "mm": [], "others": []} for key in cells}
    for _ in range(rounds):
        for key, (runner, threads) in cells.items():
            torch.set_num_threads(threads)
            for attempt in range(retries + 1):
                runner.steps(2)
                n = steps_for(runner)
                busy0, mine0 = busy_cores()
                t0 = time.perf_counter()
                runner.steps(n)
                dt = time.perf_counter() - t0
                mm = matmul_rate()
                busy1, mine1 = busy_cores()
                others = max(0.0, (busy1 - busy0) - (mine1 - mine0)) / (time.perf_counter() - t0)
                if others <= busy_limit or attempt == retries:
                    break
                time.sleep(2.0)
            out[key]["times"].append(dt / n)
            out[key]["mm"].append(mm)
            out[key]["others"].append(others)
    return out


def _frac(res: dict, flops: float) -> float:
    return statistics.median(flops / t / 1e9 / r for t, r in zip(res["times"], res["mm"]))


def run(quick: bool) -> tuple[dict[str, list[dict]], dict]:
    info: dict = {}
    sources = ["synthetic:ave,n=1000", "synthetic:vegas,n=1000"] if quick else ["synthetic:ave", "synthetic:vegas"]
    threads_list = (1,) if quick else (1, 2)
    rounds = 1 if quick else 5
    datasets = {s: load_data(s) for s in sources}

    def cfg_for(batch, **kw):
        return load_config(CONFIG, {"batch_size": batch, **kw})

    def steps_for(runner):  # ~0.5 s per timed block in full mode
        return 2 if quick else (16 if runner.cfg.batch_size >= 256 else 40) if isinstance(runner, StepRunner) else 16

    # 1. throughput
    cells = {(s, b, th): (StepRunner(cfg_for(b), datasets[s]), th)
             for s in sources for b in (256, 64) for th in threads_list}
    res = measure(cells, rounds, steps_for, retries=0 if quick else 3)
    others = [o for r in res.values() for o in r["others"]]
    throughput = []
    for (s, b, th), (runner, _) in cells.items():
        r = res[(s, b, th)]
        t = statistics.median(r["times"])
        throughput.append({"data": s, "batch": b, "threads": th, "ms/step": 1e3 * t, "clips/s": b / t,
                           "step GFLOP/s": runner.flops / t / 1e9, REF: statistics.median(r["mm"]),
                           "% of matmul": 100 * _frac(r, runner.flops)})
    model0 = cells[(sources[0], 256, 1)][0]
    info["flops"] = step_flops(model0.model, model0.cfg, 256)
    del cells, res

    # 2. breakdown at batch 256
    data, b = datasets[sources[0]], 256
    no_teacher = dict(use_infonce=False, use_distill=False, use_ema=False)
    stages = [
        ("student Linear layers only (enc + dec fwd + bwd)", lambda: NetsOnly(cfg_for(b), data, act=False)),
        ("+ LayerNorm, GELU", lambda: NetsOnly(cfg_for(b), data, act=True)),
        ("+ masking, masked recon loss, learned weights, AdamW", lambda: StepRunner(cfg_for(b, use_dcca=False, **no_teacher), data)),
        ("+ DCCA", lambda: StepRunner(cfg_for(b, **no_teacher), data)),
        ("+ EMA teacher forward and update, soft top-k InfoNCE", lambda: StepRunner(cfg_for(b, use_distill=False), data)),
        ("+ distillation (= the full step)", lambda: StepRunner(cfg_for(b), data)),
    ]
    cells = {(name, th): (make(), th) for th in threads_list for name, make in stages}
    res = measure(cells, rounds, steps_for, retries=0 if quick else 3)
    others += [o for r in res.values() for o in r["others"]]
    breakdown = []
    for th in threads_list:
        prev = None
        for name, _ in stages:
            t = statistics.median(res[(name, th)]["times"])
            # every stage against the full step's FLOPs: the % falls as work is added at no FLOP credit
            breakdown.append({"step": name, "threads": th, "ms/step": 1e3 * t,
                              "+ms": "" if prev is None else f"{1e3 * (t - prev):+.2f}",
                              "% of matmul": 100 * _frac(res[(name, th)], cells[(name, th)][0].flops)})
            prev = t
    del cells, res

    # 3. profile, batch 256, at each thread count
    from torch.profiler import ProfilerActivity, profile

    n_prof = 2 if quick else 12
    prof_rows, info["profile_ms"] = [], {}
    for th in threads_list:
        torch.set_num_threads(th)
        runner = StepRunner(cfg_for(256), data)
        runner.steps(2 if quick else 5)
        with profile(activities=[ProfilerActivity.CPU]) as p:
            runner.steps(n_prof)
        ev = list(p.key_averages())
        total = sum(e.self_cpu_time_total for e in ev)
        prof_rows += [{"threads": th, "operator": e.key, "calls/step": e.count / n_prof,
                       "ms/step": e.self_cpu_time_total / 1e3 / n_prof, "% of step": 100 * e.self_cpu_time_total / total}
                      for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:15]]
        info["profile_ms"][th] = total / 1e3 / n_prof
    info["others"] = (statistics.median(others), max(others)) if others else (float("nan"),) * 2
    info["load_end"] = os.getloadavg()
    info["rounds"] = rounds
    return {"throughput": throughput, "breakdown": breakdown, "profile": prof_rows}, info


def render(tables: dict, info: dict, command: str, header: str) -> str:
    fl = info["flops"]
    lines = ["## Training step throughput (`bench/bench_train.py`)", "", header,
             f"- load average at end: {' / '.join(f'{x:.2f}' for x in info['load_end'])}; CPU used by other "
             f"processes during the timed blocks (from /proc/stat): median {info['others'][0]:.2f}, "
             f"max {info['others'][1]:.2f} cores",
             f"- command: `{command}`",
             f"- protocol: {info['rounds']} round(s), cells interleaved, medians over rounds; each % is (step FLOP/s) / "
             "(FLOP/s of a float32 256x1024 @ 1024x512 matmul timed right after the block, same thread count).",
             f"- FLOPs per step at batch 256: {fl['nominal'] / 1e9:.3f} GFLOP nominal (student {fl['student_macs']:,} "
             f"MACs/clip x 6, teacher {fl['teacher_macs']:,} x 2); not counted ~{fl['extra'] / 1e9:.3f} GFLOP of "
             "b x b similarity and float64 DCCA matmuls. Batch 64 scales linearly.",
             "", md_table(THROUGHPUT_COLUMNS, tables["throughput"],
                          {"ms/step": ".2f", "clips/s": ".0f", "step GFLOP/s": ".1f", REF: ".1f", "% of matmul": ".1f"}), ""]
    for th, target in TARGETS.items():
        rows = [r for r in tables["throughput"] if r["batch"] == 256 and r["threads"] == th]
        if rows:
            got = min(r["% of matmul"] for r in rows)
            lines.append(f"- target, batch 256, {th} thread(s): >= {100 * target:.0f}% of the matmul -> "
                         f"**{'met' if got >= 100 * target else 'NOT met'}** ({got:.1f}%, worse of the two data sets)")
    lines += ["", "Where the time goes (synthetic:ave, batch 256; each row's % uses that row's own counted FLOPs: "
              "the networks' for the first two, the full step's after):", "",
              md_table(BREAKDOWN_COLUMNS, tables["breakdown"], {"ms/step": ".2f", "% of matmul": ".1f"}),
              "", "torch.profiler, batch 256, top operators by self CPU time (profiled step "
              + ", ".join(f"{v:.1f} ms at {k} thread(s)" for k, v in info["profile_ms"].items())
              + ", profiler overhead included; self time is measured on the calling thread, so with 2 threads "
              "it is the wall time an operator took):", "",
              md_table(PROFILE_COLUMNS, tables["profile"], {"calls/step": ".0f", "ms/step": ".2f", "% of step": ".1f"}), ""]
    return "\n".join(lines)


# ---- 4. the official recipe's step beside the shipped one ----------------------------------------

def recipe_flops(model, cfg, batch: int) -> float:
    """Nominal FLOPs of one step of any config, from the Linear shapes as step_flops counts them:
    6 x MACs x batch for what runs with gradient (encoders, decoders, cross decoders, heads, and the
    encoders + heads again for DCCA on clean inputs), 2 x for the teacher's clean forward."""
    heads = _macs(model.heads) if model.heads is not None else 0
    student = _macs(model.encoders) + heads + _macs(model.decoders)
    student += _macs(model.cross_decoders) if model.cross_decoders is not None else 0
    student += _macs(model.encoders) + heads if (cfg.use_dcca and cfg.dcca_input == "clean") else 0
    teacher = _macs(model.encoders) + heads if (cfg.use_infonce or cfg.use_distill) else 0
    return float(6 * student * batch + 2 * teacher * batch)


def run_recipe(quick: bool) -> tuple[dict[str, list[dict]], dict]:
    source = "synthetic:vegas,n=1000" if quick else "synthetic:vegas"
    data = load_data(source)
    rounds = 1 if quick else 3  # the official step is ~1.5 s alone on one thread, much more on a loaded machine
    rows = [("config/hsc_mae.yaml (shipped)", CONFIG, {}), ("config/hsc_mae.yaml at batch 512", CONFIG, {"batch_size": 512}),
            ("config/official.yaml", OFFICIAL, {})]
    cells = {name: (StepRunner(load_config(path, {**kw, "data": source}), data), 1) for name, path, kw in rows}
    # ~0.5 s per timed block; the official step is ~1 s at 1 thread
    res = measure(cells, rounds, lambda r: 2 if quick else max(2, 64 * 16 // r.cfg.batch_size), retries=0 if quick else 3)
    table = []
    flops = {name: recipe_flops(r.model, r.cfg, r.cfg.batch_size) for name, (r, _) in cells.items()}
    per_clip0 = flops[rows[0][0]] / cells[rows[0][0]][0].cfg.batch_size
    for name, (runner, th) in cells.items():
        t = statistics.median(res[name]["times"])
        b = runner.cfg.batch_size
        table.append({"config": name, "batch": b, "threads": th, "ms/step": 1e3 * t, "ms per 1k clips": 1e6 * t / b,
                      "GFLOP/step": flops[name] / 1e9, "x shipped FLOPs/clip": flops[name] / b / per_clip0,
                      "step GFLOP/s": flops[name] / t / 1e9})
    others = [o for r in res.values() for o in r["others"]]
    info = {"source": source, "rounds": rounds, "others": (statistics.median(others), max(others)),
            "load_end": os.getloadavg()}
    return {"recipe": table}, info


def render_recipe(tables: dict, info: dict, command: str, header: str) -> str:
    return "\n".join([
        "## The official recipe's training step (`bench/bench_train.py --recipe-only`)", "", header,
        f"- load average at end: {' / '.join(f'{x:.2f}' for x in info['load_end'])}; CPU used by other processes "
        f"during the timed blocks: median {info['others'][0]:.2f}, max {info['others'][1]:.2f} cores "
        "(a shared, noisy 2-core machine)",
        f"- command: `{command}`",
        f"- protocol: `hscmae.train.optimizer_step` on {info['source']}, 1 thread, {info['rounds']} round(s) interleaved, "
        "median ms/step; the official step is past its warm-up (learned weights). FLOPs: Linear layers only "
        "(6 x MACs x batch with gradient, 2 x for the teacher), counting the official step's cross decoders, "
        "projection heads and its second (clean-input) student forward for DCCA.", "",
        md_table(RECIPE_COLUMNS, tables["recipe"], {"ms/step": ".1f", "ms per 1k clips": ".1f", "GFLOP/step": ".2f",
                                                    "x shipped FLOPs/clip": ".1f", "step GFLOP/s": ".1f"}), ""])


def run_compile(quick: bool) -> tuple[list[dict], dict]:
    """torch.compile of the training step (config compile: true) against eager, on the CPU: the
    one-off compile time a trial pays (its first steps, forward and backward graphs), then the
    step time after, interleaved with eager in rounds as above."""
    import torch._dynamo

    data = load_data("synthetic:ave,n=1000" if quick else "synthetic:ave")
    rows, info = [], {"rounds": 1 if quick else 5}
    for batch in ((64,) if quick else (64, 256)):
        th = 1
        torch.set_num_threads(th)
        eager = StepRunner(load_config(CONFIG, {"batch_size": batch}), data)
        eager.steps(3)
        t0 = time.perf_counter()
        eager.steps(3)
        eager_first = (time.perf_counter() - t0) / 3
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        comp = StepRunner(load_config(CONFIG, {"batch_size": batch, "compile": True}), data)
        t0 = time.perf_counter()
        comp.steps(3)  # the first call compiles the forward, the first backward its graph
        compile_s = time.perf_counter() - t0 - 3 * eager_first
        breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
        n = 2 if quick else (16 if batch >= 256 else 40)
        res = measure({"eager": (eager, th), "compiled": (comp, th)}, info["rounds"], lambda r: n,
                      retries=0 if quick else 3)
        te, tc = statistics.median(res["eager"]["times"]), statistics.median(res["compiled"]["times"])
        rows.append({"batch": batch, "threads": th, "eager ms/step": 1e3 * te, "compiled ms/step": 1e3 * tc,
                     "speed-up": te / tc, "compile s (first steps)": compile_s,
                     "steps to repay": compile_s / (te - tc) if te > tc else "never",
                     "graph breaks": breaks})
        info.setdefault("others", []).extend(o for r in res.values() for o in r["others"])
    info["load_end"] = os.getloadavg()
    return rows, info


def render_compile(rows: list[dict], info: dict, command: str, header: str) -> str:
    others = info.get("others") or [float("nan")]
    return "\n".join([
        "## torch.compile of the training step, CPU (`bench/bench_train.py --compile`)", "", header,
        f"- load average at end: {' / '.join(f'{x:.2f}' for x in info['load_end'])}; CPU used by other processes "
        f"during the timed blocks: median {statistics.median(others):.2f}, max {max(others):.2f} cores",
        f"- command: `{command}`",
        f"- protocol: config/hsc_mae.yaml on synthetic:ave, `hscmae.train.optimizer_step` with `forward = "
        f"make_forward(cfg)` (torch.compile of `train_step`, inductor's default mode on the CPU), 1 thread; "
        f"compile s = wall time of a fresh compiled run's first 3 steps minus 3 eager steps (what every trial "
        f"pays once: each trial is a new model); then {info['rounds']} interleaved round(s), medians.",
        "", md_table(COMPILE_COLUMNS, rows, {"eager ms/step": ".2f", "compiled ms/step": ".2f", "speed-up": ".2f",
                                             "compile s (first steps)": ".1f", "steps to repay": ".0f"}), ""])


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    p = parser(__file__, __doc__, "seconds: 1k-clip data, 1 thread, 1 round (CI)")
    p.add_argument("--recipe-only", action="store_true", help="only section 4 (the official recipe's step)")
    p.add_argument("--compile", action="store_true",
                   help="only section 5: torch.compile against eager (rewrites its own section)")
    args = p.parse_args(argv)
    header = machine_info()
    if args.compile:
        with torch_threads_kept():
            rows, info = run_compile(args.quick)
        publish(COMPILE_SECTION, render_compile(rows, info, command_line(argv, __file__), header), args.no_write)
        return {"compile": rows}
    tables: dict[str, list[dict]] = {}
    with torch_threads_kept():
        if not args.recipe_only:
            tables, info = run(args.quick)
            publish(SECTION, render(tables, info, command_line(argv, __file__), header), args.no_write)
        recipe, info = run_recipe(args.quick)
    publish(RECIPE_SECTION, render_recipe(recipe, info, command_line(argv, __file__), header), args.no_write)
    return {**tables, **recipe}


if __name__ == "__main__":
    main()
