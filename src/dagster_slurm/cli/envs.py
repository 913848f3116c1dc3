"""``dagster-slurm env list`` and ``env gc``: inspect and prune the environment cache on the cluster."""

from __future__ import annotations

import os
import shlex
import time

from dagster_slurm.agent import transport_for
from dagster_slurm.config.slurm import BASE_PATH_ENV, DEFAULT_REMOTE_BASE
from dagster_slurm.config.ssh import SSHConnectionResource
from dagster_slurm.errors import DagsterSlurmError
from dagster_slurm.packaging.inventory import Inventory, plan_gc, scan_script
from dagster_slurm.packaging.packer import RemoteLayout
from dagster_slurm.transport.base import Transport


def _inventory() -> tuple[Transport, RemoteLayout, Inventory]:
    transport = transport_for(SSHConnectionResource.from_env().settings())
    layout = RemoteLayout(transport.absolute(os.environ.get(BASE_PATH_ENV) or DEFAULT_REMOTE_BASE))
    out = transport.run(scan_script(layout), retry=True).stdout
    return transport, layout, Inventory.parse(out)


def run_list(args) -> None:
    _, layout, inv = _inventory()
    now = time.time()
    print(f"{'environment':<34} {'age':>7} {'active jobs':>11}  names")
    for store in sorted(inv.stores.values(), key=lambda s: -s.mtime):
        names = ", ".join(inv.names_for(store.path)) or "(unpublished)"
        print(f"{store.name:<34} {(now - store.mtime) / 3600:>6.1f}h {len(inv.active_leases(store)):>11}  {names}")
    print(f"{len(inv.stores)} environment(s) under {layout.store}")


def run_gc(args) -> None:
    transport, layout, inv = _inventory()
    if inv.squeue_error is not None:
        raise DagsterSlurmError(f"gc: squeue failed ({inv.squeue_error}), so it is unknown which environments "
                                "queued or running jobs use. Nothing was deleted; retry when Slurm answers.")
    plan = plan_gc(inv, keep=args.keep, older_than=args.older_than, now=time.time())
    verb = "would delete" if args.dry_run else "deleting"
    for store in plan.stores:
        print(f"{verb} {store.path}")
    for name in plan.wheels + plan.tools:
        print(f"{verb} {name} (no remaining environment uses it)")
    q = shlex.quote
    paths = [link for s in plan.stores for link in inv.links_to(s.path)]
    paths += [s.path for s in plan.stores]
    paths += [f"{layout.wheels}/{w}" for w in plan.wheels] + [f"{layout.tools}/{t}" for t in plan.tools]
    if not args.dry_run and (paths or plan.stale_leases):
        # link names first, so nothing points at a half-deleted folder
        transport.run("\n".join(f"rm -rf -- {q(p)}" for p in [*paths, *plan.stale_leases]), timeout=3600)
    print(f"{len(plan.stores)} environment(s) {'to delete' if args.dry_run else 'deleted'}, "
          f"{len(inv.stores) - len(plan.stores)} kept; {len(plan.wheels)} wheel(s) and {len(plan.tools)} "
          f"tool(s) unused; {len(plan.stale_leases)} finished-job lease(s) cleared.")
