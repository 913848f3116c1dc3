"""Helper process for array tests: a daily-partitioned asset (single-run backfill policy) whose range runs as
one job array, run (or re-executed from failure) through Dagster's public API with a DagsterInstance on disk.

Usage: python array_job.py run|reexec
Environment: DAGSTER_HOME, TEST_ASSET, TEST_PAYLOAD, TEST_SECONDS, TEST_REMOTE_BASE, TEST_ENV, TEST_RANGE
("first..last" partition keys), TEST_FAIL_ONCE (comma-separated keys), TEST_MARKERS (a folder on the cluster),
the cluster's SLURM_EDGE_NODE_* settings and TESTCLUSTER_KNOWN_HOSTS. Prints "SUCCESS" or "FAILURE" at the end.
"""

import os
import sys

import dagster as dg

from dagster_slurm import ComputeResource, SlurmQueueConfig, SlurmResource, SSHConnectionResource

DAYS = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_date="2027-01-01")


@dg.asset(name=os.environ["TEST_ASSET"], partitions_def=DAYS, backfill_policy=dg.BackfillPolicy.single_run())
def daily(context: dg.AssetExecutionContext, compute: ComputeResource):
    fail_once = [k for k in os.environ.get("TEST_FAIL_ONCE", "").split(",") if k]
    return compute.run(context=context, payload_path=os.environ["TEST_PAYLOAD"],
                       extras={"seconds": float(os.environ.get("TEST_SECONDS", "0")), "fail_once": fail_once,
                               "markers": os.environ.get("TEST_MARKERS", "")}).get_results()


def get_job():
    ssh = SSHConnectionResource.from_env(known_hosts_file=os.environ["TESTCLUSTER_KNOWN_HOSTS"])
    slurm = SlurmResource(ssh=ssh, remote_base=os.environ["TEST_REMOTE_BASE"],
                          queue=SlurmQueueConfig(mem="128M", time_limit="00:05:00"))
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=os.environ["TEST_ENV"])
    defs = dg.Definitions(assets=[daily], jobs=[dg.define_asset_job("daily_job", partitions_def=DAYS)],
                          resources={"compute": compute})
    return defs.resolve_job_def("daily_job")


def main() -> None:
    instance = dg.DagsterInstance.get()
    first, last = os.environ["TEST_RANGE"].split("..")
    tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
    options = None
    if sys.argv[1] == "reexec":
        parent = instance.get_runs(limit=1)[0]
        if parent.status != dg.DagsterRunStatus.FAILURE:
            instance.report_run_failed(parent)  # what run monitoring does for a run whose process died
        options = dg.ReexecutionOptions.from_failure(parent.run_id, instance)
        tags = dict(parent.tags)  # as the UI's re-execution: the parent's tags (its partition range) carry over
    result = dg.execute_job(dg.reconstructable(get_job), instance=instance, reexecution_options=options, tags=tags)
    print("SUCCESS" if result.success else "FAILURE", flush=True)


if __name__ == "__main__":
    main()
