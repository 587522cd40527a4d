"""The stored Optuna study without a search: StudySearch driven the way Tune drives it (suggest,
results, completion, a save of Tune's experiment state beside the searcher state, then a SIGKILL =
a fresh object restored from the last save through restore_from_dir, as Tune restores it), checked
against the study as a fresh Optuna process reads it back from the journal. Also the warm-start
point and the nearest allowed values. Seconds, no Ray cluster."""
import copy
import json
import pickle
import shutil

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from harness import study as S
from search_spaces import get_space

pytest.importorskip("ray.tune")


def plan(n, max_epochs=3, warm=None):
    sp = get_space("smoke")
    return dict(study_name="u", storage=None, journal="j.journal", persistent=True, warm_start=warm,
                num_samples=n, max_concurrent=2, seed=0, max_epochs=max_epochs, grace_period=1,
                reduction_factor=2, identity=S.study_identity(sp, "u"))


def new_search(tmp_path, n, **kw):
    from harness.study_search import StudySearch

    return StudySearch(get_space("smoke").sample, exp=str(tmp_path), plan=plan(n, **kw),
                       sampler=optuna.samplers.TPESampler(seed=0))


def tune_saves(search, tmp_path, tune_trials):
    """Tune's periodic save (TuneController.save_to_dir): its experiment state, listing the trials
    it has created (Tune 2.60's layout: [trial json, run metadata json] pairs), and the searcher's
    state, into the folder Tune later copies back for restore_from_dir."""
    d = tmp_path / "tune-save"
    d.mkdir(exist_ok=True)
    state = {"trial_data": [[json.dumps({"trial_id": t, "status": "RUNNING"}), json.dumps({"last_result": {}})]
                            for t in tune_trials], "runner_data": {}, "stats": {}}
    (d / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    search.save_to_dir(str(d), session_str="2026-01-01_00-00-00")
    return d


def killed_and_restored(search, saved, tmp_path, num_samples=None, moved_to=None):
    """What Tune does after a SIGKILL: the searcher object from tuner.pkl, restored from the last
    save's folder (searcher state, experiment state, and the study.json the resumed command
    rewrote: where the experiment is now, how many trials it wants)."""
    fresh = copy.deepcopy(search)  # as the Tuner's pickle of it (through __getstate__: no study)
    d = tmp_path / "restore"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(saved, d)
    exp = moved_to or tmp_path
    (d / "study.json").write_text(json.dumps({**plan(num_samples or search._plan["num_samples"]),
                                              "experiment": str(exp)}))
    fresh.restore_from_dir(str(d))
    return fresh


def read_back(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name="u", storage=JournalStorage(JournalFileBackend(str(tmp_path / "j.journal"))))


def run_epochs(search, tid, epochs, val=0.5):
    for e in epochs:
        search.on_trial_result(tid, {"epoch": e, "val_map": val + e / 100})


def test_storage_wins_trials_asked_or_told_after_the_last_save_are_neither_lost_nor_doubled(tmp_path):
    s = new_search(tmp_path, 4)
    pa, pb = s.suggest("a"), s.suggest("b")
    run_epochs(s, "a", [1, 2])
    s.on_trial_complete("a", {"epoch": 3, "val_map": 0.9})
    run_epochs(s, "b", [1])
    saved = tune_saves(s, tmp_path, ["a", "b"])  # Tune's periodic save ...
    pc = s.suggest("c")  # ... then c is asked and b is stopped early by ASHA: the storage is ahead
    run_epochs(s, "c", [1])
    s.on_trial_complete("b", {"epoch": 1, "val_map": 0.51})
    assert read_back(tmp_path).trials[2].state == TrialState.RUNNING

    r = killed_and_restored(s, saved, tmp_path)
    # Tune lost trial c: it creates a new trial, which gets c's Optuna trial (same params), not a 5th
    assert r.suggest("c2") == pc
    assert r.suggest("b") == pb  # b is restored from its checkpoint; its Optuna trial is b's
    run_epochs(r, "b", [1])  # reported again, already told PRUNED: nothing changes, nothing raises
    r.on_trial_complete("b", {"epoch": 1, "val_map": 0.51})
    run_epochs(r, "c2", [1, 2])
    r.on_trial_complete("c2", {"epoch": 3, "val_map": 0.8})
    r.suggest("d")
    r.on_trial_complete("d", {"epoch": 3, "val_map": 0.7})

    st = read_back(tmp_path)
    assert len(st.trials) == 4, [(t.number, t.state) for t in st.trials]
    assert [t.state for t in st.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE,
                                            TrialState.COMPLETE]
    assert [t.user_attrs["tune_trial_id"] for t in st.trials] == ["a", "b", "c2", "d"]
    assert st.trials[0].params == {k: v for k, v in pa.items() if k in st.trials[0].params}
    assert st.trials[0].intermediate_values == {1: 0.51, 2: 0.52, 3: 0.9}
    assert st.trials[1].value == 0.51 and st.trials[1].intermediate_values == {1: 0.51}  # pruned: last value
    assert st.trials[2].intermediate_values == {1: 0.51, 2: 0.52, 3: 0.8} and st.trials[2].value == 0.8


def test_errored_trials_fail_only_when_the_search_ends_so_a_resume_can_retry_them(tmp_path):
    s = new_search(tmp_path, 2)
    s.suggest("a"), s.suggest("b")
    s.on_trial_complete("a", error=True)  # e.g. a worker lost; --resume retries errored trials
    saved = tune_saves(s, tmp_path, ["a", "b"])
    assert read_back(tmp_path).trials[0].state == TrialState.RUNNING  # not FAIL yet: b still runs

    r = killed_and_restored(s, saved, tmp_path)
    run_epochs(r, "a", [1, 2])  # the retry succeeds this time
    r.on_trial_complete("a", {"epoch": 3, "val_map": 0.6})
    r.on_trial_complete("b", error=True)  # fails for good: the search is over, so b is FAIL
    st = read_back(tmp_path)
    assert [t.state for t in st.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert st.trials[0].value == 0.6


def test_a_lost_trial_that_tune_never_recreates_ends_failed_not_running(tmp_path):
    s = new_search(tmp_path, 1)
    saved = tune_saves(s, tmp_path, [])
    s.suggest("a")  # asked, then the driver dies before the save
    r = killed_and_restored(s, saved, tmp_path)
    # a Tune that had counted the trial would not ask again; the search ends: no RUNNING trial left
    r._completed_trials.add("x")
    r._finish_if_done()
    st = read_back(tmp_path)
    assert [t.state for t in st.trials] == [TrialState.FAIL] and st.trials[0].user_attrs["orphaned"] is True


def test_the_pickle_keeps_no_mapping_it_is_rebuilt_from_the_tune_trial_id_attributes(tmp_path):
    s = new_search(tmp_path, 3)
    pa, pb = s.suggest("a"), s.suggest("b")
    run_epochs(s, "a", [1, 2, 3])
    s.on_trial_complete("a", {"epoch": 3, "val_map": 0.9})
    saved = tune_saves(s, tmp_path, ["a", "b"])
    state = pickle.load(open(next(saved.glob("searcher-state-*.pkl")), "rb"))
    assert state["_numbers"] == {} and state["_completed_trials"] == set() and state["_ot_study"] is None
    # the experiment moved (the journal with it): the study is found where study.json says it now is
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(str(tmp_path / "j.journal"), str(moved / "j.journal"))
    r = killed_and_restored(s, saved, tmp_path, moved_to=moved)
    st = optuna.load_study(study_name="u", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(moved / "j.journal"))))
    # what the rebuilt mapping must be, read from the stored attributes by hand
    assert r._numbers == {t.user_attrs["tune_trial_id"]: t.number for t in st.trials} == {"a": 0, "b": 1}
    assert r._completed_trials == {"a"} and r._orphans == []
    assert r.suggest("b") == pb and r.suggest("a") == pa
    run_epochs(r, "b", [1, 2, 3])
    r.on_trial_complete("b", {"epoch": 3, "val_map": 0.7})
    r.suggest("c")
    assert [t.user_attrs["tune_trial_id"] for t in st.trials] == ["a", "b", "c"]


def test_a_finished_trial_handed_to_a_new_tune_trial_stays_bound_across_two_kills(tmp_path):
    """c finishes after the last save, Tune loses it and creates c2, which takes c's Optuna trial;
    a finished trial's attributes cannot change, so the study records the hand-over: after a second
    kill c2 is still c's trial and a new trial gets a new number (no params twice)."""
    s = new_search(tmp_path, 4)
    s.suggest("a")
    saved = tune_saves(s, tmp_path, ["a"])
    pc = s.suggest("c")
    s.on_trial_complete("c", {"epoch": 3, "val_map": 0.8})
    r = killed_and_restored(s, saved, tmp_path)
    assert r._orphans == [1]
    assert r.suggest("c2") == pc
    saved = tune_saves(r, tmp_path, ["a", "c2"])
    r2 = killed_and_restored(r, saved, tmp_path)
    assert r2._numbers == {"a": 0, "c2": 1} and r2._orphans == [] and "c2" in r2._completed_trials
    r2.suggest("d")
    st = read_back(tmp_path)
    assert len(st.trials) == 3 and st.trials[2].user_attrs["tune_trial_id"] == "d"
    assert st.user_attrs["tune_trial_rebound"] == {"c2": 1}


def test_a_resumed_command_asking_more_trials_grows_the_search(tmp_path):
    """num_samples comes from the study.json the resumed command wrote, not from the pickle."""
    from ray.tune.search import ConcurrencyLimiter

    from harness.study_search import Generator

    s = new_search(tmp_path, 2)
    gen = Generator(ConcurrencyLimiter(s, 2))
    gen._total_samples = 2
    s.suggest("a")
    saved = tune_saves(s, tmp_path, ["a"])
    gen.save_to_dir(str(saved), session_str="2026-01-01_00-00-00")
    fresh = copy.deepcopy(gen)
    d = tmp_path / "restore"
    shutil.copytree(saved, d)
    (d / "study.json").write_text(json.dumps({**plan(5), "experiment": str(tmp_path)}))
    fresh.restore_from_dir(str(d))
    assert fresh._total_samples == 5 and fresh.searcher.searcher._plan["num_samples"] == 5
    assert fresh.searcher.searcher._numbers == {"a": 0}


def test_the_warm_start_is_the_first_trial(tmp_path):
    point = S.warm_start_point(get_space("smoke"), {"mask_ratio": 0.3, "ema_momentum": 0.95, "top_k": 2,
                                                    "temperature": 0.2, "cca_dim": 4}, log=lambda m: None)
    s = new_search(tmp_path, 2, warm=point)
    first = s.suggest("a")
    assert first["mask_ratio"] == 0.3 and first["top_k"] == 2 and first["temperature"] == 0.2
    assert first["cca_dim"] == 4 and first["one_minus_ema_momentum"] == pytest.approx(0.05, abs=1e-15)
    assert first["ema_momentum"] == pytest.approx(0.95, abs=1e-15)
    assert s.suggest("b") != first


def test_warm_start_point_of_the_shipped_config_with_nearest_values():
    base = yaml.safe_load(open("config/hsc_mae.yaml"))
    lines = []
    point = S.warm_start_point(get_space("smoke"), base, log=lines.append)
    # smoke: top_k 1-4, cca_dim 4 or 8; the shipped config has top_k 5 and cca_dim 32
    assert point == {"mask_ratio": base["mask_ratio"], "one_minus_ema_momentum": 1 - base["ema_momentum"],
                     "top_k": 4, "temperature": base["temperature"], "cca_dim": 8}
    assert len(lines) == 2 and "top_k 5" in lines[0] and "cca_dim 32" in lines[1] and "8" in lines[1]
    # the default space can take every shipped value: nothing is moved, nothing logged
    lines.clear()
    point = S.warm_start_point(get_space("default"), base, log=lines.append)
    assert point["cca_dim"] == 32 and point["top_k"] == 5 and not lines


@pytest.mark.parametrize("spec,value,expected", [
    ({"type": "categorical", "choices": [4, 8]}, 32, 8),
    ({"type": "categorical", "choices": [8, 16, 32, 48]}, 20, 16),
    ({"type": "categorical", "choices": [8, 16, 32, 48]}, 24, 16),  # a tie: the first
    ({"type": "categorical", "choices": ["zero", "learned"]}, "learned", "learned"),
    ({"type": "categorical", "choices": [True, False]}, 1, True),  # 1 is not the bool True's type
    ({"type": "int", "low": 1, "high": 4}, 5, 4),
    ({"type": "int", "low": 1, "high": 16}, 0, 1),
    ({"type": "float", "low": 1e-3, "high": 1e-1}, 0.5, 0.1),
    ({"type": "float", "low": 0.1, "high": 0.8}, 0.5, 0.5),
])
def test_nearest_allowed(spec, value, expected):
    got = S.nearest_allowed(spec, value)
    assert got == expected and type(got) is type(expected)
