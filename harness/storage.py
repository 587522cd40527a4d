"""Experiment folders: where they are (a local folder or a pyarrow URI), whether they can be
written, and the metadata files tune_main.py writes beside Tune's own."""
from __future__ import annotations

import os
import platform

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
