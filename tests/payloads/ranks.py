"""Every rank writes its node (and an extra it read) beside the others'; rank 0 waits for all of them and
reports them. Extras: ``tag`` (each rank echoes it), ``fail_ranks`` (ranks that raise)."""
import os
import tempfile
import time

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    rank, world = int(os.environ["DAGSTER_SLURM_RANK"]), int(os.environ["DAGSTER_SLURM_WORLD_SIZE"])
    node = os.environ.get("SLURMD_NODENAME", "local")
    print(f"rank {rank} of {world} on {node}")
    pipes.log.info(f"rank {rank} says hello")  # only rank 0's messages reach Dagster
    if rank in (pipes.extras.get("fail_ranks") or []):
        time.sleep(1)
        raise ValueError(f"rank {rank} gave up")
    folder = "." if os.environ.get("SLURM_JOB_ID") else tempfile.mkdtemp()  # the run folder: shared by the nodes
    with open(os.path.join(folder, f"rank.{rank}.tmp"), "w") as fh:
        fh.write(f"{node}:{pipes.get_extra('tag')}")
    os.replace(os.path.join(folder, f"rank.{rank}.tmp"), os.path.join(folder, f"rank.{rank}"))
    if rank == 0:
        deadline = time.time() + 60
        while not all(os.path.exists(os.path.join(folder, f"rank.{r}")) for r in range(world)):
            assert time.time() < deadline, "not every rank reported within 60 s"
            time.sleep(0.1)
        seen = [open(os.path.join(folder, f"rank.{r}")).read() for r in range(world)]
        pipes.report_asset_materialization(metadata={"world_size": world, "ranks": seen})
