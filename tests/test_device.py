"""The device knob on a machine without CUDA: "auto" trains on the CPU, "cuda" is one error line,
a checkpoint whose tensors were written on CUDA resumes here, runtime-only keys do not block a
resume, the per-epoch stats summed on the device equal Python float sums, and a NaN is still
caught at the step it appears. The same checks on a real GPU are tests/test_cuda.py."""

import pytest
import torch
import torch.serialization

from hscmae import checkpoint as C
from hscmae import train as T
from hscmae.config import ConfigError, config_from_dict
from hscmae.device import resolve_device
from hscmae.protocol import evaluate_checkpoint

TINY = dict(data="synthetic:tiny", hidden_dim=32, embed_dim=16, cca_dim=4, top_k=3, batch_size=64,
            epochs=4, threads=1, test_cca="auto")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")


@no_cuda
def test_auto_is_the_cpu_and_cuda_is_refused_naming_the_key():
    assert resolve_device(config_from_dict({"device": "auto"})) == torch.device("cpu")
    assert resolve_device(config_from_dict({"device": "cpu"})) == torch.device("cpu")
    for dev in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="config key 'device'.*sees no CUDA"):
            resolve_device(config_from_dict({"device": dev}))
    with pytest.raises(ConfigError, match="'device'"):
        config_from_dict({"device": "gpu"})


@no_cuda
def test_train_command_with_device_cuda_is_one_error_line(tmp_path, capsys):
    """(The command's main() in this process; tests/test_train.py runs the command itself.)"""
    assert T.main(["--data", "synthetic:tiny", "--out", str(tmp_path), "--set", "device=cuda"]) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'device'" in lines[0], out.err
    assert "epoch" not in out.out and not (tmp_path / "checkpoint.pt").exists()


def _stop_after(epoch, path, seen=None):
    def on_epoch(m, save):
        if seen is not None:
            seen.append(m)
        if m["epoch"] == epoch:
            save(path)
            return True
    return on_epoch


def test_checkpoint_with_cuda_tensors_resumes_on_the_cpu(tiny, tmp_path, monkeypatch):
    cfg = config_from_dict({**TINY, "device": "cpu"})
    ckpt = str(tmp_path / "ep2.pt")
    T.fit(cfg, tiny, on_epoch=_stop_after(2, ckpt), log=None)
    # rewrite it as a CUDA run writes it: every tensor's storage tagged cuda:0, the config's device,
    # and a CUDA generator's 16-byte Philox state (seed, offset) instead of the CPU's Mersenne Twister
    state = C.load_checkpoint(ckpt)
    state["config"]["device"] = "cuda"
    state["generator"] = torch.tensor([7, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0], dtype=torch.uint8)
    state["generator_device"] = "cuda"
    moved = str(tmp_path / "from_gpu.pt")
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        C.save_checkpoint(moved, state)
    if not torch.cuda.is_available():  # the file really says CUDA: a plain load fails here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(moved, weights_only=True)
    # the weights carried over: the moved checkpoint scores exactly what the file the CPU wrote does
    assert evaluate_checkpoint(cfg, tiny, moved) == evaluate_checkpoint(cfg, tiny, ckpt)
    logged = []
    out = T.fit(cfg, tiny, resume_from=moved, log=logged.append)
    assert out["epoch"] == 4 and 0 < out["test_map"] <= 1
    assert any("resuming a cuda checkpoint on cpu" in line and "reseeded" in line for line in logged), logged


def test_runtime_keys_do_not_block_a_resume_but_other_keys_do(tiny, tmp_path):
    tiny3 = {**TINY, "epochs": 3}  # (3 epochs, a checkpoint at 2: enough to resume, and a third less work)
    full = T.fit(config_from_dict(tiny3), tiny, log=None)
    ckpt = str(tmp_path / "ep2.pt")
    T.fit(config_from_dict({**tiny3, "device": "auto", "threads": 1}), tiny, on_epoch=_stop_after(2, ckpt), log=None)
    resumed = T.fit(config_from_dict({**tiny3, "device": "cpu", "deterministic": True}), tiny,
                    resume_from=ckpt, log=None)
    for k in ("loss", "val_map", "test_map"):  # same device and threads: still bit-identical
        assert resumed[k] == full[k], k
    # another thread count resumes too (its float sums round differently, so not bit for bit)
    assert T.fit(config_from_dict({**tiny3, "threads": 2}), tiny, resume_from=ckpt, log=None)["epoch"] == 3
    torch.set_num_threads(1)
    with pytest.raises(C.CheckpointError, match=r"different config \(keys \['lr'\]\)"):
        T.fit(config_from_dict({**tiny3, "lr": 2e-3}), tiny, resume_from=ckpt, log=None)


def test_epoch_sums_equal_sequential_python_float_sums():
    g = torch.Generator().manual_seed(0)
    steps = [{"loss_a": torch.rand((), generator=g) * 10, "w_a": torch.rand((), generator=g), "w_fixed": 0.5,
              "loss": torch.randn((), generator=g) * 1e3} for _ in range(37)]
    sums = T.EpochSums()
    for s in steps:
        sums.add(s)
    means = sums.means()
    assert list(means) == ["loss_a", "w_a", "w_fixed", "loss"]
    for k in means:  # what fit computed before: sum of float(v) in step order, over the steps
        ref = 0.0
        for s in steps:
            ref += float(s[k])
        assert means[k] == ref / len(steps), k


def test_nan_is_caught_at_the_step_it_appears(tiny, monkeypatch):
    cfg = config_from_dict(TINY)
    per_epoch = len(tiny.splits["train"]) // cfg.batch_size
    real, calls = T.L.dcca_loss, []

    def nan_on_call(*a, **k):  # finite until epoch 2, step 3
        calls.append(1)
        out = real(*a, **k)
        return out * float("nan") if len(calls) == per_epoch + 3 else out
    monkeypatch.setattr(T.L, "dcca_loss", nan_on_call)
    with pytest.raises(T.TrainingDiverged, match="loss is nan at epoch 2, step 3 "):
        T.fit(cfg, tiny, log=None)
