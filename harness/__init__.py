"""The Ray Tune glue of the search. `tune_main.py` (the command line), `report.py` and bench/ import
it; the core library `hscmae` never imports Ray or this package.

    tuner.py        build_tuner: the one Tuner (trainable + resources, ASHA, search algorithm, configs)
    search.py       one search as tune_main.py runs it: resume checks, Ray, metadata, fit, summary
    trainable.py    run_trial: one fit() reporting every epoch to Tune
    study.py        the Optuna study's plan and storage (before Ray); study_search.py its Tune side
    branch.py       --from OLD: a new experiment's study seeded with OLD's finished trials that fit
    tune_state.py   Tune's experiment_state-*.json: its one reader, and the atomic-write patch
    interrupt.py    SIGINT / SIGTERM: a graceful stop, the status block, the resume command
    ray_setup.py, storage.py, callbacks.py: Ray start-up, experiment folders, progress lines
"""
from hscmae.protocol import asha_rungs  # noqa: F401  (one source of the rungs; harness users import it here)

METRIC, MODE = "val_map", "max"  # what every trial reports each epoch, and which way is better


class UsageError(ValueError):
    """A flag or the storage is unusable; printed as one `error:` line, exit code 2."""
