"""Shared test fixtures and constants (tests/ and tests/reliability/; test modules import the
constants with `from conftest import ROOT, ...`: pytest puts this folder on sys.path).

The fast suite (`python -m pytest -q`) deselects `@pytest.mark.slow` (pyproject's addopts); the
slow suite is `python -m pytest -q -m slow`."""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
# a search in a subprocess: Tune saves its experiment state every second, Ray's token auth
SEARCH_ENV = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def tiny():
    """The synthetic:tiny two-view data set (its default split)."""
    from hscmae.data import load_data

    return load_data("synthetic:tiny")


@pytest.fixture
def ray_tmpdir():
    """A private, short (unix socket paths are limited to 107 bytes) Ray temp dir."""
    d = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def tune_main_error(capsys, argv) -> str:
    """tune_main.main(argv) in-process must refuse with exit 2 and one `error:` line on stderr, no
    traceback, before Ray starts; returns that line."""
    import ray

    import tune_main

    rc = tune_main.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    assert "Traceback" not in err[0] and not ray.is_initialized()
    return err[0]


def map_by_hand(a, v, labels):
    """Mean of a->v and v->a retrieval mAP with cosine scores (relevant: same label), in numpy, all
    queries at once: per query, the mean over its relevant items of the precision at their rank.
    Where no two scores of a query tie (continuous embeddings), scikit-learn's
    average_precision_score gives the same number, ~300x slower; tests check one point against it."""
    import numpy as np

    rel = labels[:, None] == labels[None, :]

    def one_way(q, g):
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        r = np.take_along_axis(rel, np.argsort(-(q @ g.T), axis=1, kind="stable"), axis=1)
        precision = np.cumsum(r, axis=1) / np.arange(1, r.shape[1] + 1)
        return np.mean((precision * r).sum(1) / r.sum(1))

    return (one_way(a, v) + one_way(v, a)) / 2


class Hold:
    """The test side of harness/trainable.py's test-only HSCMAE_TEST_HOLD hook: every trial of a
    search started with `env()` stops right after reporting epoch `epoch` (its result and
    checkpoint handed to Tune), writes held-<trial id>.json ({trial_id, pid, epoch}) into `dir`,
    and waits until `release()` creates dir/release. A held trial is a stable state, not a moment
    to catch: the test waits for it, acts, then releases."""

    def __init__(self, dir, epoch: int):
        self.dir, self.epoch = str(dir), int(epoch)
        os.makedirs(self.dir, exist_ok=True)

    def env(self) -> dict:
        return {"HSCMAE_TEST_HOLD": f"{self.epoch}:{self.dir}"}

    def held(self) -> dict[str, dict]:
        """{trial id: marker} of the trials held now (or held before a release)."""
        out = {}
        for f in os.listdir(self.dir):
            if f.startswith("held-") and f.endswith(".json"):
                try:
                    m = json.load(open(os.path.join(self.dir, f)))
                except (OSError, ValueError):  # (written atomically; never half a file)
                    continue
                out[m["trial_id"]] = m
        return out

    def release(self) -> None:
        open(os.path.join(self.dir, "release"), "w").close()
