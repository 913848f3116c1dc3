"""Raises inside open_dagster_pipes(): Pipes reports the exception, the job fails with exit status 1."""
from dagster_pipes import open_dagster_pipes


def load(path):
    raise FileNotFoundError(f"{path} does not exist")


with open_dagster_pipes() as pipes:
    pipes.log.info("loading")
    load("/data/input.parquet")
