import time

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    pipes.log.info("started")
    time.sleep(float(pipes.get_extra("seconds")))
    pipes.report_asset_materialization(metadata={"slept": pipes.get_extra("seconds")})
