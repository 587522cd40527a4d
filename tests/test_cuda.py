"""Training on a CUDA GPU: where the tensors live, host syncs per step, reproducibility on the
device, agreement with the CPU to seed noise, checkpoints across devices, NaN at its step,
torch.compile. Every test is marked `cuda` and skipped where torch sees no CUDA (CI);
bench/gpu_check.sh runs them on a GPU machine. Imports nothing beyond torch and hscmae."""
import statistics
import warnings

import pytest
import torch

from hscmae import train as T
from hscmae.config import ConfigError, config_from_dict
from hscmae.data import load_data
from hscmae.protocol import evaluate_checkpoint

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TINY = dict(data="synthetic:tiny", hidden_dim=32, embed_dim=16, cca_dim=4, top_k=3, batch_size=64,
            epochs=4, threads=1, test_cca="auto", device="cuda")


def _stop_after(epoch, path, seen):
    def on_epoch(m, save):
        seen.append(m)
        if m["epoch"] == epoch:
            save(path)
            return True
    return on_epoch


def test_model_optimiser_and_generator_live_on_the_device(tiny):
    cfg = config_from_dict(TINY)
    model, log_vars, opt, gen = T.build_training(cfg, tiny, torch.device("cuda"))
    assert all(p.is_cuda for p in model.parameters()) and all(v.is_cuda for v in log_vars.values())
    assert gen.device.type == "cuda"
    xa = torch.from_numpy(tiny.audio[:64]).cuda()
    xv = torch.from_numpy(tiny.visual[:64]).cuda()
    stats = T.optimizer_step(model, cfg, opt, log_vars, xa, xv, gen)
    assert all(v.is_cuda for v in stats.values() if torch.is_tensor(v))
    assert all(s.is_cuda for st in opt.state.values() for s in st.values() if torch.is_tensor(s) and s.ndim)


def test_device_index_beyond_the_visible_gpus_is_refused():
    with pytest.raises(ConfigError, match="'device'"):
        T.fit(config_from_dict({**TINY, "device": f"cuda:{torch.cuda.device_count()}"}), load_data("synthetic:tiny"))


def _syncs_per_step(cfg, data, steps=5):
    model, log_vars, opt, gen = T.build_training(cfg, data, torch.device("cuda"))
    xa = torch.from_numpy(data.audio[:cfg.batch_size]).cuda()
    xv = torch.from_numpy(data.visual[:cfg.batch_size]).cuda()
    T.optimizer_step(model, cfg, opt, log_vars, xa, xv, gen)  # warm-up: lazy inits may sync once
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                T.optimizer_step(model, cfg, opt, log_vars, xa, xv, gen)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(x.message) for x in w) / steps


def test_one_host_sync_per_step_without_dcca_and_dcca_adds_only_eigh(tiny):
    # the finiteness check of the total loss is the one read; every stat stays on the device
    assert _syncs_per_step(config_from_dict({**TINY, "use_dcca": False}), tiny) == 1
    # linalg.eigh checks its LAPACK/cuSOLVER info on the host inside PyTorch (there is no eigh_ex)
    assert _syncs_per_step(config_from_dict(TINY), tiny) <= 2


def test_same_seed_same_metrics_on_cuda_when_deterministic(tiny):
    cfg = config_from_dict({**TINY, "deterministic": True})
    a, b = T.fit(cfg, tiny, log=None), T.fit(cfg, tiny, log=None)
    for k in ("loss", "val_map", "test_map"):
        assert a[k] == b[k], k


def test_cpu_and_cuda_agree_to_seed_noise(tiny):
    def run(device, seed):
        return T.fit(config_from_dict({**TINY, "epochs": 10, "device": device, "seed": seed}), tiny, log=None)["val_map"]
    cpu = [run("cpu", s) for s in (0, 1, 2)]
    gpu = [run("cuda", s) for s in (0, 1, 2)]
    spread = max(3 * statistics.stdev(cpu), 0.02)
    assert abs(statistics.mean(gpu) - statistics.mean(cpu)) <= spread, (cpu, gpu)


def test_gpu_checkpoint_resumes_on_the_cpu_and_back(tiny, tmp_path):
    ckpt, seen = str(tmp_path / "gpu.pt"), []
    T.fit(config_from_dict(TINY), tiny, on_epoch=_stop_after(2, ckpt, seen), log=None)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["generator_device"] == "cuda"
    cpu_cfg = config_from_dict({**TINY, "device": "cpu"})
    # the same weights: CPU and GPU embeddings of them differ only by float rounding
    on_cpu, on_gpu = evaluate_checkpoint(cpu_cfg, tiny, ckpt), evaluate_checkpoint(config_from_dict(TINY), tiny, ckpt)
    assert on_cpu["val_map"] == pytest.approx(on_gpu["val_map"], abs=2e-3)
    out = T.fit(cpu_cfg, tiny, resume_from=ckpt, log=None)
    assert out["epoch"] == 4 and 0 < out["test_map"] <= 1
    cpu_ckpt, seen = str(tmp_path / "cpu.pt"), []
    T.fit(cpu_cfg, tiny, on_epoch=_stop_after(2, cpu_ckpt, seen), log=None)
    out = T.fit(config_from_dict(TINY), tiny, resume_from=cpu_ckpt, log=None)
    assert out["epoch"] == 4 and 0 < out["test_map"] <= 1


def test_nan_is_caught_at_its_step_on_cuda(tiny, monkeypatch):
    cfg = config_from_dict(TINY)
    per_epoch = len(tiny.splits["train"]) // cfg.batch_size
    real, calls = T.L.dcca_loss, []

    def nan_on_call(*a, **k):
        calls.append(1)
        out = real(*a, **k)
        return out * float("nan") if len(calls) == per_epoch + 3 else out
    monkeypatch.setattr(T.L, "dcca_loss", nan_on_call)
    with pytest.raises(T.TrainingDiverged, match="loss is nan at epoch 2, step 3 "):
        T.fit(cfg, tiny, log=None)


def test_compile_trains_on_cuda(tiny):
    eager = T.fit(config_from_dict({**TINY, "epochs": 2}), tiny, log=None)
    compiled = T.fit(config_from_dict({**TINY, "epochs": 2, "compile": True}), tiny, log=None)
    assert 0 < compiled["test_map"] <= 1
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=0.05)
