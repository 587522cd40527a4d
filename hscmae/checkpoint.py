"""Checkpoints: the one place that writes, reads and checks them.

A checkpoint is a torch.save'd dict {model, optimizer, log_vars, epoch, generator,
generator_device, config, val_choice}, written atomically and on the CPU (device-neutral), read
with weights_only=True (a checkpoint is data, never code to run) after a CRC check of its zip
members. `config_diff` says which keys of a config a checkpoint disagrees with: a resume must agree
on every key but the runtime ones, a model load (`load_model`: eval, export, report --figures) on
the architecture keys (`hscmae.config.ARCH_KEYS`).
"""
from __future__ import annotations

import os
import zipfile

import torch

from hscmae.config import ARCH_KEYS, RUNTIME_KEYS, Config
from hscmae.device import resolve_device
from hscmae.io import atomic_write
from hscmae.model import build_model

REQUIRED = ("model", "optimizer", "log_vars", "epoch", "generator", "config")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, not ours, or of another config."""


def to_cpu(obj):
    """Tensors of a (nested) state dict moved to the CPU: checkpoints are device-neutral."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save_checkpoint(path: str, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Load with weights_only=True. Tensors land on `map_location` whatever device wrote them."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        # torch.load does not check the zip members' CRC-32: a flipped byte in a tensor would load
        # silently as a different weight
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad is not None:
            raise CheckpointError(f"{path}: corrupt checkpoint ({bad} fails its CRC-32 check)")
        state = torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # truncated zip, bad pickle opcode, a class weights_only refuses ...
        raise CheckpointError(f"{path}: not a loadable HSC-MAE checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]})") from None
    missing = set(REQUIRED) - set(state if isinstance(state, dict) else {})
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {sorted(missing)}")
    return state


def saved_config(state: dict) -> dict:
    """A checkpoint's config with the keys it predates at their defaults (which are the behaviour it
    was trained with: every new key defaults to the old behaviour)."""
    return {**Config().to_dict(), **state["config"]}


def config_diff(state: dict, cfg: Config, keys=None) -> list[str]:
    """The keys (default: all but RUNTIME_KEYS: a checkpoint written on a GPU resumes on a CPU and
    back) whose saved value differs from cfg's."""
    saved = saved_config(state)
    keys = keys or [k for k in cfg.to_dict() if k not in RUNTIME_KEYS]
    return sorted(k for k in keys if saved.get(k) != getattr(cfg, k))


def check_resumable(state: dict, cfg: Config, path: str) -> None:
    """A resume continues the same run: every non-runtime key must agree."""
    diff = config_diff(state, cfg)
    if diff:
        raise CheckpointError(f"{path}: saved with a different config (keys {diff})")


def architecture_diff(state: dict, cfg: Config) -> list[str]:
    """The architecture keys a checkpoint disagrees with cfg on (proj_dim only counts with a head)."""
    keys = config_diff(state, cfg, ARCH_KEYS)
    if "proj_dim" in keys and not cfg.proj_head and "proj_head" not in keys:
        keys.remove("proj_dim")  # no head on either side: its width builds nothing
    return keys


def load_model(cfg: Config, data, checkpoint: str, state: dict | None = None):
    """The checkpoint's model on cfg's device, refusing one whose architecture or input sizes differ
    from cfg's. `state`: the checkpoint already loaded (on the CPU), to skip a second read."""
    device = resolve_device(cfg)  # embeddings are computed there, returned to numpy
    state = load_checkpoint(checkpoint, map_location=device) if state is None else state
    keys = architecture_diff(state, cfg)
    if keys:
        saved = saved_config(state)
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, config {getattr(cfg, k)!r}" for k in keys)
        raise CheckpointError(f"{checkpoint}: saved with a different architecture (keys {keys}): {detail}")
    model = build_model(cfg, data).to(device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # e.g. the data's feature dimensions are not the checkpoint's
        raise CheckpointError(f"{checkpoint}: weights do not fit this config and data "
                              f"({str(e).splitlines()[0][:200]})") from None
    return model


def final_choice(state: dict, cfg: Config):
    """The test-time CCA choice (ridge, dim) of the final evaluation, from a checkpoint saved at the
    last epoch (fit keeps it as "val_choice"); None for an earlier epoch or an older checkpoint."""
    return state.get("val_choice") if state.get("epoch") == cfg.epochs else None
