"""One partition (or one item) of a backfill: reports its partition key / item; fails where told to."""
import os
import sys

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    key = pipes.partition_key if pipes.extras.get("item") is None else str(pipes.get_extra("item"))
    pipes.log.info(f"working on {key}")
    print(f"stdout of {key}")
    if key in (pipes.extras.get("fail") or []):
        print(f"{key} is broken", file=sys.stderr)
        sys.exit(3)
    window = pipes.partition_time_window
    pipes.report_asset_materialization(metadata={
        "key": key, "task": os.environ.get("SLURM_ARRAY_TASK_ID", "local"),
        "window_start": window["start"] if window else "",
    })
