"""What `report.py --figures` adds to a report, on synthetic:vegas (28,000 clips, 4,200 test).

    python bench/bench_report.py [--epochs 1] [--quick] [--no-write]

Builds an experiment folder shaped like tune_main.py's with one trial (the shipped config trained
here for --epochs epochs, its final Tune-style checkpoint and result.json), then times
`report.main([exp])` and `report.main([exp, "--figures"])` end to end (the difference is what the
flag adds), and each stage of --figures on its own. One run of each: the machine is shared, so the
load average is printed beside the times. Rewrites the `bench_report` section of BENCHMARKS.md.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import command_line, machine_info, parser, publish, torch_threads_kept  # noqa: E402

TABLES = {"end_to_end": ["report", "seconds", "cpu_seconds"], "stages": ["stage", "seconds", "cpu_seconds"]}
TRIAL = "run_trial_bench1_00000_0_x=1_2026-01-01_00-00-00"


def build_experiment(root: str, cfg_dict: dict) -> str:
    """One trained trial in tune_main.py's folder layout (space.json, base_config.yaml, data.json,
    <trial>/params.json, result.json, checkpoint_000000/checkpoint.pt)."""
    import yaml

    from hscmae.config import config_from_dict
    from hscmae.data import load_data_for
    from hscmae.train import fit

    exp = os.path.join(root, "exp")
    trial = os.path.join(exp, TRIAL)
    os.makedirs(os.path.join(trial, "checkpoint_000000"))
    cfg = config_from_dict(cfg_dict)
    data = load_data_for(cfg)
    lines = []

    def on_epoch(m, save):
        lines.append(json.dumps({**m, "trial_id": "bench1", "training_iteration": m["epoch"]}))
        if m["epoch"] == cfg.epochs:
            save(os.path.join(trial, "checkpoint_000000", "checkpoint.pt"))
    fit(cfg, data, on_epoch=on_epoch, log=None)
    with open(os.path.join(trial, "result.json"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(trial, "params.json"), "w") as f:
        f.write("{}")
    with open(os.path.join(exp, "space.json"), "w") as f:
        json.dump({"name": "bench", "params": {}, "fixed": {}, "max_epochs": cfg.epochs}, f)
    with open(os.path.join(exp, "base_config.yaml"), "w") as f:
        yaml.safe_dump(cfg.to_dict(), f)
    with open(os.path.join(exp, "data.json"), "w") as f:
        json.dump({"fingerprint": data.fingerprint()}, f)
    return exp


def stages(exp: str, out: str) -> list[dict]:
    """Each step of write_learned, timed on its own (same order, same functions)."""
    import report
    from hscmae.baselines import best_linear_cca
    from hscmae.export import protocol_embeddings, write_embeddings
    from reporting import learned as Lr
    from reporting.figures import _plt, figure_bytes

    e = report.load_experiment(exp)
    best = report.ranked(e)[0].iloc[0]
    rows, t, c = [], time.perf_counter(), time.process_time()

    def lap(name):
        nonlocal t, c
        now, cpu = time.perf_counter(), time.process_time()
        rows.append({"stage": name, "seconds": now - t, "cpu_seconds": cpu - c})
        t, c = now, cpu
    cfg, data, model, _, choice = Lr.best_model(e, best, "checkpoint", log=lambda s: None)
    lap("load data + checkpoint (weights_only)")
    emb = protocol_embeddings(model, data, cfg, choice)
    lap("embed all clips + test-time CCA as the final evaluation chose it (one fit)")
    protocol_embeddings(model, data, cfg)
    lap("(not in --figures: the same, choosing again over the ridge x dim grid)")
    _, _, _, la, lv = best_linear_cca(data.audio, data.visual, data)
    lap("linear CCA baseline on raw features (ridge x dim grid on val)")
    methods = {"HSC-MAE": Lr.curves_of(emb["audio_cca"], emb["visual_cca"], data),
               "linear CCA (raw features)": Lr.curves_of(la, lv, data)}
    numbers = {"cfg": cfg, "data": data, "emb": emb, "methods": methods, "notes": {}}
    lap("PR curves + per-query AP, test, 2 methods x 2 directions")
    table = Lr.per_class_table(numbers)
    Lr.retrieval_examples(numbers)
    lap("per-class table + retrieval examples")
    tsne = Lr.tsne_points(numbers)
    lap(f"t-SNE ({2 * tsne['n']} points)")
    plt = _plt()
    for fig in (Lr.fig_pr(numbers), Lr.fig_per_class(table), Lr.fig_embedding_map(tsne)):
        figure_bytes(fig)
        plt.close(fig)
    lap("3 figures rendered (PNG 300 dpi + PDF)")
    write_embeddings(emb, data, cfg, out, "npz")
    lap("embeddings.npz written")
    ran = [r for r in rows if not r["stage"].startswith("(not in")]
    rows.append({"stage": "sum of stages", "seconds": sum(r["seconds"] for r in ran),
                 "cpu_seconds": sum(r["cpu_seconds"] for r in ran)})
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = parser(__file__, __doc__, "synthetic:tiny, a tiny model (for the tests)")
    p.add_argument("--epochs", type=int, default=1, help="epochs of the trial (the model's quality is not measured)")
    args = p.parse_args(argv)
    import report
    from hscmae.config import load_config

    info = machine_info()
    overrides = ["data=synthetic:tiny", "hidden_dim=32", "embed_dim=16", "cca_dim=4", "top_k=3", "batch_size=64"] \
        if args.quick else ["data=synthetic:vegas", "batch_size=512"]  # a quick trial: its quality is not measured
    cfg = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config",
                                   "hsc_mae.yaml"), overrides + [f"epochs={args.epochs}"])
    with tempfile.TemporaryDirectory(prefix="bench-report-") as root, torch_threads_kept():
        t0 = time.perf_counter()
        exp = build_experiment(root, cfg.to_dict())
        train_s = time.perf_counter() - t0
        end = []
        for name, extra, folder in (("report.py (tables, search figures)", [], "plain"),
                                    ("report.py --figures", ["--figures"], "figures")):
            t0, c0 = time.perf_counter(), time.process_time()
            rc = report.main([exp, "--out", os.path.join(root, folder), *extra])
            if rc != 0:
                raise SystemExit(f"report.main failed ({rc})")
            end.append({"report": name, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0})
        end.append({"report": "added by --figures", "seconds": end[1]["seconds"] - end[0]["seconds"],
                    "cpu_seconds": end[1]["cpu_seconds"] - end[0]["cpu_seconds"]})
        st = stages(exp, os.path.join(root, "stages"))
    load = os.getloadavg()
    data = "synthetic:tiny" if args.quick else "synthetic:vegas"
    lines = ["## Report figures (`bench/bench_report.py`)", "", info,
             f"- load average at end: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; the machine is shared with "
             "other engineers' jobs today (noisy): one run of each, not a median",
             f"- command: `{command_line(argv, __file__)}`",
             f"- data {data}; one trial of config/hsc_mae.yaml (batch 512 here, for a quick trial) trained for {args.epochs} epoch(s) ({train_s:.0f} s, "
             "not part of the report); its final checkpoint read back with weights_only", "",
             "Wall seconds depend on the load; CPU seconds (this process, all threads) much less so.", "",
             "| report | wall s | CPU s |", "| --- | --- | --- |"]
    lines += [f"| {r['report']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} |" for r in end]
    lines += ["", "Stages of `--figures`, each timed on its own:", "", "| stage | wall s | CPU s |", "| --- | --- | --- |"]
    lines += [f"| {r['stage']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} |" for r in st]
    publish("bench_report", "\n".join(lines) + "\n", args.no_write or args.quick)
    return {"end_to_end": end, "stages": st}


if __name__ == "__main__":
    main()
