"""Helper process for the shared-allocation tests: N assets (a chain or a fan-out) in one Dagster run, in one
SlurmAllocation, through Dagster's public API with a real DagsterInstance (DAGSTER_HOME) and the multiprocess
executor, on the test cluster.

Usage: python allocation_job.py run|reexec
Environment: DAGSTER_HOME, TEST_ASSET (name prefix: assets are <prefix>_0 ...), TEST_SHAPE (chain|fanout),
TEST_N, TEST_PAYLOAD, TEST_SECONDS, TEST_REMOTE_BASE, TEST_ENV, TEST_SCOPE (run|named), TEST_ALLOC_NAME,
TEST_IDLE (idle_timeout), TEST_ALLOC_TIME (the allocation's time_limit), TEST_ALLOC_CPUS, optionally
TEST_STEP_TIME (each asset's own time_limit), the cluster's SLURM_EDGE_NODE_* settings and TESTCLUSTER_KNOWN_HOSTS.
Prints "SUCCESS" or "FAILURE" at the end.
"""

import os
import sys

import dagster as dg

from dagster_slurm import (
    ComputeResource,
    SlurmAllocation,
    SlurmQueueConfig,
    SlurmResource,
    SSHConnectionResource,
)

PREFIX = os.environ["TEST_ASSET"]
N = int(os.environ.get("TEST_N", "3"))


def _asset(i: int):
    deps = [f"{PREFIX}_{i - 1}"] if os.environ.get("TEST_SHAPE", "chain") == "chain" and i else None
    step_time = os.environ.get("TEST_STEP_TIME")

    @dg.asset(name=f"{PREFIX}_{i}", deps=deps)
    def _a(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=os.environ["TEST_PAYLOAD"],
                           extras={"seconds": float(os.environ["TEST_SECONDS"])},
                           resource_requirements={"time_limit": step_time} if step_time else None).get_results()

    return _a


def resources() -> dict:
    ssh = SSHConnectionResource.from_env(known_hosts_file=os.environ["TESTCLUSTER_KNOWN_HOSTS"])
    slurm = SlurmResource(ssh=ssh, remote_base=os.environ["TEST_REMOTE_BASE"],
                          queue=SlurmQueueConfig(mem="128M", time_limit="00:05:00"))
    allocation = SlurmAllocation(cpus=int(os.environ.get("TEST_ALLOC_CPUS", "2")), mem="512M",
                                 time_limit=os.environ.get("TEST_ALLOC_TIME", "00:10:00"),
                                 scope=os.environ.get("TEST_SCOPE", "run"),
                                 name=os.environ.get("TEST_ALLOC_NAME") or None,
                                 idle_timeout=float(os.environ.get("TEST_IDLE", "60")))
    return {"compute": ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=os.environ["TEST_ENV"],
                                       allocation=allocation)}


def get_job():
    executor = dg.multiprocess_executor.configured({"max_concurrent": N})
    defs = dg.Definitions(assets=[_asset(i) for i in range(N)], resources=resources(),
                          jobs=[dg.define_asset_job("alloc_job", executor_def=executor)])
    return defs.resolve_job_def("alloc_job")


def main() -> None:
    instance = dg.DagsterInstance.get()
    options = None
    if sys.argv[1] == "reexec":
        parent = instance.get_runs(limit=1)[0]
        if parent.status != dg.DagsterRunStatus.FAILURE:
            instance.report_run_failed(parent)  # what run monitoring does for a run whose process died
        options = dg.ReexecutionOptions.from_failure(parent.run_id, instance)
    result = dg.execute_job(dg.reconstructable(get_job), instance=instance, reexecution_options=options)
    print("SUCCESS" if result.success else "FAILURE", flush=True)


if __name__ == "__main__":
    main()
