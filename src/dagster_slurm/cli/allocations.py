"""``dagster-slurm agent allocations``: the shared allocations held on the cluster, their jobs, age, idle time
and steps."""

from __future__ import annotations

import os

from dagster_slurm.agent import transport_for
from dagster_slurm.config.slurm import BASE_PATH_ENV, DEFAULT_REMOTE_BASE
from dagster_slurm.config.ssh import SSHConnectionResource
from dagster_slurm.slurm.allocation import list_command, parse_list


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}s" if value < 120 else f"{value / 60:.0f}m" if value < 7200 else f"{value / 3600:.1f}h"


def run_allocations(args) -> None:
    transport = transport_for(SSHConnectionResource.from_env().settings())
    base = transport.absolute(os.environ.get(BASE_PATH_ENV) or DEFAULT_REMOTE_BASE)
    listed = parse_list(transport.run(list_command(base), retry=True).stdout)
    shown = [a for a in listed if args.all or not a.ended]
    print(f"{'allocation':<56} {'job':>8} {'age':>6} {'idle':>6} {'running':>7} {'steps':>5}  state")
    for a in sorted(shown, key=lambda a: a.folder):
        state = f"ended ({a.ended.split(' ', 1)[-1]})" if a.ended else "held"
        print(f"{a.folder:<56} {a.job_id or '-':>8} {_seconds(a.age):>6} {_seconds(a.idle):>6} {a.running:>7} "
              f"{a.served:>5}  {state}")
    print(f"{len(shown)} allocation(s) {'in total' if args.all else 'held'} under {base}/allocations"
          + ("" if args.all else f" ({len(listed) - len(shown)} ended; --all lists them)"))
