"""Payload of bench/multinode_startup.py: rank 0 reports when the payload began (before any import) and,
under torchrun, when every rank had joined the process group (under Ray: when ray.init() returned)."""
import time

BEGAN = time.time()

import os  # noqa: E402

from dagster_pipes import open_dagster_pipes  # noqa: E402

with open_dagster_pipes() as pipes:
    meta = {"payload_start": BEGAN}
    if pipes.extras.get("torch"):
        import torch.distributed as dist

        dist.init_process_group("gloo")
        dist.barrier()
        meta["engine_ready"] = time.time()
        dist.destroy_process_group()
    if pipes.extras.get("ray"):
        import ray

        ray.init()
        meta["engine_ready"] = time.time()
        ray.shutdown()
    if os.environ.get("DAGSTER_SLURM_RANK", "0") == "0":
        pipes.report_asset_materialization(metadata=meta)
