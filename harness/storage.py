"""Experiment folders: where they are (a local folder or a pyarrow URI), whether they can be
written, and the metadata files tune_main.py writes beside Tune's own."""
from __future__ import annotations

import os
import platform
import time

from harness import UsageError
from hscmae.io import atomic_write_text, writable_folder_error


def experiment_path(storage: str, name: str) -> str:
    if "://" in storage:
        return storage.rstrip("/") + "/" + name
    return os.path.join(os.path.abspath(storage), name)


def check_storage(storage: str) -> None:
    """Fail before Ray starts if results could not be written."""
    if "://" in storage:
        import pyarrow.fs

        try:
            pyarrow.fs.FileSystem.from_uri(storage)
        except Exception as e:
            raise UsageError(f"--storage {storage}: not a usable filesystem URI ({e})") from None
        return
    path = os.path.abspath(storage)
    why = writable_folder_error(path, probe_bytes=65536)
    if why:
        raise UsageError(f"--storage {path}: not writable ({why})")


def write_metadata(exp: str, files: dict[str, str]) -> None:
    """command.txt, space.json, base_config.yaml, versions.json, data.json beside Tune's files."""
    if "://" in exp:
        import pyarrow.fs

        fs, root = pyarrow.fs.FileSystem.from_uri(exp)
        fs.create_dir(root, recursive=True)
        for name, text in files.items():
            with fs.open_output_stream(f"{root}/{name}") as f:
                f.write(text.encode())
        return
    for name, text in files.items():
        atomic_write_text(os.path.join(exp, name), text)


def versions() -> dict:
    # from the installed packages' metadata: importing torch here would cost the driver ~1 s of
    # start-up (and its exit) while both trial slots wait; only the trial workers need torch
    from importlib.metadata import version

    import hscmae

    return {"python": platform.python_version(), **{m: version(m) for m in ("torch", "ray", "optuna", "numpy")},
            "hscmae": hscmae.__version__, "platform": platform.platform()}


def read_text(exp: str, name: str) -> str | None:
    if "://" in exp:
        import pyarrow.fs

        fs, root = pyarrow.fs.FileSystem.from_uri(exp)
        try:
            with fs.open_input_stream(f"{root}/{name}") as f:
                return f.read().decode()
        except (FileNotFoundError, OSError):
            return None
    path = os.path.join(exp, name)
    return open(path).read() if os.path.exists(path) else None


def remove_file(exp: str, name: str) -> None:
    """Delete `name` in the experiment folder (local or pyarrow URI); a missing file is fine."""
    try:
        if "://" in exp:
            import pyarrow.fs

            fs, root = pyarrow.fs.FileSystem.from_uri(exp)
            fs.delete_file(f"{root}/{name}")
        else:
            os.remove(os.path.join(exp, name))
    except (FileNotFoundError, OSError):
        pass


def lock_path(exp: str) -> str:
    """The lock file beside a local experiment folder (beside, so the folder itself still says
    whether a search ran: Tune's can_restore looks inside it)."""
    return os.path.join(os.path.dirname(exp), f".{os.path.basename(exp)}.lock")


def lock_experiment(exp: str):
    """Hold an exclusive lock on a local experiment for as long as this driver lives; returns the
    open lock file (keep it), or None for a URI (no shared lock there). Two drivers on one folder
    (the same command started twice) would both restore it and run trials into it; the second
    gets a UsageError instead. An flock dies with its process, so a killed driver leaves no
    stale lock."""
    if "://" in exp:
        return None
    import fcntl

    path = lock_path(exp)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UsageError(f"{exp} is in use by another search ({holder}); wait for it to end or stop it "
                         f"(Ctrl-C) before running this one (lock: {path})") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    return f
