"""The benchmark's trivial payload: one log line, one metadata value."""
from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    pipes.log.info("trivial payload ran")
    pipes.report_asset_materialization(metadata={"value": 42})
