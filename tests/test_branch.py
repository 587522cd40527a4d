"""`tune_main.py --from OLD` (harness/branch.py): a new experiment whose Optuna study starts with
OLD's finished trials that fit its space. OLD is made by hand here (an Optuna journal study with
trials in range, out of range and missing a parameter, and the metadata files tune_main.py writes),
so which trials must be inherited is this file's own list, not the harness's."""
import json
import os
import subprocess
import sys
import warnings

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution as Cat
from optuna.distributions import FloatDistribution as Float
from optuna.distributions import IntDistribution as Int
from optuna.trial import TrialState

import tune_main

from conftest import ROOT, SEARCH_ENV, tune_main_error  # noqa: E402

SHIPPED = os.path.join(ROOT, "config", "hsc_mae.yaml")
# the smoke space as the test reads it (search_spaces/smoke.py), with --max-epochs 2
SMOKE_DISTS = {"mask_ratio": Float(0.1, 0.8), "one_minus_ema_momentum": Float(1e-3, 1e-1, log=True),
               "top_k": Int(1, 4), "temperature": Float(0.05, 0.5, log=True), "cca_dim": Cat([4, 8])}
SMOKE_LR = 3e-3  # smoke fixes lr; the old experiment searched it
# the old experiment: smoke plus lr, wider top_k and cca_dim; everything else fixed like smoke's
OLD_DISTS = {**SMOKE_DISTS, "top_k": Int(1, 16), "cca_dim": Cat([4, 8, 16]), "lr": Float(1e-4, 1e-2, log=True)}
OLD_FIXED = {"data": "synthetic:tiny", "hidden_dim": 32, "embed_dim": 16, "batch_size": 64, "epochs": 2}
GOOD = dict(mask_ratio=0.3, one_minus_ema_momentum=0.01, top_k=2, temperature=0.1, cca_dim=4, lr=SMOKE_LR)

# (name, state, params, value, intermediate values, expected: "in" | "outside" | "missing" | None = not finished)
OLD_TRIALS = [
    ("complete", TrialState.COMPLETE, GOOD, 0.41, {1: 0.30, 2: 0.41}, "in"),
    ("complete-2", TrialState.COMPLETE, {**GOOD, "mask_ratio": 0.8, "top_k": 4, "cca_dim": 8}, 0.45,
     {1: 0.33, 2: 0.45}, "in"),
    ("asha-stopped", TrialState.PRUNED, {**GOOD, "temperature": 0.4}, 0.2, {1: 0.2}, "in"),
    ("top_k-outside", TrialState.COMPLETE, {**GOOD, "top_k": 9}, 0.5, {1: 0.4, 2: 0.5}, "outside"),
    ("cca_dim-outside", TrialState.COMPLETE, {**GOOD, "cca_dim": 16}, 0.5, {1: 0.4, 2: 0.5}, "outside"),
    # lr is not searched by smoke: inherited only at smoke's fixed value
    ("lr-not-smokes", TrialState.COMPLETE, {**GOOD, "lr": 1e-3}, 0.5, {1: 0.4, 2: 0.5}, "outside"),
    ("no-temperature", TrialState.COMPLETE, {k: v for k, v in GOOD.items() if k != "temperature"}, 0.5,
     {1: 0.4, 2: 0.5}, "missing"),
    ("failed", TrialState.FAIL, GOOD, None, {1: 0.1}, None),
    ("pruned-before-epoch-1", TrialState.PRUNED, GOOD, None, {}, None),
]


def make_old(folder, fingerprint: str, fixed=None, name="old") -> str:
    """An experiment folder as tune_main.py leaves it, with a journal study of OLD_TRIALS."""
    from harness.study import open_storage

    old = folder / name
    old.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = optuna.create_study(study_name=name, direction="maximize",
                                 storage=open_storage(str(old / "optuna-study.journal")))
    for i, (label, state, params, value, inter, _) in enumerate(OLD_TRIALS):
        st.add_trial(optuna.trial.create_trial(
            state=state, params=params, distributions={k: OLD_DISTS[k] for k in params},
            value=value, intermediate_values=inter,
            user_attrs={"tune_trial_id": f"old{i}", "tune_trial_folder": f"run_trial_old{i}", "label": label}))
    base = yaml.safe_load(open(SHIPPED))
    (old / "base_config.yaml").write_text(yaml.safe_dump(base))
    (old / "space.json").write_text(json.dumps({"name": "old-space", "fixed": fixed or OLD_FIXED,
                                                "num_samples": len(OLD_TRIALS), "max_epochs": 2}))
    (old / "data.json").write_text(json.dumps({"source": "synthetic:tiny", "fingerprint": fingerprint}))
    (old / "study.json").write_text(json.dumps({"study_name": name, "storage": None,
                                                "journal": "optuna-study.journal", "persistent": True}))
    return str(old)


def load(path, name):
    from harness.study import open_storage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.load_study(study_name=name, storage=open_storage(path))


def argv(storage, old, *extra):
    return ["--space", "smoke", "--storage", str(storage), "--name", "b", "--max-epochs", "2", "--from", str(old),
            *extra]


class Built(Exception):
    """Raised by the stand-in build_tuner: the study is seeded, the searcher built; no Ray."""


@pytest.fixture
def no_ray(monkeypatch):
    """tune_main.main up to the Tuner: Ray is not started, build_tuner keeps the search alg and stops."""
    import harness.search
    import harness.tuner

    kept = {}

    def build_tuner(exp, **kw):
        kept.update(kw)
        raise Built()

    monkeypatch.setattr(harness.search, "init_ray", lambda address=None: None)
    monkeypatch.setattr(harness.tuner, "build_tuner", build_tuner)
    return kept


def test_the_new_study_holds_exactly_the_old_trials_that_fit(tmp_path, tiny, capsys, no_ray):
    old = make_old(tmp_path, tiny.fingerprint())
    with pytest.raises(Built):
        tune_main.main(argv(tmp_path / "new", old, "--num-samples", "3"))
    out = capsys.readouterr().out
    want = [i for i, t in enumerate(OLD_TRIALS) if t[5] == "in"]
    finished = [t for t in OLD_TRIALS if t[5] is not None]
    n_out, n_missing = (sum(t[5] == k for t in OLD_TRIALS) for k in ("outside", "missing"))
    assert (f"[hscmae] --from {old}: inherited {len(want)} of {len(finished)} finished trials ({n_out} outside "
            f"the new space, {n_missing} missing a parameter)") in out, out
    exp = tmp_path / "new" / "b"
    new = load(str(exp / "optuna-study.journal"), "b")
    inherited = [t for t in new.get_trials() if "hscmae_inherited_from" in t.user_attrs]
    assert [t.user_attrs["hscmae_inherited_number"] for t in inherited] == want
    for t in inherited:
        name, state, params, value, inter, _ = OLD_TRIALS[t.user_attrs["hscmae_inherited_number"]]
        # OLD's folder and number, and no tune_trial_id: no Tune trial has it
        assert set(t.user_attrs) == {"hscmae_inherited_from", "hscmae_inherited_number"}, name
        assert t.user_attrs["hscmae_inherited_from"] == old, name
        assert t.state == state and t.value == value and t.intermediate_values == inter, name
        assert t.params == {k: v for k, v in params.items() if k in SMOKE_DISTS}, name  # lr: smoke fixes it
        assert t.distributions == SMOKE_DISTS, name
    # nothing else but the warm-start trial (waiting, not yet asked)
    others = [t for t in new.get_trials() if t not in inherited]
    assert [t.state for t in others] == [TrialState.WAITING], others
    rec = json.loads((exp / "study.json").read_text())["inherited"]
    assert rec["from"] == old and rec["old_numbers"] == want
    assert rec["numbers"] == [t.number for t in inherited]
    # the searcher: a restore that finds no Tune trial hands none of them on, and new Tune trials get new
    # Optuna trials (the warm start first); num_samples counts the new trials only
    assert no_ray["num_samples"] == 3
    searcher = no_ray["search_alg"].searcher.searcher
    searcher._rebuild(set())
    assert not set(searcher._orphans) & set(rec["numbers"]), searcher._orphans
    for tid in ("t1", "t2", "t3"):
        searcher.suggest(tid)
    assert searcher._numbers["t1"] == others[0].number
    assert not set(searcher._numbers.values()) & set(rec["numbers"]), searcher._numbers
    assert len(load(str(exp / "optuna-study.journal"), "b").get_trials()) == len(inherited) + 3


def test_a_setting_the_old_experiment_fixed_otherwise_keeps_every_trial_out(tmp_path, tiny, capsys, no_ray):
    old = make_old(tmp_path, tiny.fingerprint(), fixed={**OLD_FIXED, "epochs": 4})
    with pytest.raises(Built):
        tune_main.main(argv(tmp_path / "new", old))
    out = capsys.readouterr().out
    finished = sum(t[5] is not None for t in OLD_TRIALS)
    missing = sum(t[5] == "missing" for t in OLD_TRIALS)
    assert f"inherited 0 of {finished} finished trials ({finished - missing} outside" in out, out
    assert "epochs 4 (here 2)" in out, out


def test_no_warm_start_trial_when_the_base_config_was_inherited(tmp_path, tiny, capsys, no_ray, monkeypatch):
    """The old study holds the very point the new warm start would run (the shipped config's values,
    clamped to smoke's ranges as the README says): it is inherited, not run again."""
    shipped = yaml.safe_load(open(SHIPPED))
    clamp = lambda v, lo, hi: min(max(v, lo), hi)  # noqa: E731
    point = {"mask_ratio": clamp(shipped["mask_ratio"], 0.1, 0.8),
             "one_minus_ema_momentum": clamp(1.0 - shipped["ema_momentum"], 1e-3, 1e-1),
             "top_k": clamp(shipped["top_k"], 1, 4), "temperature": clamp(shipped["temperature"], 0.05, 0.5),
             "cca_dim": min((4, 8), key=lambda c: abs(c - shipped["cca_dim"])), "lr": SMOKE_LR}
    monkeypatch.setattr(sys.modules[__name__], "OLD_TRIALS",
                        [("base", TrialState.COMPLETE, point, 0.4, {1: 0.3, 2: 0.4}, "in"), *OLD_TRIALS])
    old = make_old(tmp_path, tiny.fingerprint())
    with pytest.raises(Built):
        tune_main.main(argv(tmp_path / "new", old))
    assert "the warm-start point (the base config) is an inherited trial" in capsys.readouterr().out
    exp = tmp_path / "new" / "b"
    trials = load(str(exp / "optuna-study.journal"), "b").get_trials()
    assert all("hscmae_inherited_from" in t.user_attrs for t in trials)  # no waiting warm-start trial
    rec = json.loads((exp / "study.json").read_text())
    assert rec["warm_start"] is None and rec["inherited"]["numbers"] == [t.number for t in trials]
    assert rec["inherited"]["old_numbers"][0] == 0


def test_other_data_is_refused_before_ray(tmp_path, tiny, capsys):
    from hscmae.data import load_data

    other = load_data("synthetic:tiny", split_seed=1).fingerprint()
    assert other != tiny.fingerprint()
    old = make_old(tmp_path, other)
    msg = tune_main_error(capsys, argv(tmp_path / "new", old))
    assert msg.startswith(f"error: --from {old}: it was run on other data"), msg
    assert not (tmp_path / "new" / "b").exists()


def test_refusals_name_the_flag_and_the_file(tmp_path, tiny, capsys):
    old = make_old(tmp_path, tiny.fingerprint())
    msg = tune_main_error(capsys, argv(tmp_path / "new", old, "--resume"))
    assert "--from starts a new experiment" in msg and "--resume alone" in msg, msg
    msg = tune_main_error(capsys, argv(tmp_path, old)[:5] + ["old", *argv(tmp_path, old)[6:]])  # --name old, same folder
    assert "the new experiment's own folder" in msg, msg
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = tune_main_error(capsys, argv(tmp_path / "new", empty))
    assert f"not an experiment folder of tune_main.py ({empty / 'data.json'} is missing)" in msg, msg
    os.remove(os.path.join(old, "optuna-study.journal"))
    msg = tune_main_error(capsys, argv(tmp_path / "new", old))
    assert f"its study journal {os.path.join(old, 'optuna-study.journal')} is missing" in msg, msg
    os.remove(os.path.join(old, "study.json"))
    msg = tune_main_error(capsys, argv(tmp_path / "new", old))
    assert f"({os.path.join(old, 'study.json')} is missing" in msg, msg


def test_the_resume_command_of_a_branch_drops_from():
    from harness.interrupt import resume_command

    cmd = resume_command(["--space", "smoke", "--from", "results/a", "--name", "b"])
    assert cmd.endswith("--space smoke --name b --resume"), cmd
    assert resume_command(["--from=results/a"]).endswith(" --resume")


def test_the_report_lists_the_inherited_trials(tmp_path):
    from reporting.writing import inherited_lines

    (tmp_path / "study.json").write_text(json.dumps({"inherited": {"from": "/r/old", "numbers": [1, 2],
                                                                   "old_numbers": [0, 4]}}))
    line = inherited_lines(str(tmp_path))[0]
    assert line.startswith("2 trials inherited from `/r/old` (Optuna numbers 1, 2; 0, 4 there), not rerun"), line


@pytest.mark.slow
def test_a_tiny_branch_search_runs_only_new_trials_and_resumes(tmp_path, tiny):
    """The new experiment runs exactly --num-samples Tune trials; its study holds the inherited ones
    and the new; an extending --resume runs one more and inherits nothing again."""
    old = make_old(tmp_path, tiny.fingerprint())
    cmd = [sys.executable, os.path.join(ROOT, "tune_main.py"), *argv(tmp_path, old, "--num-samples", "2",
                                                                      "--no-warm-start")]
    env = {**SEARCH_ENV, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    want = [i for i, t in enumerate(OLD_TRIALS) if t[5] == "in"]
    exp = tmp_path / "b"

    def check(n_new):
        trials = load(str(exp / "optuna-study.journal"), "b").get_trials()
        inherited = [t.user_attrs.get("hscmae_inherited_number") for t in trials
                     if "hscmae_inherited_from" in t.user_attrs]
        new = [t for t in trials if "hscmae_inherited_from" not in t.user_attrs]
        assert inherited == want and len(new) == n_new, (inherited, [t.user_attrs for t in new])
        assert all(t.state.is_finished() and t.user_attrs.get("tune_trial_id") for t in new), new
        folders = sorted(p.name for p in exp.glob("run_trial_*"))
        assert sorted(t.user_attrs["tune_trial_folder"] for t in new) == folders

    check(2)
    assert "[hscmae] 2 trials" in r.stdout, r.stdout[-3000:]
    # --resume (without --from) extends it by one: the inherited trials are not added again, none is rerun
    resume = [a for a in cmd if a not in ("--from", old)] + ["--resume"]
    resume[resume.index("--num-samples") + 1] = "3"
    r = subprocess.run(resume, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    check(3)
    import report

    assert report.main([str(exp)]) == 0
    text = open(os.path.join(exp, "report", "summary.md")).read()
    assert f"{len(want)} trials inherited from `{old}`" in text, text[:2000]


def test_a_default_search_branches_into_wide_at_the_values_its_trials_trained_with():
    """`wide` searches lr, batch size, model sizes ... which `default` did not: a default trial is
    inherited with those at the values it trained with (the base config's), not skipped as missing;
    a parameter the old search did search but a trial lacks is still missing."""
    from harness.branch import INHERITED_NUMBER, select
    from hscmae.config import Config
    from search_spaces import get_space

    base = {**Config().to_dict(), **yaml.safe_load(open(SHIPPED))}
    dists = {"mask_ratio": Float(0.1, 0.8), "one_minus_ema_momentum": Float(1e-3, 1e-1, log=True),
             "top_k": Int(1, 16), "temperature": Float(0.03, 0.5, log=True), "cca_dim": Cat([8, 16, 32, 48])}
    point = {"mask_ratio": 0.5, "one_minus_ema_momentum": 0.02, "top_k": 4, "temperature": 0.2, "cca_dim": 16}
    trials = [optuna.trial.create_trial(state=TrialState.COMPLETE, params=p, distributions={k: dists[k] for k in p},
                                        value=0.5, intermediate_values={60: 0.5}) for p in
              (point, {k: v for k, v in point.items() if k != "top_k"})]
    for i, t in enumerate(trials):
        t.number = i
    wide = get_space("wide")
    got = select(trials, wide, base, {"name": "default", "fixed": {"epochs": 60}}, base, "OLD")
    assert (got["finished"], got["missing"], got["outside"]) == (2, 1, 0)
    (new,) = got["trials"]
    assert new.user_attrs[INHERITED_NUMBER] == 0
    # the searched values kept, every other parameter of `wide` at the shipped config's value
    want = {**point, **{k: base[k] for k in new.params if k not in point}}
    assert new.params == want and new.params["lr"] == base["lr"] and new.params["batch_size"] == base["batch_size"]
