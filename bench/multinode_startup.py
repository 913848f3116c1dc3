"""Start-up time of each multi-node engine on the allocation: from sbatch to the payload's first line.

For each engine the same asset runs on the test cluster's multinode partition (nodes n1..n3, a slurmd each
on this machine), in this process, several times, each run started at a random phase of slurmctld's 1 s
scheduler tick. "start-up" is the payload's own first timestamp (rank 0) minus the time the library logged
"Submitted Slurm job"; "ready" is when every rank had joined the gloo process group (torchrun), or when ray.init() returned
(Ray: the launcher starts the payload once all nodes joined). The floor is
the plain BashLauncher on one node of the same partition, measured in the same invocation.

    .venv/bin/python bench/multinode_startup.py [--runs 5]

Writes bench/results/multinode_startup.json.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time

from common import ROOT, load_cluster_env

ENGINES = {  # name -> (nodes, launcher factory, extras); Ray runs from its own environment
    "bash, 1 node (floor)": (1, lambda m: m.BashLauncher(), {}),
    "srun, 3 nodes x 1 rank": (3, lambda m: m.SrunLauncher(), {}),
    "torchrun, 2 nodes x 2 processes": (2, lambda m: m.TorchrunLauncher(nproc_per_node=2), {"torch": True}),
    "ray, 3 nodes": (3, lambda m: m.RayLauncher(ray_start_args=["--object-store-memory=100000000"]), {"ray": True}),
}


def run_once(dagster_slurm, dg, computes, name: str) -> dict:
    nodes, make_launcher, extras = ENGINES[name]
    compute = computes["ray" if extras.get("ray") else "torch"]

    @dg.asset(name="startup")
    def startup(context: dg.AssetExecutionContext, compute: dagster_slurm.ComputeResource):
        return compute.run(context=context, payload_path=str(ROOT / "bench" / "startup_payload.py"),
                           launcher=make_launcher(dagster_slurm), extras=extras,
                           resource_requirements={"partition": "multinode", "num_nodes": nodes, "mem": "3G"},
                           ).get_results()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([startup], resources={"compute": compute}, instance=instance, raise_on_error=False)
    logs = instance.all_logs(result.run_id)
    submitted = next(e.timestamp for e in logs if e.user_message.startswith("Submitted Slurm job"))
    if not result.success:
        return {"engine": name, "ok": False}
    meta = {k: v.value for k, v in result.asset_materializations_for_node("startup")[0].metadata.items()}
    return {"engine": name, "ok": True, "startup": meta["payload_start"] - submitted,
            "ready": meta["engine_ready"] - submitted if "engine_ready" in meta else None,
            "queue_wait": meta.get("slurm_queue_wait_seconds"), "step": logs[-1].timestamp - logs[0].timestamp}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    load_cluster_env()
    sys.path.insert(0, str(ROOT / "tests"))
    import dagster as dg
    from remote_env import make_ray_env, make_torch_env

    import dagster_slurm
    from dagster_slurm.agent import transport_for

    ssh = dagster_slurm.SSHConnectionResource.from_env(known_hosts_file=os.environ["TESTCLUSTER_KNOWN_HOSTS"])
    admin = transport_for(ssh.settings())
    envs = {"torch": make_torch_env(admin, "dagster-slurm-tests/envs/torch-cpu"),
            "ray": make_ray_env(admin, "dagster-slurm-tests/envs/ray")}
    slurm = dagster_slurm.SlurmResource(ssh=ssh, remote_base="dagster-slurm-bench",
                                        queue=dagster_slurm.SlurmQueueConfig(time_limit="00:05:00"))
    compute = {k: dagster_slurm.ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=v)
               for k, v in envs.items()}
    rng = random.Random(args.seed)
    rows = []
    run_once(dagster_slurm, dg, compute, "bash, 1 node (floor)")  # warm-up: connection, probes
    for _ in range(args.runs):
        for name in ENGINES:
            time.sleep(rng.uniform(0, 1))
            rows.append(run_once(dagster_slurm, dg, compute, name))
            print(json.dumps(rows[-1]), flush=True)
    floor = statistics.median(r["startup"] for r in rows if r["ok"] and "floor" in r["engine"])
    print("\n| engine | sbatch -> payload start (median) | x floor | sbatch -> all ranks joined | failed runs |")
    print("|---|---|---|---|---|")
    for name in ENGINES:
        ok = [r for r in rows if r["engine"] == name and r["ok"]]
        start = statistics.median(r["startup"] for r in ok) if ok else float("nan")
        ready = [r["ready"] for r in ok if r["ready"] is not None]
        print(f"| {name} | {start:.2f} s | {start / floor:.2f}x | "
              + (f"{statistics.median(ready):.2f} s" if ready else "-") + f" | {args.runs - len(ok)} |")
    out = ROOT / "bench" / "results" / "multinode_startup.json"
    out.write_text(json.dumps({"runs": rows, "floor_median": floor}, indent=1))


if __name__ == "__main__":
    main()
