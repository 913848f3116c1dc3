"""One partition (or one item) of a backfill: reports its partition key / item. Extras: ``fail`` (keys that
always fail), ``fail_once`` + ``markers`` (keys that fail on their first run only), ``seconds`` (sleep)."""
import os
import sys
import time

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    key = pipes.partition_key if pipes.extras.get("item") is None else str(pipes.get_extra("item"))
    pipes.log.info(f"working on {key}")
    print(f"stdout of {key}")
    time.sleep(float(pipes.extras.get("seconds") or 0))
    marker = os.path.join(pipes.extras.get("markers") or ".", key)
    if key in (pipes.extras.get("fail_once") or []) and not os.path.exists(marker):
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        open(marker, "w").close()
        print(f"{key} fails this once", file=sys.stderr)
        sys.exit(3)
    if key in (pipes.extras.get("fail") or []):
        print(f"{key} is broken", file=sys.stderr)
        sys.exit(3)
    window = pipes.partition_time_window if pipes.is_partition_step else None
    pipes.report_asset_materialization(metadata={
        "key": key, "task": os.environ.get("SLURM_ARRAY_TASK_ID", "local"),
        "window_start": window["start"] if window else "",
    })
