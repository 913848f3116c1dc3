"""Logs, prints, reports metadata and a check; echoes what it was given."""
import os
import sys

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    pipes.log.info(f"hello from {os.environ.get('SLURM_JOB_ID', 'local')}")
    print("line on stdout")
    print("line on stderr", file=sys.stderr)
    pipes.report_asset_materialization(
        metadata={"foo": pipes.get_extra("foo"), "env_k": os.environ.get("K", ""),
                  "partition": os.environ.get("SLURM_JOB_PARTITION", ""),
                  "cpus": os.environ.get("SLURM_CPUS_PER_TASK", "")}
    )
    pipes.report_asset_check(check_name="positive", passed=True, metadata={"n": 1})
