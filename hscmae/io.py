"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half;
and the writability probe every output folder gets before work starts."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb", tmp_dir: str | None = None) -> None:
    """Call write(f) on a temp file in the same folder (or in tmp_dir, which must be on the same
    file system), fsync it, then os.replace it onto path."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=tmp_dir or folder)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str, tmp_dir: str | None = None) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w", tmp_dir=tmp_dir)


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def writable_folder_error(folder: str, probe_bytes: int = 0) -> str | None:
    """None if `folder` can be created and a file written (and, with probe_bytes, synced) in it;
    else why not, as the OS says. Every "is this output folder usable" check before work starts."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-") as f:
            if probe_bytes:
                f.write(b"x" * probe_bytes)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        return str(e.strerror or e)
    return None
