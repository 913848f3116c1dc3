import os

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    pipes.report_asset_materialization(metadata={"secret_len": len(os.environ["MY_SECRET"])})
