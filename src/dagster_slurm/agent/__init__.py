"""The connection agent: one SSH login per user, machine and cluster, shared by every local process.

Layering: it sits on ``transport`` and ``slurm`` (it runs the one job watcher) and is used by
``compute`` and ``cli`` through ``sessions``."""

from dagster_slurm.agent.sessions import hold_transport, release_transport, transport_for, watcher_for

__all__ = ["hold_transport", "release_transport", "transport_for", "watcher_for"]
