"""Progress a person can follow, on top of Tune's own status table."""
from __future__ import annotations

import time

from harness import METRIC


def make_progress_callback(num_samples: int, max_epochs: int):
    total = num_samples
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self):
            self.start = time.time()
            self.best = (float("-inf"), None)
            self.done = 0  # trials finished in this run (the ETA's rate)
            self.on_cpu: set[str] = set()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            # the trial's own log line may not reach this driver (log_to_driver is off): say it here
            if result.get("gpu_ids") and result.get("device") == "cpu" and trial.trial_id not in self.on_cpu:
                self.on_cpu.add(trial.trial_id)
                print(f"[hscmae] trial {trial.trial_id} was assigned GPU(s) {result['gpu_ids']} by Ray but trains on "
                      "the CPU: torch sees no CUDA device on its node", flush=True)
            if result.get(METRIC, float("-inf")) > self.best[0]:
                self.best = (result[METRIC], trial.trial_id)

        def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
            # Tune's own count: after `--resume --num-samples N` (an extended search) it is N
            self.total = total_num_samples or total
            self.start, self.done = time.time(), 0  # a resumed run restores this object from tuner.pkl

        def _line(self, trials, trial, status):
            # counted over Tune's trials, not this callback's events: a resumed run (restored from
            # tuner.pkl, with the counts of when the search began) starts with finished trials
            n = getattr(self, "total", total)
            # (Tune calls this before it sets the finishing trial's status)
            st = {t.trial_id: (status if t is trial else t.status) for t in trials}
            last = {t.trial_id: (t.last_result or {}).get("epoch", 0) for t in trials}
            done = [t for t, v in st.items() if v in ("TERMINATED", "ERROR")]
            errored = sum(st[t] == "ERROR" for t in done)
            early = sum(st[t] == "TERMINATED" and last[t] < max_epochs for t in done)
            running = sum(v == "RUNNING" for v in st.values())
            elapsed = time.time() - self.start
            eta = elapsed / self.done * (n - len(done)) if self.done else float("nan")  # this run's rate
            best = f"{self.best[0]:.4f} ({self.best[1]})" if self.best[1] else "-"
            print(f"[hscmae] trials done {len(done)}/{n} (stopped early {early}, "
                  f"errored {errored}), running {running}; best {METRIC} {best}; "
                  f"elapsed {elapsed / 60:.1f} min, ETA ~{eta / 60:.1f} min", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            self._line(trials, trial, "TERMINATED")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            self._line(trials, trial, "ERROR")

    return Progress()
