"""Ending a search early: on a plateau (`--stop-after N [--min-delta D]`) or at a wall-clock budget
(`--time-budget 2h`), as one Ray Tune Stopper that is also a Tune Callback.

Plateau. The finished trials are those that ended, full-length or stopped by ASHA (errored ones
are not), in the order they ended; v_1..v_k their val_map (the last one each reported, as the
searcher takes it) and best_i = max(v_1..v_i). The search stops once k > N and
best_k - best_(k-N) <= D: the best val_map did not improve by more than D over the last N
finished trials. Trials still running then are stopped with it (Tune's stopper semantics:
TERMINATED, told to the searcher as pruned), so a resume does not continue them.

Why a Callback counts the finished trials, not the Stopper's `__call__`: Tune calls the stopper
with each result *before* the scheduler decides on it (TuneController._process_trial_result), so a
stopper cannot know that ASHA stops a trial on that result, and such a trial sends no later result
marked done. `Callback.on_trial_complete` runs for every trial that ends (full-length, ASHA-stopped,
or stopped by us), in the same controller step and before that step's `stop_all()`, so the stop
comes right after the N-th trial without improvement.

Time budget. The wall-clock time of the experiment's whole life: every run's time from this
object's construction (before Ray starts) adds to `time_used_s` in STATE, saved every few seconds,
when a trial ends and when the run ends. At the budget the search ends as a Ctrl-C ends it (Tune's
own stop event: its loop ends and it saves its state with the running trials still RUNNING), not
through `stop_all()` (which would make them TERMINATED for good): `--resume --time-budget <larger>`
continues them from their last checkpoint.

What Ray 2.60 offers and why it is not used: ExperimentPlateauStopper looks at the std of the top
results of every report (any epoch of any trial), not at finished trials; TimeoutStopper's budget
lives in the pickled stopper, which Tune restores from tuner.pkl as it was when the experiment
began (a resume would get the whole budget again), and it stops the running trials for good.

Resume. Tune pickles its stopper into tuner.pkl and into every experiment state (TuneController's
runner_data keeps `_stopper`), and `Tuner.restore` / the controller's resume unpickle those over the
stopper they are given. So a pickled SearchStopper unpickles as this process's live one (`_LIVE`,
set by `make`; `__reduce__`), and `replace_on_restore` puts it into a tuner.pkl that had none. Its
settings are this run's (the flags recorded in study.json unless given again), its state rebuilt
from STATE and Tune's saved trial states (the truth: a trial Tune lost after a SIGKILL is run again
and counted when it ends). Every search gets a stopper, active or not, so that a later
`--resume --stop-after` / `--time-budget` finds one in Tune's state and the time of every run counted.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time

from harness import METRIC, UsageError

STATE = "stopping.state"  # not *.json: Tune copies the folder's .json files to its staging folder on
#                           restore and uploads them again every few seconds (a stale copy would win)
MARKER = "stopped.json"  # why the search stopped; removed when a resumed search goes on
SAVE_EVERY_S = 5.0
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


# ------------------------------------------------------------------------------------------------
# Command line (before Ray)
# ------------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--stop-after", default=None, metavar="N",
                   help="end the search when the best val_map of the finished trials has not improved by more "
                        "than --min-delta over the last N finished trials (0: no plateau stop, e.g. on --resume)")
    p.add_argument("--min-delta", default=None, metavar="D", help="--stop-after: the improvement that counts (default 0)")
    p.add_argument("--time-budget", default=None, metavar="T",
                   help="end the search after T of wall-clock time over all its runs (90s, 30m, 2h, 1.5h); a "
                        "resume with a larger T continues the trials running then")


def parse_duration(text: str) -> float:
    """'90s', '30m', '2h', '1.5h' -> seconds (> 0); ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh])\s*", str(text))
    if not m or float(m.group(1)) * _UNITS[m.group(2)] <= 0:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def check_args(args) -> None:
    """Converts the three flags in place (stop_after int, min_delta float, time_budget_s float);
    UsageError naming the flag on a bad value."""
    if args.stop_after is not None:
        try:
            args.stop_after = int(args.stop_after)
            assert args.stop_after >= 0
        except (ValueError, AssertionError):
            raise UsageError(f"--stop-after {args.stop_after}: expected a whole number of finished trials >= 1 "
                             "(0: no plateau stop)") from None
    if args.min_delta is not None:
        try:
            args.min_delta = float(args.min_delta)
            assert math.isfinite(args.min_delta) and args.min_delta >= 0
        except (ValueError, AssertionError):
            raise UsageError(f"--min-delta {args.min_delta}: expected a val_map difference >= 0, e.g. 0.001") from None
    args.time_budget_s = None
    if args.time_budget is not None:
        try:
            args.time_budget_s = parse_duration(args.time_budget)
        except ValueError:
            raise UsageError(f"--time-budget {args.time_budget}: expected a duration > 0 as a number and a unit "
                             "s, m or h (90s, 30m, 2h, 1.5h)") from None


def settings(args, plan: dict) -> dict:
    """The stop settings this run uses: the flags given, else the ones the experiment recorded in
    its plan (study.json) on resume. Keys stop_after, min_delta, time_budget_s, time_budget."""
    rec = {k: plan.get(k) for k in ("stop_after", "min_delta", "time_budget_s", "time_budget")}
    out = dict(rec)
    if args.stop_after is not None:
        out["stop_after"] = args.stop_after or None  # 0: off
    if args.min_delta is not None:
        out["min_delta"] = args.min_delta
    if args.time_budget is not None:
        out["time_budget_s"], out["time_budget"] = args.time_budget_s, args.time_budget
    if args.min_delta is not None and not out["stop_after"]:
        raise UsageError(f"--min-delta {args.min_delta}: needs --stop-after N (the plateau it measures)")
    if (args.stop_after or args.time_budget) and plan.get("legacy"):
        raise UsageError("--stop-after / --time-budget: the experiment predates study.json and can only be resumed "
                         "as it was")
    out["min_delta"] = out["min_delta"] or 0.0
    return out


# ------------------------------------------------------------------------------------------------
# The rule (pure: tests feed it by hand)
# ------------------------------------------------------------------------------------------------
def _num(v) -> float:
    """A trial's val_map; a missing or NaN one (a diverged trial) can improve nothing."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return -math.inf
    return -math.inf if math.isnan(v) else v


def plateaued(values: list[float], n: int, min_delta: float = 0.0) -> bool:
    """values: the finished trials' val_map in the order they finished. True when there are more
    than n and the best of all of them exceeds the best of all but the last n by at most min_delta."""
    if not n or len(values) <= n:
        return False
    vals = [_num(v) for v in values]
    # the tolerance: 0.52 - 0.50 is 0.020000000000000018 in floats, which is not more than 0.02
    return max(vals) - max(vals[:-n]) <= min_delta + 1e-12


def smallest_continuing(values: list[float], min_delta: float) -> int:
    """The smallest --stop-after with which these finished trials are no plateau (the search goes on)."""
    n = 1
    while plateaued(values, n, min_delta):
        n += 1
    return n


def fmt_duration(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def plateau_line(n: int, d: float) -> str:
    return f"[hscmae] stopped: no improvement of the best val_map by more than {d:g} in the last {n} finished trials"


def time_line(text: str) -> str:
    return f"[hscmae] stopped: time budget {text} used"


# ------------------------------------------------------------------------------------------------
# State in the experiment folder
# ------------------------------------------------------------------------------------------------
def _read_json(exp: str, name: str) -> dict:
    from harness.storage import read_text

    try:
        obj = json.loads(read_text(exp, name) or "{}")
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def load_state(exp: str) -> dict:
    """{time_used_s, finished: [[trial_id, val_map], ...] in finish order, cut: [trial ids]}: STATE,
    reconciled with Tune's newest saved trial states: a recorded finished trial Tune does not have as
    TERMINATED goes (Tune runs it again), and a TERMINATED one STATE lacks (a search before this
    module, or ended after STATE's last save) is added, in Tune's order, with its last val_map."""
    from harness.tune_state import read_trials

    st = _read_json(exp, STATE)
    finished = [(str(t), v) for t, v in st.get("finished") or []]
    cut = [str(t) for t in st.get("cut") or []]
    trials = read_trials(exp)
    if trials is not None:
        done = {t["trial_id"]: t.get("val_map") for t in trials if t["status"] == "TERMINATED"}
        finished = [(t, v) for t, v in finished if t in done]
        seen = {t for t, _ in finished} | set(cut)
        finished += [(t, v) for t, v in done.items() if t not in seen]
    return {"time_used_s": float(st.get("time_used_s") or 0.0), "finished": finished,
            "cut": [t for t in cut if trials is None or t in {x["trial_id"] for x in trials}]}


def clear_marker(exp: str) -> None:
    """A resumed search that goes on is no longer the stopped one (before fit: Tune would copy the
    file to its staging folder and upload it again)."""
    from harness.storage import remove_file

    remove_file(exp, MARKER)


def read_marker(exp: str) -> dict | None:
    """stopped.json, for report.py; None if the search was not stopped early."""
    m = _read_json(exp, MARKER)
    return m or None


class _DropTuneStopLines(logging.Filter):
    """Tune's lines about its stop event ("Stop signal received (e.g. via SIGINT/Ctrl+C)", the
    Tuner.restore hint) once the time budget used it: our line says what happened and how to resume."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Stop signal received", "Experiment has been interrupted",
                                               "Trials did not complete", "Failed to fetch metrics"))


# ------------------------------------------------------------------------------------------------
# The stopper
# ------------------------------------------------------------------------------------------------
class _SearchStopper:
    """Pass it as RunConfig(stop=...) and among its callbacks (build_tuner; replace_on_restore on
    resume). `reason` / `line` say whether and why it stopped the search in this run. The class
    `SearchStopper` is this one with Tune's Stopper and Callback bases, made at first use (module
    __getattr__, so pickle finds it by name too): tune_main imports this module for its flags
    before Ray is imported."""

    def __init__(self, exp: str, *, stop_after: int | None = None, min_delta: float = 0.0,
                 time_budget_s: float | None = None, time_budget: str | None = None, fresh: bool = False, **_):
        self.exp, self.stop_after, self.min_delta = exp, stop_after or None, float(min_delta or 0.0)
        self.time_budget_s, self.time_budget = time_budget_s, time_budget
        # a new experiment starts from nothing (a folder left by a run that died before Tune saved is no
        # history); exp None: an inert stopper (a pickled one restored where no search made one)
        st = {"time_used_s": 0.0, "finished": [], "cut": []} if fresh or exp is None else load_state(exp)
        self.used0, self.finished, self.cut = st["time_used_s"], st["finished"], st["cut"]
        self.start = time.time()
        self.reason: str | None = None
        self.line: str | None = None
        self._saved_at = 0.0

    def __reduce__(self):
        return (_restored, ())

    # -- what the state says --
    def time_used(self) -> float:
        return self.used0 + (time.time() - self.start)

    def values(self) -> list[float]:
        return [v for _, v in self.finished]

    def already_stopped(self, resume_hint: str = "--resume") -> str | None:
        """Before Ray, on resume: the lines to print if this run would stop at once, else None."""
        if self.stop_after and plateaued(self.values(), self.stop_after, self.min_delta):
            more = smallest_continuing(self.values(), self.min_delta)
            return (f"[hscmae] already stopped: no improvement of the best val_map by more than {self.min_delta:g} "
                    f"in the last {self.stop_after} of its {len(self.finished)} finished trials; to continue: "
                    f"{resume_hint} --stop-after {more} (or more; 0: no plateau stop)")
        if self.time_budget_s and self.used0 >= self.time_budget_s:
            return (f"[hscmae] already stopped: time budget {self.time_budget} used "
                    f"({fmt_duration(self.used0)} so far); to continue: {resume_hint} --time-budget <more than "
                    f"{self.time_budget}>")
        return None

    # -- Stopper --
    def __call__(self, trial_id, result) -> bool:
        return False  # never one trial alone (ASHA does that); the whole search in stop_all

    def stop_all(self) -> bool:
        if self.reason is None and self.time_budget_s and self.time_used() >= self.time_budget_s:
            self._fire("time_budget", time_line(self.time_budget), running=None)
            if self._interrupt_like_ctrl_c():
                return False  # Tune's loop ends after this step, its state saved with trials RUNNING
            self.reason = "time_budget_terminated"
        if time.time() - self._saved_at >= SAVE_EVERY_S:
            self._save()
        return self.reason in ("plateau", "time_budget_terminated")

    def _interrupt_like_ctrl_c(self) -> bool:
        from harness.interrupt import _TUNE_LOGGERS, _tune_stop_handler

        handler = _tune_stop_handler()  # Tune's stop event (fit() in the main thread)
        if handler is None:
            return False
        for name in _TUNE_LOGGERS:
            log = logging.getLogger(name)
            if not any(isinstance(f, _DropTuneStopLines) for f in log.filters):
                log.addFilter(_DropTuneStopLines())
        import signal

        handler(signal.SIGUSR1, None)
        return True

    # -- Callback --
    def on_trial_complete(self, iteration, trials, trial, **info):
        tid = trial.trial_id
        if self.reason is not None:  # ended by our stop, not finished on its own
            self.cut.append(tid)
        else:
            self.finished = [(t, v) for t, v in self.finished if t != tid]  # a rerun after a lost state
            self.finished.append((tid, (trial.last_result or {}).get(METRIC)))
            if self.stop_after and plateaued(self.values(), self.stop_after, self.min_delta):
                # Tune sets the finishing trial's status after this call: it is not among the running
                ended = {t for t, _ in self.finished} | set(self.cut)
                running = [t.trial_id for t in trials
                           if t.trial_id not in ended and t.status in ("RUNNING", "PAUSED", "PENDING")]
                self._fire("plateau", plateau_line(self.stop_after, self.min_delta), running=running)
        self._save()

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self._save()  # fit() started: the folder exists, and STATE says this experiment has a stopper

    def on_experiment_end(self, trials, **info):
        self._save()

    # -- files --
    def _fire(self, reason: str, line: str, running: list[str] | None) -> None:
        from harness.storage import write_metadata

        self.reason, self.line, self.running_stopped = reason, line, running or []
        write_metadata(self.exp, {MARKER: json.dumps({
            "reason": reason, "line": line, "at_trials": len(self.finished), "time_used_s": round(self.time_used(), 1),
            "stop_after": self.stop_after, "min_delta": self.min_delta, "time_budget": self.time_budget,
            "time_budget_s": self.time_budget_s, "best_val_map": max(self.values(), key=_num, default=None),
            "running_stopped": running, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n"})
        self._save()

    def _save(self) -> None:
        from harness.storage import write_metadata

        self._saved_at = time.time()
        if self.exp is None:
            return
        try:
            write_metadata(self.exp, {STATE: json.dumps({
                "time_used_s": round(self.time_used(), 3), "finished": [list(x) for x in self.finished],
                "cut": self.cut}, indent=1) + "\n"})
        except OSError as e:  # the search goes on; the budget is then counted from the last save
            logging.getLogger(__name__).warning("could not write %s: %s", STATE, e)


def __getattr__(name: str):
    if name != "SearchStopper":
        raise AttributeError(name)
    if "SearchStopper" in globals():  # made already (make() calls this directly)
        return globals()["SearchStopper"]
    from ray.tune import Callback
    from ray.tune.stopper import Stopper

    cls = type("SearchStopper", (_SearchStopper, Stopper, Callback), {"__module__": __name__})
    globals()["SearchStopper"] = cls
    return cls


_LIVE = None  # this process's stopper (make): what a pickled one becomes when Tune restores it


def _restored():
    return _LIVE if _LIVE is not None else __getattr__("SearchStopper")(None)


def make(exp: str, conf: dict, fresh: bool = False):
    """This run's stopper (with no stop asked for, one that only keeps the time and the finished
    trials). On resume, UsageError if a stop is asked of an experiment begun before stoppers were."""
    global _LIVE
    from harness.storage import read_text

    if not fresh and (conf.get("stop_after") or conf.get("time_budget_s")) and read_text(exp, STATE) is None:
        raise UsageError(f"--stop-after / --time-budget: {exp} was begun without a stopper (it has no {STATE}): "
                         "Tune restores it without one; resume it as it was")
    _LIVE = __getattr__("SearchStopper")(exp, **conf, fresh=fresh)
    return _LIVE


def final_lines(stopper) -> list[str]:
    """After the summary: why the search stopped (its last line), and the trials the stop ended."""
    if stopper is None or not stopper.line:
        return []
    cut = len(getattr(stopper, "running_stopped", []))
    note = ([f"[hscmae] {cut} trial(s) still running or pending were stopped with the search (counted above among "
             "those stopped early; a resume does not continue them)"] if cut and stopper.reason == "plateau" else [])
    return [*note, stopper.line]


def replace_on_restore(tuner, stopper) -> None:
    """Tuner.restore brings back the first run's RunConfig from tuner.pkl (its stopper and callbacks
    as they were then, their state that of the experiment's start): put this run's stopper (None:
    none) in the place of any earlier one, in both."""
    local = getattr(tuner, "_local_tuner", None)  # Ray 2.60's Tuner (tests/test_stopping.py checks it)
    if local is None:
        if stopper is not None:
            raise UsageError("--stop-after / --time-budget on --resume need a local driver (not ray://)")
        return
    rc = local.get_run_config()
    cbs = list(rc.callbacks or [])
    at = [i for i, c in enumerate(cbs) if isinstance(c, _SearchStopper)]
    if isinstance(rc.stop, _SearchStopper) or stopper is not None:
        rc.stop = stopper
    if at:  # the same place (Tune restores callback state by position): this run's stopper, or a no-op
        from ray.tune import Callback

        cbs = [(stopper or Callback()) if i == at[0] else Callback() if i in at else c for i, c in enumerate(cbs)]
    elif stopper is not None:
        cbs.append(stopper)
    rc.callbacks = cbs


def summary_lines(path: str) -> list[str]:
    """summary.md's line (report.py), from stopped.json: why the search ended before its trials did."""
    m = read_marker(path)
    if not m:
        return []
    n, running = m.get("at_trials"), len(m.get("running_stopped") or [])
    used = fmt_duration(float(m.get("time_used_s") or 0))
    if m.get("reason") == "plateau":
        why = (f"no improvement of the best val_map by more than {m.get('min_delta') or 0:g} in the last "
               f"{m.get('stop_after')} finished trials (`--stop-after {m.get('stop_after')}`), after {n} finished "
               f"trials and {used}")
        then = ((f"; the {running} trial(s) still running or pending were stopped with it (shown as stopped early)"
                 if running else "") + "; `--resume --stop-after <larger>` continues the search")
    else:
        why = f"its time budget `--time-budget {m.get('time_budget')}` was used ({used} over all its runs), after {n} finished trials"
        then = ("; the trials running then are paused at their last checkpoint: `--resume --time-budget <larger>` "
                "continues them")
    return [f"The search was stopped early: {why}{then}.", ""]
