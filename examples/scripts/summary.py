"""Computes a summary of some numbers and reports it as materialization metadata."""
import statistics

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    n = int(pipes.get_extra("n"))
    values = [(i * 7919) % 101 for i in range(1, n + 1)]
    pipes.log.info(f"summarising {n} values")
    print(f"first values: {values[:5]}")  # goes to the compute logs (stdout)
    pipes.report_asset_materialization(
        metadata={"count": n, "mean": round(statistics.mean(values), 3), "max": max(values)}
    )
