"""Counts to ``target``, one per second, keeping the count in $DAGSTER_SLURM_CHECKPOINT_DIR; on the signal
before the time limit ($DAGSTER_SLURM_TIMEOUT_SIGNAL) it saves and exits, and the next attempt resumes."""
import os
import signal
import sys
import time

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    path = os.path.join(os.environ["DAGSTER_SLURM_CHECKPOINT_DIR"], "count")
    count = int(open(path).read()) if os.path.exists(path) else 0
    resumed_from = count
    pipes.log.info(f"starting at {count}")

    def save() -> None:
        with open(path + ".tmp", "w") as fh:
            fh.write(str(count))
        os.replace(path + ".tmp", path)

    def on_signal(signum, _frame) -> None:
        save()
        print(f"signal {signum} at count {count}: saved, leaving", file=sys.stderr, flush=True)
        os._exit(1)

    signal.signal(getattr(signal, "SIG" + os.environ.get("DAGSTER_SLURM_TIMEOUT_SIGNAL", "TERM")), on_signal)
    while count < int(pipes.get_extra("target")):
        time.sleep(1)
        count += 1
        save()
    pipes.report_asset_materialization(metadata={"count": count, "resumed_from": resumed_from})
