"""Tune's own experiment state, `experiment_state-*.json`: the one module that reads it (the
driver's summary and interruption block, the study's resume, report.py) and the one patch of how
Tune writes it.

Reading. Tune 2.60 writes `{"trial_data": [[trial_json, trial_run_metadata_json], ...],
"runner_data": ..., "stats": ...}` (each pair's two items JSON strings, or objects); the newest
file (by name: the session timestamp) is the one `Tuner.restore` restores from. Only the fields
named in `trial_records` are read; a change of that layout is caught by tests/test_ray_internals.py.

Writing. Tune 2.60 writes the file in place (`open(path, "w")`, then json.dump): a driver
SIGKILLed during that write leaves an empty file, and the next `Tuner.restore` logs "Failed to
restore the run state" and silently restarts the experiment from nothing (found by
tests/reliability/test_faults_search.py's driver-killed-twice test). `atomic_experiment_state()`
makes that one write a temporary file plus a rename, so a kill leaves the previous state whole."""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from hscmae.io import atomic_write_text

PATTERN = "experiment_state-*.json"


def newest_state_file(exp: str) -> str | None:
    """The path (or URI path) of the newest experiment_state-*.json in `exp`, or None."""
    if "://" in exp:
        import pyarrow.fs

        fs, root = pyarrow.fs.FileSystem.from_uri(exp)
        names = sorted(i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
                       if i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json"))
        return names[-1] if names else None
    files = sorted(glob.glob(os.path.join(glob.escape(exp), PATTERN)))
    return files[-1] if files else None


def read_raw(exp: str) -> tuple[str, bytes] | None:
    """(file name, bytes) of the newest state file, or None if there is none."""
    path = newest_state_file(exp)
    if path is None:
        return None
    if "://" in exp:
        import pyarrow.fs

        fs, _ = pyarrow.fs.FileSystem.from_uri(exp)
        with fs.open_input_stream(path) as f:
            return os.path.basename(path), f.read()
    with open(path, "rb") as f:
        return os.path.basename(path), f.read()


def trial_records(raw: bytes) -> list[dict]:
    """Each trial of a state file: trial_id, status, relative_logdir (the trial folder's name),
    last_epoch (its last reported `epoch`, 0 if none), val_map (its last reported, None if none)
    and num_failures. Raises ValueError, KeyError
    or TypeError on a file that is not such a state (empty, torn, another layout)."""
    state = json.loads(raw)
    out = []
    for trial_json, meta_json in state["trial_data"]:
        t = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
        m = json.loads(meta_json) if isinstance(meta_json, str) else meta_json
        out.append({"trial_id": t["trial_id"], "status": t.get("status"), "relative_logdir": t.get("relative_logdir"),
                    "last_epoch": int((m.get("last_result") or {}).get("epoch") or 0),
                    "val_map": (m.get("last_result") or {}).get("val_map"),  # harness/stopping.py's plateau
                    "num_failures": m.get("num_failures")})
    return out


def read_trials(exp: str) -> list[dict] | None:
    """trial_records of the newest state file in `exp`; None if there is none or it cannot be read."""
    try:
        got = read_raw(exp)
        return None if got is None else trial_records(got[1])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
        # the temp file beside the staging folder, not in it: Tune's background sync lists that
        # folder, and a temp file renamed away before it copies it is a FileNotFoundError in its log
        atomic_write_text(str(Path(staging, self.experiment_state_file_name)),
                          json.dumps(runner_state, cls=tc.TuneFunctionEncoder), tmp_dir=str(Path(staging).parent))
        self._search_alg.save_to_dir(staging, session_str=self._session_str)
        self._callbacks.save_to_dir(staging, session_str=self._session_str)

    save_to_dir._hscmae_atomic = True
    tc.TuneController.save_to_dir = save_to_dir
