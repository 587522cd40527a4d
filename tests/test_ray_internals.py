"""The Ray Tune and Optuna internals the harness patches or uses, checked against the installed
versions without starting Ray (seconds). pyproject pins `ray[tune]==2.60.*` for them; if one of
these fails after an upgrade, the message names the internal, and the harness module that relies
on it must be revisited before the pin moves:

- harness/tune_state.py replaces TuneController.save_to_dir (its 2.60 body, with the state file
  written atomically) and reads experiment_state-*.json (trial_data = Trial.get_json_state pairs);
- harness/interrupt.py finds Tune's SIGUSR1 handler by its qualname (`_setup_signal_catching`),
  relies on TUNE_DISABLE_SIGINT_HANDLER, and drops Tune's own interruption lines by their text;
- harness/study_search.py subclasses OptunaSearch and uses its private members, SearchGenerator's
  `_total_samples`, and Tune's resume order (the experiment's .json files copied to the staging
  folder, then `search_alg.restore_from_dir(staging)`, the wrapped searcher restored before the
  generator's own state).
"""
import ast
import inspect
import json
import os
import signal

import pytest

ray_tune = pytest.importorskip("ray.tune")


def _function_source(module, cls_name: str | None, fn_name: str) -> str:
    """The source of a function as written in the module's file (not as a patch may have left the
    class in this process), docstring dropped, normalised by ast.unparse."""
    tree = ast.parse(open(inspect.getsourcefile(module)).read())
    scope = tree.body
    if cls_name:
        found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name]
        assert found, f"{module.__name__}.{cls_name} is gone"
        scope = found[0].body
    fns = [n for n in scope if isinstance(n, ast.FunctionDef) and n.name == fn_name]
    assert fns, f"{module.__name__}.{cls_name + '.' if cls_name else ''}{fn_name} is gone"
    fn = fns[0]
    if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(getattr(fn.body[0], "value", None), ast.Constant):
        fn.body = fn.body[1:]
    return ast.unparse(fn)


SAVE_TO_DIR_260 = """def save_to_dir(self):
    runner_state = {'trial_data': list(self._get_trial_checkpoints().values()), 'runner_data': self.__getstate__(), 'stats': {'start_time': self._start_time}}
    driver_staging_path = self._storage.experiment_driver_staging_path
    os.makedirs(driver_staging_path, exist_ok=True)
    with open(Path(driver_staging_path, self.experiment_state_file_name), 'w') as f:
        json.dump(runner_state, f, cls=TuneFunctionEncoder)
    self._search_alg.save_to_dir(driver_staging_path, session_str=self._session_str)
    self._callbacks.save_to_dir(driver_staging_path, session_str=self._session_str)"""


def test_tune_controller_save_to_dir_is_the_body_the_atomic_patch_copies():
    from ray.tune.execution import tune_controller as tc

    got = _function_source(tc, "TuneController", "save_to_dir")
    assert got == SAVE_TO_DIR_260, (
        "ray.tune.execution.tune_controller.TuneController.save_to_dir changed; harness/tune_state.py "
        "atomic_experiment_state() replaces it with a copy of the 2.60 body:\n" + got)
    assert hasattr(tc, "TuneFunctionEncoder"), "ray.tune.execution.tune_controller.TuneFunctionEncoder is gone"
    for member in ("_get_trial_checkpoints", "__getstate__", "experiment_state_file_name"):
        assert hasattr(tc.TuneController, member), f"TuneController.{member} is gone (harness/tune_state.py)"


def test_the_patched_save_to_dir_keeps_the_signature():
    from ray.tune.execution import tune_controller as tc

    from harness.tune_state import atomic_experiment_state

    atomic_experiment_state()
    assert list(inspect.signature(tc.TuneController.save_to_dir).parameters) == ["self"]


def test_experiment_state_trial_data_is_what_tune_state_reads(tmp_path):
    """A state file as TuneController.save_to_dir writes it (trial_data = the values of
    _get_trial_checkpoints, i.e. Trial.get_json_state() pairs), read back by harness.tune_state."""
    from ray.tune.experiment import Trial

    from harness.tune_state import read_trials

    src = _function_source(__import__("ray.tune.execution.tune_controller", fromlist=["x"]), "TuneController",
                           "_get_trial_checkpoints")
    assert "get_json_state()" in src, "TuneController._get_trial_checkpoints no longer stores Trial.get_json_state()"
    trials = [Trial("run_trial", config={}, trial_id=tid, stub=True) for tid in ("a0001", "b0002")]
    trials[1].set_status(Trial.ERROR)
    trials[1].run_metadata.last_result = {"epoch": 3}
    trials[1].run_metadata.num_failures = 2
    trials[1].invalidate_json_state()
    state = {"trial_data": [list(t.get_json_state()) for t in trials], "runner_data": {}, "stats": {}}
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    got = read_trials(str(tmp_path))
    assert got is not None, "harness.tune_state cannot parse Trial.get_json_state()'s layout"
    assert [(t["trial_id"], t["status"], t["last_epoch"], t["num_failures"]) for t in got] == \
        [("a0001", "PENDING", 0, 0), ("b0002", "ERROR", 3, 2)]
    raw = json.loads(trials[0].get_json_state()[0])
    assert "relative_logdir" in raw, "Trial's json state has no relative_logdir (reporting/experiment.py keys on it)"


def test_tunes_signal_handler_is_found_by_qualname(monkeypatch):
    from ray.tune import tune as tune_mod

    from harness.interrupt import _tune_stop_handler

    src = _function_source(tune_mod, None, "_setup_signal_catching")
    assert "TUNE_DISABLE_SIGINT_HANDLER" in src, "ray.tune.tune._setup_signal_catching ignores TUNE_DISABLE_SIGINT_HANDLER"
    assert "signal.SIGUSR1" in src, "ray.tune.tune._setup_signal_catching no longer registers SIGUSR1"
    saved = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1))
    monkeypatch.setenv("TUNE_DISABLE_SIGINT_HANDLER", "1")
    try:
        event = tune_mod._setup_signal_catching()
        handler = _tune_stop_handler()
        assert handler is not None, ("Tune's SIGUSR1 handler's qualname no longer contains "
                                     "'_setup_signal_catching' (harness/interrupt.py _tune_stop_handler)")
        assert signal.getsignal(signal.SIGINT) is saved[0], "TUNE_DISABLE_SIGINT_HANDLER=1 did not keep SIGINT ours"
        handler(signal.SIGUSR1, None)
        assert event.is_set(), "calling Tune's SIGUSR1 handler does not set its interrupted event"
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGUSR1, saved[1] if saved[1] is not None else signal.SIG_DFL)


@pytest.mark.parametrize("module,text", [
    ("ray.tune.tune", "Stop signal received"),
    ("ray.tune.tune", "Experiment has been interrupted"),
    ("ray.tune.tune", "Trials did not complete"),
    ("ray.tune.analysis.experiment_analysis", "Failed to fetch metrics"),
])
def test_the_tune_log_lines_the_interrupt_filter_drops_still_exist(module, text):
    import importlib

    from harness.interrupt import _TUNE_LOGGERS

    mod = importlib.import_module(module)
    assert module in _TUNE_LOGGERS
    assert text in open(inspect.getsourcefile(mod)).read(), (
        f"{module} no longer logs {text!r}: harness/interrupt.py _DropTuneInterruptLines filters on it")
    assert mod.logger.name == module, f"{module}'s logger is now {mod.logger.name!r}"


def test_optuna_search_private_members_used_by_study_search():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    s = OptunaSearch(space=lambda t: {"x": t.suggest_float("x", 0, 1)}, metric="m", mode="max",
                     sampler=optuna.samplers.RandomSampler(seed=0))
    for member in ("_ot_study", "_ot_trials", "_storage", "_sampler", "_space", "_completed_trials",
                   "_points_to_evaluate", "_study_name"):
        assert hasattr(s, member), f"OptunaSearch.{member} is gone (harness/study_search.py uses it)"
    assert isinstance(s._completed_trials, set), "OptunaSearch._completed_trials is no longer a set"
    assert isinstance(s._ot_study, optuna.Study), "OptunaSearch._ot_study is no longer the optuna Study"
    params = list(inspect.signature(OptunaSearch._suggest_from_define_by_run_func).parameters)
    assert params == ["self", "func", "ot_trial"], f"OptunaSearch._suggest_from_define_by_run_func{params}"
    for fn, want in (("save", ["self", "checkpoint_path"]), ("restore", ["self", "checkpoint_path"]),
                     ("restore_from_dir", ["self", "checkpoint_dir"]), ("on_trial_result", ["self", "trial_id", "result"]),
                     ("on_trial_complete", ["self", "trial_id", "result", "error"]), ("suggest", ["self", "trial_id"])):
        got = list(inspect.signature(getattr(OptunaSearch, fn)).parameters)
        assert got == want, f"OptunaSearch.{fn}{tuple(got)}, expected {tuple(want)}"
    assert "__dict__.update" in _function_source(__import__("ray.tune.search.optuna.optuna_search", fromlist=["x"]),
                                                 "OptunaSearch", "restore"), \
        "OptunaSearch.restore no longer restores by __dict__.update of the pickle (StudySearch.__getstate__)"
    # what StudySearch calls on the optuna side
    st = s._ot_study
    assert hasattr(st, "_study_id"), "optuna Study._study_id is gone"
    assert hasattr(st._storage, "get_trial_id_from_study_id_trial_number"), \
        "optuna storage.get_trial_id_from_study_id_trial_number is gone"
    t = st.ask()
    assert hasattr(st._storage.get_trial(t._trial_id), "_trial_id"), "optuna FrozenTrial._trial_id is gone"


def test_search_generator_restores_the_searcher_before_its_own_state():
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator, search_generator

    src = _function_source(search_generator, "SearchGenerator", "restore_from_dir")
    a, b = src.find("base_searcher.restore_from_dir(dirpath)"), src.find("self.set_state(search_alg_state)")
    assert 0 <= a < b, ("SearchGenerator.restore_from_dir no longer restores the wrapped searcher before "
                        "set_state (harness/study_search.py Generator.set_state reads the restored num_samples)")
    assert "_total_samples" in _function_source(search_generator, "SearchGenerator", "set_state"), \
        "SearchGenerator.set_state no longer sets _total_samples (Generator grows it on --resume)"
    assert "_total_samples" in _function_source(search_generator, "SearchGenerator", "is_finished")
    lim = ConcurrencyLimiter.__init__
    assert "searcher" in inspect.signature(lim).parameters
    assert "live_trials" in _function_source(__import__("ray.tune.search.concurrency_limiter", fromlist=["x"]),
                                             "ConcurrencyLimiter", "__init__"), "ConcurrencyLimiter.live_trials is gone"
    assert issubclass(SearchGenerator, object)


def test_tune_resume_copies_the_experiments_json_to_staging_then_restores_the_searcher_from_it():
    from ray.tune.execution import experiment_state, tune_controller as tc

    sync = _function_source(experiment_state, "_ExperimentCheckpointManager", "sync_down_experiment_state")
    assert "'.json'" in sync, ("Tune's resume no longer copies the experiment's .json files to the staging folder: "
                               "the restored StudySearch reads study.json from there (harness/study_search.py)")
    resume = _function_source(tc, "TuneController", "resume")
    a = resume.find("sync_down_experiment_state()")
    b = resume.find("restore_from_dir(driver_staging_dir)")
    assert 0 <= a < b, "TuneController.resume no longer syncs down before search_alg.restore_from_dir(staging)"


def test_tuner_restore_and_can_restore_take_what_build_tuner_passes():
    from ray.tune import Tuner

    got = inspect.signature(Tuner.restore).parameters
    for p in ("path", "trainable", "resume_unfinished", "resume_errored"):
        assert p in got, f"Tuner.restore has no {p!r} (harness/tuner.py build_tuner)"
    assert callable(getattr(Tuner, "can_restore", None)), "Tuner.can_restore is gone (harness/search.py)"


def test_the_pin_matches_the_installed_ray():
    from importlib.metadata import version

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "pyproject.toml")).read()
    assert '"ray[tune]==2.60.*"' in text, "pyproject.toml no longer pins ray[tune]==2.60.*"
    assert version("ray").startswith("2.60."), f"ray {version('ray')} is installed; the internals are 2.60's"
