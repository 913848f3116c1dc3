import sys
import time

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    pipes.log.info("about to fail")
    print("something went wrong: disk on fire", file=sys.stderr)
    time.sleep(2.5)  # past one of Slurm's memory samples (every 2 s here): the failure's metadata has a MaxRSS
sys.exit(3)
