"""The benchmark's trivial payload: logs one line and reports one metadata value.

The log line carries the payload's start time and the metadata value is ``time.time()`` just before
Pipes closes, so the benchmark can place the payload on the same clock as the event log (the test
cluster runs on this machine, so the clocks are the same). ``--payload-sleep S`` adds a silent sleep
between the two, to see how fast the end of a longer job is noticed.
"""
import time

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    pipes.log.info(f"hello from the payload t={time.time():.6f}")
    time.sleep(float(pipes.extras.get("sleep", 0)))  # only with bench/step_time.py --payload-sleep
    pipes.report_asset_materialization(metadata={"t_payload_end": time.time()})
