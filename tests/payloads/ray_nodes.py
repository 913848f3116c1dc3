"""The driver of a Ray cluster on the allocation: counts the Ray nodes and runs one task pinned to each."""
import os

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init()  # RAY_ADDRESS, set by the launcher (local mode: a local Ray)
    nodes = [n for n in ray.nodes() if n["Alive"]]

    @ray.remote(num_cpus=1)
    def where() -> str:
        return os.environ.get("SLURMD_NODENAME", "local")

    on = ray.get([where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
                  for n in nodes])
    print(f"ran a task on each of {len(nodes)} Ray nodes: {sorted(on)}")
    pipes.report_asset_materialization(metadata={"ray_nodes": len(nodes), "task_nodes": sorted(on)})
    ray.shutdown()
