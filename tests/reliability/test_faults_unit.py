"""Faults that need no cluster: divergence from a real cause, corrupted and malicious checkpoints
(in fit and in the Tune trainable), SIGKILL while a checkpoint is written, disk full / unwritable
storage. The same faults inside a real search are in test_faults_search.py."""
import errno
import glob
import io
import multiprocessing
import os
import pickle
import shutil
import signal
import subprocess
import time
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import harness.trainable
import tune_main
from hscmae import checkpoint as C
from hscmae import train as T
from hscmae.config import config_from_dict
from hscmae.data import load_data
from search_spaces import get_space

TINY = {"data": "synthetic:tiny", "hidden_dim": 32, "embed_dim": 16, "batch_size": 64, "cca_dim": 4,
        "top_k": 3, "epochs": 2}
FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def _torch_threads():
    # fit and run_trial set torch's thread count in-process; give the next module what it had
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------
# NaN / Inf from a real cause (an absurd learning rate), not a patched loss
# ------------------------------------------------------------------------------------------------
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(exp=st.integers(3, 38), wd=st.sampled_from([1e-4, 0.0]))
def test_an_absurd_lr_stops_with_training_diverged_never_another_error(tiny, exp, wd):
    """Property: whatever the learning rate, fit either raises TrainingDiverged (naming epoch and
    step) or returns finite scores; never a LinAlgError from the DCCA Cholesky or a NaN mAP.
    (Found: with lr 1e30 the weights became NaN after step 1 and the next step died in
    torch.linalg.cholesky before the loss check; fixed in hscmae/train.py.)"""
    cfg = config_from_dict({**TINY, "lr": 10.0 ** exp, "weight_decay": wd, "epochs": 1})
    try:
        m = T.fit(cfg, tiny, log=None)
    except T.TrainingDiverged as e:
        assert "at epoch 1, step" in str(e), e
        return
    assert all(np.isfinite(m[k]) for k in ("val_map", "test_map", "loss")), m


def test_lr_1e30_is_training_diverged(tiny):
    with pytest.raises(T.TrainingDiverged, match=r"epoch 1, step 2"):
        T.fit(config_from_dict({**TINY, "lr": 1e30}), tiny, log=None)


# ------------------------------------------------------------------------------------------------
# Corrupted checkpoints
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("ck")
    cfg = config_from_dict({**TINY, "epochs": 1})
    T.fit(cfg, tiny, out_dir=str(d), log=None)
    return d / "checkpoint.pt", cfg


def _members(path):
    with zipfile.ZipFile(path) as z:
        return [(i.filename, i.header_offset, i.file_size) for i in z.infolist()]


@FEW
@given(frac=st.floats(0.0, 0.999))
def test_truncated_checkpoint_is_refused_at_any_length(tmp_path_factory, good_ckpt, frac):
    path, cfg = good_ckpt
    raw = path.read_bytes()
    bad = tmp_path_factory.mktemp("t") / "checkpoint.pt"
    bad.write_bytes(raw[: int(len(raw) * frac)])
    with pytest.raises(C.CheckpointError, match=str(bad)):
        C.load_checkpoint(str(bad))


@FEW
@given(data=st.data())
def test_a_flipped_byte_anywhere_in_a_tensor_is_refused(tmp_path_factory, good_ckpt, data):
    """Silent corruption (one byte of one tensor) must not load as different weights.
    (Found: torch.load does not check the zip CRCs, so it loaded silently; fixed in
    hscmae/train.load_checkpoint with zipfile.testzip.)"""
    path, cfg = good_ckpt
    raw = bytearray(path.read_bytes())
    tensors = [m for m in _members(path) if "/data/" in m[0] and m[2] > 0]
    name, offset, size = data.draw(st.sampled_from(tensors))
    with open(path, "rb") as f:  # local header: 30 bytes + name + extra
        f.seek(offset + 26)
        n, e = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    at = offset + 30 + n + e + data.draw(st.integers(0, size - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    bad = tmp_path_factory.mktemp("f") / "checkpoint.pt"
    bad.write_bytes(bytes(raw))
    with pytest.raises(C.CheckpointError, match="fails its CRC-32 check"):
        C.load_checkpoint(str(bad))
    with pytest.raises(C.CheckpointError):  # and fit refuses to resume from it
        T.fit(cfg, load_data("synthetic:tiny"), resume_from=str(bad), log=None)


class _FakeTune:
    """Stands in for ray.tune inside run_trial: a given checkpoint, reports recorded."""

    def __init__(self, ckpt_dir):
        from ray.tune import Checkpoint

        self.ckpt = Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
        self.reports = []

    def get_checkpoint(self):
        return self.ckpt

    def report(self, metrics, checkpoint=None):
        self.reports.append(metrics)


def _run_trial(monkeypatch, tiny, ckpt_dir):
    import ray.tune

    fake = _FakeTune(ckpt_dir)
    monkeypatch.setattr(ray.tune, "get_checkpoint", fake.get_checkpoint)
    monkeypatch.setattr(ray.tune, "report", fake.report)
    monkeypatch.setattr(harness.trainable, "_node_id", lambda: "n")
    params = {"mask_ratio": 0.3, "one_minus_ema_momentum": 0.01, "ema_momentum": 0.99, "top_k": 2,
              "temperature": 0.1, "cca_dim": 4}
    base = config_from_dict({}).to_dict()
    tune_main.run_trial(params, data=tiny, base=base, fixed=get_space("smoke").fixed, checkpoint_every=2,
                        cpus=1)
    return fake


class _Boom:
    """Unpickling this runs a shell command: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "missing", "malicious"])
def test_tune_trainable_refuses_a_corrupt_trial_checkpoint_naming_it(tmp_path, monkeypatch, tiny, damage):
    """The Tune path: run_trial copies checkpoint.pt out of the trial's Tune checkpoint. A damaged
    (or crafted) one fails the trial with a CheckpointError naming the Tune checkpoint (not the
    temporary copy) before any epoch is trained or reported; it never starts again from epoch 1,
    and a crafted pickle runs nothing (torch.load(weights_only=True))."""
    # a real checkpoint of this trial's config, saved by the trainable itself at epoch 2
    saved = tmp_path / "first"
    orig_report = _FakeTune.report

    def keep(self, metrics, checkpoint=None):
        orig_report(self, metrics)
        if checkpoint is not None and not saved.exists():
            shutil.copytree(checkpoint.path, saved)
    monkeypatch.setattr(_FakeTune, "report", keep)
    _run_trial(monkeypatch, tiny, None)
    monkeypatch.setattr(_FakeTune, "report", orig_report)

    ck = tmp_path / "checkpoint_000001"
    shutil.copytree(saved, ck)
    f = ck / "checkpoint.pt"
    raw = bytearray(f.read_bytes())
    if damage == "truncate":
        f.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        name, offset, size = max(_members(f), key=lambda m: m[2])
        raw[offset + 200] ^= 0x55  # inside the largest tensor's bytes
        f.write_bytes(bytes(raw))
    elif damage == "garbage":
        f.write_bytes(os.urandom(len(raw)))
    elif damage == "malicious":  # a well-formed zip whose pickle calls os.system on load
        torch.save({"model": _Boom(tmp_path / "pwned"), "optimizer": {}, "log_vars": {}, "epoch": 2,
                    "generator": torch.Generator().get_state(), "config": {}}, f, pickle_module=pickle)
    else:
        f.unlink()
    reports = []
    with pytest.raises(C.CheckpointError, match=r"Tune checkpoint .*checkpoint_000001") as e:
        reports = _run_trial(monkeypatch, tiny, ck).reports
    assert "hscmae-resume-" not in str(e.value), e.value
    assert reports == []
    assert not (tmp_path / "pwned").exists()
    # a good copy of the same checkpoint resumes at epoch 3
    good = tmp_path / "checkpoint_000002"
    shutil.copytree(saved, good)
    assert [r["epoch"] for r in _run_trial(monkeypatch, tiny, good).reports] == [3, 4, 5, 6]


# ------------------------------------------------------------------------------------------------
# SIGKILL while a checkpoint is being written
# ------------------------------------------------------------------------------------------------
def _ckpt_state(big, epoch):
    return {"model": {"w": big, "epoch": torch.tensor(epoch)}, "optimizer": {}, "log_vars": {}, "epoch": epoch,
            "generator": torch.Generator().get_state(), "config": {}}


def _write_then_stop_inside(path, big, epoch, where, inside):
    """Child: save checkpoint `epoch` whole, then start saving epoch + 1 and stop inside that write
    at `where` -- half its bytes written ("bytes"), all written but not synced ("fsync"), synced but
    not renamed onto the path ("replace") -- set `inside` and wait to be killed. (torch.save only:
    no OpenMP after fork. The patches live in this forked child only.)"""
    C.save_checkpoint(path, _ckpt_state(big, epoch))

    def stop(*_):
        inside.set()
        while True:
            time.sleep(1)

    if where == "bytes":
        real = torch.save

        def half_save(obj, f):
            buf = io.BytesIO()
            real(obj, buf)
            raw = buf.getvalue()
            f.write(raw[: len(raw) // 2])
            f.flush()
            stop()
        torch.save = half_save
    elif where == "fsync":
        os.fsync = stop
    else:
        os.replace = stop
    C.save_checkpoint(path, _ckpt_state(big, epoch + 1))


def test_sigkill_while_a_checkpoint_is_written_leaves_the_old_or_the_new_one(tmp_path):
    """A writer killed with SIGKILL inside a write of a new checkpoint, at each stage of it (half
    the bytes, all bytes before fsync, synced before the rename): checkpoint.pt always loads, whole
    and consistent, as the previous checkpoint (hscmae.io.atomic_write: temp file, fsync,
    os.replace). The writer stops itself inside the write and says so, so every kill lands there
    (the temp file left behind proves it). (With a plain torch.save to the path, the same test fails
    on the first kill: the half-written file is the checkpoint.)"""
    path = str(tmp_path / "checkpoint.pt")
    big = torch.arange(4_000_000, dtype=torch.float32)  # 16 MB
    ctx = multiprocessing.get_context("fork")
    for epoch, where in enumerate(["bytes", "fsync", "replace"] * 2, start=1):
        inside = ctx.Event()
        p = ctx.Process(target=_write_then_stop_inside, args=(path, big, epoch, where, inside))
        p.start()
        try:
            assert inside.wait(60), f"the writer never got inside the write ({where})"
            # (reading while it is inside a write is a test too: a reader must never see half a file)
            assert C.load_checkpoint(path)["epoch"] == epoch
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.join()
        left = glob.glob(os.path.join(tmp_path, ".checkpoint.pt.*.tmp"))
        assert len(left) == 1, (where, left)  # SIGKILL runs no cleanup: the temp file stays
        os.unlink(left[0])  # (harmless, never read)
        state = C.load_checkpoint(path)  # raises CheckpointError if half-written
        assert state["model"]["epoch"].item() == state["epoch"] == epoch, where
        assert torch.equal(state["model"]["w"], big)


# ------------------------------------------------------------------------------------------------
# Storage: disk full, unwritable, not a folder -- one clear error before Ray starts
# ------------------------------------------------------------------------------------------------
def _fails_before_ray(argv, match, capsys):
    import ray

    assert tune_main.main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not ray.is_initialized()


def test_disk_full_storage_is_refused_before_ray(tmp_path, monkeypatch, capsys):
    real = os.fsync

    def full(fd):  # what a full disk says when the written pages are flushed
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(os, "fsync", full)
    _fails_before_ray(["--space", "smoke", "--storage", str(tmp_path / "r")], "No space left on device", capsys)
    assert not [p for p in (tmp_path / "r").iterdir()], "the write probe was left behind"


@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_really_full_or_read_only_filesystem_is_refused_before_ray(tmp_path, capsys, kind):
    """A real full (or read-only) filesystem: a tiny tmpfs, when the machine lets us mount one
    (root). Without root, test_disk_full_storage_is_refused_before_ray covers the same path."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    opts = "size=64k" if kind == "full" else "ro,size=64k"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        if kind == "full":
            try:  # fill it up
                with open(mnt / "filler", "wb") as f:
                    while True:
                        f.write(b"\0" * 4096)
                        f.flush()
            except OSError:
                pass
        why = "No space left on device" if kind == "full" else "Read-only file system"
        _fails_before_ray(["--space", "smoke", "--storage", str(mnt / "r")], f"not writable ({why})", capsys)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_storage_that_is_a_file_is_refused_before_ray(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    _fails_before_ray(["--space", "smoke", "--storage", str(f)], f"--storage {f}: not writable", capsys)
    _fails_before_ray(["--space", "smoke", "--storage", str(f / "below")], "not writable", capsys)

