"""The search's Optuna study, kept in an Optuna storage people can watch and share.

By default the study is a journal file inside the experiment folder (`optuna-study.journal`,
Optuna's JournalStorage with a file backend; study name = experiment name); `--optuna-storage`
takes any Optuna RDB URL (`sqlite:///study.db`, `postgresql://...`) or another journal file path.
Every Tune trial is one Optuna trial: its params, its val_map per epoch (step = epoch), its state
(COMPLETE: ran all epochs; PRUNED: stopped early by ASHA; FAIL: errored) and user attributes
`tune_trial_id` and `tune_trial_folder`.

Who wins on resume. Tune restores its searcher from a pickle (searcher-state-*.pkl) saved with its
experiment state every few seconds, while the storage is written at once, so after a SIGKILL the
storage can be ahead of the pickle. Stock OptunaSearch pickles its whole study, storage handle and
all; with a journal the unpickled storage re-reads the file, so the storage's trials win, but the
trials asked after the last save would stay RUNNING forever and a new ask would add more (one too
many). Here the pickle keeps no study and no trial mapping: on restore the study is loaded from
the storage and the Tune trial -> Optuna trial mapping is rebuilt from each Optuna trial's
`tune_trial_id` attribute, paired with the Tune trials of Tune's saved experiment state (the one
it restores: harness/tune_state.py); an Optuna trial whose Tune trial Tune lost is handed to the
next trial Tune creates (same params, so none twice). Tune retries errored trials on --resume,
and a finished Optuna trial cannot change state, so errored trials are told FAIL only when the
whole search has finished.

Where the experiment folder now is (it may have been moved) and how many trials the resumed
command wants come from the experiment's own study.json, which the resumed command rewrites
before `Tuner.restore` and Tune copies beside the searcher state it restores from.

Tune cannot grow a restored experiment (its sample count comes back from its saved state):
`SearchGenerator` here takes the count from the resumed command, so `--resume --num-samples 10`
after 6 runs 4 more trials in the same experiment, and the sampler sees all earlier ones.
"""
from __future__ import annotations

import json
import os

from harness import UsageError
from hscmae.config import Config
from hscmae.io import writable_folder_error

JOURNAL = "optuna-study.journal"  # inside the experiment folder
RECORD = "study.json"  # what this module records beside Tune's files, checked on --resume


def add_arguments(p) -> None:
    p.add_argument("--optuna-storage", default=None, metavar="URL",
                   help=f"Optuna storage of the study: an RDB URL (sqlite:///study.db, postgresql://...) "
                        f"or a journal file path (default: <experiment>/{JOURNAL})")
    p.add_argument("--no-warm-start", action="store_true",
                   help="do not make the base config's values of the searched parameters the first trial")
    p.add_argument("--mlflow", default=None, metavar="URI",
                   help="also log every trial as an MLflow run (a file: store or a tracking server)")


# ------------------------------------------------------------------------------------------------
# Storage
# ------------------------------------------------------------------------------------------------
def open_storage(where: str):
    """An Optuna storage: an RDB URL if it has a scheme, else a journal file path."""
    import optuna

    if "://" in where:
        return optuna.storages.RDBStorage(where)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(where))


def _storage_or_error(where: str, flag: str):
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's ExperimentalWarning about the journal backend
            return open_storage(where)
    except Exception as e:  # sqlalchemy, OSError ...: the message names what is wrong
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{flag} {where}: cannot be opened as an Optuna storage ({msg[:300]})") from None


def _study_summaries(storage) -> dict:
    return {s.study_name: s for s in storage.get_all_studies()}


def study_identity(space, name: str) -> dict:
    """The study's user attributes that tie it to one experiment and one search space."""
    params = space.describe()["params"]
    return {"hscmae_experiment": name, "hscmae_space": space.name,
            "hscmae_params": json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "corners"}
                                         for k, v in params.items()}, sort_keys=True)}


# ------------------------------------------------------------------------------------------------
# Before Ray starts: what the study, warm start and MLflow need; every refusal is a UsageError
# ------------------------------------------------------------------------------------------------
def plan(args, space, base: dict, name: str, exp: str, exists: bool, num_samples: int,
         max_concurrent: int, max_epochs: int, grace_period: int, reduction_factor: int, log=print,
         overrides: dict | None = None) -> dict:
    """What this run does with the study. Fresh run: where the study goes (refusing a storage that
    already holds a study of that name), the warm-start point, MLflow. Resume: the recorded plan,
    refusing flags it cannot honour; num_samples may grow (an extended search), never shrink."""
    local = "://" not in exp
    if exists:
        return _plan_resume(args, space, base, name, exp, max_concurrent, max_epochs,
                            {"grace_period": grace_period, "reduction_factor": reduction_factor},
                            overrides or {})
    if args.optuna_storage:  # a journal path is made absolute: a resume may run from another folder
        where, kind = args.optuna_storage if "://" in args.optuna_storage else os.path.abspath(args.optuna_storage), "url"
    elif local:
        where, kind = os.path.join(exp, JOURNAL), "journal"
    else:  # a journal needs a local file: the study stays in Tune's searcher state, as before
        where, kind = None, None
        log(f"[hscmae] --storage {exp.rsplit('/', 1)[0]} is not a local folder: the Optuna study is kept in "
            "Tune's searcher state only (pass --optuna-storage URL for a study the dashboard can open)")
    if where is not None:
        if kind == "journal":
            os.makedirs(exp, exist_ok=True)
        storage = _storage_or_error(where, "--optuna-storage" if kind == "url" else "the study journal")
        old = _study_summaries(storage).get(name)
        if old is not None:
            raise UsageError(f"Optuna storage {where} already holds a study {name!r} (experiment "
                             f"{old.user_attrs.get('hscmae_experiment', '?')}, space "
                             f"{old.user_attrs.get('hscmae_space', '?')}, "
                             f"{len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False))} "
                             f"trials) with no Tune "
                             f"experiment at {exp} to resume: refusing to extend it; use another --name "
                             "or delete that study")
    mlflow = check_mlflow(args.mlflow) if args.mlflow else None
    point = None
    if not args.no_warm_start:
        point = warm_start_point(space, base, log=log)
    return dict(study_name=name, storage=where if kind == "url" else None,
                journal=JOURNAL if kind == "journal" else None, persistent=where is not None,
                warm_start=point, mlflow=mlflow, num_samples=num_samples, max_concurrent=max_concurrent,
                seed=args.seed, max_epochs=max_epochs, grace_period=grace_period,
                reduction_factor=reduction_factor, identity=study_identity(space, name),
                set=_jsonable(overrides or {}))


def _jsonable(x):
    return json.loads(json.dumps(x))


def set_flags(overrides: dict) -> str:
    """--set's values as a command line would give them (for messages)."""
    return " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items())


def check_space(space, exp: str) -> None:
    """On resume, before anything else is compared: the experiment's space (space.json). Another
    space explains every other difference (fixed keys, epochs, data), so it is the one error."""
    from harness.storage import read_text

    rec_space = json.loads(read_text(exp, "space.json") or "{}")
    if rec_space.get("name") not in (None, space.name):
        raise UsageError(f"cannot resume {exp} as asked: --space {space.name}: the experiment searched space "
                         f"{rec_space['name']!r} (resume with --space {rec_space['name']}, or use another --name)")


def _plan_resume(args, space, base, name, exp, max_concurrent, max_epochs, asha: dict, overrides: dict) -> dict:
    from harness.storage import read_text

    check_space(space, exp)
    text = read_text(exp, RECORD)
    rec_space = json.loads(read_text(exp, "space.json") or "{}")
    recorded_n = rec_space.get("num_samples")
    if text is None:  # an experiment from before the stored study: resume as it was, nothing more
        if args.num_samples is not None and recorded_n is not None and args.num_samples != recorded_n:
            raise UsageError(f"--num-samples {args.num_samples}: {exp} predates the stored Optuna study "
                             f"({RECORD} is missing) and can only be resumed at its {recorded_n} trials")
        if overrides:
            raise UsageError(f"--set {set_flags(overrides)}: {exp} predates the stored Optuna study ({RECORD} is "
                             "missing) and can only be resumed as it was")
        return dict(legacy=True, num_samples=recorded_n)
    rec = json.loads(text)
    errors = []
    if rec_space.get("params") is not None and rec["identity"]["hscmae_params"] != study_identity(space, name)["hscmae_params"]:
        errors.append(f"space {space.name!r} now searches other parameters or ranges than the experiment did")
    if rec_space.get("fixed") is not None and json.loads(json.dumps(space.fixed)) != rec_space["fixed"]:
        errors.append(f"fixed keys {space.fixed} differ from the experiment's {rec_space['fixed']} "
                      "(--max-epochs, --data?)")
    if rec_space.get("max_epochs") not in (None, max_epochs):
        errors.append(f"--max-epochs {max_epochs}: the experiment ran {rec_space['max_epochs']} epochs")
    import yaml

    old_base = read_text(exp, "base_config.yaml")
    rec_set = rec.get("set") or {}
    if _jsonable(overrides) != rec_set:
        errors.append(f"--set {set_flags(overrides) or '(none)'}: the experiment's base config was set with "
                      f"{'--set ' + set_flags(rec_set) if rec_set else 'no --set'}")
    # keys the old file predates take their defaults (the behaviour it ran with), as a checkpoint's do
    elif old_base is not None and {**Config().to_dict(), **yaml.safe_load(old_base)} != _jsonable(base):
        errors.append(f"--config {args.config} differs from the experiment's base_config.yaml")
    if args.seed != rec["seed"]:
        errors.append(f"--seed {args.seed}: the experiment's sampler was seeded with {rec['seed']}")
    if args.max_concurrent is not None and max_concurrent != rec["max_concurrent"]:
        errors.append(f"--max-concurrent {max_concurrent}: the experiment runs {rec['max_concurrent']} at once")
    for flag, v in asha.items():  # the effective values (the grace period is capped at max_epochs)
        if getattr(args, flag) is not None and v != rec.get(flag):
            errors.append(f"--{flag.replace('_', '-')} {getattr(args, flag)}: the experiment's ASHA used "
                          f"{flag.replace('_', ' ')} {rec.get(flag)}")
    given = args.optuna_storage and (args.optuna_storage if "://" in args.optuna_storage
                                     else os.path.abspath(args.optuna_storage))
    if given and given != rec["storage"]:
        errors.append(f"--optuna-storage {args.optuna_storage}: the experiment's study is in "
                      f"{rec['storage'] or rec['journal'] or 'Tune searcher state'}")
    if args.mlflow and args.mlflow != rec.get("mlflow"):
        errors.append(f"--mlflow {args.mlflow}: the experiment logs to {rec.get('mlflow') or 'no MLflow'}")
    if args.no_warm_start and rec.get("warm_start"):
        errors.append("--no-warm-start: the experiment's first trial was already the warm start")
    n = args.num_samples if args.num_samples is not None else rec["num_samples"]
    if n < rec["num_samples"]:
        errors.append(f"--num-samples {n}: the experiment already has {rec['num_samples']} trials "
                      "(a search can be extended, not shrunk)")
    if errors:
        raise UsageError(f"cannot resume {exp} as asked: " + "; ".join(errors))
    if rec.get("mlflow"):  # Tune restores its MLflow callback: the store must still be usable
        check_mlflow(rec["mlflow"])
    if rec["persistent"]:
        where = study_location(rec, exp)
        if rec["journal"] and not os.path.exists(where):
            raise UsageError(f"{where}: the experiment's Optuna study journal is missing")
        studies = _study_summaries(_storage_or_error(where, "the experiment's Optuna storage"))
        st = studies.get(rec["study_name"])
        if st is None:
            raise UsageError(f"Optuna storage {where} holds no study {rec['study_name']!r} (the experiment's)")
        if {k: st.user_attrs.get(k) for k in rec["identity"]} != rec["identity"]:
            raise UsageError(f"Optuna storage {where}: study {rec['study_name']!r} belongs to another experiment "
                             f"or space ({st.user_attrs.get('hscmae_experiment')}, "
                             f"{st.user_attrs.get('hscmae_space')}): refusing to extend it")
    return {**rec, "num_samples": n, "extend_from": rec["num_samples"] if n > rec["num_samples"] else None}


def check_mlflow(uri: str) -> str:
    """An MLflow tracking URI we can log to, checked by opening its store: a local `file:` store
    (or a bare path) must be writable; a `sqlite:` one is opened; a tracking server is not
    contacted here (only by the search itself)."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise UsageError("--mlflow needs the mlflow package: pip install -e '.[mlflow]'")
    scheme = uri.split(":", 1)[0] if ("://" in uri or uri.startswith("file:")) else "file"
    if scheme == "file":
        path = os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else
                               uri[len("file:"):] if uri.startswith("file:") else uri)
        why = writable_folder_error(path)
        if why:
            raise UsageError(f"--mlflow {uri}: {path} is not writable ({why})")
        uri = "file://" + path
        # MLflow 3 refuses its file store unless told otherwise; a file: URI given here is that request
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if scheme in ("file", "sqlite"):
        try:
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"--mlflow {uri}: cannot be opened as an MLflow tracking store ({msg[:300]})") from None
    return uri


# ------------------------------------------------------------------------------------------------
# Warm start: the base config as the first trial
# ------------------------------------------------------------------------------------------------
def nearest_allowed(spec: dict, value):
    """The value of a parameter's range or choices closest to `value`."""
    if spec["type"] == "categorical":
        choices = spec["choices"]
        if value in choices and type(value) is type(choices[choices.index(value)]):
            return value
        numeric = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and numeric:
            return min(numeric, key=lambda c: abs(c - value))  # first of equals: the list's order
        return choices[0]
    low, high = spec["low"], spec["high"]
    v = min(max(value, low), high)
    return int(round(v)) if spec["type"] == "int" else float(v)


def warm_start_point(space, base: dict, log=print) -> dict:
    """The base config's values of the space's searched parameters (base, then the space's fixed
    keys, as every trial sees them); a derived helper `one_minus_X` is 1 - X. A value the space
    cannot take becomes the nearest one it can, with one log line."""
    from hscmae.config import ConfigError
    from search_spaces.space import _Fixed

    cfg = {**base, **space.fixed}
    point = {}
    for name, spec in space.describe()["params"].items():
        if name in cfg:
            value = cfg[name]
        elif name.startswith("one_minus_") and name[len("one_minus_"):] in cfg:
            value = 1.0 - cfg[name[len("one_minus_"):]]
        else:
            log(f"[hscmae] warm start: the base config has no value for {name}; the sampler draws it")
            continue
        allowed = nearest_allowed(spec, value)
        if allowed != value:
            log(f"[hscmae] warm start: base {name} {value!r} is outside the space; the first trial uses the "
                f"nearest value it allows, {allowed!r}")
        point[name] = allowed
    try:  # a point with every parameter is checked like the space's corners; a partial one cannot be
        if point.keys() == space.describe()["params"].keys():
            derived = space.sample(_Fixed(point)) or {}
            space.to_config(base, {**point, **derived})
    except (KeyError, ConfigError) as e:
        raise ConfigError(f"warm start: the base config's point {point} is not a valid trial of space "
                          f"'{space.name}' ({e}); pass --no-warm-start") from None
    return point


# ------------------------------------------------------------------------------------------------
# Tune objects
# ------------------------------------------------------------------------------------------------
def record(exp: str, p: dict) -> None:
    """study.json (and, for an extended search, space.json's num_samples) in the experiment folder."""
    from harness.storage import read_text, write_metadata

    files = {RECORD: json.dumps({**{k: v for k, v in p.items() if k not in ("extend_from", "legacy")},
                                 "experiment": exp}, indent=2) + "\n"}
    space = read_text(exp, "space.json")
    if p.get("extend_from") and space:
        files["space.json"] = json.dumps({**json.loads(space), "num_samples": p["num_samples"]}, indent=2) + "\n"
    write_metadata(exp, files)


def study_location(rec: dict, exp: str) -> str | None:
    """Where study.json's record `rec` keeps the study: its storage URL, else its journal inside the
    experiment folder `exp`; None when it keeps neither (the study lived in Tune's searcher state)."""
    return rec.get("storage") or (rec.get("journal") and os.path.join(exp, rec["journal"])) or None


def dashboard_command(p: dict, exp: str) -> str | None:
    if p.get("legacy") or not p.get("persistent"):
        return None
    return f"optuna-dashboard {study_location(p, exp)}"


def record_confirmed(exp: str, table) -> str | None:
    """After `--confirm`: each confirmed config's mean val_map as user attributes of the stored
    study, so the dashboard shows the trusted numbers beside the single-seed ones. Optuna refuses
    to change a finished trial, so they are *study* attributes: `confirmed <Optuna number>` (or
    `confirmed base config`) -> "val_map mean +- std over S seeds; test ...; confirmed rank r", and
    `hscmae_confirmed` with the whole table as JSON. Returns the storage written, or None where
    the experiment keeps no stored study (legacy, or a remote folder without --optuna-storage)."""
    import math
    import warnings

    import optuna

    from harness.storage import read_text

    text = read_text(exp, RECORD)
    if not text:
        return None
    rec = json.loads(text)
    if not rec.get("persistent"):
        return None
    where = study_location(rec, exp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = optuna.load_study(study_name=rec["study_name"], storage=open_storage(where))
    number = {str(t.user_attrs.get("tune_trial_id")): t.number for t in st.get_trials(deepcopy=False)}

    def num(x):
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

    rows = []
    for _, r in table.iterrows():
        tid = r["trial_id"] if isinstance(r["trial_id"], str) else None
        n = number.get(tid) if tid else None
        row = {"config": r["config"], "optuna_number": n, "tune_trial_id": tid, "n_seeds": int(r["n_ok"]),
               "val_map_mean": num(r["val_map_mean"]), "val_map_std": num(r["val_map_std"]),
               "test_map_mean": num(r["test_map_mean"]), "test_map_std": num(r["test_map_std"]),
               "confirmed_rank": int(r["confirmed_rank"])}
        rows.append(row)
        if row["val_map_mean"] is not None:
            st.set_user_attr(f"confirmed {n if n is not None else r['config']}",
                             f"val_map {row['val_map_mean']:.4f} +- {row['val_map_std'] or 0:.4f} over "
                             f"{row['n_seeds']} seeds; test_map {row['test_map_mean']:.4f}; confirmed rank "
                             f"{row['confirmed_rank']}")
    st.set_user_attr("hscmae_confirmed", rows)
    return where

