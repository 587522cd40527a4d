"""Ctrl-C (SIGINT) and SIGTERM in the search's driver: stop like Tune does on Ctrl-C (it ends the
run loop, saves the experiment state, stops the trials), then tell the user where things stand and
the exact command that resumes, and exit 130 / 143 like any interrupted Unix program.

What Ray 2.60 does by itself, and why each piece is replaced:
- Tune installs a SIGINT handler inside `fit()` that sets an "interrupted" event and saves the
  state; the same handler is always installed for SIGUSR1. We set TUNE_DISABLE_SIGINT_HANDLER, keep
  SIGINT ourselves (so we know it happened, and a second Ctrl-C cannot raise KeyboardInterrupt in
  the middle of the final save) and ask Tune to stop by calling its SIGUSR1 handler.
- `ray.init` sets a Python SIGTERM handler (`sys.exit`), the local head node another one (kill
  Ray's processes, exit 1) and the driver's core worker a native one (the "*** SIGTERM received
  ... PC: @" dump, then abort). None of them lets Tune save its state. Ours, installed after
  `ray.init`, turns SIGTERM into the same graceful stop as Ctrl-C.
- Tune's closing lines ("Resume experiment with: Tuner.restore(...)", "Trials did not complete")
  name a Python API, not our command; they are dropped once we print our own.

Counts come from Tune's saved experiment state (experiment_state-*.json, what a resume restores
from): after the final save Tune marks every trial it stops TERMINATED in memory, so the trials
`fit()` returns cannot tell a trial ASHA stopped from one the signal stopped.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import sys
import threading
import time

MARKER = "interrupted.json"  # written beside Tune's files on interruption; report.py reads it
EXIT_CODE = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as a shell reports it


class Interrupted(BaseException):
    """Raised to leave `fit()` at once (a third signal, or a signal before Tune's loop runs).
    A BaseException, so Tune's `except Exception` clauses do not swallow it."""


def caused_by_signal(e: BaseException) -> bool:
    """e is Interrupted, or an error it caused: raised inside Ray's native code (ray.wait, ray.get)
    it comes out as "SystemError: ... returned a result with an exception set"."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, Interrupted):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def resume_command(argv: list[str], restorable: bool = True) -> str:
    """The command that resumes: this one, with --resume (without, if Tune had saved nothing yet:
    --resume would refuse a folder with nothing to restore; the same command starts afresh)."""
    args = list(argv)
    if restorable:  # --from seeds a new experiment; its resume refuses it (harness/branch.py)
        from harness.branch import without_from

        args = without_from(args)
    if restorable and "--resume" not in args:
        args.append("--resume")
    return shlex.join([sys.executable, sys.argv[0] or "tune_main.py", *args])


def count_trials(states: dict[str, tuple[str, int]], num_samples: int, max_epochs: int) -> dict[str, int]:
    """states: {trial_id: (Tune status, last reported epoch)}. A trial is stopped early by ASHA only
    if it ended TERMINATED before max_epochs; RUNNING/PAUSED trials were stopped by the signal and
    continue on resume; PENDING trials and those not created yet have not started."""
    status = [s for s, _ in states.values()]
    errored = status.count("ERROR")
    done = [e for s, e in states.values() if s == "TERMINATED"]
    early = sum(e < max_epochs for e in done)
    running = sum(s in ("RUNNING", "PAUSED") for s in status)
    finished = len(done) + errored
    return dict(finished=finished, full=len(done) - early, early=early, errored=errored, running=running,
                not_started=max(num_samples - finished - running, 0), total=num_samples)


def saved_trial_states(exp: str) -> dict[str, tuple[str, int]] | None:
    """{trial_id: (status, last epoch)} from the newest experiment_state-*.json (the file Tune
    restores from, read by harness.tune_state); None if there is none or it cannot be read."""
    from harness.tune_state import read_trials

    trials = read_trials(exp)
    return None if trials is None else {t["trial_id"]: (t["status"], t["last_epoch"]) for t in trials}


def status_block(signum: int, minutes: float, counts: dict[str, int], command: str, forced: bool) -> str:
    c = counts
    kept = ("nothing is lost" if not forced else
            "cut short while Tune was saving: a resume starts from the last state it saved (at most 5 s old)")
    return (f"[hscmae] interrupted ({signal.Signals(signum).name}) after {minutes:.1f} min: {c['finished']} of "
            f"{c['total']} trials finished ({c['early']} stopped early by ASHA, {c['errored']} errored), "
            f"{c['running']} were running, {c['not_started']} not started; {kept}\n"
            f"[hscmae] resume with: {command}")


_TUNE_LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")


class _DropTuneInterruptLines(logging.Filter):
    """Tune's own interruption lines, replaced by ours once a signal arrived."""

    def __init__(self, interrupts: "Interrupts"):
        super().__init__()
        self.interrupts = interrupts

    def filter(self, record: logging.LogRecord) -> bool:
        if self.interrupts.signum is None:
            return True
        msg = str(record.msg)
        return not msg.startswith(("Stop signal received", "Experiment has been interrupted",
                                   "Trials did not complete",
                                   # trials stopped before their first report have no result file yet
                                   "Failed to fetch metrics"))


def _say(text: str) -> None:
    """Print from a signal handler: print() would raise "reentrant call" if the signal lands while
    the main thread is inside a write to stdout (Tune prints its tables there)."""
    try:
        os.write(sys.stdout.fileno(), text.encode())
    except (OSError, ValueError):
        pass


def leave_now(code: int) -> None:
    """Exit with code once everything is written: shut Ray down, flush, and skip the interpreter's
    teardown, which spends ~7 s in Ray's native threads on a loaded 2-core machine (measured: exit
    9.5 s after the signal, of which 0.4 s until fit() returned, 1.6 s ray.shutdown, the rest
    native code after it). A scheduler's grace period before SIGKILL can be as short as 10 s."""
    import ray

    for s in (signal.SIGINT, signal.SIGTERM):  # one more Ctrl-C must not raise inside the shutdown
        signal.signal(s, signal.SIG_IGN)
    if ray.is_initialized():
        ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _tune_stop_handler():
    """Tune's SIGUSR1 handler (it sets the run's interrupted event), if fit() installed it."""
    h = signal.getsignal(signal.SIGUSR1)
    return h if callable(h) and "_setup_signal_catching" in getattr(h, "__qualname__", "") else None


class Interrupts:
    """SIGINT/SIGTERM handling for one run of the search: install() before Ray starts and again
    after (ray.init replaces the SIGTERM handler); run the search with fit(tuner)."""

    def __init__(self):
        self.start = time.time()
        self.signum: int | None = None
        self.at: float | None = None
        self.signals = 0
        self.in_fit = False
        self.forced = False  # left before Tune's final save
        self.search: dict | None = None  # exp, num_samples, max_epochs once known

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread can set handlers (Tune then leaves SIGINT alone too)
        if not hasattr(self, "_saved"):  # what uninstall() puts back (main() called in-process)
            self._saved = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM),
                           os.environ.get("TUNE_DISABLE_SIGINT_HANDLER"))
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        for name in _TUNE_LOGGERS:
            log = logging.getLogger(name)
            if not any(isinstance(f, _DropTuneInterruptLines) for f in log.filters):
                log.addFilter(_DropTuneInterruptLines(self))

    def uninstall(self) -> None:
        if not hasattr(self, "_saved"):
            return
        sigint, sigterm, env = self._saved
        # Ray may have set a handler we cannot restore from Python (None): then the default
        signal.signal(signal.SIGINT, sigint if sigint is not None else signal.default_int_handler)
        signal.signal(signal.SIGTERM, sigterm if sigterm is not None else signal.SIG_DFL)
        if env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env
        for name in _TUNE_LOGGERS:
            log = logging.getLogger(name)
            for f in [f for f in log.filters if isinstance(f, _DropTuneInterruptLines)]:
                log.removeFilter(f)
        del self._saved

    def fit(self, tuner):
        """tuner.fit(), or None if a third signal left it before it returned."""
        self._remove_marker()  # a resumed search is no longer the interrupted one
        self.in_fit = True
        try:
            return tuner.fit()
        except BaseException as e:
            if caused_by_signal(e):
                return None
            raise
        finally:
            self.in_fit = False

    def _handle(self, signum, frame) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum, self.at = signum, time.time()
            stop = _tune_stop_handler() if self.in_fit else None
            if stop is not None:
                _say(f"\n[hscmae] {name}: stopping the search; Tune saves its state so that it can be resumed\n")
                stop(signal.SIGUSR1, frame)  # Tune ends its loop at the next step and saves
                return
            raise Interrupted(signum)  # before Tune's loop runs (or after it): nothing to wait for
        if self.in_fit and self.signals == 2:
            # a second Ctrl-C must not tear the state file Tune is writing: wait for it
            _say(f"[hscmae] {name}: still saving the search state so that it can be resumed (seconds); "
                 "a third signal stops at once\n")
            return
        if self.in_fit:
            self.forced = True
            raise Interrupted(self.signum)

    @property
    def exit_code(self) -> int:
        return EXIT_CODE.get(self.signum, 128 + (self.signum or 0))

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "no signal"

    def _remove_marker(self) -> None:
        from harness.storage import remove_file

        remove_file(self.search["exp"], MARKER)

    def report(self, exp: str, argv: list[str], num_samples: int, max_epochs: int,
               states: dict[str, tuple[str, int]] | None) -> str:
        """Print the status block and the resume command; returns the command."""
        from harness.storage import write_metadata

        command = resume_command(argv, restorable=states is not None or "://" in exp
                                 or os.path.exists(os.path.join(exp, "tuner.pkl")))
        counts = count_trials(states or {}, num_samples, max_epochs)
        minutes = ((self.at or time.time()) - self.start) / 60
        print("\n" + status_block(self.signum, minutes, counts, command, self.forced), flush=True)
        # for report.py: Tune's state alone cannot tell an interrupted search from a running one
        try:
            write_metadata(exp, {MARKER: json.dumps({
                "signal": self.signal_name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
                "minutes": round(minutes, 2), "counts": counts, "resume": command}, indent=2) + "\n"})
        except OSError as e:
            print(f"[hscmae] could not write {MARKER} ({e})", file=sys.stderr)
        return command
