import time

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    pipes.log.info("allocating")
    blocks = []
    for _ in range(40):
        blocks.append(bytearray(20 * 2**20))
        time.sleep(0.05)
    time.sleep(3)
