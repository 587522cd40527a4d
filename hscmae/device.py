"""Where a run's tensors live: `resolve_device(cfg)` turns the config's `device` into a torch.device.

"auto" is resolved when a run starts, in the process that trains (a Ray trial sees only the GPUs
Ray gave it, through CUDA_VISIBLE_DEVICES), not when the config is written: the same config file
then trains on whatever the machine it lands on has.
"""
from __future__ import annotations

import os

import torch

from hscmae.config import Config, ConfigError


def resolve_device(cfg: Config) -> torch.device:
    """"auto" -> CUDA when torch sees it, else the CPU; "cuda" / "cuda:N" must exist here (a
    ConfigError naming the key otherwise, so a run never silently trains somewhere else)."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(cfg.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"config key 'device': {cfg.device!r} asked for, but torch {torch.__version__} "
                              f"sees no CUDA device here (CUDA_VISIBLE_DEVICES="
                              f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}); use 'auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"config key 'device': {cfg.device!r} asked for, but only "
                              f"{torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def setup_device(cfg: Config, dev: torch.device) -> None:
    """Process-wide settings a run on `dev` needs. Deterministic CUDA only when asked: it costs
    speed (cuBLAS with a fixed workspace, no non-deterministic atomics). CPU kernels here are
    deterministic already, so a CPU run changes nothing."""
    if dev.type != "cuda":
        return
    if dev.index is not None:
        torch.cuda.set_device(dev)
    if cfg.deterministic:
        # read by cuBLAS when its first handle is created: set before the first CUDA matmul of the
        # process (a reused Ray worker that already ran a non-deterministic trial keeps its handle)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: an op without a deterministic CUDA kernel warns (naming itself) instead of ending
    # the run; tests/test_cuda.py checks that two deterministic runs agree
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = False
