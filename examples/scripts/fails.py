"""A payload that fails: the Dagster step fails with the Slurm state, exit code and stderr tail."""
import sys

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    pipes.log.info("loading an input that is not there")
print("FileNotFoundError: /data/input.parquet does not exist", file=sys.stderr)
sys.exit(2)
