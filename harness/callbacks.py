"""Progress a person can follow, on top of Tune's own status table."""
from __future__ import annotations

import time

from harness import METRIC


def make_progress_callback(num_samples: int, max_epochs: int):
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self):
            self.start = time.time()
            self.best = (float("-inf"), None)
            self.done = self.early = self.errored = 0
            self.on_cpu: set[str] = set()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            # the trial's own log line may not reach this driver (log_to_driver is off): say it here
            if result.get("gpu_ids") and result.get("device") == "cpu" and trial.trial_id not in self.on_cpu:
                self.on_cpu.add(trial.trial_id)
                print(f"[hscmae] trial {trial.trial_id} was assigned GPU(s) {result['gpu_ids']} by Ray but trains on "
                      "the CPU: torch sees no CUDA device on its node", flush=True)
            if result.get(METRIC, float("-inf")) > self.best[0]:
                self.best = (result[METRIC], trial.trial_id)

        def _line(self, trials):
            running = sum(t.status == "RUNNING" for t in trials)
            elapsed = time.time() - self.start
            eta = elapsed / self.done * (num_samples - self.done) if self.done else float("nan")
            best = f"{self.best[0]:.4f} ({self.best[1]})" if self.best[1] else "-"
            print(f"[hscmae] trials done {self.done}/{num_samples} (stopped early {self.early}, "
                  f"errored {self.errored}), running {running}; best {METRIC} {best}; "
                  f"elapsed {elapsed / 60:.1f} min, ETA ~{eta / 60:.1f} min", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            epoch = (trial.last_result or {}).get("epoch", 0)
            self.early += epoch < max_epochs
            self._line(trials)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            self.errored += 1
            self._line(trials)

    return Progress()
