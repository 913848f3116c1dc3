"""Reports the size of a large extra (the Pipes context is far beyond one environment variable's 128 KiB)."""
from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    blob = pipes.get_extra("blob")
    pipes.report_asset_materialization(metadata={"blob_len": len(blob), "blob_tail": blob[-8:]})
