"""`tune_main.py --from OLD`: a new experiment whose Optuna study starts with OLD's finished trials.

The new experiment is an ordinary one (its own --name, folder, study and --num-samples new Tune
trials); before its first ask, its study gets OLD's finished trials that fit its space as trials
of its own (`optuna.trial.create_trial` + `study.add_trials`), with the new space's distributions
and user attributes `hscmae_inherited_from` (OLD's folder) and `hscmae_inherited_number` (their
number in OLD's study). They have no Tune trial and run nothing: the TPE sampler sees them like
any finished trial, the searcher never hands one to a Tune trial (harness/study_search.py skips
them when it rebuilds its mapping) and --num-samples counts new trials only. study.json records
the inheritance (`inherited`), so a --resume of the branched experiment adds nothing again, and
report.py lists them.

Everything here runs before Ray starts: an unusable OLD is one `error: --from OLD: ...` line.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter

from harness import UsageError

INHERITED_FROM, INHERITED_NUMBER = "hscmae_inherited_from", "hscmae_inherited_number"


def add_arguments(p) -> None:
    # dest "from" (the flag's name, as for every flag; read with getattr: args.from is a keyword)
    p.add_argument("--from", dest="from", default=None, metavar="OLD_EXPERIMENT",
                   help="start a new experiment (its own --name) whose Optuna study is seeded with the finished "
                        "trials of this experiment folder that fit the new space (same data required); they "
                        "are not rerun and --num-samples counts new trials only")


def without_from(argv: list[str]) -> list[str]:
    """argv without --from OLD: the command that resumes a branched experiment (--from with
    --resume is refused; the inheritance is already in its study)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--from":
            skip = True
        elif not a.startswith("--from="):
            out.append(a)
    return out


# ------------------------------------------------------------------------------------------------
# Before Ray: which trials the new study gets
# ------------------------------------------------------------------------------------------------
def prepare(args, run: dict, exists: bool, log=print) -> dict | None:
    """The trials to inherit, or None (no --from, or the resume of an experiment branched from
    the same OLD). Raises UsageError for every refusal."""
    flag = old = getattr(args, "from", None)
    if not old:
        return None
    from harness.storage import read_text

    exp = run["exp"]
    old = old if "://" in old else os.path.abspath(old)
    if _same(old, exp):
        raise UsageError(f"--from {flag}: that is the new experiment's own folder ({exp}); --from "
                         "starts another experiment: give it another --name")
    if args.resume:
        raise UsageError(f"--from {flag}: --from starts a new experiment; resume a branched one "
                         "with --resume alone (its study already holds the inherited trials)")
    if exists:  # tune_main.py resumes an existing experiment: fine if it is this very branch
        rec = json.loads(read_text(exp, "study.json") or "{}")
        if (rec.get("inherited") or {}).get("from") == old:
            return None
        raise UsageError(f"--from {flag}: {exp} already exists and was not branched from it; "
                         "--from starts a new experiment: give it another --name")
    files = {}
    for name in ("data.json", "space.json", "base_config.yaml"):
        files[name] = read_text(old, name) if "://" in old or os.path.isdir(old) else None
        if files[name] is None:
            raise UsageError(f"--from {flag}: not an experiment folder of tune_main.py "
                             f"({_join(old, name)} is missing)")
    try:
        fp = json.loads(files["data.json"]).get("fingerprint")
    except (ValueError, AttributeError):
        raise UsageError(f"--from {flag}: {_join(old, 'data.json')} is not valid JSON") from None
    if fp != run["data"].fingerprint():
        raise UsageError(f"--from {flag}: it was run on other data (its data.json fingerprint "
                         f"{str(fp)[:12]}..., this run's {run['data'].fingerprint()[:12]}...); a branch needs "
                         "the same data (--data, --set of a data challenge, the split)")
    old_study, where = _load_study(flag, old, read_text(old, "study.json"))
    import yaml

    try:
        old_space, old_base = json.loads(files["space.json"]), yaml.safe_load(files["base_config.yaml"])
    except (ValueError, yaml.YAMLError) as e:
        raise UsageError(f"--from {flag}: its space.json or base_config.yaml cannot be read "
                         f"({' '.join(str(e).split())[:200]})") from None
    from hscmae.config import Config

    if not isinstance(old_space, dict):
        raise UsageError(f"--from {flag}: {_join(old, 'space.json')} is not a JSON object")
    # keys a newer base config lacks take their defaults (trial_config); a key this version lacks cannot
    unknown = sorted(set(old_base) - set(Config.__dataclass_fields__)) if isinstance(old_base, dict) else None
    if unknown is None or unknown:
        raise UsageError(f"--from {flag}: {_join(old, 'base_config.yaml')} is not a base config of this version ("
                         + (f"unknown keys {unknown}" if unknown else "not a mapping") + ")")
    picked = select(old_study.get_trials(deepcopy=False), run["space"], run["base"], old_space, old_base,
                    where=old)
    log(f"[hscmae] --from {flag}: inherited {len(picked['trials'])} of {picked['finished']} finished "
        f"trials ({picked['outside']} outside the new space, {picked['missing']} missing a parameter)", flush=True)
    if picked["differ"]:
        log(f"[hscmae] --from {flag}: outside includes trials run with a setting this experiment "
            "fixes otherwise: " + "; ".join(f"{k} {o!r} (here {n!r}): {c} trial(s)" for (k, o, n), c
                                            in picked["differ"].most_common(4)), flush=True)
    return {"from": old, "study": where, "study_name": old_study.study_name, **picked}


def _same(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if "://" in folder else os.path.join(folder, name)


def _load_study(flag: str, old: str, text: str | None):
    """OLD's stored study (study.json says where it is), or a UsageError naming the file."""
    import warnings

    import optuna

    from harness.study import JOURNAL, open_storage

    if text is None:
        raise UsageError(f"--from {flag}: it has no stored Optuna study ({_join(old, 'study.json')} is missing: "
                         "the experiment predates it)")
    try:
        rec = json.loads(text)
        where = rec["storage"] or (rec["journal"] and _join(old, rec["journal"]))
        name = rec["study_name"]
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"--from {flag}: {_join(old, 'study.json')} is not a study record of tune_main.py") from None
    if not where:
        raise UsageError(f"--from {flag}: its study was kept in Tune's searcher state only (no Optuna storage in "
                         f"{_join(old, 'study.json')}); there is no {JOURNAL} to read")
    if "://" not in where and not os.path.isfile(where):
        raise UsageError(f"--from {flag}: its study journal {where} is missing")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's ExperimentalWarning about the journal backend
            return optuna.load_study(study_name=name, storage=open_storage(where)), where
    except Exception as e:  # no such study, a corrupt journal, an unreachable database
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--from {flag}: cannot read study {name!r} from {where} ({msg[:300]})") from None


class _Missing(Exception):
    pass


class _Probe:
    """A stand-in Optuna trial for the new space's define-by-run function: it answers each
    suggestion with the old trial's value and keeps the new space's distribution of it. A
    conditional space asks what it would ask at those values; a parameter the old trial lacks is
    _Missing; a value outside the distribution is noted (`outside`)."""

    def __init__(self, params: dict, config: dict | None = None, searched=()):
        self.params, self.config, self.dists, self.outside = params, config or {}, {}, []
        self.searched = set(searched)

    def _value(self, name, dist, ok):
        if name not in self.params and name not in self.searched:
            # not searched by OLD: the value its trial trained with (its fixed or base value)
            base = name[len("one_minus_"):] if name.startswith("one_minus_") else None
            if name in self.config:
                self.params[name] = self.config[name]
            elif base is not None and _number(self.config.get(base)):
                self.params[name] = 1.0 - self.config[base]
        if name not in self.params:  # OLD searched it and this trial has none (or nothing gives it)
            raise _Missing(name)
        v = self.params[name]
        self.dists[name] = dist
        if not ok(v):
            self.outside.append(name)
        return v

    def suggest_float(self, name, low, high, *, log=False, step=None):
        from optuna.distributions import FloatDistribution

        def ok(v):
            return (_number(v) and low <= v <= high
                    and (step is None or math.isclose((v - low) / step, round((v - low) / step), abs_tol=1e-8)))
        return self._value(name, FloatDistribution(low, high, log=log, step=step), ok)

    def suggest_int(self, name, low, high, *, log=False, step=1):
        from optuna.distributions import IntDistribution

        def ok(v):
            return _number(v) and float(v).is_integer() and low <= v <= high and (int(v) - low) % step == 0
        v = self._value(name, IntDistribution(low, high, log=log, step=step), ok)
        return int(v) if name not in self.outside else v

    def suggest_categorical(self, name, choices):
        from optuna.distributions import CategoricalDistribution

        # True == 1 in Python: a choice must match in type too
        return self._value(name, CategoricalDistribution(list(choices)),
                           lambda v: any(v == c and type(v) is type(c) for c in choices))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _derived(space_name: str | None, params: dict) -> dict:
    """The constants OLD's space derived from a trial's params (its sample's return value), with
    the spaces' `one_minus_X` -> X = 1 - value rule where that space is gone or has changed."""
    from search_spaces import SPACES
    from search_spaces.space import _Fixed

    try:
        return SPACES[space_name].sample(_Fixed(params)) or {}
    except Exception:  # noqa: BLE001  (another definition of the space: the rule all spaces follow)
        return {k[len("one_minus_"):]: 1.0 - v for k, v in params.items()
                if k.startswith("one_minus_") and _number(v)}


def _equal(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return _number(a) and _number(b) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b and type(a) is type(b)


def select(trials, space, base: dict, old_space: dict, old_base: dict, where: str) -> dict:
    """The old trials that fit `space` (with `base`: this run's base config, `space.fixed` its
    fixed keys), as trials of the new study. The rule, per old trial:

    - considered (`finished`): COMPLETE, and PRUNED with at least one intermediate value. ASHA's
      stopped trials are PRUNED; they are kept because TPE ranks a pruned trial by its last
      intermediate value below the completed ones, i.e. they tell it which regions ASHA judged
      poor: leaving them out would show TPE only the survivors, as if the stopped regions had
      never been tried. A PRUNED trial without a value measured nothing.
    - `missing`: the new space asks a parameter (at the old trial's own values, so a conditional
      space asks what it would ask there) that OLD searched and the old trial has no value of
      (or that nothing in its full config gives). A parameter OLD did not search takes the value its trial trained
      with (its base config's or fixed value; `one_minus_X` from X), so a `default` search's
      trials branch into `wide` at the base config's lr, batch size, model sizes ...
    - `outside`: a value the new space searches is outside its range or choices; or the old
      trial's full config (its base config, fixed keys, params and derived constants) differs
      from the new trial's on any key the new space does not search: a parameter the old
      experiment searched and the new one does not is inherited only where its old value is the
      new experiment's fixed/base value, and likewise a key the old experiment fixed (epochs ...).
      The data key and the runtime keys (device, threads ...) are not compared: the data
      fingerprint has already been checked, and runtime keys do not change what a trial computes.
    - else inherited, with the new space's distributions (so TPE sees them like its own trials)."""
    import optuna
    from optuna.trial import TrialState

    from hscmae.config import RUNTIME_KEYS, ConfigError
    from search_spaces.space import trial_config

    skip_keys = {"data", *RUNTIME_KEYS}
    old_fixed = old_space.get("fixed") or {}
    out = {"trials": [], "old_numbers": [], "finished": 0, "outside": 0, "missing": 0, "differ": Counter()}
    searched = set().union(*(t.params for t in trials))  # what OLD's sampler searched (any trial's params)
    for t in sorted(trials, key=lambda t: t.number):
        if not (t.state == TrialState.COMPLETE and t.value is not None
                or t.state == TrialState.PRUNED and t.intermediate_values):
            continue
        out["finished"] += 1
        try:
            old_cfg = trial_config(old_base, old_fixed, {**t.params, **_derived(old_space.get("name"), t.params)})
            old_cfg = old_cfg.to_dict()
        except ConfigError:
            out["outside"] += 1
            continue
        probe = _Probe(dict(t.params), old_cfg, searched)
        try:
            derived = space.sample(probe) or {}
        except _Missing:
            out["missing"] += 1
            continue
        if probe.outside:
            out["outside"] += 1
            continue
        cast = {optuna.distributions.IntDistribution: int, optuna.distributions.FloatDistribution: float}
        new_params = {k: cast.get(type(d), lambda v: v)(probe.params[k]) for k, d in probe.dists.items()}
        try:
            new_cfg = space.to_config(base, {**new_params, **derived}).to_dict()
        except ConfigError:
            out["outside"] += 1
            continue
        # the searched keys and the constants derived from them were checked above
        differ = [k for k in new_cfg if k not in skip_keys and k not in new_params and k not in derived
                  and not _equal(old_cfg[k], new_cfg[k])]
        if differ:
            out["outside"] += 1
            out["differ"].update((k, old_cfg[k], new_cfg[k]) for k in differ)
            continue
        out["old_numbers"].append(t.number)
        out["trials"].append(optuna.trial.create_trial(
            state=t.state, value=t.value, params=new_params, distributions=probe.dists,
            intermediate_values=dict(t.intermediate_values),
            user_attrs={INHERITED_FROM: where, INHERITED_NUMBER: t.number}))
    return out


def merge(plan: dict, inherit: dict | None, log=print) -> None:
    """The study plan of a branched experiment: what study.json records (`inherited`: from where,
    OLD's numbers and this study's), and no warm-start trial when an inherited trial is that very
    point (the base config measured already)."""
    if not inherit:
        return
    point = plan.get("warm_start")
    if point and any(t.params.keys() == point.keys() and all(_equal(t.params[k], point[k]) for k in point)
                     for t in inherit["trials"]):
        log("[hscmae] --from: the warm-start point (the base config) is an inherited trial: not run again",
            flush=True)
        plan["warm_start"] = point = None
    first = 1 if point else 0  # OptunaSearch enqueues the warm start (trial 0) before the seeding
    plan["inherited"] = {"from": inherit["from"], "study": inherit["study"], "study_name": inherit["study_name"],
                         "old_numbers": inherit["old_numbers"],
                         "numbers": list(range(first, first + len(inherit["trials"]))),
                         "finished": inherit["finished"], "outside": inherit["outside"],
                         "missing": inherit["missing"]}


# ------------------------------------------------------------------------------------------------
# Once the searcher's study exists (harness/study_search.py), before its first ask
# ------------------------------------------------------------------------------------------------
def seed(study, inherit: dict | None, plan: dict) -> None:
    """Add the inherited trials to the new study, once: a study that already holds trials marked
    inherited (a searcher rebuilt on the same storage) gets none again."""
    if not inherit or not inherit["trials"]:
        return
    if any(INHERITED_FROM in t.user_attrs for t in study.get_trials(deepcopy=False)):
        return
    study.add_trials(inherit["trials"])
    got = [t.number for t in study.get_trials(deepcopy=False) if INHERITED_FROM in t.user_attrs]
    want = (plan.get("inherited") or {}).get("numbers")
    if want is not None and got != want:  # study.json says which trials were inherited: it must be right
        raise RuntimeError(f"inherited trials got Optuna numbers {got}, study.json recorded {want}")
