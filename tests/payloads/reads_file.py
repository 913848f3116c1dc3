"""Reads an extra file from its working directory and reports it, with where it ran."""
import os

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    name = pipes.get_extra("file")
    with open(name) as fh:
        content = fh.read().strip()
    for key in pipes.asset_keys:
        pipes.report_asset_materialization(asset_key=key, metadata={
            "content": content, "cpus": os.environ.get("SLURM_CPUS_PER_TASK", ""),
            "partition": os.environ.get("SLURM_JOB_PARTITION", "")})
