import sys

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    pipes.log.info("about to fail")
    print("something went wrong: disk on fire", file=sys.stderr)
sys.exit(3)
