"""Component ablation: retrain the best config with each part off, as Ray tasks."""
from __future__ import annotations

import signal
import time

import pandas as pd

from hscmae import ablation
from hscmae.config import config_from_dict
from reporting.experiment import Experiment, ReportError, load_search_data
from reporting.frames import _frame, to_parquet_bytes
from reporting.tables import component_markdown_latex
from reporting.writing import _write


def run_ablation(exp: Experiment, out: str, best: pd.Series | None, seeds: int, epochs: int | None,
                 address: str | None, num_cpus: int | None, log=print, gpus_per_task: float = 0.0) -> list[str]:
    if best is None:
        raise ReportError(f"{exp.path}: no trial with a validation score, so no best config to ablate")
    cfg = config_from_dict(exp.full_config(best))
    runs = ablation.ablation_runs(cfg, seeds, epochs)
    data = load_search_data(exp, cfg, "the ablation would not be comparable")
    for r in runs:
        if r.config is not None:
            r.config.validate(n_train=len(data.splits["train"]))

    from harness.ray_setup import init_ray

    init_ray(address, num_cpus)
    # Ctrl-C / SIGTERM during the retrains: stop them and write what finished (the rest marked
    # interrupted), then AblationInterrupted; set after ray.init, which replaces SIGTERM's handler
    stop = _StopOnSignal()
    try:
        return _retrain_and_write(exp, out, best, runs, data, stop, log, gpus_per_task)
    finally:
        stop.restore()


def retrain_on_ray(configs: list[dict], data, stop: "_StopOnSignal", gpus_per_task: float = 0.0,
                   describe=lambda i: f"run {i}", on_result=None, log=print, what: str = "retrain") -> list[dict]:
    """Train each config (hscmae.ablation.train_one) as a Ray task on the shared `data`; results in
    the configs' order. on_result(i, result) is called as each one finishes (so a caller can store
    it at once); after a signal (stop), the rest are cancelled and marked interrupted. Ray must be
    up; it is shut down at the end."""
    import ray

    from harness import UsageError
    from harness.ray_setup import gpu_slots

    results: list[dict] = [{} for _ in configs]
    try:
        data_ref = ray.put(data)  # once: every task reads the same object
        if gpus_per_task:  # a cluster without GPUs would queue the tasks forever
            try:
                gpu_slots(gpus_per_task, 1, "--gpus-per-task")
            except UsageError as e:
                raise ReportError(str(e)) from None
        # a task with a GPU share sees it through CUDA_VISIBLE_DEVICES, so device "auto" trains on it
        task = ray.remote(num_cpus=1, num_gpus=gpus_per_task)(ablation.train_one)
        todo = {task.remote(c, data_ref): i for i, c in enumerate(configs)}
        pending, t0 = list(todo), time.time()
        while pending and stop.signum is None:
            # the handler only records the signal (an exception raised inside ray.wait's native
            # code comes out as a SystemError); the timeout brings us back here within a second
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            if not done:
                continue
            i = todo[done[0]]
            results[i] = res = ray.get(done[0])
            if on_result is not None:
                on_result(i, res)
            msg = f"test_map {res['test_map']:.4f}" if "test_map" in res else f"error: {res['error'][:120]}"
            log(f"[report] {what} {len(todo) - len(pending)}/{len(todo)} ({time.time() - t0:.0f}s): "
                f"{describe(i)}: {msg}")
        for ref in pending:  # after a signal: stop the rest, mark them
            results[todo[ref]] = {"error": f"interrupted ({stop.name}) before it finished"}
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone: shutdown stops the rest
                pass
    finally:
        ray.shutdown()
    return results


def _retrain_and_write(exp, out, best, runs, data, stop, log, gpus_per_task) -> list[str]:
    results: list[dict] = [{"error": r.changes} if r.config is None else {} for r in runs]
    todo = [i for i, r in enumerate(runs) if r.config is not None]
    done = retrain_on_ray([runs[i].config.to_dict() for i in todo], data, stop, gpus_per_task,
                          describe=lambda j: f"{runs[todo[j]].component} seed {runs[todo[j]].seed}", log=log,
                          what="ablation")
    for i, res in zip(todo, done):
        results[i] = res

    per_seed = _frame([{"component": r.component, "seed": r.seed, "epochs": r.config.epochs if r.config else None,
                        **{m: res.get(m) for m in (*ablation.METRICS, "test_cca")}, "error": res.get("error")}
                       for r, res in zip(runs, results)],
                      {"component": "str", "seed": "int", "epochs": "int",
                       **{m: "float" for m in (*ablation.METRICS, "test_cca")}, "error": "str"})
    summary = _frame(ablation.summarise(runs, results),
                     {"component": "str", "label": "str", "changes": "str", "epochs": "int", "n_seeds": "int",
                      "n_ok": "int", "error": "str",
                      **{f"{m}_{s}": "float" for m in ablation.METRICS for s in ("mean", "std")}})
    written: list[str] = []
    _write(out, "component_runs.parquet", to_parquet_bytes(per_seed), written)
    _write(out, "component_ablation.parquet", to_parquet_bytes(summary), written)
    md, tex = component_markdown_latex(summary, len({r.seed for r in runs}), best["trial_id"])
    _write(out, "component_ablation.md", md, written)
    _write(out, "component_ablation.tex", tex, written)
    finished = sum(bool(results[i]) and "error" not in results[i] for i in todo)
    if stop.signum is not None and finished < len(todo):
        raise RetrainsInterrupted(stop.signum, finished, len(todo), written)
    return written


class RetrainsInterrupted(Exception):
    """A signal stopped the retrains (--ablate, --confirm); the finished ones are written (in `written`)."""

    def __init__(self, signum: int, finished: int, total: int, written: list[str]):
        super().__init__(signum, finished, total, written)
        self.signum, self.finished, self.total, self.written = signum, finished, total, written


AblationInterrupted = RetrainsInterrupted  # its older name (report.py)


class _StopOnSignal:
    """Records the first SIGINT/SIGTERM (later ones are ignored until restore(), so that a second
    Ctrl-C cannot cut the writing of what finished short); the retrain loop checks it."""

    def __init__(self):
        self.signum: int | None = None
        self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    def restore(self):
        for s, h in self.old.items():
            signal.signal(s, h)
