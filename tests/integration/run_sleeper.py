"""Helper process for lifecycle tests: materialise a sleeping asset on the test cluster with a given run id.

Usage: python run_sleeper.py RUN_ID SECONDS  (connection settings from the environment)
"""

import os
import sys

import dagster as dg

from dagster_slurm import ComputeResource, SlurmQueueConfig, SlurmResource, SSHConnectionResource

PAYLOAD = os.path.join(os.path.dirname(__file__), "..", "payloads", "sleeps.py")


@dg.asset
def sleeper(context: dg.AssetExecutionContext, compute: ComputeResource):
    return compute.run(context=context, payload_path=PAYLOAD, extras={"seconds": float(sys.argv[2])}).get_results()


if __name__ == "__main__":
    ssh = SSHConnectionResource.from_env(known_hosts_file=os.environ["TESTCLUSTER_KNOWN_HOSTS"])
    slurm = SlurmResource(ssh=ssh, remote_base=os.environ["TEST_REMOTE_BASE"],
                          queue=SlurmQueueConfig(mem="128M", time_limit="00:05:00"))
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=os.environ["TEST_ENV"])
    defs = dg.Definitions(assets=[sleeper], resources={"compute": compute})
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(run_id=sys.argv[1], raise_on_error=False)
    print("SUCCESS" if result.success else "FAILURE", flush=True)
