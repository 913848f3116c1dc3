"""Processes one partition (a day): the partition key comes from the Pipes context."""
from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    day = pipes.partition_key
    rows = sum(int(c) for c in day if c.isdigit()) * 10
    pipes.log.info(f"processing partition {day}")
    pipes.report_asset_materialization(metadata={"day": day, "rows": rows})
