"""Helper process for lifecycle tests: an asset job run (or re-executed from failure) through Dagster's
public API with a real DagsterInstance (DAGSTER_HOME), the multiprocess executor, on the test cluster.

Usage: python reexec_job.py run|reexec
Environment: DAGSTER_HOME, TEST_ASSET (asset name), TEST_PAYLOAD, TEST_SECONDS, TEST_REMOTE_BASE, TEST_ENV,
optionally TEST_COMMAND_TIMEOUT, TEST_NODES (run on that many nodes of the multinode partition, srun),
TEST_PREEMPTIBLE=1 (the whole node in the preemptible partition, requeued when preempted) and TEST_TARGET,
the cluster's SLURM_EDGE_NODE_* settings and TESTCLUSTER_KNOWN_HOSTS.
Prints "SUCCESS" or "FAILURE" at the end.
"""

import os
import sys

import dagster as dg

from dagster_slurm import (
    ComputeResource,
    SlurmQueueConfig,
    SlurmResource,
    SrunLauncher,
    SSHConnectionResource,
)


@dg.asset(name=os.environ["TEST_ASSET"])
def sleeper(context: dg.AssetExecutionContext, compute: ComputeResource):
    seconds = float(os.environ["TEST_SECONDS"])
    nodes = int(os.environ.get("TEST_NODES", "0"))  # >0: every node runs the payload (srun), multinode partition
    extras = {"seconds": seconds, "target": int(os.environ.get("TEST_TARGET", "0"))}
    return compute.run(context=context, payload_path=os.environ["TEST_PAYLOAD"], extras=extras,
                       launcher=SrunLauncher() if nodes else None,
                       resource_requirements={"partition": "multinode", "num_nodes": nodes} if nodes else None,
                       ).get_results()


def resources() -> dict:
    ssh = SSHConnectionResource.from_env(known_hosts_file=os.environ["TESTCLUSTER_KNOWN_HOSTS"],
                                         command_timeout=float(os.environ.get("TEST_COMMAND_TIMEOUT", 120)))
    preemptible = os.environ.get("TEST_PREEMPTIBLE") == "1"  # the whole node in lowprio, requeued when preempted
    slurm = SlurmResource(ssh=ssh, remote_base=os.environ["TEST_REMOTE_BASE"],
                          requeue_on=["PREEMPTED"] if preemptible else [], max_requeues=2,
                          queue=SlurmQueueConfig(mem="128M", time_limit="00:05:00",
                                                 **({"partition": "lowprio", "cpus": 2} if preemptible else {})))
    return {"compute": ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=os.environ["TEST_ENV"])}


def get_job():
    defs = dg.Definitions(assets=[sleeper], jobs=[dg.define_asset_job("sleeper_job")], resources=resources())
    return defs.resolve_job_def("sleeper_job")


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
