"""The trainable: one HSC-MAE training run (`hscmae.train.fit`), reporting every epoch to Tune."""
from __future__ import annotations

import os
import tempfile

from search_spaces import trial_config


def run_trial(params: dict, data=None, base: dict | None = None, fixed: dict | None = None,
              checkpoint_every: int = 5, cpus: int = 1, grid_epochs: tuple | None = None) -> None:
    import shutil

    import torch
    from ray import tune

    from hscmae.device import resolve_device
    from hscmae.checkpoint import CheckpointError
    from hscmae.train import fit

    # fixed: the space's fixed keys as the flags changed them (--max-epochs, --data)
    cfg = trial_config(base or {}, fixed or {}, {**params, "threads": cpus})
    torch.set_num_threads(cpus)  # concurrent trials must not oversubscribe the cores
    placement = device_placement(resolve_device(cfg))
    resume = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # a restored trial: continue from its last checkpoint, not epoch 0
        resume = os.path.join(tempfile.mkdtemp(prefix="hscmae-resume-"), "checkpoint.pt")
        with ckpt.as_directory() as d:
            try:
                shutil.copy(os.path.join(d, "checkpoint.pt"), resume)
            except OSError as e:
                raise CheckpointError(f"Tune checkpoint {ckpt.path}: cannot read checkpoint.pt "
                                      f"({e.strerror or e})") from None

    def on_epoch(metrics: dict, save) -> None:
        metrics = {**metrics, "node_id": _node_id(), **placement}
        if metrics["epoch"] % checkpoint_every == 0 or metrics["epoch"] == cfg.epochs:
            with tempfile.TemporaryDirectory(prefix="hscmae-ckpt-") as d:
                save(os.path.join(d, "checkpoint.pt"))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)
        _test_hold(metrics["epoch"])

    _test_hold(0)  # test-only (HSCMAE_TEST_HOLD unset: a no-op); so is the call in on_epoch
    try:
        # grid_epochs: ASHA's rungs, where the reported val_map is the final evaluation's protocol
        # (test-time CCA chosen on val); the epochs between keep the latest choice
        fit(cfg, data, on_epoch=on_epoch, resume_from=resume, log=None, grid_epochs=grid_epochs)
    except CheckpointError as e:  # name the trial's checkpoint, not our temporary copy of it
        if resume is None:
            raise
        raise CheckpointError(f"Tune checkpoint {ckpt.path}: {str(e).replace(resume, 'checkpoint.pt')}; "
                              "the trial is not retrained from scratch or from a partial state") from None
    finally:
        if resume is not None:
            shutil.rmtree(os.path.dirname(resume), ignore_errors=True)


def device_placement(device) -> dict:
    """What a trial records about where it ran: the GPU ids Ray assigned it (Ray sets
    CUDA_VISIBLE_DEVICES to them, so device "auto" trains on them) and the device it trained on.
    A trial given GPUs that torch cannot see (a CPU-only torch build, or Ray's logical GPUs on a
    machine without any) trains on the CPU and says so in its log."""
    import ray

    # outside a Ray worker (a unit test calling run_trial) get_gpu_ids() would start a local Ray
    ids = ",".join(str(i) for i in ray.get_gpu_ids()) if ray.is_initialized() else ""
    if ids and device.type == "cpu":
        import torch

        print(f"[hscmae] trial assigned GPU(s) {ids} by Ray, but torch {torch.__version__} sees no CUDA "
              f"device (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}): "
              "training on the CPU", flush=True)
    return {"gpu_ids": ids, "device": str(device)}


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _test_hold(epoch: int) -> None:
    """TEST-ONLY hook, never set outside the tests (tests/conftest.py's Hold):
    HSCMAE_TEST_HOLD=<epoch>:<dir> makes a trial, once it has reported epoch <epoch> to Tune (0: as
    it starts, before training), write <dir>/held-<trial id>.json ({trial_id, pid, epoch}) and wait
    until <dir>/release exists. A test then acts on a known state (a trial mid-way, another
    finished) instead of polling for a moment in time. Unset: returns at once."""
    spec = os.environ.get("HSCMAE_TEST_HOLD")
    if not spec or int(spec.partition(":")[0]) != epoch:
        return
    import time

    from ray import tune

    from hscmae.io import atomic_write_json

    d = spec.partition(":")[2]
    trial = tune.get_context().get_trial_id()
    atomic_write_json(os.path.join(d, f"held-{trial}.json"), {"trial_id": trial, "pid": os.getpid(), "epoch": epoch})
    while not os.path.exists(os.path.join(d, "release")):
        time.sleep(0.05)
