"""The one place a search's Tuner is built: the trainable (`run_trial`) with its resources and the
data in Ray's object store, the ASHA scheduler, the search algorithm, and the run, failure and
checkpoint config with the callbacks. `tune_main.py` (through harness/search.py) and
`bench/bench_search.py` both call `build_tuner`, so a search and its benchmark run the same trials:
in particular fit's choice epochs are ASHA's rungs (`asha_rungs(grace, rf, max_epochs)`), so the
val_map ASHA cuts on is the final protocol's score at exactly those epochs."""
from __future__ import annotations

import os

from harness import METRIC, MODE, asha_rungs


def make_trainable(data, base: dict, fixed: dict, *, grid_epochs, checkpoint_every: int, cpus: int = 1,
                   gpus: float = 0.0):
    """run_trial with the data set (put in Ray's object store once), the base config, the space's
    fixed keys and the resources of one trial."""
    from ray import tune

    from harness.trainable import run_trial

    return tune.with_resources(
        tune.with_parameters(run_trial, data=data, base=base, fixed=fixed, checkpoint_every=checkpoint_every,
                             cpus=cpus, grid_epochs=list(grid_epochs)),
        {"cpu": cpus, **({"gpu": gpus} if gpus else {})})


def build_tuner(exp: str, *, data, base: dict, fixed: dict, max_epochs: int, grace_period: int,
                reduction_factor: int, checkpoint_every: int, cpus: int = 1, gpus: float = 0.0,
                restore: bool = False, num_samples: int = 1, search_alg=None, callbacks=(),
                asha: bool = True, max_failures: int = 1, stop=None, num_to_keep: int = 2, verbose: int = 1):
    """A fresh Tuner for the experiment folder `exp` (local path or URI; its parent is the storage,
    its base name the run's name), or with restore=True the Tuner.restore of it (Tune brings back
    the scheduler, search algorithm, callbacks and configs it saved; finished trials stay, the
    unfinished and errored ones go on). asha=False: no scheduler (every trial runs max_epochs); the
    choice epochs are still ASHA's rungs, so the reported val_map means the same in both."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    trainable = make_trainable(data, base, fixed, grid_epochs=asha_rungs(grace_period, reduction_factor, max_epochs),
                               checkpoint_every=checkpoint_every, cpus=cpus, gpus=gpus)
    if int({**base, **fixed}.get("val_every", 1)) > 1:
        # the epochs val_every skips report no val_map: ASHA (it compares at its rungs, always
        # scored) and the study skip such results, but Tune's controller refuses a result that
        # lacks the tuned metric unless told not to (it reads this in the driver, per result)
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    if restore:
        tuner = tune.Tuner.restore(exp, trainable=trainable, resume_unfinished=True, resume_errored=True)
        from harness.stopping import replace_on_restore

        replace_on_restore(tuner, stop)  # tuner.pkl's stopper is the first run's (harness/stopping.py)
        return tuner
    scheduler = (ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=grace_period,
                               reduction_factor=reduction_factor) if asha else None)
    storage_path, name = exp.rsplit("/", 1) if "://" in exp else os.path.split(exp)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=num_samples, search_alg=search_alg,
                                    scheduler=scheduler,
                                    # a finished trial's worker runs the next one: no fresh process
                                    # importing torch per trial (bench_harness: 7.7%)
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, stop=stop,
                                  failure_config=tune.FailureConfig(max_failures=max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=num_to_keep),
                                  callbacks=list(callbacks), verbose=verbose))
