"""Validates the numbers and reports an asset check result."""
from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    values = [(i * 7919) % 101 for i in range(1, 1001)]
    negatives = sum(v < 0 for v in values)
    pipes.log.info(f"{negatives} negative values found")
    pipes.report_asset_materialization(metadata={"checked": len(values)})
    pipes.report_asset_check(check_name="no_negative_values", passed=negatives == 0,
                             metadata={"negatives": negatives})
