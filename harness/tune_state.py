"""Tune 2.60 writes `experiment_state-*.json` in place (`open(path, "w")`, then json.dump): a driver
SIGKILLed during that write leaves an empty file, and the next `Tuner.restore` logs "Failed to
restore the run state" and silently restarts the experiment from nothing (found by
tests/reliability/test_faults_search.py's driver-killed-twice test). `atomic_experiment_state()`
makes that one write a temporary file plus a rename, so a kill leaves the previous state whole."""
from __future__ import annotations

import json
import os
from pathlib import Path

from hscmae.io import atomic_write_text


def atomic_experiment_state() -> None:
    from ray.tune.execution import tune_controller as tc

    if getattr(tc.TuneController.save_to_dir, "_hscmae_atomic", False):
        return

    def save_to_dir(self):  # TuneController.save_to_dir of ray 2.60, with the state file written atomically
        runner_state = {
            "trial_data": list(self._get_trial_checkpoints().values()),
            "runner_data": self.__getstate__(),
            "stats": {"start_time": self._start_time},
        }
        staging = self._storage.experiment_driver_staging_path
        os.makedirs(staging, exist_ok=True)
        atomic_write_text(str(Path(staging, self.experiment_state_file_name)),
                          json.dumps(runner_state, cls=tc.TuneFunctionEncoder))
        self._search_alg.save_to_dir(staging, session_str=self._session_str)
        self._callbacks.save_to_dir(staging, session_str=self._session_str)

    save_to_dir._hscmae_atomic = True
    tc.TuneController.save_to_dir = save_to_dir
