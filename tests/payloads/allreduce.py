"""torch.distributed over gloo (CPU): all-reduce of the ranks; global rank 0 reports the sum."""
import os

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    total = torch.tensor([float(rank)])
    dist.all_reduce(total)
    print(f"rank {rank} of {world} on {os.environ.get('SLURMD_NODENAME', 'local')}: sum {total.item()}")
    if rank == 0:
        pipes.report_asset_materialization(metadata={"world_size": world, "rank_sum": total.item()})
    dist.destroy_process_group()
