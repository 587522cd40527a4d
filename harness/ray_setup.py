"""Starting or joining Ray."""
from __future__ import annotations

import os


def init_ray(address: str | None, cpus: int | None = None) -> None:
    import ray

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
