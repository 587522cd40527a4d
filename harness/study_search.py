"""The Tune side of the stored Optuna study (harness/study.py explains the design): the searcher,
the search generator that lets a restored search grow, and the callback that records trial
folders. Imported only once the command line has been checked (it imports Ray). It imports
harness.study (the storage helpers), never the other way round.

The private OptunaSearch members used here (`_ot_study`, `_ot_trials`, `_storage`, `_sampler`,
`_space`, `_completed_trials`, `_suggest_from_define_by_run_func`) and SearchGenerator's
`_total_samples` are Ray 2.60's; tests/test_ray_internals.py fails, naming the member, if one
goes."""
from __future__ import annotations

import json
import os
import pickle

import optuna
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.search import SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from harness import METRIC, MODE, branch
from harness.study import RECORD, _storage_or_error
from harness.tune_state import read_trials

REBOUND = "tune_trial_rebound"  # study attribute: {Tune trial id: number} for finished trials handed on


class StudySearch(OptunaSearch):
    """OptunaSearch whose study lives in an Optuna storage (see the module docstring)."""

    def __init__(self, space, *, exp: str, plan: dict, sampler, inherit: dict | None = None):
        self._exp, self._plan = exp, plan
        self._numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self._errored: set[str] = set()  # told FAIL once the search has finished
        self._orphans: list[int] = []  # Optuna trials the storage holds but Tune lost (a SIGKILL)
        self._live: dict[int, optuna.Trial] = {}
        storage = _storage_or_error(self._where(), "Optuna storage") if plan["persistent"] else None
        point = plan.get("warm_start")
        super().__init__(space=space, metric=METRIC, mode=MODE, sampler=sampler,
                         study_name=plan["study_name"], storage=storage,
                         points_to_evaluate=[point] if point else None)
        self._storage = self._ot_study._storage  # also when in memory (a remote --storage folder)
        for k, v in plan["identity"].items():
            self._ot_study.set_user_attr(k, v)
        branch.seed(self._ot_study, inherit, plan)  # --from: the old experiment's trials, before the first ask

    def _where(self) -> str | None:
        if self._plan["storage"]:
            return self._plan["storage"]
        if self._plan["journal"]:
            return os.path.join(self._exp, self._plan["journal"])
        return None

    # -- pickling: the study stays in the storage, and so does which Tune trial is which --
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_live"] = {}
        state["_ot_trials"] = {}
        # rebuilt on restore from the study's tune_trial_id attributes and Tune's saved state
        state["_numbers"], state["_errored"], state["_orphans"] = {}, set(), []
        state["_completed_trials"] = set()
        if self._plan["persistent"]:
            state["_ot_study"] = state["_storage"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore_from_dir(self, checkpoint_dir: str):
        """What Tune calls on --resume, with the folder it copied the experiment's .json and .pkl
        files into: the newest searcher-state pickle, the experiment state Tune restores its
        trials from, and our study.json (where the experiment folder is now, how many trials the
        resumed command wants; rewritten by it before Tuner.restore)."""
        super().restore_from_dir(checkpoint_dir)  # -> restore(newest searcher-state-*.pkl)
        rec_path = os.path.join(checkpoint_dir, RECORD)
        if os.path.exists(rec_path):
            with open(rec_path) as f:
                rec = json.load(f)
            self._exp = rec.get("experiment") or self._exp
            self._plan = {**self._plan, "num_samples": rec.get("num_samples") or self._plan["num_samples"]}
        trials = read_trials(checkpoint_dir)
        self._pending_rebuild = False
        self._rebuild(None if trials is None else {t["trial_id"] for t in trials})

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)  # Tune's own state file, unpickled as Tune does (README, Security)
        self._live = {}
        if self._plan["persistent"]:
            self._ot_study = None
        self._pending_rebuild = True  # done by restore_from_dir, or else at the study's first use

    def _study(self):
        if self._ot_study is None:
            self._storage = _storage_or_error(self._where(), "Optuna storage")
            self._ot_study = optuna.load_study(study_name=self._plan["study_name"], storage=self._storage,
                                               sampler=self._sampler, pruner=optuna.pruners.NopPruner())
        if getattr(self, "_pending_rebuild", False):
            self._pending_rebuild = False
            self._rebuild(None)
        return self._ot_study

    def _rebuild(self, tune_trials: set[str] | None) -> None:
        """After a restore, the mapping from the storage (the truth): each Optuna trial's
        tune_trial_id attribute (and the study's record of finished trials handed on to a new Tune
        trial) says which Tune trial it is. tune_trials: the trial ids of Tune's restored state;
        an Optuna trial whose Tune trial is not among them was lost by Tune (asked after its last
        save) and is handed to the next trial Tune creates. None: every recorded id is Tune's."""
        study = self._study()
        trials = study.get_trials(deepcopy=False)
        by_number = {t.number: t for t in trials}
        ids = {t.number: t.user_attrs.get("tune_trial_id") for t in trials}
        for tid, number in (study.user_attrs.get(REBOUND) or {}).items():
            ids[number] = tid
        self._numbers, self._orphans = {}, []
        for number in sorted(ids):
            tid = ids[number]
            if branch.INHERITED_FROM in by_number[number].user_attrs:
                continue  # --from: finished in another experiment; no Tune trial ever had it, none gets it
            if tid is not None and (tune_trials is None or tid in tune_trials):
                self._numbers[tid] = number
            elif by_number[number].state != TrialState.WAITING:
                self._orphans.append(number)
        # finished Optuna trials are completed Tune trials; an errored trial is still RUNNING in the
        # study (told FAIL only when the search ends) and --resume retries it
        self._completed_trials = {tid for tid, n in self._numbers.items() if by_number[n].state.is_finished()}
        self._errored = set()

    def _frozen(self, number: int):
        st = self._study()
        return self._storage.get_trial(self._storage.get_trial_id_from_study_id_trial_number(
            st._study_id, number))

    def _trial(self, number: int):
        if number not in self._live:
            self._live[number] = optuna.Trial(self._study(), self._frozen(number)._trial_id)
        return self._live[number]

    def _set_attr(self, number: int, key: str, value) -> None:
        ft = self._frozen(number)
        if not ft.state.is_finished():
            self._storage.set_trial_user_attr(ft._trial_id, key, value)

    def suggest(self, trial_id: str):
        study = self._study()
        if trial_id not in self._numbers:
            number = self._orphans.pop(0) if self._orphans else study.ask().number
            self._numbers[trial_id] = number
            if self._frozen(number).state.is_finished():  # a finished trial's attributes are frozen
                study.set_user_attr(REBOUND, {**(study.user_attrs.get(REBOUND) or {}), trial_id: number})
            else:
                self._set_attr(number, "tune_trial_id", trial_id)
        return self._suggest_from_define_by_run_func(self._space, self._trial(self._numbers[trial_id]))

    def bind_folder(self, trial_id: str, folder: str) -> None:
        if trial_id in self._numbers:
            self._set_attr(self._numbers[trial_id], "tune_trial_folder", folder)

    def on_trial_result(self, trial_id: str, result: dict):
        if trial_id in self._completed_trials or trial_id not in self._numbers:
            return
        self._report(self._numbers[trial_id], result)

    def _report(self, number: int, result: dict) -> None:
        if METRIC not in result:
            return
        ft = self._frozen(number)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        # a trial restored from a checkpoint may report an epoch again: same value, keep the first
        if not ft.state.is_finished() and step not in ft.intermediate_values:
            self._storage.set_trial_intermediate_value(ft._trial_id, step, float(result[METRIC]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._completed_trials or trial_id not in self._numbers:
            return
        self._completed_trials.add(trial_id)
        number = self._numbers[trial_id]
        if error:
            self._errored.add(trial_id)
        elif not self._frozen(number).state.is_finished():
            result = result or {}
            self._report(number, result)  # Tune hands a trial's last result to on_trial_complete only
            if METRIC in result and result.get("epoch", 0) >= self._plan["max_epochs"]:
                self._study().tell(number, float(result[METRIC]), state=TrialState.COMPLETE)
            else:  # stopped early by ASHA: Optuna takes its last intermediate value as its value
                self._study().tell(number, state=TrialState.PRUNED)
        self._finish_if_done()

    def _finish_if_done(self):
        if len(self._completed_trials) < self._plan["num_samples"]:
            return
        study = self._study()
        for t in sorted(self._errored):
            if not self._frozen(self._numbers[t]).state.is_finished():
                study.tell(self._numbers[t], state=TrialState.FAIL)
        for number in self._orphans:  # lost by Tune and not reused: there is no Tune trial for them
            if not self._frozen(number).state.is_finished():
                self._set_attr(number, "orphaned", True)
                study.tell(number, state=TrialState.FAIL)
        self._orphans = []


class Generator(SearchGenerator):
    """Tune's SearchGenerator; on restore its sample count is the resumed command's, so a
    finished search can be extended in place."""

    def set_state(self, state):
        super().set_state(state)  # called after the StudySearch below restored (its num_samples: the command's)
        # only a stopper's stop_all sets it (harness/stopping.py): this run's stopper decides again
        self._finished = False
        base = self.searcher
        while hasattr(base, "searcher"):
            base = base.searcher
        wanted = getattr(base, "_plan", {}).get("num_samples")
        if wanted:
            self._total_samples = max(self._total_samples, wanted)

    # ConcurrencyLimiter passes on the completion of its live trials only; an errored trial retried
    # by --resume is not one of them (it left them when it errored), yet its outcome is the study's
    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self.searcher.live_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
        else:
            self.searcher.searcher.on_trial_complete(trial_id, result=result, error=error)


class StudyCallback(Callback):
    """Ties each Optuna trial to its Tune trial folder."""

    def __init__(self, searcher):
        self.searcher = searcher

    def on_trial_start(self, iteration, trials, trial, **info):
        self.searcher.bind_folder(trial.trial_id, os.path.basename(trial.path.rstrip("/")))


def make_search_alg(p: dict, space, exp: str, sampler, inherit: dict | None = None):
    """SearchGenerator(ConcurrencyLimiter(StudySearch)) and the callbacks that go with it.
    inherit: harness.branch.prepare's trials (--from), added to the study before its first ask."""
    from ray.tune.search import ConcurrencyLimiter

    searcher = StudySearch(space.sample, exp=exp, plan=p, sampler=sampler, inherit=inherit)
    gen = Generator(ConcurrencyLimiter(searcher, p["max_concurrent"]))
    callbacks = [StudyCallback(searcher)]
    if p.get("mlflow"):
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=p["mlflow"], experiment_name=p["study_name"],
                                              save_artifact=False))
    return gen, callbacks
