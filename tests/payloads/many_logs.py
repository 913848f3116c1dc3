"""Sends N numbered log messages as fast as it can, to test ordering and completeness."""
from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    n = int(pipes.get_extra("n"))
    for i in range(n):
        pipes.log.info(f"msg {i}")
    pipes.report_asset_materialization(metadata={"sent": n})
