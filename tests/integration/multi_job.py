"""Helper process: N trivial assets in one run through Dagster's public API, with a real DagsterInstance
(DAGSTER_HOME) and the executor TEST_EXECUTOR names, on the test cluster.

Usage: python multi_job.py
Environment: DAGSTER_HOME, TEST_ASSETS (count), TEST_CONCURRENCY, TEST_EXECUTOR (multiprocess | slurm |
in_process), TEST_ALLOCATION_CPUS (> 0: in a run-scoped allocation of that many CPUs), TEST_PAYLOAD, TEST_REMOTE_BASE, TEST_ENV,
the cluster's SLURM_EDGE_NODE_* settings (port, share_connection, ...) and TESTCLUSTER_KNOWN_HOSTS.
Prints "IN_ALLOCATION <n>" (materializations of steps that ran in a shared allocation), then "SUCCESS" or
"FAILURE".
"""

import os

import dagster as dg

from dagster_slurm import (
    ComputeResource,
    SlurmAllocation,
    SlurmQueueConfig,
    SlurmResource,
    SSHConnectionResource,
    slurm_executor,
)


def _asset(i: int):
    @dg.asset(name=f"a{i:03d}")
    def _a(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=os.environ["TEST_PAYLOAD"]).get_results()

    return _a


def get_job():
    ssh = SSHConnectionResource.from_env(known_hosts_file=os.environ["TESTCLUSTER_KNOWN_HOSTS"])
    slurm = SlurmResource(ssh=ssh, remote_base=os.environ["TEST_REMOTE_BASE"],
                          queue=SlurmQueueConfig(mem="64M", time_limit="00:05:00"))
    cpus = int(os.environ.get("TEST_ALLOCATION_CPUS", "0"))  # > 0: every asset a step of one run allocation
    allocation = SlurmAllocation(num_nodes=1, cpus=cpus, mem=f"{cpus * 256}M", time_limit="00:30:00",
                                 idle_timeout=60) if cpus else None
    resources = {"compute": ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=os.environ["TEST_ENV"],
                                            allocation=allocation)}
    assets = [_asset(i) for i in range(int(os.environ["TEST_ASSETS"]))]
    concurrency = int(os.environ.get("TEST_CONCURRENCY", "2"))
    executor = {"multiprocess": lambda: dg.multiprocess_executor.configured({"max_concurrent": concurrency}),
                "slurm": lambda: slurm_executor(concurrency),
                "in_process": lambda: dg.in_process_executor}[os.environ.get("TEST_EXECUTOR", "multiprocess")]()
    defs = dg.Definitions(assets=assets, jobs=[dg.define_asset_job("many", executor_def=executor)],
                          resources=resources)
    return defs.resolve_job_def("many")


def main() -> None:
    instance = dg.DagsterInstance.get()
    result = dg.execute_job(dg.reconstructable(get_job), instance=instance)
    # Dagster's own cost per step process: STEP_WORKER_STARTING -> STEP_START (imports, definitions, resources)
    starting: dict[str, float] = {}
    startup = []
    in_allocation = 0  # materializations of steps that ran in a shared allocation
    for entry in instance.all_logs(result.run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type_value == "STEP_WORKER_STARTING":
            starting[event.step_key] = entry.timestamp
        elif event.event_type_value == "STEP_START" and event.step_key in starting:
            startup.append(entry.timestamp - starting[event.step_key])
        elif event.event_type_value == "ASSET_MATERIALIZATION" and \
                "slurm_allocation_id" in event.step_materialization_data.materialization.metadata:
            in_allocation += 1
    if startup:
        print(f"STEP_PROCESS_STARTUP total={sum(startup):.2f} median={sorted(startup)[len(startup) // 2]:.2f}")
    print(f"IN_ALLOCATION {in_allocation}")
    print("SUCCESS" if result.success else "FAILURE", flush=True)


if __name__ == "__main__":
    main()
