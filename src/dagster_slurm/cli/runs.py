"""``dagster-slurm runs gc``: delete old run folders (failed runs keep theirs for debugging)."""

from __future__ import annotations

import os
import time

from dagster_slurm.agent import transport_for
from dagster_slurm.config.slurm import BASE_PATH_ENV, DEFAULT_REMOTE_BASE
from dagster_slurm.config.ssh import SSHConnectionResource
from dagster_slurm.errors import DagsterSlurmError
from dagster_slurm.slurm.run_folders import RunFolders, delete_command, plan_runs_gc, scan_runs_script


def run_runs_gc(args) -> None:
    transport = transport_for(SSHConnectionResource.from_env().settings())
    runs = transport.absolute(os.environ.get(BASE_PATH_ENV) or DEFAULT_REMOTE_BASE) + "/runs"
    found = RunFolders.parse(transport.run(scan_runs_script(runs), retry=True, timeout=600).stdout)
    if found.squeue_error is not None:
        raise DagsterSlurmError(f"runs gc: squeue failed ({found.squeue_error}), so it is unknown which run "
                                "folders belong to queued or running jobs. Nothing was deleted; retry later.")
    doomed = plan_runs_gc(found, older_than=args.older_than, now=time.time())
    verb = "would delete" if args.dry_run else "deleting"
    for call in doomed:
        print(f"{verb} {call.path}")
    if not args.dry_run:
        transport.run(delete_command(runs, doomed), timeout=3600)
    print(f"{len(doomed)} run folder(s) {'to delete' if args.dry_run else 'deleted'}, "
          f"{len(found.calls) - len(doomed)} kept.")
