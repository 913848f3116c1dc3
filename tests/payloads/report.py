"""Logs, prints, reports metadata and a check; echoes what it was given."""
import os
import sys
import time

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    pipes.log.info(f"hello from {os.environ.get('SLURM_JOB_ID', 'local')}")
    print("line on stdout")
    print("line on stderr", file=sys.stderr)
    # Slurm samples a job's memory every JobAcctGatherFrequency (2 s on the test cluster): a job that ends
    # sooner may have no MaxRSS at all. A test that asserts MaxRSS asks the payload to stay that long.
    time.sleep(float((pipes.extras or {}).get("busy_seconds", 0)))
    pipes.report_asset_materialization(
        metadata={"foo": pipes.get_extra("foo"), "env_k": os.environ.get("K", ""),
                  "partition": os.environ.get("SLURM_JOB_PARTITION", ""),
                  "cpus": os.environ.get("SLURM_CPUS_PER_TASK", "")}
    )
    pipes.report_asset_check(check_name="positive", passed=True, metadata={"n": 1})
