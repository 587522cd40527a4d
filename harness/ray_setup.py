"""Starting or joining Ray."""
from __future__ import annotations

import math
import os

from harness import UsageError


def init_ray(address: str | None, cpus: int | None = None) -> None:
    """Join `address` (or RAY_ADDRESS), else start a local Ray; a local Ray counts the GPUs itself
    (NVIDIA's libraries). A driver that already called ray.init (e.g. with logical GPUs, as a test
    does) keeps its Ray."""
    import ray

    if ray.is_initialized():
        return
    # RAY_ADDRESS is how `ray job submit` points a driver at its cluster: honour it like --address
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # "local", not None: with None, Ray joins the last cluster `ray start` recorded in
        # /tmp/ray/ray_current_cluster -- someone else's search, or a dead head it then waits on.
        # No dashboard (it would serve HTTP). Ray 2.60 maps 127.0.0.1 to the routable IP and its
        # gRPC servers listen on every interface whatever we pass (README, Security).
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")


def gpu_slots(gpus_per_trial: float, cpus_per_trial: int, flag: str) -> int:
    """After ray.init: how many trials (or tasks) fit at once by the cluster's GPUs and CPUs. A
    cluster with fewer GPUs than one trial asks for is a UsageError: Tune would otherwise queue the
    trials and wait for resources forever."""
    import ray

    res = ray.cluster_resources()
    gpus, cpus = res.get("GPU", 0.0), res.get("CPU", 0.0)
    if gpus < gpus_per_trial:
        raise UsageError(f"{flag} {gpus_per_trial:g}: the Ray cluster has {gpus:g} GPU(s) ({cpus:g} CPUs), so no "
                         "trial could ever start; use a cluster with GPUs or drop the flag to train on CPUs")
    by_gpu = math.floor(gpus / gpus_per_trial + 1e-9)  # 1 / 0.1 is 9.999...: not 9 slots
    return max(1, min(by_gpu, math.floor(cpus / cpus_per_trial + 1e-9)))


def check_gpus_per_trial(value: float | None, flag: str) -> None:
    """Ray places a fraction of one GPU (0.25: four trials share it) or whole GPUs, not 1.5."""
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value > 1 and not float(value).is_integer()):
        raise UsageError(f"{flag} must be 0, a fraction in (0, 1] or a whole number of GPUs, got {value:g}")
